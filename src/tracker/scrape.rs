//! HTTP tracker scrapes, sans-IO: the scrape URL derived from the announce
//! URL (the convention every tracker follows, and PROTOCOL.md's `scrape`
//! field), and the reading of a reply (`files`, keyed by raw info hash).

use crate::codec::bencode::Value;

use super::announce::{
    garbage, percent_encode_into, reply_dict, with_query, Scraped, TrackerError,
};

/// A tracker's reply to a scrape of one torrent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScrapeReply {
    /// The tracker refused (`failure reason`).
    Failure(String),
    /// The torrent's figures.
    Success(Scraped),
    /// The reply is well formed but does not name our torrent (trackers
    /// answer so for a torrent they do not track).
    Unknown,
}

/// The scrape URL of an HTTP(S) announce URL: the path's last segment
/// must start with `announce`, which becomes `scrape`; the query (a
/// private tracker's passkey) stays. `None`: the tracker has no scrape.
pub fn scrape_base(announce: &str) -> Option<String> {
    let announce = announce.split('#').next().unwrap_or(announce);
    let (path, query) = match announce.find('?') {
        Some(i) => announce.split_at(i),
        None => (announce, ""),
    };
    let cut = path.rfind('/')? + 1;
    // The slash must be the path's, not the `//` after the scheme.
    if path.get(..cut)?.ends_with("//") {
        return None;
    }
    let tail = path.get(cut..)?.strip_prefix("announce")?;
    Some(format!("{}scrape{tail}{query}", path.get(..cut)?))
}

/// The scrape request URL for `info_hash` on the scrape URL `base`.
pub fn scrape_url(base: &str, info_hash: &[u8; 20]) -> String {
    let mut url = with_query(base, 72);
    url.push_str("info_hash=");
    percent_encode_into(&mut url, info_hash);
    url
}

fn count(entry: &Value, key: &str) -> u32 {
    entry
        .get(key)
        .and_then(Value::as_int)
        .map_or(0, |n| u32::try_from(n.max(0)).unwrap_or(u32::MAX))
}

/// Reads a scrape reply body for `info_hash`.
pub fn parse_scrape(body: &[u8], info_hash: &[u8; 20]) -> Result<ScrapeReply, TrackerError> {
    let value = match reply_dict(body)? {
        Ok(value) => value,
        Err(text) => return Ok(ScrapeReply::Failure(text)),
    };
    let Some(files) = value.get("files").and_then(Value::as_dict) else {
        return Err(garbage(body, "a scrape reply without `files`"));
    };
    let entry = files
        .iter()
        .find(|(k, _)| k.as_ref() == info_hash.as_slice())
        .map(|(_, v)| v);
    Ok(match entry {
        Some(e) if e.as_dict().is_some() => ScrapeReply::Success(Scraped {
            seeders: count(e, "complete"),
            leechers: count(e, "incomplete"),
            completed: count(e, "downloaded"),
        }),
        _ => ScrapeReply::Unknown,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scrape_url_replaces_announce_in_the_last_segment() {
        let cases = [
            ("http://t.example/announce", Some("http://t.example/scrape")),
            (
                "http://t.example:8080/x/announce.php?passkey=1#f",
                Some("http://t.example:8080/x/scrape.php?passkey=1"),
            ),
            ("https://t/announce/", None),
            ("http://t/a/announcer", Some("http://t/a/scraper")),
            ("http://t/tracker", None),
            ("http://announce", None),
            ("http://t/?announce", None),
        ];
        for (announce, scrape) in cases {
            assert_eq!(scrape_base(announce).as_deref(), scrape, "{announce}");
        }
        assert_eq!(
            scrape_url("http://t/scrape?pk=1", &[0xab; 20]),
            format!("http://t/scrape?pk=1&info_hash={}", "%AB".repeat(20))
        );
        assert_eq!(
            scrape_url("http://t/scrape", &[b'a'; 20]),
            format!("http://t/scrape?info_hash={}", "a".repeat(20))
        );
    }

    fn reply(hash: &[u8; 20], entry: &str) -> Vec<u8> {
        let mut body = b"d5:filesd20:".to_vec();
        body.extend_from_slice(hash);
        body.extend_from_slice(entry.as_bytes());
        body.extend_from_slice(b"ee");
        body
    }

    #[test]
    fn reads_the_figures_of_our_torrent() {
        let hash = [7u8; 20];
        let body = reply(&hash, "d8:completei5e10:downloadedi50e10:incompletei3ee");
        assert_eq!(
            parse_scrape(&body, &hash),
            Ok(ScrapeReply::Success(Scraped {
                seeders: 5,
                leechers: 3,
                completed: 50
            }))
        );
        // Missing or negative counts read as 0.
        let body = reply(&hash, "d8:completei-4ee");
        assert_eq!(
            parse_scrape(&body, &hash),
            Ok(ScrapeReply::Success(Scraped::default()))
        );
        assert_eq!(parse_scrape(&body, &[8; 20]), Ok(ScrapeReply::Unknown));
        assert_eq!(
            parse_scrape(&reply(&hash, "i3e"), &hash),
            Ok(ScrapeReply::Unknown)
        );
    }

    #[test]
    fn failures_and_garbage() {
        assert_eq!(
            parse_scrape(b"d14:failure reason9:no scrapee", &[0; 20]),
            Ok(ScrapeReply::Failure("no scrape".into()))
        );
        let text = parse_scrape(b"<html>", &[0; 20]).unwrap_err().to_string();
        assert!(text.contains("not a bencoded dictionary"), "{text}");
        let text = parse_scrape(b"d8:intervali5ee", &[0; 20])
            .unwrap_err()
            .to_string();
        assert!(text.contains("without `files`"), "{text}");
    }
}
