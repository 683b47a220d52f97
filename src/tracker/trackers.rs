//! Every torrent's trackers, sans-IO: which tracker to ask (tiers), when
//! (the announce schedule, scrapes), over which transport (HTTP(S) jobs
//! for the worker threads, UDP datagrams for the reactor's socket), and
//! what the answers mean for the torrent (peers, status fields).
//!
//! The caller moves bytes: jobs out with [`Trackers::poll_job`] and their
//! results in with [`Trackers::handle_job_result`]; datagrams out with
//! [`Trackers::poll_transmit`] and in with [`Trackers::handle_datagram`];
//! timers through [`Trackers::poll_timeout`] and
//! [`Trackers::handle_timeout`]. Announces that fell due start with
//! [`Trackers::start_due`], which asks the caller for each torrent's
//! totals. What the caller must apply comes out of
//! [`Trackers::poll_event`].

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::announce::{
    announce_url, parse_announce, AnnounceEvent, AnnounceReply, AnnounceRequest, Announced,
    TrackerError,
};
use super::schedule::Announcer;
use super::scrape::{parse_scrape, scrape_base, scrape_url, ScrapeReply};
use super::tiers::TrackerList;
use super::udp::{Transmit, UdpClient, UdpReply, UdpRequest};
use super::worker::{Job, JobKind, JobOutput, JobResult};

/// How often a torrent's tracker is scraped while it runs.
pub const SCRAPE_EVERY: Duration = Duration::from_secs(15 * 60);

/// The first delay before scraping again after a failed scrape; doubles
/// up to [`SCRAPE_EVERY`].
const SCRAPE_RETRY: Duration = Duration::from_secs(60);

/// How long a UDP tracker's resolved addresses are used.
const RESOLVED_FOR: Duration = Duration::from_secs(30 * 60);

/// Most host names whose addresses are kept.
const MAX_RESOLVED: usize = 1024;

/// Settings for announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Longest one announce or scrape may take, all told: an HTTP request
    /// with its redirects, or a UDP exchange with its retransmissions
    /// (which start at a quarter of it and double, BEP 15's 15 s at the
    /// default 60 s).
    pub timeout: Duration,
    /// Peers asked for per announce.
    pub numwant: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            timeout: Duration::from_secs(60),
            numwant: 50,
        }
    }
}

/// A torrent's totals, for an announce.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Payload bytes uploaded.
    pub uploaded: u64,
    /// Payload bytes downloaded.
    pub downloaded: u64,
    /// Bytes still missing.
    pub left: u64,
}

/// What `get-status` shows of a torrent's trackers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerStatus {
    /// The tracker in use: tier and index in the file.
    pub position: (usize, usize),
    /// `tracker-error` or `tracker-warning`, and its text.
    pub message: Option<(&'static str, String)>,
    /// Seeders, leechers and completed downloads (-1 when unknown).
    pub scrape: [i64; 3],
}

/// What the caller applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackerEvent {
    /// A tracker named these peers for `torrent`.
    Peers {
        /// The torrent.
        torrent: u64,
        /// The peers (bounded by the reply parsers).
        peers: Vec<SocketAddr>,
    },
    /// The torrent's tracker status changed.
    Status {
        /// The torrent.
        torrent: u64,
        /// Its status now.
        status: TrackerStatus,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Announce(Option<AnnounceEvent>),
    Scrape,
}

/// A request in flight: for which torrent, to which tracker.
#[derive(Debug)]
struct Request {
    torrent: u64,
    purpose: Purpose,
    url: String,
    /// For a UDP tracker whose name is being resolved: what to send once
    /// it is.
    udp: Option<(String, u16, UdpRequest)>,
}

struct Torrent {
    info_hash: [u8; 20],
    list: TrackerList,
    schedule: Announcer,
    /// The tracker that acknowledged this run's `started`.
    started_with: Option<String>,
    /// The announce in flight, by request id.
    announcing: Option<u64>,
    scrape_due: Option<Instant>,
    scraping: Option<u64>,
    scrape_failures: u32,
    /// The tracker the scrape figures are from.
    scraped: Option<String>,
    message: Option<(&'static str, String)>,
    scrape: [i64; 3],
    running: bool,
}

impl Torrent {
    fn status(&self) -> TrackerStatus {
        TrackerStatus {
            position: self.list.position(),
            message: self.message.clone(),
            scrape: self.scrape,
        }
    }

    fn idle(&self) -> bool {
        !self.running
            && self.schedule.is_idle()
            && self.announcing.is_none()
            && self.scraping.is_none()
    }
}

/// The trackers of every torrent.
pub struct Trackers {
    settings: Settings,
    key: u32,
    rng: fastrand::Rng,
    torrents: HashMap<u64, Torrent>,
    requests: HashMap<u64, Request>,
    next_id: u64,
    jobs: VecDeque<Job>,
    udp: UdpClient,
    resolved: HashMap<(String, u16), (SocketAddr, Instant)>,
    events: VecDeque<TrackerEvent>,
}

/// Host and port of a `udp://host:port/...` URL.
fn udp_target(url: &str) -> Result<(String, u16), TrackerError> {
    let bad = |why: &str| TrackerError::BadUrl(format!("{url:?}: {why}"));
    let rest = url
        .get(..6)
        .filter(|s| s.eq_ignore_ascii_case("udp://"))
        .and_then(|_| url.get(6..))
        .ok_or_else(|| bad("not a udp:// URL"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = port.ok_or_else(|| bad("no port"))?;
    let port: u16 = port.parse().map_err(|_| bad("bad port"))?;
    if host.is_empty() || port == 0 {
        return Err(bad("no host or port 0"));
    }
    Ok((host.to_string(), port))
}

fn is_http(url: &str) -> bool {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

fn is_udp(url: &str) -> bool {
    url.get(..6)
        .is_some_and(|s| s.eq_ignore_ascii_case("udp://"))
}

impl Trackers {
    /// No torrents yet. `rng` shuffles tiers, makes the announce `key` and
    /// UDP transaction ids.
    pub fn new(settings: Settings, mut rng: fastrand::Rng) -> Trackers {
        let key = rng.u32(..);
        let udp_rng = fastrand::Rng::with_seed(rng.u64(..));
        Trackers {
            settings,
            key,
            rng,
            torrents: HashMap::new(),
            requests: HashMap::new(),
            next_id: 1,
            jobs: VecDeque::new(),
            udp: UdpClient::new(udp_rng, settings.timeout / 4, settings.timeout),
            resolved: HashMap::new(),
            events: VecDeque::new(),
        }
    }

    /// Torrent `id` runs: announce `started` to its trackers (`tiers` of
    /// URLs, the file's order). A torrent without trackers is ignored.
    pub fn start(&mut self, id: u64, info_hash: [u8; 20], tiers: &[Vec<String>], now: Instant) {
        if let Some(t) = self.torrents.get_mut(&id) {
            // Restarted while its `stopped` was in flight.
            t.running = true;
            t.schedule.start(now);
            return;
        }
        let Some(list) = TrackerList::new(tiers, &mut self.rng) else {
            return;
        };
        let mut schedule = Announcer::new();
        schedule.start(now);
        let t = Torrent {
            info_hash,
            list,
            schedule,
            started_with: None,
            announcing: None,
            scrape_due: None,
            scraping: None,
            scrape_failures: 0,
            scraped: None,
            message: None,
            scrape: [-1; 3],
            running: true,
        };
        self.events.push_back(TrackerEvent::Status {
            torrent: id,
            status: t.status(),
        });
        self.torrents.insert(id, t);
    }

    /// Torrent `id` stops (or is removed): a `stopped` announce goes out
    /// if the tracker may know of us; scrapes end.
    pub fn stop(&mut self, id: u64, now: Instant) {
        let Some(t) = self.torrents.get_mut(&id) else {
            return;
        };
        t.running = false;
        t.schedule.stop(now);
        t.scrape_due = None;
        if let Some(req) = t.scraping.take() {
            self.requests.remove(&req);
            self.udp.cancel(req);
        }
        self.forget_if_idle(id);
    }

    /// Every torrent stops (the daemon quits).
    pub fn stop_all(&mut self, now: Instant) {
        let ids: Vec<u64> = self.torrents.keys().copied().collect();
        for id in ids {
            self.stop(id, now);
        }
    }

    /// Torrent `id` finished downloading: `completed` goes out (once per
    /// run).
    pub fn completed(&mut self, id: u64, now: Instant) {
        if let Some(t) = self.torrents.get_mut(&id) {
            t.schedule.completed(now);
        }
    }

    /// A user asked torrent `id` to announce now (see
    /// [`Announcer::announce_now`]).
    pub fn announce_now(&mut self, id: u64, now: Instant) {
        if let Some(t) = self.torrents.get_mut(&id) {
            t.schedule.announce_now(now);
        }
    }

    /// Torrent `id` has trackers and announces, or still owes `stopped`.
    pub fn busy(&self, id: u64) -> bool {
        self.torrents.get(&id).is_some_and(|t| !t.idle())
    }

    /// Any announce is waiting to be sent or in flight (quitting waits for
    /// the `stopped` ones).
    pub fn announcing(&self) -> bool {
        self.torrents
            .values()
            .any(|t| t.announcing.is_some() || t.schedule.poll_timeout().is_some())
    }

    /// Some announce or scrape is due at `now`: the caller should call
    /// [`Trackers::start_due`] with fresh totals.
    pub fn due(&self, now: Instant) -> bool {
        self.torrents.values().any(|t| {
            t.schedule.poll_timeout().is_some_and(|d| d <= now)
                || (t.scraping.is_none() && t.scrape_due.is_some_and(|d| d <= now))
        })
    }

    /// Starts every announce and scrape due at `now`. `peer_id` and
    /// `port` are ours; `progress` gives a torrent's totals.
    pub fn start_due(
        &mut self,
        now: Instant,
        peer_id: [u8; 20],
        port: u16,
        progress: impl Fn(u64) -> Progress,
    ) {
        let ids: Vec<u64> = self.torrents.keys().copied().collect();
        for id in ids {
            self.start_announce(id, now, peer_id, port, &progress);
            self.start_scrape(id, now);
        }
    }

    fn start_announce(
        &mut self,
        id: u64,
        now: Instant,
        peer_id: [u8; 20],
        port: u16,
        progress: &impl Fn(u64) -> Progress,
    ) {
        let Some(t) = self.torrents.get_mut(&id) else {
            return;
        };
        if t.announcing.is_some() {
            return;
        }
        let url = t.list.current().to_string();
        if t.schedule.started_acknowledged() && t.started_with.as_deref() != Some(url.as_str()) {
            t.schedule.new_tracker();
        }
        let Some(event) = t.schedule.poll_announce(now) else {
            return;
        };
        let p = progress(id);
        let req = AnnounceRequest {
            info_hash: t.info_hash,
            peer_id,
            port,
            uploaded: p.uploaded,
            downloaded: p.downloaded,
            left: p.left,
            event,
            numwant: self.settings.numwant,
            key: self.key,
            trackerid: t.schedule.tracker_id().map(<[u8]>::to_vec),
            compact: true,
        };
        let rid = self.next_id;
        self.next_id += 1;
        t.announcing = Some(rid);
        log::debug!("torrent {id}: announcing to {url} ({event:?})");
        let request = Request {
            torrent: id,
            purpose: Purpose::Announce(event),
            url: url.clone(),
            udp: None,
        };
        if is_http(&url) {
            let job = JobKind::Fetch(announce_url(&url, &req));
            self.send_job(rid, request, job);
        } else {
            self.send_udp(rid, request, UdpRequest::Announce(req), now);
        }
    }

    fn start_scrape(&mut self, id: u64, now: Instant) {
        let Some(t) = self.torrents.get_mut(&id) else {
            return;
        };
        if t.scraping.is_some() || !t.running || t.scrape_due.is_none_or(|d| d > now) {
            return;
        }
        let url = t.list.current().to_string();
        let job = if is_http(&url) {
            let Some(base) = scrape_base(&url) else {
                // This tracker has no scrape; the announce's figures stand.
                t.scrape_due = None;
                return;
            };
            Some(JobKind::Fetch(scrape_url(&base, &t.info_hash)))
        } else {
            None
        };
        let rid = self.next_id;
        self.next_id += 1;
        t.scraping = Some(rid);
        t.scrape_due = None;
        let info_hash = t.info_hash;
        log::debug!("torrent {id}: scraping {url}");
        let request = Request {
            torrent: id,
            purpose: Purpose::Scrape,
            url,
            udp: None,
        };
        match job {
            Some(job) => self.send_job(rid, request, job),
            None => self.send_udp(rid, request, UdpRequest::Scrape(vec![info_hash]), now),
        }
    }

    fn send_job(&mut self, rid: u64, request: Request, kind: JobKind) {
        self.requests.insert(rid, request);
        self.jobs.push_back(Job {
            id: rid,
            kind,
            timeout: self.settings.timeout,
        });
    }

    /// Sends `what` to the UDP tracker of `request`, resolving its name
    /// first (on the worker) unless it is an address or known.
    fn send_udp(&mut self, rid: u64, mut request: Request, what: UdpRequest, now: Instant) {
        if !is_udp(&request.url) {
            let scheme = request.url.split("://").next().unwrap_or_default();
            let e = TrackerError::BadUrl(format!(
                "{:?}: {scheme:?} trackers are not supported (http, https and udp are)",
                request.url
            ));
            return self.finish(rid, request, Err(e), now);
        }
        let (host, port) = match udp_target(&request.url) {
            Ok(target) => target,
            Err(e) => return self.finish(rid, request, Err(e), now),
        };
        let known = host
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, port));
        let cached = self
            .resolved
            .get(&(host.clone(), port))
            .filter(|(_, at)| now.saturating_duration_since(*at) < RESOLVED_FOR)
            .map(|(addr, _)| *addr);
        match known.or(cached) {
            Some(addr) => {
                let started = self.udp.start(rid, addr, what, now);
                match started {
                    Ok(()) => {
                        self.requests.insert(rid, request);
                    }
                    Err(e) => self.finish(rid, request, Err(e), now),
                }
            }
            None => {
                let kind = JobKind::Resolve(host.clone(), port);
                request.udp = Some((host, port, what));
                self.send_job(rid, request, kind);
            }
        }
    }

    /// The next job for the worker threads.
    pub fn poll_job(&mut self) -> Option<Job> {
        self.jobs.pop_front()
    }

    /// A worker job finished.
    pub fn handle_job_result(&mut self, result: JobResult, now: Instant) {
        let Some(mut request) = self.requests.remove(&result.id) else {
            return; // cancelled meanwhile
        };
        match (result.result, request.udp.take()) {
            (Ok(JobOutput::Addrs(addrs)), Some((host, port, what))) => {
                // IPv4 first: it is what most trackers answer on.
                let addr = addrs
                    .iter()
                    .find(|a| a.is_ipv4())
                    .or(addrs.first())
                    .copied();
                let Some(addr) = addr else {
                    let e = TrackerError::Resolve(host, "no addresses".into());
                    return self.finish(result.id, request, Err(e), now);
                };
                if self.resolved.len() >= MAX_RESOLVED {
                    self.resolved.clear();
                }
                self.resolved.insert((host, port), (addr, now));
                match self.udp.start(result.id, addr, what, now) {
                    Ok(()) => {
                        self.requests.insert(result.id, request);
                    }
                    Err(e) => self.finish(result.id, request, Err(e), now),
                }
            }
            (Ok(JobOutput::Body(body)), None) => {
                let outcome = match request.purpose {
                    Purpose::Announce(_) => parse_announce(&body).map(Outcome::Announce),
                    Purpose::Scrape => {
                        let hash = self.torrents.get(&request.torrent).map(|t| t.info_hash);
                        parse_scrape(&body, &hash.unwrap_or_default()).map(Outcome::Scrape)
                    }
                };
                self.finish(result.id, request, outcome, now);
            }
            (Err(e), _) => self.finish(result.id, request, Err(e), now),
            (Ok(_), _) => {
                let e = TrackerError::Io("the worker answered another question".into());
                self.finish(result.id, request, Err(e), now);
            }
        }
    }

    /// The next datagram for a UDP tracker.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        self.udp.poll_transmit(now)
    }

    /// A datagram arrived on the UDP tracker socket.
    pub fn handle_datagram(&mut self, from: SocketAddr, data: &[u8], now: Instant) {
        self.udp.handle_datagram(from, data, now);
        self.drain_udp(now);
    }

    /// Whether a datagram from `from` is a reply a UDP tracker owes us
    /// (see [`UdpClient::expects`]).
    pub fn expects_datagram(&self, from: SocketAddr, data: &[u8]) -> bool {
        self.udp.expects(from, data)
    }

    /// When [`Trackers::handle_timeout`] (or [`Trackers::start_due`]) has
    /// work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let torrents = self.torrents.values().flat_map(|t| {
            let scrape = t.scrape_due.filter(|_| t.scraping.is_none());
            [t.schedule.poll_timeout(), scrape]
        });
        torrents.chain([self.udp.poll_timeout()]).flatten().min()
    }

    /// UDP retransmissions and deadlines.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.udp.handle_timeout(now);
        self.drain_udp(now);
    }

    fn drain_udp(&mut self, now: Instant) {
        while let Some((rid, result)) = self.udp.poll_result() {
            let Some(request) = self.requests.remove(&rid) else {
                continue;
            };
            let outcome = result.map(|reply| match reply {
                UdpReply::Announced(a) => Outcome::Announce(AnnounceReply::Success(a)),
                UdpReply::Failure(why) => match request.purpose {
                    Purpose::Announce(_) => Outcome::Announce(AnnounceReply::Failure(why)),
                    Purpose::Scrape => Outcome::Scrape(ScrapeReply::Failure(why)),
                },
                UdpReply::Scraped(list) => Outcome::Scrape(match list.first() {
                    Some(s) => ScrapeReply::Success(*s),
                    None => ScrapeReply::Unknown,
                }),
            });
            if outcome.is_err() && is_udp(&request.url) {
                // Perhaps the tracker moved: resolve its name afresh.
                if let Ok(target) = udp_target(&request.url) {
                    self.resolved.remove(&target);
                }
            }
            self.finish(rid, request, outcome, now);
        }
    }

    /// The next event for the caller.
    pub fn poll_event(&mut self) -> Option<TrackerEvent> {
        self.events.pop_front()
    }

    fn finish(
        &mut self,
        rid: u64,
        request: Request,
        outcome: Result<Outcome, TrackerError>,
        now: Instant,
    ) {
        let id = request.torrent;
        let Some(t) = self.torrents.get_mut(&id) else {
            return;
        };
        match request.purpose {
            Purpose::Announce(event) => {
                if t.announcing != Some(rid) {
                    return;
                }
                t.announcing = None;
                match outcome {
                    Ok(Outcome::Announce(AnnounceReply::Success(a))) => {
                        let peers = announced(t, &request.url, event, &a, now);
                        self.events
                            .push_back(TrackerEvent::Peers { torrent: id, peers });
                    }
                    Ok(Outcome::Announce(AnnounceReply::Failure(why))) => {
                        log::warn!("torrent {id}: tracker {} refused: {why}", request.url);
                        announce_failed(t, event, why, now);
                    }
                    Ok(Outcome::Scrape(_)) => {}
                    Err(e) => {
                        log::warn!("torrent {id}: announce to {} failed: {e}", request.url);
                        announce_failed(t, event, e.to_string(), now);
                    }
                }
            }
            Purpose::Scrape => {
                if t.scraping != Some(rid) {
                    return;
                }
                t.scraping = None;
                scraped(t, id, &request.url, outcome, now);
            }
        }
        self.events.push_back(TrackerEvent::Status {
            torrent: id,
            status: t.status(),
        });
        self.forget_if_idle(id);
    }

    fn forget_if_idle(&mut self, id: u64) {
        if self.torrents.get(&id).is_some_and(Torrent::idle) {
            self.torrents.remove(&id);
        }
    }
}

/// A reply read: to an announce or to a scrape.
enum Outcome {
    Announce(AnnounceReply),
    Scrape(ScrapeReply),
}

/// A successful announce: the schedule, the tiers and the figures learn
/// of it. Returns the peers named.
fn announced(
    t: &mut Torrent,
    url: &str,
    event: Option<AnnounceEvent>,
    a: &Announced,
    now: Instant,
) -> Vec<SocketAddr> {
    t.list.succeeded();
    t.schedule
        .handle_reply(&AnnounceReply::Success(a.clone()), now);
    if event == Some(AnnounceEvent::Started) {
        t.started_with = Some(url.to_string());
    }
    t.message = a.warning.clone().map(|w| ("tracker-warning", w));
    if t.scraped.as_deref() != Some(url) {
        // Figures from another tracker do not describe this one's swarm.
        t.scrape = [-1; 3];
    }
    if let Some(n) = a.complete {
        t.scrape[0] = n.into();
    }
    if let Some(n) = a.incomplete {
        t.scrape[1] = n.into();
    }
    // After each announce with an event (the burst at start and at
    // completion), and for a tracker not scraped yet: scrape now.
    if t.running && (event.is_some() || t.scraped.as_deref() != Some(url)) {
        t.scrape_due = Some(now);
    }
    a.peers.clone()
}

/// A failed announce: the error shows, and the next tracker is tried at
/// once unless every one has failed since the last success.
fn announce_failed(t: &mut Torrent, event: Option<AnnounceEvent>, why: String, now: Instant) {
    t.message = Some(("tracker-error", why.clone()));
    if event == Some(AnnounceEvent::Stopped) {
        return t.schedule.handle_failure(why, now);
    }
    if t.list.failed() {
        t.schedule.retry_elsewhere(why, now);
    } else {
        t.schedule.handle_failure(why, now);
    }
}

/// A scrape finished: the figures, or a later retry.
fn scraped(
    t: &mut Torrent,
    id: u64,
    url: &str,
    outcome: Result<Outcome, TrackerError>,
    now: Instant,
) {
    let why = match outcome {
        Ok(Outcome::Scrape(ScrapeReply::Success(s))) => {
            t.scrape = [s.seeders.into(), s.leechers.into(), s.completed.into()];
            t.scraped = Some(url.to_string());
            t.scrape_failures = 0;
            t.scrape_due = t.running.then(|| now + SCRAPE_EVERY);
            return;
        }
        Ok(Outcome::Scrape(ScrapeReply::Unknown)) => {
            "the reply does not name this torrent".to_string()
        }
        Ok(Outcome::Scrape(ScrapeReply::Failure(why))) => why,
        Ok(Outcome::Announce(_)) => "an announce reply".to_string(),
        Err(e) => e.to_string(),
    };
    // A scrape is only for figures: its failure is logged, not shown as
    // the torrent's error, and retried later.
    log::info!("torrent {id}: scrape of {url} failed: {why}");
    t.scrape_failures = t.scrape_failures.saturating_add(1);
    let doublings = t.scrape_failures.saturating_sub(1).min(8);
    let delay = SCRAPE_RETRY
        .saturating_mul(1 << doublings)
        .min(SCRAPE_EVERY);
    t.scrape_due = t.running.then(|| now + delay);
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: [u8; 20] = [0xab; 20];
    const PEER_ID: [u8; 20] = [b'P'; 20];

    fn trackers() -> Trackers {
        let settings = Settings {
            timeout: Duration::from_secs(8),
            numwant: 50,
        };
        Trackers::new(settings, fastrand::Rng::with_seed(5))
    }

    fn tiers(t: &[&[&str]]) -> Vec<Vec<String>> {
        t.iter()
            .map(|tier| tier.iter().map(|s| s.to_string()).collect())
            .collect()
    }

    fn progress(_: u64) -> Progress {
        Progress {
            uploaded: 1,
            downloaded: 2,
            left: 3,
        }
    }

    /// Starts what is due and returns the one job it made.
    fn next_job(tr: &mut Trackers, now: Instant) -> Job {
        tr.start_due(now, PEER_ID, 6881, progress);
        let job = tr.poll_job().expect("a job");
        assert_eq!(tr.poll_job(), None);
        job
    }

    fn fetch_url(job: &Job) -> &str {
        match &job.kind {
            JobKind::Fetch(url) => url,
            other => panic!("not a fetch: {other:?}"),
        }
    }

    fn body(job: &Job, body: &[u8]) -> JobResult {
        JobResult {
            id: job.id,
            result: Ok(JobOutput::Body(body.to_vec())),
        }
    }

    fn events(tr: &mut Trackers) -> Vec<TrackerEvent> {
        std::iter::from_fn(|| tr.poll_event()).collect()
    }

    fn last_status(events: &[TrackerEvent]) -> TrackerStatus {
        events
            .iter()
            .rev()
            .find_map(|e| match e {
                TrackerEvent::Status { status, .. } => Some(status.clone()),
                TrackerEvent::Peers { .. } => None,
            })
            .expect("a status")
    }

    const OK: &[u8] =
        b"d8:completei4e10:incompletei2e8:intervali1800e5:peers6:\x7f\x00\x00\x01\x1a\xe1e";

    #[test]
    fn a_dead_tier_falls_back_at_once_and_the_working_one_is_reported() {
        let t0 = Instant::now();
        let mut tr = trackers();
        tr.start(
            1,
            HASH,
            &tiers(&[&["http://a/announce"], &["http://b/announce"]]),
            t0,
        );
        assert_eq!(last_status(&events(&mut tr)).position, (0, 0));
        let job = next_job(&mut tr, t0);
        assert!(fetch_url(&job).starts_with("http://a/announce?"));
        assert!(fetch_url(&job).contains("event=started"));
        let refused = TrackerError::Connect("a".into(), "refused".into());
        tr.handle_job_result(
            JobResult {
                id: job.id,
                result: Err(refused.clone()),
            },
            t0,
        );
        let st = last_status(&events(&mut tr));
        assert_eq!(
            st.message,
            Some(("tracker-error", refused.to_string())),
            "shown while the next tier is tried"
        );
        assert_eq!(st.position, (1, 0));
        assert!(tr.due(t0), "no back-off before the next tier");
        let job = next_job(&mut tr, t0);
        let url = fetch_url(&job).to_string();
        assert!(url.starts_with("http://b/announce?"), "{url}");
        assert!(url.contains("event=started") && url.contains("numwant=50"));
        assert!(url.contains("uploaded=1&downloaded=2&left=3"), "{url}");
        tr.handle_job_result(body(&job, OK), t0);
        let ev = events(&mut tr);
        assert!(ev.contains(&TrackerEvent::Peers {
            torrent: 1,
            peers: vec!["127.0.0.1:6881".parse().unwrap()],
        }));
        let st = last_status(&ev);
        assert_eq!(st.position, (1, 0));
        assert_eq!(st.message, None);
        assert_eq!(st.scrape, [4, 2, -1], "the announce's figures");
    }

    #[test]
    fn every_tracker_failing_backs_off() {
        let t0 = Instant::now();
        let mut tr = trackers();
        tr.start(
            1,
            HASH,
            &tiers(&[&["http://a/announce", "http://b/announce"]]),
            t0,
        );
        for _ in 0..2 {
            let job = next_job(&mut tr, t0);
            tr.handle_job_result(body(&job, b"d14:failure reason4:nopee"), t0);
        }
        assert!(!tr.due(t0), "both refused: wait");
        let st = last_status(&events(&mut tr));
        assert_eq!(st.message, Some(("tracker-error", "nope".to_string())));
        assert_eq!(tr.poll_timeout(), Some(t0 + Duration::from_secs(30)));
    }

    #[test]
    fn scrapes_follow_the_started_announce_then_every_fifteen_minutes() {
        let t0 = Instant::now();
        let mut tr = trackers();
        tr.start(1, HASH, &tiers(&[&["http://t/x/announce.php?pk=1"]]), t0);
        let job = next_job(&mut tr, t0);
        tr.handle_job_result(body(&job, OK), t0);
        events(&mut tr);
        let job = next_job(&mut tr, t0);
        let url = fetch_url(&job);
        assert_eq!(
            url,
            format!("http://t/x/scrape.php?pk=1&info_hash={}", "%AB".repeat(20))
        );
        let mut reply = b"d5:filesd20:".to_vec();
        reply.extend_from_slice(&HASH);
        reply.extend_from_slice(b"d8:completei9e10:downloadedi70e10:incompletei8eeee");
        tr.handle_job_result(body(&job, &reply), t0);
        assert_eq!(last_status(&events(&mut tr)).scrape, [9, 8, 70]);
        assert_eq!(tr.poll_timeout(), Some(t0 + SCRAPE_EVERY));
        assert!(!tr.due(t0 + SCRAPE_EVERY - Duration::from_secs(1)));
        let job = next_job(&mut tr, t0 + SCRAPE_EVERY);
        assert!(fetch_url(&job).contains("/scrape.php"));
        // A failed scrape is retried later and is not the torrent's error.
        tr.handle_job_result(body(&job, b"<html>"), t0 + SCRAPE_EVERY);
        let st = last_status(&events(&mut tr));
        assert_eq!(st.message, None);
        assert_eq!(st.scrape, [9, 8, 70], "the last figures stay");
        assert_eq!(tr.poll_timeout(), Some(t0 + SCRAPE_EVERY + SCRAPE_RETRY));
    }

    #[test]
    fn a_tracker_without_a_scrape_url_is_not_scraped() {
        let t0 = Instant::now();
        let mut tr = trackers();
        tr.start(1, HASH, &tiers(&[&["http://t/tracker"]]), t0);
        let job = next_job(&mut tr, t0);
        tr.handle_job_result(body(&job, OK), t0);
        tr.start_due(t0, PEER_ID, 6881, progress);
        assert_eq!(tr.poll_job(), None);
        assert_eq!(tr.poll_timeout(), Some(t0 + Duration::from_secs(1800)));
    }

    #[test]
    fn completed_once_then_stopped_and_the_torrent_is_forgotten() {
        let t0 = Instant::now();
        let mut tr = trackers();
        tr.start(1, HASH, &tiers(&[&["http://t/tracker"]]), t0);
        let job = next_job(&mut tr, t0);
        tr.handle_job_result(body(&job, OK), t0);
        tr.completed(1, t0);
        let job = next_job(&mut tr, t0);
        assert!(fetch_url(&job).contains("event=completed"));
        tr.completed(1, t0);
        tr.handle_job_result(body(&job, OK), t0);
        tr.start_due(t0, PEER_ID, 6881, progress);
        assert_eq!(tr.poll_job(), None, "completed is sent once");
        tr.stop(1, t0);
        assert!(tr.busy(1) && tr.announcing());
        let job = next_job(&mut tr, t0);
        assert!(fetch_url(&job).contains("event=stopped"));
        tr.handle_job_result(body(&job, OK), t0);
        assert!(!tr.busy(1) && !tr.announcing());
        assert!(tr.torrents.is_empty());
    }

    #[test]
    fn unknown_schemes_and_bad_udp_urls_are_errors_at_once() {
        let t0 = Instant::now();
        let mut tr = trackers();
        tr.start(1, HASH, &tiers(&[&["wss://t/announce"]]), t0);
        tr.start(2, HASH, &tiers(&[&["udp://t/announce"]]), t0);
        tr.start_due(t0, PEER_ID, 6881, progress);
        assert_eq!(tr.poll_job(), None);
        let ev = events(&mut tr);
        let texts: Vec<String> = ev
            .iter()
            .filter_map(|e| match e {
                TrackerEvent::Status { status, .. } => status.message.clone().map(|m| m.1),
                TrackerEvent::Peers { .. } => None,
            })
            .collect();
        assert!(
            texts
                .iter()
                .any(|t| t.contains("\"wss\" trackers are not supported")),
            "{texts:?}"
        );
        assert!(texts.iter().any(|t| t.contains("no port")), "{texts:?}");
    }

    #[test]
    fn udp_urls_are_split() {
        assert_eq!(
            udp_target("udp://tracker.example:6969/announce"),
            Ok(("tracker.example".to_string(), 6969))
        );
        assert_eq!(udp_target("UDP://[::1]:80"), Ok(("::1".to_string(), 80)));
        assert!(udp_target("udp://h:0/").is_err());
        assert!(udp_target("udp://:5/").is_err());
        assert!(udp_target("udp://h:x/").is_err());
        assert!(udp_target("http://h:1/").is_err());
    }

    /// A UDP tracker named by host: its name is resolved on the worker,
    /// then connect and announce go out as datagrams.
    #[test]
    fn a_udp_tracker_is_resolved_then_spoken_to() {
        let t0 = Instant::now();
        let mut tr = trackers();
        tr.start(
            1,
            HASH,
            &tiers(&[&["udp://tracker.example:6969/announce"]]),
            t0,
        );
        let job = next_job(&mut tr, t0);
        assert_eq!(job.kind, JobKind::Resolve("tracker.example".into(), 6969));
        let addr: SocketAddr = "127.0.0.1:6969".parse().unwrap();
        tr.handle_job_result(
            JobResult {
                id: job.id,
                result: Ok(JobOutput::Addrs(vec!["[::1]:6969".parse().unwrap(), addr])),
            },
            t0,
        );
        let connect = tr.poll_transmit(t0).expect("connect");
        assert_eq!(connect.destination, addr, "IPv4 first");
        assert_eq!(connect.payload.len(), 16);
        let txid = &connect.payload[12..16];
        let mut reply = vec![0, 0, 0, 0];
        reply.extend_from_slice(txid);
        reply.extend_from_slice(&[9; 8]);
        tr.handle_datagram(addr, &reply, t0);
        let announce = tr.poll_transmit(t0).expect("announce");
        assert_eq!(announce.payload.len(), 98);
        assert_eq!(&announce.payload[..8], &[9; 8]);
        let mut reply = vec![0, 0, 0, 1];
        reply.extend_from_slice(&announce.payload[12..16]);
        reply.extend_from_slice(&[0, 0, 7, 8, 0, 0, 0, 3, 0, 0, 0, 1]);
        reply.extend_from_slice(&[10, 0, 0, 1, 0, 80]);
        tr.handle_datagram(addr, &reply, t0);
        let ev = events(&mut tr);
        assert!(ev.contains(&TrackerEvent::Peers {
            torrent: 1,
            peers: vec!["10.0.0.1:80".parse().unwrap()],
        }));
        assert_eq!(last_status(&ev).scrape, [1, 3, -1]);
        // The scrape goes out at once, to the known address (no resolve).
        tr.start_due(t0, PEER_ID, 6881, progress);
        assert_eq!(tr.poll_job(), None);
        let scrape = tr.poll_transmit(t0).expect("scrape");
        assert_eq!(scrape.payload.len(), 36);
    }
}
