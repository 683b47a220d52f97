//! The one blocking part of tracker traffic: HTTP requests run on worker
//! threads, off the reactor, which only submits jobs and collects bodies.
//!
//! Why threads rather than sockets on the reactor: name resolution is
//! blocking anyway (`getaddrinfo`), and TLS (rustls) is simplest over a
//! blocking stream. Announces are rare (one per torrent per tracker every
//! half hour or so), so a few threads carry them all.
//!
//! Why a small pool (up to [`MAX_THREADS`], spawned as jobs queue up)
//! rather than one thread: a tracker that accepts and never answers holds
//! its thread for the job's whole timeout, and the announces of every
//! other torrent would wait behind it. With a pool, it takes as many dead
//! trackers as threads to delay the rest, and even then only by one
//! timeout.
//!
//! `https` trackers use rustls with the system's root certificates
//! (`rustls-native-certs`, which honours `SSL_CERT_FILE`/`SSL_CERT_DIR`),
//! loaded once per process by the first https job, on a worker thread.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, DnsName, ServerName};
use rustls::{CertificateError, ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use super::announce::{failure_reason, TrackerError};
use super::http::{
    parse_url, resolve_location, write_get, HttpUrl, Progress, Response, ResponseParser, MAX_BODY,
    MAX_REDIRECTS,
};

/// Most worker threads.
pub const MAX_THREADS: usize = 4;

/// Most addresses of one host tried.
const MAX_ADDRS: usize = 8;

/// What a job does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobKind {
    /// GET this URL (an HTTP(S) announce or scrape), following redirects.
    Fetch(String),
    /// GET a file (a `.torrent` a remote client named): only a success
    /// status gives the body.
    Download {
        /// What to fetch.
        url: String,
        /// A `Cookie` header value to send.
        cookies: Option<String>,
        /// Largest body accepted.
        max_bytes: usize,
    },
    /// Resolve this host name (a UDP tracker's), for this port.
    Resolve(String, u16),
}

/// A request for the worker, to be done within `timeout` all told
/// (resolving, connecting, redirects, reading).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The caller's id for the job, returned with its result.
    pub id: u64,
    /// What to do.
    pub kind: JobKind,
    /// The time the whole job may take.
    pub timeout: Duration,
}

/// What a job produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutput {
    /// The reply body of a [`JobKind::Fetch`].
    Body(Vec<u8>),
    /// The addresses of a [`JobKind::Resolve`] (never empty).
    Addrs(Vec<SocketAddr>),
}

/// The outcome of a [`Job`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobResult {
    /// The job's id.
    pub id: u64,
    /// What the job produced, or why it produced nothing.
    pub result: Result<JobOutput, TrackerError>,
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

    fn push(&self, id: u64, result: Result<JobOutput, TrackerError>) {
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
        let result = run(&job, &shared.shutdown);
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

/// Does one job.
fn run(job: &Job, shutdown: &AtomicBool) -> Result<JobOutput, TrackerError> {
    let start = Instant::now();
    match &job.kind {
        JobKind::Fetch(url) => {
            log::debug!("tracker job {}: GET {url}", job.id);
            fetch(url, job.timeout, shutdown, &Tls::Native).map(JobOutput::Body)
        }
        JobKind::Download {
            url,
            cookies,
            max_bytes,
        } => {
            log::debug!("tracker job {}: download {url}", job.id);
            let get = Get {
                cookie: cookies.as_deref(),
                max_body: *max_bytes,
                tracker: false,
            };
            fetch_with(url, &get, job.timeout, shutdown, &Tls::Native).map(JobOutput::Body)
        }
        JobKind::Resolve(host, port) => {
            log::debug!("tracker job {}: resolve {host}", job.id);
            let deadline = start
                .checked_add(job.timeout)
                .unwrap_or_else(|| start + Duration::from_secs(3600));
            resolve(host, *port, deadline).map(JobOutput::Addrs)
        }
    }
}

/// Fetches `url`, following redirects, all within `timeout`. A success
/// status gives the body; so does an error status whose body carries a
/// bencoded `failure reason` (some trackers send refusals as 4xx), so the
/// tracker's own words reach the user. `tls` says whom `https` trackers
/// must prove themselves to.
pub fn fetch(
    url: &str,
    timeout: Duration,
    shutdown: &AtomicBool,
    tls: &Tls,
) -> Result<Vec<u8>, TrackerError> {
    let get = Get {
        cookie: None,
        max_body: MAX_BODY,
        tracker: true,
    };
    fetch_with(url, &get, timeout, shutdown, tls)
}

/// How to fetch.
pub struct Get<'a> {
    /// A `Cookie` header value.
    pub cookie: Option<&'a str>,
    /// Largest body accepted.
    pub max_body: usize,
    /// A tracker's reply: an error status with a bencoded `failure
    /// reason` counts as a body.
    pub tracker: bool,
}

/// [`fetch`] as `get` says.
pub fn fetch_with(
    url: &str,
    get: &Get<'_>,
    timeout: Duration,
    shutdown: &AtomicBool,
    tls: &Tls,
) -> Result<Vec<u8>, TrackerError> {
    let start = Instant::now();
    let deadline = start
        .checked_add(timeout)
        .unwrap_or_else(|| start + Duration::from_secs(3600));
    let mut url = parse_url(url)?;
    for _ in 0..=MAX_REDIRECTS {
        if shutdown.load(Ordering::SeqCst) {
            return Err(TrackerError::WorkerGone);
        }
        let response = request(&url, get, deadline, tls)?;
        if response.is_redirect() {
            let location = response
                .location
                .as_deref()
                .ok_or_else(|| TrackerError::BadRedirect("no Location header".into()))?;
            url = resolve_location(&url, location)?;
            continue;
        }
        if response.is_success() || (get.tracker && failure_reason(&response.body).is_some()) {
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
fn request(
    url: &HttpUrl,
    get: &Get<'_>,
    deadline: Instant,
    tls: &Tls,
) -> Result<Response, TrackerError> {
    let mut stream = Transport::open(url, deadline, tls)?;
    let mut out = Vec::with_capacity(512);
    write_get(&mut out, url, get.cookie);
    stream
        .write_all(&out)
        .and_then(|()| stream.flush())
        .map_err(|e| io_error(&e))?;
    let mut parser = ResponseParser::with_limit(get.max_body);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Every socket call inside is bounded by the deadline (see
        // `DeadlineStream`), so a server dripping bytes cannot outlast it.
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

/// Where the TLS settings for `https` trackers come from.
#[derive(Debug, Clone)]
pub enum Tls {
    /// The system's root certificates (honouring `SSL_CERT_FILE` and
    /// `SSL_CERT_DIR`), loaded once per process by the first https job.
    Native,
    /// Fixed settings, e.g. trusting only a test CA.
    Config(Arc<ClientConfig>),
}

impl Tls {
    /// Settings that trust exactly `roots`, built as the native ones are
    /// (ring, TLS 1.2 and 1.3).
    pub fn trusting(roots: RootCertStore) -> Result<Tls, rustls::Error> {
        client_config(roots).map(Tls::Config)
    }

    /// The client settings, loading the native roots on first use. The
    /// reason is for [`TrackerError::Tls`].
    fn config(&self) -> Result<Arc<ClientConfig>, String> {
        match self {
            Tls::Config(config) => Ok(Arc::clone(config)),
            Tls::Native => {
                // Loaded lazily so a daemon without https trackers never
                // reads the certificate store, and once because reading it
                // is slow (hundreds of files). A failure is kept too: a
                // store installed later needs a restart.
                static NATIVE: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
                NATIVE.get_or_init(load_native).clone()
            }
        }
    }
}

/// rustls client settings trusting `roots`. The provider is named rather
/// than taken from the process default so that another crate enabling
/// aws-lc-rs cannot make the choice ambiguous (a panic in rustls).
fn client_config(roots: RootCertStore) -> Result<Arc<ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

fn load_native() -> Result<Arc<ClientConfig>, String> {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        log::warn!("loading root certificates: {e}");
    }
    config_from_roots(found.certs, found.errors.first().map(ToString::to_string))
}

/// Client settings from the certificates found; none usable is an error
/// (every https announce would fail anyway, and this says why).
fn config_from_roots(
    certs: Vec<CertificateDer<'static>>,
    first_error: Option<String>,
) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(certs);
    if ignored > 0 {
        log::warn!("{ignored} root certificates could not be parsed");
    }
    log::debug!("{added} root certificates loaded for https trackers");
    if added == 0 {
        let mut why = String::from(
            "no root certificates could be loaded \
             (install ca-certificates, or set SSL_CERT_FILE)",
        );
        if let Some(e) = first_error {
            why.push_str(": ");
            why.push_str(&e);
        }
        return Err(why);
    }
    client_config(roots).map_err(|e| format!("bad TLS settings: {e}"))
}

/// The name the tracker's certificate must carry: an IP literal is checked
/// against the certificate's IP addresses, a name against its DNS names.
fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    DnsName::try_from(host.to_string())
        .map(ServerName::DnsName)
        .map_err(|_| format!("{host:?} is not a valid host name for TLS"))
}

/// Why a TLS handshake failed, in words a person can act on. `name` is
/// the host the certificate was checked against.
fn describe_tls_error(e: &rustls::Error, name: &str) -> String {
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => {
                "its certificate is signed by an unknown authority (not a trusted root)".into()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!("its certificate is not valid for the name {name}")
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "its certificate has expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "its certificate is not valid yet (is this machine's clock right?)".into()
            }
            CertificateError::Revoked => "its certificate has been revoked".into(),
            CertificateError::BadSignature => "its certificate's signature does not verify".into(),
            // webpki's reason for a self-signed certificate, the usual
            // sight on a private tracker.
            CertificateError::Other(o) if o.to_string().contains("CaUsedAsEndEntity") => {
                "its certificate is self-signed and not among the trusted roots".into()
            }
            CertificateError::Other(o) => format!("its certificate was rejected ({o})"),
            other => format!("its certificate was rejected: {other}"),
        },
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => {
            format!("the server does not speak TLS, or broke the handshake ({e})")
        }
        E::AlertReceived(alert) => format!("the server refused the handshake (alert {alert:?})"),
        E::PeerIncompatible(why) => {
            format!("no TLS version or cipher suite in common with the server ({why:?})")
        }
        other => other.to_string(),
    }
}

/// A TLS handshake's I/O error as a tracker error: a timeout stays a
/// timeout; rustls' own errors are described.
fn handshake_error(e: &io::Error, shown: &str, name: &str) -> TrackerError {
    if matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    ) {
        return TrackerError::Timeout;
    }
    let inner = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let why = match inner {
        Some(tls) => describe_tls_error(tls, name),
        None if e.kind() == io::ErrorKind::UnexpectedEof => {
            "the server closed the connection during the handshake".into()
        }
        None => format!("the connection broke during the handshake: {e}"),
    };
    TrackerError::Tls(shown.to_string(), why)
}

/// A TCP stream whose every read and write may take only the time left
/// before the job's deadline. rustls reads and writes the socket several
/// times inside one handshake step or one plaintext read, so a per-call
/// timeout set from outside would let a server dripping bytes outlast the
/// deadline; setting it here, before each system call, cannot.
struct DeadlineStream {
    tcp: TcpStream,
    deadline: Instant,
}

impl DeadlineStream {
    fn arm(&self) -> io::Result<()> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.tcp.set_read_timeout(Some(left))?;
        self.tcp.set_write_timeout(Some(left))
    }
}

impl Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arm()?;
        self.tcp.read(buf)
    }
}

impl Write for DeadlineStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.arm()?;
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

/// The byte stream to a tracker, plain or TLS, bounded by the job's
/// deadline.
enum Transport {
    Plain(DeadlineStream),
    /// Boxed: a rustls connection is over a kilobyte.
    Tls(Box<StreamOwned<ClientConnection, DeadlineStream>>),
}

impl Transport {
    /// Connects, and for `https` completes the TLS handshake, all before
    /// `deadline`.
    fn open(url: &HttpUrl, deadline: Instant, tls: &Tls) -> Result<Transport, TrackerError> {
        let shown = url.authority();
        // Settings and name first: a machine without root certificates
        // fails at once, with no connection made.
        let tls_setup = if url.https {
            let fail = |why| TrackerError::Tls(shown.clone(), why);
            let config = tls.config().map_err(fail)?;
            let name = server_name(&url.host).map_err(fail)?;
            Some((config, name))
        } else {
            None
        };
        let addrs = resolve(&url.host, url.port, deadline)?;
        let tcp = connect(&addrs, &shown, deadline)?;
        let mut sock = DeadlineStream { tcp, deadline };
        let Some((config, name)) = tls_setup else {
            return Ok(Transport::Plain(sock));
        };
        let mut conn = ClientConnection::new(config, name)
            .map_err(|e| TrackerError::Tls(shown.clone(), describe_tls_error(&e, &url.host)))?;
        // The handshake here rather than lazily on the first write, so its
        // failures are told as TLS failures.
        while conn.is_handshaking() {
            let moved = conn
                .complete_io(&mut sock)
                .map_err(|e| handshake_error(&e, &shown, &url.host))?;
            if moved == (0, 0) {
                // No progress and no error: never spin.
                let why = "the handshake stalled".to_string();
                return Err(TrackerError::Tls(shown, why));
            }
        }
        Ok(Transport::Tls(Box::new(StreamOwned::new(conn, sock))))
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
            // Many servers close without a TLS close_notify after an HTTP
            // response. The HTTP framing (length, chunks) still tells a
            // whole reply from a cut one, and a reply delimited by the
            // close is a tracker's own choice; so treat it as the end, as
            // browsers and curl do.
            Transport::Tls(s) => match s.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                other => other,
            },
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write(buf),
            Transport::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.flush(),
            Transport::Tls(s) => s.flush(),
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
            // The address is worth naming only when there were several.
            Err(e) if addrs.len() > 1 => last = format!("{addr}: {e}"),
            Err(e) => last = e.to_string(),
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
    fn bad_urls_fail_before_any_io() {
        let flag = AtomicBool::new(false);
        assert!(matches!(
            fetch(
                "udp://127.0.0.1:1/",
                Duration::from_secs(1),
                &flag,
                &Tls::Native
            ),
            Err(TrackerError::BadUrl(_))
        ));
    }

    #[test]
    fn a_shut_down_worker_does_not_fetch() {
        let flag = AtomicBool::new(true);
        assert_eq!(
            fetch(
                "http://127.0.0.1:1/",
                Duration::from_secs(1),
                &flag,
                &Tls::Native
            ),
            Err(TrackerError::WorkerGone)
        );
    }

    #[test]
    fn a_zero_timeout_is_a_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let flag = AtomicBool::new(false);
        assert_eq!(
            fetch(&url, Duration::ZERO, &flag, &Tls::Native),
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

    /// TLS settings that trust nothing: enough for tests where the
    /// handshake must not get as far as the certificate.
    fn trust_nothing() -> Tls {
        Tls::trusting(RootCertStore::empty()).unwrap()
    }

    #[test]
    fn server_names_follow_the_kind_of_host() {
        assert_eq!(
            server_name("127.0.0.1"),
            Ok(ServerName::IpAddress(
                "127.0.0.1".parse::<IpAddr>().unwrap().into()
            ))
        );
        assert_eq!(
            server_name("::1"),
            Ok(ServerName::IpAddress(
                "::1".parse::<IpAddr>().unwrap().into()
            ))
        );
        assert_eq!(
            server_name("tracker.example"),
            Ok(ServerName::DnsName(
                DnsName::try_from("tracker.example").unwrap().to_owned()
            ))
        );
        assert!(server_name("bad host!").is_err());
    }

    #[test]
    fn tls_errors_are_told_in_words() {
        let say = |e: rustls::Error| describe_tls_error(&e, "t.example");
        let cert = rustls::Error::InvalidCertificate;
        assert!(say(cert(CertificateError::UnknownIssuer)).contains("unknown authority"));
        assert_eq!(
            say(cert(CertificateError::NotValidForName)),
            "its certificate is not valid for the name t.example"
        );
        assert_eq!(
            say(cert(CertificateError::Expired)),
            "its certificate has expired"
        );
        assert!(say(cert(CertificateError::NotValidYet)).contains("clock"));
        assert!(say(cert(CertificateError::BadSignature)).contains("signature"));
        assert!(say(cert(CertificateError::UnhandledCriticalExtension))
            .starts_with("its certificate was rejected: "));
        assert!(say(rustls::Error::AlertReceived(
            rustls::AlertDescription::HandshakeFailure
        ))
        .contains("refused the handshake"));
        assert!(say(rustls::Error::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType
        ))
        .contains("does not speak TLS"));
    }

    #[test]
    fn handshake_io_errors_map_to_tracker_errors() {
        let map = |e: io::Error| handshake_error(&e, "t.example:8443", "t.example");
        assert_eq!(map(io::ErrorKind::TimedOut.into()), TrackerError::Timeout);
        assert_eq!(map(io::ErrorKind::WouldBlock.into()), TrackerError::Timeout);
        assert_eq!(
            map(io::ErrorKind::UnexpectedEof.into()),
            TrackerError::Tls(
                "t.example:8443".into(),
                "the server closed the connection during the handshake".into()
            )
        );
        // rustls reports its own errors inside an `InvalidData` I/O error.
        let wrapped = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
        );
        assert_eq!(
            map(wrapped),
            TrackerError::Tls(
                "t.example:8443".into(),
                "its certificate is not valid for the name t.example".into()
            )
        );
        assert!(matches!(
            map(io::ErrorKind::ConnectionReset.into()),
            TrackerError::Tls(_, why) if why.starts_with("the connection broke")
        ));
    }

    #[test]
    fn no_usable_root_certificate_is_a_clear_error() {
        let why = config_from_roots(Vec::new(), None).unwrap_err();
        assert!(
            why.starts_with("no root certificates could be loaded"),
            "{why}"
        );
        // Junk that is not a certificate is skipped, and the loader's first
        // complaint is passed on.
        let junk = vec![CertificateDer::from(vec![1u8, 2, 3])];
        let why = config_from_roots(junk, Some("/x/ca.pem: not found".into())).unwrap_err();
        assert!(why.ends_with(": /x/ca.pem: not found"), "{why}");
    }

    #[test]
    fn a_server_that_never_handshakes_times_out_within_the_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://{}/announce", listener.local_addr().unwrap());
        let flag = AtomicBool::new(false);
        let start = Instant::now();
        // The connection is accepted by the kernel (backlog) and never read.
        let err = fetch(&url, Duration::from_millis(300), &flag, &trust_nothing());
        assert_eq!(err, Err(TrackerError::Timeout));
        // Generous bound: only a handshake ignoring the deadline fails it.
        assert!(start.elapsed() < Duration::from_secs(10));
        drop(listener);
    }

    #[test]
    fn a_server_dripping_the_handshake_cannot_outlast_the_deadline() {
        // The server starts a 16 KiB handshake record and sends it a byte
        // every 20 ms: each read succeeds in time, and rustls keeps reading
        // for the whole record, so only a deadline checked before every
        // socket call stops it (the drip itself lasts 4 s at most).
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut hello = [0u8; 512];
            let _ = c.read(&mut hello);
            if c.write_all(&[0x16, 0x03, 0x03, 0x40, 0x00]).is_err() {
                return;
            }
            for _ in 0..200 {
                thread::sleep(Duration::from_millis(20));
                if c.write_all(&[0]).is_err() {
                    return;
                }
            }
        });
        let flag = AtomicBool::new(false);
        let start = Instant::now();
        let err = fetch(
            &format!("https://{addr}/announce"),
            Duration::from_millis(300),
            &flag,
            &trust_nothing(),
        );
        assert_eq!(err, Err(TrackerError::Timeout));
        assert!(start.elapsed() < Duration::from_secs(3));
        server.join().unwrap();
    }

    #[test]
    fn https_to_a_plain_http_server_is_a_tls_error() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut hello = [0u8; 512];
            let _ = c.read(&mut hello);
            let _ = c.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        });
        let flag = AtomicBool::new(false);
        let err = fetch(
            &format!("https://{addr}/announce"),
            Duration::from_secs(10),
            &flag,
            &trust_nothing(),
        )
        .unwrap_err();
        server.join().unwrap();
        match &err {
            TrackerError::Tls(host, why) => {
                assert_eq!(host, &addr.to_string());
                assert!(why.contains("does not speak TLS"), "{why}");
            }
            other => panic!("expected a TLS error, got {other:?}"),
        }
        assert!(err
            .to_string()
            .starts_with(&format!("TLS with tracker {addr} failed: ")));
    }
}
