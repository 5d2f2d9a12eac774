//! Wire codec costs: one 4 MiB `Chunk` message (the data path) and 10,000 small `Entry`
//! messages (the manifest stream), each encoded with `encode_parts` and decoded back through
//! `FrameDecoder` and `Message::decode`.
//!
//! Run: `cargo bench --bench frames` (add `-- --quick` for a fast check).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use haul_proto::{
    Chunk, DEFAULT_CHUNK_SIZE, Entry, EntryKind, FrameDecoder, Limits, Message, Meta,
};

/// Entries in the manifest benchmark.
const ENTRIES: u64 = 10_000;

/// Pushes `parts` into a fresh decoder and decodes every frame; returns how many decoded.
fn decode_all(parts: &[&[u8]], limits: &Limits) -> usize {
    let mut decoder = FrameDecoder::new(limits.clone());
    let total = parts.iter().map(|p| p.len()).sum();
    decoder.reserve(total);
    for part in parts {
        decoder.push(part);
    }
    let mut count = 0;
    while let Some(frame) = decoder.next_frame().expect("benchmark frames are valid") {
        black_box(Message::decode(frame, limits).expect("benchmark messages are valid"));
        count += 1;
    }
    count
}

fn chunk_message(c: &mut Criterion) {
    let data: Vec<u8> = (0..DEFAULT_CHUNK_SIZE).map(|i| i as u8).collect();
    let msg = Message::Chunk(Chunk {
        id: 7,
        index: 3,
        hash: [1; 32],
        zero: false,
        compressed: false,
        data: data.into(),
    });
    let limits = Limits::for_chunk_size(DEFAULT_CHUNK_SIZE);
    let (head, payload) = msg.encode_parts();

    let mut group = c.benchmark_group("frames");
    // Encoding a chunk only builds its header: the payload is shared, not copied, so a
    // bytes-per-second figure would be meaningless here.
    group.bench_function("encode_parts 4 MiB chunk", |b| {
        b.iter(|| black_box(&msg).encode_parts())
    });
    group.throughput(Throughput::Bytes(u64::from(DEFAULT_CHUNK_SIZE)));
    // Decoding copies the payload once into the decoder's buffer, as reading a stream does.
    group.bench_function("decode 4 MiB chunk", |b| {
        b.iter(|| decode_all(&[black_box(&head[..]), black_box(&payload[..])], &limits))
    });
    group.finish();
}

fn entry_messages(c: &mut Criterion) {
    let msgs: Vec<Message> = (1..=ENTRIES)
        .map(|id| {
            Message::Entry(Entry {
                id,
                kind: EntryKind::File,
                path: format!("dir{:03}/file{id:05}.dat", id % 100)
                    .into_bytes()
                    .into(),
                size: id * 4096,
                meta: Meta {
                    mode: 0o644,
                    mtime_sec: 1_700_000_000 + id as i64,
                    mtime_nsec: 5,
                },
                link_target: Default::default(),
                uid: 0,
                gid: 0,
                rdev: 0,
                source_stamp: 0,
                xattrs: Vec::new(),
            })
        })
        .collect();
    let limits = Limits::default();
    let mut wire = Vec::new();
    for msg in &msgs {
        let (head, payload) = msg.encode_parts();
        wire.extend_from_slice(&head);
        wire.extend_from_slice(&payload);
    }

    let mut group = c.benchmark_group("frames");
    group.throughput(Throughput::Elements(ENTRIES));
    group.bench_function("encode_parts 10k entries", |b| {
        b.iter_batched(
            || Vec::with_capacity(wire.len()),
            |mut out| {
                for msg in &msgs {
                    let (head, payload) = msg.encode_parts();
                    out.extend_from_slice(&head);
                    out.extend_from_slice(&payload);
                }
                out
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("decode 10k entries", |b| {
        b.iter(|| {
            let n = decode_all(&[black_box(&wire[..])], &limits);
            assert_eq!(n as u64, ENTRIES);
        })
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
    targets = chunk_message, entry_messages
}
criterion_main!(benches);
