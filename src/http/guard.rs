//! The RPC server's guards and routing, in the order Transmission's
//! `rpc-server.cc` applies them: the anti-brute-force lock-out and the
//! client address whitelist (403), Basic authentication (401, or 429 when
//! checks are rate-limited), the redirects to the web interface (301),
//! the web interface's files, then, for the RPC path only, the Host
//! whitelist against DNS rebinding (421), the session id against CSRF
//! (409), and the method (405).
//!
//! Unlike Transmission 4.0.6, no CORS headers are sent: its
//! `Access-Control-Allow-Origin: *` and `Access-Control-Expose-Headers`
//! let any web page read the session id, which defeats the CSRF guard
//! (Transmission removed them in PR 8938). The web interface is served
//! from this origin and other clients are not browsers, so none needs
//! them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use subtle::ConstantTimeEq;

use super::auth::{AuthOutcome, Authenticator, PasswordHash};
use super::request::{Method, Request};
use super::response::Response;

/// Transmission's default `rpc-url`: the RPC is at `<url>rpc`, the web
/// interface at `<url>web/`.
pub const DEFAULT_RPC_URL: &str = "/transmission/";

/// The CSRF header, sent by the client and in our 409.
pub const SESSION_ID_HEADER: &str = "X-Transmission-Session-Id";

/// Characters of a session id (Transmission's length; 48 alphanumerics
/// are 285 bits, more than the generator has, so its seed is the bound).
pub const SESSION_ID_LEN: usize = 48;

/// Longest `Host` value considered (a DNS name is at most 253 bytes, and
/// a port and brackets add a few): longer ones are refused unparsed.
const MAX_HOST: usize = 270;

/// Transmission's default client whitelist (`rpc-whitelist`).
pub const DEFAULT_ADDRESS_WHITELIST: &str = "127.0.0.1,::1";

/// The RPC server's settings (Transmission's `rpc-*` keys).
#[derive(Debug, Clone)]
pub struct GuardConfig {
    /// `rpc-url`: the prefix of the RPC and web paths; a `/` is added at
    /// each end if missing.
    pub rpc_url: String,
    /// `rpc-username`.
    pub username: String,
    /// `rpc-password` when `rpc-authentication-required`: every request
    /// must then carry the credentials.
    pub password: Option<PasswordHash>,
    /// `rpc-host-whitelist` when `rpc-host-whitelist-enabled`; `None`
    /// turns the Host check off. `localhost`, `localhost.` and IP
    /// literals pass regardless.
    pub host_whitelist: Option<Vec<String>>,
    /// `rpc-whitelist` when `rpc-whitelist-enabled`: patterns of client
    /// addresses (`192.168.*.*`); `None` allows every client.
    pub address_whitelist: Option<Vec<String>>,
    /// `anti-brute-force-threshold` when `anti-brute-force-enabled`:
    /// after this many failed logins in a row every request gets 403
    /// until the guard is made anew (Transmission: until restart).
    pub lockout_after: Option<u32>,
}

impl Default for GuardConfig {
    /// Transmission's defaults: no password, Host check on with an empty
    /// list, clients from loopback only.
    fn default() -> GuardConfig {
        GuardConfig {
            rpc_url: DEFAULT_RPC_URL.to_string(),
            username: String::new(),
            password: None,
            host_whitelist: Some(Vec::new()),
            address_whitelist: Some(parse_list(DEFAULT_ADDRESS_WHITELIST)),
            lockout_after: None,
        }
    }
}

/// Splits a whitelist setting as Transmission does: on spaces, commas
/// and semicolons, dropping empty entries.
pub fn parse_list(text: &str) -> Vec<String> {
    text.split([' ', ',', ';'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// An authorised RPC call (a `POST` to the RPC path with the session
    /// id): run its body and answer with [`Response::json`].
    Rpc,
    /// A web interface file: its path under the web directory, still
    /// percent-encoded, for [`WebFiles::serve`](super::WebFiles::serve).
    Web(String),
    /// Answer with this (a refusal, a redirect, `OPTIONS`).
    Respond(Response),
}

/// The RPC server's guards, one for the daemon.
#[derive(Debug)]
pub struct Guard {
    /// `rpc_url` normalised to start and end with `/`.
    base: String,
    session_id: String,
    auth: Option<Authenticator>,
    host_whitelist: Option<Vec<String>>,
    address_whitelist: Option<Vec<String>>,
    lockout_after: Option<u32>,
    /// Failed logins in a row.
    failures: u32,
}

impl Guard {
    /// Guards for `config`. `rng` makes the session id and the cache key
    /// of the credential check: give it a generator of its own, seeded
    /// from the system's randomness (`getrandom`), not one whose output
    /// is seen elsewhere (peer ids), since the id must be unguessable.
    pub fn new(config: GuardConfig, rng: &mut fastrand::Rng, now: Instant) -> Guard {
        let session_id = (0..SESSION_ID_LEN).map(|_| rng.alphanumeric()).collect();
        let auth = config
            .password
            .map(|hash| Authenticator::new(&config.username, hash, rng, now));
        let mut base = config.rpc_url.trim().to_string();
        if !base.starts_with('/') {
            base.insert(0, '/');
        }
        if !base.ends_with('/') {
            base.push('/');
        }
        let lower = |list: Vec<String>| list.into_iter().map(|s| s.to_ascii_lowercase()).collect();
        Guard {
            base,
            session_id,
            auth,
            host_whitelist: config.host_whitelist.map(lower),
            address_whitelist: config.address_whitelist.map(lower),
            lockout_after: config.lockout_after,
            failures: 0,
        }
    }

    /// The session id clients must send (also `session-get`'s
    /// `session-id`).
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// The RPC path (`/transmission/rpc`).
    pub fn rpc_path(&self) -> String {
        format!("{}rpc", self.base)
    }

    /// Whether a client at `ip` may use the server (`rpc-whitelist`). The
    /// owner may call it at accept and close at once; [`check`](Self::check)
    /// answers such a client's requests with 403 anyway.
    pub fn allows_peer(&self, ip: IpAddr) -> bool {
        let Some(list) = &self.address_whitelist else {
            return true;
        };
        let text = ip.to_string();
        // A v4 client on a dual-stack socket shows as ::ffff:a.b.c.d.
        let v4 = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(|v4| v4.to_string()),
            IpAddr::V4(_) => None,
        };
        list.iter().any(|pattern| {
            wildmat(&text, pattern) || v4.as_deref().is_some_and(|v4| wildmat(v4, pattern))
        })
    }

    /// Decides what to do with `request` from a client at `peer`.
    pub fn check(&mut self, request: &Request, peer: IpAddr, now: Instant) -> Verdict {
        if let Some(refusal) = self
            .admission(request, peer, now)
            .or_else(|| self.redirect(request))
        {
            return Verdict::Respond(refusal);
        }
        if let Some(sub) = request.path.strip_prefix(&format!("{}web/", self.base)) {
            return Verdict::Web(sub.to_string());
        }
        if !request.path.starts_with(&self.rpc_path()) {
            return Verdict::Respond(Response::html(404, ""));
        }
        if let Some(refusal) = self.rpc_refusal(request) {
            return Verdict::Respond(refusal);
        }
        match request.method {
            Method::Post => Verdict::Rpc,
            _ => Verdict::Respond(Response::html(405, "").with_header("Allow", "POST")),
        }
    }

    /// The lock-out, the address whitelist, `OPTIONS` and the
    /// credentials: a response when the request stops here.
    fn admission(&mut self, request: &Request, peer: IpAddr, now: Instant) -> Option<Response> {
        if self.lockout_after.is_some_and(|n| self.failures >= n) {
            return Some(Response::html(403, LOCKED_OUT));
        }
        if !self.allows_peer(peer) {
            return Some(Response::html(403, ADDRESS_REFUSED));
        }
        if request.method == Method::Options {
            // No CORS: the answer names the methods and nothing else.
            return Some(Response::new(204).with_header("Allow", "GET, HEAD, POST, OPTIONS"));
        }
        let auth = self.auth.as_mut()?;
        match auth.check(request.headers.get_bytes("authorization"), now) {
            AuthOutcome::Allowed => {
                self.failures = 0;
                None
            }
            AuthOutcome::Denied => {
                self.failures = self.failures.saturating_add(1);
                Some(
                    Response::html(401, "")
                        .with_header("WWW-Authenticate", "Basic realm=\"Transmission\""),
                )
            }
            AuthOutcome::Throttled(wait) => {
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                Some(
                    Response::html(429, THROTTLED)
                        .with_header("Retry-After", &secs.max(1).to_string()),
                )
            }
        }
    }

    /// `/`, the prefix with or without its `/`, and the web directory
    /// without its `/` lead to the web interface.
    fn redirect(&self, request: &Request) -> Option<Response> {
        let path = request.path.as_str();
        let base = self.base.as_str();
        let bare = base.trim_end_matches('/');
        let web = format!("{base}web");
        if path == "/" || path == base || path == bare || path == web {
            let location = format!("{base}web/");
            return Some(Response::html(301, "").with_header("Location", &location));
        }
        None
    }

    /// The Host and session id checks of an RPC request.
    fn rpc_refusal(&self, request: &Request) -> Option<Response> {
        // With a password, a rebinding page cannot authenticate anyway
        // (Transmission skips the check then too).
        if let (None, Some(list)) = (&self.auth, &self.host_whitelist) {
            if !host_allowed(request.headers.get("host"), list) {
                return Some(Response::html(421, HOST_REFUSED));
            }
        }
        let sent = request
            .headers
            .get_bytes(SESSION_ID_HEADER)
            .map(<[u8]>::trim_ascii);
        let ok = sent.is_some_and(|s| bool::from(s.ct_eq(self.session_id.as_bytes())));
        if ok {
            return None;
        }
        let body = format!(
            "{SESSION_ID_EXPLAINED}<p><code>{SESSION_ID_HEADER}: {}</code></p>",
            self.session_id
        );
        Some(Response::html(409, &body).with_header(SESSION_ID_HEADER, &self.session_id))
    }
}

/// Whether a `Host` value passes the DNS rebinding check: IP literals
/// (`[v6]`, v4, with or without a port), `localhost` and `localhost.`
/// always; any other name only when it matches a whitelist pattern
/// (lower-case, `*` and `?` wildcards). No `Host` fails.
pub fn host_allowed(host: Option<&str>, whitelist: &[String]) -> bool {
    let Some(host) = host.map(str::trim) else {
        return false;
    };
    if host.is_empty() || host.len() > MAX_HOST {
        return false;
    }
    if let Some(rest) = host.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else {
            return false;
        };
        return ip.parse::<Ipv6Addr>().is_ok() && (after.is_empty() || is_port(after));
    }
    if host.parse::<IpAddr>().is_ok() {
        return true;
    }
    let (name, port) = match host.split_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    if port.is_some_and(|p| !p.is_empty() && !p.bytes().all(|b| b.is_ascii_digit())) {
        return false;
    }
    if name.parse::<Ipv4Addr>().is_ok() {
        return true;
    }
    let name = name.to_ascii_lowercase();
    if name == "localhost" || name == "localhost." {
        return true;
    }
    whitelist.iter().any(|pattern| wildmat(&name, pattern))
}

/// `:` and 1 to 5 digits.
fn is_port(text: &str) -> bool {
    text.strip_prefix(':')
        .is_some_and(|p| (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether `text` matches `pattern`, where `*` is any run of characters
/// and `?` any one, ASCII case ignored (Transmission's `tr_wildmat`
/// without its rarely used `[...]` classes). Linear backtracking over
/// the last `*`: O(len × len) at worst, on bounded inputs.
pub fn wildmat(text: &str, pattern: &str) -> bool {
    let (t, p) = (text.as_bytes(), pattern.as_bytes());
    let (mut ti, mut pi) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == b'?' || t.get(ti).is_some_and(|b| b.eq_ignore_ascii_case(&c)) => {
                ti += 1;
                pi += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..).unwrap_or_default().iter().all(|&c| c == b'*')
}

/// The body of the 409: how to get past the CSRF guard. Clients read
/// the id from the header; some older ones from the `<code>` line after
/// this, which keeps Transmission's form.
const SESSION_ID_EXPLAINED: &str = "<p>Your request had an invalid session-id header.</p>\
<p>To fix this, follow these steps:<ol>\
<li>When reading a response, get its X-Transmission-Session-Id header and remember it</li>\
<li>Add the updated header to your outgoing requests</li>\
<li>When you get this 409 error message, resend your request with the updated header</li>\
</ol></p><p>This requirement has been added to help prevent \
<a href=\"https://en.wikipedia.org/wiki/Cross-site_request_forgery\">CSRF</a> attacks.</p>";

/// The body of the 421: why the Host was refused and what to change.
const HOST_REFUSED: &str = "<p>Transmission received your request, but the hostname was \
unrecognized.</p><p>To fix this, choose one of the following options:<ul>\
<li>Enable password authentication, then any hostname is allowed.</li>\
<li>Add the hostname you want to use to the whitelist in settings.</li></ul></p>\
<p>If you're editing settings.json, see the 'rpc-host-whitelist' and \
'rpc-host-whitelist-enabled' entries.</p><p>This requirement has been added to help prevent \
<a href=\"https://en.wikipedia.org/wiki/DNS_rebinding\">DNS Rebinding</a> attacks.</p>";

/// The body of the 403 for a client outside `rpc-whitelist`.
const ADDRESS_REFUSED: &str = "<p>Unauthorized IP Address.</p>\
<p>Either disable the IP address whitelist or add your address to it.</p>\
<p>If you're editing settings.json, see the 'rpc-whitelist' and 'rpc-whitelist-enabled' \
entries.</p>";

/// The body of the 403 once the anti-brute-force lock-out is on.
const LOCKED_OUT: &str = "<p>Too many unsuccessful login attempts. \
Please restart the daemon.</p>";

/// The body of the 429 while credential checks are rate-limited.
const THROTTLED: &str = "<p>Too many login attempts in a short time; try again shortly.</p>";
