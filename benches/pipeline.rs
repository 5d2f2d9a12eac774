//! The whole transfer pipeline without a network: `haul copy` (`haul_engine::jobs::copy`) of
//! a tree into a fresh destination, sender and embedded receiver in this process over the
//! in-process link. Every stage a push runs is in it (scan, read, hash, frame, the session
//! checks, verify, write, metadata, the final flush) except QUIC; the `via QUIC` variants run
//! the same copy over loopback QUIC (`--via-quic`), so the difference between the two is what
//! encryption, packetisation and the kernel's UDP path cost.
//!
//! Source and destinations live in `/dev/shm` when it exists (a tmpfs), so the numbers are
//! haul's CPU cost, not a disk's; elsewhere they fall back to the temporary directory. Each
//! measured copy goes into a new directory, removed afterwards (untimed).
//!
//! Run: `cargo bench --bench pipeline` (add `-- --quick` for a fast check). The side-by-side
//! comparison with cp, rsync and tar is `benches/compare.sh`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use haul_engine::{Progress, TransferOptions, jobs, no_events};
use haul_testing::TreeBuilder;

/// The one-big-file tree: a single file of random bytes.
const BIG_BYTES: usize = 256 << 20;
/// The small-files tree: this many files of 1-16 KiB over [`SMALL_DIRS`] directories.
const SMALL_FILES: usize = 5_000;
const SMALL_DIRS: usize = 50;

fn scratch_base() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

fn build_big(src: &Path) -> u64 {
    TreeBuilder::new(src, 1).file("big.bin", BIG_BYTES);
    BIG_BYTES as u64
}

fn build_small(src: &Path) -> u64 {
    let mut tree = TreeBuilder::new(src, 2);
    for i in 0..SMALL_FILES {
        // 1-16 KiB, spread evenly (7919 is prime, so the lengths cycle through the range).
        let len = 1024 + (i * 7919) % (15 << 10);
        tree.file(format!("d{:02}/f{i:05}.bin", i % SMALL_DIRS), len);
    }
    SMALL_FILES as u64
}

/// Times `iters` fresh copies of `src`, each into a new directory under `base`.
fn time_copies(
    rt: &tokio::runtime::Runtime,
    src: &Path,
    base: &Path,
    via_quic: bool,
    iters: u64,
) -> Duration {
    let mut total = Duration::ZERO;
    for i in 0..iters {
        let dst = base.join(format!("copy-{i}"));
        let options = TransferOptions {
            via_quic,
            ..TransferOptions::default()
        };
        let started = Instant::now();
        let summary = rt
            .block_on(jobs::copy(
                src.to_path_buf(),
                dst.clone(),
                options,
                Arc::new(Progress::default()),
                no_events(),
            ))
            .expect("the benchmark copy succeeds");
        total += started.elapsed();
        assert_eq!(summary.files_failed, 0, "a benchmark copy lost files");
        assert!(
            summary.files_transferred > 0,
            "a benchmark copy sent nothing"
        );
        fs::remove_dir_all(&dst).expect("remove the benchmark copy");
    }
    total
}

fn pipeline(c: &mut Criterion) {
    let tmp = tempfile::Builder::new()
        .prefix("haul-bench-pipeline-")
        .tempdir_in(scratch_base())
        .expect("create the benchmark directory");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("start a tokio runtime");

    let big = tmp.path().join("big");
    let big_bytes = build_big(&big);
    let small = tmp.path().join("small");
    let small_files = build_small(&small);
    let out = tmp.path().join("out");
    fs::create_dir(&out).expect("create the copies' directory");

    let mut group = c.benchmark_group("pipeline");
    let trees = [
        (&big, "256 MiB file", Throughput::Bytes(big_bytes)),
        (&small, "5k small files", Throughput::Elements(small_files)),
    ];
    for (tree, what, throughput) in trees {
        group.throughput(throughput);
        for via_quic in [false, true] {
            let name = format!("copy {what}{}", if via_quic { " via QUIC" } else { "" });
            group.bench_function(name, |b| {
                b.iter_custom(|iters| time_copies(&rt, tree, &out, via_quic, iters))
            });
        }
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
}

criterion_group! {
    name = benches;
    config = config();
    targets = pipeline
}
criterion_main!(benches);
