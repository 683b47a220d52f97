//! The web interface's files: traversal refused in every form tried,
//! content types, HEAD, redirects, revalidation, the cache.

use std::fs;
use std::path::Path;

use super::{conn, take_output, Clock};
use crate::http::files::{content_type, percent_decode, MAX_FILE_SIZE};
use crate::http::{Guard, GuardConfig, Request, Response, Verdict, WebFiles};

/// A web directory `root/` beside a `secret.txt` it must never give out.
struct Fixture {
    _dir: tempfile::TempDir,
    files: WebFiles,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("web");
    fs::create_dir_all(root.join("images")).unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
    fs::create_dir_all(root.join("docs")).unwrap();
    fs::write(dir.path().join("secret.txt"), "SECRET").unwrap();
    fs::write(root.join("index.html"), "<html>index</html>").unwrap();
    fs::write(root.join("docs/index.html"), "docs").unwrap();
    fs::write(root.join("app.js"), "let a = 1;").unwrap();
    fs::write(root.join("images/logo.png"), b"\x89PNG").unwrap();
    fs::write(root.join("space name.css"), "body{}").unwrap();
    fs::write(root.join(".hidden"), "hidden").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("out.txt")).unwrap();
    std::os::unix::fs::symlink(dir.path(), root.join("up")).unwrap();
    std::os::unix::fs::symlink(root.join("app.js"), root.join("alias.js")).unwrap();
    nix::unistd::mkfifo(&root.join("pipe.js"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let big = fs::File::create(root.join("big.js")).unwrap();
    big.set_len(MAX_FILE_SIZE + 1).unwrap();
    let files = WebFiles::open(&root).unwrap();
    Fixture { _dir: dir, files }
}

fn get(path: &str) -> Request {
    request(&format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n"))
}

fn request(text: &str) -> Request {
    let clock = Clock::new();
    let mut c = conn(&clock);
    c.receive(text.as_bytes(), clock.at(0.0)).unwrap();
    c.poll_request().unwrap()
}

/// Routes a request through the guard and serves it, as the front will.
fn serve(f: &mut Fixture, req: &Request) -> Response {
    let clock = Clock::new();
    let mut g = Guard::new(
        GuardConfig::default(),
        &mut fastrand::Rng::with_seed(1),
        clock.at(0.0),
    );
    match g.check(req, "127.0.0.1".parse().unwrap(), clock.at(0.0)) {
        Verdict::Web(sub) => f.files.serve(req, &sub),
        Verdict::Respond(r) => r,
        Verdict::Rpc => panic!("not a file"),
    }
}

#[test]
fn traversal_is_refused_in_every_form_tried() {
    let mut f = fixture();
    let attempts = [
        "../secret.txt",
        "..%2fsecret.txt",
        "..%2Fsecret.txt",
        "%2e%2e/secret.txt",
        "%2E%2E/secret.txt",
        "%2e%2e%2fsecret.txt",
        ".%2e/secret.txt",
        "images/../../secret.txt",
        "images/%2e%2e/%2e%2e/secret.txt",
        "images/..",
        "./index.html",
        "%2e/index.html",
        "....//secret.txt",
        "/secret.txt",
        "%2fetc%2fpasswd",
        "//etc/passwd",
        "images//logo.png",
        "..\\secret.txt",
        "..%5csecret.txt",
        "index.html%00.png",
        "%00",
        ".hidden",
        "%2ehidden",
        "out.txt",
        "up/secret.txt",
        "pipe.js",
        "nothing-here.html",
        "index.html/",
    ];
    for sub in attempts {
        let path = format!("/transmission/web/{sub}");
        let r = serve(&mut f, &get(&path));
        assert!(matches!(r.status(), 400 | 404), "{sub}: {}", r.status());
        let body = String::from_utf8_lossy(r.body());
        assert!(!body.contains("SECRET") && !body.contains("root:"), "{sub}");
    }
    // A link whose target is back inside the root is only another name.
    let r = serve(&mut f, &get("/transmission/web/up/web/index.html"));
    assert_eq!((r.status(), r.body()), (200, &b"<html>index</html>"[..]));
    // Malformed escapes are a bad request.
    for sub in ["%", "%2", "%zz", "a%g0"] {
        let r = f.files.serve(&get("/x"), sub);
        assert_eq!(r.status(), 400, "{sub}");
    }
    // Too large to read on the loop.
    assert_eq!(
        serve(&mut f, &get("/transmission/web/big.js")).status(),
        403
    );
}

#[test]
fn files_are_served_with_their_types() {
    let mut f = fixture();
    for (sub, body, ctype) in [
        ("", "<html>index</html>", "text/html; charset=utf-8"),
        (
            "index.html",
            "<html>index</html>",
            "text/html; charset=utf-8",
        ),
        ("app.js", "let a = 1;", "text/javascript; charset=utf-8"),
        ("alias.js", "let a = 1;", "text/javascript; charset=utf-8"),
        ("images/logo.png", "\u{fffd}PNG", "image/png"),
        ("space%20name.css", "body{}", "text/css; charset=utf-8"),
        ("docs/", "docs", "text/html; charset=utf-8"),
    ] {
        let r = serve(&mut f, &get(&format!("/transmission/web/{sub}?cache=1")));
        assert_eq!(r.status(), 200, "{sub}");
        assert_eq!(String::from_utf8_lossy(r.body()), body, "{sub}");
        assert_eq!(r.header("Content-Type"), Some(ctype), "{sub}");
        assert_eq!(r.header("X-Content-Type-Options"), Some("nosniff"));
        assert!(r.header("ETag").is_some());
    }
    for (name, ctype) in [
        ("a.HTML", "text/html; charset=utf-8"),
        ("a.css", "text/css; charset=utf-8"),
        ("a.json", "application/json"),
        ("a.ico", "image/vnd.microsoft.icon"),
        ("a.svg", "image/svg+xml"),
        ("a.gif", "image/gif"),
        ("a.woff", "font/woff"),
        ("a.woff2", "font/woff2"),
        ("a.map", "application/json"),
        ("a", "application/octet-stream"),
        ("a.exe", "application/octet-stream"),
    ] {
        assert_eq!(content_type(Path::new(name)), ctype, "{name}");
    }
    // An empty directory without index: 404.
    assert_eq!(
        serve(&mut f, &get("/transmission/web/empty/")).status(),
        404
    );
}

#[test]
fn a_directory_without_its_slash_is_redirected() {
    let mut f = fixture();
    let r = serve(&mut f, &get("/transmission/web/docs"));
    assert_eq!(r.status(), 301);
    assert_eq!(r.header("Location"), Some("/transmission/web/docs/"));
    // The web root itself goes through the guard's redirect.
    let r = serve(&mut f, &get("/transmission/web"));
    assert_eq!(
        (r.status(), r.header("Location")),
        (301, Some("/transmission/web/"))
    );
}

#[test]
fn only_get_and_head_are_served_and_head_sends_no_body() {
    let mut f = fixture();
    let post = request(
        "POST /transmission/web/app.js HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n",
    );
    let r = serve(&mut f, &post);
    assert_eq!(r.status(), 405);
    assert_eq!(r.header("Allow"), Some("GET, HEAD"));

    let clock = Clock::new();
    let mut c = conn(&clock);
    c.receive(
        b"HEAD /transmission/web/app.js HTTP/1.1\r\nHost: localhost\r\n\r\n",
        clock.at(0.0),
    )
    .unwrap();
    let req = c.poll_request().unwrap();
    let r = serve(&mut f, &req);
    assert_eq!(r.status(), 200);
    c.respond(r).unwrap();
    let out = take_output(&mut c);
    assert!(out.contains("\r\nContent-Length: 10\r\n"), "{out}");
    assert!(out.ends_with("\r\n\r\n"), "no body: {out}");
}

#[test]
fn an_unchanged_file_revalidates_with_304_and_a_changed_one_is_read_again() {
    let mut f = fixture();
    let first = serve(&mut f, &get("/transmission/web/app.js"));
    let etag = first.header("ETag").unwrap().to_string();
    let req = request(&format!(
        "GET /transmission/web/app.js HTTP/1.1\r\nHost: localhost\r\nIf-None-Match: {etag}\r\n\r\n"
    ));
    let r = serve(&mut f, &req);
    assert_eq!(r.status(), 304);
    assert!(r.body().is_empty());
    // Rewritten (another size; its time may not tick): new bytes, new tag.
    fs::write(f.files.root().join("app.js"), "let a = 22;").unwrap();
    let r = serve(&mut f, &req);
    assert_eq!(r.status(), 200);
    assert_eq!(r.body(), b"let a = 22;");
    assert_ne!(r.header("ETag"), Some(etag.as_str()));
}

#[test]
fn percent_decoding() {
    assert_eq!(percent_decode("a%20b+c").unwrap(), b"a b+c");
    assert_eq!(percent_decode("%41%6a").unwrap(), b"Aj");
    assert_eq!(percent_decode("%e2%9c%93").unwrap(), "✓".as_bytes());
    assert_eq!(percent_decode("").unwrap(), b"");
    for bad in ["%", "%4", "%4g", "%%41"] {
        assert!(percent_decode(bad).is_none(), "{bad}");
    }
}

/// Debian's transmission-common web interface (3.00), as installed:
/// every file is served with a known type, and the page's own assets
/// resolve. Needs the package (`apt-get install transmission-common`).
#[test]
#[ignore = "needs /usr/share/transmission/web (Debian's transmission-common)"]
fn debians_web_interface_is_served() {
    let root = Path::new("/usr/share/transmission/web");
    let mut files = WebFiles::open(root).unwrap();
    let mut stack = vec![files.root().to_path_buf()];
    let mut served = 0;
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let sub = path
                .strip_prefix(files.root())
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            let r = files.serve(&get("/x"), &sub);
            assert_eq!(r.status(), 200, "{sub}");
            assert_eq!(r.body(), fs::read(&path).unwrap(), "{sub}");
            assert_ne!(
                r.header("Content-Type"),
                Some("application/octet-stream"),
                "{sub}"
            );
            served += 1;
        }
    }
    assert!(served > 50, "{served} files");
    let index = files.serve(&get("/transmission/web/"), "");
    let html = String::from_utf8_lossy(index.body()).into_owned();
    let mut checked = 0;
    for asset in html
        .split(['"', '\''])
        .filter(|s| s.ends_with(".js") || s.ends_with(".css"))
    {
        // Relative to /transmission/web/, as the browser resolves it.
        let r = files.serve(&get("/x"), asset.trim_start_matches("./"));
        assert_eq!(r.status(), 200, "{asset} named by index.html");
        checked += 1;
    }
    assert!(checked > 10, "{checked} assets named by index.html");
}
