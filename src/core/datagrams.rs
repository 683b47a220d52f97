//! The peer port's one UDP socket, demultiplexed as Transmission's
//! `tr-udp.cc` and libtorrent do: a bencoded dictionary (`d`...) is the
//! DHT's, a reply a UDP tracker owes us (its action and transaction id
//! match a request in flight) is the trackers', and anything else is uTP.

/// Who a datagram on the peer port is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagram {
    /// A KRPC message (BEP 5): a bencoded dict.
    Dht,
    /// The reply to one of our UDP tracker requests (BEP 15).
    Tracker,
    /// Everything else: uTP (BEP 29), which checks its own header.
    Utp,
}

/// Datagrams received on the peer port, by kind, and those no part of
/// the daemon takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DatagramStats {
    /// Taken by the DHT.
    pub dht: u64,
    /// Taken by the UDP tracker client.
    pub tracker: u64,
    /// Taken by uTP.
    pub utp: u64,
    /// Dropped: for a protocol that is off.
    pub dropped: u64,
}

/// Sorts a datagram by its first bytes; `tracker_expects` says whether
/// the tracker client waits for it (see
/// [`crate::tracker::udp::UdpClient::expects`]).
pub fn classify(data: &[u8], tracker_expects: bool) -> Datagram {
    if data.first() == Some(&b'd') {
        Datagram::Dht
    } else if tracker_expects {
        Datagram::Tracker
    } else {
        Datagram::Utp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_are_sorted_by_their_first_bytes() {
        assert_eq!(classify(b"d1:ad2:id20:", false), Datagram::Dht);
        assert_eq!(
            classify(b"d1:ad2:id20:", true),
            Datagram::Dht,
            "a dict is never a tracker's"
        );
        let reply = [0u8, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef];
        assert_eq!(classify(&reply, true), Datagram::Tracker);
        assert_eq!(
            classify(&reply, false),
            Datagram::Utp,
            "not one we wait for"
        );
        assert_eq!(
            classify(&[0x41, 1, 0, 0], false),
            Datagram::Utp,
            "a uTP SYN"
        );
        assert_eq!(classify(&[], false), Datagram::Utp);
    }
}
