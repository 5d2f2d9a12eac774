//! `haul copy` end to end: the real binary, real files, real QUIC on loopback.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

use haul_testing::{
    Haul, Tmpfs, TreeBuilder, assert_same_tree, assert_success, sparse_blocks, summary_of,
};

fn haul() -> Haul {
    Haul::new(env!("CARGO_BIN_EXE_haul"))
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

const MIB: usize = 1 << 20;

#[test]
fn copy_preserves_contents_modes_mtimes_links_and_holes() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst, cfg) = (
        tmp.path().join("src"),
        tmp.path().join("dst"),
        tmp.path().join("cfg"),
    );
    let mut t = TreeBuilder::new(&src, 7);
    t.file("empty", 0);
    t.dir("empty-dir");
    t.dir("nested/deeper/empty-too");
    t.file("exact-4MiB", 4 * MIB);
    t.file("4MiB-plus-1", 4 * MIB + 1);
    t.file("big/layer.vhdx", 300 * MIB + 12345);
    t.file("with space.txt", 100);
    t.file("ünïcødé/日本語.db", 5000);
    t.file("new\nline", 10);
    t.file(b"bad-utf8-\xff\xfe".as_slice(), 33);
    t.file("tool.sh", 200);
    t.mode("tool.sh", 0o755);
    t.file("secret", 64);
    t.mode("secret", 0o600);
    t.symlink("rel-link", "with space.txt");
    t.symlink("abs-link", "/etc/hostname");
    t.symlink("dangling", "does/not/exist");
    t.symlink("nested/up", "../../exact-4MiB");
    // A 1 GiB sparse disk holding 6 MiB of data in three places.
    let sparse_len: u64 = 1 << 30;
    t.sparse(
        "layers/disk.img",
        sparse_len,
        &[
            (0, 2 * MIB),
            (300 << 20, 3 * MIB),
            (sparse_len - MIB as u64, MIB),
        ],
    );
    t.mtime("empty", 631_152_000, 999_999_999);
    t.mtime("exact-4MiB", 946_684_799, 1);
    t.mtime("rel-link", 700_000_000, 5);
    t.mtime("nested/deeper", 800_000_000, 123_000_000);
    t.mode("nested", 0o750);

    let out = haul().run(
        &cfg,
        &[
            os("copy"),
            os("--json"),
            os("--list"),
            src.as_os_str(),
            dst.as_os_str(),
        ],
    );
    assert!(
        out.status.success(),
        "copy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_tree(&src, &dst);
    assert!(
        !dst.join(".haul").exists(),
        "copy leaves no receiver state behind"
    );

    let summary = summary_of(&out);
    assert_eq!(summary["files_total"], 11);
    assert_eq!(summary["files_transferred"], 11);
    assert_eq!(summary["symlinks"], 4);
    let data_bytes: u64 =
        (4 * MIB + 4 * MIB + 1 + 300 * MIB + 12345 + 100 + 5000 + 10 + 33 + 200 + 64) as u64;
    assert_eq!(summary["bytes_total"], data_bytes + sparse_len);
    let sent = summary["bytes_sent"].as_u64().unwrap();
    assert!(
        sent >= data_bytes + 6 * MIB as u64,
        "every data byte crosses once: {sent}"
    );
    assert!(
        sent < data_bytes + 16 * MIB as u64,
        "holes are not sent: {sent}"
    );
    for key in ["chunks_sent", "chunks_reused", "elapsed_s"] {
        assert!(summary.get(key).is_some(), "summary lacks {key}");
    }

    // The sparse disk is still sparse on the target.
    let blocks = sparse_blocks(&dst.join("layers/disk.img"));
    assert!(
        blocks * 512 < 16 << 20,
        "target sparse file occupies {} bytes",
        blocks * 512
    );

    // b3sum on the copy prints the hash haul reported for it, and `haul hash` agrees.
    let listed: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["event"] == "file_installed")
        .collect();
    assert_eq!(listed.len(), 11);
    for rel in ["big/layer.vhdx", "4MiB-plus-1", "layers/disk.img", "empty"] {
        let reported = listed.iter().find(|v| v["path"] == rel).unwrap()["blake3"]
            .as_str()
            .unwrap()
            .to_string();
        match Command::new("b3sum")
            .arg("--no-names")
            .arg(dst.join(rel))
            .output()
        {
            Ok(b3) => assert_eq!(
                String::from_utf8_lossy(&b3.stdout).trim(),
                reported,
                "{rel}"
            ),
            // Without b3sum (CI installs it), the reference one-shot hash must agree instead.
            Err(_) => {
                let whole = blake3::hash(&std::fs::read(dst.join(rel)).unwrap());
                assert_eq!(whole.to_hex().as_str(), reported, "{rel}");
            }
        }
        let ours = haul().run(&cfg, &[os("hash"), dst.join(rel).as_os_str()]);
        assert!(
            String::from_utf8_lossy(&ours.stdout).starts_with(&reported),
            "{rel}"
        );
    }
}

#[test]
fn a_single_file_goes_to_the_named_path_or_into_a_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("cfg");
    let mut t = TreeBuilder::new(&tmp.path().join("src"), 3);
    let file = t.file("wphost.db", 70_000);
    let named = tmp.path().join("out/renamed.db");
    let out = haul().run(&cfg, &[os("copy"), file.as_os_str(), named.as_os_str()]);
    assert_success(&out);
    assert_eq!(
        std::fs::read(&named).unwrap(),
        std::fs::read(&file).unwrap()
    );

    let into = tmp.path().join("existing-dir");
    std::fs::create_dir(&into).unwrap();
    let out = haul().run(&cfg, &[os("copy"), file.as_os_str(), into.as_os_str()]);
    assert_success(&out);
    assert_eq!(
        std::fs::read(into.join("wphost.db")).unwrap(),
        std::fs::read(&file).unwrap()
    );
    assert!(!into.join(".haul").exists());
}

#[test]
fn a_missing_source_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-po");
    let out = haul().run(
        tmp.path(),
        &[
            os("copy"),
            missing.as_os_str(),
            tmp.path().join("d").as_os_str(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no-such-po") && err.contains("No such file"),
        "{err}"
    );
}

/// Runs the binary as an unprivileged user, so file permissions apply even when the tests run
/// as root.
fn as_nobody(cfg: &Path, args: &[&OsStr]) -> std::process::Output {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_haul"))
        .args(args)
        .env("HAUL_CONFIG_DIR", cfg);
    cmd.output().expect("setpriv (util-linux) runs")
}

#[test]
fn an_unreadable_source_file_is_reported_and_the_rest_is_copied() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let (src, dst, cfg) = (
        tmp.path().join("src"),
        tmp.path().join("dst"),
        tmp.path().join("cfg"),
    );
    let mut t = TreeBuilder::new(&src, 11);
    t.file("ok-1", 1000);
    t.file("locked", 1000);
    t.mode("locked", 0o000);
    t.file("sub/ok-2", 5 * MIB);
    let out = as_nobody(&cfg, &[os("copy"), src.as_os_str(), dst.as_os_str()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("locked") && err.contains("Permission denied"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(dst.join("ok-1")).unwrap(),
        std::fs::read(src.join("ok-1")).unwrap()
    );
    assert_eq!(
        std::fs::read(dst.join("sub/ok-2")).unwrap(),
        std::fs::read(src.join("sub/ok-2")).unwrap()
    );
    assert!(
        !dst.join("locked").exists(),
        "nothing stands under the unreadable file's name"
    );
}

#[test]
fn a_full_target_stops_with_exit_3_and_says_what_is_needed() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, cfg) = (tmp.path().join("src"), tmp.path().join("cfg"));
    let mut t = TreeBuilder::new(&src, 5);
    for i in 0..6 {
        t.file(format!("offiles/fd{i:x}/blob"), 3 * MIB);
    }
    let disk = Tmpfs::mount(&tmp.path().join("disk"), "8m");
    let dst = disk.path().join("po1");
    let out = haul().run(&cfg, &[os("copy"), src.as_os_str(), dst.as_os_str()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("ran out of space") && err.contains("Expand the storage"),
        "{err}"
    );
    // Whatever was installed is whole; nothing partial stands under a final name.
    for i in 0..6 {
        let rel = format!("offiles/fd{i:x}/blob");
        if let Ok(copy) = std::fs::read(dst.join(&rel)) {
            assert_eq!(
                copy,
                std::fs::read(src.join(&rel)).unwrap(),
                "{rel} is partial"
            );
        }
    }
    let _ = Path::new(OsStr::from_bytes(b"")); // keep OsStrExt in use for byte paths above
}

/// A copy as root keeps setuid/setgid like `cp -a`; the same copy by an unprivileged user
/// (whose embedded receiver cannot be privileged) drops them and says so in its summary.
#[test]
fn setuid_bits_are_kept_by_a_root_copy_and_counted_when_dropped() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("cfg");
    let mut t = TreeBuilder::new(&tmp.path().join("src"), 12);
    t.file("bin/tool", 100);
    t.mode("bin/tool", 0o4755);
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst-root");
    assert_success(&haul().run(&cfg, &[os("copy"), src.as_os_str(), dst.as_os_str()]));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&dst.join("bin/tool")), 0o4755);

    let status = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(tmp.path())
        .status()
        .unwrap();
    assert!(status.success());
    // chown cleared the setuid bit: set it again, now on nobody's file.
    std::fs::set_permissions(
        src.join("bin/tool"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    let dst = tmp.path().join("dst-user");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_haul"))
        .env("HAUL_CONFIG_DIR", &cfg)
        .env("HAUL_CACHE_DIR", cfg.join("cache"))
        .args(["copy", "--json"])
        .arg(&src)
        .arg(&dst)
        .output()
        .unwrap();
    assert_success(&out);
    assert_eq!(mode(&dst.join("bin/tool")), 0o755);
    assert_eq!(summary_of(&out)["not_applied"]["special_bits"], 1);
}

/// Hole chunks hash to values that depend only on where they are, so haul computes each once
/// and keeps it in its cache directory: a second run finds them there, a damaged cache file
/// is ignored and rebuilt, and every answer equals the BLAKE3 of the file's bytes.
#[test]
fn hole_hashes_are_kept_in_the_cache_and_a_damaged_cache_is_rebuilt() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst, cfg) = (
        tmp.path().join("src"),
        tmp.path().join("dst"),
        tmp.path().join("cfg"),
    );
    let mut t = TreeBuilder::new(&src, 31);
    let len: u64 = 256 * MIB as u64;
    // 64 chunks of 4 MiB; the data lies inside chunk 25, so 63 are holes.
    t.sparse("disk.img", len, &[(100 * MIB as u64 + 5, MIB)]);
    let disk = src.join("disk.img");
    let expected = blake3::hash(&std::fs::read(&disk).unwrap())
        .to_hex()
        .to_string();
    let hash = || {
        let out = haul().run(&cfg, &[os("hash"), disk.as_os_str()]);
        assert_success(&out);
        String::from_utf8(out.stdout).unwrap()
    };
    let cache = cfg.join("cache/zero-chunks.v1");
    // Magic, one 44-byte record per hole chunk, checksum.
    let full = 8 + 63 * 44 + 32;

    assert!(hash().starts_with(&expected), "cold");
    assert_eq!(std::fs::metadata(&cache).unwrap().len(), full);
    assert!(hash().starts_with(&expected), "from the cache");

    std::fs::write(&cache, b"HAULZCV1 not a table at all").unwrap();
    assert!(hash().starts_with(&expected), "with a damaged cache");
    assert_eq!(std::fs::metadata(&cache).unwrap().len(), full, "rebuilt");

    let out = haul().run(&cfg, &[os("copy"), src.as_os_str(), dst.as_os_str()]);
    assert_success(&out);
    assert_same_tree(&src, &dst);
    assert!(
        sparse_blocks(&dst.join("disk.img")) * 512 <= 2 * MIB as u64,
        "not sparse"
    );
}
