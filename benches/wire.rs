//! The per-message hot paths of seeding: decoding peer messages, encoding
//! piece headers, and a session validating and queueing requests.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringseed_engine::policy::peer_session::{PeerSession, SessionConfig, TorrentView};
use ringseed_engine::proto::wire::{self, BlockRequest, Handshake, Message, Reserved};
use ringseed_engine::InfoHash;

const MESSAGES: u32 = 10_000;

struct Torrent;

impl TorrentView for Torrent {
    fn num_pieces(&self) -> u32 {
        4096
    }
    fn piece_len(&self, _: u32) -> u32 {
        1 << 20
    }
    fn info_bytes(&self) -> &[u8] {
        b"d4:name1:xe"
    }
}

fn requests() -> Vec<u8> {
    let mut buf = Vec::new();
    for i in 0..MESSAGES {
        let req = BlockRequest {
            piece: i % 4096,
            offset: (i % 64) * 16384,
            length: 16384,
        };
        wire::encode(&Message::Request(req), &mut buf);
    }
    buf
}

fn decode(c: &mut Criterion) {
    let buf = requests();
    let mut group = c.benchmark_group("wire");
    group.throughput(Throughput::Elements(u64::from(MESSAGES)));
    group.bench_function("decode 10k requests", |b| {
        b.iter(|| {
            let mut at = 0;
            let mut n = 0u32;
            while let Some((msg, used)) = wire::decode(black_box(&buf[at..]), 1 << 20).unwrap() {
                black_box(msg);
                at += used;
                n += 1;
            }
            n
        })
    });
    group.bench_function("encode 10k piece headers", |b| {
        b.iter(|| {
            let mut acc = 0u8;
            for i in 0..MESSAGES {
                acc ^= wire::piece_header(black_box(i), i * 16384, 16384)[12];
            }
            acc
        })
    });
    group.finish();
}

fn request_handling(c: &mut Criterion) {
    let buf = requests();
    let peer = Handshake {
        reserved: Reserved::OURS,
        info_hash: InfoHash([1; 20]),
        peer_id: [2; 20],
    };
    let config = SessionConfig {
        max_queued_requests: MESSAGES,
        ..SessionConfig::default()
    };
    let mut group = c.benchmark_group("seed session");
    group.throughput(Throughput::Elements(u64::from(MESSAGES)));
    group.bench_function("validate, queue and pop 10k requests", |b| {
        b.iter_batched(
            || {
                let mut s = PeerSession::new(&peer, None, &Torrent, config.clone());
                s.set_choking(false);
                s
            },
            |mut session| {
                let mut at = 0;
                while let Some((msg, used)) = wire::decode(&buf[at..], 1 << 20).unwrap() {
                    session.on_message(msg, &Torrent).unwrap();
                    at += used;
                }
                let mut served = 0u64;
                while let Some(req) = session.pop_request() {
                    served += u64::from(req.length);
                }
                served
            },
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, decode, request_handling);
criterion_main!(benches);
