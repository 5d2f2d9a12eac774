//! BLAKE3 hashing costs per chunk: what one 4 MiB chunk costs to hash (as a subtree of a large
//! file, and as a whole single-chunk file), what assembling a file hash from 256 chunk values
//! costs, and what a hole costs without a buffer.
//!
//! Run: `cargo bench --bench hashing` (add `-- --quick` for a fast check).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use haul_manifest::{chunk_hash, file_hash, zero_chunk_hash};
use haul_proto::{ChunkLayout, DEFAULT_CHUNK_SIZE, Hash};

/// Chunks in the "large file" layout: 256 × 4 MiB = 1 GiB.
const CHUNKS: u64 = 256;

fn chunk_hashes(c: &mut Criterion) {
    let size = DEFAULT_CHUNK_SIZE as usize;
    // Not all zeros, so no shortcut in the hasher could flatter the number.
    let data: Vec<u8> = (0..size).map(|i| (i as u8) ^ (i >> 12) as u8).collect();
    let large = ChunkLayout::new(CHUNKS * size as u64, DEFAULT_CHUNK_SIZE);
    let single = ChunkLayout::new(size as u64, DEFAULT_CHUNK_SIZE);

    let mut group = c.benchmark_group("hashing");
    group.throughput(Throughput::Bytes(size as u64));
    group.bench_function("chunk_hash 4 MiB subtree", |b| {
        b.iter(|| chunk_hash(black_box(&large), black_box(1), black_box(&data)))
    });
    group.bench_function("chunk_hash 4 MiB whole file", |b| {
        b.iter(|| chunk_hash(black_box(&single), black_box(0), black_box(&data)))
    });
    group.bench_function("zero_chunk_hash 4 MiB", |b| {
        b.iter(|| zero_chunk_hash(black_box(&large), black_box(1)))
    });
    group.finish();

    // file_hash only merges chaining values, so their content does not matter for its cost.
    let hashes: Vec<Hash> = (0..CHUNKS)
        .map(|i| {
            let mut h = [0x5a; 32];
            h[..8].copy_from_slice(&i.to_le_bytes());
            h
        })
        .collect();
    let mut group = c.benchmark_group("hashing");
    group.throughput(Throughput::Elements(CHUNKS));
    group.bench_function("file_hash of 256 chunk hashes", |b| {
        b.iter(|| file_hash(black_box(&large), black_box(&hashes)))
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = chunk_hashes
}
criterion_main!(benches);
