//! The peer wire protocol (BEP 3), sans-IO: the codec and one
//! connection's state machine. Nothing here touches a socket.

pub mod conn;
pub mod wire;
