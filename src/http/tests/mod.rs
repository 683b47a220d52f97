//! Tests of the HTTP layer: the connection (bytes in, exact bytes out,
//! a fake clock), the guards, the password hash and the static files.

mod auth;
mod conn;
mod files;
mod guard;

use std::time::{Duration, Instant};

use super::{HttpConn, HttpDate, Limits, Request, Response};

/// A fake clock: one base instant plus offsets.
pub(super) struct Clock(Instant);

impl Clock {
    pub(super) fn new() -> Clock {
        Clock(Instant::now())
    }

    /// The base plus `secs` seconds.
    pub(super) fn at(&self, secs: f64) -> Instant {
        self.0 + Duration::from_secs_f64(secs)
    }
}

/// A connection with default limits and a fixed `Date`.
pub(super) fn conn(clock: &Clock) -> HttpConn {
    conn_with(Limits::default(), clock)
}

pub(super) fn conn_with(limits: Limits, clock: &Clock) -> HttpConn {
    let mut c = HttpConn::new(limits, clock.at(0.0));
    c.set_date(date());
    c
}

/// The `Date` every test response carries.
pub(super) fn date() -> HttpDate {
    HttpDate::from_unix_secs(784_111_777)
}

/// Everything the connection has to send, taken.
pub(super) fn take_output(c: &mut HttpConn) -> String {
    let out = String::from_utf8_lossy(c.output()).into_owned();
    let n = c.output().len();
    c.consume(n);
    out
}

/// A request as plain text, for comparing streams.
pub(super) fn describe(r: &Request) -> String {
    format!(
        "{} {}{} {:?} body={:?}",
        r.method.as_str(),
        r.path,
        r.query
            .as_deref()
            .map(|q| format!("?{q}"))
            .unwrap_or_default(),
        r.version,
        String::from_utf8_lossy(&r.body)
    )
}

/// Polls every ready request and answers each with a body naming it.
pub(super) fn answer_all(c: &mut HttpConn, seen: &mut Vec<String>) {
    while let Some(r) = c.poll_request() {
        let d = describe(&r);
        c.respond(Response::new(200).with_body("text/plain", d.clone().into_bytes()))
            .unwrap();
        seen.push(d);
    }
}
