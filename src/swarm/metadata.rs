//! One torrent's side of the metadata exchange (BEP 9): fetching its info
//! dictionary from peers while it is known by its info hash alone, and
//! serving it to others once known. The codec and the fetch's state
//! machine are [`crate::peer::metadata`]'s; this ties them to the swarm's
//! peers.

use std::sync::Arc;
use std::time::Instant;

use log::debug;

use super::peer::Peer;
use crate::peer::extension::ExtendedHandshake;
use crate::peer::metadata::{
    answer_request, FetchEvent, MetadataFetch, MetadataMessage, OUR_UT_METADATA_ID, UT_METADATA,
};

/// What a torrent does in the exchange.
pub(super) struct Exchange {
    /// Fetching, until the info dictionary is known.
    fetch: Option<MetadataFetch>,
    /// Our info dictionary's bytes, to serve.
    info: Option<Arc<[u8]>>,
    /// BEP 27: a private torrent does not offer `ut_metadata` (as
    /// libtorrent and Transmission do: its metadata comes with its file).
    private: bool,
}

impl Exchange {
    /// The exchange of a torrent whose info dictionary is `info` (`None`:
    /// it is fetched, checked against `info_hash`).
    pub fn new(info_hash: [u8; 20], info: Option<Arc<[u8]>>, private: bool) -> Exchange {
        Exchange {
            fetch: info.is_none().then(|| MetadataFetch::new(info_hash)),
            info,
            private,
        }
    }

    /// What our extension handshake offers: `ut_metadata` unless private,
    /// and the info dictionary's size once we have it.
    pub fn offer(&self) -> (Option<(&'static str, u8)>, Option<u32>) {
        if self.private {
            return (None, None);
        }
        let size = self.info.as_ref().and_then(|i| u32::try_from(i.len()).ok());
        (Some((UT_METADATA, OUR_UT_METADATA_ID)), size)
    }

    /// The info dictionary is known (it arrived, or the torrent was added
    /// with it): fetching ends, serving begins.
    pub fn set_info(&mut self, info: Arc<[u8]>, private: bool) {
        self.fetch = None;
        self.info = Some(info);
        self.private = private;
    }

    /// Whether the info dictionary is being fetched.
    pub fn is_fetching(&self) -> bool {
        self.fetch.as_ref().is_some_and(|f| !f.is_done())
    }

    /// How far the fetch is, in percent (100 once known).
    pub fn percent(&self) -> u8 {
        match &self.fetch {
            None => 100,
            Some(f) if f.is_done() => 100,
            Some(f) => match f.size() {
                Some(size) if size > 0 => (f.held_bytes() as u64 * 100 / size as u64) as u8,
                _ => 0,
            },
        }
    }

    /// A peer's extension handshake: its id for `ut_metadata`, and its
    /// offer to the fetch. An error closes the peer.
    pub fn peer_handshake(
        &mut self,
        key: usize,
        p: &mut Peer,
        hs: &ExtendedHandshake,
        now: Instant,
    ) -> Result<(), String> {
        p.ut_metadata = hs.extension_id(UT_METADATA);
        let Some(fetch) = self.fetch.as_mut() else {
            return Ok(());
        };
        if p.ut_metadata.is_none() {
            return Ok(());
        }
        fetch
            .peer_offers(key, hs.metadata_size.unwrap_or(0), now)
            .map_err(|e| e.to_string())?;
        self.ask(key, p, now);
        Ok(())
    }

    /// A `ut_metadata` message from peer `key`: a request answered (data
    /// or reject), data and rejects to the fetch. An error closes the
    /// peer.
    pub fn message(
        &mut self,
        key: usize,
        p: &mut Peer,
        payload: &[u8],
        now: Instant,
    ) -> Result<(), String> {
        let msg = match MetadataMessage::parse(payload) {
            Ok(Some(m)) => m,
            // BEP 9: an unknown msg_type is ignored.
            Ok(None) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        };
        match msg {
            MetadataMessage::Request { piece } => {
                let Some(their_id) = p.ut_metadata else {
                    return Ok(());
                };
                let info = self.info.as_deref();
                let answer = answer_request(info, self.private, piece, &mut p.metadata_limit, now);
                let mut out = Vec::new();
                answer.encode(&mut out);
                p.conn.extended(their_id, &out, now);
            }
            MetadataMessage::Data {
                piece,
                total_size,
                data,
            } => {
                if let Some(f) = self.fetch.as_mut() {
                    f.handle_data(key, piece, total_size, data, now)
                        .map_err(|e| e.to_string())?;
                }
            }
            MetadataMessage::Reject { piece } => {
                debug!("peer {}: rejected metadata piece {piece}", p.addr);
                if let Some(f) = self.fetch.as_mut() {
                    f.handle_reject(key, piece, now);
                }
            }
        }
        self.ask(key, p, now);
        Ok(())
    }

    /// Sends peer `key` the requests the fetch has for it.
    pub fn ask(&mut self, key: usize, p: &mut Peer, now: Instant) {
        let (Some(fetch), Some(their_id)) = (self.fetch.as_mut(), p.ut_metadata) else {
            return;
        };
        while let Some(piece) = fetch.poll_request(key, now) {
            let mut out = Vec::new();
            MetadataMessage::Request { piece }.encode(&mut out);
            p.conn.extended(their_id, &out, now);
        }
    }

    /// Peer `key` is gone: its requests go to others.
    pub fn peer_gone(&mut self, key: usize) {
        if let Some(f) = self.fetch.as_mut() {
            f.peer_gone(key);
        }
    }

    /// What the fetch decided: the verified info dictionary, peers to
    /// drop.
    pub fn poll_event(&mut self) -> Option<FetchEvent> {
        self.fetch.as_mut()?.poll_event()
    }

    /// When [`Exchange::handle_timeout`] must run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.fetch.as_ref()?.poll_timeout()
    }

    /// Unanswered requests move to other peers.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(f) = self.fetch.as_mut() {
            f.handle_timeout(now);
        }
    }
}
