//! The confined operations a remote client may ask of a receiver (`ops`), each with its
//! confinement angle: a symlink planted in a component pointing outside the root, the final
//! component a symlink, the reserved `.haul`, the root itself, and a component swapped for a
//! symlink while the operations run. The directory outside must never change, nor be listed,
//! opened or removed from.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use haul_store::{FileKind, PathError, RelPath, Root, StoreError, TreeSize};

fn rel(p: &str) -> RelPath {
    RelPath::parse(p.as_bytes()).unwrap()
}

/// Contents of every file outside the root: a read that escaped would return this.
const OUTSIDE: &[u8] = b"OUTSIDE-CONTENT";

/// A root and, beside it, an outside directory with the same names the tests use inside, so
/// anything that followed a symlink out would find something to list, read or remove.
struct Fixture {
    _tmp: tempfile::TempDir,
    root_dir: PathBuf,
    outside: PathBuf,
    root: Root,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside-dir");
    for d in ["sub", "sub/deeper", "empty"] {
        fs::create_dir_all(outside.join(d)).unwrap();
    }
    for f in ["f", "ctl", "sub/f", "sub/deeper/f", "OUTSIDE-MARKER"] {
        fs::write(outside.join(f), OUTSIDE).unwrap();
    }
    let root_dir = tmp.path().join("root");
    fs::create_dir_all(root_dir.join("dir/sub")).unwrap();
    fs::write(root_dir.join("dir/f"), b"in").unwrap();
    fs::write(root_dir.join("dir/sub/f"), b"inner").unwrap();
    symlink(&outside, root_dir.join("out")).unwrap();
    symlink(outside.join("f"), root_dir.join("out-file")).unwrap();
    symlink(outside.join("empty"), root_dir.join("out-empty")).unwrap();
    symlink(&outside, root_dir.join("dir/out")).unwrap();
    let root = Root::open(&root_dir).unwrap();
    Fixture {
        _tmp: tmp,
        root_dir,
        outside,
        root,
    }
}

/// Every entry under `dir` with kind, mode, size, mtime and (files) contents, without
/// following links.
fn snapshot(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let m = fs::symlink_metadata(&d).unwrap();
        let contents = if m.is_file() {
            format!("{:?}", fs::read(&d).unwrap())
        } else {
            String::new()
        };
        out.push(format!(
            "{} {:o} {} {}.{} {contents}",
            d.display(),
            m.mode(),
            m.len(),
            m.mtime(),
            m.mtime_nsec()
        ));
        if m.is_dir() {
            for e in fs::read_dir(&d).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out.sort();
    out
}

fn is_symlink_in_path(err: &StoreError, at: &Path) -> bool {
    matches!(err, StoreError::SymlinkInPath { path } if path == at)
}

fn is_refused(err: &StoreError) -> bool {
    matches!(err, StoreError::Refused { .. })
}

fn is_not_found(err: &StoreError) -> bool {
    matches!(err, StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

/// One visited entry: its path from the start, its kind, and (files) what was read from it.
type Visited = (String, FileKind, Option<Vec<u8>>);

/// Paths, kinds and (files) contents of a visit.
fn visit_all(root: &Root, from: &RelPath) -> Result<Vec<Visited>, StoreError> {
    let mut seen = Vec::new();
    root.visit_tree(from, &mut |path, st, file| {
        let contents = file.map(|mut f| {
            let mut data = Vec::new();
            f.read_to_end(&mut data).unwrap();
            data
        });
        assert_eq!(contents.is_some(), st.kind == FileKind::File, "{path:?}");
        seen.push((path.display(), st.kind, contents));
        Ok(())
    })?;
    Ok(seen)
}

#[test]
fn reserved_and_escaping_paths_never_become_relpaths() {
    assert_eq!(RelPath::parse(b".haul").unwrap_err(), PathError::Reserved);
    assert_eq!(
        RelPath::parse(b".haul/staging/1-1").unwrap_err(),
        PathError::Reserved
    );
    assert_eq!(RelPath::parse(b"a/../../x").unwrap_err(), PathError::DotDot);
    assert_eq!(
        RelPath::parse(b"/etc/passwd").unwrap_err(),
        PathError::Absolute
    );
    assert_eq!(
        RelPath::parse(b"a//b").unwrap_err(),
        PathError::EmptyComponent
    );
    let mut p = RelPath::root();
    assert_eq!(p.push(b".haul").unwrap_err(), PathError::Reserved);
    // Deeper down, `.haul` is an ordinary name of the user's.
    assert!(RelPath::parse(b"a/.haul").is_ok());
}

#[test]
fn statfs_reports_nonzero_space_with_free_within_total() {
    let fx = fixture();
    let space = fx.root.statfs().unwrap();
    assert!(space.total_bytes > 0 && space.free_bytes > 0, "{space:?}");
    assert!(space.free_bytes <= space.total_bytes, "{space:?}");
    assert!(space.free_inodes <= space.total_inodes, "{space:?}");
    // btrfs has no fixed inode table and reports none; every other file system has some.
    if space.total_inodes != 0 {
        assert!(space.free_inodes > 0, "{space:?}");
    }
    assert_eq!(space.free_bytes, fx.root.available_bytes().unwrap());
}

#[test]
fn stat_path_reports_what_is_there_and_never_follows_a_symlink() {
    let fx = fixture();
    let before = snapshot(&fx.outside);
    let st = fx.root.stat_path(&rel("dir/f")).unwrap().unwrap();
    let m = fs::symlink_metadata(fx.root_dir.join("dir/f")).unwrap();
    assert_eq!(st.kind, FileKind::File);
    assert_eq!(
        (st.size, st.mode, st.uid, st.gid, st.nlink),
        (2, m.mode() & 0o7777, m.uid(), m.gid(), 1)
    );
    assert_eq!(
        (st.mtime_sec, i64::from(st.mtime_nsec)),
        (m.mtime(), m.mtime_nsec())
    );
    assert_eq!(
        fx.root.stat_path(&RelPath::root()).unwrap().unwrap().kind,
        FileKind::Dir
    );
    assert_eq!(
        fx.root.stat_path(&rel("dir")).unwrap().unwrap().kind,
        FileKind::Dir
    );

    // The final component a symlink: reported as one (its size is its target's length).
    let link = fx.root.stat_path(&rel("out")).unwrap().unwrap();
    assert_eq!(link.kind, FileKind::Symlink);
    assert_eq!(link.size, fx.outside.as_os_str().len() as u64);
    let link = fx.root.stat_path(&rel("out-file")).unwrap().unwrap();
    assert_eq!(link.kind, FileKind::Symlink);

    // A symlink on the way: refused, naming it.
    for p in ["out/f", "out/sub/deeper/f", "dir/out/f"] {
        let err = fx.root.stat_path(&rel(p)).unwrap_err();
        let link = if p.starts_with("dir/") {
            "dir/out"
        } else {
            "out"
        };
        assert!(
            is_symlink_in_path(&err, &fx.root_dir.join(link)),
            "{p}: {err}"
        );
    }
    // Nothing there, or a file on the way: None.
    assert_eq!(fx.root.stat_path(&rel("missing")).unwrap(), None);
    assert_eq!(fx.root.stat_path(&rel("missing/x")).unwrap(), None);
    assert_eq!(fx.root.stat_path(&rel("dir/f/x")).unwrap(), None);
    assert_eq!(snapshot(&fx.outside), before);
}

#[test]
fn is_empty_dir_ignores_haul_at_the_root_and_never_follows() {
    let tmp = tempfile::tempdir().unwrap();
    let root = Root::open(tmp.path()).unwrap();
    assert!(tmp.path().join(".haul/staging").is_dir());
    assert_eq!(root.is_empty_dir(&RelPath::root()).unwrap(), Some(true));
    fs::create_dir(tmp.path().join("d")).unwrap();
    assert_eq!(root.is_empty_dir(&rel("d")).unwrap(), Some(true));
    assert_eq!(root.is_empty_dir(&RelPath::root()).unwrap(), Some(false));
    fs::write(tmp.path().join("d/.haul"), b"x").unwrap();
    assert_eq!(root.is_empty_dir(&rel("d")).unwrap(), Some(false));
    assert_eq!(root.is_empty_dir(&rel("missing")).unwrap(), None);

    let fx = fixture();
    let before = snapshot(&fx.outside);
    // A symlink to an empty directory outside is not an empty directory of the root's.
    let err = fx.root.is_empty_dir(&rel("out-empty")).unwrap_err();
    assert!(
        is_refused(&err) && err.to_string().contains("symbolic link"),
        "{err}"
    );
    let err = fx.root.is_empty_dir(&rel("dir/f")).unwrap_err();
    assert!(
        is_refused(&err) && err.to_string().contains("regular file"),
        "{err}"
    );
    let err = fx.root.is_empty_dir(&rel("out/empty")).unwrap_err();
    assert!(is_symlink_in_path(&err, &fx.root_dir.join("out")), "{err}");
    assert_eq!(snapshot(&fx.outside), before);
}

#[test]
fn list_dir_is_sorted_omits_haul_and_never_lists_outside() {
    let fx = fixture();
    let before = snapshot(&fx.outside);
    fs::write(fx.root_dir.join(".haul/staging/leftover"), b"x").unwrap();
    fs::write(fx.root_dir.join("b"), b"bb").unwrap();
    fs::write(fx.root_dir.join("A"), b"a").unwrap();
    let names: Vec<_> = fx
        .root
        .list_dir(&RelPath::root())
        .unwrap()
        .into_iter()
        .map(|i| (String::from_utf8(i.name).unwrap(), i.kind, i.size))
        .collect();
    let outside_len = fx.outside.as_os_str().len() as u64;
    assert_eq!(
        names,
        vec![
            ("A".to_string(), FileKind::File, 1),
            ("b".to_string(), FileKind::File, 2),
            ("dir".to_string(), FileKind::Dir, 4096),
            ("out".to_string(), FileKind::Symlink, outside_len),
            ("out-empty".to_string(), FileKind::Symlink, outside_len + 6),
            ("out-file".to_string(), FileKind::Symlink, outside_len + 2),
        ]
        .into_iter()
        .map(|(n, k, s)| {
            let s = if k == FileKind::Dir {
                fs::metadata(fx.root_dir.join(&n)).unwrap().len()
            } else {
                s
            };
            (n, k, s)
        })
        .collect::<Vec<_>>()
    );
    let inner = fx.root.list_dir(&rel("dir")).unwrap();
    let inner: Vec<_> = inner.iter().map(|i| (i.name.as_slice(), i.kind)).collect();
    assert_eq!(
        inner,
        vec![
            (&b"f"[..], FileKind::File),
            (b"out", FileKind::Symlink),
            (b"sub", FileKind::Dir)
        ]
    );
    let m = fs::metadata(fx.root_dir.join("dir/f")).unwrap();
    let f = &fx.root.list_dir(&rel("dir")).unwrap()[0];
    assert_eq!(
        (f.mtime_sec, i64::from(f.mtime_nsec)),
        (m.mtime(), m.mtime_nsec())
    );

    // The final component a symlink to a directory outside: refused, not listed.
    let err = fx.root.list_dir(&rel("out")).unwrap_err();
    assert!(
        is_refused(&err) && err.to_string().contains("symbolic link"),
        "{err}"
    );
    let err = fx.root.list_dir(&rel("out/sub")).unwrap_err();
    assert!(is_symlink_in_path(&err, &fx.root_dir.join("out")), "{err}");
    let err = fx.root.list_dir(&rel("dir/out/sub")).unwrap_err();
    assert!(
        is_symlink_in_path(&err, &fx.root_dir.join("dir/out")),
        "{err}"
    );
    let err = fx.root.list_dir(&rel("dir/f")).unwrap_err();
    assert!(
        is_refused(&err) && err.to_string().contains("not a directory"),
        "{err}"
    );
    assert!(is_not_found(
        &fx.root.list_dir(&rel("missing")).unwrap_err()
    ));
    assert_eq!(snapshot(&fx.outside), before);
}

#[test]
fn tree_size_ignores_haul_counts_links_once_and_never_follows() {
    let fx = fixture();
    let before = snapshot(&fx.outside);
    // Big data in the state directory must not count.
    fs::write(fx.root_dir.join(".haul/staging/big"), vec![1u8; 1 << 20]).unwrap();
    fs::write(fx.root_dir.join("dir/sub/data"), vec![7u8; 100_000]).unwrap();
    fs::hard_link(
        fx.root_dir.join("dir/sub/data"),
        fx.root_dir.join("dir/data-link"),
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        fx.root_dir.join("dir/fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();

    // What `du` would count, by a walk of the test's own (skipping `.haul`).
    let mut allocated = 0;
    let mut inodes = std::collections::HashSet::new();
    let mut stack = vec![fx.root_dir.clone()];
    while let Some(d) = stack.pop() {
        let m = fs::symlink_metadata(&d).unwrap();
        if inodes.insert(m.ino()) {
            allocated += m.blocks() * 512;
        }
        if m.is_dir() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p != fx.root_dir.join(".haul") {
                    stack.push(p);
                }
            }
        }
    }
    let size = fx.root.tree_size(&RelPath::root()).unwrap();
    assert_eq!(
        size,
        TreeSize {
            bytes: 2 + 5 + 100_000 * 2,
            allocated_bytes: allocated,
            files: 4,
            dirs: 3,
            symlinks: 4,
            others: 1,
        }
    );
    // The link itself is all that counts of a symlink to a directory or file outside.
    for p in ["out", "out-file"] {
        let link = fx.root.tree_size(&rel(p)).unwrap();
        assert_eq!(
            (link.symlinks, link.files, link.dirs, link.bytes),
            (1, 0, 0, 0),
            "{p}"
        );
    }
    let err = fx.root.tree_size(&rel("out/sub")).unwrap_err();
    assert!(is_symlink_in_path(&err, &fx.root_dir.join("out")), "{err}");
    let sub = fx.root.tree_size(&rel("dir/sub")).unwrap();
    assert_eq!((sub.files, sub.dirs, sub.bytes), (2, 1, 100_005));
    assert_eq!(fx.root.tree_size(&rel("dir/f")).unwrap().files, 1);
    assert!(is_not_found(
        &fx.root.tree_size(&rel("missing")).unwrap_err()
    ));
    // Inside a subdirectory, `.haul` is the user's and counts.
    fs::write(fx.root_dir.join("dir/sub/.haul"), b"mine").unwrap();
    assert_eq!(fx.root.tree_size(&rel("dir/sub")).unwrap().bytes, 100_009);
    assert_eq!(snapshot(&fx.outside), before);
}

#[test]
fn visit_tree_is_sorted_depth_first_opens_only_inside_and_skips_haul() {
    let fx = fixture();
    let before = snapshot(&fx.outside);
    fs::write(fx.root_dir.join(".haul/staging/leftover"), b"x").unwrap();
    fs::create_dir(fx.root_dir.join("dir/sub/z")).unwrap();
    fs::write(fx.root_dir.join("dir/sub/z/last"), b"zz").unwrap();
    let seen = visit_all(&fx.root, &RelPath::root()).unwrap();
    let f = |p: &str, k, c: Option<&[u8]>| (p.to_string(), k, c.map(<[u8]>::to_vec));
    assert_eq!(
        seen,
        vec![
            f("", FileKind::Dir, None),
            f("dir", FileKind::Dir, None),
            f("dir/f", FileKind::File, Some(b"in")),
            f("dir/out", FileKind::Symlink, None),
            f("dir/sub", FileKind::Dir, None),
            f("dir/sub/f", FileKind::File, Some(b"inner")),
            f("dir/sub/z", FileKind::Dir, None),
            f("dir/sub/z/last", FileKind::File, Some(b"zz")),
            f("out", FileKind::Symlink, None),
            f("out-empty", FileKind::Symlink, None),
            f("out-file", FileKind::Symlink, None),
        ]
    );
    // Paths are relative to where the walk starts.
    let seen = visit_all(&fx.root, &rel("dir/sub")).unwrap();
    let paths: Vec<_> = seen.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(paths, ["", "f", "z", "z/last"]);
    // A single file, and a symlink at the start (visited as the link, never entered).
    assert_eq!(
        visit_all(&fx.root, &rel("dir/f")).unwrap(),
        vec![f("", FileKind::File, Some(b"in"))]
    );
    assert_eq!(
        visit_all(&fx.root, &rel("out")).unwrap(),
        vec![f("", FileKind::Symlink, None)]
    );
    assert_eq!(
        visit_all(&fx.root, &rel("out-file")).unwrap(),
        vec![f("", FileKind::Symlink, None)]
    );
    let err = visit_all(&fx.root, &rel("out/sub")).unwrap_err();
    assert!(is_symlink_in_path(&err, &fx.root_dir.join("out")), "{err}");
    assert!(is_not_found(
        &visit_all(&fx.root, &rel("missing")).unwrap_err()
    ));

    // An error from the visitor stops the walk and comes back.
    let mut count = 0;
    let err = fx
        .root
        .visit_tree(&RelPath::root(), &mut |path, _, _| {
            count += 1;
            if path == &rel("dir/f") {
                return Err(StoreError::Refused {
                    path: PathBuf::from("x"),
                    op: "test",
                    reason: "stop".into(),
                });
            }
            Ok(())
        })
        .unwrap_err();
    assert!(is_refused(&err));
    assert_eq!(count, 3);
    assert_eq!(snapshot(&fx.outside), before);
}

fn open_fds() -> usize {
    fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn visit_tree_holds_a_bounded_number_of_fds() {
    let tmp = tempfile::tempdir().unwrap();
    for i in 0..300 {
        let d = tmp.path().join(format!("d{i:03}/inner"));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("f"), b"x").unwrap();
    }
    let root = Root::open(tmp.path()).unwrap();
    let baseline = open_fds();
    let (mut most, mut files) = (0, 0);
    root.visit_tree(&RelPath::root(), &mut |_, st, file| {
        most = most.max(open_fds());
        files += usize::from(file.is_some());
        assert_eq!(file.is_some(), st.kind == FileKind::File);
        Ok(())
    })
    .unwrap();
    assert_eq!(files, 300);
    // Three levels deep: a handful of fds, however many directories there are (other tests
    // running meanwhile open a few of their own, hence the margin).
    assert!(
        most < baseline + 40,
        "{most} fds open, {baseline} before the walk"
    );
}

#[test]
fn rename_path_never_replaces_never_creates_parents_and_stays_inside() {
    let fx = fixture();
    let before = snapshot(&fx.outside);
    let r = &fx.root;
    r.rename_path(&rel("dir/f"), &rel("dir/g")).unwrap();
    assert_eq!(fs::read(fx.root_dir.join("dir/g")).unwrap(), b"in");
    assert!(!fx.root_dir.join("dir/f").exists());
    r.rename_path(&rel("dir/sub"), &rel("moved")).unwrap();
    assert_eq!(fs::read(fx.root_dir.join("moved/f")).unwrap(), b"inner");

    // An existing target is refused, and both are left as they were.
    fs::write(fx.root_dir.join("taken"), b"T").unwrap();
    let err = r.rename_path(&rel("dir/g"), &rel("taken")).unwrap_err();
    assert!(
        is_refused(&err) && err.to_string().contains("already there"),
        "{err}"
    );
    assert_eq!(fs::read(fx.root_dir.join("taken")).unwrap(), b"T");
    assert_eq!(fs::read(fx.root_dir.join("dir/g")).unwrap(), b"in");
    let err = r.rename_path(&rel("moved"), &rel("dir")).unwrap_err();
    assert!(is_refused(&err), "{err}");
    // A missing parent is not made.
    let err = r.rename_path(&rel("dir/g"), &rel("nowhere/g")).unwrap_err();
    assert!(
        is_refused(&err) && err.to_string().contains("does not exist"),
        "{err}"
    );
    assert!(!fx.root_dir.join("nowhere").exists());
    // The root itself, and a directory into itself.
    assert!(is_refused(
        &r.rename_path(&RelPath::root(), &rel("x")).unwrap_err()
    ));
    assert!(is_refused(
        &r.rename_path(&rel("dir"), &RelPath::root()).unwrap_err()
    ));
    let err = r
        .rename_path(&rel("moved"), &rel("moved/inner"))
        .unwrap_err();
    assert!(
        is_refused(&err) && err.to_string().contains("into itself"),
        "{err}"
    );
    assert!(is_not_found(
        &r.rename_path(&rel("missing"), &rel("x")).unwrap_err()
    ));

    // Through a symlink on either side: refused, nothing outside moved or made.
    let err = r.rename_path(&rel("out/f"), &rel("stolen")).unwrap_err();
    assert!(is_symlink_in_path(&err, &fx.root_dir.join("out")), "{err}");
    assert!(!fx.root_dir.join("stolen").exists());
    let err = r
        .rename_path(&rel("dir/g"), &rel("out/planted"))
        .unwrap_err();
    assert!(is_symlink_in_path(&err, &fx.root_dir.join("out")), "{err}");
    assert!(fx.root_dir.join("dir/g").exists());
    // The final component a symlink: the link moves, the target stays.
    r.rename_path(&rel("out-file"), &rel("dir/link")).unwrap();
    assert_eq!(
        fs::read_link(fx.root_dir.join("dir/link")).unwrap(),
        fx.outside.join("f")
    );
    // A cached directory fd must not answer for the old name after a rename.
    r.create_dir_all(&rel("moved")).unwrap();
    r.rename_path(&rel("moved"), &rel("moved2")).unwrap();
    r.create_dir_all(&rel("moved")).unwrap();
    assert!(fx.root_dir.join("moved").is_dir() && fx.root_dir.join("moved2/f").is_file());
    assert_eq!(snapshot(&fx.outside), before);
}

#[test]
fn remove_path_refuses_the_root_removes_links_not_targets_and_stays_inside() {
    let fx = fixture();
    let before = snapshot(&fx.outside);
    let r = &fx.root;
    let err = r.remove_path(&RelPath::root()).unwrap_err();
    assert!(
        is_refused(&err) && err.to_string().contains("root"),
        "{err}"
    );
    assert!(fx.root_dir.join(".haul/staging").is_dir());

    // Through a symlink on the way: refused, the outside file stays.
    for p in ["out/f", "out/sub", "dir/out/sub/deeper"] {
        let err = r.remove_path(&rel(p)).unwrap_err();
        assert!(
            matches!(err, StoreError::SymlinkInPath { .. }),
            "{p}: {err}"
        );
    }
    // The final component a symlink: the link goes, never what it points to.
    assert_eq!(r.remove_path(&rel("out-file")).unwrap(), 1);
    assert!(fs::symlink_metadata(fx.root_dir.join("out-file")).is_err());
    assert_eq!(r.remove_path(&rel("out")).unwrap(), 1);
    assert!(fs::symlink_metadata(fx.root_dir.join("out")).is_err());
    // A whole tree with a symlink to outside inside it: dir, f, out, sub, sub/f.
    assert_eq!(r.remove_path(&rel("dir")).unwrap(), 5);
    assert!(!fx.root_dir.join("dir").exists());
    assert_eq!(r.remove_path(&rel("dir")).unwrap(), 0);
    assert_eq!(r.remove_path(&rel("missing/x")).unwrap(), 0);
    // `.haul` cannot even be named; the state directory is untouched.
    assert!(RelPath::parse(b".haul").is_err());
    assert!(fx.root_dir.join(".haul/staging").is_dir());
    let left: Vec<_> = r.list_dir(&RelPath::root()).unwrap();
    assert_eq!(left.len(), 1, "{left:?}"); // out-empty
    assert_eq!(snapshot(&fx.outside), before);
}

#[test]
fn read_control_reads_small_regular_files_only() {
    let fx = fixture();
    let before = snapshot(&fx.outside);
    let r = &fx.root;
    fs::write(fx.root_dir.join("dir/ctl"), b"control").unwrap();
    assert_eq!(r.read_control(&rel("dir/ctl"), 7).unwrap(), b"control");
    assert_eq!(
        r.read_control(&rel("dir/ctl"), 1 << 20).unwrap(),
        b"control"
    );
    let err = r.read_control(&rel("dir/ctl"), 6).unwrap_err();
    assert!(
        is_refused(&err) && err.to_string().contains("at most 6 bytes"),
        "{err}"
    );

    // A symlink at the end (to outside, or even to a file inside) is refused, not followed.
    symlink("ctl", fx.root_dir.join("dir/ctl-link")).unwrap();
    for p in ["out-file", "dir/ctl-link"] {
        let err = r.read_control(&rel(p), 1 << 20).unwrap_err();
        assert!(
            is_refused(&err) && err.to_string().contains("symbolic link"),
            "{p}: {err}"
        );
    }
    let err = r.read_control(&rel("out/ctl"), 1 << 20).unwrap_err();
    assert!(is_symlink_in_path(&err, &fx.root_dir.join("out")), "{err}");
    let err = r.read_control(&rel("dir"), 1 << 20).unwrap_err();
    assert!(
        is_refused(&err) && err.to_string().contains("directory"),
        "{err}"
    );
    assert!(is_refused(
        &r.read_control(&RelPath::root(), 1 << 20).unwrap_err()
    ));
    rustix::fs::mknodat(
        rustix::fs::CWD,
        fx.root_dir.join("dir/fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let err = r.read_control(&rel("dir/fifo"), 1 << 20).unwrap_err();
    assert!(
        is_refused(&err) && err.to_string().contains("named pipe"),
        "{err}"
    );
    assert!(is_not_found(
        &r.read_control(&rel("dir/none"), 10).unwrap_err()
    ));
    assert_eq!(snapshot(&fx.outside), before);
}

#[test]
fn write_control_replaces_regular_files_only_and_stays_inside() {
    let fx = fixture();
    let before = snapshot(&fx.outside);
    let r = &fx.root;
    r.write_control(&rel("dir/ctl"), b"one").unwrap();
    assert_eq!(fs::read(fx.root_dir.join("dir/ctl")).unwrap(), b"one");
    let mode = fs::metadata(fx.root_dir.join("dir/ctl"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o644);
    fs::set_permissions(
        fx.root_dir.join("dir/ctl"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    r.write_control(&rel("dir/ctl"), b"second version").unwrap();
    assert_eq!(
        r.read_control(&rel("dir/ctl"), 100).unwrap(),
        b"second version"
    );
    let mode = fs::metadata(fx.root_dir.join("dir/ctl"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o644);
    // No temporary file is left behind.
    let names: Vec<_> = r
        .list_dir(&rel("dir"))
        .unwrap()
        .into_iter()
        .map(|i| String::from_utf8(i.name).unwrap())
        .collect();
    assert_eq!(names, ["ctl", "f", "out", "sub"]);

    let err = r.write_control(&rel("nowhere/ctl"), b"x").unwrap_err();
    assert!(
        is_refused(&err) && err.to_string().contains("does not exist"),
        "{err}"
    );
    assert!(!fx.root_dir.join("nowhere").exists());
    // Through a symlink on the way: refused, nothing written outside.
    for p in ["out/ctl", "out/new", "dir/out/sub/f"] {
        let err = r.write_control(&rel(p), b"evil").unwrap_err();
        assert!(
            matches!(err, StoreError::SymlinkInPath { .. }),
            "{p}: {err}"
        );
    }
    // The final component a symlink: refused, the link and its target stay.
    let err = r.write_control(&rel("out-file"), b"evil").unwrap_err();
    assert!(
        is_refused(&err) && err.to_string().contains("symbolic link"),
        "{err}"
    );
    assert_eq!(
        fs::read_link(fx.root_dir.join("out-file")).unwrap(),
        fx.outside.join("f")
    );
    let err = r.write_control(&rel("dir/sub"), b"x").unwrap_err();
    assert!(
        is_refused(&err) && err.to_string().contains("directory"),
        "{err}"
    );
    assert!(is_refused(
        &r.write_control(&RelPath::root(), b"x").unwrap_err()
    ));
    assert_eq!(snapshot(&fx.outside), before);
}

#[test]
fn write_control_is_atomic_for_a_concurrent_reader() {
    const SIZE: usize = 1 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let root = Arc::new(Root::open(tmp.path()).unwrap());
    let versions = [vec![b'a'; SIZE], vec![b'b'; SIZE]];
    root.write_control(&rel("ctl"), &versions[0]).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let reader = {
        let (root, done, reads) = (Arc::clone(&root), Arc::clone(&done), Arc::clone(&reads));
        let path = tmp.path().join("ctl");
        std::thread::spawn(move || {
            let check = |data: &[u8]| {
                assert_eq!(data.len(), SIZE);
                assert!(data.iter().all(|&b| b == data[0]) && (data[0] == b'a' || data[0] == b'b'));
            };
            while !done.load(Ordering::Acquire) {
                check(&fs::read(&path).unwrap());
                check(&root.read_control(&rel("ctl"), SIZE).unwrap());
                reads.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    for i in 0..60 {
        root.write_control(&rel("ctl"), &versions[i % 2]).unwrap();
    }
    done.store(true, Ordering::Release);
    reader.join().unwrap();
    assert!(reads.load(Ordering::Relaxed) > 0);
    assert_eq!(fs::read(tmp.path().join("ctl")).unwrap(), versions[1]);
}

/// Sets the flag when dropped (also while unwinding from a failed assertion).
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// While one thread keeps swapping `d` for a symlink to a directory outside holding the same
/// names, another runs every operation on paths under it: nothing outside is ever listed,
/// read, opened, written, renamed or removed.
#[test]
fn swapping_a_component_for_a_symlink_never_leads_outside() {
    const FILES: usize = 20;
    let fx = fixture();
    let names = |base: &Path, contents: &[u8]| {
        for d in ["d/sub", "d/tree/a/b"] {
            fs::create_dir_all(base.join(d)).unwrap();
        }
        for i in 0..FILES {
            fs::write(base.join(format!("d/sub/f{i}")), contents).unwrap();
        }
        fs::write(base.join("d/tree/a/b/f"), contents).unwrap();
    };
    names(&fx.outside, OUTSIDE);
    names(&fx.root_dir, b"in");
    fs::write(fx.outside.join("d/OUTSIDE-MARKER"), OUTSIDE).unwrap();
    fs::write(fx.outside.join("d/sub/OUTSIDE-MARKER"), OUTSIDE).unwrap();
    let before = snapshot(&fx.outside);
    let target = fx.outside.join("d");

    let root = Arc::new(fx.root);
    let stop = Arc::new(AtomicBool::new(false));
    // Should an assertion fail, the swapper stops before the directories go away.
    let _stop_on_panic = StopOnDrop(Arc::clone(&stop));
    let start = Arc::new(Barrier::new(2));
    let swapper = {
        let (stop, start, root_dir) = (Arc::clone(&stop), Arc::clone(&start), fx.root_dir.clone());
        std::thread::spawn(move || {
            let (d, real) = (root_dir.join("d"), root_dir.join("d.real"));
            start.wait();
            let mut swaps = 0u64;
            while !stop.load(Ordering::Acquire) {
                // rename and unlink act on the name itself, never through the link.
                fs::rename(&d, &real).unwrap();
                symlink(&target, &d).unwrap();
                std::thread::yield_now();
                fs::remove_file(&d).unwrap();
                fs::rename(&real, &d).unwrap();
                std::thread::yield_now();
                swaps += 1;
            }
            swaps
        })
    };

    let refused = |e: &StoreError| {
        matches!(
            e,
            StoreError::SymlinkInPath { .. } | StoreError::Refused { .. }
        ) || is_not_found(e)
    };
    let (mut ok, mut blocked) = (0u64, 0u64);
    let mut tally = |r: Result<(), StoreError>| match r {
        Ok(()) => ok += 1,
        Err(e) if refused(&e) => blocked += 1,
        Err(e) => panic!("unexpected error: {e}"),
    };
    start.wait();
    let deadline = Instant::now() + Duration::from_millis(1500);
    let mut i = 0;
    while Instant::now() < deadline {
        let f = format!("d/sub/f{}", i % FILES);
        // Made again through the store (confined like the rest) so there is always
        // something to act on.
        tally(root.write_control(&rel(&f), b"in"));
        tally(root.stat_path(&rel(&f)).map(|st| {
            if let Some(st) = st {
                assert!(
                    st.size != OUTSIDE.len() as u64,
                    "stat of {f} saw outside: {st:?}"
                );
            }
        }));
        for dir in ["d", "d/sub"] {
            tally(root.list_dir(&rel(dir)).map(|items| {
                for item in items {
                    assert_ne!(item.name, b"OUTSIDE-MARKER", "list of {dir} saw outside");
                    assert_ne!(item.size, OUTSIDE.len() as u64, "list of {dir} saw outside");
                }
            }));
        }
        tally(root.read_control(&rel(&f), 100).map(|data| {
            assert_ne!(data, OUTSIDE, "read of {f} got outside contents");
        }));
        tally(root.is_empty_dir(&rel("d/sub")).map(|_| ()));
        tally(root.tree_size(&rel("d")).map(|size| {
            assert_eq!(
                size.bytes % 2,
                0,
                "tree size counted outside bytes: {size:?}"
            );
        }));
        tally(visit_all(&root, &rel("d")).map(|seen| {
            for (path, _, contents) in seen {
                assert!(!path.contains("OUTSIDE"), "walk saw outside: {path}");
                if let Some(c) = contents {
                    assert_ne!(c, OUTSIDE, "walk opened outside file {path}");
                }
            }
        }));
        let renamed = format!("d/sub/r{}", i % FILES);
        tally(root.rename_path(&rel(&f), &rel(&renamed)));
        tally(root.remove_path(&rel(&renamed)).map(|_| ()));
        tally(root.remove_path(&rel(&f)).map(|_| ()));
        tally(root.remove_path(&rel("d/tree/a/b/f")).map(|_| ()));
        tally(root.write_control(&rel("d/tree/a/b/f"), b"in"));
        i += 1;
    }
    // A whole subtree, while the swaps go on (the outside has one of the same name).
    let mut removed = 0;
    while removed == 0 {
        match root.remove_path(&rel("d/tree")) {
            Ok(n) => removed = n,
            Err(e) => assert!(refused(&e), "{e}"),
        }
    }
    // tree, a, b, and f unless the last round's write of it was refused.
    assert!(removed == 3 || removed == 4, "{removed}");
    stop.store(true, Ordering::Release);
    let swaps = swapper.join().unwrap();
    assert!(swaps > 0);
    assert!(
        ok > 0 && blocked > 0,
        "{ok} operations succeeded, {blocked} were refused"
    );
    assert!(
        fs::symlink_metadata(fx.root_dir.join("d"))
            .unwrap()
            .is_dir()
    );
    assert!(fs::symlink_metadata(fx.root_dir.join("d.real")).is_err());
    assert!(fs::symlink_metadata(fx.root_dir.join("d/tree")).is_err());
    assert_eq!(snapshot(&fx.outside), before);
}
