//! tripcd: a daemon speaking the bencoded Unix-socket IPC protocol of the
//! Transmission BitTorrent client (versions 1 and 2).
//!
//! Layers, each knowing only the ones below it:
//! - [`codec`]: frames and bencode, pure functions over bytes;
//! - [`session`]: one connection's protocol state, bytes in, bytes out;
//! - [`commands`]: the table of keys and their handlers;
//! - [`registry`]: settings, torrents and their persistence;
//! - [`reactor`]: the mio event loop, the only part touching sockets;
//! - [`daemon`]: start-up and shutdown around the reactor.

pub mod access;
pub mod client;
pub mod codec;
pub mod commands;
pub mod daemon;
pub mod load;
pub mod reactor;
pub mod registry;
pub mod remote;
pub mod scripts;
pub mod session;
pub mod sys;
