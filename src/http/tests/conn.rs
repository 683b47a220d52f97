//! The connection: parsing at every split point, every refusal's status,
//! pipelining order, keep-alive, `100 Continue`, timers on a fake clock.

use super::{answer_all, conn, conn_with, take_output, Clock};
use crate::http::conn::{MAX_BODY, MAX_IN_FLIGHT};
use crate::http::{HttpDate, HttpError, Limits, Method, Response, Version};

/// Four pipelined requests: a GET with a query, a POST by length, a
/// chunked POST with an extension and a trailer, a HEAD.
const PIPELINE: &[u8] = b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\n\r\n\
POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello\
POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: t\r\n\r\n\
HEAD /d HTTP/1.1\r\nHost: h\r\n\r\n";

/// Feeds `pieces` one after another, answering as requests come.
fn run(pieces: &[&[u8]]) -> (Vec<String>, String) {
    let clock = Clock::new();
    let mut c = conn(&clock);
    let mut seen = Vec::new();
    let mut out = String::new();
    for piece in pieces {
        c.receive(piece, clock.at(0.0)).unwrap();
        answer_all(&mut c, &mut seen);
        out.push_str(&take_output(&mut c));
    }
    assert!(!c.is_closing());
    (seen, out)
}

#[test]
fn a_get_is_parsed_and_answered_with_exact_bytes() {
    let clock = Clock::new();
    let mut c = conn(&clock);
    c.receive(
        b"GET /transmission/web/?q=1 HTTP/1.1\r\nHost: localhost:9091\r\nX-A: 1\r\nx-a:  2 \r\n\r\n",
        clock.at(0.0),
    )
    .unwrap();
    let r = c.poll_request().expect("a request");
    assert_eq!(r.method, Method::Get);
    assert_eq!(r.path, "/transmission/web/");
    assert_eq!(r.query.as_deref(), Some("q=1"));
    assert_eq!(r.version, Version::Http11);
    assert_eq!(r.headers.get("HOST"), Some("localhost:9091"));
    let all: Vec<_> = r.headers.get_all("X-a").collect();
    assert_eq!(all, [&b"1"[..], &b"2"[..]]);
    assert!(r.body.is_empty());
    assert!(c.poll_request().is_none());
    c.respond(Response::new(200).with_body("text/plain", b"ok".to_vec()))
        .unwrap();
    assert_eq!(
        take_output(&mut c),
        "HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Length: 2\r\n\
         Content-Type: text/plain\r\n\r\nok"
    );
    assert!(!c.is_closing() && !c.should_close() && c.wants_input());
}

#[test]
fn every_split_point_of_a_pipeline_gives_the_same_requests_and_bytes() {
    let (want_seen, want_out) = run(&[PIPELINE]);
    assert_eq!(
        want_seen,
        [
            "GET /a?x=1 Http11 body=\"\"",
            "POST /b Http11 body=\"hello\"",
            "POST /c Http11 body=\"abcde\"",
            "HEAD /d Http11 body=\"\"",
        ]
    );
    // The HEAD response has its length but no body.
    assert!(want_out.ends_with("Content-Length: 22\r\nContent-Type: text/plain\r\n\r\n"));
    for i in 0..=PIPELINE.len() {
        let (a, b) = PIPELINE.split_at(i);
        assert_eq!(
            run(&[a, b]),
            (want_seen.clone(), want_out.clone()),
            "split at {i}"
        );
    }
    for i in (0..PIPELINE.len()).step_by(7) {
        for j in (i..=PIPELINE.len()).step_by(5) {
            let (a, rest) = PIPELINE.split_at(i);
            let (b, c) = rest.split_at(j - i);
            assert_eq!(
                run(&[a, b, c]),
                (want_seen.clone(), want_out.clone()),
                "at {i}, {j}"
            );
        }
    }
    let bytes: Vec<&[u8]> = PIPELINE.chunks(1).collect();
    assert_eq!(run(&bytes), (want_seen, want_out), "byte by byte");
}

#[test]
fn responses_go_out_in_request_order_however_they_are_answered() {
    let clock = Clock::new();
    let mut c = conn(&clock);
    c.receive(
        b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n",
        clock.at(0.0),
    )
    .unwrap();
    let first = c.poll_request().unwrap();
    let second = c.poll_request().unwrap();
    assert_eq!((first.path.as_str(), second.path.as_str()), ("/1", "/2"));
    c.respond(Response::new(200).with_body("text/plain", b"one".to_vec()))
        .unwrap();
    assert!(take_output(&mut c).ends_with("one"));
    c.respond(Response::new(404)).unwrap();
    assert!(take_output(&mut c).starts_with("HTTP/1.1 404 Not Found\r\n"));
    assert_eq!(c.respond(Response::new(200)), Err(HttpError::NoRequest));
    assert!(c.output().is_empty());
}

/// The status a lone request gets, and that the connection then closes.
fn refused(input: &[u8]) -> u16 {
    refused_with(Limits::default(), input)
}

fn refused_with(limits: Limits, input: &[u8]) -> u16 {
    let clock = Clock::new();
    let mut c = conn_with(limits, &clock);
    let err = c.receive(input, clock.at(0.0)).expect_err("refused");
    assert!(
        c.poll_request().is_none(),
        "{err}: nothing reaches the owner"
    );
    let out = take_output(&mut c);
    assert!(out.contains("\r\nConnection: close\r\n"), "{out}");
    assert!(c.should_close(), "{err}");
    assert!(!c.wants_input());
    let status: u16 = out.get(9..12).unwrap().parse().unwrap();
    assert_eq!(Some(status), err.status());
    status
}

#[test]
fn every_malformed_request_gets_its_status_then_the_connection_closes() {
    let cases: &[(&[u8], u16)] = &[
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET\r\n\r\n", 400),
        (b"GET / HTTP/1.1 extra\r\nHost: h\r\n\r\n", 400),
        (b"GET /\x00 HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505),
        (b"GET / HTTP/1.2\r\nHost: h\r\n\r\n", 505),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
        (b"GET / FOO/1.1\r\nHost: h\r\n\r\n", 400),
        (b"BREW / HTTP/1.1\r\nHost: h\r\n\r\n", 501),
        (b"PUT / HTTP/1.1\r\nHost: h\r\n\r\n", 501),
        (b"get / HTTP/1.1\r\nHost: h\r\n\r\n", 501),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET h:80 HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET * HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nBad Name: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x01b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\n: empty\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: abc\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1, 2\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 50331649\r\n\r\n", 413),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 501),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nExpect: teapot\r\n\r\n", 417),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3 x\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3000001\r\n", 413),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: 1\n\r\n", 400),
    ];
    for (input, status) in cases {
        assert_eq!(
            refused(input),
            *status,
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn oversize_heads_targets_and_bodies_get_414_431_413() {
    let limits = Limits::default();
    // The request line alone over the head bound: 414.
    let long_line = [b"GET /".as_slice(), &vec![b'a'; limits.max_head]].concat();
    assert_eq!(refused(&long_line), 414);
    // A target over its own bound in a head that fits: 414.
    let target = format!(
        "GET /{} HTTP/1.1\r\nHost: h\r\n\r\n",
        "a".repeat(limits.max_target)
    );
    assert_eq!(refused(target.as_bytes()), 414);
    // Fields over the head bound: 431, whether or not the end came.
    let big = format!(
        "GET / HTTP/1.1\r\nHost: h\r\nCookie: {}\r\n",
        "c".repeat(limits.max_head)
    );
    assert_eq!(refused(big.as_bytes()), 431);
    assert_eq!(refused(format!("{big}\r\n").as_bytes()), 431);
    // One field too many: 431; the bound itself passes.
    let fields = |n: usize| {
        let mut s = String::from("GET / HTTP/1.1\r\nHost: h\r\n");
        for i in 1..n {
            s.push_str(&format!("X-{i}: v\r\n"));
        }
        s + "\r\n"
    };
    assert_eq!(refused(fields(limits.max_headers + 1).as_bytes()), 431);
    let clock = Clock::new();
    let mut c = conn(&clock);
    c.receive(fields(limits.max_headers).as_bytes(), clock.at(0.0))
        .unwrap();
    assert_eq!(c.poll_request().unwrap().headers.len(), limits.max_headers);
    // A body over the bound by its length: 413 before any of it is read.
    let small = Limits {
        max_body: 10,
        ..Limits::default()
    };
    assert_eq!(
        refused_with(
            small.clone(),
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n"
        ),
        413
    );
    // Chunks adding up over it: 413 at the chunk that crosses.
    assert_eq!(
        refused_with(
            small,
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n6\r\n"
        ),
        413
    );
    // A trailer section over the head bound: 431.
    let trailer = format!(
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: {}\r\n",
        "t".repeat(limits.max_head)
    );
    assert_eq!(refused(trailer.as_bytes()), 431);
}

#[test]
fn the_body_bound_admits_the_largest_metainfo_as_base64_json() {
    let metainfo = crate::registry::metainfo::MAX_METAINFO_BYTES;
    let base64 = metainfo.div_ceil(3) * 4;
    // Escaped slashes (1/64 of base64 characters) and the JSON around.
    let json = base64 + base64 / 64 + 64 * 1024;
    assert!(MAX_BODY >= json, "{MAX_BODY} < {json}");
    let clock = Clock::new();
    let mut c = conn(&clock);
    let head =
        format!("POST /transmission/rpc HTTP/1.1\r\nHost: h\r\nContent-Length: {MAX_BODY}\r\n\r\n");
    c.receive(head.as_bytes(), clock.at(0.0)).unwrap();
    let block = vec![b'A'; 64 * 1024];
    let mut sent = 0;
    while sent < MAX_BODY {
        let n = block.len().min(MAX_BODY - sent);
        assert!(c.wants_input());
        c.receive(&block[..n], clock.at(1.0)).unwrap();
        sent += n;
    }
    let r = c.poll_request().expect("the whole body");
    assert_eq!(r.body.len(), MAX_BODY);
}

#[test]
fn an_error_after_good_requests_waits_for_their_answers() {
    let clock = Clock::new();
    let mut c = conn(&clock);
    let err = c
        .receive(
            b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\nBAD\r\n\r\n",
            clock.at(0.0),
        )
        .unwrap_err();
    assert_eq!(err.status(), Some(400));
    assert!(c.output().is_empty(), "the 400 waits for the first answer");
    assert!(c.is_closing() && !c.should_close());
    let r = c.poll_request().unwrap();
    assert_eq!(r.path, "/ok");
    c.respond(Response::new(204)).unwrap();
    let out = take_output(&mut c);
    assert!(
        out.starts_with("HTTP/1.1 204 No Content\r\nDate: "),
        "{out}"
    );
    let second = out
        .find("HTTP/1.1 400 Bad Request\r\n")
        .expect("then the 400");
    assert!(
        !out[..second].contains("Content-Length"),
        "204 has no length"
    );
    assert!(c.should_close());
    // Later bytes are ignored.
    c.receive(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", clock.at(1.0))
        .unwrap();
    assert!(c.poll_request().is_none() && c.output().is_empty());
}

#[test]
fn blank_lines_before_a_request_are_skipped() {
    let (seen, _) =
        run(&[b"\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n"]);
    assert_eq!(seen.len(), 2);
    // Bare LF line ends, as httparse accepts them.
    let (seen, _) = run(&[b"GET /lf HTTP/1.1\nHost: h\n\n"]);
    assert_eq!(seen, ["GET /lf Http11 body=\"\""]);
}

/// The connection after one request with `head` (ending in CRLF CRLF)
/// was answered `200`.
fn after_one(head: &str) -> (crate::http::HttpConn, String) {
    let clock = Clock::new();
    let mut c = conn(&clock);
    c.receive(head.as_bytes(), clock.at(0.0)).unwrap();
    assert!(c.poll_request().is_some());
    c.respond(Response::new(200)).unwrap();
    let out = take_output(&mut c);
    (c, out)
}

#[test]
fn keep_alive_follows_the_version_and_connection_header() {
    let (c, out) = after_one("GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    assert!(!out.contains("Connection:") && !c.is_closing());
    let (c, out) = after_one("GET / HTTP/1.1\r\nHost: h\r\nConnection: Close\r\n\r\n");
    assert!(out.contains("\r\nConnection: close\r\n") && c.should_close());
    let (c, out) = after_one("GET / HTTP/1.1\r\nHost: h\r\nConnection: foo, close\r\n\r\n");
    assert!(out.contains("\r\nConnection: close\r\n") && c.should_close());
    let (c, out) = after_one("GET / HTTP/1.0\r\n\r\n");
    assert!(out.contains("\r\nConnection: close\r\n") && c.should_close());
    let (c, out) = after_one("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
    assert!(out.contains("\r\nConnection: keep-alive\r\n") && !c.is_closing());
    // A response may close the connection itself.
    let clock = Clock::new();
    let mut c = conn(&clock);
    c.receive(
        b"GET / HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n",
        clock.at(0.0),
    )
    .unwrap();
    assert!(c.poll_request().is_some());
    c.respond(Response::new(200).closing()).unwrap();
    assert!(take_output(&mut c).contains("\r\nConnection: close\r\n"));
    assert!(c.should_close());
    assert!(
        c.poll_request().is_none(),
        "the request after it is dropped"
    );
}

#[test]
fn nothing_after_a_closing_request_is_read() {
    let (seen, out) = {
        let clock = Clock::new();
        let mut c = conn(&clock);
        c.receive(
            b"GET /1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n",
            clock.at(0.0),
        )
        .unwrap();
        let mut seen = Vec::new();
        answer_all(&mut c, &mut seen);
        let out = take_output(&mut c);
        assert!(c.should_close());
        (seen, out)
    };
    assert_eq!(seen.len(), 1);
    assert_eq!(out.matches("HTTP/1.1 200").count(), 1);
}

#[test]
fn expect_100_continue_is_answered_at_once() {
    let clock = Clock::new();
    let mut c = conn(&clock);
    c.receive(
        b"POST /transmission/rpc HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
        clock.at(0.0),
    )
    .unwrap();
    assert_eq!(take_output(&mut c), "HTTP/1.1 100 Continue\r\n\r\n");
    assert!(c.poll_request().is_none());
    c.receive(b"{}{}", clock.at(0.1)).unwrap();
    assert_eq!(c.poll_request().unwrap().body, b"{}{}");
    c.respond(Response::json(b"{}".to_vec())).unwrap();
    assert!(take_output(&mut c).starts_with("HTTP/1.1 200 OK\r\n"));

    // The body already here: no 100.
    let mut c = conn(&clock);
    c.receive(
        b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nab",
        clock.at(0.0),
    )
    .unwrap();
    assert!(c.output().is_empty());
    assert_eq!(c.poll_request().unwrap().body, b"ab");

    // Too large: the final status instead of 100, and the body never comes.
    let mut c = conn(&clock);
    let head = format!(
        "POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        MAX_BODY + 1
    );
    assert_eq!(
        c.receive(head.as_bytes(), clock.at(0.0)),
        Err(HttpError::BodyTooLarge)
    );
    assert!(take_output(&mut c).starts_with("HTTP/1.1 413 Content Too Large\r\n"));

    // HTTP/1.0 clients do not know 100; a body-less request needs none.
    for head in [
        "POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n",
    ] {
        let mut c = conn(&clock);
        c.receive(head.as_bytes(), clock.at(0.0)).unwrap();
        assert!(c.output().is_empty(), "{head}");
    }

    // Chunked bodies get it too.
    let mut c = conn(&clock);
    c.receive(
        b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nTransfer-Encoding: chunked\r\n\r\n",
        clock.at(0.0),
    )
    .unwrap();
    assert_eq!(take_output(&mut c), "HTTP/1.1 100 Continue\r\n\r\n");
}

#[test]
fn a_pipelined_100_continue_waits_for_the_answers_before_it() {
    let clock = Clock::new();
    let mut c = conn(&clock);
    c.receive(
        b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n\
          POST /2 HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
        clock.at(0.0),
    )
    .unwrap();
    assert!(c.output().is_empty());
    assert!(c.poll_request().is_some());
    c.respond(Response::new(200)).unwrap();
    let out = take_output(&mut c);
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(
        out.ends_with("\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n"),
        "{out}"
    );
}

#[test]
fn a_slowloris_head_is_cut_off_with_408() {
    let clock = Clock::new();
    let mut c = conn(&clock);
    let head = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
    for (i, byte) in head.chunks(1).take(10).enumerate() {
        c.receive(byte, clock.at(i as f64)).unwrap();
        assert_eq!(
            c.poll_timeout(),
            Some(clock.at(10.0)),
            "from the first byte"
        );
        c.handle_timeout(clock.at(i as f64)).unwrap();
    }
    assert_eq!(
        c.handle_timeout(clock.at(10.0)),
        Err(HttpError::HeadTimeout)
    );
    let out = take_output(&mut c);
    assert!(out.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{out}");
    assert!(c.should_close());
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn a_trickled_body_is_cut_off_by_its_deadline() {
    let clock = Clock::new();
    let mut c = conn(&clock);
    // 128 KiB at 64 KiB/s: 2 s plus the 10 s grace.
    c.receive(
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 131072\r\n\r\n",
        clock.at(1.0),
    )
    .unwrap();
    assert_eq!(c.poll_timeout(), Some(clock.at(13.0)));
    c.receive(&[b'x'; 1000], clock.at(12.0)).unwrap();
    c.handle_timeout(clock.at(12.9)).unwrap();
    assert_eq!(
        c.handle_timeout(clock.at(13.0)),
        Err(HttpError::BodyTimeout)
    );
    assert!(take_output(&mut c).starts_with("HTTP/1.1 408 "));
    assert!(c.should_close() && c.poll_request().is_none());

    // Chunked: the deadline grows with the sizes announced.
    let mut c = conn(&clock);
    c.receive(
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
        clock.at(0.0),
    )
    .unwrap();
    assert_eq!(c.poll_timeout(), Some(clock.at(10.0)));
    c.receive(b"20000\r\n", clock.at(1.0)).unwrap();
    assert_eq!(c.poll_timeout(), Some(clock.at(12.0)));
}

#[test]
fn an_idle_connection_closes_quietly() {
    let clock = Clock::new();
    let mut c = conn(&clock);
    assert_eq!(c.poll_timeout(), Some(clock.at(60.0)));
    c.receive(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", clock.at(5.0))
        .unwrap();
    assert_eq!(c.poll_timeout(), None, "the owner has the request");
    assert!(c.poll_request().is_some());
    assert_eq!(c.poll_timeout(), None);
    c.handle_timeout(clock.at(30.0)).unwrap();
    c.respond(Response::new(200)).unwrap();
    // Output pending: the write deadline (the clock last seen was 30 s).
    assert_eq!(c.poll_timeout(), Some(clock.at(60.0)));
    c.handle_timeout(clock.at(31.0)).unwrap();
    take_output(&mut c);
    assert_eq!(c.poll_timeout(), Some(clock.at(91.0)));
    c.handle_timeout(clock.at(90.9)).unwrap();
    assert_eq!(
        c.handle_timeout(clock.at(91.0)),
        Err(HttpError::IdleTimeout)
    );
    assert!(c.should_close() && c.output().is_empty());
}

#[test]
fn a_client_that_stops_reading_is_dropped() {
    let clock = Clock::new();
    let mut c = conn(&clock);
    c.receive(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", clock.at(0.0))
        .unwrap();
    c.poll_request().unwrap();
    c.respond(Response::new(200).with_body("text/plain", vec![b'x'; 100]))
        .unwrap();
    c.handle_timeout(clock.at(20.0)).unwrap();
    c.consume(10);
    assert_eq!(c.poll_timeout(), Some(clock.at(50.0)), "progress moved it");
    assert_eq!(
        c.handle_timeout(clock.at(50.0)),
        Err(HttpError::WriteStalled)
    );
    assert!(c.should_close() && c.output().is_empty());
}

#[test]
fn input_pauses_while_too_many_requests_wait() {
    let clock = Clock::new();
    let mut c = conn(&clock);
    let one = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
    let many = one.repeat(MAX_IN_FLIGHT + 3);
    c.receive(&many, clock.at(0.0)).unwrap();
    let mut polled = 0;
    while c.poll_request().is_some() {
        polled += 1;
    }
    assert_eq!(polled, MAX_IN_FLIGHT);
    assert!(!c.wants_input());
    assert_eq!(
        c.poll_timeout(),
        None,
        "no head timer while the owner works"
    );
    for _ in 0..MAX_IN_FLIGHT {
        c.respond(Response::new(200)).unwrap();
    }
    let mut rest = 0;
    while c.poll_request().is_some() {
        rest += 1;
        c.respond(Response::new(200)).unwrap();
    }
    assert_eq!(rest, 3);
    assert_eq!(
        take_output(&mut c).matches("HTTP/1.1 200 OK").count(),
        MAX_IN_FLIGHT + 3
    );
    assert!(c.wants_input());
}

#[test]
fn input_pauses_while_output_is_over_its_bound() {
    let clock = Clock::new();
    let limits = Limits {
        max_output: 1000,
        ..Limits::default()
    };
    let mut c = conn_with(limits, &clock);
    c.receive(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", clock.at(0.0))
        .unwrap();
    c.poll_request().unwrap();
    c.respond(Response::new(200).with_body("text/plain", vec![b'x'; 2000]))
        .unwrap();
    assert!(!c.wants_input());
    c.consume(1500);
    assert!(c.wants_input());
}

#[test]
fn input_handed_in_past_the_bound_closes_the_connection() {
    let clock = Clock::new();
    let limits = Limits {
        max_in_flight: 1,
        max_unparsed: 100,
        ..Limits::default()
    };
    let mut c = conn_with(limits, &clock);
    let one = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
    assert_eq!(
        c.receive(&one.repeat(10), clock.at(0.0)),
        Err(HttpError::InputOverflow)
    );
    assert!(c.should_close());
}

#[test]
fn end_of_input_drops_a_partial_request_and_answers_the_rest() {
    let clock = Clock::new();
    let mut c = conn(&clock);
    c.receive(
        b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nPOST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\n\r\nabc",
        clock.at(0.0),
    )
    .unwrap();
    c.end_of_input();
    assert!(c.is_closing() && !c.should_close());
    assert_eq!(c.poll_request().unwrap().path, "/1");
    assert!(c.poll_request().is_none());
    c.respond(Response::new(200)).unwrap();
    assert!(take_output(&mut c).contains("\r\nConnection: close\r\n"));
    assert!(c.should_close());
}

#[test]
fn response_headers_cannot_be_smuggled_or_reframed() {
    let r = Response::new(200)
        .with_header("X-Evil", "a\r\nSet-Cookie: x=1")
        .with_header("Content-Length", "999")
        .with_header("Transfer-Encoding", "chunked")
        .with_header("Bad Name", "x")
        .with_body("text/plain", b"hi".to_vec());
    let clock = Clock::new();
    let mut c = conn(&clock);
    c.receive(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", clock.at(0.0))
        .unwrap();
    c.poll_request().unwrap();
    c.respond(r).unwrap();
    assert_eq!(
        take_output(&mut c),
        "HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Length: 2\r\n\
         X-Evil: aSet-Cookie: x=1\r\nContent-Type: text/plain\r\n\r\nhi"
    );
}

#[test]
fn dates_are_imf_fixdates() {
    for (secs, text) in [
        (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
        (784_111_777, "Sun, 06 Nov 1994 08:49:37 GMT"),
        (951_782_400, "Tue, 29 Feb 2000 00:00:00 GMT"),
        (1_709_210_096, "Thu, 29 Feb 2024 12:34:56 GMT"),
        (4_102_444_799, "Thu, 31 Dec 2099 23:59:59 GMT"),
        (u64::MAX, "Fri, 31 Dec 9999 23:59:59 GMT"),
    ] {
        assert_eq!(HttpDate::from_unix_secs(secs).as_str(), text, "{secs}");
    }
}

#[test]
fn without_a_date_responses_carry_none() {
    let clock = Clock::new();
    let mut c = crate::http::HttpConn::new(Limits::default(), clock.at(0.0));
    c.receive(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", clock.at(0.0))
        .unwrap();
    c.poll_request().unwrap();
    c.respond(Response::new(204)).unwrap();
    assert_eq!(take_output(&mut c), "HTTP/1.1 204 No Content\r\n\r\n");
}
