//! SHA-1 hot paths: the backend ringseed uses (RustCrypto `sha1`, SHA-NI
//! selected at run time) against a portable reference (`sha1_smol`) on block,
//! piece and large-piece inputs, and piece hashing of a whole file on one
//! thread and on every core.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringseed_engine::io::files::DataPaths;
use ringseed_engine::io::hasher::{hash_pieces, thread_count};
use ringseed_engine::proto::layout::Layout;

const SIZES: [(&str, usize); 3] = [
    ("16KiB", 16 << 10),
    ("256KiB", 256 << 10),
    ("4MiB", 4 << 20),
];

fn sha1_backends(c: &mut Criterion) {
    let mut group = c.benchmark_group("sha1");
    for (label, size) in SIZES {
        let data = vec![0xa5u8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(
            BenchmarkId::new("ringseed (sha1 crate, runtime SHA-NI)", label),
            &data,
            |b, d| b.iter(|| ringseed_engine::hash::sha1(black_box(d))),
        );
        group.bench_with_input(
            BenchmarkId::new("sha1_smol (portable)", label),
            &data,
            |b, d| b.iter(|| sha1_smol::Sha1::from(black_box(d)).digest().bytes()),
        );
    }
    group.finish();
}

fn file_hashing(c: &mut Criterion) {
    const FILE_BYTES: usize = 64 << 20;
    const PIECE: u64 = 256 << 10;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    let data: Vec<u8> = (0..FILE_BYTES).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(&path, data).unwrap();
    let layout = Layout::from_files(PIECE, [(FILE_BYTES as u64, false)]);
    let paths = DataPaths { files: vec![path] };

    let mut group = c.benchmark_group("hash_pieces 64MiB file (page cache)");
    group.throughput(Throughput::Bytes(FILE_BYTES as u64));
    group.sample_size(10);
    let cores = thread_count(None);
    for threads in [1, cores] {
        group.bench_function(BenchmarkId::new("threads", threads), |b| {
            b.iter(|| hash_pieces(&layout, &paths, threads, &()))
        });
    }
    group.finish();
}

criterion_group!(benches, sha1_backends, file_hashing);
criterion_main!(benches);
