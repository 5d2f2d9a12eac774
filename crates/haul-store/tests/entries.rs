//! Owners, attributes, special files, hard links, removal and the aside registry, on a real
//! file system (run as root: chown and mknod of devices need it).

use std::fs;
use std::os::unix::fs::{MetadataExt, symlink};
use std::sync::Arc;

use haul_proto::{EntryKind, Meta, Xattr};
use haul_store::{Attrs, FileKind, LinkOutcome, NotAppliedCounter, RelPath, Root};

fn rel(p: &str) -> RelPath {
    RelPath::parse(p.as_bytes()).unwrap()
}

fn meta(mode: u32) -> Meta {
    Meta {
        mode,
        mtime_sec: 1_600_000_000,
        mtime_nsec: 42,
    }
}

fn xattr(name: &str, value: &[u8]) -> Xattr {
    Xattr {
        name: bytes::Bytes::copy_from_slice(name.as_bytes()),
        value: bytes::Bytes::copy_from_slice(value),
    }
}

/// cap_net_bind_service=ep in the kernel's v2 format.
fn capability() -> Vec<u8> {
    let mut v = 0x0200_0001u32.to_le_bytes().to_vec();
    for word in [1u32 << 10, 0, 0, 0] {
        v.extend_from_slice(&word.to_le_bytes());
    }
    v
}

fn install(root: &Root, path: &str, attrs: &Attrs) {
    let f = root.create_staging(5).unwrap();
    f.write_at(0, b"hello").unwrap();
    root.install_file(f, &rel(path), attrs).unwrap();
}

#[test]
fn owner_mode_capability_and_user_xattrs_are_applied_in_an_order_that_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::open(dir.path()).unwrap();
    let report = Arc::new(NotAppliedCounter::default());
    let attrs = Attrs {
        owner: Some((4242, 4343)),
        special_bits: true,
        xattrs: Some(vec![
            xattr("security.capability", &capability()),
            xattr("user.a", b"1"),
            xattr("user.b", &[0, 255, 7]),
        ]),
        privileged_xattrs: true,
        report: Some(report.clone()),
        ..meta(0o4755).into()
    };
    install(&root, "tool", &attrs);
    let path = dir.path().join("tool");
    let st = fs::symlink_metadata(&path).unwrap();
    assert_eq!((st.uid(), st.gid()), (4242, 4343));
    assert_eq!(
        st.mode() & 0o7777,
        0o4755,
        "chown must not have cleared setuid"
    );
    assert_eq!(st.mtime_nsec(), 42);
    let held = root.read_xattrs(&rel("tool")).unwrap();
    let names: Vec<&[u8]> = held.iter().map(|x| &x.name[..]).collect();
    assert_eq!(
        names,
        [&b"security.capability"[..], b"user.a", b"user.b"],
        "sorted, and the capability survived the chown and the data"
    );
    assert!(report.snapshot().is_empty(), "{:?}", report.snapshot());

    // Extras in settable namespaces are removed; an unprivileged session does not set or
    // remove security.* and counts what it could not set.
    let attrs = Attrs {
        xattrs: Some(vec![xattr("user.a", b"2")]),
        report: Some(report.clone()),
        ..meta(0o644).into()
    };
    root.set_file_meta(&rel("tool"), &attrs).unwrap();
    let held = root.read_xattrs(&rel("tool")).unwrap();
    let names: Vec<&[u8]> = held.iter().map(|x| &x.name[..]).collect();
    assert_eq!(names, [&b"security.capability"[..], b"user.a"]);
    assert_eq!(&held[1].value[..], b"2");

    let unprivileged = Attrs {
        xattrs: Some(vec![xattr("security.capability", &capability())]),
        report: Some(report.clone()),
        ..meta(0o4755).into()
    };
    install(&root, "plain", &unprivileged);
    let st = fs::symlink_metadata(dir.path().join("plain")).unwrap();
    assert_eq!(
        st.mode() & 0o7777,
        0o755,
        "setuid dropped without special_bits"
    );
    assert!(root.read_xattrs(&rel("plain")).unwrap().is_empty());
    let n = report.snapshot();
    assert_eq!((n.special_bits, n.xattrs), (1, 1), "{n:?}");
}

#[test]
fn devices_only_with_the_grant_fifos_and_sockets_always() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::open(dir.path()).unwrap();
    let report = Arc::new(NotAppliedCounter::default());
    let attrs = Attrs {
        report: Some(report.clone()),
        ..meta(0o640).into()
    };
    let null = rustix::fs::makedev(1, 3);
    assert!(
        !root
            .install_special(&rel("null"), EntryKind::CharDev, null, false, &attrs)
            .unwrap()
    );
    assert!(fs::symlink_metadata(dir.path().join("null")).is_err());
    assert_eq!(report.snapshot().devices, 1);
    assert!(
        root.install_special(&rel("null"), EntryKind::CharDev, null, true, &attrs)
            .unwrap()
    );
    let st = root.stat_entry(&rel("null")).unwrap().unwrap();
    assert_eq!(
        (st.kind, st.rdev, st.mode),
        (FileKind::CharDev, null, 0o640)
    );
    assert_eq!(st.mtime_nsec, 42);
    for (name, kind, want) in [
        ("fifo", EntryKind::Fifo, FileKind::Fifo),
        ("sock", EntryKind::Socket, FileKind::Socket),
    ] {
        assert!(
            root.install_special(&rel(name), kind, 0, false, &attrs)
                .unwrap()
        );
        assert_eq!(root.stat_entry(&rel(name)).unwrap().unwrap().kind, want);
    }
}

#[test]
fn hard_links_are_made_kept_and_refused_for_non_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::open(dir.path()).unwrap();
    root.create_dir_all(&rel("a")).unwrap();
    root.create_dir_all(&rel("b")).unwrap();
    install(&root, "a/first", &meta(0o644).into());
    fs::write(dir.path().join("b/second"), "old other file").unwrap();
    assert_eq!(
        root.install_hard_link(&rel("b/second"), &rel("a/first"))
            .unwrap(),
        LinkOutcome::Linked
    );
    let ino = |p: &str| fs::symlink_metadata(dir.path().join(p)).unwrap().ino();
    assert_eq!(ino("a/first"), ino("b/second"));
    assert_eq!(
        root.install_hard_link(&rel("b/second"), &rel("a/first"))
            .unwrap(),
        LinkOutcome::Unchanged
    );
    symlink("/etc/passwd", dir.path().join("a/evil")).unwrap();
    assert!(root.install_hard_link(&rel("b/x"), &rel("a/evil")).is_err());
    assert!(root.install_hard_link(&rel("b/x"), &rel("a")).is_err());
    assert!(
        root.install_hard_link(&rel("b/x"), &rel("missing"))
            .is_err()
    );
    assert!(fs::symlink_metadata(dir.path().join("b/x")).is_err());
}

#[test]
fn remove_tree_never_follows_a_symlink_and_spares_state_and_aside_copies() {
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("precious"), "keep").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = Root::open(dir.path()).unwrap();
    fs::create_dir_all(dir.path().join("x/y/z")).unwrap();
    fs::write(dir.path().join("x/y/z/f"), "1").unwrap();
    symlink(outside.path(), dir.path().join("x/link-out")).unwrap();
    assert_eq!(root.count_tree(&rel("x")).unwrap(), 5);
    assert!(
        dir.path().join("x/y/z/f").exists(),
        "counting removes nothing"
    );
    assert_eq!(root.remove_tree(&rel("x")).unwrap(), 5);
    assert!(!dir.path().join("x").exists());
    assert!(outside.path().join("precious").exists());
    assert!(root.remove_tree(&RelPath::root()).is_err());

    let names = root.list_names(&RelPath::root()).unwrap().unwrap();
    assert!(names.iter().all(|(n, _)| n.as_slice() != b".haul"));

    fs::create_dir_all(dir.path().join("po/ofuser")).unwrap();
    let moved = root.rename_aside(&rel("po/ofuser")).unwrap().unwrap();
    assert_eq!(moved, rel("po/ofuser.1"));
    assert!(root.is_aside(&rel("po/ofuser.1")));
    assert!(root.is_aside(&rel("po/ofuser.1/inner")));
    assert!(!root.is_aside(&rel("po/ofuser")));
    assert!(!root.is_aside(&rel("po/ofuser.10")));
}

#[test]
fn an_unprivileged_receiver_counts_owners_it_cannot_set() {
    // In a child process without CAP_CHOWN: the test binary re-runs itself as nobody.
    if std::env::var_os("HAUL_STORE_AS_NOBODY").is_some() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        let report = Arc::new(NotAppliedCounter::default());
        let attrs = Attrs {
            owner: Some((0, 0)),
            report: Some(report.clone()),
            ..meta(0o644).into()
        };
        install(&root, "f", &attrs);
        assert_eq!(report.snapshot().owners, 1);
        return;
    }
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "an_unprivileged_receiver_counts_owners_it_cannot_set",
        ])
        .env("HAUL_STORE_AS_NOBODY", "1")
        .env("TMPDIR", "/tmp")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
