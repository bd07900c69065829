//! Message stream encryption's costs: RC4 over 16 KiB blocks (what every
//! block of an RC4 stream pays, beside a plain copy of the same bytes, the
//! least any user-space transform costs) and a whole handshake, both sides
//! (two Diffie-Hellman exponentiations each). `scripts/bench-mse` sets
//! these beside `openssl speed rc4` in one run.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringseed_engine::proto::mse::{Cipher, MseHandshake, CRYPTO_PLAINTEXT, CRYPTO_RC4};

const BLOCK: usize = 16 << 10;

fn rc4(c: &mut Criterion) {
    let mut group = c.benchmark_group("mse");
    group.throughput(Throughput::Bytes(BLOCK as u64));
    let mut block = vec![0x5au8; BLOCK];
    let mut cipher = Cipher::new(&[7; 20]);
    group.bench_function("rc4 16 KiB block", |b| {
        b.iter(|| cipher.apply(black_box(&mut block)))
    });
    let source = vec![0xa5u8; BLOCK];
    group.bench_function("copy 16 KiB block (reference)", |b| {
        b.iter(|| block.copy_from_slice(black_box(&source)))
    });
    group.finish();
}

fn handshake(c: &mut Criterion) {
    let info_hash = [9u8; 20];
    let skey = |req2: &[u8; 20]| {
        (*req2 == ringseed_engine::proto::mse::req2_hash(&info_hash)).then_some(info_hash)
    };
    let mut group = c.benchmark_group("mse");
    group.sample_size(20);
    group.bench_function("handshake, both sides", |b| {
        b.iter(|| {
            let mut random = ringseed_engine::rng::fill_random;
            let mut a = MseHandshake::initiator(info_hash, CRYPTO_RC4, vec![0; 68], &mut random);
            let mut z = MseHandshake::responder(CRYPTO_RC4 | CRYPTO_PLAINTEXT, &mut random);
            let (mut to_z, mut to_a) = (Vec::new(), Vec::new());
            a.take_output(&mut to_z);
            loop {
                let done_z = z.receive(&to_z, &skey).unwrap();
                to_z.clear();
                z.take_output(&mut to_a);
                let done_a = a.receive(&to_a, &skey).unwrap();
                to_a.clear();
                a.take_output(&mut to_z);
                if done_a.is_some() {
                    break black_box(done_z.is_some());
                }
            }
        })
    });
    group.finish();
}

criterion_group!(benches, rc4, handshake);
criterion_main!(benches);
