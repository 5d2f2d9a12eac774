//! `--bwlimit` end to end: the real binary holds its sending rate to the limit, over loopback
//! QUIC and in-process, and the copy is still exact.

use std::ffi::OsStr;
use std::time::{Duration, Instant};

use haul_testing::{Haul, TreeBuilder, assert_same_tree, assert_success, summary_of};

fn haul() -> Haul {
    Haul::new(env!("CARGO_BIN_EXE_haul"))
}

const MIB: usize = 1 << 20;

#[test]
fn bwlimit_holds_the_rate_and_the_copy_is_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, cfg) = (tmp.path().join("src"), tmp.path().join("cfg"));
    let mut t = TreeBuilder::new(&src, 11);
    t.file("a.bin", 16 * MIB);
    t.file("b.bin", 8 * MIB);
    for extra in [&[][..], &["--via-quic"][..]] {
        let dst = tmp.path().join(format!("dst{}", extra.len()));
        let mut args: Vec<&OsStr> = ["copy", "--json", "--bwlimit", "8M"]
            .iter()
            .map(OsStr::new)
            .collect();
        args.extend(extra.iter().map(OsStr::new));
        args.extend([src.as_os_str(), dst.as_os_str()]);
        let started = Instant::now();
        let out = haul().run(&cfg, &args);
        let took = started.elapsed();
        assert_success(&out);
        assert_same_tree(&src, &dst);
        assert_eq!(summary_of(&out)["bytes_sent"], 24 * MIB as u64);
        // 24 MiB at 8 MiB/s: a 4 MiB chunk leaves every 0.5 s, so the sixth and last one
        // leaves 2.5 s in (less the limiter's 50 ms burst). A lower bound only: the limit
        // must hold; how fast the machine is does not matter.
        assert!(
            took >= Duration::from_millis(2_400),
            "24 MiB at --bwlimit 8M took only {took:?} {extra:?}"
        );
    }
}
