//! The chunk and file hashes agree with plain BLAKE3 and with `b3sum`.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use haul_manifest::{chunk_hash, file_hash, hash_file, to_hex, zero_chunk_hash};
use haul_proto::{ChunkLayout, Hash};
use proptest::prelude::*;

const CHUNK: u64 = 64 << 10;

/// Deterministic pseudo-random bytes (xorshift), so large inputs cost no proptest shrinking.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn chunk_hashes(layout: &ChunkLayout, data: &[u8]) -> Vec<Hash> {
    (0..layout.count())
        .map(|i| {
            let start = layout.offset(i) as usize;
            let len = layout.len(i).unwrap() as usize;
            chunk_hash(layout, i, &data[start..start + len])
        })
        .collect()
}

fn sizes() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(CHUNK - 1),
        Just(CHUNK),
        Just(CHUNK + 1),
        Just(2 * CHUNK),
        Just(3 * CHUNK),
        Just(4 * CHUNK + 1),
        Just(8 * CHUNK),
        0..(9 * CHUNK),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn chunks_combine_to_the_blake3_hash(size in sizes(), seed in any::<u64>()) {
        let data = bytes(seed, size as usize);
        let layout = ChunkLayout::new(size, CHUNK as u32);
        let hashes = chunk_hashes(&layout, &data);
        prop_assert_eq!(hashes.len() as u64, layout.count());
        prop_assert_eq!(file_hash(&layout, &hashes), Some(*blake3::hash(&data).as_bytes()));
    }

    #[test]
    fn zero_chunks_hash_like_zero_buffers(chunks in 1u64..7, tail in 0u64..CHUNK, shift in 0u32..3) {
        let chunk_size = CHUNK << shift;
        let size = (chunks - 1) * chunk_size + tail.max(1).min(chunk_size);
        let layout = ChunkLayout::new(size, chunk_size as u32);
        for index in 0..layout.count() {
            let zeros = vec![0u8; layout.len(index).unwrap() as usize];
            prop_assert_eq!(zero_chunk_hash(&layout, index), chunk_hash(&layout, index, &zeros));
        }
    }
}

#[test]
fn one_chunk_is_the_root_hash() {
    for size in [1, 1000, 1025, CHUNK] {
        let data = bytes(size, size as usize);
        let layout = ChunkLayout::new(size, CHUNK as u32);
        assert_eq!(
            chunk_hash(&layout, 0, &data),
            *blake3::hash(&data).as_bytes()
        );
    }
}

#[test]
fn zero_chunks_at_default_size_and_scattered_indices() {
    // A 4 MiB chunk is larger than the static zero buffer, so this feeds it in pieces.
    let chunk_size = haul_proto::DEFAULT_CHUNK_SIZE;
    let layout = ChunkLayout::new(1 << 40, chunk_size);
    let zeros = vec![0u8; chunk_size as usize];
    for index in [0, 1, 2, 3, 7, 1000, layout.count() - 1] {
        assert_eq!(
            zero_chunk_hash(&layout, index),
            chunk_hash(&layout, index, &zeros)
        );
    }
    // Chunk values depend on the offset, so two holes never share a hash.
    assert_ne!(zero_chunk_hash(&layout, 1), zero_chunk_hash(&layout, 2));
}

#[test]
fn file_hash_rejects_the_wrong_count() {
    let layout = ChunkLayout::new(3 * CHUNK, CHUNK as u32);
    assert_eq!(file_hash(&layout, &[[0; 32]; 2]), None);
    assert_eq!(file_hash(&layout, &[[0; 32]; 4]), None);
    let empty = ChunkLayout::new(0, CHUNK as u32);
    assert_eq!(file_hash(&empty, &[]), Some(*blake3::hash(b"").as_bytes()));
    assert_eq!(file_hash(&empty, &[[0; 32]]), None);
}

#[test]
fn misfit_buffers_never_panic_and_never_verify() {
    let data = bytes(9, 3 * CHUNK as usize);
    let layout = ChunkLayout::new(data.len() as u64, CHUNK as u32);
    let right = chunk_hash(&layout, 1, &data[CHUNK as usize..2 * CHUNK as usize]);
    // Empty, short, long, and past-the-end chunks: hazmat would panic on some of these.
    let wrong = [
        chunk_hash(&layout, 1, &[]),
        chunk_hash(&layout, 1, &data[CHUNK as usize..2 * CHUNK as usize - 1]),
        chunk_hash(&layout, 1, &data[CHUNK as usize..]),
        chunk_hash(&layout, 3, &data[..10]),
        chunk_hash(&layout, u64::MAX, &data[..10]),
        zero_chunk_hash(&layout, 3),
        zero_chunk_hash(&layout, u64::MAX),
    ];
    for hash in wrong {
        assert_ne!(hash, right);
    }
    // A chunk size that is not a whole BLAKE3 subtree cannot be assembled into a file hash.
    let tiny = ChunkLayout::new(2048, 512);
    let hashes = chunk_hashes(&tiny, &data[..2048]);
    assert_eq!(file_hash(&tiny, &hashes), None);
}

#[test]
fn hex_is_lower_case() {
    let hash = blake3::hash(b"haul");
    assert_eq!(to_hex(hash.as_bytes()), hash.to_hex().as_str());
    assert_eq!(to_hex(&[0xab; 32]), "ab".repeat(32));
}

/// What `b3sum` prints for `path`, if it is installed.
fn b3sum(path: &Path) -> Option<String> {
    let out = Command::new("b3sum")
        .arg("--no-names")
        .arg(path)
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "b3sum failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).unwrap().trim().to_owned())
}

fn check_file(path: &Path, expected: &[u8]) {
    let hash = hash_file(path).unwrap();
    assert_eq!(
        hash,
        *blake3::hash(expected).as_bytes(),
        "{}",
        path.display()
    );
    if let Some(printed) = b3sum(path) {
        assert_eq!(to_hex(&hash), printed, "{}", path.display());
    }
}

#[test]
fn hash_file_equals_blake3_and_b3sum() {
    let dir = tempfile::tempdir().unwrap();
    // Several default (4 MiB) chunks with a short tail, one chunk, exactly one chunk, empty.
    for (name, len) in [
        ("big", (9 << 20) + 12345),
        ("small", 777),
        ("exact", 4 << 20),
        ("empty", 0),
    ] {
        let data = bytes(len as u64, len);
        let path = dir.path().join(name);
        std::fs::write(&path, &data).unwrap();
        check_file(&path, &data);
    }
}

#[test]
fn hash_file_reads_holes_as_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sparse");
    let mut file = std::fs::File::create(&path).unwrap();
    file.set_len(21 << 20).unwrap();
    let middle = bytes(5, 1 << 20);
    std::os::unix::fs::FileExt::write_all_at(&file, &middle, 9 << 20).unwrap();
    file.flush().unwrap();
    let mut expected = vec![0u8; 21 << 20];
    expected[9 << 20..10 << 20].copy_from_slice(&middle);
    check_file(&path, &expected);
}

#[test]
fn hash_file_reports_a_missing_file() {
    let err = hash_file(Path::new("/nonexistent/haul/file")).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
}
