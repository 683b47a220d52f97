//! The peer wire protocol (BEP 3), sans-IO: the codec, one connection's
//! state machine, and the MSE/PE encryption handshake. Nothing here
//! touches a socket.

pub mod extension;
pub mod fast;
pub mod metadata;
pub mod mse;
pub mod pex;
pub mod wire;

pub mod conn;
