//! Who may talk to the daemon: a decision over a client's credentials.
//!
//! The socket's mode (0600 by default) is the first gate; this is the
//! second, for sockets opened wider with `--socket-mode`/`--socket-group`.
//! A client is let in if its uid is the daemon's own, root, or in
//! `--allow-uid`, or its primary gid is in `--allow-gid`. (`SO_PEERCRED`
//! carries only the primary group: supplementary groups are not seen.)

/// The credentials the kernel reports for a connected client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Its process (at connect time).
    pub pid: i32,
    /// Its user.
    pub uid: u32,
    /// Its primary group.
    pub gid: u32,
}

/// Whose connections are accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The daemon's own uid.
    pub own_uid: u32,
    /// Other users let in.
    pub allow_uids: Vec<u32>,
    /// Groups let in (by the client's primary group).
    pub allow_gids: Vec<u32>,
}

impl Policy {
    /// Only the daemon's own user and root.
    pub fn owner_only(own_uid: u32) -> Policy {
        Policy {
            own_uid,
            allow_uids: Vec::new(),
            allow_gids: Vec::new(),
        }
    }

    /// Whether `peer` may talk to the daemon.
    pub fn admits(&self, peer: &Peer) -> bool {
        peer.uid == self.own_uid
            || peer.uid == 0
            || self.allow_uids.contains(&peer.uid)
            || self.allow_gids.contains(&peer.gid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32) -> Peer {
        Peer { pid: 1, uid, gid }
    }

    #[test]
    fn the_owner_and_root_are_let_in_and_nobody_else() {
        let p = Policy::owner_only(1000);
        assert!(p.admits(&peer(1000, 1000)));
        assert!(p.admits(&peer(0, 0)));
        assert!(!p.admits(&peer(1001, 1000)));
        assert!(!p.admits(&peer(65534, 65534)));
    }

    #[test]
    fn allowed_users_and_groups_are_let_in() {
        let p = Policy {
            own_uid: 1000,
            allow_uids: vec![1001],
            allow_gids: vec![50],
        };
        assert!(p.admits(&peer(1001, 7)));
        assert!(p.admits(&peer(1002, 50)));
        assert!(!p.admits(&peer(1002, 51)));
    }
}
