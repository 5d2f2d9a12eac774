//! `--compress` end to end: the real binary copies a tree with compressible, random and
//! sparse data; every mode yields the same tree, and compression cuts the bytes sent.

use std::ffi::OsStr;
use std::path::Path;

use haul_testing::{Haul, TreeBuilder, assert_same_tree, summary_of};

fn haul() -> Haul {
    Haul::new(env!("CARGO_BIN_EXE_haul"))
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

const MIB: u64 = 1 << 20;

/// Log-like text: a few words in random order, compressible about 5x by zstd.
fn text(len: usize) -> Vec<u8> {
    // xorshift: a deterministic word order without a rand dependency.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let words: [&[u8]; 8] = [
        b"GET",
        b"/api/v1/items",
        b"200",
        b"user=alice",
        b"latency_ms=12",
        b"cache=miss",
        b"host=node-7",
        b"\n",
    ];
    let mut out = Vec::with_capacity(len + 32);
    while out.len() < len {
        out.extend_from_slice(words[(next() % words.len() as u64) as usize]);
        out.push(b' ');
    }
    out.truncate(len);
    out
}

/// Copies `src` to a fresh `dst` with `--compress MODE` (plus `extra`) and returns bytes sent.
fn copy(src: &Path, dst: &Path, cfg: &Path, mode: &str, extra: &[&str]) -> u64 {
    let mut args = vec![os("copy"), os("--json"), os("--compress"), os(mode)];
    args.extend(extra.iter().map(|a| os(a)));
    args.extend([src.as_os_str(), dst.as_os_str()]);
    let out = haul().run(cfg, &args);
    assert!(
        out.status.success(),
        "copy --compress {mode} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_tree(src, dst);
    let summary = summary_of(&out);
    assert_eq!(summary["files_transferred"], 3, "{summary}");
    summary["bytes_sent"].as_u64().unwrap()
}

#[test]
fn compression_cuts_bytes_sent_and_changes_nothing_in_the_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, cfg) = (tmp.path().join("src"), tmp.path().join("cfg"));
    let mut t = TreeBuilder::new(&src, 5);
    std::fs::write(src.join("app.log"), text(32 * MIB as usize)).unwrap();
    t.file("random.bin", 8 * MIB as usize);
    // Data extents that do not align to the 4 MiB chunks: the two chunks holding data are
    // mostly zeros, the rest are holes.
    t.sparse(
        "disk.img",
        64 * MIB,
        &[(MIB, MIB as usize), (9 * MIB, MIB as usize)],
    );
    let random_data = 8 * MIB + 2 * MIB;

    let off = copy(&src, &tmp.path().join("off"), &cfg, "off", &[]);
    assert!(
        off >= 32 * MIB + 8 * MIB + 8 * MIB,
        "off sends the text, the random file and both data chunks whole: {off}"
    );
    // Over the network (loopback QUIC with TLS, as a push travels) auto compresses.
    let auto = copy(
        &src,
        &tmp.path().join("auto"),
        &cfg,
        "auto",
        &["--via-quic"],
    );
    assert!(
        auto >= random_data,
        "random data cannot shrink: it crosses whole ({auto})"
    );
    assert!(
        auto < random_data + 12 * MIB,
        "auto compresses the text and the zeros around the sparse data: {auto} vs {off} off"
    );
    let on = copy(&src, &tmp.path().join("on"), &cfg, "on", &[]);
    assert!(
        on < random_data + 12 * MIB,
        "`on` compresses even in-process: {on}"
    );
    // In-process nothing crosses a network: auto does not spend CPU compressing.
    let local = copy(&src, &tmp.path().join("local"), &cfg, "auto", &[]);
    assert_eq!(local, off, "an in-process copy sends chunks as they are");
}
