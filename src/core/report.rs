//! The core's figures: what the swarm measured copied where `get-status`,
//! scripts and announces read it, and the tally of torrents by state.

use std::time::Instant;

use crate::registry::{PeersFrom, Phase, Registry};
use crate::swarm::Swarm;

/// Torrents by state and total rates, for a service manager's STATUS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Torrents in all.
    pub torrents: usize,
    /// Paused.
    pub stopped: usize,
    /// Waiting for or under a check.
    pub checking: usize,
    /// Downloading.
    pub downloading: usize,
    /// Seeding.
    pub seeding: usize,
    /// Stopped by an error.
    pub failed: usize,
    /// Payload bytes/s received, all torrents.
    pub download_rate: u64,
    /// Payload bytes/s sent, all torrents.
    pub upload_rate: u64,
}

/// Copies the swarm's figures where `get-status` reads them; stopped
/// torrents show no traffic.
pub fn report(swarm: &mut Swarm, reg: &mut Registry, now: Instant) {
    for id in swarm.running() {
        let (down, up) = swarm.take_transferred(id);
        let (Some(st), Some(x)) = (swarm.stats(id, now), reg.transfer_mut(id)) else {
            continue;
        };
        x.downloaded += down;
        x.uploaded += up;
        x.download_rate = st.download_rate as u64;
        x.upload_rate = st.upload_rate as u64;
        x.swarm_rate = st.swarm_rate as u64;
        x.peers = st.peers;
        x.peers_downloading = st.peers_sending;
        x.peers_uploading = st.peers_receiving;
        let [incoming, tracker, cache, pex, dht] = st.peers_from;
        x.peers_from = PeersFrom {
            cache,
            dht,
            incoming,
            pex,
            tracker,
        };
        x.peer_list = swarm.peer_list(id, now);
        x.metadata_percent = st.metadata_percent;
        x.metadata_peers = st.metadata_peers;
        x.eta = if st.left > 0 && st.download_rate >= 1.0 {
            (st.left as f64 / st.download_rate).ceil() as i64
        } else {
            -1
        };
        if down + up > 0 {
            reg.note_progress();
        }
    }
    let idle: Vec<u64> = reg
        .torrents()
        .iter()
        .filter(|t| {
            !swarm.is_running(t.id) && t.transfer.peers + t.transfer.download_rate as u32 > 0
        })
        .map(|t| t.id)
        .collect();
    for id in idle {
        if let Some(x) = reg.transfer_mut(id) {
            x.download_rate = 0;
            x.upload_rate = 0;
            x.swarm_rate = 0;
            x.peers = 0;
            x.peers_downloading = 0;
            x.peers_uploading = 0;
            x.peers_from = PeersFrom::default();
            x.peer_list.clear();
            x.eta = -1;
        }
    }
}

/// Torrents by state and total rates, as last reported.
pub fn tally(reg: &Registry) -> Tally {
    let mut f = Tally::default();
    for t in reg.torrents().iter() {
        f.torrents += 1;
        f.download_rate = f.download_rate.saturating_add(t.transfer.download_rate);
        f.upload_rate = f.upload_rate.saturating_add(t.transfer.upload_rate);
        let count = match t.phase {
            _ if t.error.is_some() => &mut f.failed,
            Phase::Paused => &mut f.stopped,
            Phase::WaitingCheck | Phase::Checking => &mut f.checking,
            Phase::FetchingMetadata | Phase::Downloading => &mut f.downloading,
            Phase::Seeding => &mut f.seeding,
        };
        *count += 1;
    }
    f
}
