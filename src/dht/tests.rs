//! The node with a fake clock: queries answered, errors where due,
//! tokens, storage, rate limits, answers matched to queries, the table
//! through the node; then whole simulated networks.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::krpc::{self, Body, CompactNode, ErrorReply, Message, Method, Query, Reply, Want};
use super::node::{AMPLIFICATION, MAX_VALUES, QUERY_TIMEOUT, TICK};
use super::sim::Net;
use super::storage::{MAX_HASHES, PEER_TTL};
use super::table::{BAD_AFTER, GOOD_FOR, K};
use super::{Config, Dht, DhtEvent, Kind, NodeId, Rate};

const OWN: NodeId = NodeId([0x80; 20]);

fn lo(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn node(now: Instant) -> Dht {
    Dht::new(
        Config::default(),
        Some(OWN),
        fastrand::Rng::with_seed(1),
        now,
    )
}

fn fast_config() -> Config {
    let lots = Rate {
        per_second: 1_000_000,
        burst: 1_000_000,
    };
    Config {
        overall_rate: lots,
        per_source_rate: lots,
        ..Config::default()
    }
}

fn id(b: u8) -> NodeId {
    NodeId([b; 20])
}

fn query_msg(txid: &[u8], from_id: NodeId, method: Method) -> Message {
    Message {
        txid: txid.to_vec(),
        version: None,
        ip: None,
        read_only: false,
        body: Body::Query(Query {
            id: from_id,
            method,
            want: None,
        }),
    }
}

/// Everything the node has to send.
fn sent(dht: &mut Dht) -> Vec<(SocketAddr, Message)> {
    let mut out = Vec::new();
    let mut buf = Vec::new();
    while let Some(to) = dht.poll_transmit(&mut buf) {
        out.push((to, krpc::decode(&buf).expect("we send valid KRPC")));
    }
    out
}

/// Sends `method` from `from` (as node `from_id`) and returns the answer
/// addressed back under transaction id "aa", with the raw sizes.
fn ask_sized(
    dht: &mut Dht,
    from: SocketAddr,
    from_id: NodeId,
    method: Method,
    now: Instant,
) -> Option<(Message, usize, usize)> {
    let q = query_msg(b"aa", from_id, method).to_bytes();
    dht.handle_datagram(from, &q, now);
    let mut buf = Vec::new();
    let mut found = None;
    while let Some(to) = dht.poll_transmit(&mut buf) {
        let m = krpc::decode(&buf).unwrap();
        if to == from && m.txid == b"aa" {
            found = Some((m, q.len(), buf.len()));
        }
    }
    found
}

fn ask(
    dht: &mut Dht,
    from: SocketAddr,
    from_id: NodeId,
    method: Method,
    now: Instant,
) -> Option<Message> {
    ask_sized(dht, from, from_id, method, now).map(|(m, _, _)| m)
}

fn reply_of(m: &Message) -> &Reply {
    match &m.body {
        Body::Reply(r) => r,
        other => panic!("not a reply: {other:?}"),
    }
}

fn error_of(m: &Message) -> i64 {
    match &m.body {
        Body::Error(ErrorReply { code, .. }) => *code,
        other => panic!("not an error: {other:?}"),
    }
}

/// Answers every query the node sent as node `as_id` (by address).
fn answer_all(dht: &mut Dht, ids: &dyn Fn(SocketAddr) -> Option<NodeId>, now: Instant) -> usize {
    let mut n = 0;
    for (to, m) in sent(dht) {
        let (Body::Query(_), Some(rid)) = (&m.body, ids(to)) else {
            continue;
        };
        let r = Message {
            txid: m.txid.clone(),
            version: None,
            ip: None,
            read_only: false,
            body: Body::Reply(Reply::bare(rid)),
        };
        dht.handle_datagram(to, &r.to_bytes(), now);
        n += 1;
    }
    n
}

/// Fills the node's table with nodes at loopback ports 1000+: each
/// pings it, it pings back, the ping is answered.
fn populate(dht: &mut Dht, count: u16, now: Instant) -> Vec<(NodeId, SocketAddr)> {
    let mut rng = fastrand::Rng::with_seed(99);
    let nodes: Vec<(NodeId, SocketAddr)> = (0..count)
        .map(|i| (NodeId::random(&mut rng), lo(1000 + i)))
        .collect();
    let lookup = nodes.clone();
    let ids = move |a: SocketAddr| lookup.iter().find(|(_, x)| *x == a).map(|(i, _)| *i);
    // Each is told of (a peer's `port` message), pinged, and answers.
    let mut answered = 0;
    for &(_, addr) in &nodes {
        dht.add_node(addr, now);
        answered += answer_all(dht, &ids, now);
    }
    assert!(answered > 0);
    nodes
}

#[test]
fn ping_is_answered_and_the_stranger_pinged_then_entered() {
    let t0 = Instant::now();
    let mut dht = node(t0);
    let them = lo(7000);
    let q = query_msg(b"xy", id(1), Method::Ping);
    dht.handle_datagram(them, &q.to_bytes(), t0);
    let mut out = sent(&mut dht);
    assert_eq!(out.len(), 2, "the answer, and our ping to the stranger");
    out.sort_by_key(|(_, m)| matches!(m.body, Body::Query(_)));
    let (to, answer) = &out[0];
    assert_eq!(*to, them);
    assert_eq!(answer.txid, b"xy");
    assert_eq!(answer.ip, Some(them), "BEP 42: their address as we see it");
    assert_eq!(answer.version.as_deref(), Some(&b"TP\x00\x01"[..]));
    assert_eq!(reply_of(answer).id, OWN);
    let (to, ping) = &out[1];
    assert_eq!(*to, them);
    assert!(
        matches!(&ping.body, Body::Query(Query { method: Method::Ping, id, .. }) if *id == OWN)
    );
    assert_eq!(dht.stats().table.good, 0, "a query alone enters no one");
    let pong = Message {
        txid: ping.txid.clone(),
        version: None,
        ip: None,
        read_only: false,
        body: Body::Reply(Reply::bare(id(1))),
    };
    dht.handle_datagram(them, &pong.to_bytes(), t0);
    assert_eq!(dht.stats().table.good, 1);
    // A read-only querier (BEP 43) is answered but never pinged.
    let mut q = query_msg(b"zz", id(2), Method::Ping);
    q.read_only = true;
    dht.handle_datagram(lo(7001), &q.to_bytes(), t0);
    assert_eq!(sent(&mut dht).len(), 1);
}

#[test]
fn find_node_answers_the_closest_from_the_table() {
    let t0 = Instant::now();
    let mut dht = Dht::new(fast_config(), Some(OWN), fastrand::Rng::with_seed(1), t0);
    let nodes = populate(&mut dht, 60, t0);
    assert!(dht.stats().table.good >= 20, "{:?}", dht.stats().table);
    let target = id(0x33);
    let m = ask(&mut dht, lo(9000), id(9), Method::FindNode { target }, t0).unwrap();
    let r = reply_of(&m);
    assert_eq!(r.nodes.len(), K);
    assert!(r.nodes6.is_empty() && r.values.is_empty() && r.token.is_none());
    // They are the K closest of those the table holds (all good: the
    // saved state lists them), in order.
    let (_, mut held) = super::node::parse_state(&dht.save()).unwrap();
    held.sort_by_key(|n| n.id.distance(&target));
    assert_eq!(r.nodes, held[..K].to_vec());
    assert!(r.nodes.iter().all(|n| nodes.contains(&(n.id, n.addr))));
    // `want` n6 with no IPv6 table: an empty nodes6, no nodes.
    let mut q = query_msg(b"aa", id(9), Method::FindNode { target });
    if let Body::Query(q) = &mut q.body {
        q.want = Some(Want {
            v4: false,
            v6: true,
        });
    }
    dht.handle_datagram(lo(9000), &q.to_bytes(), t0);
    let out = sent(&mut dht);
    let r = reply_of(&out[0].1);
    assert!(r.nodes.is_empty() && r.nodes6.is_empty());
}

#[test]
fn get_peers_then_announce_then_values() {
    let t0 = Instant::now();
    let mut dht = node(t0);
    let hash = id(0x42);
    let peer = lo(5000);
    let m = ask(
        &mut dht,
        peer,
        id(5),
        Method::GetPeers { info_hash: hash },
        t0,
    )
    .unwrap();
    let token = reply_of(&m).token.clone().expect("a token");
    assert!(reply_of(&m).values.is_empty());
    let announce = |port, implied_port, token: &[u8]| Method::AnnouncePeer {
        info_hash: hash,
        port,
        implied_port,
        token: token.to_vec(),
    };
    let m = ask(&mut dht, peer, id(5), announce(6881, false, &token), t0).unwrap();
    assert_eq!(reply_of(&m).id, OWN);
    // implied_port: the source port is stored instead.
    let m = ask(&mut dht, peer, id(5), announce(1, true, &token), t0).unwrap();
    assert_eq!(reply_of(&m).id, OWN);
    assert_eq!(dht.stats().stored_peers, 2);
    let m = ask(
        &mut dht,
        lo(5001),
        id(6),
        Method::GetPeers { info_hash: hash },
        t0,
    )
    .unwrap();
    let mut values = reply_of(&m).values.clone();
    values.sort();
    assert_eq!(values, vec![lo(5000), lo(6881)]);
    // Another IP cannot use the token; port 0 is refused.
    let other: SocketAddr = "10.9.9.9:5000".parse().unwrap();
    let m = ask(&mut dht, other, id(7), announce(6881, false, &token), t0).unwrap();
    assert_eq!(error_of(&m), 203);
    let m = ask(&mut dht, peer, id(5), announce(0, false, &token), t0).unwrap();
    assert_eq!(error_of(&m), 203);
    assert_eq!(dht.stats().errors_sent, 2);
}

#[test]
fn errors_201_to_204_where_due() {
    let t0 = Instant::now();
    let mut dht = node(t0);
    // 203: a query without its argument; 204: an unknown method.
    let send = |dht: &mut Dht, raw: &str| {
        dht.handle_datagram(lo(4000), raw.as_bytes(), t0);
        let out = sent(dht);
        assert_eq!(out.len(), 1, "{raw}");
        assert_eq!(out[0].1.txid, b"aa");
        error_of(&out[0].1)
    };
    assert_eq!(
        send(
            &mut dht,
            "d1:ad2:id20:abcdefghij0123456789e1:q9:find_node1:t2:aa1:y1:qe"
        ),
        203
    );
    assert_eq!(
        send(
            &mut dht,
            "d1:ad2:id20:abcdefghij0123456789e1:q4:vote1:t2:aa1:y1:qe"
        ),
        204
    );
    assert_eq!(
        send(&mut dht, "d1:ad2:id3:abce1:q4:ping1:t2:aa1:y1:qe"),
        203
    );
    // 202: storage full for a new hash even with a valid token (the
    // token was issued before the store filled).
    let mut dht = Dht::new(fast_config(), Some(OWN), fastrand::Rng::with_seed(1), t0);
    let late = id(0xee);
    let m = ask(
        &mut dht,
        lo(4001),
        id(1),
        Method::GetPeers { info_hash: late },
        t0,
    )
    .unwrap();
    let late_token = reply_of(&m).token.clone().unwrap();
    let token = late_token.clone();
    for i in 0..MAX_HASHES {
        let mut h = NodeId([0; 20]);
        h.0[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let method = Method::AnnouncePeer {
            info_hash: h,
            port: 1,
            implied_port: false,
            token: token.clone(),
        };
        reply_of(&ask(&mut dht, lo(4001), id(1), method, t0).unwrap());
    }
    let m = ask(
        &mut dht,
        lo(4001),
        id(1),
        Method::GetPeers { info_hash: late },
        t0,
    )
    .unwrap();
    assert!(
        reply_of(&m).token.is_none(),
        "no token for a hash we cannot take"
    );
    let method = Method::AnnouncePeer {
        info_hash: late,
        port: 1,
        implied_port: false,
        token: late_token,
    };
    assert_eq!(
        error_of(&ask(&mut dht, lo(4001), id(1), method, t0).unwrap()),
        202
    );
    // 201: with BEP 42 enforced, a public address whose id does not match.
    let config = Config {
        enforce_node_id: true,
        ..Config::default()
    };
    let mut dht = Dht::new(config, Some(OWN), fastrand::Rng::with_seed(1), t0);
    let public: SocketAddr = "124.31.75.21:6881".parse().unwrap();
    assert_eq!(
        error_of(&ask(&mut dht, public, id(1), Method::Ping, t0).unwrap()),
        201
    );
    let mut good = NodeId::for_ip(public.ip(), &mut fastrand::Rng::with_seed(4));
    good.0[5] ^= 1; // any bits after the first 21 are free
    reply_of(&ask(&mut dht, public, good, Method::Ping, t0).unwrap());
}

#[test]
fn token_window_accepts_at_9_minutes_refuses_at_11() {
    let t0 = Instant::now();
    let mut dht = node(t0);
    let hash = id(0x42);
    let peer = lo(5000);
    let m = ask(
        &mut dht,
        peer,
        id(5),
        Method::GetPeers { info_hash: hash },
        t0,
    )
    .unwrap();
    let token = reply_of(&m).token.clone().unwrap();
    let announce = Method::AnnouncePeer {
        info_hash: hash,
        port: 6881,
        implied_port: false,
        token,
    };
    let min = |m: u64| t0 + Duration::from_secs(60 * m);
    // The timer runs as the lead would run it.
    let mut t = t0;
    while t < min(9) {
        t += TICK;
        dht.handle_timeout(t);
    }
    reply_of(&ask(&mut dht, peer, id(5), announce.clone(), min(9)).unwrap());
    assert_eq!(
        error_of(&ask(&mut dht, peer, id(5), announce, min(11)).unwrap()),
        203
    );
}

#[test]
fn stored_peers_expire_after_30_minutes() {
    let t0 = Instant::now();
    let mut dht = node(t0);
    let hash = id(0x42);
    let m = ask(
        &mut dht,
        lo(5000),
        id(5),
        Method::GetPeers { info_hash: hash },
        t0,
    )
    .unwrap();
    let token = reply_of(&m).token.clone().unwrap();
    let announce = Method::AnnouncePeer {
        info_hash: hash,
        port: 6881,
        implied_port: false,
        token,
    };
    reply_of(&ask(&mut dht, lo(5000), id(5), announce, t0).unwrap());
    let before = t0 + PEER_TTL - Duration::from_secs(1);
    let m = ask(
        &mut dht,
        lo(5001),
        id(6),
        Method::GetPeers { info_hash: hash },
        before,
    )
    .unwrap();
    assert_eq!(reply_of(&m).values, vec![lo(6881)]);
    let after = t0 + PEER_TTL + TICK;
    dht.handle_timeout(after);
    assert_eq!(
        (dht.stats().stored_hashes, dht.stats().stored_peers),
        (0, 0)
    );
    let m = ask(
        &mut dht,
        lo(5001),
        id(6),
        Method::GetPeers { info_hash: hash },
        after,
    )
    .unwrap();
    assert!(reply_of(&m).values.is_empty());
}

#[test]
fn answers_stay_within_the_amplification_bound() {
    let t0 = Instant::now();
    let mut dht = Dht::new(fast_config(), Some(OWN), fastrand::Rng::with_seed(1), t0);
    populate(&mut dht, 40, t0);
    let hash = id(0x42);
    for port in 1..=200u16 {
        let from: SocketAddr = format!("10.0.{}.{}:{port}", port / 250, port % 250 + 1)
            .parse()
            .unwrap();
        let m = ask(
            &mut dht,
            from,
            id(5),
            Method::GetPeers { info_hash: hash },
            t0,
        )
        .unwrap();
        let token = reply_of(&m).token.clone().unwrap();
        let method = Method::AnnouncePeer {
            info_hash: hash,
            port,
            implied_port: false,
            token,
        };
        reply_of(&ask(&mut dht, from, id(5), method, t0).unwrap());
    }
    let (m, qlen, rlen) = ask_sized(
        &mut dht,
        lo(5001),
        id(6),
        Method::GetPeers { info_hash: hash },
        t0,
    )
    .unwrap();
    let r = reply_of(&m);
    assert!(
        rlen <= qlen * AMPLIFICATION,
        "{rlen} > {AMPLIFICATION} x {qlen}"
    );
    assert!(
        !r.values.is_empty() && r.values.len() <= MAX_VALUES,
        "{}",
        r.values.len()
    );
    assert_eq!(r.nodes.len(), K);
    println!(
        "get_peers: a {qlen}-byte query, a {rlen}-byte answer with {} values",
        r.values.len()
    );
    // A longer transaction id makes a longer query, and more values fit.
    for (m, q, a) in [
        ask_sized(&mut dht, lo(5002), id(6), Method::Ping, t0).unwrap(),
        ask_sized(
            &mut dht,
            lo(5002),
            id(6),
            Method::FindNode { target: hash },
            t0,
        )
        .unwrap(),
    ] {
        assert!(a <= q * AMPLIFICATION, "{m:?}");
    }
}

#[test]
fn rate_limits_per_source_and_overall() {
    let t0 = Instant::now();
    let config = Config {
        overall_rate: Rate {
            per_second: 100,
            burst: 150,
        },
        per_source_rate: Rate {
            per_second: 10,
            burst: 20,
        },
        ..Config::default()
    };
    let mut dht = Dht::new(config, Some(OWN), fastrand::Rng::with_seed(1), t0);
    let answered = (0..50)
        .filter(|_| ask(&mut dht, lo(1), id(1), Method::Ping, t0).is_some())
        .count();
    assert_eq!(answered, 20);
    assert_eq!(dht.stats().queries_refused, 30);
    // Other loopback ports are other sources, until the overall cap.
    let answered = (2..300)
        .filter(|p| ask(&mut dht, lo(*p), id(1), Method::Ping, t0).is_some())
        .count();
    assert_eq!(answered, 130);
    // A second later both have refilled by their rate.
    let t1 = t0 + Duration::from_secs(1);
    let answered = (0..50)
        .filter(|_| ask(&mut dht, lo(1), id(1), Method::Ping, t1).is_some())
        .count();
    assert_eq!(answered, 10);
}

#[test]
fn answers_to_queries_never_sent_or_from_elsewhere_are_dropped() {
    let t0 = Instant::now();
    let mut dht = node(t0);
    let router = lo(2000);
    dht.bootstrap(&[router], t0);
    let out = sent(&mut dht);
    assert_eq!(out.len(), 1);
    let (to, q) = &out[0];
    assert_eq!(*to, router);
    assert!(
        matches!(&q.body, Body::Query(Query { method: Method::FindNode { target }, .. }) if *target == OWN)
    );
    let answer = |txid: &[u8]| Message {
        txid: txid.to_vec(),
        version: None,
        ip: None,
        read_only: false,
        body: Body::Reply(Reply {
            nodes: vec![CompactNode {
                id: id(3),
                addr: lo(2001),
            }],
            ..Reply::bare(id(2))
        }),
    };
    // Unknown transaction id; right id, wrong address.
    dht.handle_datagram(router, &answer(b"zzzz").to_bytes(), t0);
    dht.handle_datagram(lo(2002), &answer(&q.txid).to_bytes(), t0);
    let s = dht.stats();
    assert_eq!((s.unsolicited, s.dropped, s.table.good), (2, 2, 0));
    // The real answer is taken, and the lookup moves on to the referral.
    dht.handle_datagram(router, &answer(&q.txid).to_bytes(), t0);
    assert_eq!(dht.stats().table.good, 1);
    let out = sent(&mut dht);
    assert_eq!(
        out.iter().map(|(a, _)| *a).collect::<Vec<_>>(),
        vec![lo(2001)]
    );
    // The same answer again is no longer expected.
    dht.handle_datagram(router, &answer(&q.txid).to_bytes(), t0);
    assert_eq!(dht.stats().unsolicited, 3);
    // Garbage and oversize datagrams are dropped, never answered.
    dht.handle_datagram(router, b"d1:ad", t0);
    dht.handle_datagram(router, &vec![b'd'; 5000], t0);
    dht.handle_datagram(lo(0), &answer(b"aa").to_bytes(), t0);
    assert!(sent(&mut dht).is_empty());
    assert_eq!(dht.stats().malformed, 2);
    assert_eq!(dht.stats().dropped, 6);
}

#[test]
fn unanswered_queries_make_a_node_bad_and_it_is_replaced() {
    let t0 = Instant::now();
    let mut dht = Dht::new(fast_config(), Some(OWN), fastrand::Rng::with_seed(1), t0);
    let nodes = populate(&mut dht, 200, t0);
    let s = dht.stats();
    assert!(
        s.table.buckets > 1,
        "the bucket holding our id split: {s:?}"
    );
    assert!(s.table.replacements > 0, "full far buckets cache: {s:?}");
    let good = s.table.good;
    // Nobody answers for a long time: the nodes turn questionable, are
    // pinged, fail, and turn bad; replacements fail too.
    let mut t = t0;
    while t < t0 + GOOD_FOR + Duration::from_secs(60 * u64::from(BAD_AFTER) * 2) {
        t += TICK;
        dht.handle_timeout(t);
        sent(&mut dht);
    }
    let s = dht.stats();
    assert!(s.timeouts > 0);
    assert!(s.table.bad > 0, "{s:?}");
    // A node that answers now takes a bad node's slot.
    let newcomer = lo(9999);
    let nid = nodes[0].0; // an id whose bucket exists; a fresh address
    let mut fresh = nid;
    fresh.0[19] ^= 0x55;
    dht.handle_datagram(
        newcomer,
        &query_msg(b"aa", fresh, Method::Ping).to_bytes(),
        t,
    );
    let before = dht.stats().table.bad;
    assert_eq!(
        answer_all(&mut dht, &|a| (a == newcomer).then_some(fresh), t),
        1,
        "pinged back"
    );
    let after = dht.stats().table;
    assert_eq!(after.good, 1, "{after:?}");
    assert_eq!(after.bad, before - 1, "it took a bad node's slot");
    assert!(after.good + after.bad + after.questionable <= good);
}

#[test]
fn save_and_load_keep_the_id_and_nodes_and_refuse_garbage() {
    let t0 = Instant::now();
    let mut dht = Dht::new(fast_config(), Some(OWN), fastrand::Rng::with_seed(1), t0);
    populate(&mut dht, 30, t0);
    let good = dht.stats().table.good;
    let state = dht.save();
    let (id, nodes) = super::node::parse_state(&state).unwrap();
    assert_eq!((id, nodes.len()), (OWN, good));
    let mut back = Dht::load(Config::default(), &state, fastrand::Rng::with_seed(2), t0).unwrap();
    assert_eq!(back.id(), OWN);
    let pinged = sent(&mut back).len();
    assert!(pinged >= 3, "the saved nodes are asked first: {pinged}");
    for bad in [
        &b""[..],
        b"le",
        b"d2:id3:abce",
        b"d2:id20:abcdefghij01234567895:nodes5:abcdee",
        b"i1e",
    ] {
        assert!(
            Dht::load(Config::default(), bad, fastrand::Rng::with_seed(2), t0).is_err(),
            "{bad:?}"
        );
    }
}

#[test]
fn bep42_id_from_the_external_address_set_or_voted() {
    let t0 = Instant::now();
    let mut dht = node(t0);
    let public: std::net::IpAddr = "124.31.75.21".parse().unwrap();
    dht.set_external_address(public, t0);
    assert!(dht.id().matches_ip(public));
    assert!(
        matches!(dht.poll_event(), Some(DhtEvent::IdChanged { old, new }) if old == OWN && new == dht.id())
    );
    // A local address changes nothing.
    let before = dht.id();
    dht.set_external_address("192.168.1.5".parse().unwrap(), t0);
    assert_eq!(dht.id(), before);
    // Votes: five nodes answering that we are at another address.
    let mut dht = node(t0);
    let voted: SocketAddr = "65.23.51.170:6881".parse().unwrap();
    for i in 0..5u16 {
        dht.add_node(lo(3000 + i), t0);
    }
    for (to, m) in sent(&mut dht) {
        let r = Message {
            txid: m.txid.clone(),
            version: None,
            ip: Some(voted),
            read_only: false,
            body: Body::Reply(Reply::bare(id(to.port() as u8))),
        };
        assert_eq!(dht.id(), OWN, "not before the fifth vote");
        dht.handle_datagram(to, &r.to_bytes(), t0);
    }
    assert!(dht.id().matches_ip(voted.ip()));
    assert_eq!(dht.external_address(), Some(voted.ip()));
    assert_eq!(dht.stats().table.good, 5, "the table survives the new id");
}

#[test]
fn a_query_times_out_and_counts_against_the_node() {
    let t0 = Instant::now();
    let mut dht = node(t0);
    dht.add_node(lo(3000), t0);
    let (_, ping) = sent(&mut dht).remove(0);
    let pong = Message {
        txid: ping.txid.clone(),
        version: None,
        ip: None,
        read_only: false,
        body: Body::Reply(Reply::bare(id(3))),
    };
    dht.handle_datagram(lo(3000), &pong.to_bytes(), t0);
    assert_eq!(dht.stats().table.good, 1);
    let lookup = dht.find_node(id(4), t0);
    assert_eq!(sent(&mut dht).len(), 1);
    let t = t0 + QUERY_TIMEOUT;
    assert!(dht.poll_timeout().is_some_and(|d| d <= t));
    dht.handle_timeout(t);
    let s = dht.stats();
    assert_eq!((s.timeouts, s.table.good, s.table.questionable), (1, 0, 1));
    match dht.poll_event() {
        Some(DhtEvent::LookupDone(d)) => {
            assert_eq!(
                (d.id, d.kind, d.timeouts, d.closest.len()),
                (lookup, Kind::FindNode, 1, 0)
            );
        }
        other => panic!("{other:?}"),
    }
}

// ---- simulated networks ------------------------------------------------

/// `n` nodes joining one by one (every 20 ms) through node 0 and a
/// random earlier node, then settling for a simulated minute.
fn network(n: usize, seed: u64) -> Net {
    let mut net = Net::new(
        n,
        seed,
        20,
        (Duration::from_millis(5), Duration::from_millis(80)),
    );
    net.join(0, &[]);
    for i in 1..n {
        let other = net.pick(i);
        net.join(i, &[0, other]);
        net.run_for(Duration::from_millis(20));
    }
    net.run_for(Duration::from_secs(60));
    net
}

#[derive(Default)]
struct Tally {
    lookups: usize,
    found: Vec<usize>,
    hops: u64,
    packets: u64,
    time: Duration,
}

impl Tally {
    fn print(&self, what: &str) {
        let n = self.lookups.max(1);
        let seven = self.found.iter().filter(|f| **f >= 7).count();
        let eight = self.found.iter().filter(|f| **f == 8).count();
        println!(
            "{what}: {} lookups: all 8 of the true 8 closest in {eight}, at least 7 in {seven}; \
             per lookup {:.2} hops, {:.1} packets, {:.0} ms simulated",
            self.lookups,
            self.hops as f64 / n as f64,
            self.packets as f64 / n as f64,
            self.time.as_secs_f64() * 1000.0 / n as f64,
        );
    }

    fn with_seven(&self) -> usize {
        self.found.iter().filter(|f| **f >= 7).count()
    }
}

/// Every live node (of `nodes`) looks up a random id at once; each
/// result is compared with the truth.
fn lookups(net: &mut Net, nodes: &[usize]) -> Tally {
    let mut started = Vec::new();
    for &i in nodes {
        let target = net.random_id();
        let lid = net.nodes[i].find_node(target, net.now);
        net.flush(i);
        started.push((i, lid, target));
    }
    net.run_for(Duration::from_secs(60));
    let mut t = Tally::default();
    for (i, lid, target) in started {
        let done = net
            .take_done(i, lid)
            .expect("every lookup ends within a minute");
        let truth = net.truth(&target, K);
        let found = done
            .closest
            .iter()
            .filter(|n| truth.contains(&n.id))
            .count();
        t.lookups += 1;
        t.found.push(found);
        t.hops += u64::from(done.hops);
        t.packets += u64::from(done.queries + done.replies);
        t.time += done.elapsed;
    }
    t
}

#[test]
fn a_thousand_nodes_find_the_true_closest_and_a_torrent() {
    let mut net = network(1000, 7);
    let everyone: Vec<usize> = (0..1000).collect();
    let tally = lookups(&mut net, &everyone);
    tally.print("1000 nodes, 2% loss");
    // At least 7 of the true 8 closest in 95% of lookups.
    assert!(
        tally.with_seven() * 100 >= tally.lookups * 95,
        "{:?}",
        tally.found
    );
    println!("packets sent in all: {}", net.sent);

    // A torrent announced by one node is found by another.
    let hash = net.random_id();
    let (a, b) = (17, 923);
    let lid = net.nodes[a].announce(hash, Some(4242), net.now);
    net.flush(a);
    net.run_for(Duration::from_secs(30));
    let done = net.take_done(a, lid).expect("the announce ended");
    assert!(done.announced_to >= 6, "{done:?}");
    let lid = net.nodes[b].get_peers(hash, net.now);
    net.flush(b);
    net.run_for(Duration::from_secs(30));
    let want = SocketAddr::new(net.addrs[a].ip(), 4242);
    let found = net.events[b].iter().any(|e| matches!(e, DhtEvent::Peers { lookup, peers, .. } if *lookup == lid && peers.contains(&want)));
    assert!(found, "{:?}", net.events[b]);
    let done = net.take_done(b, lid).unwrap();
    assert_eq!(done.peers, 1);
}

#[test]
fn nodes_that_leave_are_replaced_in_tables() {
    let n = 400;
    let mut net = network(n, 11);
    // A quarter of the nodes leave.
    for i in (0..n).filter(|i| i % 4 == 1) {
        net.alive[i] = false;
    }
    let gone: Vec<SocketAddr> = (0..n)
        .filter(|i| !net.alive[*i])
        .map(|i| net.addrs[i])
        .collect();
    let dead_entries = |net: &Net| -> (usize, usize) {
        let mut dead = 0;
        let mut all = 0;
        for i in (0..n).filter(|i| net.alive[*i]) {
            let state = net.nodes[i].save(); // the good nodes
            let (_, nodes) = super::node::parse_state(&state).unwrap();
            all += nodes.len();
            dead += nodes.iter().filter(|x| gone.contains(&x.addr)).count();
        }
        (dead, all)
    };
    let (dead0, all0) = dead_entries(&net);
    assert!(
        dead0 * 5 > all0,
        "about a quarter were good before: {dead0}/{all0}"
    );
    net.run_for(GOOD_FOR + Duration::from_secs(10 * 60));
    let (dead1, all1) = dead_entries(&net);
    println!("good entries naming departed nodes: {dead0}/{all0} before, {dead1}/{all1} 25 minutes after");
    assert!(dead1 * 100 <= all1, "{dead1}/{all1}");
    let survivors: Vec<usize> = (0..n).filter(|i| net.alive[*i]).collect();
    let tally = lookups(&mut net, &survivors);
    tally.print("400 nodes after a quarter left");
    assert!(
        tally.with_seven() * 100 >= tally.lookups * 95,
        "{:?}",
        tally.found
    );
}

#[test]
#[ignore = "about a minute in release: cargo test --release --lib dht::tests::ten -- --ignored --nocapture"]
fn ten_thousand_nodes() {
    let mut net = network(10_000, 3);
    let sample: Vec<usize> = (0..10_000).step_by(10).collect();
    let tally = lookups(&mut net, &sample);
    tally.print("10,000 nodes, 2% loss");
    assert!(
        tally.with_seven() * 100 >= tally.lookups * 95,
        "{:?}",
        tally.found
    );
}

#[test]
fn ipv6_nodes_get_a_table_of_their_own_and_want_picks_families() {
    let t0 = Instant::now();
    let config = Config {
        ipv6: true,
        ..Config::default()
    };
    let mut dht = Dht::new(config, Some(OWN), fastrand::Rng::with_seed(1), t0);
    let v6: SocketAddr = "[::1]:7000".parse().unwrap();
    let v4 = lo(7001);
    for (addr, nid) in [(v6, id(6)), (v4, id(4))] {
        dht.handle_datagram(addr, &query_msg(b"aa", nid, Method::Ping).to_bytes(), t0);
        answer_all(&mut dht, &|a| (a == addr).then_some(nid), t0);
    }
    let s = dht.stats();
    assert_eq!((s.table.good, s.table6.good), (1, 1));
    // Asked from IPv6 without `want`: nodes6 only; with want n4+n6: both.
    let m = ask(
        &mut dht,
        "[::1]:7002".parse().unwrap(),
        id(9),
        Method::FindNode { target: id(5) },
        t0,
    )
    .unwrap();
    let r = reply_of(&m);
    assert_eq!((r.nodes.len(), r.nodes6.len()), (0, 1));
    assert_eq!(r.nodes6[0].addr, v6);
    let mut q = query_msg(b"aa", id(9), Method::FindNode { target: id(5) });
    if let Body::Query(q) = &mut q.body {
        q.want = Some(Want { v4: true, v6: true });
    }
    dht.handle_datagram(lo(7003), &q.to_bytes(), t0);
    let out = sent(&mut dht);
    let answer = out
        .iter()
        .find(|(_, m)| matches!(m.body, Body::Reply(_)))
        .unwrap();
    let r = reply_of(&answer.1);
    assert_eq!((r.nodes.len(), r.nodes6.len()), (1, 1));
    // Our own lookups ask for both families and search each in its own.
    dht.handle_timeout(t0 + QUERY_TIMEOUT); // the pings of the askers go
    sent(&mut dht);
    dht.find_node(id(5), t0 + QUERY_TIMEOUT);
    let out = sent(&mut dht);
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(
        |(_, m)| matches!(&m.body, Body::Query(q) if q.want == Some(Want { v4: true, v6: true }))
    ));
    // Without the switch, IPv6 nodes are answered but not entered.
    let mut dht = node(t0);
    dht.handle_datagram(v6, &query_msg(b"aa", id(6), Method::Ping).to_bytes(), t0);
    assert_eq!(sent(&mut dht).len(), 1, "answered, not pinged");
}

#[test]
fn an_ipv4_mapped_sender_is_the_same_ipv4_node() {
    let t0 = Instant::now();
    let mut dht = node(t0);
    let mapped: SocketAddr = "[::ffff:127.0.0.1]:2000".parse().unwrap();
    dht.add_node(mapped, t0);
    let out = sent(&mut dht);
    assert_eq!(out[0].0, lo(2000), "sent to the plain IPv4 address");
    let pong = Message {
        txid: out[0].1.txid.clone(),
        version: None,
        ip: None,
        read_only: false,
        body: Body::Reply(Reply::bare(id(3))),
    };
    dht.handle_datagram(mapped, &pong.to_bytes(), t0);
    assert_eq!((dht.stats().table.good, dht.stats().unsolicited), (1, 0));
}
