//! The piece picker on a big torrent: 100 000 pieces of 1 MiB (a 100 GB
//! torrent) with 1000 peers announced, half of which have a random half of
//! the pieces. Measures a request batch (32 blocks) for one peer in the
//! rarest-first phase, and the bookkeeping of a block's arrival.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ringseed_engine::policy::bitfield::Bitfield;
use ringseed_engine::policy::picker::{Picker, PickerConfig, BLOCK_LEN};

const PIECES: u32 = 100_000;
const PIECE_LEN: u64 = 1 << 20;
const PEERS: u64 = 1000;

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn swarm() -> (Picker, Vec<Bitfield>) {
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut picker = Picker::new(
        PIECE_LEN,
        PIECE_LEN * u64::from(PIECES),
        Bitfield::new(PIECES),
        Bitfield::full(PIECES),
        PickerConfig {
            random_first: 0,
            ..PickerConfig::default()
        },
    );
    let peers: Vec<Bitfield> = (0..PEERS)
        .map(|i| {
            if i % 2 == 0 {
                Bitfield::full(PIECES)
            } else {
                let mut b = Bitfield::new(PIECES);
                for p in 0..PIECES {
                    if xorshift(&mut rng) % 2 == 0 {
                        b.set(p);
                    }
                }
                b
            }
        })
        .collect();
    for has in &peers {
        picker.add_peer(has);
    }
    (picker, peers)
}

fn bench(c: &mut Criterion) {
    let (picker, peers) = swarm();
    let mut group = c.benchmark_group("picker_100k_pieces_1000_peers");
    group.throughput(Throughput::Elements(32));
    group.bench_function("pick_32_blocks", |b| {
        let mut rng = 1u64;
        b.iter_batched_ref(
            || picker.clone(),
            |p| {
                let peer = xorshift(&mut rng) % PEERS;
                let reqs = p.pick(peer, &peers[peer as usize], 32, &mut |n| {
                    (xorshift(&mut rng) % n as u64) as usize
                });
                assert_eq!(reqs.len(), 32);
                reqs
            },
            BatchSize::LargeInput,
        )
    });
    group.throughput(Throughput::Elements(u64::from(
        PIECE_LEN as u32 / BLOCK_LEN,
    )));
    group.bench_function("blocks_of_one_piece_arrive", |b| {
        b.iter_batched_ref(
            || {
                let mut p = picker.clone();
                let reqs = p.pick(0, &peers[0], 64, &mut |_| 0);
                (p, reqs)
            },
            |(p, reqs)| {
                for r in reqs.iter() {
                    p.on_block(0, r);
                }
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
