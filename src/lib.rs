//! tripcd: a daemon speaking the bencoded Unix-socket IPC protocol of the
//! Transmission BitTorrent client (versions 1 and 2).
//!
//! Layers, each knowing only the ones above it in this list (the README's
//! Design section says what each owns; `.ci/layers.py` checks the order):
//! - [`codec`]: frames and bencode, pure functions over bytes;
//! - [`message`], [`reply`]: the IPC message, what a handler answers;
//! - [`engine`]: piece geometry, storage, piece picking, choking, rates;
//! - [`registry`]: settings, torrents and their persistence;
//! - [`peer`]: the peer wire protocol and one connection's state;
//! - [`tracker`]: announces and scrapes (sans-IO) and their worker;
//! - [`http`]: the RPC front's HTTP/1.1 server connection, guards and
//!   web interface files (sans-IO);
//! - [`utp`]: the uTP transport (BEP 29) under the peer wire, sans-IO;
//! - [`dht`]: a DHT node (BEP 5): KRPC, routing table, lookups, sans-IO;
//! - [`lpd`]: local peer discovery (BEP 14), sans-IO;
//! - [`swarm`]: every running torrent's peers, sans-IO;
//! - [`core`]: the torrent core: registry, swarm, trackers, verification;
//! - [`status`]: the protocol's view of a torrent;
//! - [`commands`]: the table of keys and the built-in handlers;
//! - [`scripts`]: Rhai scripts: keys, hooks, host functions;
//! - [`config`]: every option and its default;
//! - [`service`]: runs messages against the table, handlers and scripts;
//! - [`session`]: one IPC connection's protocol state, bytes in, bytes out;
//! - [`front`]: client connections of any front, the IPC one;
//! - [`server`]: every front's clients, the commit rule, a turn's order;
//! - [`reactor`]: the mio event loop, the only part touching sockets;
//! - [`daemon`]: start-up and shutdown around the reactor.

pub mod access;
pub mod client;
pub mod codec;
pub mod commands;
pub mod config;
pub mod core;
pub mod daemon;
pub mod dht;
pub mod engine;
pub mod front;
pub mod http;
pub mod lpd;
pub mod message;
pub mod notify;
pub mod peer;
pub mod reactor;
pub mod registry;
pub mod reply;
pub mod rpc;
pub mod scripts;
pub mod server;
pub mod service;
pub mod session;
pub mod status;
pub mod swarm;
pub mod sys;
pub mod tracker;
pub mod utp;
