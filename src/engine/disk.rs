//! Hashing and writing downloaded pieces away from the event loop.
//!
//! A piece whose last block arrived becomes a [`PieceJob`]: its bytes in
//! an owned buffer, the SHA-1 it must have and where its files are. A
//! [`PieceWriter`] hashes it and, when it is good, writes it with
//! positioned I/O (`O_DIRECT` where aligned, see
//! [`Storage::write_direct`]), answering a [`PieceDone`] that carries the
//! buffer back for reuse. Both are plain values and a plain function, so the swarm's
//! tests run jobs inline; the daemon runs them on the one thread of a
//! [`DiskWorker`], which wakes the loop through a `mio::Waker` when a
//! piece is done. The loop then never waits for a disk (a page-cache write
//! into fresh memory costs about 2 ms per MiB on this kind of VM, a slow
//! disk far more) nor for SHA-1 (about 0.6 ms per MiB).
//!
//! Nothing but these jobs crosses the thread: the worker owns its own file
//! handles, keyed by the session that sent the job, and knows nothing of
//! torrents, peers or the registry.

use std::io;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use sha1::{Digest, Sha1};

use super::storage::{AlignedBuf, Layout, Storage, StorageError};
use super::tree::DataTree;

/// Where a torrent's data lives: shared, read-only, by the session and the
/// jobs it sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    /// Piece length and file lengths.
    pub layout: Layout,
    /// The on-disk path of each file, in metainfo order.
    pub paths: Vec<PathBuf>,
}

/// A piece to check and, if good, write.
#[derive(Debug)]
pub struct PieceJob {
    /// The session (one run of one torrent) it belongs to; results for a
    /// session that has ended are dropped by the caller.
    pub session: u64,
    /// Piece index.
    pub piece: u32,
    /// The whole piece.
    pub data: Vec<u8>,
    /// Its SHA-1 from the metainfo.
    pub expected: [u8; 20],
    /// Where it goes.
    pub files: Arc<Files>,
}

/// What became of a [`PieceJob`].
#[derive(Debug)]
pub enum Outcome {
    /// The hash matched and the piece is on disk.
    Written,
    /// The hash did not match; nothing was written.
    BadHash,
    /// The hash matched but writing failed.
    Failed(StorageError),
}

/// A finished [`PieceJob`], with its buffer handed back.
#[derive(Debug)]
pub struct PieceDone {
    /// As in the job.
    pub session: u64,
    /// As in the job.
    pub piece: u32,
    /// What happened.
    pub outcome: Outcome,
    /// The job's buffer, for the next piece.
    pub data: Vec<u8>,
}

/// A request to the disk side.
#[derive(Debug)]
pub enum DiskRequest {
    /// Check and write a piece.
    Piece(PieceJob),
    /// A session ended: close its file handles (after its queued pieces).
    Forget {
        /// The session.
        session: u64,
    },
    /// Delete a removed torrent's files. Sent after its session's
    /// [`DiskRequest::Forget`], it runs after every piece queued before,
    /// so no late write brings a file back.
    Delete {
        /// The caller's id for it, returned with the outcome.
        ticket: u64,
        /// The files.
        tree: DataTree,
    },
}

/// What the disk side finished.
#[derive(Debug)]
pub enum DiskDone {
    /// A piece checked (and written if good).
    Piece(PieceDone),
    /// A [`DiskRequest::Delete`] done, or why not all of it.
    Deleted {
        /// As in the request.
        ticket: u64,
        /// What could not be deleted.
        result: Result<(), String>,
    },
}

/// Sessions whose file handles a [`PieceWriter`] keeps at once; past it the
/// least recently used is closed. Each holds up to
/// [`MAX_OPEN_FILES`](super::storage::MAX_OPEN_FILES).
const MAX_SESSIONS: usize = 8;

/// Runs jobs: the file handles of the sessions it wrote for lately.
#[derive(Default)]
pub struct PieceWriter {
    /// (session, storage), most recently used last.
    storages: Vec<(u64, Storage)>,
    /// Aligned memory for direct writes.
    staging: AlignedBuf,
}

impl PieceWriter {
    /// A writer with no file open.
    pub fn new() -> PieceWriter {
        PieceWriter::default()
    }

    /// Carries out `req`: what it finished, or `None` for a forget.
    pub fn handle(&mut self, req: DiskRequest) -> Option<DiskDone> {
        match req {
            DiskRequest::Piece(job) => Some(DiskDone::Piece(self.run(job))),
            DiskRequest::Forget { session } => {
                self.storages.retain(|(s, _)| *s != session);
                None
            }
            DiskRequest::Delete { ticket, tree } => Some(DiskDone::Deleted {
                ticket,
                result: tree.delete(),
            }),
        }
    }

    /// Hashes `job`'s piece and writes it when good.
    pub fn run(&mut self, job: PieceJob) -> PieceDone {
        let PieceJob {
            session,
            piece,
            data,
            expected,
            files,
        } = job;
        let outcome = if Sha1::digest(&data).as_slice() != expected {
            Outcome::BadHash
        } else {
            let written = storage_of(&mut self.storages, session, &files).write_direct(
                piece,
                &data,
                &mut self.staging,
            );
            match written {
                Ok(()) => Outcome::Written,
                Err(e) => Outcome::Failed(e),
            }
        };
        PieceDone {
            session,
            piece,
            outcome,
            data,
        }
    }

    /// Open file handles, in all sessions (for tests and figures).
    pub fn open_files(&self) -> usize {
        self.storages.iter().map(|(_, s)| s.open_files()).sum()
    }
}

/// The storage of `session` in `storages` (opened for `files` if new),
/// moved to the most recently used end; the least recently used is closed
/// past [`MAX_SESSIONS`].
fn storage_of<'a>(
    storages: &'a mut Vec<(u64, Storage)>,
    session: u64,
    files: &Files,
) -> &'a mut Storage {
    match storages.iter().position(|(s, _)| *s == session) {
        Some(i) => {
            let entry = storages.remove(i);
            storages.push(entry);
        }
        None => {
            if storages.len() >= MAX_SESSIONS {
                storages.remove(0);
            }
            storages.push((
                session,
                Storage::new(files.layout.clone(), files.paths.clone()),
            ));
        }
    }
    let last = storages.len() - 1;
    &mut storages[last].1
}

/// How long [`DiskWorker::finish`] waits for queued pieces at shutdown.
pub const FINISH_WAIT: Duration = Duration::from_secs(10);

/// The handle to the disk thread: requests in, finished pieces out, the
/// loop woken for each.
pub struct DiskWorker {
    requests: Option<Sender<DiskRequest>>,
    done: Receiver<DiskDone>,
    thread: Option<thread::JoinHandle<()>>,
    /// Requests with an answer sent and not yet taken back.
    in_flight: usize,
}

impl DiskWorker {
    /// Starts the thread; `wake` is called after each finished piece (the
    /// daemon passes a `mio::Waker`'s `wake`).
    pub fn spawn<W>(wake: W) -> io::Result<DiskWorker>
    where
        W: Fn() -> io::Result<()> + Send + 'static,
    {
        let (requests, rx) = mpsc::channel::<DiskRequest>();
        let (tx, done) = mpsc::channel();
        let thread = thread::Builder::new().name("disk".into()).spawn(move || {
            let mut writer = PieceWriter::new();
            for req in rx {
                if let Some(d) = writer.handle(req) {
                    if tx.send(d).is_err() {
                        return;
                    }
                    if let Err(e) = wake() {
                        log::warn!("disk thread cannot wake the loop: {e}");
                    }
                }
            }
        })?;
        Ok(DiskWorker {
            requests: Some(requests),
            done,
            thread: Some(thread),
            in_flight: 0,
        })
    }

    /// Queues `req`. If the thread is gone (it never exits on its own, so
    /// only after a panic) the request comes back at once as failed.
    pub fn submit(&mut self, req: DiskRequest) -> Option<DiskDone> {
        let answered = !matches!(req, DiskRequest::Forget { .. });
        let sent = match &self.requests {
            Some(tx) => tx.send(req).map_err(|e| e.0),
            None => Err(req),
        };
        match sent {
            Ok(()) => {
                self.in_flight += usize::from(answered);
                None
            }
            Err(DiskRequest::Piece(job)) => Some(DiskDone::Piece(PieceDone {
                session: job.session,
                piece: job.piece,
                outcome: Outcome::Failed(StorageError {
                    path: PathBuf::new(),
                    source: io::Error::other("the disk thread is gone"),
                }),
                data: job.data,
            })),
            Err(DiskRequest::Delete { ticket, .. }) => Some(DiskDone::Deleted {
                ticket,
                result: Err("the disk thread is gone".into()),
            }),
            Err(DiskRequest::Forget { .. }) => None,
        }
    }

    /// A finished request, if one is ready.
    pub fn try_recv(&mut self) -> Option<DiskDone> {
        let d = self.done.try_recv().ok()?;
        self.in_flight = self.in_flight.saturating_sub(1);
        Some(d)
    }

    /// Pieces sent and not yet taken back.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Shutdown: no more requests (later ones fail at once); waits up to
    /// `wait` for the queued ones and returns what finished, so that their
    /// pieces can still be recorded. A disk stuck for longer is left to the
    /// process's exit.
    pub fn finish(&mut self, wait: Duration) -> Vec<DiskDone> {
        drop(self.requests.take());
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.done.recv_timeout(left) {
                Ok(d) => {
                    self.in_flight = self.in_flight.saturating_sub(1);
                    out.push(d);
                }
                // Disconnected: the thread ended, everything is in.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    if let Some(t) = self.thread.take() {
                        let _ = t.join();
                    }
                    return out;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    log::warn!(
                        "disk thread: pieces still being written after {} s; not waiting",
                        wait.as_secs()
                    );
                    return out;
                }
            }
        }
    }
}

impl Drop for DiskWorker {
    fn drop(&mut self) {
        // Ends the thread once its queue is done; not joined, so a stuck
        // disk never holds up the caller.
        drop(self.requests.take());
    }
}

#[cfg(test)]
mod tests {
    use super::super::storage::MAX_OPEN_FILES;
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn files(dir: &std::path::Path) -> Arc<Files> {
        Arc::new(Files {
            layout: Layout::new(4, vec![3, 5]).unwrap(),
            paths: vec![dir.join("a"), dir.join("sub/b")],
        })
    }

    fn job(files: &Arc<Files>, piece: u32, data: &[u8], session: u64) -> PieceJob {
        PieceJob {
            session,
            piece,
            data: data.to_vec(),
            expected: Sha1::digest(data).into(),
            files: Arc::clone(files),
        }
    }

    #[test]
    fn a_good_piece_is_written_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        let mut w = PieceWriter::new();
        let d = w.run(job(&f, 0, b"abcd", 1));
        assert!(matches!(d.outcome, Outcome::Written), "{:?}", d.outcome);
        assert_eq!((d.session, d.piece, &d.data[..]), (1, 0, &b"abcd"[..]));
        let d = w.run(job(&f, 1, b"efgh", 1));
        assert!(matches!(d.outcome, Outcome::Written));
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"abc");
        assert_eq!(std::fs::read(dir.path().join("sub/b")).unwrap(), b"defgh");
    }

    #[test]
    fn a_bad_piece_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        let mut j = job(&f, 0, b"abcd", 1);
        j.data[0] = b'X';
        let d = PieceWriter::new().run(j);
        assert!(matches!(d.outcome, Outcome::BadHash));
        assert_eq!(d.data, b"Xbcd");
        assert!(!dir.path().join("a").exists());
    }

    #[test]
    fn a_write_that_fails_says_where() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the directory must be.
        std::fs::write(dir.path().join("sub"), b"").unwrap();
        let d = PieceWriter::new().run(job(&files(dir.path()), 1, b"efgh", 1));
        match d.outcome {
            Outcome::Failed(e) => assert!(e.path.starts_with(dir.path()), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn handles_are_kept_per_session_and_dropped_on_forget() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        let mut w = PieceWriter::new();
        // Piece 1 lies in the second file, piece 0 across both.
        w.run(job(&f, 1, b"efgh", 1));
        assert_eq!(w.open_files(), 1);
        w.run(job(&f, 0, b"abcd", 2));
        assert_eq!(w.open_files(), 3);
        assert!(w.handle(DiskRequest::Forget { session: 1 }).is_none());
        assert_eq!(w.open_files(), 2);
        for s in 10..10 + MAX_SESSIONS as u64 + 3 {
            w.run(job(&f, 0, b"abcd", s));
        }
        assert_eq!(w.storages.len(), MAX_SESSIONS);
        assert!(w.open_files() <= MAX_SESSIONS * MAX_OPEN_FILES);
    }

    #[test]
    fn the_worker_answers_each_piece_and_wakes_the_loop_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        let wakes = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&wakes);
        let mut w = DiskWorker::spawn(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .unwrap();
        assert!(w
            .submit(DiskRequest::Piece(job(&f, 0, b"abcd", 1)))
            .is_none());
        let mut bad = job(&f, 1, b"efgh", 1);
        bad.data[3] = b'X';
        assert!(w.submit(DiskRequest::Piece(bad)).is_none());
        assert!(w.submit(DiskRequest::Forget { session: 1 }).is_none());
        assert_eq!(w.in_flight(), 2);
        let done = w.finish(Duration::from_secs(60));
        let got: Vec<_> = done
            .into_iter()
            .map(piece)
            .map(|d| (d.piece, matches!(d.outcome, Outcome::Written)))
            .collect();
        assert_eq!(got, [(0, true), (1, false)]);
        assert_eq!(wakes.load(Ordering::SeqCst), 2);
        assert_eq!(w.in_flight(), 0);
        // After finishing, a piece comes back failed at once.
        let late = piece(
            w.submit(DiskRequest::Piece(job(&f, 0, b"abcd", 1)))
                .unwrap(),
        );
        assert!(matches!(late.outcome, Outcome::Failed(_)));
    }

    #[test]
    fn results_are_taken_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        let (tx, rx) = mpsc::channel();
        let mut w = DiskWorker::spawn(move || tx.send(()).map_err(io::Error::other)).unwrap();
        assert!(w.try_recv().is_none());
        w.submit(DiskRequest::Piece(job(&f, 0, b"abcd", 7)));
        rx.recv().unwrap();
        let d = piece(w.try_recv().unwrap());
        assert_eq!((d.session, d.piece), (7, 0));
        assert_eq!(w.in_flight(), 0);
    }

    fn piece(d: DiskDone) -> PieceDone {
        match d {
            DiskDone::Piece(p) => p,
            other => panic!("not a piece: {other:?}"),
        }
    }

    #[test]
    fn a_deletion_runs_after_the_pieces_queued_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        let mut w = DiskWorker::spawn(|| Ok(())).unwrap();
        w.submit(DiskRequest::Piece(job(&f, 0, b"abcd", 1)));
        w.submit(DiskRequest::Forget { session: 1 });
        let tree = DataTree::new(
            dir.path().to_path_buf(),
            f.paths
                .iter()
                .map(|p| {
                    p.strip_prefix(dir.path())
                        .unwrap()
                        .iter()
                        .map(|c| c.as_encoded_bytes().to_vec())
                        .collect()
                })
                .collect(),
        );
        w.submit(DiskRequest::Delete { ticket: 9, tree });
        let done = w.finish(Duration::from_secs(60));
        assert!(
            matches!(
                &done[..],
                [
                    DiskDone::Piece(_),
                    DiskDone::Deleted {
                        ticket: 9,
                        result: Ok(())
                    }
                ]
            ),
            "{done:?}"
        );
        for p in &f.paths {
            assert!(!p.exists(), "{} written after its deletion", p.display());
        }
    }
}
