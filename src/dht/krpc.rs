//! KRPC messages (BEP 5, with BEP 32's `nodes6` and `want`, and BEP 43's
//! `ro`): the decoder and the encoder, pure functions over bytes.
//!
//! The decoder is strict about what it uses (a 20-byte `id`, compact
//! lists whose length is a whole number of entries, integers in range)
//! and ignores keys it does not know, as BEP 5 asks. Its errors say
//! whether the datagram can be answered: a query whose `t` could be read
//! gets a 203 or 204 error back; anything else is dropped unanswered, so
//! that a forged datagram never makes us send to a third party.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use crate::codec::{self, Key, Value};

use super::id::{NodeId, ID_LEN};

/// The longest datagram read. A well-formed KRPC message fits one
/// unfragmented Ethernet frame (1472 bytes of UDP payload); the margin
/// covers a BEP 32 reply carrying both `nodes` and `nodes6` with values.
pub const MAX_DATAGRAM: usize = 2048;

/// The longest transaction id accepted. We echo it in every answer, so
/// bounding it bounds what a forged query can make us send; BEP 5's ids
/// are "typically 2 characters", libtorrent's 2, jech/dht's 4.
pub const MAX_TXID_LEN: usize = 16;

/// The longest token accepted, read or echoed. Real nodes use 4 to 20
/// bytes (libtorrent 4, jech/dht 8, SHA-1 based ones 20).
pub const MAX_TOKEN_LEN: usize = 64;

/// The longest `v` (client version) kept; a longer one is ignored.
pub const MAX_VERSION_LEN: usize = 16;

/// The longest error text kept from an error reply.
pub const MAX_ERROR_TEXT: usize = 256;

/// Bytes of a compact IPv4 node: id, address, port.
pub const NODE4_LEN: usize = ID_LEN + 6;

/// Bytes of a compact IPv6 node.
pub const NODE6_LEN: usize = ID_LEN + 18;

/// A node as compact node info carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CompactNode {
    /// Its id.
    pub id: NodeId,
    /// Its UDP address.
    pub addr: SocketAddr,
}

/// One KRPC message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `t`: the transaction id, at most [`MAX_TXID_LEN`] bytes.
    pub txid: Vec<u8>,
    /// `v`: the sender's client version, if short enough to keep.
    pub version: Option<Vec<u8>>,
    /// `ip` (BEP 42): the address the sender saw ours as.
    pub ip: Option<SocketAddr>,
    /// `ro` (BEP 43): the sender is read-only and must not be added to
    /// routing tables.
    pub read_only: bool,
    /// The query, reply or error.
    pub body: Body,
}

/// What a message is, by its `y`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// `y = q`.
    Query(Query),
    /// `y = r`.
    Reply(Reply),
    /// `y = e`.
    Error(ErrorReply),
}

/// A query (`q` and `a`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// `a.id`: the querying node.
    pub id: NodeId,
    /// The method and its arguments.
    pub method: Method,
    /// `a.want` (BEP 32): which families of nodes to return; `None` when
    /// absent (then the querier's own family).
    pub want: Option<Want>,
}

/// The four methods of BEP 5 and their arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// `ping`.
    Ping,
    /// `find_node`.
    FindNode {
        /// `target`.
        target: NodeId,
    },
    /// `get_peers`.
    GetPeers {
        /// `info_hash`.
        info_hash: NodeId,
    },
    /// `announce_peer`.
    AnnouncePeer {
        /// `info_hash`.
        info_hash: NodeId,
        /// `port` (0 when absent and `implied_port` is set).
        port: u16,
        /// `implied_port`: use the datagram's source port instead.
        implied_port: bool,
        /// `token`, from an earlier `get_peers` reply.
        token: Vec<u8>,
    },
}

impl Method {
    /// The method's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Ping => "ping",
            Method::FindNode { .. } => "find_node",
            Method::GetPeers { .. } => "get_peers",
            Method::AnnouncePeer { .. } => "announce_peer",
        }
    }
}

/// BEP 32's `want`: the node families asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Want {
    /// `n4`: IPv4 nodes (`nodes`).
    pub v4: bool,
    /// `n6`: IPv6 nodes (`nodes6`).
    pub v6: bool,
}

/// A reply's `r`. KRPC replies do not name the method they answer, so
/// every key any method's reply may have is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// `r.id`: the replying node.
    pub id: NodeId,
    /// `nodes`: compact IPv4 nodes.
    pub nodes: Vec<CompactNode>,
    /// `nodes6`: compact IPv6 nodes.
    pub nodes6: Vec<CompactNode>,
    /// `values`: peers (compact, 6 or 18 bytes each).
    pub values: Vec<SocketAddr>,
    /// `token`, for a later `announce_peer`.
    pub token: Option<Vec<u8>>,
}

impl Reply {
    /// A reply carrying only the id: what `ping` and `announce_peer` get.
    pub fn bare(id: NodeId) -> Reply {
        Reply {
            id,
            nodes: Vec::new(),
            nodes6: Vec::new(),
            values: Vec::new(),
            token: None,
        }
    }
}

/// An error reply's `e`: `[code, text]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    /// The code (201 to 204 in BEP 5; others exist in the wild).
    pub code: i64,
    /// The text, at most [`MAX_ERROR_TEXT`] bytes kept.
    pub text: Vec<u8>,
}

/// BEP 5's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 201: a query refused for a reason that is not the querier's
    /// format.
    Generic = 201,
    /// 202: we could not do what was asked (storage full).
    Server = 202,
    /// 203: malformed query, missing or wrong argument, bad token.
    Protocol = 203,
    /// 204: a method we do not know.
    MethodUnknown = 204,
}

/// What was wrong with a datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Over [`MAX_DATAGRAM`] bytes.
    Oversize(usize),
    /// Not bencode.
    Bencode(codec::DecodeError),
    /// Bencode, but not a dict.
    NotDict,
    /// A required key is absent.
    Missing(&'static str),
    /// A key holds the wrong type of value.
    WrongType(&'static str),
    /// A string has the wrong length (an id, a compact list, a token).
    BadLength(&'static str),
    /// An integer out of range.
    OutOfRange(&'static str),
    /// A `y` other than `q`, `r` or `e`.
    UnknownKind,
    /// A `q` we do not know.
    UnknownMethod(String),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Oversize(n) => write!(f, "a {n}-byte datagram is over {MAX_DATAGRAM}"),
            Problem::Bencode(e) => write!(f, "{e}"),
            Problem::NotDict => f.write_str("not a dict"),
            Problem::Missing(k) => write!(f, "missing {k}"),
            Problem::WrongType(k) => write!(f, "{k} has the wrong type"),
            Problem::BadLength(k) => write!(f, "{k} has the wrong length"),
            Problem::OutOfRange(k) => write!(f, "{k} out of range"),
            Problem::UnknownKind => f.write_str("unknown message type"),
            Problem::UnknownMethod(m) => write!(f, "unknown method {m:?}"),
        }
    }
}

/// Why a datagram was not a usable message, and whether to answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Not answered: not a KRPC message, or a bad reply or error.
    Drop(Problem),
    /// A query whose transaction id was read: answer it with `code`.
    Answer {
        /// The query's `t`.
        txid: Vec<u8>,
        /// 203 for a malformed query, 204 for an unknown method.
        code: ErrorCode,
        /// What was wrong, also the error text sent.
        problem: Problem,
    },
}

impl ParseError {
    /// What was wrong.
    pub fn problem(&self) -> &Problem {
        match self {
            ParseError::Drop(p) | ParseError::Answer { problem: p, .. } => p,
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.problem())
    }
}

impl std::error::Error for ParseError {}

/// Decodes one datagram.
pub fn decode(bytes: &[u8]) -> Result<Message, ParseError> {
    use ParseError::Drop;
    if bytes.len() > MAX_DATAGRAM {
        return Err(Drop(Problem::Oversize(bytes.len())));
    }
    let value = codec::decode(bytes).map_err(|e| Drop(Problem::Bencode(e)))?;
    if value.as_dict().is_none() {
        return Err(Drop(Problem::NotDict));
    }
    let txid = bytes_at(&value, "t").map_err(Drop)?;
    if txid.len() > MAX_TXID_LEN {
        return Err(Drop(Problem::BadLength("t")));
    }
    let kind = bytes_at(&value, "y").map_err(Drop)?;
    let body = match kind {
        b"q" => {
            Body::Query(
                decode_query(&value).map_err(|(code, problem)| ParseError::Answer {
                    txid: txid.to_vec(),
                    code,
                    problem,
                })?,
            )
        }
        b"r" => Body::Reply(decode_reply(&value).map_err(Drop)?),
        b"e" => Body::Error(decode_error(&value).map_err(Drop)?),
        _ => return Err(Drop(Problem::UnknownKind)),
    };
    Ok(Message {
        txid: txid.to_vec(),
        version: value
            .get("v")
            .and_then(Value::as_bytes)
            .filter(|v| v.len() <= MAX_VERSION_LEN)
            .map(<[u8]>::to_vec),
        ip: value
            .get("ip")
            .and_then(Value::as_bytes)
            .and_then(compact_addr),
        read_only: value.get("ro").and_then(Value::as_int).unwrap_or(0) != 0,
        body,
    })
}

fn bytes_at<'a>(dict: &'a Value, key: &'static str) -> Result<&'a [u8], Problem> {
    dict.get(key)
        .ok_or(Problem::Missing(key))?
        .as_bytes()
        .ok_or(Problem::WrongType(key))
}

fn id_at(dict: &Value, key: &'static str) -> Result<NodeId, Problem> {
    NodeId::from_slice(bytes_at(dict, key)?).ok_or(Problem::BadLength(key))
}

fn decode_query(msg: &Value) -> Result<Query, (ErrorCode, Problem)> {
    let protocol = |p| (ErrorCode::Protocol, p);
    let method = bytes_at(msg, "q").map_err(protocol)?;
    let args = msg.get("a").ok_or(protocol(Problem::Missing("a")))?;
    if args.as_dict().is_none() {
        return Err(protocol(Problem::WrongType("a")));
    }
    let id = id_at(args, "id").map_err(protocol)?;
    let method = match method {
        b"ping" => Method::Ping,
        b"find_node" => Method::FindNode {
            target: id_at(args, "target").map_err(protocol)?,
        },
        b"get_peers" => Method::GetPeers {
            info_hash: id_at(args, "info_hash").map_err(protocol)?,
        },
        b"announce_peer" => decode_announce(args).map_err(protocol)?,
        other => {
            return Err((
                ErrorCode::MethodUnknown,
                Problem::UnknownMethod(String::from_utf8_lossy(other).into_owned()),
            ))
        }
    };
    let want = decode_want(args).map_err(protocol)?;
    Ok(Query { id, method, want })
}

fn decode_announce(args: &Value) -> Result<Method, Problem> {
    let info_hash = id_at(args, "info_hash")?;
    let implied_port = match args.get("implied_port") {
        None => false,
        Some(v) => v.as_int().ok_or(Problem::WrongType("implied_port"))? != 0,
    };
    let port = match args.get("port") {
        None if implied_port => 0,
        None => return Err(Problem::Missing("port")),
        Some(v) => {
            let p = v.as_int().ok_or(Problem::WrongType("port"))?;
            u16::try_from(p).map_err(|_| Problem::OutOfRange("port"))?
        }
    };
    let token = bytes_at(args, "token")?;
    if token.len() > MAX_TOKEN_LEN {
        return Err(Problem::BadLength("token"));
    }
    Ok(Method::AnnouncePeer {
        info_hash,
        port,
        implied_port,
        token: token.to_vec(),
    })
}

fn decode_want(args: &Value) -> Result<Option<Want>, Problem> {
    let Some(want) = args.get("want") else {
        return Ok(None);
    };
    let list = want.as_list().ok_or(Problem::WrongType("want"))?;
    let mut w = Want::default();
    for item in list {
        match item.as_bytes() {
            Some(b"n4") => w.v4 = true,
            Some(b"n6") => w.v6 = true,
            _ => {} // other families BEP 32 may name later
        }
    }
    Ok(Some(w))
}

fn decode_reply(msg: &Value) -> Result<Reply, Problem> {
    let r = msg.get("r").ok_or(Problem::Missing("r"))?;
    if r.as_dict().is_none() {
        return Err(Problem::WrongType("r"));
    }
    let id = id_at(r, "id")?;
    let nodes = compact_nodes(r, "nodes", NODE4_LEN)?;
    let nodes6 = compact_nodes(r, "nodes6", NODE6_LEN)?;
    let values = match r.get("values") {
        None => Vec::new(),
        Some(v) => v
            .as_list()
            .ok_or(Problem::WrongType("values"))?
            .iter()
            .map(|p| {
                p.as_bytes()
                    .ok_or(Problem::WrongType("values"))
                    .and_then(|b| compact_addr(b).ok_or(Problem::BadLength("values")))
            })
            .collect::<Result<_, _>>()?,
    };
    let token = match r.get("token") {
        None => None,
        Some(t) => {
            let t = t.as_bytes().ok_or(Problem::WrongType("token"))?;
            if t.len() > MAX_TOKEN_LEN {
                return Err(Problem::BadLength("token"));
            }
            Some(t.to_vec())
        }
    };
    Ok(Reply {
        id,
        nodes,
        nodes6,
        values,
        token,
    })
}

fn compact_nodes(r: &Value, key: &'static str, len: usize) -> Result<Vec<CompactNode>, Problem> {
    let Some(v) = r.get(key) else {
        return Ok(Vec::new());
    };
    let bytes = v.as_bytes().ok_or(Problem::WrongType(key))?;
    let chunks = bytes.chunks_exact(len);
    if !chunks.remainder().is_empty() {
        return Err(Problem::BadLength(key));
    }
    chunks
        .map(|c| {
            let (id, addr) = c.split_at(ID_LEN);
            Ok(CompactNode {
                id: NodeId::from_slice(id).ok_or(Problem::BadLength(key))?,
                addr: compact_addr(addr).ok_or(Problem::BadLength(key))?,
            })
        })
        .collect()
}

fn decode_error(msg: &Value) -> Result<ErrorReply, Problem> {
    let e = msg.get("e").ok_or(Problem::Missing("e"))?;
    let list = e.as_list().ok_or(Problem::WrongType("e"))?;
    let (Some(code), Some(text)) = (list.first(), list.get(1)) else {
        return Err(Problem::BadLength("e"));
    };
    let code = code.as_int().ok_or(Problem::WrongType("e"))?;
    let text = text.as_bytes().ok_or(Problem::WrongType("e"))?;
    Ok(ErrorReply {
        code,
        text: text.get(..MAX_ERROR_TEXT).unwrap_or(text).to_vec(),
    })
}

/// A compact address: 4 bytes of IPv4 or 16 of IPv6, then the port, big
/// endian.
pub fn compact_addr(b: &[u8]) -> Option<SocketAddr> {
    match b.len() {
        6 => {
            let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            Some(SocketAddr::new(
                IpAddr::V4(ip),
                u16::from_be_bytes([b[4], b[5]]),
            ))
        }
        18 => {
            let octets: [u8; 16] = b[..16].try_into().ok()?;
            let port = u16::from_be_bytes([b[16], b[17]]);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(octets),
                port,
                0,
                0,
            )))
        }
        _ => None,
    }
}

/// Appends `addr` in compact form: 6 bytes for IPv4 (an IPv4-mapped IPv6
/// address included), 18 for IPv6.
pub fn write_compact_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr.ip().to_canonical() {
        IpAddr::V4(v4) => out.extend_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out.extend_from_slice(&v6.octets()),
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

fn compact(addr: SocketAddr) -> Value {
    let mut b = Vec::with_capacity(18);
    write_compact_addr(&mut b, addr);
    Value::Bytes(b)
}

/// Compact node info for `nodes`, all in one string.
pub fn write_compact_nodes(nodes: &[CompactNode]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nodes.len() * NODE6_LEN);
    for n in nodes {
        out.extend_from_slice(&n.id.0);
        write_compact_addr(&mut out, n.addr);
    }
    out
}

fn key(k: &'static str) -> Key {
    Key::Borrowed(k.as_bytes())
}

fn id_value(id: &NodeId) -> Value {
    Value::Bytes(id.0.to_vec())
}

impl Message {
    /// Appends the message's canonical bencoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut top: Vec<(Key, Value)> = Vec::with_capacity(7);
        let y = match &self.body {
            Body::Query(q) => {
                top.push((key("a"), query_args(q)));
                top.push((key("q"), Value::str(q.method.name())));
                "q"
            }
            Body::Reply(r) => {
                top.push((key("r"), reply_dict(r)));
                "r"
            }
            Body::Error(e) => {
                top.push((
                    key("e"),
                    Value::List(vec![Value::Int(e.code), Value::Bytes(e.text.clone())]),
                ));
                "e"
            }
        };
        if let Some(ip) = self.ip {
            top.push((key("ip"), compact(ip)));
        }
        if self.read_only {
            top.push((key("ro"), Value::Int(1)));
        }
        top.push((key("t"), Value::Bytes(self.txid.clone())));
        if let Some(v) = &self.version {
            top.push((key("v"), Value::Bytes(v.clone())));
        }
        top.push((key("y"), Value::str(y)));
        // Every key is distinct and nesting is shallow: writing cannot fail.
        let _ = Value::Dict(top).write_to(out);
    }

    /// The message's canonical bencoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

fn query_args(q: &Query) -> Value {
    let mut a: Vec<(Key, Value)> = vec![(key("id"), id_value(&q.id))];
    match &q.method {
        Method::Ping => {}
        Method::FindNode { target } => a.push((key("target"), id_value(target))),
        Method::GetPeers { info_hash } => a.push((key("info_hash"), id_value(info_hash))),
        Method::AnnouncePeer {
            info_hash,
            port,
            implied_port,
            token,
        } => {
            if *implied_port {
                a.push((key("implied_port"), Value::Int(1)));
            }
            a.push((key("info_hash"), id_value(info_hash)));
            a.push((key("port"), Value::Int(i64::from(*port))));
            a.push((key("token"), Value::Bytes(token.clone())));
        }
    }
    if let Some(w) = q.want {
        let mut list = Vec::new();
        if w.v4 {
            list.push(Value::str("n4"));
        }
        if w.v6 {
            list.push(Value::str("n6"));
        }
        a.push((key("want"), Value::List(list)));
    }
    Value::Dict(a)
}

fn reply_dict(r: &Reply) -> Value {
    let mut d: Vec<(Key, Value)> = vec![(key("id"), id_value(&r.id))];
    if !r.nodes.is_empty() {
        d.push((key("nodes"), Value::Bytes(write_compact_nodes(&r.nodes))));
    }
    if !r.nodes6.is_empty() {
        d.push((key("nodes6"), Value::Bytes(write_compact_nodes(&r.nodes6))));
    }
    if let Some(t) = &r.token {
        d.push((key("token"), Value::Bytes(t.clone())));
    }
    if !r.values.is_empty() {
        d.push((
            key("values"),
            Value::List(r.values.iter().map(|a| compact(*a)).collect()),
        ));
    }
    Value::Dict(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(b: u8) -> NodeId {
        NodeId([b; 20])
    }

    fn msg(body: Body) -> Message {
        Message {
            txid: b"aa".to_vec(),
            version: Some(b"TP\x00\x01".to_vec()),
            ip: None,
            read_only: false,
            body,
        }
    }

    fn query(method: Method) -> Message {
        msg(Body::Query(Query {
            id: id(1),
            method,
            want: None,
        }))
    }

    fn round_trip(m: &Message) {
        let bytes = m.to_bytes();
        assert_eq!(
            &decode(&bytes).unwrap(),
            m,
            "{:?}",
            String::from_utf8_lossy(&bytes)
        );
    }

    #[test]
    fn every_message_kind_round_trips() {
        round_trip(&query(Method::Ping));
        round_trip(&query(Method::FindNode { target: id(2) }));
        round_trip(&query(Method::GetPeers { info_hash: id(3) }));
        for implied_port in [false, true] {
            round_trip(&query(Method::AnnouncePeer {
                info_hash: id(3),
                port: 6881,
                implied_port,
                token: b"tok".to_vec(),
            }));
        }
        let mut q = query(Method::FindNode { target: id(2) });
        if let Body::Query(q) = &mut q.body {
            q.want = Some(Want { v4: true, v6: true });
        }
        q.read_only = true;
        round_trip(&q);
        let v4: SocketAddr = "1.2.3.4:5".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:6881".parse().unwrap();
        let mut r = msg(Body::Reply(Reply {
            id: id(9),
            nodes: vec![CompactNode {
                id: id(4),
                addr: v4,
            }],
            nodes6: vec![CompactNode {
                id: id(5),
                addr: v6,
            }],
            values: vec![v4, v6],
            token: Some(b"12345678".to_vec()),
        }));
        r.ip = Some(v4);
        round_trip(&r);
        r.ip = Some(v6);
        r.version = None;
        round_trip(&r);
        round_trip(&msg(Body::Reply(Reply::bare(id(7)))));
        round_trip(&msg(Body::Error(ErrorReply {
            code: 203,
            text: b"bad token".to_vec(),
        })));
    }

    #[test]
    fn reads_a_bep5_example_and_writes_it_back_exactly() {
        let ping = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe";
        let m = decode(ping).unwrap();
        assert_eq!(m.txid, b"aa");
        assert!(
            matches!(&m.body, Body::Query(q) if q.method == Method::Ping && q.id.0 == *b"abcdefghij0123456789")
        );
        assert_eq!(m.to_bytes(), ping.to_vec());
        let err = b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee";
        let m = decode(err).unwrap();
        assert_eq!(
            m.body,
            Body::Error(ErrorReply {
                code: 201,
                text: b"A Generic Error Ocurred".to_vec()
            })
        );
        assert_eq!(m.to_bytes(), err.to_vec());
    }

    fn dropped(bytes: &[u8]) -> Problem {
        match decode(bytes) {
            Err(ParseError::Drop(p)) => p,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bytes)),
        }
    }

    fn answered(bytes: &[u8]) -> (ErrorCode, Problem) {
        match decode(bytes) {
            Err(ParseError::Answer {
                txid,
                code,
                problem,
            }) => {
                assert_eq!(txid, b"aa");
                (code, problem)
            }
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bytes)),
        }
    }

    const ID: &str = "2:id20:abcdefghij0123456789";

    #[test]
    fn malformed_queries_are_answered_with_203_or_204() {
        let q = |args: &str, method: &str| {
            format!("d1:ad{ID}{args}e1:q{}:{method}1:t2:aa1:y1:qe", method.len())
        };
        let cases = [
            (q("", "find_node"), Problem::Missing("target")),
            (
                q("6:target3:abc", "find_node"),
                Problem::BadLength("target"),
            ),
            (q("6:targeti1e", "find_node"), Problem::WrongType("target")),
            (q("", "get_peers"), Problem::Missing("info_hash")),
            (
                q(
                    "9:info_hash20:abcdefghij01234567894:porti70000e5:token1:x",
                    "announce_peer",
                ),
                Problem::OutOfRange("port"),
            ),
            (
                q(
                    "9:info_hash20:abcdefghij01234567895:token1:x",
                    "announce_peer",
                ),
                Problem::Missing("port"),
            ),
            (
                q(
                    "9:info_hash20:abcdefghij01234567894:porti1e",
                    "announce_peer",
                ),
                Problem::Missing("token"),
            ),
            (q("4:want2:n4", "ping"), Problem::WrongType("want")),
            (
                "d1:ad2:id3:abce1:q4:ping1:t2:aa1:y1:qe".to_string(),
                Problem::BadLength("id"),
            ),
            (
                "d1:q4:ping1:t2:aa1:y1:qe".to_string(),
                Problem::Missing("a"),
            ),
            (
                "d1:ai1e1:q4:ping1:t2:aa1:y1:qe".to_string(),
                Problem::WrongType("a"),
            ),
            (format!("d1:ad{ID}e1:t2:aa1:y1:qe"), Problem::Missing("q")),
        ];
        for (bytes, problem) in cases {
            assert_eq!(
                answered(bytes.as_bytes()),
                (ErrorCode::Protocol, problem),
                "{bytes}"
            );
        }
        let (code, _) = answered(q("", "vote").as_bytes());
        assert_eq!(code, ErrorCode::MethodUnknown);
        // implied_port makes port optional.
        let ok = q(
            "12:implied_porti1e9:info_hash20:abcdefghij01234567895:token1:x",
            "announce_peer",
        );
        assert!(decode(ok.as_bytes()).is_ok());
    }

    #[test]
    fn malformed_replies_and_non_messages_are_dropped() {
        let r = |inner: &str| format!("d1:rd{ID}{inner}e1:t2:aa1:y1:re");
        assert_eq!(
            dropped(r("5:nodes25:0123456789012345678901234").as_bytes()),
            Problem::BadLength("nodes")
        );
        assert_eq!(
            dropped(r(&format!("6:nodes6{}:{}", 37, "x".repeat(37))).as_bytes()),
            Problem::BadLength("nodes6")
        );
        assert_eq!(
            dropped(r("6:valuesl5:abcdee").as_bytes()),
            Problem::BadLength("values")
        );
        assert_eq!(
            dropped(r("6:valuesli1ee").as_bytes()),
            Problem::WrongType("values")
        );
        assert_eq!(
            dropped(r("6:values3:abc").as_bytes()),
            Problem::WrongType("values")
        );
        assert_eq!(
            dropped(r("5:tokeni1e").as_bytes()),
            Problem::WrongType("token")
        );
        let long = format!(
            "5:token{}:{}",
            MAX_TOKEN_LEN + 1,
            "x".repeat(MAX_TOKEN_LEN + 1)
        );
        assert_eq!(dropped(r(&long).as_bytes()), Problem::BadLength("token"));
        assert_eq!(
            dropped(b"d1:rd2:id2:abe1:t2:aa1:y1:re"),
            Problem::BadLength("id")
        );
        assert_eq!(dropped(b"d1:t2:aa1:y1:re"), Problem::Missing("r"));
        assert_eq!(
            dropped(b"d1:eli201ee1:t2:aa1:y1:ee"),
            Problem::BadLength("e")
        );
        assert_eq!(dropped(b"d1:e3:abc1:t2:aa1:y1:ee"), Problem::WrongType("e"));
        assert_eq!(dropped(b"d1:t2:aa1:y1:xe"), Problem::UnknownKind);
        assert_eq!(dropped(b"d1:y1:qe"), Problem::Missing("t"));
        assert_eq!(dropped(b"d1:ti1e1:y1:qe"), Problem::WrongType("t"));
        assert_eq!(
            dropped(b"d1:t17:aaaaaaaaaaaaaaaaa1:y1:qe"),
            Problem::BadLength("t")
        );
        assert_eq!(dropped(b"d1:t2:aae"), Problem::Missing("y"));
        assert_eq!(dropped(b"le"), Problem::NotDict);
        assert!(matches!(dropped(b"d1:t2:aa"), Problem::Bencode(_)));
        let big = vec![b'd'; MAX_DATAGRAM + 1];
        assert_eq!(dropped(&big), Problem::Oversize(MAX_DATAGRAM + 1));
        // Unknown keys are ignored; an odd-length ip or a long v is
        // dropped from the message, not fatal.
        let m = decode(
            r("1:pi5e")
                .replace("1:t2:aa", "2:ip3:abc1:t2:aa")
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(m.ip, None);
    }

    #[test]
    fn compact_addresses_both_families() {
        let v4: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:80".parse().unwrap();
        let mut out = Vec::new();
        write_compact_addr(&mut out, mapped);
        assert_eq!(out, [10, 0, 0, 1, 0, 80]);
        assert_eq!(compact_addr(&out), Some(v4));
        assert_eq!(compact_addr(&out[..5]), None);
    }
}
