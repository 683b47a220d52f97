//! The guards and routing: session id, authentication, lock-out, Host
//! and address whitelists, redirects.

use std::net::IpAddr;

use super::{conn, Clock};
use crate::http::auth::KDF_BURST;
use crate::http::guard::{host_allowed, parse_list, wildmat, SESSION_ID_HEADER, SESSION_ID_LEN};
use crate::http::{Guard, GuardConfig, PasswordHash, Request, Verdict};

const LOOPBACK: &str = "127.0.0.1";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Parses one request from its head lines (CRLF added).
fn request(lines: &[&str]) -> Request {
    let clock = Clock::new();
    let mut c = conn(&clock);
    let text = format!("{}\r\n\r\n", lines.join("\r\n"));
    c.receive(text.as_bytes(), clock.at(0.0)).unwrap();
    c.poll_request().expect("a request")
}

fn guard(config: GuardConfig) -> Guard {
    let clock = Clock::new();
    Guard::new(config, &mut fastrand::Rng::with_seed(1), clock.at(0.0))
}

/// The status of a `Respond` verdict (0 for the others).
fn status(v: &Verdict) -> u16 {
    match v {
        Verdict::Respond(r) => r.status(),
        _ => 0,
    }
}

fn rpc_post(extra: &[&str]) -> Request {
    let mut lines = vec!["POST /transmission/rpc HTTP/1.1", "Host: localhost:9091"];
    lines.extend_from_slice(extra);
    request(&lines)
}

#[test]
fn a_post_without_the_session_id_gets_409_then_passes_with_it() {
    let clock = Clock::new();
    let mut g = guard(GuardConfig::default());
    let id = g.session_id().to_string();
    assert_eq!(id.len(), SESSION_ID_LEN);
    assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()));
    let v = g.check(&rpc_post(&[]), ip(LOOPBACK), clock.at(0.0));
    let Verdict::Respond(r) = &v else {
        panic!("{v:?}")
    };
    assert_eq!(r.status(), 409);
    assert_eq!(r.header(SESSION_ID_HEADER), Some(id.as_str()));
    assert_eq!(r.header("Access-Control-Expose-Headers"), None, "no CORS");
    let body = String::from_utf8_lossy(r.body());
    assert!(body.starts_with("<h1>409: Conflict</h1>"), "{body}");
    assert!(body.contains(&format!("<code>X-Transmission-Session-Id: {id}</code>")));
    let header = format!("X-Transmission-Session-Id: {id}");
    assert_eq!(
        g.check(&rpc_post(&[&header]), ip(LOOPBACK), clock.at(0.0)),
        Verdict::Rpc
    );
    // A wrong or truncated id is refused; the name's case does not matter.
    let wrong = format!("X-Transmission-Session-Id: {}", &id[1..]);
    assert_eq!(
        status(&g.check(&rpc_post(&[&wrong]), ip(LOOPBACK), clock.at(0.0))),
        409
    );
    let lower = format!("x-transmission-session-id: {id}");
    assert_eq!(
        g.check(&rpc_post(&[&lower]), ip(LOOPBACK), clock.at(0.0)),
        Verdict::Rpc
    );
    // A GET to the RPC path gets the id too (some clients fetch it so),
    // and 405 once it has it.
    let get = request(&["GET /transmission/rpc HTTP/1.1", "Host: localhost"]);
    assert_eq!(status(&g.check(&get, ip(LOOPBACK), clock.at(0.0))), 409);
    let get = request(&["GET /transmission/rpc HTTP/1.1", "Host: localhost", &header]);
    let v = g.check(&get, ip(LOOPBACK), clock.at(0.0));
    assert_eq!(status(&v), 405);
    let Verdict::Respond(r) = v else {
        unreachable!()
    };
    assert_eq!(r.header("Allow"), Some("POST"));
    // Two guards have different ids.
    let other = Guard::new(
        GuardConfig::default(),
        &mut fastrand::Rng::with_seed(2),
        clock.at(0.0),
    );
    assert_ne!(other.session_id(), id);
}

fn with_password() -> GuardConfig {
    GuardConfig {
        username: "admin".into(),
        password: Some(PasswordHash::with_iterations(
            "right",
            10,
            &mut fastrand::Rng::with_seed(3),
        )),
        ..GuardConfig::default()
    }
}

fn authorization(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let t = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Authorization: Basic {t}")
}

#[test]
fn authentication_right_wrong_and_missing() {
    let clock = Clock::new();
    let mut g = guard(with_password());
    let id = format!("{SESSION_ID_HEADER}: {}", g.session_id());
    let v = g.check(&rpc_post(&[&id]), ip(LOOPBACK), clock.at(0.0));
    let Verdict::Respond(r) = &v else {
        panic!("{v:?}")
    };
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.header("WWW-Authenticate"),
        Some("Basic realm=\"Transmission\"")
    );
    let wrong = authorization("admin", "wrong");
    assert_eq!(
        status(&g.check(&rpc_post(&[&id, &wrong]), ip(LOOPBACK), clock.at(0.0))),
        401
    );
    let right = authorization("admin", "right");
    assert_eq!(
        g.check(&rpc_post(&[&id, &right]), ip(LOOPBACK), clock.at(0.0)),
        Verdict::Rpc
    );
    // Right credentials without the id: on to the 409.
    assert_eq!(
        status(&g.check(&rpc_post(&[&right]), ip(LOOPBACK), clock.at(0.0))),
        409
    );
    // Web files need the credentials too.
    let web = request(&["GET /transmission/web/ HTTP/1.1", "Host: localhost"]);
    assert_eq!(status(&g.check(&web, ip(LOOPBACK), clock.at(0.0))), 401);
    let web = request(&["GET /transmission/web/ HTTP/1.1", "Host: localhost", &right]);
    assert_eq!(
        g.check(&web, ip(LOOPBACK), clock.at(0.0)),
        Verdict::Web(String::new())
    );
}

#[test]
fn a_flood_of_wrong_passwords_gets_429_with_retry_after() {
    let clock = Clock::new();
    let mut g = guard(with_password());
    for i in 0..KDF_BURST {
        let wrong = authorization("admin", &format!("w{i}"));
        assert_eq!(
            status(&g.check(&rpc_post(&[&wrong]), ip(LOOPBACK), clock.at(0.0))),
            401
        );
    }
    let wrong = authorization("admin", "w");
    let v = g.check(&rpc_post(&[&wrong]), ip(LOOPBACK), clock.at(0.5));
    let Verdict::Respond(r) = &v else {
        panic!("{v:?}")
    };
    assert_eq!(r.status(), 429);
    assert_eq!(r.header("Retry-After"), Some("2"), "1.5 s, rounded up");
}

#[test]
fn the_anti_brute_force_lockout_refuses_everything_once_on() {
    let clock = Clock::new();
    let mut g = guard(GuardConfig {
        lockout_after: Some(2),
        ..with_password()
    });
    let right = authorization("admin", "right");
    let wrong = authorization("admin", "wrong");
    let id = format!("{SESSION_ID_HEADER}: {}", g.session_id());
    assert_eq!(
        status(&g.check(&rpc_post(&[&wrong]), ip(LOOPBACK), clock.at(0.0))),
        401
    );
    // A success in between resets the count.
    assert_eq!(
        g.check(&rpc_post(&[&right, &id]), ip(LOOPBACK), clock.at(0.0)),
        Verdict::Rpc
    );
    assert_eq!(
        status(&g.check(&rpc_post(&[&wrong]), ip(LOOPBACK), clock.at(0.0))),
        401
    );
    assert_eq!(
        status(&g.check(&rpc_post(&[&wrong]), ip(LOOPBACK), clock.at(0.0))),
        401
    );
    assert_eq!(
        status(&g.check(&rpc_post(&[&right, &id]), ip(LOOPBACK), clock.at(9.0))),
        403
    );
}

fn host_check(host: &str, whitelist: &str) -> bool {
    host_allowed(Some(host), &parse_list(whitelist))
}

#[test]
fn the_host_whitelist_allows_localhost_and_ip_literals_and_listed_names() {
    for host in [
        "localhost",
        "localhost:9091",
        "localhost.",
        "localhost.:9091",
        "LocalHost:9091",
        "127.0.0.1",
        "127.0.0.1:9091",
        "192.168.1.20:9091",
        "[::1]",
        "[::1]:9091",
        "[fe80::1]:80",
        "::1",
    ] {
        assert!(host_check(host, ""), "{host}");
    }
    for host in [
        "evil.example",
        "evil.example:9091",
        "localhost.evil.example",
        "127.0.0.1.nip.io",
        "[::1",
        "[::1]x",
        "[::1]:",
        "[::1]:123456",
        "[127.0.0.1]",
        "localhost:abc",
        "",
        &"a".repeat(300),
    ] {
        assert!(!host_check(host, ""), "{host}");
    }
    assert!(!host_allowed(None, &[]), "no Host at all");
    // Names on the list, wildcards, any case.
    assert!(host_check("nas.lan:9091", "nas.lan"));
    assert!(host_check("NAS.LAN", "nas.lan"));
    assert!(host_check("tv.home.example", "*.home.example"));
    assert!(!host_check("home.example", "*.home.example"));
    assert!(!host_check("evilhome.example", "*.home.example"));
    assert!(host_check("box1.lan", "nas.lan; box?.lan"));
    assert!(host_check("anything", "*"));
}

#[test]
fn the_host_check_refuses_a_rebinding_name_with_421() {
    let clock = Clock::new();
    let mut g = guard(GuardConfig::default());
    let id = format!("{SESSION_ID_HEADER}: {}", g.session_id());
    let post = |host: &str| {
        request(&[
            "POST /transmission/rpc HTTP/1.1",
            &format!("Host: {host}"),
            &id,
        ])
    };
    let v = g.check(&post("attacker.example:9091"), ip(LOOPBACK), clock.at(0.0));
    let Verdict::Respond(r) = &v else {
        panic!("{v:?}")
    };
    assert_eq!(r.status(), 421);
    assert!(String::from_utf8_lossy(r.body()).contains("rpc-host-whitelist"));
    for host in ["localhost:9091", "127.0.0.1:9091", "[::1]:9091"] {
        assert_eq!(
            g.check(&post(host), ip(LOOPBACK), clock.at(0.0)),
            Verdict::Rpc,
            "{host}"
        );
    }
    // HTTP/1.0 without Host fails the check.
    let old = request(&["POST /transmission/rpc HTTP/1.0", &id]);
    assert_eq!(status(&g.check(&old, ip(LOOPBACK), clock.at(0.0))), 421);
    // Listed: passes. Check off, or a password set: any name passes.
    let mut listed = guard(GuardConfig {
        host_whitelist: Some(parse_list("*.example")),
        ..GuardConfig::default()
    });
    let id2 = format!("{SESSION_ID_HEADER}: {}", listed.session_id());
    let req = request(&[
        "POST /transmission/rpc HTTP/1.1",
        "Host: attacker.example",
        &id2,
    ]);
    assert_eq!(
        listed.check(&req, ip(LOOPBACK), clock.at(0.0)),
        Verdict::Rpc
    );
    let mut off = guard(GuardConfig {
        host_whitelist: None,
        ..GuardConfig::default()
    });
    let id3 = format!("{SESSION_ID_HEADER}: {}", off.session_id());
    let req = request(&[
        "POST /transmission/rpc HTTP/1.1",
        "Host: attacker.example",
        &id3,
    ]);
    assert_eq!(off.check(&req, ip(LOOPBACK), clock.at(0.0)), Verdict::Rpc);
    let mut pw = guard(with_password());
    let id4 = format!("{SESSION_ID_HEADER}: {}", pw.session_id());
    let auth = authorization("admin", "right");
    let req = request(&[
        "POST /transmission/rpc HTTP/1.1",
        "Host: attacker.example",
        &id4,
        &auth,
    ]);
    assert_eq!(pw.check(&req, ip(LOOPBACK), clock.at(0.0)), Verdict::Rpc);
    // Web files are not behind the Host check (Transmission's order).
    let web = request(&["GET /transmission/web/ HTTP/1.1", "Host: attacker.example"]);
    assert_eq!(
        g.check(&web, ip(LOOPBACK), clock.at(0.0)),
        Verdict::Web(String::new())
    );
}

#[test]
fn the_address_whitelist_admits_listed_clients_only() {
    let clock = Clock::new();
    let mut g = guard(GuardConfig::default());
    assert!(g.allows_peer(ip("127.0.0.1")) && g.allows_peer(ip("::1")));
    assert!(
        g.allows_peer(ip("::ffff:127.0.0.1")),
        "v4 on a dual-stack socket"
    );
    assert!(!g.allows_peer(ip("192.168.1.5")) && !g.allows_peer(ip("127.0.0.2")));
    let web = request(&["GET /transmission/web/ HTTP/1.1", "Host: localhost"]);
    let v = g.check(&web, ip("10.0.0.9"), clock.at(0.0));
    assert_eq!(status(&v), 403);
    let lan = guard(GuardConfig {
        address_whitelist: Some(parse_list("127.0.0.1, 192.168.*.*;fe80::*")),
        ..GuardConfig::default()
    });
    assert!(lan.allows_peer(ip("192.168.44.1")) && lan.allows_peer(ip("fe80::abcd")));
    assert!(!lan.allows_peer(ip("192.169.0.1")) && !lan.allows_peer(ip("10.1.1.1")));
    let open = guard(GuardConfig {
        address_whitelist: None,
        ..GuardConfig::default()
    });
    assert!(open.allows_peer(ip("203.0.113.7")));
}

#[test]
fn the_root_and_the_prefix_redirect_to_the_web_interface() {
    let clock = Clock::new();
    let mut g = guard(GuardConfig::default());
    for path in [
        "/",
        "/transmission",
        "/transmission/",
        "/transmission/web",
        "/?x=1",
    ] {
        let req = request(&[&format!("GET {path} HTTP/1.1"), "Host: localhost"]);
        let v = g.check(&req, ip(LOOPBACK), clock.at(0.0));
        let Verdict::Respond(r) = &v else {
            panic!("{path}: {v:?}")
        };
        assert_eq!(r.status(), 301, "{path}");
        assert_eq!(r.header("Location"), Some("/transmission/web/"), "{path}");
    }
    for (path, sub) in [
        ("/transmission/web/", ""),
        ("/transmission/web/index.html", "index.html"),
        (
            "/transmission/web/javascript/main.js?v=3",
            "javascript/main.js",
        ),
        ("/transmission/web/%2e%2e/x", "%2e%2e/x"),
    ] {
        let req = request(&[&format!("GET {path} HTTP/1.1"), "Host: localhost"]);
        assert_eq!(
            g.check(&req, ip(LOOPBACK), clock.at(0.0)),
            Verdict::Web(sub.into()),
            "{path}"
        );
    }
    for path in ["/favicon.ico", "/transmission/other", "/transmissionx"] {
        let req = request(&[&format!("GET {path} HTTP/1.1"), "Host: localhost"]);
        assert_eq!(
            status(&g.check(&req, ip(LOOPBACK), clock.at(0.0))),
            404,
            "{path}"
        );
    }
    // OPTIONS: the methods, no CORS.
    let req = request(&[
        "OPTIONS /transmission/rpc HTTP/1.1",
        "Host: localhost",
        "Origin: http://evil.example",
    ]);
    let v = g.check(&req, ip(LOOPBACK), clock.at(0.0));
    let Verdict::Respond(r) = &v else {
        panic!("{v:?}")
    };
    assert_eq!(r.status(), 204);
    assert_eq!(r.header("Access-Control-Allow-Origin"), None);
}

#[test]
fn a_custom_rpc_url_moves_every_path() {
    let clock = Clock::new();
    let mut g = guard(GuardConfig {
        rpc_url: "tr".into(),
        ..GuardConfig::default()
    });
    assert_eq!(g.rpc_path(), "/tr/rpc");
    let id = format!("{SESSION_ID_HEADER}: {}", g.session_id());
    let req = request(&["POST /tr/rpc HTTP/1.1", "Host: localhost", &id]);
    assert_eq!(g.check(&req, ip(LOOPBACK), clock.at(0.0)), Verdict::Rpc);
    let req = request(&["GET /tr HTTP/1.1", "Host: localhost"]);
    let Verdict::Respond(r) = g.check(&req, ip(LOOPBACK), clock.at(0.0)) else {
        panic!()
    };
    assert_eq!(r.header("Location"), Some("/tr/web/"));
    let old = request(&["POST /transmission/rpc HTTP/1.1", "Host: localhost", &id]);
    assert_eq!(status(&g.check(&old, ip(LOOPBACK), clock.at(0.0))), 404);
}

#[test]
fn wildmat_matches_stars_and_question_marks() {
    for (text, pattern, want) in [
        ("abc", "abc", true),
        ("abc", "ABC", true),
        ("abc", "a*", true),
        ("abc", "*c", true),
        ("abc", "*", true),
        ("", "*", true),
        ("", "", true),
        ("abc", "a?c", true),
        ("ac", "a?c", false),
        ("abc", "a*b*c", true),
        ("aXbYc", "a*b*c", true),
        ("abcd", "a*c", false),
        ("192.168.1.1", "192.168.*.*", true),
        ("192.168.1", "192.168.*.*", false),
        ("aaaaaaaaaaaaaaaaaaaaaaaaaaaaab", "*a*a*a*a*a*a*c", false),
    ] {
        assert_eq!(wildmat(text, pattern), want, "{text:?} {pattern:?}");
    }
}
