//! Micro-benchmarks of the sans-IO core: framing, decoding, encoding, and
//! one whole message through a session (decode, dispatch, reply).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tripcd::codec::{decode, split_frame, Value};
use tripcd::config::Config;
use tripcd::registry::{Registry, Settings};
use tripcd::server::Server;
use tripcd::service::Service;

fn framing(c: &mut Criterion) {
    let frame = b"0000000Dl4:noop0:i1ee";
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Elements(1));
    g.bench_function("split_noop", |b| {
        b.iter(|| split_frame(black_box(frame), 16 << 20))
    });
    let big: Vec<u8> = {
        let mut v = b"00100000".to_vec();
        v.resize(8 + 0x10_0000, b'x');
        v
    };
    g.bench_function("split_1MiB_incomplete", |b| {
        b.iter(|| split_frame(black_box(&big[..big.len() - 1]), 16 << 20))
    });
    g.finish();
}

fn decoding(c: &mut Criterion) {
    let noop = b"l4:noop0:i1ee";
    let status = b"l10:get-statusd2:idli4ei7ei2ee4:typel5:state9:completedeei9ee";
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("noop", |b| b.iter(|| decode(black_box(noop))));
    g.bench_function("get_status", |b| b.iter(|| decode(black_box(status))));
    g.finish();
}

fn encoding(c: &mut Criterion) {
    let reply = Value::List(
        (0..100)
            .map(|i| {
                Value::dict([
                    ("id", Value::Int(i)),
                    ("state", Value::str("seeding")),
                    ("completed", Value::Int(123_456_789)),
                ])
            })
            .collect(),
    );
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("succeeded_tagged", |b| {
        b.iter(|| {
            tripcd::codec::bencode::encode_message(
                b"succeeded",
                black_box(&Value::empty()),
                Some(7),
            )
        })
    });
    g.bench_function("status_100_torrents", |b| {
        b.iter(|| tripcd::codec::bencode::encode_message(b"status", black_box(&reply), Some(7)))
    });
    g.finish();
}

fn dispatch(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(dir.path(), Settings::defaults("/tmp".into())).unwrap();
    let mut server = Server::new(Service::new(reg), Config::default());
    let now = std::time::Instant::now();
    let id = server
        .connect(tripcd::front::FrontKind::Ipc, None, now)
        .expect("the IPC front is always served");
    server.receive(id, &tripcd::client::version_frame(1, 2), now);
    let n = server.output(id).len();
    server.consume_output(id, n);
    let noop = b"0000000Dl4:noop0:i1ee";
    let get_port = b"00000011l8:get-port0:i3ee";
    let mut g = c.benchmark_group("session");
    g.throughput(Throughput::Elements(1));
    for (name, msg) in [
        ("noop_tagged", &noop[..]),
        ("get_port_tagged", &get_port[..]),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                server.receive(id, black_box(msg), now);
                server.end_turn(now);
                let n = server.output(id).len();
                server.consume_output(id, n);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, framing, decoding, encoding, dispatch);
criterion_main!(benches);
