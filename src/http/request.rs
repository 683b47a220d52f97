//! A parsed request and its head parser.
//!
//! The head (request line and header fields) is parsed by `httparse`,
//! once it is known to be complete: the connection finds the blank line
//! itself, scanning only new bytes, so a head trickled byte by byte costs
//! one scan, not one parse per byte. What `httparse` leaves to us is
//! checked here: the target's form and length, `Host`, and the framing
//! headers (`Content-Length`, `Transfer-Encoding`, `Expect`).

use super::error::HttpError;

/// The methods this server knows. Any other gets `501 Not Implemented`
/// before it reaches the owner (RFC 9110 9.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`.
    Get,
    /// `HEAD`: answered like `GET` without the body.
    Head,
    /// `POST`: the RPC's method.
    Post,
    /// `OPTIONS`.
    Options,
}

impl Method {
    fn parse(token: &str) -> Option<Method> {
        // Methods are case-sensitive (RFC 9110 9.1).
        Some(match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "OPTIONS" => Method::Options,
            _ => return None,
        })
    }

    /// The method's name as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Options => "OPTIONS",
        }
    }
}

/// The protocol version of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0: the connection closes after the response unless the
    /// client asked for `Connection: keep-alive`.
    Http10,
    /// HTTP/1.1: persistent unless either side says `Connection: close`.
    Http11,
}

/// Header fields in the order received; names compare in any case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    fields: Vec<(String, Vec<u8>)>,
}

impl Headers {
    /// The first value of `name` if it is text, without surrounding
    /// whitespace.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_bytes(name)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::trim)
    }

    /// The first value of `name` as sent.
    pub fn get_bytes(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.fields
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// Every field, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.fields.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// How many fields there are.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// No fields at all.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Whether a comma-separated field (`Connection`, `Expect`) lists
    /// `token`, in any case.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.get_all(name).any(|v| {
            v.split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    }
}

/// A complete request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The target's path, as sent (still percent-encoded): it starts with
    /// `/`, or is `*` for `OPTIONS *`.
    pub path: String,
    /// The target's query, after `?`, if any.
    pub query: Option<String>,
    /// The protocol version.
    pub version: Version,
    /// The header fields.
    pub headers: Headers,
    /// The body, de-chunked if it came chunked.
    pub body: Vec<u8>,
}

impl Request {
    /// Whether the client lets the connection stay open after this
    /// request's response.
    pub fn keep_alive(&self) -> bool {
        keep_alive(self.version, &self.headers)
    }
}

/// HTTP/1.1 persists unless `Connection: close`; HTTP/1.0 only with
/// `Connection: keep-alive` (RFC 9112 9.3).
fn keep_alive(version: Version, headers: &Headers) -> bool {
    match version {
        Version::Http11 => !headers.has_token("connection", "close"),
        Version::Http10 => {
            headers.has_token("connection", "keep-alive")
                && !headers.has_token("connection", "close")
        }
    }
}

/// How the body of a request is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// `Content-Length` (zero when absent: RFC 9112 6.3, rule 6).
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed head: the request without its body, and how the body comes.
#[derive(Debug)]
pub(crate) struct Head {
    pub request: Request,
    pub framing: Framing,
    /// `Expect: 100-continue` was sent.
    pub expects_continue: bool,
    pub keep_alive: bool,
}

/// Parses a complete head (`buf` ends with its blank line). `max_target`
/// bounds the request target, `max_headers` the field count,
/// `max_body` an announced `Content-Length`.
pub(crate) fn parse_head(
    buf: &[u8],
    max_target: usize,
    max_headers: usize,
    max_body: usize,
) -> Result<Head, HttpError> {
    let mut fields = vec![httparse::EMPTY_HEADER; max_headers];
    let mut req = httparse::Request::new(&mut fields);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(HttpError::BadRequest("incomplete head")),
        Err(e) => return Err(head_error(e, buf)),
    }
    let version = match req.version {
        Some(0) => Version::Http10,
        Some(1) => Version::Http11,
        _ => return Err(HttpError::VersionNotSupported),
    };
    let target = req.path.unwrap_or_default();
    if target.len() > max_target {
        return Err(HttpError::UriTooLong);
    }
    let method = req.method.unwrap_or_default();
    let method = Method::parse(method).ok_or(HttpError::MethodNotImplemented)?;
    let (path, query) = split_target(method, target)?;
    let headers = Headers {
        fields: req
            .headers
            .iter()
            .map(|h| (h.name.to_string(), h.value.to_vec()))
            .collect(),
    };
    let framing = framing(version, &headers, max_body)?;
    let expects_continue = expectation(&headers)?;
    check_host(version, &headers)?;
    let keep_alive = keep_alive(version, &headers);
    Ok(Head {
        request: Request {
            method,
            path,
            query,
            version,
            headers,
            body: Vec::new(),
        },
        framing,
        expects_continue,
        keep_alive,
    })
}

/// The status for what `httparse` refused.
fn head_error(e: httparse::Error, buf: &[u8]) -> HttpError {
    match e {
        httparse::Error::TooManyHeaders => HttpError::TooManyHeaders,
        httparse::Error::Version => {
            // `HTTP/2.0`, `HTTP/1.2`: a version, just not ours. Anything
            // else in its place is a malformed request line.
            let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
            let version = line.trim_ascii_end().rsplit(|&b| b == b' ').next();
            if version.is_some_and(|v| {
                v.len() == 8 && v.starts_with(b"HTTP/") && v.get(5).is_some_and(u8::is_ascii_digit)
            }) {
                HttpError::VersionNotSupported
            } else {
                HttpError::BadRequest("malformed request line")
            }
        }
        httparse::Error::Token => HttpError::BadRequest("bad method or field name"),
        httparse::Error::HeaderName => HttpError::BadRequest("bad field name"),
        httparse::Error::HeaderValue => HttpError::BadRequest("bad field value"),
        _ => HttpError::BadRequest("malformed request line"),
    }
}

/// Splits an origin-form target (`/path?query`) and refuses the other
/// forms: absolute-form is for proxies, authority-form for `CONNECT`, and
/// `*` only for `OPTIONS` (RFC 9112 3.2). A fragment, which clients never
/// send, is dropped.
fn split_target(method: Method, target: &str) -> Result<(String, Option<String>), HttpError> {
    if target == "*" {
        return match method {
            Method::Options => Ok(("*".to_string(), None)),
            _ => Err(HttpError::BadRequest("'*' target outside OPTIONS")),
        };
    }
    if !target.starts_with('/') {
        return Err(HttpError::BadRequest("target not in origin form"));
    }
    let target = target.split('#').next().unwrap_or_default();
    Ok(match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    })
}

/// The body's framing from `Content-Length` and `Transfer-Encoding`.
/// Both together, differing lengths, or a coding list other than
/// `chunked` alone are refused: each is a request-smuggling shape, and no
/// client of this server sends one.
fn framing(version: Version, headers: &Headers, max_body: usize) -> Result<Framing, HttpError> {
    let mut codings = headers.get_all("transfer-encoding").peekable();
    if codings.peek().is_some() {
        if version == Version::Http10 {
            return Err(HttpError::BadRequest("Transfer-Encoding in HTTP/1.0"));
        }
        let mut chunked = false;
        for value in codings {
            for coding in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if !coding.eq_ignore_ascii_case(b"chunked") || chunked {
                    return Err(HttpError::TransferCodingNotImplemented);
                }
                chunked = true;
            }
        }
        if headers.get_bytes("content-length").is_some() {
            return Err(HttpError::BadRequest(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        return Ok(Framing::Chunked);
    }
    let mut length: Option<u64> = None;
    for value in headers.get_all("content-length") {
        // `5, 5` and repeated identical fields are one length (RFC 9110 8.6).
        for part in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            let n = parse_length(part).ok_or(HttpError::BadRequest("bad Content-Length"))?;
            if length.is_some_and(|old| old != n) {
                return Err(HttpError::BadRequest("conflicting Content-Length"));
            }
            length = Some(n);
        }
    }
    let length = length.unwrap_or(0);
    match usize::try_from(length) {
        Ok(n) if n <= max_body => Ok(Framing::Length(n)),
        _ => Err(HttpError::BodyTooLarge),
    }
}

/// Decimal digits only (no sign, no spaces inside), at most 19 of them so
/// the value fits a `u64`.
fn parse_length(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 19 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// `Expect: 100-continue` is honoured; any other expectation gets `417`
/// (RFC 9110 10.1.1).
fn expectation(headers: &Headers) -> Result<bool, HttpError> {
    let mut expects = false;
    for value in headers.get_all("expect") {
        for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if token.eq_ignore_ascii_case(b"100-continue") {
                expects = true;
            } else if !token.is_empty() {
                return Err(HttpError::ExpectationFailed);
            }
        }
    }
    Ok(expects)
}

/// HTTP/1.1 requires exactly one `Host` (RFC 9112 3.2); HTTP/1.0 may omit
/// it but may not repeat it.
fn check_host(version: Version, headers: &Headers) -> Result<(), HttpError> {
    match (headers.get_all("host").count(), version) {
        (0, Version::Http10) | (1, _) => Ok(()),
        (0, Version::Http11) => Err(HttpError::BadRequest("no Host")),
        _ => Err(HttpError::BadRequest("more than one Host")),
    }
}
