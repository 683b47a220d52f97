//! The web interface's static files, under `/transmission/web/`.
//!
//! A request's path is percent-decoded and split into names, each
//! checked (no empty name, none starting with `.`, so no `..` or hidden
//! file, no NUL or backslash), joined under the root, then canonicalised
//! and required to stay under the canonical root, so a symbolic link
//! leading out is refused too. The final open does not follow links
//! (the canonical path has none, so one appearing since is a swap) and
//! does not block (a FIFO put there cannot stall the loop).
//!
//! Reading a file blocks the loop, so files are capped at
//! [`MAX_FILE_SIZE`] and small ones are kept in memory, checked against
//! the file's size, modification time and inode on each request (one
//! `stat`), up to [`CACHE_BYTES`] in all. Responses carry an `ETag` and
//! `Cache-Control: no-cache`, so a browser revalidates each load and
//! gets `304` without a body when nothing changed.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read as _};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::request::{Method, Request};
use super::response::Response;

/// Largest file served. Transmission 3.00's interface has none over
/// 240 KiB, 4.0's bundle is about 1 MiB; 8 MiB leaves room for source
/// maps and keeps one read under a few milliseconds.
pub const MAX_FILE_SIZE: u64 = 8 << 20;

/// Largest file kept in memory.
pub const MAX_CACHED_FILE: usize = 1 << 20;

/// Bytes of files kept in memory in all: a whole interface (3.00's is
/// 0.9 MiB) several times over.
pub const CACHE_BYTES: usize = 8 << 20;

/// Most names in a file's path below the root.
const MAX_DEPTH: usize = 16;

/// The page served for a directory.
const INDEX: &str = "index.html";

/// A file's identity for the cache and the `ETag`: an edit changes the
/// time or size, a replacement the inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime_ns: i128,
    inode: u64,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Stamp {
        Stamp {
            len: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            inode: meta.ino(),
        }
    }

    fn etag(&self) -> String {
        format!("\"{:x}-{:x}-{:x}\"", self.inode, self.mtime_ns, self.len)
    }
}

/// The web interface directory and its cache.
#[derive(Debug)]
pub struct WebFiles {
    root: PathBuf,
    cache: HashMap<PathBuf, (Stamp, Vec<u8>)>,
    /// Cached paths, oldest first, for eviction.
    order: VecDeque<PathBuf>,
    cached_bytes: usize,
}

impl WebFiles {
    /// Serves the directory `dir` (Debian installs Transmission's at
    /// `/usr/share/transmission/web`).
    pub fn open(dir: &Path) -> io::Result<WebFiles> {
        let root = fs::canonicalize(dir)?;
        if !fs::metadata(&root)?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                "not a directory",
            ));
        }
        Ok(WebFiles {
            root,
            cache: HashMap::new(),
            order: VecDeque::new(),
            cached_bytes: 0,
        })
    }

    /// The canonical directory served.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Answers `request` for the file at `subpath` (percent-encoded, as
    /// [`Verdict::Web`](super::Verdict::Web) gives it) with the file, a
    /// redirect to add a directory's `/`, `304`, or a refusal.
    pub fn serve(&mut self, request: &Request, subpath: &str) -> Response {
        if !matches!(request.method, Method::Get | Method::Head) {
            return Response::html(405, "").with_header("Allow", "GET, HEAD");
        }
        let Some(decoded) = percent_decode(subpath) else {
            return Response::html(400, "");
        };
        let Some((path, is_dir_request)) = self.join(&decoded) else {
            return Response::html(404, "");
        };
        match self.resolve(&path, is_dir_request) {
            Ok(Resolved::File(path)) => self.file(request, &path),
            Ok(Resolved::AddSlash) => {
                let location = format!("{}/", request.path);
                Response::html(301, "").with_header("Location", &location)
            }
            Err(status) => Response::html(status, ""),
        }
    }

    /// The path under the root that `decoded` names, and whether it ended
    /// with `/`; `None` for a name that is not allowed.
    fn join(&self, decoded: &[u8]) -> Option<(PathBuf, bool)> {
        let (names, is_dir_request) = match decoded.strip_suffix(b"/") {
            Some(names) => (names, true),
            None => (decoded, false),
        };
        let mut path = self.root.clone();
        if names.is_empty() {
            return Some((path, true));
        }
        for (depth, name) in names.split(|&b| b == b'/').enumerate() {
            let bad = name.is_empty()
                || name.starts_with(b".")
                || name.iter().any(|&b| b == 0 || b == b'\\');
            if bad || depth >= MAX_DEPTH {
                return None;
            }
            path.push(OsStr::from_bytes(name));
        }
        Some((path, is_dir_request))
    }

    /// Canonicalises `path`, keeps it under the root, and picks the
    /// directory's index. A status on refusal.
    fn resolve(&self, path: &Path, is_dir_request: bool) -> Result<Resolved, u16> {
        let real = self.contained(path)?;
        let meta = fs::metadata(&real).map_err(|_| 404u16)?;
        if !meta.is_dir() {
            return if is_dir_request {
                Err(404)
            } else {
                Ok(Resolved::File(real))
            };
        }
        if !is_dir_request {
            return Ok(Resolved::AddSlash);
        }
        self.contained(&real.join(INDEX)).map(Resolved::File)
    }

    /// `path` canonical, if it exists under the root.
    fn contained(&self, path: &Path) -> Result<PathBuf, u16> {
        let real = fs::canonicalize(path).map_err(|_| 404u16)?;
        if real.starts_with(&self.root) {
            Ok(real)
        } else {
            Err(404)
        }
    }

    /// The response for a file at its canonical `path`.
    fn file(&mut self, request: &Request, path: &Path) -> Response {
        let (stamp, body) = match self.read(path) {
            Ok(found) => found,
            Err(status) => return Response::html(status, ""),
        };
        let etag = stamp.etag();
        let fresh = request
            .headers
            .get("if-none-match")
            .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
        let response = if fresh {
            Response::new(304)
        } else {
            Response::new(200).with_body(content_type(path), body)
        };
        response
            .with_header("ETag", &etag)
            .with_header("Cache-Control", "no-cache")
            .with_header("X-Content-Type-Options", "nosniff")
    }

    /// The file's stamp and bytes, from the cache when it is unchanged.
    fn read(&mut self, path: &Path) -> Result<(Stamp, Vec<u8>), u16> {
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
            .open(path)
            .map_err(|_| 404u16)?;
        let meta = file.metadata().map_err(|_| 404u16)?;
        if !meta.is_file() {
            return Err(404);
        }
        if meta.len() > MAX_FILE_SIZE {
            return Err(403);
        }
        let stamp = Stamp::of(&meta);
        if let Some((cached, body)) = self.cache.get(path) {
            if *cached == stamp {
                return Ok((stamp, body.clone()));
            }
        }
        let body = read_capped(file, meta.len()).map_err(|_| 500u16)?;
        self.remember(path, stamp, &body);
        Ok((stamp, body))
    }

    /// Keeps a small file, evicting the oldest to stay under
    /// [`CACHE_BYTES`].
    fn remember(&mut self, path: &Path, stamp: Stamp, body: &[u8]) {
        if let Some((_, old)) = self.cache.remove(path) {
            self.cached_bytes = self.cached_bytes.saturating_sub(old.len());
            self.order.retain(|p| p != path);
        }
        if body.len() > MAX_CACHED_FILE {
            return;
        }
        while self.cached_bytes + body.len() > CACHE_BYTES {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some((_, old)) = self.cache.remove(&oldest) {
                self.cached_bytes = self.cached_bytes.saturating_sub(old.len());
            }
        }
        self.cached_bytes += body.len();
        self.order.push_back(path.to_path_buf());
        self.cache
            .insert(path.to_path_buf(), (stamp, body.to_vec()));
    }
}

/// Where a request's path leads.
enum Resolved {
    File(PathBuf),
    /// A directory named without its `/`.
    AddSlash,
}

/// Reads at most [`MAX_FILE_SIZE`] bytes (the file may have grown since
/// its `stat`).
fn read_capped(file: File, expected: u64) -> io::Result<Vec<u8>> {
    let mut body = Vec::with_capacity(usize::try_from(expected.min(MAX_FILE_SIZE)).unwrap_or(0));
    file.take(MAX_FILE_SIZE).read_to_end(&mut body)?;
    Ok(body)
}

/// `%XX` escapes decoded; `None` for a `%` not followed by two hex
/// digits. `+` stays `+` (it means a space only in forms).
pub fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            if !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Some(out)
}

/// The `Content-Type` for a file, by its extension.
pub fn content_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(OsStr::to_str)
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "txt" => "text/plain; charset=utf-8",
        "xml" => "application/xml",
        "png" => "image/png",
        "gif" => "image/gif",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "ico" => "image/vnd.microsoft.icon",
        "svg" => "image/svg+xml",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "eot" => "application/vnd.ms-fontobject",
        _ => "application/octet-stream",
    }
}

/// The 404 for a web interface request when no interface directory was
/// found: where the daemon looks, and how to point it elsewhere.
pub fn missing_response(looked_in: &str) -> Response {
    let body = format!(
        "<p>Couldn't find Transmission's web interface files!</p>\
         <p>Looked in {}. Install them (Debian: transmission-common) or \
         point the daemon at the folder holding their index.html.</p>",
        escape_html(looked_in)
    );
    Response::html(404, &body)
}

/// Text made safe inside HTML.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
