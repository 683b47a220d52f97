//! The DHT (BEP 5, with BEP 32's IPv6 keys, BEP 42's node ids and BEP
//! 43's read-only flag), sans-IO.
//!
//! [`Dht`] is one node: the lead hands it every datagram of the peer port
//! that starts with `d` ([`Dht::handle_datagram`]), sends what
//! [`Dht::poll_transmit`] gives, and calls [`Dht::handle_timeout`] when
//! [`Dht::poll_timeout`] says. Lookups ([`Dht::get_peers`],
//! [`Dht::announce`]) report through [`Dht::poll_event`].
//!
//! - [`krpc`]: the message codec;
//! - [`id`]: ids, the XOR metric, BEP 42;
//! - [`table`]: the routing table;
//! - [`lookup`]: iterative lookups;
//! - [`storage`]: peers stored as a responder, and write tokens;
//! - [`limit`]: rate limits on the queries we answer;
//! - [`node`]: the node tying them together.

pub mod id;
pub mod krpc;
pub mod limit;
pub mod lookup;
pub mod node;
pub mod storage;
pub mod table;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

pub use id::NodeId;
pub use limit::Rate;
pub use lookup::{Kind, LookupId};
pub use node::{Config, Dht, DhtEvent, DhtStats, LookupDone, StateError};
