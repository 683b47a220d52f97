//! The one blocking part of tracker traffic: HTTP requests run on worker
//! threads, off the reactor, which only submits jobs and collects bodies.
//!
//! Why threads rather than sockets on the reactor: name resolution is
//! blocking anyway (`getaddrinfo`), and a TLS crate will slot in here more
//! simply over a blocking stream. Announces are rare (one per torrent per
//! tracker every half hour or so), so a few threads carry them all.
//!
//! Why a small pool (up to [`MAX_THREADS`], spawned as jobs queue up)
//! rather than one thread: a tracker that accepts and never answers holds
//! its thread for the job's whole timeout, and the announces of every
//! other torrent would wait behind it. With a pool, it takes as many dead
//! trackers as threads to delay the rest, and even then only by one
//! timeout.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use super::announce::{failure_reason, TrackerError};
use super::http::{
    parse_url, resolve_location, write_request, HttpUrl, Progress, Response, ResponseParser,
    MAX_REDIRECTS,
};

/// Most worker threads.
pub const MAX_THREADS: usize = 4;

/// Most addresses of one host tried.
const MAX_ADDRS: usize = 8;

/// A request for the worker: fetch `url`, within `timeout` all told
/// (resolving, connecting, redirects, reading).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The caller's id for the job, returned with its result.
    pub id: u64,
    /// The full announce URL.
    pub url: String,
    /// The time the whole job may take.
    pub timeout: Duration,
}

/// The outcome of a [`Job`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobResult {
    /// The job's id.
    pub id: u64,
    /// The reply body (for [`parse_announce`](super::announce::parse_announce)),
    /// or why there is none.
    pub result: Result<Vec<u8>, TrackerError>,
}

/// State the worker threads share with the handle.
struct Shared {
    jobs: Mutex<Receiver<Job>>,
    /// Jobs submitted and not yet taken by a thread.
    queued: AtomicUsize,
    /// Threads waiting for a job (or about to).
    idle: AtomicUsize,
    /// The handle was dropped: abandon work at the next chance.
    shutdown: AtomicBool,
}

/// The handle to the tracker worker threads. Dropping it ends them without
/// waiting: idle threads exit at once, busy ones after their current job
/// (bounded by its timeout).
pub struct TrackerWorker {
    jobs: Sender<Job>,
    results_tx: Sender<JobResult>,
    results: Receiver<JobResult>,
    shared: Arc<Shared>,
    waker: Arc<mio::Waker>,
    threads: usize,
}

impl TrackerWorker {
    /// A worker that wakes the reactor through `waker` whenever a result
    /// is ready. Threads start as jobs arrive.
    pub fn spawn(waker: Arc<mio::Waker>) -> TrackerWorker {
        let (jobs, jobs_rx) = mpsc::channel();
        let (results_tx, results) = mpsc::channel();
        TrackerWorker {
            jobs,
            results_tx,
            results,
            shared: Arc::new(Shared {
                jobs: Mutex::new(jobs_rx),
                queued: AtomicUsize::new(0),
                idle: AtomicUsize::new(0),
                shutdown: AtomicBool::new(false),
            }),
            waker,
            threads: 0,
        }
    }

    /// Queues a job. Its result arrives through [`try_recv`](Self::try_recv).
    pub fn submit(&mut self, job: Job) {
        let id = job.id;
        self.shared.queued.fetch_add(1, Ordering::SeqCst);
        if self.jobs.send(job).is_err() {
            // Cannot happen while `self` holds the receiver's Arc; answer
            // anyway rather than lose the job.
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            self.push(id, Err(TrackerError::WorkerGone));
            return;
        }
        let busy =
            self.shared.queued.load(Ordering::SeqCst) > self.shared.idle.load(Ordering::SeqCst);
        if busy && self.threads < MAX_THREADS {
            self.start_thread(id);
        }
    }

    fn start_thread(&mut self, id: u64) {
        let shared = Arc::clone(&self.shared);
        let results = self.results_tx.clone();
        let waker = Arc::clone(&self.waker);
        shared.idle.fetch_add(1, Ordering::SeqCst);
        let spawned = thread::Builder::new()
            .name("tracker".into())
            .spawn(move || worker_loop(&shared, &results, &waker));
        match spawned {
            Ok(_detached) => self.threads += 1,
            Err(e) => {
                self.shared.idle.fetch_sub(1, Ordering::SeqCst);
                log::warn!("cannot start a tracker thread: {e}");
                if self.threads == 0 {
                    // No thread will ever take the job: fail it now.
                    let taken = self
                        .shared
                        .jobs
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .try_recv();
                    if taken.is_ok() {
                        self.shared.queued.fetch_sub(1, Ordering::SeqCst);
                    }
                    self.push(
                        id,
                        Err(TrackerError::Io(format!("cannot start thread: {e}"))),
                    );
                }
            }
        }
    }

    fn push(&self, id: u64, result: Result<Vec<u8>, TrackerError>) {
        if self.results_tx.send(JobResult { id, result }).is_ok() {
            if let Err(e) = self.waker.wake() {
                log::warn!("cannot wake the reactor: {e}");
            }
        }
    }

    /// The next finished job, if any.
    pub fn try_recv(&self) -> Option<JobResult> {
        self.results.try_recv().ok()
    }

    /// Threads started so far.
    pub fn threads(&self) -> usize {
        self.threads
    }
}

impl Drop for TrackerWorker {
    fn drop(&mut self) {
        // The job sender drops with `self`, which ends idle threads' `recv`.
        // Busy threads see the flag between steps; none is joined, so a
        // thread stuck connecting never holds up the caller.
        self.shared.shutdown.store(true, Ordering::SeqCst);
    }
}

fn worker_loop(shared: &Shared, results: &Sender<JobResult>, waker: &mio::Waker) {
    loop {
        let job = shared
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .recv();
        let Ok(job) = job else {
            return; // the handle is gone
        };
        shared.queued.fetch_sub(1, Ordering::SeqCst);
        shared.idle.fetch_sub(1, Ordering::SeqCst);
        if shared.shutdown.load(Ordering::SeqCst) {
            return;
        }
        log::debug!("tracker job {}: GET {}", job.id, job.url);
        let result = fetch(&job.url, job.timeout, &shared.shutdown);
        if let Err(e) = &result {
            log::debug!("tracker job {}: {e}", job.id);
        }
        shared.idle.fetch_add(1, Ordering::SeqCst);
        if results.send(JobResult { id: job.id, result }).is_err() {
            return;
        }
        if let Err(e) = waker.wake() {
            log::warn!("cannot wake the reactor: {e}");
        }
    }
}

/// Fetches `url`, following redirects, all within `timeout`. A success
/// status gives the body; so does an error status whose body carries a
/// bencoded `failure reason` (some trackers send refusals as 4xx), so the
/// tracker's own words reach the user.
pub fn fetch(url: &str, timeout: Duration, shutdown: &AtomicBool) -> Result<Vec<u8>, TrackerError> {
    let start = Instant::now();
    let deadline = start
        .checked_add(timeout)
        .unwrap_or_else(|| start + Duration::from_secs(3600));
    let mut url = parse_url(url)?;
    for _ in 0..=MAX_REDIRECTS {
        if shutdown.load(Ordering::SeqCst) {
            return Err(TrackerError::WorkerGone);
        }
        let response = request(&url, deadline)?;
        if response.is_redirect() {
            let location = response
                .location
                .as_deref()
                .ok_or_else(|| TrackerError::BadRedirect("no Location header".into()))?;
            url = resolve_location(&url, location)?;
            continue;
        }
        if response.is_success() || failure_reason(&response.body).is_some() {
            return Ok(response.body);
        }
        return Err(TrackerError::Http(response.status, response.reason));
    }
    Err(TrackerError::TooManyRedirects(MAX_REDIRECTS))
}

/// Time left before `deadline`, or a timeout error if none.
fn remaining(deadline: Instant) -> Result<Duration, TrackerError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(TrackerError::Timeout);
    }
    Ok(left)
}

fn io_error(e: &io::Error) -> TrackerError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => TrackerError::Timeout,
        _ => TrackerError::Io(e.to_string()),
    }
}

/// One request and its response.
fn request(url: &HttpUrl, deadline: Instant) -> Result<Response, TrackerError> {
    let mut stream = Transport::open(url, deadline)?;
    let mut out = Vec::with_capacity(512);
    write_request(&mut out, url);
    stream.set_timeouts(remaining(deadline)?)?;
    stream.write_all(&out).map_err(|e| io_error(&e))?;
    let mut parser = ResponseParser::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Reset each time so a server dripping bytes cannot outlast the
        // deadline.
        stream.set_timeouts(remaining(deadline)?)?;
        match stream.read(&mut buf) {
            Ok(0) => return parser.finish(),
            Ok(n) => {
                if let Progress::Done(response) = parser.feed(buf.get(..n).unwrap_or_default())? {
                    return Ok(response);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error(&e)),
        }
    }
}

/// The byte stream to a tracker. TLS will be another variant, opened by
/// wrapping the TCP stream after connecting.
enum Transport {
    Plain(TcpStream),
}

impl Transport {
    fn open(url: &HttpUrl, deadline: Instant) -> Result<Transport, TrackerError> {
        if url.https {
            return Err(TrackerError::Unsupported(
                "https trackers are not supported yet",
            ));
        }
        let addrs = resolve(&url.host, url.port, deadline)?;
        connect(&addrs, &url.authority(), deadline).map(Transport::Plain)
    }

    fn set_timeouts(&self, timeout: Duration) -> Result<(), TrackerError> {
        match self {
            Transport::Plain(s) => s
                .set_read_timeout(Some(timeout))
                .and_then(|()| s.set_write_timeout(Some(timeout)))
                .map_err(|e| io_error(&e)),
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.flush(),
        }
    }
}

/// The addresses of `host`. Names resolve on a helper thread so the
/// deadline holds even when the resolver hangs (the helper is left to
/// finish on its own).
fn resolve(host: &str, port: u16, deadline: Instant) -> Result<Vec<SocketAddr>, TrackerError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let (tx, rx) = mpsc::channel();
    let name = host.to_string();
    thread::Builder::new()
        .name("tracker-dns".into())
        .spawn(move || {
            let result = (name.as_str(), port)
                .to_socket_addrs()
                .map(|a| a.take(MAX_ADDRS).collect::<Vec<_>>());
            let _ = tx.send(result);
        })
        .map_err(|e| TrackerError::Resolve(host.to_string(), e.to_string()))?;
    match rx.recv_timeout(remaining(deadline)?) {
        Ok(Ok(addrs)) if !addrs.is_empty() => Ok(addrs),
        Ok(Ok(_)) => Err(TrackerError::Resolve(
            host.to_string(),
            "no addresses".into(),
        )),
        Ok(Err(e)) => Err(TrackerError::Resolve(host.to_string(), e.to_string())),
        Err(RecvTimeoutError::Timeout) => Err(TrackerError::Timeout),
        Err(RecvTimeoutError::Disconnected) => Err(TrackerError::Resolve(
            host.to_string(),
            "resolver thread failed".into(),
        )),
    }
}

/// Connects to the first address that accepts, sharing the time left
/// among the addresses still to try (one black-holed address must not use
/// it all).
fn connect(
    addrs: &[SocketAddr],
    shown: &str,
    deadline: Instant,
) -> Result<TcpStream, TrackerError> {
    let mut last = String::from("no addresses");
    for (i, addr) in addrs.iter().enumerate() {
        let left = remaining(deadline)?;
        let tries = u32::try_from(addrs.len() - i).unwrap_or(1).max(1);
        match TcpStream::connect_timeout(addr, left / tries) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    remaining(deadline)?;
    Err(TrackerError::Connect(shown.to_string(), last))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn https_is_refused_clearly() {
        let flag = AtomicBool::new(false);
        let err = fetch(
            "https://127.0.0.1:1/announce",
            Duration::from_secs(1),
            &flag,
        );
        assert_eq!(
            err,
            Err(TrackerError::Unsupported(
                "https trackers are not supported yet"
            ))
        );
    }

    #[test]
    fn bad_urls_fail_before_any_io() {
        let flag = AtomicBool::new(false);
        assert!(matches!(
            fetch("udp://127.0.0.1:1/", Duration::from_secs(1), &flag),
            Err(TrackerError::BadUrl(_))
        ));
    }

    #[test]
    fn a_shut_down_worker_does_not_fetch() {
        let flag = AtomicBool::new(true);
        assert_eq!(
            fetch("http://127.0.0.1:1/", Duration::from_secs(1), &flag),
            Err(TrackerError::WorkerGone)
        );
    }

    #[test]
    fn a_zero_timeout_is_a_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let flag = AtomicBool::new(false);
        assert_eq!(
            fetch(&url, Duration::ZERO, &flag),
            Err(TrackerError::Timeout)
        );
    }

    #[test]
    fn ip_literals_resolve_without_a_lookup() {
        let far = Instant::now() + Duration::from_secs(5);
        assert_eq!(
            resolve("::1", 80, far),
            Ok(vec!["[::1]:80".parse().unwrap()])
        );
        assert_eq!(
            resolve("127.0.0.1", 8, far),
            Ok(vec!["127.0.0.1:8".parse().unwrap()])
        );
    }

    #[test]
    fn io_errors_map_to_tracker_errors() {
        assert_eq!(
            io_error(&io::Error::from(io::ErrorKind::WouldBlock)),
            TrackerError::Timeout
        );
        assert_eq!(
            io_error(&io::Error::from(io::ErrorKind::TimedOut)),
            TrackerError::Timeout
        );
        assert!(matches!(
            io_error(&io::Error::from(io::ErrorKind::ConnectionReset)),
            TrackerError::Io(_)
        ));
    }
}
