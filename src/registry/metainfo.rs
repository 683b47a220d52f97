//! `.torrent` metainfo: parsing, validation and the info hash.
//!
//! The info hash is the SHA-1 of the `info` dictionary's bytes exactly as
//! they stand in the file, so the parser records that span while reading
//! (files with unsorted keys exist, and re-encoding would change the hash).

use std::fmt;

use sha1::{Digest, Sha1};

use crate::codec::{DecodeError, Reader, Value};
use crate::engine::geometry::Geometry;

/// The largest metainfo file accepted. Real ones are kilobytes to a few
/// megabytes (a 1 TiB torrent with 256 KiB pieces has 80 MB of hashes,
/// but such torrents use larger pieces).
pub const MAX_METAINFO_BYTES: usize = 32 << 20;

/// One file of a torrent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Path components inside the torrent (for a single-file torrent, the
    /// torrent's name). Each is checked to be a plain name: no `/`, no
    /// `.` or `..`, not empty.
    pub path: Vec<Vec<u8>>,
    /// Length in bytes.
    pub length: u64,
}

impl FileEntry {
    /// The path joined with `/`, as the protocol reports it.
    pub fn display_path(&self) -> Vec<u8> {
        self.path.join(&b'/')
    }
}

/// One tracker URL, split as the protocol reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracker {
    /// The URL as written in the file.
    pub url: String,
    /// Host name or address (IPv6 without brackets).
    pub address: String,
    /// Explicit port, or the scheme's default (http 80, https 443).
    pub port: u16,
    /// Path and query, e.g. `/announce`.
    pub announce: String,
    /// The scrape path, when the announce path's last segment starts with
    /// `announce`.
    pub scrape: Option<String>,
}

impl Tracker {
    /// Splits an announce URL. `None` when it has no `scheme://host`.
    pub fn parse(url: &str) -> Option<Tracker> {
        let (scheme, rest) = url.split_once("://")?;
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        // Drop user info, if any.
        let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']')?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return None;
        }
        let port = match port {
            Some(p) => p.parse().ok()?,
            None if scheme.eq_ignore_ascii_case("https") => 443,
            // http's default, and the original's for every other scheme.
            None => 80,
        };
        let announce = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        let (path_only, query) = match announce.find('?') {
            Some(i) => (&announce[..i], &announce[i..]),
            None => (announce.as_str(), ""),
        };
        let cut = path_only.rfind('/').map_or(0, |i| i + 1);
        let scrape = path_only[cut..]
            .strip_prefix("announce")
            .map(|tail| format!("{}scrape{tail}{query}", &path_only[..cut]));
        Some(Tracker {
            url: url.to_string(),
            address: host.to_string(),
            port,
            announce,
            scrape,
        })
    }
}

/// A parsed and validated metainfo file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metainfo {
    /// SHA-1 of the `info` dictionary's bytes.
    pub info_hash: [u8; 20],
    /// `info.name`.
    pub name: Vec<u8>,
    /// Tracker tiers: `announce-list` when present, else `announce` alone.
    /// URLs that cannot be split are left out.
    pub tiers: Vec<Vec<Tracker>>,
    /// `info.private` is 1.
    pub private: bool,
    /// `comment`, or empty.
    pub comment: Vec<u8>,
    /// `created by`, or empty.
    pub creator: Vec<u8>,
    /// `creation date`, when present.
    pub creation_date: Option<i64>,
    /// Piece length and total size.
    pub geometry: Geometry,
    /// One SHA-1 per piece.
    pub pieces: Vec<[u8; 20]>,
    /// The files in order; their concatenation is what the pieces hash.
    pub files: Vec<FileEntry>,
    /// `info.files` was present (data lives under a directory named
    /// `name`); otherwise the single file is called `name`.
    pub multi_file: bool,
    /// The `info` dictionary's bytes exactly as they stand in the file:
    /// what peers fetch as the torrent's metadata (BEP 9). Shared: the
    /// swarm serves it without a copy.
    pub info: std::sync::Arc<[u8]>,
}

/// Why a metainfo file was refused, in words a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetainfoError {
    /// Over [`MAX_METAINFO_BYTES`].
    TooLarge {
        /// Its size in bytes.
        size: usize,
    },
    /// Not strict bencode.
    Decode(DecodeError),
    /// Bencode, but not a valid metainfo: says what is wrong where.
    Invalid(String),
}

impl fmt::Display for MetainfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetainfoError::TooLarge { size } => write!(
                f,
                "metainfo is {size} bytes, over the limit of {MAX_METAINFO_BYTES}"
            ),
            MetainfoError::Decode(e) => e.fmt(f),
            MetainfoError::Invalid(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for MetainfoError {}

impl From<DecodeError> for MetainfoError {
    fn from(e: DecodeError) -> Self {
        MetainfoError::Decode(e)
    }
}

fn bad(msg: impl Into<String>) -> MetainfoError {
    MetainfoError::Invalid(msg.into())
}

fn bytes_of<'v>(v: Option<&'v Value>, what: &str) -> Result<Option<&'v [u8]>, MetainfoError> {
    match v {
        None => Ok(None),
        Some(Value::Bytes(b)) => Ok(Some(b)),
        Some(_) => Err(bad(format!("{what} is not a string"))),
    }
}

fn int_of(v: Option<&Value>, what: &str) -> Result<Option<i64>, MetainfoError> {
    match v {
        None => Ok(None),
        Some(Value::Int(i)) => Ok(Some(*i)),
        Some(_) => Err(bad(format!("{what} is not an integer"))),
    }
}

fn length_of(v: Option<&Value>, what: &str) -> Result<u64, MetainfoError> {
    let n = int_of(v, what)?.ok_or_else(|| bad(format!("{what} is missing")))?;
    u64::try_from(n).map_err(|_| bad(format!("{what} is negative")))
}

/// A path component must name something inside the torrent's directory.
fn check_component(c: &[u8], what: &str) -> Result<(), MetainfoError> {
    if c.is_empty() || c == b"." || c == b".." || c.contains(&b'/') || c.contains(&0) {
        return Err(bad(format!(
            "{what} {:?} is not a plain file name",
            String::from_utf8_lossy(c)
        )));
    }
    Ok(())
}

impl Metainfo {
    /// Parses a metainfo file's bytes.
    pub fn parse(bytes: &[u8]) -> Result<Metainfo, MetainfoError> {
        if bytes.len() > MAX_METAINFO_BYTES {
            return Err(MetainfoError::TooLarge { size: bytes.len() });
        }
        let (top, info_bytes) = split_info(bytes)?;
        let info = crate::codec::decode(info_bytes)?;
        if info.as_dict().is_none() {
            return Err(bad("info is not a dictionary"));
        }
        let info_hash: [u8; 20] = Sha1::digest(info_bytes).into();

        let name = bytes_of(info.get("name"), "info.name")?
            .ok_or_else(|| bad("info.name is missing"))?
            .to_vec();
        check_component(&name, "info.name")?;
        let piece_length = length_of(info.get("piece length"), "info.piece length")?;
        if piece_length == 0 {
            return Err(bad("info.piece length is 0"));
        }
        let pieces = parse_pieces(&info)?;
        let (files, multi_file) = parse_files(&info, &name)?;
        let total = files
            .iter()
            .try_fold(0u64, |acc, f| acc.checked_add(f.length))
            .ok_or_else(|| bad("total size overflows"))?;
        let geometry = Geometry::new(piece_length, total).ok_or_else(|| {
            bad(format!(
                "{total} bytes in pieces of {piece_length} are too many pieces"
            ))
        })?;
        if geometry.pieces() as usize != pieces.len() {
            return Err(bad(format!(
                "info.pieces holds {} hashes but {total} bytes in pieces of {piece_length} need {}",
                pieces.len(),
                geometry.pieces()
            )));
        }

        Ok(Metainfo {
            info_hash,
            name,
            tiers: parse_tiers(&top)?,
            private: int_of(info.get("private"), "info.private")?.unwrap_or(0) == 1,
            comment: bytes_of(top.get("comment"), "comment")?
                .unwrap_or_default()
                .to_vec(),
            creator: bytes_of(top.get("created by"), "created by")?
                .unwrap_or_default()
                .to_vec(),
            creation_date: int_of(top.get("creation date"), "creation date")?,
            geometry,
            pieces,
            files,
            multi_file,
            info: info_bytes.into(),
        })
    }

    /// A metainfo file made of an `info` dictionary fetched from peers and
    /// the trackers known beside it (each its own tier), as BEP 9 has a
    /// client keep it. The info dictionary's bytes are kept exactly.
    pub fn from_info(info: &[u8], trackers: &[String]) -> Vec<u8> {
        let mut out = Vec::with_capacity(info.len() + 64 + trackers.len() * 64);
        out.push(b'd');
        if !trackers.is_empty() {
            let tiers = Value::List(
                trackers
                    .iter()
                    .map(|t| Value::List(vec![Value::str(t)]))
                    .collect(),
            );
            out.extend_from_slice(b"13:announce-list");
            // A list of lists of strings always encodes.
            if let Ok(bytes) = tiers.to_bencode() {
                out.extend_from_slice(&bytes);
            }
        }
        out.extend_from_slice(b"4:info");
        out.extend_from_slice(info);
        out.push(b'e');
        out
    }

    /// Total bytes of all files.
    pub fn total_size(&self) -> u64 {
        self.geometry.total()
    }

    /// The info hash as 40 lower-case hex digits.
    pub fn hash_hex(&self) -> String {
        hex(&self.info_hash)
    }
}

/// The top-level dict without `info`, and the exact bytes of `info` (its
/// hash is the torrent's identity, so it is never re-encoded).
fn split_info(bytes: &[u8]) -> Result<(Value, &[u8]), MetainfoError> {
    let mut r = Reader::new(bytes);
    if r.peek() != Some(b'd') {
        // Decode anyway, for the byte-exact reason.
        r.value()?;
        return Err(bad("metainfo is not a dictionary"));
    }
    r.begin_dict()?;
    let mut top = Vec::new();
    let mut info_span: Option<&[u8]> = None;
    while !r.at_end()? {
        let key = r.key()?;
        if key == b"info" && info_span.is_none() {
            info_span = Some(r.skip()?);
        } else {
            top.push((key.to_vec().into(), r.value()?));
        }
    }
    r.finish()?;
    let info = info_span.ok_or_else(|| bad("metainfo has no info dictionary"))?;
    Ok((Value::Dict(top), info))
}

fn parse_pieces(info: &Value) -> Result<Vec<[u8; 20]>, MetainfoError> {
    let raw = bytes_of(info.get("pieces"), "info.pieces")?
        .ok_or_else(|| bad("info.pieces is missing"))?;
    if raw.len() % 20 != 0 {
        return Err(bad("info.pieces length is not a multiple of 20"));
    }
    Ok(raw
        .chunks_exact(20)
        .map(|c| {
            let mut h = [0u8; 20];
            h.copy_from_slice(c);
            h
        })
        .collect())
}

/// The files, and whether the torrent is multi-file.
fn parse_files(info: &Value, name: &[u8]) -> Result<(Vec<FileEntry>, bool), MetainfoError> {
    let list = match (info.get("files"), info.get("length")) {
        (Some(_), Some(_)) => return Err(bad("info has both files and length")),
        (None, None) => return Err(bad("info has neither files nor length")),
        (None, Some(_)) => {
            let length = length_of(info.get("length"), "info.length")?;
            let entry = FileEntry {
                path: vec![name.to_vec()],
                length,
            };
            return Ok((vec![entry], false));
        }
        (Some(list), None) => list
            .as_list()
            .ok_or_else(|| bad("info.files is not a list"))?,
    };
    if list.is_empty() {
        return Err(bad("info.files is empty"));
    }
    let mut files = Vec::with_capacity(list.len());
    for (i, f) in list.iter().enumerate() {
        let what = format!("info.files[{i}]");
        let length = length_of(f.get("length"), &format!("{what}.length"))?;
        let parts = f
            .get("path")
            .and_then(Value::as_list)
            .ok_or_else(|| bad(format!("{what}.path is not a list")))?;
        if parts.is_empty() {
            return Err(bad(format!("{what}.path is empty")));
        }
        let mut path = Vec::with_capacity(parts.len());
        for p in parts {
            let p = p
                .as_bytes()
                .ok_or_else(|| bad(format!("{what}.path has a non-string part")))?;
            check_component(p, &format!("{what}.path part"))?;
            path.push(p.to_vec());
        }
        files.push(FileEntry { path, length });
    }
    Ok((files, true))
}

fn parse_tiers(top: &Value) -> Result<Vec<Vec<Tracker>>, MetainfoError> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    if let Some(list) = top.get("announce-list") {
        let tiers = list
            .as_list()
            .ok_or_else(|| bad("announce-list is not a list"))?;
        let mut out = Vec::new();
        for tier in tiers {
            let urls = tier
                .as_list()
                .ok_or_else(|| bad("announce-list has a tier that is not a list"))?;
            let mut trackers = Vec::new();
            for u in urls {
                let u = u
                    .as_bytes()
                    .ok_or_else(|| bad("announce-list has a URL that is not a string"))?;
                trackers.extend(Tracker::parse(&text(u)));
            }
            if !trackers.is_empty() {
                out.push(trackers);
            }
        }
        if !out.is_empty() {
            return Ok(out);
        }
    }
    Ok(match bytes_of(top.get("announce"), "announce")? {
        Some(u) => Tracker::parse(&text(u))
            .map(|t| vec![vec![t]])
            .unwrap_or_default(),
        None => Vec::new(),
    })
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// Parses 40 hex digits, any case, into a 20-byte hash.
pub fn parse_hash(s: &[u8]) -> Option<[u8; 20]> {
    if s.len() != 40 {
        return None;
    }
    let mut out = [0u8; 20];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let digit = |b: u8| char::from(b).to_digit(16);
        out[i] = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/data/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(path).unwrap()
    }

    fn err(bytes: &[u8]) -> String {
        Metainfo::parse(bytes).unwrap_err().to_string()
    }

    #[test]
    fn single_file_fixture_matches_expected() {
        let m = Metainfo::parse(&fixture("hello.torrent")).unwrap();
        assert_eq!(m.hash_hex(), "c67a91b952cb2ce1b3ff7effb92db48eceafedf8");
        assert_eq!(m.name, b"hello.txt");
        assert_eq!(m.comment, b"fixture: single file");
        assert_eq!(m.creator, b"mkvectors");
        assert_eq!(m.creation_date, Some(1_700_000_000));
        assert!(!m.private);
        assert!(!m.multi_file);
        assert_eq!(m.total_size(), 50_000);
        assert_eq!(m.files.len(), 1);
        assert_eq!(m.files[0].display_path(), b"hello.txt");
        assert_eq!(m.geometry.piece_length(), 16384);
        assert_eq!(m.pieces.len(), 4);
        assert_eq!(m.geometry.piece_size(3), 50_000 - 3 * 16384);
        type Row<'a> = (&'a str, u16, &'a str, Option<&'a str>);
        let t: Vec<Vec<Row>> = m
            .tiers
            .iter()
            .map(|tier| {
                tier.iter()
                    .map(|t| {
                        (
                            t.address.as_str(),
                            t.port,
                            t.announce.as_str(),
                            t.scrape.as_deref(),
                        )
                    })
                    .collect()
            })
            .collect();
        assert_eq!(
            t,
            vec![
                vec![("tracker.example.org", 6969, "/announce", Some("/scrape"))],
                vec![("backup.example.net", 1337, "/announce", Some("/scrape"))],
            ]
        );
    }

    #[test]
    fn multi_file_fixture_matches_expected() {
        let m = Metainfo::parse(&fixture("multi.torrent")).unwrap();
        assert_eq!(m.hash_hex(), "02585f0ad555131b783e82ac08f9c134cfb8f7b0");
        assert_eq!(m.name, b"multi");
        assert!(m.private);
        assert!(m.multi_file);
        assert_eq!(m.comment, b"");
        assert_eq!(m.creator, b"");
        assert_eq!(m.creation_date, None);
        let files: Vec<(Vec<u8>, u64)> = m
            .files
            .iter()
            .map(|f| (f.display_path(), f.length))
            .collect();
        assert_eq!(
            files,
            vec![(b"a.bin".to_vec(), 25600), (b"docs/b.txt".to_vec(), 26000)]
        );
        assert_eq!(m.total_size(), 51600);
        let tr = &m.tiers[0][0];
        assert_eq!(
            (tr.address.as_str(), tr.port, tr.announce.as_str()),
            ("tracker.example.org", 80, "/a/announce.php")
        );
        assert_eq!(tr.scrape.as_deref(), Some("/a/scrape.php"));
    }

    #[test]
    fn unsorted_info_keys_are_accepted_and_hashed_as_written() {
        let info = b"d4:name1:x6:lengthi3e12:piece lengthi4e6:pieces20:aaaaaaaaaaaaaaaaaaaae";
        let mut file = b"d4:info".to_vec();
        file.extend_from_slice(info);
        file.push(b'e');
        let m = Metainfo::parse(&file).unwrap();
        let want: [u8; 20] = Sha1::digest(info).into();
        assert_eq!(m.info_hash, want);
        assert_eq!(m.total_size(), 3);
    }

    #[test]
    fn broken_files_get_reasons_a_person_can_act_on() {
        assert_eq!(
            err(b"d8:announce3:abcXXX"),
            "not bencode at byte 16: dict key is not a string"
        );
        assert_eq!(err(b"i3e"), "metainfo is not a dictionary");
        assert_eq!(
            err(b"d4:infod4:name1:x6:lengthi05eee"),
            "not bencode at byte 25: malformed integer"
        );
        assert_eq!(err(b"de"), "metainfo has no info dictionary");
        assert_eq!(err(b"d4:infoi1ee"), "info is not a dictionary");
        assert_eq!(
            err(b"d4:infod4:name1:x6:lengthi3e12:piece lengthi4e6:pieces3:abcee"),
            "info.pieces length is not a multiple of 20"
        );
        assert_eq!(
            err(b"d4:infod4:name1:x6:lengthi3e12:piece lengthi4e6:pieces0:ee"),
            "info.pieces holds 0 hashes but 3 bytes in pieces of 4 need 1"
        );
        assert_eq!(
            err(b"d4:infod4:name2:..6:lengthi3e12:piece lengthi4e6:pieces0:ee"),
            "info.name \"..\" is not a plain file name"
        );
        assert_eq!(
            err(b"d4:infod5:filesld6:lengthi1e4:pathl2:..1:xeee4:name1:x12:piece lengthi4e6:pieces20:aaaaaaaaaaaaaaaaaaaaee"),
            "info.files[0].path part \"..\" is not a plain file name"
        );
        assert_eq!(
            err(b"d4:infod4:name1:x12:piece lengthi4e6:pieces0:ee"),
            "info has neither files nor length"
        );
        assert_eq!(
            err(b"d4:infod4:name1:x6:lengthi-3e12:piece lengthi4e6:pieces0:ee"),
            "info.length is negative"
        );
        assert_eq!(
            err(b"d4:infod4:name1:x6:lengthi3e12:piece lengthi0e6:pieces0:ee"),
            "info.piece length is 0"
        );
        let huge = vec![b'x'; MAX_METAINFO_BYTES + 1];
        assert!(err(&huge).starts_with("metainfo is 33554433 bytes, over the limit"));
    }

    #[test]
    fn tracker_urls_are_split_like_the_original() {
        let t = Tracker::parse("https://t.example/x/announce?passkey=1").unwrap();
        assert_eq!((t.address.as_str(), t.port), ("t.example", 443));
        assert_eq!(t.announce, "/x/announce?passkey=1");
        assert_eq!(t.scrape.as_deref(), Some("/x/scrape?passkey=1"));
        let t = Tracker::parse("http://[::1]:8080/tracker").unwrap();
        assert_eq!((t.address.as_str(), t.port), ("::1", 8080));
        assert_eq!(t.scrape, None);
        let t = Tracker::parse("http://host").unwrap();
        assert_eq!((t.port, t.announce.as_str()), (80, "/"));
        assert!(Tracker::parse("not a url").is_none());
        assert!(Tracker::parse("http://:80/a").is_none());
        assert!(Tracker::parse("http://h:99999/a").is_none());
    }

    #[test]
    fn hashes_parse_in_any_case() {
        let h = parse_hash(b"C67A91b952cb2ce1b3ff7effb92db48eceafedf8").unwrap();
        assert_eq!(hex(&h), "c67a91b952cb2ce1b3ff7effb92db48eceafedf8");
        assert!(parse_hash(b"abc").is_none());
        assert!(parse_hash(b"g67a91b952cb2ce1b3ff7effb92db48eceafedf8").is_none());
    }
}
