//! The peer port: its TCP listener and its UDP sockets (one per family),
//! bound together and moved together when the `port` setting changes. The
//! UDP sockets carry every datagram protocol of the peer side (UDP tracker
//! replies, the DHT, uTP); the core sorts what arrives.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use log::{debug, error, info, warn};
use mio::net::{TcpListener, UdpSocket};
use mio::{Interest, Poll, Token};

use super::tokens::{PEER_LISTENER, UDP4, UDP6};
use crate::server::Server;

/// Datagrams read from the UDP sockets per turn (the rest wait for the
/// next turn, so a flood cannot hold the loop).
const UDP_READ_BUDGET: usize = 256;

/// The peer port's UDP socket of one family.
struct PeerUdp {
    socket: UdpSocket,
    addr: SocketAddr,
}

/// The peer port's TCP listener.
struct PeerListener {
    socket: TcpListener,
    addr: SocketAddr,
}

/// The peer port: a TCP listener and a UDP socket per family, on one port.
pub(super) struct PeerPort {
    /// The address the port is bound on (`--peer-bind`).
    bind: IpAddr,
    listener: Option<PeerListener>,
    udp4: Option<PeerUdp>,
    udp6: Option<PeerUdp>,
    /// Datagrams may be waiting on the UDP sockets.
    readable: bool,
    scratch: Vec<u8>,
}

impl PeerPort {
    /// Not bound yet; bound on `bind` by [`PeerPort::follow`].
    pub fn new(bind: IpAddr, scratch: usize) -> PeerPort {
        PeerPort {
            bind,
            listener: None,
            udp4: None,
            udp6: None,
            readable: false,
            scratch: vec![0; scratch],
        }
    }

    /// The TCP listener, to accept from.
    pub fn listener(&self) -> Option<&TcpListener> {
        self.listener.as_ref().map(|l| &l.socket)
    }

    /// The UDP sockets signalled readiness.
    pub fn set_readable(&mut self) {
        self.readable = true;
    }

    /// Whether a turn must come at once (datagrams left to read).
    pub fn busy(&self) -> bool {
        self.readable
    }

    /// The addresses the peer port binds for each family: the configured
    /// one, and for an unspecified IPv4 address the IPv6 wildcard too
    /// (UDP only, for trackers reached over IPv6).
    fn ips(&self) -> (IpAddr, Option<IpAddr>) {
        match self.bind {
            IpAddr::V4(ip) if !ip.is_unspecified() => (IpAddr::V4(ip), None),
            IpAddr::V6(ip) if !ip.is_unspecified() => {
                (IpAddr::V4(Ipv4Addr::UNSPECIFIED), Some(IpAddr::V6(ip)))
            }
            _ => (
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
            ),
        }
    }

    /// Binds the peer port to the `port` setting when it changed (TCP
    /// listener and UDP sockets), and tells the server how that went.
    pub fn follow(&mut self, poll: &Poll, server: &mut Server, now: Instant) {
        let Some(wanted) = server.poll_bind() else {
            return;
        };
        if let Some(mut l) = self.listener.take() {
            let _ = poll.registry().deregister(&mut l.socket);
            info!("peer port {} closed", l.addr.port());
        }
        for mut u in [self.udp4.take(), self.udp6.take()].into_iter().flatten() {
            let _ = poll.registry().deregister(&mut u.socket);
        }
        let addr = SocketAddr::new(self.bind, wanted);
        let bound = crate::sys::tcp_listener(addr, crate::sys::PEER_BACKLOG).and_then(|l| {
            let mut l = TcpListener::from_std(l);
            poll.registry()
                .register(&mut l, PEER_LISTENER, Interest::READABLE)?;
            Ok(l)
        });
        // The UDP sockets take the port the TCP listener got (the same
        // unless the setting is 0).
        let port = match &bound {
            Ok(l) => l.local_addr().map_or(wanted, |a| a.port()),
            Err(_) => wanted,
        };
        let (ip4, ip6) = self.ips();
        self.udp4 = bind_udp(poll, SocketAddr::new(ip4, port), UDP4);
        self.udp6 = ip6.and_then(|ip| bind_udp(poll, SocketAddr::new(ip, port), UDP6));
        self.readable = true;
        match bound {
            Ok(socket) => {
                info!("listening for peers on {addr} (TCP and UDP)");
                self.listener = Some(PeerListener { socket, addr });
                server.bind_result(wanted, Ok(()), now);
            }
            Err(e) => {
                error!("cannot listen for peers on {addr}: {e}");
                server.bind_result(wanted, Err(e.to_string()), now);
            }
        }
    }

    /// Datagrams in (when the sockets are readable) and out.
    pub fn exchange(&mut self, server: &mut Server, now: Instant) {
        if self.readable {
            self.read_datagrams(server, now);
        }
        while let Some(t) = server.core_mut().poll_transmit(now) {
            let socket = match t.destination {
                SocketAddr::V4(_) => self.udp4.as_ref(),
                SocketAddr::V6(_) => self.udp6.as_ref(),
            };
            let Some(u) = socket else {
                debug!("no UDP socket for {}", t.destination);
                continue;
            };
            // A datagram not sent is like one lost: the protocols'
            // retransmission timers cover both.
            if let Err(e) = u.socket.send_to(&t.payload, t.destination) {
                debug!("UDP to {}: cannot send: {e}", t.destination);
            }
        }
    }

    /// Reads what the UDP sockets hold, up to the turn's budget.
    fn read_datagrams(&mut self, server: &mut Server, now: Instant) {
        let mut budget = UDP_READ_BUDGET;
        for u in [self.udp4.as_ref(), self.udp6.as_ref()]
            .into_iter()
            .flatten()
        {
            while budget > 0 {
                match u.socket.recv_from(&mut self.scratch) {
                    Ok((n, from)) => {
                        budget -= 1;
                        let data = self.scratch.get(..n).unwrap_or_default();
                        server.core_mut().handle_datagram(from, data, now);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        // E.g. an ICMP error queued on the socket: it
                        // concerns one datagram, not the socket.
                        debug!("UDP socket {}: {e}", u.addr);
                        budget -= 1;
                    }
                }
            }
        }
        // Budget left: both sockets are drained.
        self.readable = budget == 0;
    }
}

/// A UDP socket on `addr`, registered; on the peer port if it can be,
/// else on any port (UDP trackers still work; DHT and uTP peers cannot
/// reach us there).
fn bind_udp(poll: &Poll, addr: SocketAddr, token: Token) -> Option<PeerUdp> {
    let open = |a: SocketAddr| {
        crate::sys::udp_socket(a).and_then(|s| {
            let mut s = UdpSocket::from_std(s);
            poll.registry()
                .register(&mut s, token, Interest::READABLE)?;
            Ok(s)
        })
    };
    let socket = match open(addr) {
        Ok(s) => s,
        Err(e) if addr.port() != 0 => {
            warn!("no UDP socket on {addr} ({e}); UDP trackers use another port");
            match open(SocketAddr::new(addr.ip(), 0)) {
                Ok(s) => s,
                Err(e) => {
                    warn!("no UDP socket on {}: {e}", addr.ip());
                    return None;
                }
            }
        }
        Err(e) => {
            // Only UDP traffic of that family is lost; UDP trackers
            // time out with a clear error.
            warn!("no UDP socket on {addr}: {e}");
            return None;
        }
    };
    let addr = socket.local_addr().unwrap_or(addr);
    Some(PeerUdp { socket, addr })
}
