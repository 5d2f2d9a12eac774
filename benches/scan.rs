//! Source tree scanning cost: `haul_manifest::scan` over 10,000 small files in 100
//! directories, built once in a temporary directory (so the numbers reflect a warm page and
//! dentry cache, i.e. the scanner's own overhead plus `lstat`/`readdir`).
//!
//! Run: `cargo bench --bench scan` (add `-- --quick` for a fast check).

use std::fs;
use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const DIRS: usize = 100;
const FILES_PER_DIR: usize = 100;
/// Entries a scan yields: the root, the directories and the files.
const ENTRIES: usize = 1 + DIRS + DIRS * FILES_PER_DIR;

fn build_tree(root: &Path) {
    for d in 0..DIRS {
        let dir = root.join(format!("dir{d:03}"));
        fs::create_dir(&dir).expect("create benchmark directory");
        for f in 0..FILES_PER_DIR {
            // Small, varied sizes: the scanner only stats them, so content does not matter.
            fs::write(
                dir.join(format!("file{f:03}.dat")),
                vec![b'x'; (d + f) % 64],
            )
            .expect("write benchmark file");
        }
    }
}

fn scan_tree(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("create temporary directory");
    build_tree(tmp.path());

    let mut group = c.benchmark_group("scan");
    group.throughput(Throughput::Elements(ENTRIES as u64));
    group.bench_function("scan 10k files in 100 dirs", |b| {
        b.iter(|| {
            let mut entries = 0;
            for item in haul_manifest::scan(black_box(tmp.path())) {
                black_box(item.expect("benchmark tree scans cleanly"));
                entries += 1;
            }
            assert_eq!(entries, ENTRIES);
        })
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = scan_tree
}
criterion_main!(benches);
