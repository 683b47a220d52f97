//! The mio tokens of every source: clients at their server ids (from 0),
//! peers from [`PEER_BASE`], and a few reserved at the top.

use mio::Token;

/// Signals (SIGINT, SIGTERM, SIGHUP).
pub const SIGNALS: Token = Token(usize::MAX - 2);
/// The peer port's TCP listener.
pub const PEER_LISTENER: Token = Token(usize::MAX - 3);
/// The waker the tracker worker and the disk thread use.
pub const WAKER: Token = Token(usize::MAX - 4);
/// The peer port's IPv4 UDP socket.
pub const UDP4: Token = Token(usize::MAX - 5);
/// The peer port's IPv6 UDP socket.
pub const UDP6: Token = Token(usize::MAX - 6);

/// Fronts' listeners' tokens count down from here.
pub const LISTENER_BASE: usize = usize::MAX - 16;

/// Listeners at most (the service manager passes at most as many).
pub const MAX_LISTENERS: usize = crate::sys::MAX_LISTEN_FDS as usize;

/// Peer connections' tokens start here (clients' are below).
pub const PEER_BASE: usize = usize::MAX / 2;

/// Whose a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// A reserved token.
    Reserved(Token),
    /// Listener `i` of the fronts.
    Listener(usize),
    /// The peer with this key.
    Peer(usize),
    /// The client with this id.
    Client(usize),
}

/// The token of the fronts' listener `i`.
pub fn listener(i: usize) -> Token {
    Token(LISTENER_BASE - i)
}

/// The token of peer `key`.
pub fn peer(key: usize) -> Token {
    Token(PEER_BASE + key)
}

/// Whose `t` is.
pub fn owner(t: Token) -> Owner {
    match t.0 {
        n if n > LISTENER_BASE => Owner::Reserved(t),
        n if n > LISTENER_BASE - MAX_LISTENERS => Owner::Listener(LISTENER_BASE - n),
        n if n >= PEER_BASE => Owner::Peer(n - PEER_BASE),
        n => Owner::Client(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_has_one_owner() {
        assert_eq!(owner(SIGNALS), Owner::Reserved(SIGNALS));
        assert_eq!(owner(UDP6), Owner::Reserved(UDP6));
        assert_eq!(owner(listener(0)), Owner::Listener(0));
        assert_eq!(
            owner(listener(MAX_LISTENERS - 1)),
            Owner::Listener(MAX_LISTENERS - 1)
        );
        assert_eq!(owner(peer(0)), Owner::Peer(0));
        assert_eq!(owner(peer(7)), Owner::Peer(7));
        assert_eq!(owner(Token(5)), Owner::Client(5));
    }
}
