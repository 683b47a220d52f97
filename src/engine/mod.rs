//! The BitTorrent engine's domain logic: pieces, storage, piece picking,
//! choking, rates and bandwidth (speed-limit token buckets), and the disk
//! thread that hashes and writes downloaded pieces. Nothing here knows of
//! sockets or the wire; time and randomness are passed in, so every
//! decision is testable.

pub mod bandwidth;
pub mod bitfield;
pub mod choker;
pub mod disk;
pub mod geometry;
pub mod picker;
pub mod rate;
pub mod storage;
pub mod tree;
