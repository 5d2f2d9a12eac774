//! Snapshots on a real file system: what a snapshot holds, that nothing the receiver does to
//! the live tree afterwards changes it (the hard-link method shares inodes), listing,
//! labels, deletion, hostile ids, and the reflink method on a loop-mounted XFS (root only).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use haul_proto::Meta;
use haul_store::{Attrs, PatchRange, RelPath, Root, SnapshotMethod, SourceIdentity, StoreError};

fn rel(p: &str) -> RelPath {
    RelPath::parse(p.as_bytes()).unwrap()
}

fn set_mtime(path: &Path, secs: u64) {
    let f = fs::File::options().read(true).open(path).unwrap();
    f.set_times(fs::FileTimes::new().set_modified(UNIX_EPOCH + Duration::from_secs(secs)))
        .unwrap();
}

/// What is recorded of every entry: kind, mode, mtime, and the BLAKE3 of a file's bytes or
/// a link's target.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    kind: &'static str,
    mode: u32,
    mtime: (i64, i64),
    content: String,
}

/// Every entry under `dir` (not `dir` itself) by relative path; `.haul` at the top left out
/// when `skip_haul`.
fn record(dir: &Path, skip_haul: bool) -> BTreeMap<PathBuf, Record> {
    fn walk(base: &Path, dir: &Path, skip_haul: bool, out: &mut BTreeMap<PathBuf, Record>) {
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let relp = path.strip_prefix(base).unwrap().to_path_buf();
            if skip_haul && relp == Path::new(".haul") {
                continue;
            }
            let st = fs::symlink_metadata(&path).unwrap();
            let ft = st.file_type();
            let (kind, content) = if ft.is_dir() {
                ("dir", String::new())
            } else if ft.is_symlink() {
                let target = fs::read_link(&path).unwrap();
                ("symlink", target.display().to_string())
            } else if ft.is_file() {
                let hash = blake3::hash(&fs::read(&path).unwrap());
                ("file", hash.to_hex().to_string())
            } else {
                ("special", String::new())
            };
            let mode = if ft.is_symlink() {
                0
            } else {
                st.mode() & 0o7777
            };
            out.insert(
                relp,
                Record {
                    kind,
                    mode,
                    mtime: (st.mtime(), st.mtime_nsec()),
                    content,
                },
            );
            if ft.is_dir() {
                walk(base, &path, false, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, skip_haul, &mut out);
    out
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

const BIG: usize = 3 << 20;
const SPARSE: u64 = 64 << 20;

/// A tree with plain files, a sparse file, nested directories, symlinks, a hard-link pair, a
/// FIFO, a read-only directory and a `.haul` of its own further down.
fn build(dir: &Path) {
    fs::write(dir.join("a.txt"), b"alpha").unwrap();
    fs::set_permissions(dir.join("a.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::write(dir.join("big.bin"), pattern(BIG)).unwrap();
    fs::write(dir.join("gone.txt"), b"to be removed").unwrap();
    let sparse = fs::File::create(dir.join("sparse.img")).unwrap();
    sparse.set_len(SPARSE).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, &[7u8; 4096], 1 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, &[9u8; 4096], SPARSE - 4096).unwrap();
    drop(sparse);
    fs::create_dir_all(dir.join("dir/nested")).unwrap();
    fs::write(dir.join("dir/nested/deep.txt"), b"deep").unwrap();
    symlink("../a.txt", dir.join("dir/link")).unwrap();
    symlink("/etc/passwd", dir.join("abs")).unwrap();
    fs::write(dir.join("h1"), b"linked").unwrap();
    fs::hard_link(dir.join("h1"), dir.join("dir/h2")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        dir.join("fifo").as_path(),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o620),
        0,
    )
    .unwrap();
    fs::create_dir_all(dir.join("user/.haul")).unwrap();
    fs::write(dir.join("user/.haul/kept"), b"user data").unwrap();
    fs::create_dir(dir.join("ro")).unwrap();
    fs::write(dir.join("ro/inside"), b"ro").unwrap();
    for (i, p) in [
        "a.txt",
        "big.bin",
        "gone.txt",
        "sparse.img",
        "dir/nested/deep.txt",
        "h1",
        "ro/inside",
    ]
    .iter()
    .enumerate()
    {
        set_mtime(&dir.join(p), 1_600_000_000 + i as u64);
    }
    for (i, d) in ["dir/nested", "dir", "user/.haul", "user", "ro"]
        .iter()
        .enumerate()
    {
        set_mtime(&dir.join(d), 1_500_000_000 + i as u64);
    }
    fs::set_permissions(dir.join("dir"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::set_permissions(dir.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
}

/// Whether `dir` is on tmpfs or ext4, where there are no reflinks.
fn no_reflinks_here(dir: &Path) -> bool {
    let st = rustix::fs::statfs(dir).unwrap();
    matches!(st.f_type as u64, 0xEF53 | 0x0102_1994)
}

fn meta(mode: u32, mtime_sec: i64) -> Meta {
    Meta {
        mode,
        mtime_sec,
        mtime_nsec: 0,
    }
}

#[test]
fn a_hard_link_snapshot_survives_everything_the_receiver_does_to_the_live_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let live = tmp.path();
    build(live);
    let root = Root::open(live).unwrap();
    fs::write(live.join(".haul/private"), b"store state").unwrap();
    assert!(!root.has_snapshots());
    let before = record(live, true);

    let info = root
        .create_snapshot(&RelPath::root(), "before the run")
        .unwrap();
    assert!(root.has_snapshots());
    if no_reflinks_here(live) {
        assert_eq!(info.method, Some(SnapshotMethod::Hardlink));
    }
    let method = info.method.unwrap();
    assert!(info.complete);
    assert_eq!(info.label, "before the run");
    assert!(info.subtree.is_root());
    assert_eq!(info.files, 9, "{info:?}");
    assert_eq!(info.symlinks, 2);
    assert_eq!(info.specials, 1);
    assert_eq!(info.dirs, 5);
    assert_eq!(info.skipped, 0);
    assert_eq!(
        info.bytes,
        5 + BIG as u64 + 13 + SPARSE + 4 + 6 + 6 + 2 + 9,
        "every name's size"
    );

    let tree = root.snapshot_dir(&info.id).unwrap();
    assert_eq!(
        tree,
        live.join(".haul/snapshots").join(&info.id).join("tree")
    );
    assert!(
        !tree.join(".haul").exists(),
        "the store's state is never copied"
    );
    assert_eq!(
        fs::read(tree.join("user/.haul/kept")).unwrap(),
        b"user data"
    );
    let snap = record(&tree, false);
    assert_eq!(snap, before, "the snapshot is the tree as it was");
    let tree_st = fs::metadata(&tree).unwrap();
    assert_eq!(
        tree_st.mode() & 0o7777,
        fs::metadata(live).unwrap().mode() & 0o7777
    );
    // A hard-link group stays one group.
    let (h1, h2) = (
        fs::metadata(tree.join("h1")).unwrap(),
        fs::metadata(tree.join("dir/h2")).unwrap(),
    );
    assert_eq!(h1.ino(), h2.ino());
    if method == SnapshotMethod::Hardlink {
        assert_eq!(h1.ino(), fs::metadata(live.join("h1")).unwrap().ino());
        assert_eq!(fs::metadata(live.join("big.bin")).unwrap().nlink(), 2);
    }

    // (a) A changed file installed the usual way, also over a name of the link group.
    for (path, data) in [("a.txt", &b"alpha, version two"[..]), ("h1", b"relinked")] {
        let file = root.create_staging(data.len() as u64).unwrap();
        file.write_at(0, data).unwrap();
        root.install_file(file, &rel(path), &meta(0o644, 1_700_000_000).into())
            .unwrap();
    }

    // (b) An in-place patch of a file the snapshot shares is refused, touching nothing.
    let existing = root.open_existing(&rel("big.bin")).unwrap().unwrap();
    let identity = SourceIdentity {
        size: BIG as u64,
        mtime_sec: 1_700_000_001,
        mtime_nsec: 0,
        chunk_size: 1 << 20,
        stamp: 0,
    };
    let opened = root.open_partial(&rel("big.bin"), identity).unwrap();
    opened.partial.write_at(1 << 20, &[0xAB; 4096]).unwrap();
    let ranges = [PatchRange {
        offset: 1 << 20,
        len: 4096,
    }];
    let patched = root
        .patch_in_place(
            &rel("big.bin"),
            &existing.file,
            BIG as u64,
            &ranges,
            &opened.partial,
            &meta(0o600, 1_700_000_001).into(),
        )
        .unwrap();
    assert_eq!(patched, method == SnapshotMethod::Reflink);
    opened.partial.discard().unwrap();
    drop(existing);
    if method == SnapshotMethod::Hardlink {
        assert_eq!(fs::read(live.join("big.bin")).unwrap(), pattern(BIG));
    }

    // (c) New metadata on shared files: the live name gets a new inode; unchanged metadata
    // leaves the inode alone.
    let old_ino = fs::metadata(live.join("sparse.img")).unwrap().ino();
    root.set_file_meta(&rel("sparse.img"), &meta(0o600, 1_650_000_000).into())
        .unwrap();
    let st = fs::metadata(live.join("sparse.img")).unwrap();
    assert_eq!((st.mode() & 0o7777, st.mtime()), (0o600, 1_650_000_000));
    assert_eq!(st.len(), SPARSE);
    assert!(
        st.blocks() * 512 < 8 << 20,
        "holes kept: {} blocks",
        st.blocks()
    );
    if method == SnapshotMethod::Hardlink {
        assert_ne!(st.ino(), old_ino, "moved to a new inode");
        assert_eq!(st.nlink(), 1);
    }
    let mut want = vec![0u8; SPARSE as usize];
    want[1 << 20..(1 << 20) + 4096].fill(7);
    want[SPARSE as usize - 4096..].fill(9);
    assert!(fs::read(live.join("sparse.img")).unwrap() == want);
    let deep = live.join("dir/nested/deep.txt");
    let deep_ino = fs::metadata(&deep).unwrap().ino();
    let same = fs::metadata(&deep).unwrap();
    root.set_file_meta(
        &rel("dir/nested/deep.txt"),
        &meta(same.mode() & 0o7777, same.mtime()).into(),
    )
    .unwrap();
    assert_eq!(
        fs::metadata(&deep).unwrap().ino(),
        deep_ino,
        "nothing to change"
    );

    // (d) Removal of a file and a directory.
    assert_eq!(root.remove_tree(&rel("gone.txt")).unwrap(), 1);
    assert_eq!(root.remove_tree(&rel("dir")).unwrap(), 5);

    // The snapshot is exactly as it was taken...
    assert_eq!(record(&tree, false), before);
    // ...and the live tree has the new state.
    assert_eq!(fs::read(live.join("a.txt")).unwrap(), b"alpha, version two");
    assert_eq!(fs::read(live.join("h1")).unwrap(), b"relinked");
    assert!(!live.join("gone.txt").exists() && !live.join("dir").exists());
    assert!(tree.join("gone.txt").exists() && tree.join("dir/nested/deep.txt").exists());

    let listed = root.list_snapshots().unwrap();
    assert_eq!(listed, vec![info.clone()]);
    root.delete_snapshot(&info.id).unwrap();
    assert!(!tree.exists());
    assert!(root.list_snapshots().unwrap().is_empty());
    assert!(!root.has_snapshots());
    // The live tree did not lose anything with it.
    assert_eq!(fs::read(live.join("h1")).unwrap(), b"relinked");
    assert_eq!(fs::read(live.join("big.bin")).unwrap().len(), BIG);
}

#[test]
fn snapshots_list_oldest_first_with_their_labels_and_delete_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("f"), b"x").unwrap();
    let root = Root::open(tmp.path()).unwrap();
    let labels = [
        "nightly with spaces",
        "unicode: caf\u{e9} \u{2713} \u{1F600}",
        "two\nlines\r\nand a \\n that is not one",
        "",
    ];
    let mut ids = Vec::new();
    for label in labels {
        let info = root.create_snapshot(&RelPath::root(), label).unwrap();
        assert_eq!(info.label, label);
        ids.push(info.id);
    }
    for id in &ids {
        assert_eq!(id.len(), 23, "{id}");
        assert_eq!(&id[8..9], "T");
        assert_eq!(&id[15..17], "Z-");
    }
    // Another open of the same root sees them, in creation order, as they were labelled.
    let again = Root::open(tmp.path()).unwrap();
    assert!(again.has_snapshots());
    let listed = again.list_snapshots().unwrap();
    assert_eq!(
        listed.iter().map(|s| &s.id).collect::<Vec<_>>(),
        ids.iter().collect::<Vec<_>>()
    );
    assert_eq!(
        listed.iter().map(|s| s.label.as_str()).collect::<Vec<_>>(),
        labels
    );
    assert!(
        listed
            .iter()
            .all(|s| s.complete && s.files == 1 && s.bytes == 1)
    );
    // The label cannot forge a line of the info file.
    let info_text = fs::read_to_string(
        tmp.path()
            .join(".haul/snapshots")
            .join(&ids[2])
            .join("info"),
    )
    .unwrap();
    assert!(
        info_text
            .lines()
            .filter(|l| l.starts_with("complete="))
            .count()
            == 1
    );
    assert!(info_text.contains("label=two\\nlines\\r\\nand a \\\\n that is not one\n"));

    root.delete_snapshot(&ids[1]).unwrap();
    let left: Vec<String> = root
        .list_snapshots()
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(left, vec![ids[0].clone(), ids[2].clone(), ids[3].clone()]);
    assert!(matches!(
        root.delete_snapshot(&ids[1]),
        Err(StoreError::NoSuchSnapshot { .. })
    ));
    assert!(matches!(
        root.snapshot_dir(&ids[1]),
        Err(StoreError::NoSuchSnapshot { .. })
    ));
    for id in [&ids[0], &ids[2], &ids[3]] {
        root.delete_snapshot(id).unwrap();
    }
    assert!(!root.has_snapshots());
    assert!(!Root::open(tmp.path()).unwrap().has_snapshots());
}

#[test]
fn hostile_ids_are_refused_and_deletion_stays_inside_the_snapshots_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let live = tmp.path();
    fs::create_dir(live.join("victim")).unwrap();
    fs::write(live.join("victim/precious"), b"keep me").unwrap();
    let root = Root::open(live).unwrap();
    let info = root.create_snapshot(&RelPath::root(), "x").unwrap();
    for bad in [
        "",
        ".",
        "..",
        "../../victim",
        "../snapshots",
        "a/b",
        "/tmp",
        "id\0nul",
        "x.y",
        "with space",
        "new\nline",
    ] {
        for result in [
            root.delete_snapshot(bad).map(|_| PathBuf::new()),
            root.snapshot_dir(bad),
        ] {
            assert!(
                matches!(result, Err(StoreError::InvalidSnapshotId { .. })),
                "{bad:?}: {result:?}"
            );
        }
    }
    let snaps = live.join(".haul/snapshots");
    // A symlink planted under an id's name is not a snapshot, and not followed.
    symlink(live.join("victim"), snaps.join("20200101T000000Z-aaaaaa")).unwrap();
    assert!(matches!(
        root.delete_snapshot("20200101T000000Z-aaaaaa"),
        Err(StoreError::NoSuchSnapshot { .. })
    ));
    // A symlink planted inside a snapshot is removed as a link.
    symlink(live.join("victim"), snaps.join(&info.id).join("tree/evil")).unwrap();
    root.delete_snapshot(&info.id).unwrap();
    assert_eq!(fs::read(live.join("victim/precious")).unwrap(), b"keep me");
    assert!(!snaps.join(&info.id).exists());
    let listed = root.list_snapshots().unwrap();
    assert!(
        listed.is_empty(),
        "a planted link is not listed: {listed:?}"
    );
}

#[test]
fn an_interrupted_snapshot_is_listed_as_incomplete_and_can_be_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let root = Root::open(tmp.path()).unwrap();
    let snaps = tmp.path().join(".haul/snapshots");
    // Died before even the first info: only the id is known.
    fs::create_dir_all(snaps.join("20200101T000000Z-abcdef/tree/half")).unwrap();
    // Died mid-copy: the first info says complete=0.
    let mid = snaps.join("20210101T000000Z-012345");
    fs::create_dir_all(mid.join("tree")).unwrap();
    let mut f = fs::File::create(mid.join("info")).unwrap();
    writeln!(
        f,
        "id=20210101T000000Z-012345\ncreated=1609459200\nlabel=cut short\nsubtree=a/b\ncomplete=0"
    )
    .unwrap();
    drop(f);
    assert!(root.has_snapshots(), "incomplete ones may share inodes too");
    let listed = root.list_snapshots().unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].id, "20200101T000000Z-abcdef");
    assert_eq!(listed[0].created, 1_577_836_800);
    assert!(!listed[0].complete && listed[0].method.is_none());
    assert_eq!(listed[1].label, "cut short");
    assert_eq!(listed[1].subtree, rel("a/b"));
    assert!(!listed[1].complete);
    for s in &listed {
        let err = root.snapshot_dir(&s.id).unwrap_err();
        assert!(
            matches!(err, StoreError::SnapshotIncomplete { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("delete it"), "{err}");
    }
    for s in &listed {
        root.delete_snapshot(&s.id).unwrap();
    }
    assert!(root.list_snapshots().unwrap().is_empty());
    assert_eq!(fs::read_dir(&snaps).unwrap().count(), 0);
}

#[test]
fn a_snapshot_of_a_subtree_holds_only_that_subtree() {
    let tmp = tempfile::tempdir().unwrap();
    build(tmp.path());
    let root = Root::open(tmp.path()).unwrap();
    let info = root.create_snapshot(&rel("dir"), "just dir").unwrap();
    assert_eq!(info.subtree, rel("dir"));
    let tree = root.snapshot_dir(&info.id).unwrap();
    assert_eq!(record(&tree, false), record(&tmp.path().join("dir"), false));
    assert!(!tree.join("a.txt").exists());
    let st = fs::metadata(&tree).unwrap();
    assert_eq!((st.mode() & 0o7777, st.mtime()), (0o750, 1_500_000_001));

    // From a sub-root: the subtree is recorded from the top, and the top root lists it.
    let sub = root.subdir(&rel("dir")).unwrap();
    let nested = sub.create_snapshot(&rel("nested"), "nested").unwrap();
    assert_eq!(nested.subtree, rel("dir/nested"));
    let listed: Vec<String> = root
        .list_snapshots()
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(listed, vec![info.id.clone(), nested.id.clone()]);
    let tree = sub.snapshot_dir(&nested.id).unwrap();
    assert_eq!(fs::read(tree.join("deep.txt")).unwrap(), b"deep");
    assert!(sub.has_snapshots());

    // Not a directory, or missing: refused.
    assert!(root.create_snapshot(&rel("a.txt"), "").is_err());
    assert!(root.create_snapshot(&rel("missing"), "").is_err());
    assert_eq!(root.list_snapshots().unwrap().len(), 2);
}

/// An XFS file system in a loop-mounted image, unmounted on drop.
struct XfsMount {
    _dir: tempfile::TempDir,
    mnt: PathBuf,
}

impl Drop for XfsMount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.mnt)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

fn mount_xfs() -> XfsMount {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("xfs.img");
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    fs::File::create(&image)
        .unwrap()
        .set_len(512 << 20)
        .unwrap();
    let mkfs = Command::new("mkfs.xfs")
        .args(["-q", "-m", "reflink=1"])
        .arg(&image)
        .status();
    match mkfs {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "mkfs.xfs is not installed, so the reflink snapshot test cannot run: apt-get install xfsprogs"
        ),
        Err(e) => panic!("could not run mkfs.xfs: {e}"),
        Ok(s) => assert!(s.success(), "mkfs.xfs failed: {s}"),
    }
    let mount = Command::new("mount")
        .args(["-o", "loop"])
        .arg(&image)
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(
        mount.success(),
        "mount -o loop of the XFS image failed ({mount}): the test needs loop devices"
    );
    XfsMount { _dir: dir, mnt }
}

#[test]
fn on_xfs_snapshots_are_reflinks_and_in_place_patches_leave_them_alone() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("note: not root, so no XFS loop mount: the reflink snapshot test is skipped");
        return;
    }
    let xfs = mount_xfs();
    let live = xfs.mnt.as_path();
    build(live);
    let root = Root::open(live).unwrap();
    let before = record(live, true);
    let info = root.create_snapshot(&RelPath::root(), "reflinked").unwrap();
    assert_eq!(info.method, Some(SnapshotMethod::Reflink), "{info:?}");
    assert_eq!(info.copied, 0);
    let tree = root.snapshot_dir(&info.id).unwrap();
    assert_eq!(record(&tree, false), before);
    // Separate inodes, but one link group stays one group.
    let (live_h1, snap_h1, snap_h2) = (
        fs::metadata(live.join("h1")).unwrap(),
        fs::metadata(tree.join("h1")).unwrap(),
        fs::metadata(tree.join("dir/h2")).unwrap(),
    );
    assert_ne!(live_h1.ino(), snap_h1.ino());
    assert_eq!(snap_h1.ino(), snap_h2.ino());
    assert_eq!(fs::metadata(live.join("big.bin")).unwrap().nlink(), 1);
    assert!(fs::metadata(tree.join("sparse.img")).unwrap().blocks() * 512 < 8 << 20);

    // In place is allowed here (one link), and the snapshot keeps its bytes.
    let existing = root.open_existing(&rel("big.bin")).unwrap().unwrap();
    let identity = SourceIdentity {
        size: BIG as u64,
        mtime_sec: 1_700_000_001,
        mtime_nsec: 0,
        chunk_size: 1 << 20,
        stamp: 0,
    };
    let opened = root.open_partial(&rel("big.bin"), identity).unwrap();
    opened.partial.write_at(1 << 20, &[0xAB; 4096]).unwrap();
    let ranges = [PatchRange {
        offset: 1 << 20,
        len: 4096,
    }];
    let attrs: Attrs = meta(0o600, 1_700_000_001).into();
    let patched = root
        .patch_in_place(
            &rel("big.bin"),
            &existing.file,
            BIG as u64,
            &ranges,
            &opened.partial,
            &attrs,
        )
        .unwrap();
    assert!(patched, "a reflinked file is patched in place");
    opened.partial.discard().unwrap();
    let mut want = pattern(BIG);
    want[1 << 20..(1 << 20) + 4096].fill(0xAB);
    assert!(fs::read(live.join("big.bin")).unwrap() == want);
    assert!(fs::read(tree.join("big.bin")).unwrap() == pattern(BIG));
    // Metadata in place too: the live inode stays, the snapshot's copy keeps its own.
    let ino = fs::metadata(live.join("a.txt")).unwrap().ino();
    root.set_file_meta(&rel("a.txt"), &meta(0o604, 1_650_000_000).into())
        .unwrap();
    assert_eq!(fs::metadata(live.join("a.txt")).unwrap().ino(), ino);
    assert_eq!(record(&tree, false), before);
    drop(existing);
    drop(root);
    drop(xfs);
}
