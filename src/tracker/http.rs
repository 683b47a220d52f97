//! The HTTP/1.1 client pieces a tracker announce needs, sans-IO: URL
//! parsing, the request, and an incremental response parser.
//!
//! Only what trackers use: `GET`, one request per connection
//! (`Connection: close`), identity content, bodies by `Content-Length`,
//! chunked, or until close. The server is untrusted: header and body sizes
//! are bounded and every malformed byte is an error value.

use std::fmt;

use super::announce::TrackerError;

/// Largest response head (status line and headers) accepted.
pub const MAX_HEAD: usize = 16 * 1024;

/// Largest response body accepted. Announce replies are a few KiB.
pub const MAX_BODY: usize = 2 * 1024 * 1024;

/// Longest chunk-size line (with extensions) or trailer line accepted.
const MAX_LINE: usize = 1024;

/// Most trailer lines accepted after a chunked body.
const MAX_TRAILER_LINES: usize = 16;

/// Most interim (1xx) responses skipped before the real one.
const MAX_INTERIM: u8 = 4;

/// Most redirects a caller should follow.
pub const MAX_REDIRECTS: usize = 5;

/// A parsed `http://` or `https://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// Host name or IP literal, IPv6 without its brackets.
    pub host: String,
    /// Port, from the URL or the scheme's default.
    pub port: u16,
    /// Path and query, starting with `/`, safe to put on the request line
    /// (bytes outside visible ASCII are percent-encoded).
    pub path_and_query: String,
    /// `https`: needs TLS.
    pub https: bool,
}

impl HttpUrl {
    /// The scheme's default port.
    fn default_port(&self) -> u16 {
        if self.https {
            443
        } else {
            80
        }
    }

    /// `host[:port]` as the `Host` header wants it: IPv6 in brackets,
    /// the port only when it is not the default.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == self.default_port() {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority(), self.path_and_query)
    }
}

fn bad_url(why: impl Into<String>) -> TrackerError {
    TrackerError::BadUrl(why.into())
}

/// Characters of a host name (RFC 3986 reg-name, minus `%`-escapes which
/// no tracker uses). Anything else could smuggle text into the `Host`
/// header.
fn is_host_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~')
}

/// Path and query made safe for the request line: spaces, control
/// characters and non-ASCII are percent-encoded (as browsers do), so
/// nothing can end the line early.
fn sanitize_path(raw: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(raw.len() + 1);
    if !raw.starts_with('/') {
        out.push('/');
    }
    for &b in raw.as_bytes() {
        if b.is_ascii_graphic() {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

/// Splits a case-insensitive `scheme://` prefix off `url`.
fn split_scheme(url: &str) -> Option<(bool, &str)> {
    for (prefix, https) in [("http://", false), ("https://", true)] {
        if let (Some(head), Some(rest)) = (url.get(..prefix.len()), url.get(prefix.len()..)) {
            if head.eq_ignore_ascii_case(prefix) {
                return Some((https, rest));
            }
        }
    }
    None
}

/// Parses an `http://` or `https://` URL. A fragment is dropped; user
/// info is refused (trackers do not use it, and it would be sent nowhere).
pub fn parse_url(url: &str) -> Result<HttpUrl, TrackerError> {
    let url = url.trim();
    let (https, rest) = split_scheme(url).ok_or_else(|| {
        bad_url(format!(
            "{:?} is not an http:// or https:// URL",
            url.chars().take(60).collect::<String>()
        ))
    })?;
    let rest = rest.split('#').next().unwrap_or_default();
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    if authority.contains('@') {
        return Err(bad_url("user info in tracker URLs is not supported"));
    }
    let (host, port_text) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| bad_url("unclosed '[' in host"))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad_url(format!("{host:?} is not an IPv6 address")));
        }
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| bad_url("junk after ']' in host"))?,
            ),
        };
        (host, port)
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad_url("no host"));
    }
    if !authority.starts_with('[') && !host.chars().all(is_host_char) {
        return Err(bad_url(format!("bad character in host {host:?}")));
    }
    let default = if https { 443 } else { 80 };
    let port = match port_text {
        None | Some("") => default,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(bad_url(format!("bad port {p:?}"))),
            Ok(n) => n,
        },
    };
    Ok(HttpUrl {
        host: host.to_ascii_lowercase(),
        port,
        path_and_query: sanitize_path(path),
        https,
    })
}

/// Resolves a redirect's `Location` against the URL that was requested:
/// absolute, scheme-relative (`//host/...`), absolute-path, or relative.
pub fn resolve_location(base: &HttpUrl, location: &str) -> Result<HttpUrl, TrackerError> {
    let location = location.trim();
    if location.is_empty() {
        return Err(TrackerError::BadRedirect("empty Location".into()));
    }
    let bad = |e: TrackerError| TrackerError::BadRedirect(e.to_string());
    if split_scheme(location).is_some() {
        return parse_url(location).map_err(bad);
    }
    if location.contains("://") {
        return Err(TrackerError::BadRedirect(format!(
            "redirect to an unsupported scheme: {:?}",
            location.chars().take(60).collect::<String>()
        )));
    }
    let scheme = if base.https { "https:" } else { "http:" };
    if location.starts_with("//") {
        return parse_url(&format!("{scheme}{location}")).map_err(bad);
    }
    let path = if location.starts_with('/') {
        location.to_string()
    } else {
        // Relative: against the base's path without its query and last
        // segment ("?q" alone keeps the whole path).
        let base_path = base.path_and_query.split('?').next().unwrap_or_default();
        if location.starts_with('?') {
            format!("{base_path}{location}")
        } else {
            let dir = base_path
                .rfind('/')
                .map_or("/", |i| base_path.get(..=i).unwrap_or("/"));
            format!("{dir}{location}")
        }
    };
    let mut url = base.clone();
    url.path_and_query = sanitize_path(path.split('#').next().unwrap_or_default());
    Ok(url)
}

/// Appends the `GET` request for `url`.
pub fn write_request(out: &mut Vec<u8>, url: &HttpUrl) {
    write_get(out, url, None);
}

/// Appends the `GET` request for `url`, with a `Cookie` header when
/// `cookie` is given (control characters dropped, so it cannot end the
/// header early).
pub fn write_get(out: &mut Vec<u8>, url: &HttpUrl, cookie: Option<&str>) {
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(url.path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(url.authority().as_bytes());
    if let Some(cookie) = cookie {
        out.extend_from_slice(b"\r\nCookie: ");
        out.extend(cookie.bytes().filter(|b| !b.is_ascii_control()));
    }
    out.extend_from_slice(
        b"\r\nUser-Agent: tripcd/0.1\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n",
    );
}

/// A complete response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The reason phrase (cleaned, bounded by the head size).
    pub reason: String,
    /// The `Location` header, for redirects.
    pub location: Option<String>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Response {
    /// A 2xx status.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// A redirect status the caller should follow if `location` is set.
    pub fn is_redirect(&self) -> bool {
        matches!(self.status, 301 | 302 | 303 | 307 | 308)
    }
}

/// What feeding bytes produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The response is not complete yet.
    NeedMore,
    /// The response is complete; later bytes are ignored.
    Done(Response),
}

/// Where the body's end is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the status line and headers into `line`.
    Head,
    /// `remaining` body bytes to go.
    Length(usize),
    /// Reading a chunk-size line into `line`.
    ChunkSize,
    /// `remaining` chunk bytes to go.
    ChunkData(usize),
    /// The CRLF after chunk data, into `line`.
    ChunkEnd,
    /// Trailer lines after the last chunk, into `line`.
    Trailer,
    /// Everything until the connection closes.
    UntilClose,
    /// Returned `Done` (or failed); nothing more is read.
    Finished,
}

/// An incremental HTTP/1.1 response parser: [`feed`](Self::feed) it the
/// bytes as they arrive, and [`finish`](Self::finish) it at end of stream.
#[derive(Debug)]
pub struct ResponseParser {
    state: State,
    /// The head, or the current chunk-size/trailer line.
    line: Vec<u8>,
    status: u16,
    reason: String,
    location: Option<String>,
    body: Vec<u8>,
    interim: u8,
    trailer_lines: usize,
    /// Largest body accepted.
    max_body: usize,
}

impl Default for ResponseParser {
    fn default() -> Self {
        Self::new()
    }
}

fn bad(why: impl Into<String>) -> TrackerError {
    TrackerError::BadResponse(why.into())
}

/// The index just past the blank line ending a head, CRLF or bare LF.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(off) = buf.get(i..)?.iter().position(|&b| b == b'\n') {
        let nl = i + off;
        let next = nl + 1;
        match buf.get(next) {
            Some(b'\n') => return Some(next + 1),
            Some(b'\r') if buf.get(next + 1) == Some(&b'\n') => return Some(next + 2),
            _ => i = next,
        }
    }
    None
}

/// The index of the first LF, if the line is complete.
fn line_end(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == b'\n')
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The status code and the reason phrase (cleaned and bounded) of a
/// status line.
fn parse_status_line(line: &[u8]) -> Result<(u16, String), TrackerError> {
    let line = std::str::from_utf8(line).map_err(|_| bad("status line is not text"))?;
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        let shown: String = line.chars().take(40).collect();
        return Err(bad(format!("not an HTTP/1.x status line: {shown:?}")));
    }
    let code = parts.next().unwrap_or_default();
    let status = code
        .parse::<u16>()
        .ok()
        .filter(|s| (100..1000).contains(s) && code.len() == 3)
        .ok_or_else(|| bad(format!("bad status code {code:?}")))?;
    let reason: String = parts
        .next()
        .unwrap_or_default()
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(100)
        .collect();
    Ok((status, reason))
}

/// The headers a response's framing and redirects depend on.
#[derive(Default)]
struct Headers {
    content_length: Option<usize>,
    chunked: bool,
    location: Option<String>,
}

impl Headers {
    fn parse<'a>(lines: impl Iterator<Item = &'a [u8]>) -> Result<Headers, TrackerError> {
        let mut h = Headers::default();
        for line in lines.filter(|l| !l.is_empty()) {
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                return Err(bad("header line without ':'"));
            };
            let (name, value) = line.split_at(colon);
            let value = String::from_utf8_lossy(value.get(1..).unwrap_or_default());
            h.take(name, value.trim())?;
        }
        Ok(h)
    }

    fn take(&mut self, name: &[u8], value: &str) -> Result<(), TrackerError> {
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = value
                .parse::<u64>()
                .map_err(|_| bad(format!("bad Content-Length {value:?}")))?;
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            if self.content_length.is_some_and(|old| old != n) {
                return Err(bad("conflicting Content-Length headers"));
            }
            self.content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            for coding in value.split(',').map(str::trim) {
                if coding.eq_ignore_ascii_case("chunked") {
                    self.chunked = true;
                } else if !coding.eq_ignore_ascii_case("identity") && !coding.is_empty() {
                    return Err(bad(format!("unsupported transfer coding {coding:?}")));
                }
            }
        } else if name.eq_ignore_ascii_case(b"location") {
            self.location = Some(value.chars().take(2048).collect());
        }
        Ok(())
    }

    /// Where the body of a response with `status` ends.
    fn framing(&self, status: u16, max_body: usize) -> Result<Framing, TrackerError> {
        Ok(if status == 204 || status == 304 {
            Framing::Length(0)
        } else if self.chunked {
            // RFC 9112: chunked wins over Content-Length.
            Framing::Chunked
        } else if let Some(n) = self.content_length {
            if n > max_body {
                return Err(TrackerError::TooLarge("body", max_body));
            }
            Framing::Length(n)
        } else {
            Framing::UntilClose
        })
    }
}

impl ResponseParser {
    /// A parser for the response to a `GET`.
    pub fn new() -> Self {
        Self::with_limit(MAX_BODY)
    }

    /// A parser accepting bodies of up to `max_body` bytes.
    pub fn with_limit(max_body: usize) -> Self {
        ResponseParser {
            state: State::Head,
            line: Vec::new(),
            status: 0,
            reason: String::new(),
            location: None,
            body: Vec::new(),
            interim: 0,
            trailer_lines: 0,
            max_body,
        }
    }

    /// Feeds the next bytes of the stream.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<Progress, TrackerError> {
        let result = self.feed_inner(&mut data);
        if result.is_err() {
            self.state = State::Finished;
        }
        result
    }

    fn feed_inner(&mut self, data: &mut &[u8]) -> Result<Progress, TrackerError> {
        loop {
            match self.state {
                State::Finished => return Err(bad("response already complete")),
                State::Head => {
                    // The blank line may straddle feeds: search from the
                    // last 3 bytes already held, and copy no more than the
                    // head may hold.
                    let before = self.line.len();
                    let from = before.saturating_sub(3);
                    let take = data.len().min(MAX_HEAD.saturating_sub(before));
                    self.line
                        .extend_from_slice(data.get(..take).unwrap_or_default());
                    match head_end(self.line.get(from..).unwrap_or_default()) {
                        Some(end) => {
                            let end = from + end;
                            // Bytes after the head stay in `data` for the
                            // body (or the next head, after a 1xx).
                            *data = data.get(end.saturating_sub(before)..).unwrap_or_default();
                            self.line.truncate(end);
                            let head = std::mem::take(&mut self.line);
                            self.parse_head(&head)?;
                        }
                        None if self.line.len() >= MAX_HEAD => {
                            return Err(TrackerError::TooLarge("header", MAX_HEAD));
                        }
                        None => return Ok(Progress::NeedMore),
                    }
                }
                State::Length(remaining) => {
                    let take = data.len().min(remaining);
                    let (now, _) = data.split_at(take);
                    self.body.extend_from_slice(now);
                    *data = &[];
                    let remaining = remaining - take;
                    if remaining == 0 {
                        return Ok(self.done());
                    }
                    self.state = State::Length(remaining);
                    return Ok(Progress::NeedMore);
                }
                State::UntilClose => {
                    if self.body.len() + data.len() > self.max_body {
                        return Err(TrackerError::TooLarge("body", self.max_body));
                    }
                    self.body.extend_from_slice(data);
                    return Ok(Progress::NeedMore);
                }
                State::ChunkSize | State::ChunkEnd | State::Trailer => {
                    let Some(line) = self.take_line(data)? else {
                        return Ok(Progress::NeedMore);
                    };
                    if let Some(done) = self.on_chunk_line(&line)? {
                        return Ok(done);
                    }
                }
                State::ChunkData(remaining) => {
                    if data.is_empty() {
                        return Ok(Progress::NeedMore);
                    }
                    let take = data.len().min(remaining);
                    let (now, later) = data.split_at(take);
                    self.body.extend_from_slice(now);
                    *data = later;
                    let remaining = remaining - take;
                    self.state = if remaining == 0 {
                        State::ChunkEnd
                    } else {
                        State::ChunkData(remaining)
                    };
                }
            }
        }
    }

    /// Moves one complete line (without its line ending) out of `data`
    /// into a returned buffer, or keeps the partial line for later.
    fn take_line(&mut self, data: &mut &[u8]) -> Result<Option<Vec<u8>>, TrackerError> {
        match line_end(data) {
            Some(i) => {
                let (now, later) = data.split_at(i + 1);
                self.line.extend_from_slice(now);
                *data = later;
                if self.line.len() > MAX_LINE + 2 {
                    return Err(TrackerError::TooLarge("chunk line", MAX_LINE));
                }
                let mut line = std::mem::take(&mut self.line);
                line.pop(); // '\n'
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                Ok(Some(line))
            }
            None => {
                self.line.extend_from_slice(data);
                *data = &[];
                if self.line.len() > MAX_LINE {
                    return Err(TrackerError::TooLarge("chunk line", MAX_LINE));
                }
                Ok(None)
            }
        }
    }

    fn on_chunk_line(&mut self, line: &[u8]) -> Result<Option<Progress>, TrackerError> {
        match self.state {
            State::ChunkSize => {
                let size_text = line.split(|&b| b == b';').next().unwrap_or_default();
                let size_text = std::str::from_utf8(size_text)
                    .map_err(|_| bad("chunk size is not text"))?
                    .trim();
                if size_text.is_empty() || size_text.len() > 16 {
                    return Err(bad(format!("bad chunk size {size_text:?}")));
                }
                let size = usize::from_str_radix(size_text, 16)
                    .map_err(|_| bad(format!("bad chunk size {size_text:?}")))?;
                if size > self.max_body.saturating_sub(self.body.len()) {
                    return Err(TrackerError::TooLarge("body", self.max_body));
                }
                self.state = if size == 0 {
                    State::Trailer
                } else {
                    State::ChunkData(size)
                };
            }
            State::ChunkEnd => {
                if !line.is_empty() {
                    return Err(bad("chunk data longer than its size"));
                }
                self.state = State::ChunkSize;
            }
            State::Trailer => {
                // Trailer fields are ignored; a blank line ends them. Bound
                // their total like a head.
                if line.is_empty() {
                    return Ok(Some(self.done()));
                }
                self.trailer_lines += 1;
                if self.trailer_lines > MAX_TRAILER_LINES {
                    return Err(TrackerError::TooLarge(
                        "trailer",
                        MAX_TRAILER_LINES * MAX_LINE,
                    ));
                }
            }
            _ => {}
        }
        Ok(None)
    }

    fn parse_head(&mut self, head: &[u8]) -> Result<(), TrackerError> {
        let mut lines = head.split(|&b| b == b'\n').map(trim_cr);
        let (status, reason) = parse_status_line(lines.next().unwrap_or_default())?;
        let headers = Headers::parse(lines)?;
        if (100..200).contains(&status) {
            // `100 Continue` and friends: the real response follows.
            self.interim += 1;
            if self.interim > MAX_INTERIM {
                return Err(bad("too many interim responses"));
            }
            self.state = State::Head;
            return Ok(());
        }
        self.status = status;
        self.reason = reason;
        self.state = match headers.framing(status, self.max_body)? {
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::UntilClose => State::UntilClose,
        };
        self.location = headers.location;
        Ok(())
    }

    fn done(&mut self) -> Progress {
        self.state = State::Finished;
        Progress::Done(Response {
            status: self.status,
            reason: std::mem::take(&mut self.reason),
            location: self.location.take(),
            body: std::mem::take(&mut self.body),
        })
    }

    /// The stream ended. A body read until close is complete now; anything
    /// else cut short is an error.
    pub fn finish(&mut self) -> Result<Response, TrackerError> {
        match self.state {
            State::UntilClose => match self.done() {
                Progress::Done(r) => Ok(r),
                Progress::NeedMore => Err(bad("connection closed early")),
            },
            State::Head if self.line.is_empty() && self.status == 0 => {
                self.state = State::Finished;
                Err(bad("connection closed without a response"))
            }
            State::Finished => Err(bad("response already complete")),
            _ => {
                self.state = State::Finished;
                Err(bad("connection closed before the response was complete"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> HttpUrl {
        parse_url(s).unwrap()
    }

    #[test]
    fn parses_urls_with_default_and_explicit_ports() {
        assert_eq!(
            url("http://Tracker.Example/announce?a=1#x"),
            HttpUrl {
                host: "tracker.example".into(),
                port: 80,
                path_and_query: "/announce?a=1".into(),
                https: false
            }
        );
        let u = url("HTTPS://t.example:8443");
        assert_eq!(
            (u.port, u.https, u.path_and_query.as_str()),
            (8443, true, "/")
        );
        assert_eq!(url("https://t.example/").port, 443);
        assert_eq!(url("http://t:/x").port, 80);
        let u = url("http://t?x=1");
        assert_eq!(u.path_and_query, "/?x=1");
    }

    #[test]
    fn parses_ipv6_literals_in_brackets() {
        let u = url("http://[2001:db8::1]:6969/announce");
        assert_eq!(u.host, "2001:db8::1");
        assert_eq!(u.port, 6969);
        assert_eq!(u.authority(), "[2001:db8::1]:6969");
        assert_eq!(u.to_string(), "http://[2001:db8::1]:6969/announce");
        assert_eq!(url("http://[::1]/a").authority(), "[::1]");
    }

    #[test]
    fn refuses_bad_urls() {
        for bad in [
            "udp://t:80/announce",
            "ftp://x",
            "http://",
            "http:///path",
            "http://t:0/",
            "http://t:65536/",
            "http://t:x/",
            "http://[::1/",
            "http://[zz]/",
            "http://[::1]x/",
            "http://user:pw@t/",
            "http://t\r\nX-Injected: 1/",
            "http://t x/",
            "",
        ] {
            assert!(
                matches!(parse_url(bad), Err(TrackerError::BadUrl(_))),
                "{bad:?} -> {:?}",
                parse_url(bad)
            );
        }
        let text = parse_url("udp://t:80/announce").unwrap_err().to_string();
        assert_eq!(
            text,
            "bad tracker URL: \"udp://t:80/announce\" is not an http:// or https:// URL"
        );
    }

    #[test]
    fn the_path_cannot_break_the_request_line() {
        let u = url("http://t/a b\r\nHost: evil\u{e9}?q=\t1");
        assert_eq!(u.path_and_query, "/a%20b%0D%0AHost:%20evil%C3%A9?q=%091");
    }

    #[test]
    fn writes_the_request() {
        let mut out = Vec::new();
        write_request(&mut out, &url("http://t.example:6969/announce?x=%20"));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /announce?x=%20 HTTP/1.1\r\nHost: t.example:6969\r\n\
             User-Agent: tripcd/0.1\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn resolves_redirect_locations() {
        let base = url("http://t.example:8080/dir/announce?x=1");
        let r = |loc: &str| resolve_location(&base, loc).map(|u| u.to_string());
        assert_eq!(r("http://other/a").unwrap(), "http://other/a");
        assert_eq!(r("//other:81/a?b").unwrap(), "http://other:81/a?b");
        assert_eq!(r("/new?y=2").unwrap(), "http://t.example:8080/new?y=2");
        assert_eq!(
            r("ann2?y=2#f").unwrap(),
            "http://t.example:8080/dir/ann2?y=2"
        );
        assert_eq!(r("?y=3").unwrap(), "http://t.example:8080/dir/announce?y=3");
        assert_eq!(r("https://s/a").unwrap(), "https://s/a");
        assert!(matches!(r(""), Err(TrackerError::BadRedirect(_))));
        assert!(matches!(r("udp://x:1/"), Err(TrackerError::BadRedirect(_))));
        assert!(matches!(
            r("http://a b/"),
            Err(TrackerError::BadRedirect(_))
        ));
    }

    /// Feeds `input` in pieces of `step` bytes, then finishes if needed.
    fn parse_in_steps(input: &[u8], step: usize) -> Result<Response, TrackerError> {
        let mut p = ResponseParser::new();
        for piece in input.chunks(step.max(1)) {
            if let Progress::Done(r) = p.feed(piece)? {
                return Ok(r);
            }
        }
        p.finish()
    }

    /// Parses `input` whole and in every piece size up to 7, expecting the
    /// same result each time.
    fn parse_all_ways(input: &[u8]) -> Result<Response, TrackerError> {
        let whole = parse_in_steps(input, input.len());
        for step in 1..8 {
            assert_eq!(parse_in_steps(input, step), whole, "step {step}");
        }
        whole
    }

    #[test]
    fn parses_a_content_length_response() {
        let r = parse_all_ways(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhelloJUNK",
        )
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.reason, "OK");
        assert_eq!(r.body, b"hello");
        assert!(r.is_success());
        let r = parse_all_ways(b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n").unwrap();
        assert!(r.body.is_empty());
    }

    #[test]
    fn parses_a_chunked_response_with_extensions_and_trailers() {
        let r = parse_all_ways(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\n\r\n\
              5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: y\r\n\r\nJUNK",
        )
        .unwrap();
        assert_eq!(r.body, b"hello 0123456789");
    }

    #[test]
    fn reads_until_close_without_a_length() {
        let r = parse_all_ways(b"HTTP/1.0 200 OK\nServer: x\n\nd8:intervali5ee").unwrap();
        assert_eq!(r.body, b"d8:intervali5ee");
    }

    #[test]
    fn skips_interim_responses_and_reads_redirects() {
        let r = parse_all_ways(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 302 Found\r\nLocation: /x\r\n\
              Content-Length: 3\r\n\r\nabc",
        )
        .unwrap();
        assert_eq!(r.status, 302);
        assert!(r.is_redirect());
        assert_eq!(r.location.as_deref(), Some("/x"));
        let r = parse_all_ways(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
        assert_eq!((r.status, r.body.len()), (204, 0));
    }

    #[test]
    fn truncated_responses_are_errors() {
        for input in [
            &b""[..],
            b"HTTP/1.1 200 OK\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n",
        ] {
            let r = parse_in_steps(input, 3);
            assert!(matches!(r, Err(TrackerError::BadResponse(_))), "{r:?}");
        }
    }

    #[test]
    fn malformed_responses_are_errors() {
        for input in [
            &b"<html>hello</html>\r\n\r\n"[..],
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/2 200\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nNoColon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n\
              HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n",
        ] {
            let r = parse_in_steps(input, input.len());
            assert!(
                matches!(r, Err(TrackerError::BadResponse(_))),
                "{:?} -> {r:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn sizes_are_bounded() {
        let mut p = ResponseParser::new();
        let big = vec![b'a'; MAX_HEAD + 10];
        assert_eq!(
            p.feed(&big),
            Err(TrackerError::TooLarge("header", MAX_HEAD))
        );
        // After an error the parser refuses more input.
        assert!(p.feed(b"\r\n\r\n").is_err());

        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert_eq!(
            parse_in_steps(head.as_bytes(), 1000),
            Err(TrackerError::TooLarge("body", MAX_BODY))
        );
        let huge = b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n";
        assert!(parse_in_steps(huge, 1000).is_err());

        let chunk = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
            MAX_BODY + 1
        );
        assert_eq!(
            parse_in_steps(chunk.as_bytes(), 1000),
            Err(TrackerError::TooLarge("body", MAX_BODY))
        );
        let chunk = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{}",
            "1".repeat(MAX_LINE + 5)
        );
        assert!(matches!(
            parse_in_steps(chunk.as_bytes(), 100),
            Err(TrackerError::TooLarge(..))
        ));

        let mut p = ResponseParser::new();
        assert_eq!(p.feed(b"HTTP/1.1 200 OK\r\n\r\n"), Ok(Progress::NeedMore));
        let piece = vec![b'x'; 64 * 1024];
        let mut result = Ok(Progress::NeedMore);
        for _ in 0..(MAX_BODY / piece.len() + 1) {
            result = p.feed(&piece);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(TrackerError::TooLarge("body", MAX_BODY)));
    }

    #[test]
    fn bytes_after_done_are_refused_and_finish_after_done_errs() {
        let mut p = ResponseParser::new();
        assert!(matches!(
            p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            Ok(Progress::Done(_))
        ));
        assert!(p.feed(b"x").is_err());
        assert!(p.finish().is_err());
    }
}
