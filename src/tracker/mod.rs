//! Trackers: HTTP(S) and UDP (BEP 15) announces and scrapes, tiers (BEP
//! 12), and the schedule that ties them together. Every protocol part is
//! sans-IO (URLs, replies, the HTTP client's parser, the UDP client's
//! state machine); the one blocking part, HTTP requests and name
//! resolution, runs on worker threads off the reactor. Each module imports
//! only those listed before it; [`trackers`] drives the rest.

pub mod announce;
pub mod http;
pub mod schedule;
pub mod scrape;
pub mod tiers;
pub mod udp;
pub mod worker;

pub mod trackers;

pub use announce::{
    announce_url, parse_announce, AnnounceEvent, AnnounceReply, AnnounceRequest, Announced,
    TrackerError,
};
pub use schedule::Announcer;
pub use worker::{Job, JobKind, JobOutput, JobResult, TrackerWorker};
