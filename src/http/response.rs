//! Responses: a small builder, the `Date` value the owner passes in, and
//! the writer that frames a response for the connection (status line,
//! `Date`, `Connection`, `Content-Length`, the owner's headers, the body).
//!
//! The writer owns the framing headers: a `Content-Length`, `Connection`,
//! `Date` or `Transfer-Encoding` set through [`Response::with_header`] is
//! dropped, so the body length on the wire is always the body's.

use std::fmt;

/// The status line's reason phrase for the codes this server sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Latest second an [`HttpDate`] shows (9999-12-31 23:59:59 UTC): the
/// format has four year digits.
const MAX_DATE_SECS: u64 = 253_402_300_799;

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`, RFC 9110 5.6.7) for
/// the `Date` header, made by the owner from its wall clock: the
/// connection reads no clock.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HttpDate([u8; 29]);

impl HttpDate {
    /// The date of `secs` seconds after the Unix epoch (clamped to the
    /// year 9999).
    pub fn from_unix_secs(secs: u64) -> HttpDate {
        const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
        const MONTHS: [&[u8; 3]; 12] = [
            b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
            b"Dec",
        ];
        let secs = secs.min(MAX_DATE_SECS);
        let days = secs / 86_400;
        let of_day = secs % 86_400;
        let (year, month, day) = civil_from_days(days);
        let mut out = *b"Thu, 01 Jan 1970 00:00:00 GMT";
        let put = |out: &mut [u8; 29], at: usize, text: &[u8]| {
            if let Some(dst) = out.get_mut(at..at + text.len()) {
                dst.copy_from_slice(text);
            }
        };
        // 1970-01-01 was a Thursday.
        put(&mut out, 0, DAYS[(days % 7) as usize]);
        put(&mut out, 5, &two(day));
        put(&mut out, 8, MONTHS[(month - 1) as usize % 12]);
        put(&mut out, 12, &two(year / 100));
        put(&mut out, 14, &two(year % 100));
        put(&mut out, 17, &two(of_day / 3600));
        put(&mut out, 20, &two(of_day / 60 % 60));
        put(&mut out, 23, &two(of_day % 60));
        HttpDate(out)
    }

    /// The header value.
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever written into it.
        std::str::from_utf8(&self.0).unwrap_or("Thu, 01 Jan 1970 00:00:00 GMT")
    }
}

impl fmt::Display for HttpDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for HttpDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HttpDate({})", self.as_str())
    }
}

/// Two decimal digits of `n % 100`.
fn two(n: u64) -> [u8; 2] {
    let n = n % 100;
    [b'0' + (n / 10) as u8, b'0' + (n % 10) as u8]
}

/// Year, month (1-12) and day (1-31) of a day count since 1970-01-01
/// (Howard Hinnant's `civil_from_days`, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Header names the writer sets itself.
const FRAMING_HEADERS: [&str; 4] = ["content-length", "connection", "date", "transfer-encoding"];

/// A response to queue with [`HttpConn::respond`](super::HttpConn::respond).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    close: bool,
}

impl Response {
    /// A response with `status`, no headers and an empty body. A final
    /// response is 2xx to 5xx: other codes are clamped into that range
    /// (the connection sends `100 Continue` itself; a 1xx here would
    /// leave the client waiting for the real answer).
    pub fn new(status: u16) -> Response {
        Response {
            status: status.clamp(200, 599),
            headers: Vec::new(),
            body: Vec::new(),
            close: false,
        }
    }

    /// `200 OK` with a JSON body, as Transmission answers an RPC call.
    pub fn json(body: Vec<u8>) -> Response {
        Response::new(200).with_body("application/json; charset=UTF-8", body)
    }

    /// Transmission's simple page: `<h1>CODE: Reason</h1>` and an optional
    /// explanation (HTML, trusted: never pass client text unescaped).
    pub fn html(status: u16, explanation: &str) -> Response {
        let mut r = Response::new(status);
        let body = format!("<h1>{}: {}</h1>{explanation}", r.status, reason(r.status));
        r.body = body.into_bytes();
        r.with_header("Content-Type", "text/html; charset=UTF-8")
    }

    /// Adds a header. A name that is not a token is dropped, as are the
    /// framing headers the writer owns; control characters in the value
    /// are removed, so nothing can end the header early.
    pub fn with_header(mut self, name: &str, value: &str) -> Response {
        let is_token = !name.is_empty() && name.bytes().all(is_token_byte);
        let owned = FRAMING_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name));
        if is_token && !owned {
            let value: String = value
                .chars()
                .filter(|&c| c == '\t' || !c.is_control())
                .collect();
            self.headers
                .push((name.to_string(), value.trim().to_string()));
        }
        self
    }

    /// Sets the body and its `Content-Type`.
    pub fn with_body(mut self, content_type: &str, body: Vec<u8>) -> Response {
        self.headers
            .retain(|(n, _)| !n.eq_ignore_ascii_case("content-type"));
        self.body = body;
        self.with_header("Content-Type", content_type)
    }

    /// Closes the connection once this response is written.
    pub fn closing(mut self) -> Response {
        self.close = true;
        self
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Whether the connection closes after this response.
    pub fn is_closing(&self) -> bool {
        self.close
    }

    /// Whether this status carries no body (and no `Content-Length`).
    fn bodyless(&self) -> bool {
        self.status == 204 || self.status == 304
    }

    /// Appends the response as it goes on the wire: only the head for a
    /// `HEAD` request (`head_only`), with `Connection: close` when
    /// `close`, `Connection: keep-alive` when an HTTP/1.0 client keeps the
    /// connection (`keep_alive_10`), and `date` when the owner gave one.
    pub(crate) fn write(
        &self,
        out: &mut Vec<u8>,
        head_only: bool,
        close: bool,
        keep_alive_10: bool,
        date: Option<&HttpDate>,
    ) {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(self.status.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(reason(self.status).as_bytes());
        out.extend_from_slice(b"\r\n");
        if let Some(date) = date {
            put_header(out, "Date", date.as_str());
        }
        if close {
            put_header(out, "Connection", "close");
        } else if keep_alive_10 {
            put_header(out, "Connection", "keep-alive");
        }
        if !self.bodyless() {
            put_header(out, "Content-Length", &self.body.len().to_string());
        }
        for (name, value) in &self.headers {
            put_header(out, name, value);
        }
        out.extend_from_slice(b"\r\n");
        if !head_only && !self.bodyless() {
            out.extend_from_slice(&self.body);
        }
    }
}

fn put_header(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A `tchar` of RFC 9110 5.6.2 (header names, methods).
pub(crate) fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The interim response that lets a client waiting on
/// `Expect: 100-continue` send its body.
pub(crate) const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
