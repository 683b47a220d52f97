//! Torrents made for measurements: a metainfo for a real (large) file, and
//! populations of small distinct torrents to fill a registry.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use sha1::{Digest, Sha1};

use tripcd::client::{parse_message, Client, ClientError, FrameReader};
use tripcd::codec::Value;

/// Builds a single-file torrent for `data`, hashing it piece by piece.
pub fn torrent_for_file(data: &Path, piece_length: u64) -> io::Result<Vec<u8>> {
    let name = data
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the file needs a UTF-8 name"))?
        .to_string();
    if piece_length == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "piece length must be positive",
        ));
    }
    let mut file = File::open(data)?;
    let mut pieces = Vec::new();
    let mut buf = vec![0u8; piece_length as usize];
    let mut length = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match file.read(&mut buf[filled..])? {
                0 => break,
                n => filled += n,
            }
        }
        if filled == 0 {
            break;
        }
        length += filled as u64;
        pieces.extend_from_slice(&Sha1::digest(&buf[..filled]));
        if filled < buf.len() {
            break;
        }
    }
    Ok(metainfo(&name, length, piece_length, pieces))
}

/// The `i`-th torrent of a synthetic population: one 16 KiB file whose
/// piece hash makes the info hash distinct. No data exists for it.
pub fn synthetic_torrent(i: u64) -> Vec<u8> {
    let piece = Sha1::digest(i.to_be_bytes()).to_vec();
    metainfo(&format!("synthetic-{i:06}.bin"), 16384, 16384, piece)
}

fn metainfo(name: &str, length: u64, piece_length: u64, pieces: Vec<u8>) -> Vec<u8> {
    let info = Value::dict([
        ("length", Value::Int(length as i64)),
        ("name", Value::str(name)),
        ("piece length", Value::Int(piece_length as i64)),
        ("pieces", Value::Bytes(pieces)),
    ]);
    Value::dict([
        (
            "announce",
            Value::str("http://tracker.invalid:6969/announce"),
        ),
        ("created by", Value::str("tripcd-bench")),
        ("info", info),
    ])
    .to_bencode()
    .unwrap_or_default()
}

/// Adds `count` synthetic torrents (paused) through `addfile-detailed`,
/// pipelined in batches so the daemon commits many adds per fsync.
/// Returns how many were new (a torrent already there is not counted).
pub fn populate(socket: &Path, count: u64, progress: bool) -> Result<u64, ClientError> {
    const BATCH: u64 = 256;
    let mut client = Client::connect(socket)?;
    let mut reader = FrameReader::new();
    let mut added = 0;
    let mut next = 0;
    while next < count {
        let end = (next + BATCH).min(count);
        let mut out = Vec::new();
        for i in next..end {
            let value = Value::dict([
                ("autostart", Value::Int(0)),
                ("data", Value::Bytes(synthetic_torrent(i))),
            ]);
            out.extend_from_slice(&tripcd::client::encode_message(
                "addfile-detailed",
                &value,
                Some(i as i64 + 1),
            ));
        }
        client.stream().write_all(&out)?;
        for _ in next..end {
            let msg = parse_message(&reader.read_payload(client.stream())?)?;
            match msg.key.as_str() {
                "info" | "addfile-detailed" => added += 1,
                "failed" => {
                    return Err(ClientError::Failed(
                        msg.value.as_str().unwrap_or("").to_string(),
                    ))
                }
                other => return Err(ClientError::Protocol(format!("unexpected reply {other}"))),
            }
        }
        next = end;
        if progress {
            eprint!("\radded {next}/{count}");
        }
    }
    if progress {
        eprintln!();
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tripcd::registry::metainfo::Metainfo;

    #[test]
    fn synthetic_torrents_are_valid_and_distinct() {
        let a = Metainfo::parse(&synthetic_torrent(1)).unwrap();
        let b = Metainfo::parse(&synthetic_torrent(2)).unwrap();
        assert_ne!(a.hash_hex(), b.hash_hex());
        assert_eq!(a.total_size(), 16384);
    }

    #[test]
    fn a_file_torrent_hashes_every_piece() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        std::fs::write(&path, vec![7u8; 1000]).unwrap();
        let m = Metainfo::parse(&torrent_for_file(&path, 300).unwrap()).unwrap();
        assert_eq!(m.total_size(), 1000);
        assert_eq!(m.geometry.piece_size(3), 100);
        assert_eq!(
            m.pieces[1][..],
            Sha1::digest([7u8; 300]).as_slice()[..],
            "second piece"
        );
    }
}
