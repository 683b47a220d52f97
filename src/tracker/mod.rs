//! Talking to HTTP trackers: building announces and reading replies
//! (sans-IO), an HTTP/1.1 client in pieces (sans-IO), the announce schedule
//! of one torrent (pure logic), and the one blocking part, worker threads
//! that perform the HTTP requests off the reactor.

pub mod announce;
pub mod http;
pub mod schedule;
pub mod worker;

pub use announce::{
    announce_url, parse_announce, AnnounceEvent, AnnounceReply, AnnounceRequest, Announced,
    TrackerError,
};
pub use schedule::Announcer;
pub use worker::{Job, JobResult, TrackerWorker};
