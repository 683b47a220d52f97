//! `torrent-get`'s fields: each one's name and how to write its value
//! from the registry's record of a torrent.
//!
//! Where tripcd has no such feature, the value says so truthfully (see
//! each field's comment): every file is wanted at normal priority because
//! tripcd downloads whole torrents; no per-torrent limits, ratio or idle
//! limits, queue or bandwidth groups exist; nothing is held unchecked
//! (the disk thread hashes each piece before it is written). Fields
//! tripcd has no honest figure for are not answered at all (a requested
//! field without an entry here is left out, as Transmission leaves out
//! names it does not know): `availability` (the swarm's per-piece counts
//! are not reported to the registry), `manualAnnounceTime`,
//! `secondsDownloading`, `secondsSeeding` (not measured), `source` (not
//! read from metainfo files).

use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;

use base64::Engine as _;

use super::json::Out;
use crate::registry::magnet::Magnet;
use crate::registry::metainfo::Tracker;
use crate::registry::{Phase, Torrent};
use crate::status::complaint;

/// What a field's value is read from besides the torrent.
pub struct Row<'a> {
    /// The torrent.
    pub t: &'a Torrent,
    /// Its place among all torrents in id order: its `queuePosition`.
    pub position: usize,
    /// Peers one torrent may have connected (the daemon's setting).
    pub peer_limit: u64,
    /// How far its check got (0 to 1), if it is checked or waits for it.
    pub check: Option<f64>,
}

/// Writes one field's value.
pub type Writer = fn(&Row<'_>, &mut Out);

/// Every field answered, sorted by name.
pub const FIELDS: &[(&str, Writer)] = &[
    ("activityDate", |r, o| o.int(r.t.dates.activity)),
    ("addedDate", |r, o| o.int(r.t.dates.added)),
    // tripcd has no bandwidth priorities: every torrent is normal (0).
    ("bandwidthPriority", |_, o| o.int(0)),
    ("comment", |r, o| {
        o.bytes(r.t.meta.as_ref().map_or(&[][..], |m| &m.comment))
    }),
    // Not counted yet: the swarm drops bad pieces and blames their peers
    // without telling the registry how many bytes were lost (see the
    // report: `Transfer::corrupt` is wanted).
    ("corruptEver", |_, o| o.int(0)),
    ("creator", |r, o| {
        o.bytes(r.t.meta.as_ref().map_or(&[][..], |m| &m.creator))
    }),
    ("dateCreated", |r, o| {
        o.int(r.t.meta.as_ref().and_then(|m| m.creation_date).unwrap_or(0))
    }),
    ("desiredAvailable", |r, o| o.uint(desired_available(r.t))),
    ("doneDate", |r, o| o.int(r.t.dates.done)),
    ("downloadDir", |r, o| {
        o.bytes(r.t.directory.as_os_str().as_bytes())
    }),
    // No per-torrent limits: only the session's apply.
    ("downloadLimit", |_, o| o.int(0)),
    ("downloadLimited", |_, o| o.bool(false)),
    ("downloadedEver", |r, o| o.uint(r.t.transfer.downloaded)),
    ("editDate", |r, o| o.int(r.t.dates.edited)),
    ("error", |r, o| o.int(error_code(r.t))),
    ("errorString", |r, o| o.str(error_string(r.t))),
    ("eta", |r, o| o.int(eta(r.t))),
    // No idle-seeding limit: never an idle ETA.
    ("etaIdle", |_, o| o.int(-1)),
    ("file-count", |r, o| o.uint(file_count(r.t) as u64)),
    ("fileStats", file_stats),
    ("files", files),
    // No bandwidth groups.
    ("group", |_, o| o.str("")),
    ("hashString", |r, o| o.str(&r.t.hash_hex())),
    // Nothing is kept unchecked: a piece is hashed before it is written.
    ("haveUnchecked", |_, o| o.int(0)),
    ("haveValid", |r, o| o.uint(r.t.completed)),
    // Every torrent obeys the session's limits.
    ("honorsSessionLimits", |_, o| o.bool(true)),
    ("id", |r, o| o.uint(r.t.id)),
    // "Finished" is a seed limit reached; tripcd has none.
    ("isFinished", |_, o| o.bool(false)),
    ("isPrivate", |r, o| o.bool(r.t.is_private())),
    // "Stalled" is a queue's notion; tripcd has no queue.
    ("isStalled", |_, o| o.bool(false)),
    ("labels", |r, o| {
        o.open_array();
        for l in &r.t.labels {
            o.str(l);
        }
        o.close_array();
    }),
    ("leftUntilDone", |r, o| o.uint(left(r.t))),
    ("magnetLink", |r, o| o.str(&magnet_link(r.t))),
    ("maxConnectedPeers", |r, o| o.uint(r.peer_limit)),
    // Known or not: how far the fetch of the info dictionary got is the
    // swarm's, not reported.
    ("metadataPercentComplete", |r, o| {
        o.real(if r.t.meta.is_some() { 1.0 } else { 0.0 })
    }),
    ("name", |r, o| o.bytes(&r.t.name())),
    ("peer-limit", |r, o| o.uint(r.peer_limit)),
    ("peers", peers),
    ("peersConnected", |r, o| o.uint(r.t.transfer.peers.into())),
    ("peersFrom", peers_from),
    ("peersGettingFromUs", |r, o| {
        o.uint(r.t.transfer.peers_uploading.into())
    }),
    ("peersSendingToUs", |r, o| {
        o.uint(r.t.transfer.peers_downloading.into())
    }),
    // Every file is wanted: complete and done are the same.
    ("percentComplete", |r, o| o.real(percent_done(r.t))),
    ("percentDone", |r, o| o.real(percent_done(r.t))),
    ("pieceCount", |r, o| {
        o.uint(r.t.meta.as_ref().map_or(0, |m| m.geometry.pieces().into()))
    }),
    ("pieceSize", |r, o| {
        o.uint(r.t.meta.as_ref().map_or(0, |m| m.geometry.piece_length()))
    }),
    ("pieces", |r, o| {
        if r.t.meta.is_some() {
            o.str(&base64::engine::general_purpose::STANDARD.encode(r.t.bitfield()));
        } else {
            o.str("");
        }
    }),
    ("primary-mime-type", |r, o| o.str(primary_mime_type(r.t))),
    // tripcd downloads whole torrents: every file at normal priority (0).
    ("priorities", |r, o| repeat(o, file_count(r.t), 0)),
    // No queue: torrents in id order.
    ("queuePosition", |r, o| o.uint(r.position as u64)),
    ("rateDownload", |r, o| o.uint(r.t.transfer.download_rate)),
    ("rateUpload", |r, o| o.uint(r.t.transfer.upload_rate)),
    ("recheckProgress", |r, o| o.real(r.check.unwrap_or(0.0))),
    // No idle limit (2: unlimited), no ratio limit (2: unlimited).
    ("seedIdleLimit", |_, o| o.int(0)),
    ("seedIdleMode", |_, o| o.int(2)),
    ("seedRatioLimit", |_, o| o.real(0.0)),
    ("seedRatioMode", |_, o| o.int(2)),
    ("sizeWhenDone", |r, o| o.uint(r.t.total_size())),
    ("startDate", |r, o| o.int(r.t.dates.started)),
    ("status", |r, o| o.int(status(r.t))),
    ("torrentFile", |r, o| {
        o.bytes(r.t.saved_path.as_os_str().as_bytes())
    }),
    ("totalSize", |r, o| o.uint(r.t.total_size())),
    ("trackerList", |r, o| o.str(&tracker_list(r.t))),
    ("trackerStats", tracker_stats),
    ("trackers", trackers),
    ("uploadLimit", |_, o| o.int(0)),
    ("uploadLimited", |_, o| o.bool(false)),
    ("uploadRatio", |r, o| o.real(ratio(r.t))),
    ("uploadedEver", |r, o| o.uint(r.t.transfer.uploaded)),
    // Every file wanted, written as 1 as Transmission 3.00 and 4.0.2+ do.
    ("wanted", |r, o| repeat(o, file_count(r.t), 1)),
    // tripcd does not use web seeds.
    ("webseeds", |_, o| {
        o.open_array();
        o.close_array();
    }),
    ("webseedsSendingToUs", |_, o| o.int(0)),
];

/// The writer of the field called `name`.
pub fn lookup(name: &str) -> Option<(&'static str, Writer)> {
    FIELDS
        .binary_search_by(|(n, _)| (*n).cmp(name))
        .ok()
        .and_then(|i| FIELDS.get(i).copied())
}

/// The spec's status numbers: 0 stopped, 1 waiting for a check, 2
/// checking, 3 waiting to download, 4 downloading, 5 waiting to seed, 6
/// seeding. A torrent fetching its metadata is downloading; one stopped
/// by an error, or whose `stopped` announce is in flight, is stopped.
pub fn status(t: &Torrent) -> i64 {
    match t.phase {
        Phase::WaitingCheck => 1,
        Phase::Checking => 2,
        _ if !t.running || t.error.is_some() || t.transfer.stopping => 0,
        Phase::Paused => 0,
        Phase::FetchingMetadata | Phase::Downloading => 4,
        Phase::Seeding => 6,
    }
}

/// 0 none, 1 a tracker's warning, 2 a tracker's error, 3 a local error
/// (the IPC's complaint, numbered).
fn error_code(t: &Torrent) -> i64 {
    match complaint(t) {
        None => 0,
        Some(("tracker-warning", _)) => 1,
        Some(("tracker-error", _)) => 2,
        Some(_) => 3,
    }
}

fn error_string(t: &Torrent) -> &str {
    complaint(t).map_or("", |(_, m)| m)
}

/// Seconds to completion while downloading, else -1 (not available).
fn eta(t: &Torrent) -> i64 {
    if status(t) == 4 {
        t.transfer.eta
    } else {
        -1
    }
}

fn left(t: &Torrent) -> u64 {
    t.total_size().saturating_sub(t.completed)
}

/// A lower bound, honestly: what is known to be available is everything
/// left when a connected peer has every piece; without one, nothing is
/// known (the peers' bitfields stay in the swarm).
fn desired_available(t: &Torrent) -> u64 {
    let seed = t.transfer.peer_list.iter().any(|p| p.progress >= 1.0);
    if seed {
        left(t)
    } else {
        0
    }
}

fn percent_done(t: &Torrent) -> f64 {
    match t.total_size() {
        _ if t.meta.is_none() => 0.0,
        0 => 1.0,
        size => t.completed as f64 / size as f64,
    }
}

/// Uploaded over downloaded (or over what is had, for a torrent added
/// complete); -1 when nothing is had or sent, -2 for infinity, as
/// Transmission's `tr_getRatio`.
fn ratio(t: &Torrent) -> f64 {
    let up = t.transfer.uploaded;
    let down = match t.transfer.downloaded {
        0 => t.completed,
        d => d,
    };
    match (up, down) {
        (_, d) if d > 0 => up as f64 / d as f64,
        (0, _) => -1.0,
        _ => -2.0,
    }
}

fn file_count(t: &Torrent) -> usize {
    t.meta.as_ref().map_or(0, |m| m.files.len())
}

fn repeat(o: &mut Out, n: usize, value: i64) {
    o.open_array();
    for _ in 0..n {
        o.int(value);
    }
    o.close_array();
}

/// Bytes of each file inside verified pieces, in one sweep over the
/// pieces and files.
fn file_progress(t: &Torrent) -> Vec<u64> {
    let Some(m) = &t.meta else {
        return Vec::new();
    };
    let g = &m.geometry;
    let mut done = vec![0u64; m.files.len()];
    let (mut first, mut first_start) = (0usize, 0u64);
    for (piece, _) in t.verified.iter().enumerate().filter(|(_, v)| **v) {
        let Ok(piece) = u32::try_from(piece) else {
            break;
        };
        let start = g.piece_start(piece);
        let end = start + g.piece_size(piece);
        while let Some(f) = m.files.get(first) {
            if first_start + f.length > start {
                break;
            }
            first_start += f.length;
            first += 1;
        }
        let (mut i, mut file_start) = (first, first_start);
        while let (Some(f), Some(d)) = (m.files.get(i), done.get_mut(i)) {
            if file_start >= end {
                break;
            }
            let file_end = file_start + f.length;
            *d += file_end.min(end).saturating_sub(file_start.max(start));
            file_start = file_end;
            i += 1;
        }
    }
    done
}

/// A file's name as Transmission gives it: under the torrent's folder for
/// a torrent of several files.
fn file_name(t: &Torrent, index: usize) -> Vec<u8> {
    let Some(m) = &t.meta else {
        return Vec::new();
    };
    let path = m
        .files
        .get(index)
        .map(|f| f.display_path())
        .unwrap_or_default();
    if m.multi_file {
        [&m.name[..], b"/", &path].concat()
    } else {
        path
    }
}

fn files(r: &Row<'_>, o: &mut Out) {
    let done = file_progress(r.t);
    o.open_array();
    if let Some(m) = &r.t.meta {
        for (i, f) in m.files.iter().enumerate() {
            o.open_object();
            o.uint_member("bytesCompleted", done.get(i).copied().unwrap_or(0));
            o.uint_member("length", f.length);
            o.key("name");
            o.bytes(&file_name(r.t, i));
            o.close_object();
        }
    }
    o.close_array();
}

fn file_stats(r: &Row<'_>, o: &mut Out) {
    o.open_array();
    for done in file_progress(r.t) {
        o.open_object();
        o.uint_member("bytesCompleted", done);
        o.int_member("priority", 0);
        o.bool_member("wanted", true);
        o.close_object();
    }
    o.close_array();
}

/// The magnet link of a torrent: its hash, name and trackers.
pub fn magnet_link(t: &Torrent) -> String {
    Magnet {
        info_hash: t.info_hash,
        name: Some(String::from_utf8_lossy(&t.name()).into_owned()),
        trackers: t
            .tiers()
            .iter()
            .flatten()
            .map(|tr| tr.url.clone())
            .collect(),
        peers: Vec::new(),
    }
    .to_uri()
}

/// Announce URLs one per line, a blank line between tiers.
fn tracker_list(t: &Torrent) -> String {
    let mut s = String::new();
    for (i, tier) in t.tiers().iter().enumerate() {
        if i > 0 {
            s.push('\n');
        }
        for tr in tier {
            s.push_str(&tr.url);
            s.push('\n');
        }
    }
    s
}

/// A tracker's scrape URL: the announce URL itself for UDP (BEP 15), the
/// `announce` segment replaced for HTTP, else none.
fn scrape_url(tr: &Tracker) -> String {
    if tr
        .url
        .get(..6)
        .is_some_and(|s| s.eq_ignore_ascii_case("udp://"))
    {
        return tr.url.clone();
    }
    match (&tr.scrape, tr.url.strip_suffix(tr.announce.as_str())) {
        (Some(path), Some(base)) => format!("{base}{path}"),
        _ => String::new(),
    }
}

fn trackers(r: &Row<'_>, o: &mut Out) {
    o.open_array();
    let mut id = 0u64;
    for (tier, list) in r.t.tiers().iter().enumerate() {
        for tr in list {
            o.open_object();
            o.str_member("announce", &tr.url);
            o.uint_member("id", id);
            o.str_member("scrape", &scrape_url(tr));
            o.uint_member("tier", tier as u64);
            o.close_object();
            id += 1;
        }
    }
    o.close_array();
}

/// What the registry knows of the tracker in use: the core reports which
/// one it is, its last scrape figures and its complaint. Times are not
/// reported, so they read 0 ("never"); see the report.
fn tracker_stats(r: &Row<'_>, o: &mut Out) {
    let x = &r.t.transfer;
    let running = r.t.running;
    o.open_array();
    let mut id = 0u64;
    for (tier, list) in r.t.tiers().iter().enumerate() {
        let current = match x.tracker {
            Some((t, i)) if t == tier => i,
            _ => 0,
        };
        for (i, tr) in list.iter().enumerate() {
            let in_use = x.tracker == Some((tier, i));
            let [seeders, leechers, downloads] = if in_use { x.scrape } else { [-1; 3] };
            let message = x.tracker_message.as_ref().filter(|_| in_use);
            let heard = in_use && (seeders >= 0 || leechers >= 0 || message.is_some());
            let succeeded = heard && !matches!(message, Some(("tracker-error", _)));
            let result = match message {
                Some((_, m)) => m.as_str(),
                None if succeeded => "Success",
                None => "",
            };
            // 0 inactive, 1 waiting for its next turn.
            let state = if running && in_use { 1 } else { 0 };
            o.open_object();
            o.str_member("announce", &tr.url);
            o.int_member("announceState", state);
            o.int_member("downloadCount", downloads);
            o.bool_member("hasAnnounced", heard);
            o.bool_member("hasScraped", in_use && seeders >= 0);
            o.str_member("host", &host(tr));
            o.uint_member("id", id);
            o.bool_member("isBackup", i != current);
            o.int_member("lastAnnouncePeerCount", 0);
            o.str_member("lastAnnounceResult", result);
            o.int_member("lastAnnounceStartTime", 0);
            o.bool_member("lastAnnounceSucceeded", succeeded);
            o.int_member("lastAnnounceTime", 0);
            o.bool_member("lastAnnounceTimedOut", false);
            o.str_member("lastScrapeResult", "");
            o.int_member("lastScrapeStartTime", 0);
            o.bool_member("lastScrapeSucceeded", in_use && seeders >= 0);
            o.int_member("lastScrapeTime", 0);
            o.bool_member("lastScrapeTimedOut", false);
            o.int_member("leecherCount", leechers);
            o.int_member("nextAnnounceTime", 0);
            o.int_member("nextScrapeTime", 0);
            o.str_member("scrape", &scrape_url(tr));
            o.int_member("scrapeState", state);
            o.int_member("seederCount", seeders);
            o.uint_member("tier", tier as u64);
            o.close_object();
            id += 1;
        }
    }
    o.close_array();
}

/// `scheme://host:port`, as Transmission names a tracker's host.
fn host(tr: &Tracker) -> String {
    let scheme = tr.url.split_once("://").map_or("", |(s, _)| s);
    if tr.address.contains(':') {
        format!("{scheme}://[{}]:{}", tr.address, tr.port)
    } else {
        format!("{scheme}://{}:{}", tr.address, tr.port)
    }
}

fn peers(r: &Row<'_>, o: &mut Out) {
    o.open_array();
    for p in &r.t.transfer.peer_list {
        let (address, port) = match p.address.parse::<SocketAddr>() {
            Ok(a) => (a.ip().to_string(), a.port()),
            Err(_) => (p.address.clone(), 0),
        };
        o.open_object();
        o.str_member("address", &address);
        o.bool_member("clientIsChoked", p.choked);
        o.bool_member("clientIsInterested", p.interested);
        o.str_member("clientName", &p.client);
        o.str_member("flagStr", &flags(p));
        o.bool_member("isDownloadingFrom", p.download_rate > 0);
        // Not reported by the swarm yet (see the report); uTP is not
        // spoken yet, so no peer is on it.
        o.bool_member("isEncrypted", false);
        o.bool_member("isIncoming", p.incoming);
        o.bool_member("isUTP", false);
        o.bool_member("isUploadingTo", p.upload_rate > 0);
        o.bool_member("peerIsChoked", p.peer_choked);
        o.bool_member("peerIsInterested", p.peer_interested);
        o.uint_member("port", port.into());
        o.real_member("progress", p.progress);
        o.uint_member("rateToClient", p.download_rate);
        o.uint_member("rateToPeer", p.upload_rate);
        o.close_object();
    }
    o.close_array();
}

/// Transmission's flag letters, for what is known: D/d downloading from
/// it (or would, unchoked), U/u uploading to it (or would), K it unchokes
/// us though we are not interested, ? we unchoke it though it is not
/// interested, I it connected to us.
fn flags(p: &crate::registry::PeerInfo) -> String {
    let mut f = String::new();
    if p.download_rate > 0 {
        f.push('D');
    } else if p.interested && p.choked {
        f.push('d');
    }
    if p.upload_rate > 0 {
        f.push('U');
    } else if p.peer_interested && p.peer_choked {
        f.push('u');
    }
    if !p.choked && !p.interested {
        f.push('K');
    }
    if !p.peer_choked && !p.peer_interested {
        f.push('?');
    }
    if p.incoming {
        f.push('I');
    }
    f
}

fn peers_from(r: &Row<'_>, o: &mut Out) {
    let f = r.t.transfer.peers_from;
    o.open_object();
    o.uint_member("fromCache", f.cache.into());
    o.uint_member("fromDht", f.dht.into());
    o.uint_member("fromIncoming", f.incoming.into());
    // No local discovery yet; no peers come from the extension protocol
    // (PEX is counted as itself).
    o.int_member("fromLpd", 0);
    o.int_member("fromLtep", 0);
    o.uint_member("fromPex", f.pex.into());
    o.uint_member("fromTracker", f.tracker.into());
    o.close_object();
}

/// The media type holding most of the torrent's bytes, judged by file
/// name extensions as Transmission does; `application/octet-stream` when
/// none is known.
fn primary_mime_type(t: &Torrent) -> &'static str {
    const UNKNOWN: &str = "application/octet-stream";
    let Some(m) = &t.meta else {
        return UNKNOWN;
    };
    let mut bytes: Vec<(&'static str, u64)> = Vec::new();
    for f in &m.files {
        let Some(kind) = f.path.last().and_then(|n| mime_of(n)) else {
            continue;
        };
        match bytes.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += f.length,
            None => bytes.push((kind, f.length)),
        }
    }
    bytes
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map_or(UNKNOWN, |(k, _)| k)
}

/// The media type of a file name's extension, for the common kinds.
fn mime_of(name: &[u8]) -> Option<&'static str> {
    let dot = name.iter().rposition(|b| *b == b'.')?;
    let ext = name.get(dot + 1..)?.to_ascii_lowercase();
    Some(match ext.as_slice() {
        b"mkv" => "video/x-matroska",
        b"mp4" | b"m4v" => "video/mp4",
        b"avi" => "video/x-msvideo",
        b"webm" => "video/webm",
        b"mov" => "video/quicktime",
        b"ts" => "video/mp2t",
        b"mp3" => "audio/mpeg",
        b"flac" => "audio/flac",
        b"ogg" | b"oga" => "audio/ogg",
        b"opus" => "audio/opus",
        b"m4a" => "audio/mp4",
        b"wav" => "audio/wav",
        b"jpg" | b"jpeg" => "image/jpeg",
        b"png" => "image/png",
        b"gif" => "image/gif",
        b"iso" => "application/x-iso9660-image",
        b"img" => "application/x-raw-disk-image",
        b"zip" => "application/zip",
        b"gz" | b"tgz" => "application/gzip",
        b"xz" => "application/x-xz",
        b"bz2" => "application/x-bzip2",
        b"zst" => "application/zstd",
        b"7z" => "application/x-7z-compressed",
        b"rar" => "application/vnd.rar",
        b"tar" => "application/x-tar",
        b"deb" => "application/vnd.debian.binary-package",
        b"rpm" => "application/x-rpm",
        b"pdf" => "application/pdf",
        b"epub" => "application/epub+zip",
        b"txt" | b"nfo" => "text/plain",
        b"srt" => "application/x-subrip",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_for_its_binary_search() {
        for pair in FIELDS.windows(2) {
            assert!(pair[0].0 < pair[1].0, "{} before {}", pair[0].0, pair[1].0);
        }
        assert!(lookup("percentDone").is_some());
        assert!(lookup("availability").is_none());
        assert!(lookup("").is_none());
    }
}
