//! uTP (BEP 29), sans-IO: an [`Endpoint`] holding many connections, each
//! giving the code above it the interface of a byte stream, with LEDBAT
//! congestion control inside the stream (as libtorrent's `utp_stream.cpp`
//! does), not in the peer logic.
//!
//! The endpoint owns no socket and reads no clock. The owner hands it
//! every datagram of the peer port that is not DHT or a tracker reply
//! ([`Endpoint::handle_datagram`]), sends what
//! [`Endpoint::poll_transmit`] writes, and calls
//! [`Endpoint::handle_timeout`] when [`Endpoint::poll_timeout`] says.
//! Stream calls ([`Endpoint::send`], [`Endpoint::recv`], ...) take a
//! [`ConnId`]; what happens to connections comes out of
//! [`Endpoint::poll_event`].
//!
//! Interoperability is with libtorrent 2.0 (`utp_stream.cpp`) and libutp
//! (Transmission 3.00, `utp_internal.cpp`): the SYN consumes a sequence
//! number and its STATE answer does not, so the responder's first DATA
//! carries the STATE's `seq_nr` and the initiator starts with
//! `ack_nr = seq_nr − 1`; the FIN takes the next sequence number after the
//! data; keep-alives are libutp's (a STATE acknowledging one packet less,
//! every 29 s of silence), which libtorrent takes as a valid packet; RESETs
//! for unknown connections carry the id they answer, as libutp sends them
//! (libtorrent sends none).
//!
//! Driving it, per loop turn:
//! 1. read up to a batch of datagrams (64) from the socket, each into
//!    `handle_datagram`; ACKs go out once per batch, not per datagram;
//! 2. `handle_timeout` if `poll_timeout` has passed;
//! 3. `poll_event` until `None`, and the stream calls it calls for
//!    (`Readable`: `recv` until 0; `Writable`: `send` again);
//! 4. `poll_transmit` until `None` (or the socket would block: keep that
//!    datagram and send it first next time), after any of the above.
//!
//! The receive buffer must take a 64 KiB datagram; peers' packets may be
//! larger than ours. Measured on loopback (`loopback.rs`), 64 KiB packets
//! with 1 MiB socket buffers and the default 1 MiB window move 600+ MiB/s;
//! 1400-byte packets are bound by one system call per packet (~50 MiB/s).

mod conn;
mod endpoint;
pub mod ledbat;
pub mod packet;
mod types;

#[cfg(test)]
mod loopback;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

pub use endpoint::Endpoint;
pub use types::*;
