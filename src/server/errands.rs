//! Work the fronts' connections asked of the server ([`Effect`]s), in
//! flight: which client it is for, so that its outcome goes back to the
//! connection that asked, or nowhere if that client has gone.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use crate::engine::tree::DataTree;
use crate::tracker::worker::{Job, JobKind};

/// The bit marking the fronts' jobs on the shared tracker worker (the
/// core's trackers count from 0, its DHT sets bit 63).
pub const JOB_BIT: u64 = 1 << 62;

/// Longest a `.torrent` download may take, all told: a slow web server
/// gets a minute, as browsers give a stalled page.
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// Who an errand is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// The client (the server's `ClientId`).
    pub client: usize,
    /// Its serial, so a reused slot is not mistaken for it.
    pub serial: u64,
    /// The connection's own id for the errand.
    pub ticket: u64,
}

/// Errands in flight.
#[derive(Default)]
pub struct Errands {
    jobs: VecDeque<Job>,
    fetches: HashMap<u64, Owner>,
    /// Deletions waiting for the core to stop their torrents.
    due: Vec<(u64, DataTree)>,
    deletions: HashMap<u64, Owner>,
    next: u64,
}

impl Errands {
    fn id(&mut self) -> u64 {
        self.next += 1;
        JOB_BIT | (self.next & (JOB_BIT - 1))
    }

    /// A fetch for `owner`, queued for the tracker worker.
    pub fn fetch(&mut self, owner: Owner, url: String, cookies: Option<String>, max_bytes: usize) {
        let id = self.id();
        self.fetches.insert(id, owner);
        self.jobs.push_back(Job {
            id,
            kind: JobKind::Download {
                url,
                cookies,
                max_bytes,
            },
            timeout: FETCH_TIMEOUT,
        });
    }

    /// The next job for the tracker worker.
    pub fn poll_job(&mut self) -> Option<Job> {
        self.jobs.pop_front()
    }

    /// Whose fetch job `id` was.
    pub fn fetched(&mut self, id: u64) -> Option<Owner> {
        self.fetches.remove(&id)
    }

    /// A deletion for `owner`, to hand to the core after its next sync.
    pub fn delete(&mut self, owner: Owner, tree: DataTree) {
        let id = self.id();
        self.deletions.insert(id, owner);
        self.due.push((id, tree));
    }

    /// The deletions to hand to the core now (its sync has stopped their
    /// torrents), with the ticket each comes back with.
    pub fn take_due(&mut self) -> Vec<(u64, DataTree)> {
        std::mem::take(&mut self.due)
    }

    /// Whose deletion `ticket` was.
    pub fn deleted(&mut self, ticket: u64) -> Option<Owner> {
        self.deletions.remove(&ticket)
    }
}
