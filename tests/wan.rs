//! `haul push` to a real `haul serve` across an emulated WAN (rate limit, delay and random loss
//! both ways, Ethernet MTU): the copy must still be exact, and the link must really have lost
//! packets on the way, so retransmission was exercised rather than assumed.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use haul_testing::{Haul, LinkEmu, LinkSpec, TreeBuilder, assert_same_tree};

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

#[test]
fn a_push_across_a_lossy_wan_arrives_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path();
    let src = p.join("src");
    let mut t = TreeBuilder::new(&src, 33);
    // Four 4 MiB chunks: at 1% loss quinn's CUBIC holds ~7 Mbit/s on this path, so more data
    // would only make the test slow.
    t.file("big.bin", 16 << 20);
    t.file("small/a.txt", 1200);
    t.file("small/deeper/b.dat", 70_000);
    t.file("small/empty", 0);
    t.symlink("small/link", "a.txt");
    t.dir("small/nothing-here");
    let root = p.join("root");
    std::fs::create_dir(&root).unwrap();
    let token = p.join("token");
    haul_testing::cmd::write_secret(&token, "wan-token\n");

    let haul = Haul::new(env!("CARGO_BIN_EXE_haul"));
    let server = haul.serve(&root, &p.join("server-cfg"), Some(&token));
    let upstream: SocketAddr = server.addr.parse().unwrap();
    // 100 Mbit/s, 20 ms round trip, 1% loss each way: a poor but ordinary long-distance path.
    let spec = |seed| LinkSpec {
        seed,
        ..LinkSpec::wan(100_000_000, Duration::from_millis(10), 0.01)
    };
    let link = LinkEmu::start(upstream, spec(1), spec(2)).unwrap();

    let url = format!("quic://{}/copy", link.addr());
    let started = Instant::now();
    let out = haul.run(
        &p.join("client-cfg"),
        &[
            os("push"),
            src.as_os_str(),
            os(&url),
            os("--fingerprint"),
            os(&server.fingerprint),
            os("--token-file"),
            token.as_os_str(),
        ],
    );
    let took = started.elapsed();
    // Final counters: the link stops here, so they are consistent with each other.
    let stats = link.finish();
    assert!(
        out.status.success(),
        "push across the link failed after {took:?} ({stats}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_tree(&src, &root.join("copy"));
    // The data went up through the link, and some of it was really lost on the way.
    assert!(stats.up.bytes > 16 << 20, "{stats}");
    assert!(stats.up.dropped_loss > 0, "{stats}");
    assert!(stats.down.packets > 0, "{stats}");
    // And the link shaped every packet as specified, by its own count rather than a clock: each
    // took its 80 ns a byte of the 100 Mbit/s bottleneck, then was lost or delayed exactly the
    // configured 10 ms.
    for dir in [stats.up, stats.down] {
        assert_eq!(dir.paced_ns, dir.paced_bytes * 80, "{stats}");
        assert_eq!(
            dir.paced_packets,
            dir.dropped_loss + dir.delayed_packets,
            "{stats}"
        );
        assert_eq!(dir.delay_ns, dir.delayed_packets * 10_000_000, "{stats}");
        assert!(
            dir.delayed_packets >= dir.packets + dir.send_errors,
            "{stats}"
        );
        assert!(
            dir.peak_backlog_bytes <= spec(0).queue_limit() as u64,
            "{stats}"
        );
    }
    eprintln!("pushed 16 MiB across the link in {took:?}: {stats}");
}
