//! Why an HTTP connection closes, or a call on it was refused, and the
//! status each reason answers with.

use std::fmt;

/// Why a connection is closing, or a call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// A malformed request (400).
    BadRequest(&'static str),
    /// The request line is longer than the head may be, or the target
    /// longer than [`Limits::max_target`](super::Limits::max_target) (414).
    UriTooLong,
    /// The head is over [`Limits::max_head`](super::Limits::max_head) (431).
    HeadTooLarge,
    /// More header fields than [`Limits::max_headers`](super::Limits::max_headers) (431).
    TooManyHeaders,
    /// The body is over [`Limits::max_body`](super::Limits::max_body) (413).
    BodyTooLarge,
    /// A method this server does not know (501).
    MethodNotImplemented,
    /// A transfer coding other than `chunked` (501).
    TransferCodingNotImplemented,
    /// Not HTTP/1.0 or HTTP/1.1 (505).
    VersionNotSupported,
    /// An `Expect` other than `100-continue` (417).
    ExpectationFailed,
    /// The head did not arrive within [`Limits::head_timeout`](super::Limits::head_timeout) (408).
    HeadTimeout,
    /// The body did not arrive in time (408).
    BodyTimeout,
    /// Idle between requests for [`Limits::idle_timeout`](super::Limits::idle_timeout): closed
    /// without a response.
    IdleTimeout,
    /// Output pending and nothing written for [`Limits::write_timeout`](super::Limits::write_timeout):
    /// closed at once.
    WriteStalled,
    /// More than [`Limits::max_unparsed`](super::Limits::max_unparsed) bytes handed in while the
    /// connection did not want input: closed at once.
    InputOverflow,
    /// [`HttpConn::respond`](super::HttpConn::respond) with no polled request left to answer.
    NoRequest,
}

impl HttpError {
    /// The status the client is told before the connection closes, if
    /// any.
    pub fn status(&self) -> Option<u16> {
        Some(match self {
            HttpError::BadRequest(_) => 400,
            HttpError::UriTooLong => 414,
            HttpError::HeadTooLarge | HttpError::TooManyHeaders => 431,
            HttpError::BodyTooLarge => 413,
            HttpError::MethodNotImplemented | HttpError::TransferCodingNotImplemented => 501,
            HttpError::VersionNotSupported => 505,
            HttpError::ExpectationFailed => 417,
            HttpError::HeadTimeout | HttpError::BodyTimeout => 408,
            HttpError::IdleTimeout
            | HttpError::WriteStalled
            | HttpError::InputOverflow
            | HttpError::NoRequest => return None,
        })
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::BadRequest(why) => write!(f, "bad request: {why}"),
            HttpError::UriTooLong => f.write_str("request target too long"),
            HttpError::HeadTooLarge => f.write_str("request head too large"),
            HttpError::TooManyHeaders => f.write_str("too many header fields"),
            HttpError::BodyTooLarge => f.write_str("request body too large"),
            HttpError::MethodNotImplemented => f.write_str("unknown method"),
            HttpError::TransferCodingNotImplemented => f.write_str("unsupported transfer coding"),
            HttpError::VersionNotSupported => f.write_str("unsupported HTTP version"),
            HttpError::ExpectationFailed => f.write_str("unsupported expectation"),
            HttpError::HeadTimeout => f.write_str("request head too slow"),
            HttpError::BodyTimeout => f.write_str("request body too slow"),
            HttpError::IdleTimeout => f.write_str("idle too long"),
            HttpError::WriteStalled => f.write_str("client stopped reading"),
            HttpError::InputOverflow => f.write_str("input handed in past the bound"),
            HttpError::NoRequest => f.write_str("no request to answer"),
        }
    }
}

impl std::error::Error for HttpError {}
