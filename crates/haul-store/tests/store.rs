//! Root and StagingFile against a real temporary directory.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use haul_proto::Meta;
use haul_store::{FileKind, PathError, RelPath, Root, StoreError};

fn rel(s: &str) -> RelPath {
    RelPath::parse(s.as_bytes()).unwrap()
}

fn meta(mode: u32, sec: i64, nsec: u32) -> Meta {
    Meta {
        mode,
        mtime_sec: sec,
        mtime_nsec: nsec,
    }
}

fn staging_entries(root: &Path) -> Vec<String> {
    fs::read_dir(root.join(".haul/staging"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn install(root: &Root, path: &str, data: &[u8], m: Meta) {
    let f = root.create_staging(data.len() as u64).unwrap();
    f.write_at(0, data).unwrap();
    root.install_file(f, &rel(path), &m.into()).unwrap();
}

#[test]
fn root_is_send_sync_and_staging_is_send() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Root>();
    send::<haul_store::StagingFile>();
}

#[test]
fn open_creates_private_staging_and_rejects_non_dirs() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::open(dir.path()).unwrap();
    assert_eq!(root.path(), dir.path());
    let st = fs::symlink_metadata(dir.path().join(".haul/staging")).unwrap();
    assert!(st.is_dir());
    assert_eq!(st.permissions().mode() & 0o777, 0o700);
    // Opening again reuses it.
    Root::open(dir.path()).unwrap();

    fs::write(dir.path().join("plain"), b"x").unwrap();
    let err = Root::open(&dir.path().join("plain")).unwrap_err();
    assert!(matches!(err, StoreError::NotADirectory { .. }), "{err}");
    let err = Root::open(&dir.path().join("missing")).unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err}");

    // A planted `.haul -> elsewhere` is refused, not followed.
    let planted = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), planted.path().join(".haul")).unwrap();
    let err = Root::open(planted.path()).unwrap_err();
    assert!(matches!(err, StoreError::SymlinkInPath { .. }), "{err}");
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[test]
fn install_file_sets_content_mode_and_ns_mtime() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::open(dir.path()).unwrap();
    let target = rel("deep/er/file name\n\u{e9}");
    let (parent, _) = target.parent_and_name().unwrap();
    root.create_dir_all(&parent).unwrap();
    let new_dir = fs::symlink_metadata(dir.path().join("deep/er")).unwrap();
    assert_eq!(new_dir.permissions().mode() & 0o7777, 0o700);

    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8 + 1).collect();
    let f = root.create_staging(data.len() as u64).unwrap();
    assert_eq!(f.size(), data.len() as u64);
    // Out of order, as chunks arrive.
    assert_eq!(f.write_at(50_000, &data[50_000..]).unwrap(), 50_000);
    assert_eq!(f.write_at(0, &data[..50_000]).unwrap(), 50_000);
    // setuid/setgid are dropped, sticky kept.
    root.install_file(
        f,
        &target,
        &meta(0o6755 | 0o1000, 1_600_000_000, 123_456_789).into(),
    )
    .unwrap();

    let path = dir.path().join("deep/er/file name\n\u{e9}");
    assert_eq!(fs::read(&path).unwrap(), data);
    let st = fs::symlink_metadata(&path).unwrap();
    assert!(st.is_file());
    assert_eq!(st.mode() & 0o7777, 0o1755);
    assert_eq!(st.mtime(), 1_600_000_000);
    assert_eq!(st.mtime_nsec(), 123_456_789);
    assert!(staging_entries(dir.path()).is_empty());
    assert_eq!(root.kind_of(&target).unwrap(), Some(FileKind::File));
    assert_eq!(root.kind_of(&parent).unwrap(), Some(FileKind::Dir));
    assert_eq!(root.kind_of(&rel("nope")).unwrap(), None);
    assert_eq!(root.kind_of(&rel("nope/deeper")).unwrap(), None);
    assert_eq!(
        root.kind_of(&target.join(&rel("under-a-file"))).unwrap(),
        None
    );
    assert_eq!(root.kind_of(&RelPath::root()).unwrap(), Some(FileKind::Dir));
}

#[test]
fn install_replaces_existing_file_and_symlink_but_not_dir() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::open(dir.path()).unwrap();
    fs::write(dir.path().join("f"), b"old contents").unwrap();
    install(&root, "f", b"new", meta(0o600, 1, 0));
    assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"new");

    // A symlink at the name is replaced, and its target is not written through.
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("victim"), b"untouched").unwrap();
    std::os::unix::fs::symlink(outside.path().join("victim"), dir.path().join("l")).unwrap();
    install(&root, "l", b"file now", meta(0o644, 2, 0));
    assert!(
        fs::symlink_metadata(dir.path().join("l"))
            .unwrap()
            .is_file()
    );
    assert_eq!(
        fs::read(outside.path().join("victim")).unwrap(),
        b"untouched"
    );

    fs::create_dir(dir.path().join("d")).unwrap();
    let f = root.create_staging(1).unwrap();
    f.write_at(0, b"x").unwrap();
    let err = root
        .install_file(f, &rel("d"), &meta(0o644, 0, 0).into())
        .unwrap_err();
    assert!(matches!(err, StoreError::IsADirectory { .. }), "{err}");
    assert!(err.to_string().contains("move it out of the way"));
    // The failed file did not linger in staging.
    assert!(staging_entries(dir.path()).is_empty());

    // Parent must exist.
    let f = root.create_staging(0).unwrap();
    let err = root
        .install_file(f, &rel("no/such/parent"), &meta(0o644, 0, 0).into())
        .unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err}");
    assert!(err.to_string().contains("no"), "{err}");
    assert!(staging_entries(dir.path()).is_empty());
}

#[test]
fn sparse_write_leaves_holes_and_reads_back() {
    const MIB: usize = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let root = Root::open(dir.path()).unwrap();
    let f = root.create_staging(64 * MIB as u64).unwrap();
    let block: Vec<u8> = (0..MIB).map(|i| (i % 255) as u8 + 1).collect();
    let zeros = vec![0u8; 4 * MIB];
    let mut written = 0;
    for off in (0..64 * MIB).step_by(4 * MIB) {
        if off == 32 * MIB {
            let mut piece = zeros.clone();
            piece[..MIB].copy_from_slice(&block);
            written += f.write_at(off as u64, &piece).unwrap();
        } else {
            written += f.write_at(off as u64, &zeros).unwrap();
        }
    }
    assert_eq!(
        written, MIB as u64,
        "only the non-zero block reaches the disk"
    );
    // A write straddling block boundaries with zeros in the middle.
    // The write starts 100 bytes into a file block, so data[3996..8092] is the one whole
    // aligned file block inside it: zeroing exactly that skips it; zeros elsewhere that do not
    // fill a file block are written.
    let mut odd = vec![7u8; 10_000];
    odd[3996..8092].fill(0);
    odd[9000..9500].fill(0);
    assert_eq!(
        f.write_at(40 * MIB as u64 + 100, &odd).unwrap(),
        10_000 - 4096
    );
    // Past the declared size is refused.
    assert!(f.write_at(64 * MIB as u64 - 1, b"ab").is_err());
    root.install_file(f, &rel("sparse"), &meta(0o644, 0, 0).into())
        .unwrap();

    let path = dir.path().join("sparse");
    let st = fs::symlink_metadata(&path).unwrap();
    assert_eq!(st.len(), 64 * MIB as u64);
    // st_blocks counts 512-byte units; 64 MiB fully allocated would be 131072.
    assert!(
        st.blocks() * 512 < 4 * MIB as u64,
        "{} blocks allocated",
        st.blocks()
    );
    let back = fs::read(&path).unwrap();
    let mut expected = vec![0u8; 64 * MIB];
    expected[32 * MIB..33 * MIB].copy_from_slice(&block);
    expected[40 * MIB + 100..40 * MIB + 10_100].copy_from_slice(&odd);
    assert!(back == expected, "sparse file reads back differently");
}

#[test]
fn install_symlink_keeps_target_bytes_and_never_touches_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::open(dir.path()).unwrap();
    let outside = tempfile::tempdir().unwrap();
    let outside_file = outside.path().join("abs-target");
    fs::write(&outside_file, b"keep").unwrap();
    let before = fs::symlink_metadata(&outside_file).unwrap();

    let targets: Vec<(&str, Vec<u8>)> = vec![
        ("rel", b"../sibling/x".to_vec()),
        ("abs", outside_file.as_os_str().as_encoded_bytes().to_vec()),
        ("dangling", b"does/not/exist\xff".to_vec()),
    ];
    for (name, target) in &targets {
        root.install_symlink(&rel(name), target, &meta(0o777, 1_500_000_000, 42).into())
            .unwrap();
        let link = dir.path().join(name);
        let st = fs::symlink_metadata(&link).unwrap();
        assert!(st.file_type().is_symlink());
        assert_eq!(st.mtime(), 1_500_000_000);
        assert_eq!(st.mtime_nsec(), 42);
        let read = fs::read_link(&link).unwrap();
        assert_eq!(read.as_os_str().as_encoded_bytes(), &target[..]);
        assert_eq!(root.kind_of(&rel(name)).unwrap(), Some(FileKind::Symlink));
    }
    let after = fs::symlink_metadata(&outside_file).unwrap();
    assert_eq!(fs::read(&outside_file).unwrap(), b"keep");
    assert_eq!(after.mtime_nsec(), before.mtime_nsec());
    assert_eq!(after.mode(), before.mode());

    // Replace a symlink with another; a file with a symlink.
    root.install_symlink(&rel("rel"), b"new", &meta(0, 0, 0).into())
        .unwrap();
    assert_eq!(
        fs::read_link(dir.path().join("rel")).unwrap(),
        Path::new("new")
    );
    fs::write(dir.path().join("was-file"), b"x").unwrap();
    root.install_symlink(&rel("was-file"), b"t", &meta(0, 0, 0).into())
        .unwrap();
    assert!(
        fs::symlink_metadata(dir.path().join("was-file"))
            .unwrap()
            .is_symlink()
    );

    // Bad targets and a directory in the way are refused and leave nothing in staging.
    assert!(
        root.install_symlink(&rel("e"), b"", &meta(0, 0, 0).into())
            .is_err()
    );
    assert!(
        root.install_symlink(&rel("n"), b"a\0b", &meta(0, 0, 0).into())
            .is_err()
    );
    fs::create_dir(dir.path().join("dir")).unwrap();
    let err = root
        .install_symlink(&rel("dir"), b"t", &meta(0, 0, 0).into())
        .unwrap_err();
    assert!(matches!(err, StoreError::IsADirectory { .. }), "{err}");
    assert!(staging_entries(dir.path()).is_empty());
}

#[test]
fn symlink_out_of_root_is_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("a")).unwrap();
    let root = Root::open(dir.path()).unwrap();

    let err = root.create_dir_all(&rel("a/b")).unwrap_err();
    assert!(
        matches!(&err, StoreError::SymlinkInPath { path } if path == &dir.path().join("a")),
        "{err}"
    );
    assert!(err.to_string().contains("refusing to follow"));

    let f = root.create_staging(3).unwrap();
    f.write_at(0, b"bad").unwrap();
    let err = root
        .install_file(f, &rel("a/x"), &meta(0o644, 0, 0).into())
        .unwrap_err();
    assert!(matches!(err, StoreError::SymlinkInPath { .. }), "{err}");

    let err = root
        .install_symlink(&rel("a/l"), b"t", &meta(0, 0, 0).into())
        .unwrap_err();
    assert!(matches!(err, StoreError::SymlinkInPath { .. }), "{err}");
    let err = root
        .set_dir_meta(&rel("a"), &meta(0o777, 0, 0).into())
        .unwrap_err();
    assert!(matches!(err, StoreError::SymlinkInPath { .. }), "{err}");
    let err = root.kind_of(&rel("a/x")).unwrap_err();
    assert!(matches!(err, StoreError::SymlinkInPath { .. }), "{err}");
    let err = root.subdir(&rel("a/sub")).unwrap_err();
    assert!(matches!(err, StoreError::SymlinkInPath { .. }), "{err}");
    assert_eq!(root.kind_of(&rel("a")).unwrap(), Some(FileKind::Symlink));

    assert_eq!(
        fs::read_dir(outside.path()).unwrap().count(),
        0,
        "something escaped the root"
    );
    assert!(staging_entries(dir.path()).is_empty());
    // The outside directory's mode was not changed through the link.
    assert_ne!(fs::metadata(outside.path()).unwrap().mode() & 0o777, 0o777);
}

#[test]
fn symlink_deeper_in_the_path_and_file_in_the_way() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let root = Root::open(dir.path()).unwrap();
    root.create_dir_all(&rel("x/y")).unwrap();
    // Swap y for a symlink after x/y was cached: the cached fd still names the real
    // directory (now x/y-real), never the outside one.
    fs::rename(dir.path().join("x/y"), dir.path().join("x/y-real")).unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("x/y")).unwrap();
    root.create_dir_all(&rel("x/y/z")).unwrap();
    assert!(dir.path().join("x/y-real/z").is_dir());
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    // A fresh root has no cache and meets the symlink itself.
    let fresh = Root::open(dir.path()).unwrap();
    let err = fresh.create_dir_all(&rel("x/y/z")).unwrap_err();
    assert!(
        matches!(&err, StoreError::SymlinkInPath { path } if path == &dir.path().join("x/y")),
        "{err}"
    );
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);

    fs::write(dir.path().join("file"), b"").unwrap();
    let err = root.create_dir_all(&rel("file/sub")).unwrap_err();
    assert!(
        matches!(&err, StoreError::NotADirectory { path } if path == &dir.path().join("file")),
        "{err}"
    );
}

#[test]
fn dropping_a_staging_file_removes_it_and_discard_too() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::open(dir.path()).unwrap();
    let a = root.create_staging(10).unwrap();
    let b = root.create_staging(10).unwrap();
    a.write_at(0, b"0123456789").unwrap();
    assert_eq!(staging_entries(dir.path()).len(), 2);
    drop(a);
    assert_eq!(staging_entries(dir.path()).len(), 1);
    b.discard().unwrap();
    assert!(staging_entries(dir.path()).is_empty());
    // The staging file is private while it is being received.
    let c = root.create_staging(1).unwrap();
    let name = staging_entries(dir.path()).pop().unwrap();
    let st = fs::symlink_metadata(dir.path().join(".haul/staging").join(name)).unwrap();
    assert_eq!(st.mode() & 0o777, 0o600);
    assert_eq!(st.len(), 1);
    drop(c);
}

#[test]
fn reserved_haul_path_is_refused() {
    let err = RelPath::parse(b".haul/staging/evil").unwrap_err();
    assert_eq!(err, PathError::Reserved);
    let mut p = RelPath::root();
    assert_eq!(p.push(b".haul"), Err(PathError::Reserved));
    // A sub-root's own `.haul` is an ordinary directory; staging stays at the top.
    let dir = tempfile::tempdir().unwrap();
    let root = Root::open(dir.path()).unwrap();
    let sub = root.subdir(&rel("dest")).unwrap();
    assert!(!dir.path().join("dest/.haul").exists());
    let f = sub.create_staging(1).unwrap();
    assert_eq!(staging_entries(dir.path()).len(), 1);
    f.write_at(0, b"s").unwrap();
    sub.install_file(f, &rel("in-sub"), &meta(0o640, 7, 8).into())
        .unwrap();
    assert_eq!(fs::read(dir.path().join("dest/in-sub")).unwrap(), b"s");
    assert_eq!(sub.path(), dir.path().join("dest"));
    assert_eq!(
        sub.display_path(&rel("in-sub")),
        dir.path().join("dest/in-sub")
    );
}

#[test]
fn set_dir_meta_after_contents_and_on_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::open(dir.path()).unwrap();
    root.create_dir_all(&rel("d/e")).unwrap();
    install(&root, "d/e/f", b"x", meta(0o644, 5, 0));
    root.set_dir_meta(
        &rel("d/e"),
        &meta(0o2751, 1_234_567_890, 999_999_999).into(),
    )
    .unwrap();
    root.set_dir_meta(&rel("d"), &meta(0o755, 1_000, 1).into())
        .unwrap();
    let st = fs::symlink_metadata(dir.path().join("d/e")).unwrap();
    assert_eq!(st.mode() & 0o7777, 0o751);
    assert_eq!((st.mtime(), st.mtime_nsec()), (1_234_567_890, 999_999_999));
    let st = fs::symlink_metadata(dir.path().join("d")).unwrap();
    assert_eq!(
        (st.mode() & 0o7777, st.mtime(), st.mtime_nsec()),
        (0o755, 1_000, 1)
    );

    let sub = root.subdir(&rel("d")).unwrap();
    sub.set_dir_meta(&RelPath::root(), &meta(0o750, 77, 0).into())
        .unwrap();
    let st = fs::symlink_metadata(dir.path().join("d")).unwrap();
    assert_eq!((st.mode() & 0o7777, st.mtime()), (0o750, 77));

    fs::write(dir.path().join("plain"), b"").unwrap();
    let err = root
        .set_dir_meta(&rel("plain"), &meta(0o755, 0, 0).into())
        .unwrap_err();
    assert!(matches!(err, StoreError::NotADirectory { .. }), "{err}");
    assert!(
        root.set_dir_meta(&rel("missing"), &meta(0o755, 0, 0).into())
            .is_err()
    );
}

#[test]
fn many_directories_beyond_the_cache_bound() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::open(dir.path()).unwrap();
    // More directories than the fd cache holds, revisited in an order that evicts.
    for round in 0..2 {
        for i in 0..150 {
            let p = rel(&format!("top/d{}/leaf", i % 150));
            root.create_dir_all(&p).unwrap();
            install(
                &root,
                &format!("top/d{i}/leaf/f{round}"),
                b"z",
                meta(0o644, 0, 0),
            );
        }
    }
    for i in 0..150 {
        for round in 0..2 {
            assert_eq!(
                fs::read(dir.path().join(format!("top/d{i}/leaf/f{round}"))).unwrap(),
                b"z"
            );
        }
    }
}

#[test]
fn concurrent_installs_from_many_threads() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::open(dir.path()).unwrap();
    std::thread::scope(|s| {
        for t in 0..8 {
            let root = &root;
            s.spawn(move || {
                for i in 0..50 {
                    let p = format!("shared/t{}/n{i}", t % 3);
                    root.create_dir_all(&rel(&format!("shared/t{}", t % 3)))
                        .unwrap();
                    install(
                        root,
                        &format!("{p}-{t}"),
                        format!("{t}:{i}").as_bytes(),
                        meta(0o600, 0, 0),
                    );
                }
            });
        }
    });
    let count: usize = (0..3)
        .map(|d| {
            fs::read_dir(dir.path().join(format!("shared/t{d}")))
                .unwrap()
                .count()
        })
        .sum();
    assert_eq!(count, 8 * 50);
    assert!(staging_entries(dir.path()).is_empty());
}

#[test]
fn sync_and_free_space() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::open(dir.path()).unwrap();
    root.sync().unwrap();
    let free = root.available_bytes().unwrap();
    assert!(free > 0);
}

#[test]
fn a_destination_deleted_between_pushes_is_recreated() {
    let tmp = tempfile::tempdir().unwrap();
    let root = Root::open(tmp.path()).unwrap();
    root.create_dir_all(&rel("y/sub")).unwrap();
    install(&root, "y/sub/a", b"one", meta(0o644, 1, 0));
    // The administrator removes the copy while the receiver keeps running.
    fs::remove_dir_all(tmp.path().join("y")).unwrap();
    root.create_dir_all(&rel("y/sub")).unwrap();
    install(&root, "y/sub/a", b"two", meta(0o644, 1, 0));
    assert_eq!(fs::read(tmp.path().join("y/sub/a")).unwrap(), b"two");
    // A rename between sessions: forgetting the cache makes the next lookup see the new path.
    fs::rename(tmp.path().join("y"), tmp.path().join("y.1")).unwrap();
    root.forget_cached_dirs();
    root.create_dir_all(&rel("y/sub")).unwrap();
    install(&root, "y/sub/a", b"three", meta(0o644, 1, 0));
    assert_eq!(fs::read(tmp.path().join("y/sub/a")).unwrap(), b"three");
    assert_eq!(fs::read(tmp.path().join("y.1/sub/a")).unwrap(), b"two");
}

#[test]
fn staging_left_by_dead_receivers_is_swept_and_live_ones_are_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let root = Root::open(tmp.path()).unwrap();
    let live = root.create_staging(10).unwrap();
    // pid 2^22 + 1 is above the kernel's pid_max default: no such process.
    let dead = tmp.path().join(".haul/staging/4194305-0");
    fs::write(&dead, b"left by a killed receiver").unwrap();
    assert_eq!(root.sweep_staging().unwrap(), 1);
    assert!(!dead.exists());
    assert_eq!(
        staging_entries(tmp.path()).len(),
        1,
        "the live staging file stays"
    );
    drop(live);
}

#[test]
fn setuid_and_setgid_are_applied_only_when_the_caller_allows_and_drops_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::open(dir.path()).unwrap();
    for (keep, expected, dropped) in [(false, 0o755, 1), (true, 0o6755, 0)] {
        let name = format!("tool-{keep}");
        let f = root.create_staging(10).unwrap();
        f.write_at(0, b"#!/bin/sh\n").unwrap();
        let report = std::sync::Arc::new(haul_store::NotAppliedCounter::default());
        let attrs = haul_store::Attrs {
            special_bits: keep,
            report: Some(report.clone()),
            ..meta(0o6755, 1, 0).into()
        };
        root.install_file(f, &rel(&name), &attrs).unwrap();
        let st = fs::symlink_metadata(dir.path().join(&name)).unwrap();
        assert_eq!(st.mode() & 0o7777, expected, "keep={keep}");
        assert_eq!(report.snapshot().special_bits, dropped, "keep={keep}");
    }
}

/// An anonymous staging file is created with its final permission bits; install sets the
/// mode only where that came out wrong (umask, special bits), and every mode ends exact.
#[test]
fn anonymous_staging_files_end_with_exactly_their_mode() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::open(dir.path()).unwrap();
    // 0o777 and 0o666 lose bits to a usual umask; 0o1755 has the sticky bit, which is never
    // given at create; 0o000 leaves the receiver no access, yet its open fd still writes.
    for (i, mode) in [0o640, 0o600, 0o777, 0o666, 0o1755, 0o000, 0o444]
        .into_iter()
        .enumerate()
    {
        let target = rel(&format!("file-{i}"));
        // Odd sizes, one ending in a zero block (left as a hole: install truncates it).
        let mut data = vec![7u8; 5000 + i * 1000];
        if i == 2 {
            data.extend_from_slice(&[0u8; 8192]);
        }
        let f = root
            .create_staging_for(&target, data.len() as u64, mode)
            .unwrap();
        f.write_at(0, &data).unwrap();
        root.install_file(f, &target, &meta(mode, 1_600_000_000, 5).into())
            .unwrap();
        let path = dir.path().join(format!("file-{i}"));
        let st = fs::symlink_metadata(&path).unwrap();
        assert_eq!(st.mode() & 0o7777, mode, "file-{i}");
        assert_eq!(st.len(), data.len() as u64, "file-{i}");
        assert_eq!(fs::read(&path).unwrap(), data, "file-{i}");
    }
    assert!(staging_entries(dir.path()).is_empty());
}

/// A fresh file is written in place under its final name: installed with its exact size,
/// mode and mtime; dropped uninstalled, it is gone again; and only a name it created itself
/// is ever removed.
#[test]
fn fresh_files_are_written_in_place_and_removed_if_unfinished() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::open(dir.path()).unwrap();
    let target = rel("fresh.bin");
    let path = dir.path().join("fresh.bin");
    let data = vec![3u8; 6000];

    // Installed: exact content, mode and mtime, and nothing left in staging.
    let f = root.create_fresh_for(&target, 6000, 0o640).unwrap();
    assert!(
        path.exists(),
        "a fresh file is created under its final name"
    );
    f.write_at(0, &data).unwrap();
    root.install_file(f, &target, &meta(0o640, 1_600_000_000, 7).into())
        .unwrap();
    let st = fs::symlink_metadata(&path).unwrap();
    assert_eq!(fs::read(&path).unwrap(), data);
    assert_eq!(st.mode() & 0o7777, 0o640);
    assert_eq!((st.mtime(), st.mtime_nsec()), (1_600_000_000, 7));
    assert!(staging_entries(dir.path()).is_empty());

    // Dropped before install (a failed file): the name is removed again.
    let other = rel("unfinished.bin");
    let f = root.create_fresh_for(&other, 10, 0o644).unwrap();
    f.write_at(0, b"0123456789").unwrap();
    assert!(dir.path().join("unfinished.bin").exists());
    drop(f);
    assert!(!dir.path().join("unfinished.bin").exists());

    // Replaced by someone else meanwhile: their file is left alone.
    let f = root.create_fresh_for(&other, 10, 0o644).unwrap();
    fs::remove_file(dir.path().join("unfinished.bin")).unwrap();
    fs::write(dir.path().join("unfinished.bin"), b"theirs").unwrap();
    f.discard().unwrap();
    assert_eq!(
        fs::read(dir.path().join("unfinished.bin")).unwrap(),
        b"theirs"
    );
}

/// A name that is taken after all (a file, or a symlink pointing out of the root) is not
/// written through: the new file is staged and replaces it only at install.
#[test]
fn a_taken_name_is_staged_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let root = Root::open(dir.path()).unwrap();
    fs::write(dir.path().join("old.bin"), b"old copy").unwrap();
    std::os::unix::fs::symlink(outside.path().join("victim"), dir.path().join("link")).unwrap();
    for name in ["old.bin", "link"] {
        let target = rel(name);
        let f = root.create_fresh_for(&target, 3, 0o644).unwrap();
        f.write_at(0, b"new").unwrap();
        if name == "old.bin" {
            assert_eq!(fs::read(dir.path().join(name)).unwrap(), b"old copy");
        }
        root.install_file(f, &target, &meta(0o644, 1_600_000_000, 0).into())
            .unwrap();
        let st = fs::symlink_metadata(dir.path().join(name)).unwrap();
        assert!(st.file_type().is_file(), "{name} is now a regular file");
        assert_eq!(fs::read(dir.path().join(name)).unwrap(), b"new");
    }
    assert!(
        !outside.path().join("victim").exists(),
        "the symlink was not followed"
    );
    assert!(staging_entries(dir.path()).is_empty());
}
