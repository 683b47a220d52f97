//! The RPC front: Transmission's JSON RPC over HTTP/1.1, and the web
//! interface's files, on the same loop and core as the IPC.
//!
//! [`RpcFront`] is the daemon-wide part (the guards with their session id
//! and lock-out, the web files and their cache, what `session-get` shows
//! of the server); [`RpcConn`] is one TCP client: an
//! [`HttpConn`](crate::http::HttpConn) whose requests pass the guards,
//! then go to the method layer ([`crate::rpc::dispatch`]) or the web
//! files. Answers leave in request order (HTTP/1.1 has no other): a reply
//! to a change waits for the turn's commit like an IPC reply, and so do
//! the requests pipelined behind it; a `torrent-add` of a URL waits for
//! its fetch on the worker, a removal with `delete-local-data` for the
//! disk thread.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use log::{debug, info, warn};

use super::{Effect, Env, Facts, FrontConn};
use crate::http::files::missing_response;
use crate::http::{Guard, GuardConfig, HttpConn, HttpDate, Limits, Response, Verdict, WebFiles};
use crate::registry::metainfo::MAX_METAINFO_BYTES;
use crate::rpc::{self, Context, DiskSpace, Handled, PendingAdd, RpcReply, RpcSettings};

/// The RPC server's configuration.
#[derive(Debug, Clone)]
pub struct RpcOptions {
    /// The guards' settings (URL, credentials, whitelists).
    pub guard: GuardConfig,
    /// The web interface's directory, if any was found.
    pub web_dir: Option<PathBuf>,
    /// Where the web interface was looked for, for the page shown when
    /// none was found.
    pub web_looked_in: String,
    /// Bounds of each connection.
    pub limits: Limits,
    /// The port it listens on (`session-get`'s `rpc-port`).
    pub port: u16,
}

/// The RPC front's daemon-wide state.
pub struct RpcFront {
    guard: Guard,
    web: Option<WebFiles>,
    web_looked_in: String,
    settings: RpcSettings,
    limits: Limits,
}

impl RpcFront {
    /// The front for `options`; `rng` makes the session id (seed it from
    /// the system's randomness). A web directory that cannot be opened is
    /// logged and left out.
    pub fn new(options: RpcOptions, rng: &mut fastrand::Rng, now: Instant) -> RpcFront {
        let settings = RpcSettings {
            enabled: true,
            port: options.port,
            url: options.guard.rpc_url.clone(),
            authentication_required: options.guard.password.is_some(),
            whitelist_enabled: options.guard.address_whitelist.is_some(),
            whitelist: options.guard.address_whitelist.clone().unwrap_or_default(),
            host_whitelist_enabled: options.guard.host_whitelist.is_some(),
            host_whitelist: options.guard.host_whitelist.clone().unwrap_or_default(),
        };
        let web = options
            .web_dir
            .as_deref()
            .and_then(|dir| match WebFiles::open(dir) {
                Ok(w) => {
                    info!("web interface: serving {}", w.root().display());
                    Some(w)
                }
                Err(e) => {
                    warn!("web interface: cannot serve {}: {e}", dir.display());
                    None
                }
            });
        RpcFront {
            guard: Guard::new(options.guard, rng, now),
            web,
            web_looked_in: options.web_looked_in,
            settings,
            limits: options.limits,
        }
    }

    /// The RPC path clients post to.
    pub fn rpc_path(&self) -> String {
        self.guard.rpc_path()
    }

    /// A connection for client `serial` from `peer`.
    pub fn open(&self, serial: u64, peer: Option<SocketAddr>, now: Instant) -> RpcConn {
        RpcConn {
            http: HttpConn::new(self.limits.clone(), now),
            // A client without an address (a socket pair in tests) is
            // treated as local.
            peer: peer.map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |a| a.ip()),
            serial,
            answers: VecDeque::new(),
            effects: VecDeque::new(),
            next_ticket: 0,
        }
    }

    /// The method layer's context for a call at `now`.
    fn context<'a>(
        &'a self,
        facts: &'a Facts,
        now: Instant,
        wall: SystemTime,
        free_space: &'a FreeSpace,
    ) -> Context<'a> {
        Context {
            now,
            wall,
            started: facts.started,
            version: env!("CARGO_PKG_VERSION"),
            free_space,
            rpc: &self.settings,
            session_id: self.guard.session_id(),
            peer_port_bound: facts.peer_port_bound,
            peer_limit_global: facts.peer_limit_global,
            peer_limit_per_torrent: facts.peer_limit_per_torrent,
        }
    }
}

type FreeSpace = dyn Fn(&Path) -> io::Result<DiskSpace>;

/// `free-space`: the file system's free and total bytes (statvfs(2),
/// which does not block on a local file system).
fn free_space(path: &Path) -> io::Result<DiskSpace> {
    let s = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
    let unit = s.fragment_size();
    Ok(DiskSpace {
        free: s.blocks_available().saturating_mul(unit),
        total: s.blocks().saturating_mul(unit),
    })
}

/// An answer owed, in request order.
enum Answer {
    /// Ready to go out once those before it have.
    Ready(Response),
    /// A change's reply: waits for the commit (and the bind).
    Held(RpcReply),
    /// A `torrent-add` of a URL: waits for the fetch.
    Fetching { ticket: u64, request: PendingAdd },
    /// A removal's reply: waits until every file deletion is done.
    Deleting {
        tickets: Vec<u64>,
        body: Vec<u8>,
        tag: Option<i64>,
        /// The first deletion's failure.
        error: Option<String>,
    },
}

/// One RPC client.
pub struct RpcConn {
    http: HttpConn,
    peer: IpAddr,
    serial: u64,
    answers: VecDeque<Answer>,
    effects: VecDeque<Effect>,
    next_ticket: u64,
}

impl RpcConn {
    /// Runs the requests that are complete.
    fn serve(&mut self, env: &mut Env<'_>) {
        let Env {
            svc,
            rpc: front,
            facts,
            now,
            wall,
        } = env;
        while let Some(request) = self.http.poll_request() {
            let Some(front) = front.as_deref_mut() else {
                self.answers
                    .push_back(Answer::Ready(Response::html(503, "").closing()));
                continue;
            };
            let answer = match front.guard.check(&request, self.peer, *now) {
                Verdict::Respond(r) => {
                    debug!(
                        "RPC client {}: {} {} -> {}",
                        self.serial,
                        request.method.as_str(),
                        request.path,
                        r.status()
                    );
                    Answer::Ready(r)
                }
                Verdict::Web(sub) => Answer::Ready(match front.web.as_mut() {
                    Some(web) => web.serve(&request, &sub),
                    None => missing_response(&front.web_looked_in),
                }),
                Verdict::Rpc => {
                    let ctx = front.context(facts, *now, *wall, &free_space);
                    match rpc::dispatch(svc, &request.body, &ctx) {
                        Handled::Reply(reply) => self.answer(reply),
                        Handled::Fetch { url, request } => self.fetch(url, request),
                    }
                }
            };
            self.answers.push_back(answer);
        }
        self.flush();
    }

    /// What to do with a method's reply.
    fn answer(&mut self, reply: RpcReply) -> Answer {
        if reply.durable || reply.rebinds {
            return Answer::Held(reply);
        }
        if !reply.reannounce.is_empty() {
            self.effects
                .push_back(Effect::Reannounce(reply.reannounce.clone()));
        }
        Answer::Ready(Response::json(reply.body))
    }

    fn fetch(&mut self, url: String, request: PendingAdd) -> Answer {
        let ticket = self.ticket();
        self.effects.push_back(Effect::Fetch {
            ticket,
            url,
            cookies: request.cookies().map(str::to_string),
            max_bytes: MAX_METAINFO_BYTES,
        });
        Answer::Fetching { ticket, request }
    }

    fn ticket(&mut self) -> u64 {
        self.next_ticket += 1;
        self.next_ticket
    }

    /// Hands the answers that are ready, in order, to the connection.
    fn flush(&mut self) {
        while matches!(self.answers.front(), Some(Answer::Ready(_))) {
            if let Some(Answer::Ready(r)) = self.answers.pop_front() {
                if let Err(e) = self.http.respond(r) {
                    warn!("RPC client {}: {e}", self.serial);
                }
            }
        }
    }

    /// A held reply after a successful commit and bind: sent, or waiting
    /// for its data to be deleted.
    fn committed(&mut self, reply: RpcReply) -> Answer {
        if !reply.reannounce.is_empty() {
            self.effects
                .push_back(Effect::Reannounce(reply.reannounce.clone()));
        }
        if reply.delete_data.is_empty() {
            return Answer::Ready(Response::json(reply.body));
        }
        let mut tickets = Vec::new();
        for removal in reply.delete_data {
            let ticket = self.ticket();
            tickets.push(ticket);
            self.effects.push_back(Effect::DeleteData {
                ticket,
                tree: removal.into_tree(),
            });
        }
        Answer::Deleting {
            tickets,
            body: reply.body,
            tag: reply.tag,
            error: None,
        }
    }

    fn set_date(&mut self, wall: SystemTime) {
        let secs = wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.http.set_date(HttpDate::from_unix_secs(secs));
    }
}

impl FrontConn for RpcConn {
    fn receive(&mut self, bytes: &[u8], env: &mut Env<'_>) -> Result<(), String> {
        self.set_date(env.wall);
        let result = self.http.receive(bytes, env.now);
        // Requests completed before a bad one are still answered.
        self.serve(env);
        result.map_err(|e| e.to_string())
    }

    fn end_of_input(&mut self) {
        self.http.end_of_input();
    }

    fn output(&self) -> &[u8] {
        self.http.output()
    }

    fn consume_output(&mut self, n: usize) {
        self.http.consume(n);
    }

    fn queued_output(&self) -> usize {
        // The HTTP connection bounds its own output (requests in flight
        // times the reply limit, no reading past its output limit) and
        // drops a client that stops reading; a large reply is no abuse.
        0
    }

    fn is_held(&self) -> bool {
        self.answers.iter().any(|a| matches!(a, Answer::Held(_)))
    }

    fn release(&mut self, commit: &Result<(), String>, bind: Option<&str>) {
        let answers = std::mem::take(&mut self.answers);
        for answer in answers {
            let answer = match answer {
                Answer::Held(reply) => match (commit, bind) {
                    (Err(e), _) => Answer::Ready(Response::json(rpc::failed(reply.tag, e))),
                    (Ok(()), Some(b)) if reply.rebinds => {
                        Answer::Ready(Response::json(rpc::failed(reply.tag, b)))
                    }
                    (Ok(()), _) => self.committed(reply),
                },
                other => other,
            };
            self.answers.push_back(answer);
        }
        self.flush();
    }

    fn is_backpressured(&self) -> bool {
        !self.http.wants_input()
    }

    fn has_pending_input(&self) -> bool {
        self.http.has_request()
    }

    fn greeted(&self) -> bool {
        // HTTP has no greeting; slow or silent clients meet the HTTP
        // connection's own head and idle timers instead.
        true
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.http.poll_timeout()
    }

    fn handle_timeout(&mut self, now: Instant) -> bool {
        if let Err(e) = self.http.handle_timeout(now) {
            debug!("RPC client {}: {e}", self.serial);
        }
        self.http.should_close()
    }

    fn close_after_output(&self) -> bool {
        self.answers.is_empty() && self.http.should_close()
    }

    fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    fn fetched(&mut self, ticket: u64, result: Result<Vec<u8>, String>, env: &mut Env<'_>) {
        let Some(i) = self
            .answers
            .iter()
            .position(|a| matches!(a, Answer::Fetching { ticket: t, .. } if *t == ticket))
        else {
            return;
        };
        let Some(Answer::Fetching { request, .. }) = self.answers.remove(i) else {
            return;
        };
        let Some(front) = env.rpc.as_deref() else {
            return;
        };
        let ctx = front.context(env.facts, env.now, env.wall, &free_space);
        let reply = rpc::finish_fetch(env.svc, result, request, &ctx);
        let answer = self.answer(reply);
        self.answers.insert(i, answer);
        self.flush();
    }

    fn deleted(&mut self, ticket: u64, result: Result<(), String>) {
        for answer in self.answers.iter_mut() {
            if let Answer::Deleting {
                tickets,
                body,
                tag,
                error,
            } = answer
            {
                let Some(at) = tickets.iter().position(|t| *t == ticket) else {
                    continue;
                };
                tickets.swap_remove(at);
                if let Err(e) = result {
                    warn!("RPC client {}: deleting data: {e}", self.serial);
                    error.get_or_insert(e);
                }
                if tickets.is_empty() {
                    let out = match error.take() {
                        Some(e) => rpc::failed(*tag, &e),
                        None => std::mem::take(body),
                    };
                    *answer = Answer::Ready(Response::json(out));
                }
                break;
            }
        }
        self.flush();
    }
}
