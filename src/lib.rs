//! tripcd: a daemon speaking the bencoded Unix-socket IPC protocol of the
//! Transmission BitTorrent client (versions 1 and 2).
//!
//! Layers, each knowing only the ones above it in this list:
//! - [`codec`]: frames and bencode, pure functions over bytes;
//! - [`message`]: the version 2 message and the version handshake;
//! - [`reply`]: what a handler answers;
//! - [`registry`]: settings, torrents and their persistence;
//! - [`engine`]: pieces, storage, piece picking, choking, rates;
//! - [`peer`]: the peer wire protocol and one connection's state;
//! - [`tracker`]: HTTP tracker announces (sans-IO) and their worker;
//! - [`swarm`]: every running torrent's peers, sans-IO;
//! - [`status`]: the protocol's view of a torrent;
//! - [`session`]: one connection's protocol state, bytes in, bytes out;
//! - [`commands`]: the table of keys and the built-in handlers;
//! - [`scripts`]: Rhai scripts: keys, hooks, host functions;
//! - [`config`]: every option and its default;
//! - [`service`]: runs messages against the table, handlers and scripts;
//! - [`server`]: the sans-IO core: sessions and the order of a loop turn;
//! - [`reactor`]: the mio event loop, the only part touching sockets;
//! - [`daemon`]: start-up and shutdown around the reactor.

pub mod access;
pub mod client;
pub mod codec;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod dht;
pub mod engine;
pub mod message;
pub mod notify;
pub mod peer;
pub mod reactor;
pub mod registry;
pub mod reply;
pub mod scripts;
pub mod server;
pub mod service;
pub mod session;
pub mod status;
pub mod swarm;
pub mod sys;
pub mod tracker;
