//! The scanner's order, paths, metadata and error handling on a real tree.

use std::ffi::OsStr;
use std::fs::{self, File, FileTimes, Permissions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use haul_manifest::{ScanEntry, ScanError, scan};
use haul_proto::EntryKind;
use rustix::fs::{CWD, FileType, Mode, mknodat};

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn when(sec: u64, nsec: u32) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::new(sec, nsec)
}

fn set_mtime(path: &Path, time: SystemTime) {
    File::open(path)
        .unwrap()
        .set_times(FileTimes::new().set_modified(time))
        .unwrap();
}

fn odd(name: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(name))
}

/// Builds the test tree; returns the expected order of successful entries (rel bytes).
fn build(root: &Path) -> Vec<&'static [u8]> {
    fs::create_dir(root.join("empty")).unwrap();
    File::create(root.join("empty.txt")).unwrap();
    fs::create_dir_all(root.join("nested/b/c")).unwrap();
    fs::write(root.join("nested/b/c/deep.txt"), b"hello world").unwrap();
    // Sorts after "nested" but before its contents in a whole-path sort ('.' < '/'): the scan
    // must still finish "nested" first.
    fs::write(root.join("nested.txt"), b"x").unwrap();
    fs::write(root.join("with space"), b"1").unwrap();
    fs::write(root.join("ünïcødé"), b"22").unwrap();
    fs::write(root.join(odd(b"new\nline")), b"333").unwrap();
    fs::write(root.join(odd(b"bad\xff")), b"4444").unwrap();
    symlink("nested/b", root.join("link-rel")).unwrap();
    symlink(root.join("nested"), root.join("link-abs")).unwrap();
    symlink("does/not/exist", root.join("dangling")).unwrap();
    mknodat(
        CWD,
        root.join("fifo"),
        FileType::Fifo,
        Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    fs::set_permissions(root.join("fifo"), Permissions::from_mode(0o604)).unwrap();
    fs::create_dir(root.join("locked")).unwrap();
    fs::write(root.join("locked/secret"), b"s").unwrap();

    fs::set_permissions(root.join("with space"), Permissions::from_mode(0o640)).unwrap();
    fs::set_permissions(root.join("nested/b"), Permissions::from_mode(0o751)).unwrap();
    set_mtime(&root.join("with space"), when(1_600_000_000, 123_456_789));
    set_mtime(&root.join("nested/b"), when(1_500_000_000, 987_654_321));
    fs::set_permissions(root.join("locked"), Permissions::from_mode(0o000)).unwrap();

    vec![
        b"",
        b"bad\xff",
        b"dangling",
        b"empty",
        b"empty.txt",
        b"fifo",
        b"link-abs",
        b"link-rel",
        b"locked",
        // "locked/secret" only when running as root
        b"nested",
        b"nested/b",
        b"nested/b/c",
        b"nested/b/c/deep.txt",
        b"nested.txt",
        b"new\nline",
        b"with space",
        "ünïcødé".as_bytes(),
    ]
}

fn find<'a>(entries: &'a [ScanEntry], rel: &[u8]) -> &'a ScanEntry {
    entries
        .iter()
        .find(|e| e.rel == rel)
        .unwrap_or_else(|| panic!("no entry {rel:?}"))
}

#[test]
fn scans_a_tree_in_order_with_metadata_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("src");
    fs::create_dir(&root).unwrap();
    let mut expected = build(&root);
    if is_root() {
        let at = expected.iter().position(|r| *r == b"locked").unwrap();
        expected.insert(at + 1, b"locked/secret");
    }

    let items: Vec<_> = scan(&root).collect();
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    for item in items {
        match item {
            Ok(entry) => entries.push(entry),
            Err(err) => errors.push((entries.len(), err)),
        }
    }
    // Restore access so the temporary directory can be removed.
    fs::set_permissions(root.join("locked"), Permissions::from_mode(0o755)).unwrap();

    let rels: Vec<&[u8]> = entries.iter().map(|e| e.rel.as_slice()).collect();
    assert_eq!(rels, expected);

    // The FIFO is an entry of its own kind, with no size.
    let fifo = find(&entries, b"fifo");
    assert_eq!((fifo.kind, fifo.size, fifo.rdev), (EntryKind::Fifo, 0, 0));
    assert_eq!(fifo.meta.mode, 0o604);
    if is_root() {
        assert!(errors.is_empty(), "{errors:?}");
    } else {
        assert_eq!(errors.len(), 1, "{errors:?}");
        let (at, locked) = &errors[0];
        assert_eq!(entries[at - 1].rel, b"locked");
        assert_eq!(locked.path(), root.join("locked"));
        assert!(
            locked.to_string().starts_with(&format!(
                "cannot read directory {}: ",
                root.join("locked").display()
            )),
            "{locked}"
        );
    }

    let root_entry = &entries[0];
    assert_eq!(root_entry.kind, EntryKind::Dir);
    assert_eq!(root_entry.source, root);
    assert_eq!(root_entry.size, 0);

    let deep = find(&entries, b"nested/b/c/deep.txt");
    assert_eq!((deep.kind, deep.size), (EntryKind::File, 11));
    assert_eq!(deep.source, root.join("nested/b/c/deep.txt"));
    let disk = fs::symlink_metadata(&deep.source).unwrap();
    assert_eq!((deep.dev, deep.ino), (disk.dev(), disk.ino()));
    assert_eq!(find(&entries, b"empty.txt").size, 0);
    assert_eq!(find(&entries, b"bad\xff").size, 4);
    assert_eq!(find(&entries, b"new\nline").size, 3);
    assert_eq!(find(&entries, "ünïcødé".as_bytes()).size, 2);
    assert_eq!(
        find(&entries, b"bad\xff").source,
        root.join(odd(b"bad\xff"))
    );

    let spaced = find(&entries, b"with space");
    assert_eq!(spaced.meta.mode, 0o640);
    assert_eq!(
        (spaced.meta.mtime_sec, spaced.meta.mtime_nsec),
        (1_600_000_000, 123_456_789)
    );
    let b = find(&entries, b"nested/b");
    assert_eq!((b.kind, b.size, b.meta.mode), (EntryKind::Dir, 0, 0o751));
    assert_eq!(
        (b.meta.mtime_sec, b.meta.mtime_nsec),
        (1_500_000_000, 987_654_321)
    );
    assert_eq!(find(&entries, b"locked").meta.mode, 0);

    // Symlinks are reported, never followed: nothing appears under them.
    for (rel, target) in [
        (&b"link-rel"[..], b"nested/b".to_vec()),
        (
            b"link-abs",
            root.join("nested").into_os_string().into_encoded_bytes(),
        ),
        (b"dangling", b"does/not/exist".to_vec()),
    ] {
        let link = find(&entries, rel);
        assert_eq!((link.kind, link.size), (EntryKind::Symlink, 0));
        assert_eq!(link.link_target, target);
        assert!(
            !entries
                .iter()
                .any(|e| e.rel.starts_with(&[rel, b"/"].concat()))
        );
    }
    for entry in &entries {
        if entry.kind != EntryKind::Symlink {
            assert!(entry.link_target.is_empty(), "{entry:?}");
        }
    }
}

#[test]
fn a_wide_directory_is_stated_on_several_threads_in_order() {
    // Wide enough to be stat'ed on several threads: the order is still by name.
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("d")).unwrap();
    for i in 0..1000 {
        fs::write(dir.path().join(format!("d/f{i:04}")), b"x").unwrap();
    }
    let mut scanner = scan(dir.path());
    assert_eq!(scanner.next().unwrap().unwrap().rel, b"");
    assert_eq!(scanner.next().unwrap().unwrap().rel, b"d");
    // The listing of "d" is read (and its names stat'ed) on the next call: a name removed
    // now is simply not there.
    fs::remove_file(dir.path().join("d/f0500")).unwrap();
    let mut seen = Vec::new();
    for item in scanner {
        match item {
            Ok(entry) => seen.push(String::from_utf8(entry.rel).unwrap()),
            Err(e) => panic!("the listing was read after the removal: {e}"),
        }
    }
    let want: Vec<String> = (0..1000)
        .filter(|&i| i != 500)
        .map(|i| format!("d/f{i:04}"))
        .collect();
    assert_eq!(seen, want);
}

#[test]
fn a_vanished_directory_or_file_is_an_error_and_the_scan_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("a")).unwrap();
    fs::write(dir.path().join("a/x"), b"").unwrap();
    fs::write(dir.path().join("b"), b"").unwrap();
    fs::write(dir.path().join("c"), b"").unwrap();
    let mut scanner = scan(dir.path());
    assert_eq!(scanner.next().unwrap().unwrap().rel, b"");
    let a = scanner.next().unwrap().unwrap();
    assert_eq!((a.rel.as_slice(), a.kind), (&b"a"[..], EntryKind::Dir));
    // The listing of "a" is read only now, after "a" was yielded; "b" was listed already.
    fs::remove_dir_all(dir.path().join("a")).unwrap();
    fs::remove_file(dir.path().join("b")).unwrap();
    let gone = scanner.next().unwrap().unwrap_err();
    assert!(
        matches!(
            gone,
            ScanError::Io {
                op: "read directory",
                ..
            }
        ),
        "{gone}"
    );
    assert_eq!(gone.path(), dir.path().join("a"));
    // "b" was stat'ed with the rest of the root's listing, before it was removed: it comes
    // as an entry (the reader then fails to open it and reports that file alone).
    let b = scanner.next().unwrap().unwrap();
    assert_eq!(b.rel, b"b");
    assert_eq!(scanner.next().unwrap().unwrap().rel, b"c");
    assert!(scanner.next().is_none());
}

#[test]
fn root_that_is_not_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    fs::write(&file, b"abc").unwrap();
    let items: Vec<_> = scan(&file).map(Result::unwrap).collect();
    assert_eq!(items.len(), 1);
    assert_eq!(
        (items[0].kind, items[0].rel.as_slice(), items[0].size),
        (EntryKind::File, &b""[..], 3)
    );
    assert_eq!(items[0].source, file);

    // A symlink root is reported as the link, even when it points at a directory.
    let link = dir.path().join("l");
    symlink(dir.path(), &link).unwrap();
    let items: Vec<_> = scan(&link).map(Result::unwrap).collect();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].kind, EntryKind::Symlink);
    assert_eq!(items[0].link_target, dir.path().as_os_str().as_bytes());

    let fifo = dir.path().join("p");
    mknodat(CWD, &fifo, FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
    let items: Vec<_> = scan(&fifo).map(Result::unwrap).collect();
    assert_eq!(items.len(), 1);
    assert_eq!(
        (items[0].kind, &items[0].rel[..]),
        (EntryKind::Fifo, &b""[..])
    );
}

#[test]
fn a_missing_or_unreadable_root_ends_the_scan() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let items: Vec<_> = scan(&missing).collect();
    assert_eq!(items.len(), 1);
    let err = items.into_iter().next().unwrap().unwrap_err();
    assert_eq!(err.path(), missing);
    assert!(matches!(err, ScanError::Io { op: "stat", .. }));

    let locked = dir.path().join("locked");
    fs::create_dir(&locked).unwrap();
    fs::write(locked.join("x"), b"").unwrap();
    fs::set_permissions(&locked, Permissions::from_mode(0o000)).unwrap();
    let items: Vec<_> = scan(&locked).collect();
    fs::set_permissions(&locked, Permissions::from_mode(0o755)).unwrap();
    if is_root() {
        assert_eq!(items.len(), 2);
    } else {
        assert_eq!(items.len(), 1);
        let err = items.into_iter().next().unwrap().unwrap_err();
        assert!(
            err.to_string().starts_with("cannot read directory"),
            "{err}"
        );
    }
}

#[test]
fn deep_and_wide_trees() {
    let dir = tempfile::tempdir().unwrap();
    let mut deep = PathBuf::from(dir.path());
    for _ in 0..100 {
        deep.push("d");
    }
    fs::create_dir_all(&deep).unwrap();
    for i in (0..1500).rev() {
        fs::write(dir.path().join(format!("w{i:05}")), b"").unwrap();
    }
    let rels: Vec<Vec<u8>> = scan(dir.path()).map(|item| item.unwrap().rel).collect();
    assert_eq!(rels.len(), 1 + 100 + 1500);
    assert_eq!(rels[100], b"d/".repeat(100)[..199].to_vec());
    let mut sorted = rels[101..].to_vec();
    sorted.sort();
    assert_eq!(rels[101..], sorted[..]);
    assert_eq!(rels[101], b"w00000");
}

#[test]
fn entries_open_relative_to_their_directory_and_never_through_a_symlink() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("src");
    fs::create_dir_all(root.join("d")).unwrap();
    fs::write(root.join("d/kept"), b"kept data").unwrap();
    fs::write(root.join("d/swapped"), b"original").unwrap();
    fs::write(tmp.path().join("outside"), b"secret").unwrap();
    let entries: Vec<ScanEntry> = scan(&root).map(Result::unwrap).collect();
    // The scan's directory handles follow the directories, not their paths: renaming the
    // whole tree away after the scan does not stop its files from being read.
    fs::rename(&root, tmp.path().join("moved")).unwrap();
    let mut kept = String::new();
    std::io::Read::read_to_string(&mut find(&entries, b"d/kept").open().unwrap(), &mut kept)
        .unwrap();
    assert_eq!(kept, "kept data");
    // A file swapped for a symlink since the scan is refused, not followed.
    let moved = tmp.path().join("moved/d/swapped");
    fs::remove_file(&moved).unwrap();
    symlink(tmp.path().join("outside"), &moved).unwrap();
    let err = find(&entries, b"d/swapped").open().unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(rustix::io::Errno::LOOP.raw_os_error())
    );
    // The root itself has no directory handle: it is opened by its path.
    assert!(find(&entries, b"").dir.is_none());
    assert!(find(&entries, b"d/kept").dir.is_some());
}

#[test]
fn entries_held_at_once_keep_a_bounded_number_of_directories_open() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = haul_manifest::MAX_SHARED_DIRS * 2 + 10;
    for d in 0..dirs {
        let dir = tmp.path().join(format!("d{d:04}"));
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("f"), format!("file {d}")).unwrap();
    }
    // Every entry of the tree held at once, as a sender's window of files in flight does.
    let entries: Vec<ScanEntry> = scan(tmp.path()).map(Result::unwrap).collect();
    let mut open: Vec<*const haul_manifest::SourceDir> = entries
        .iter()
        .filter_map(|e| e.dir.as_ref().map(std::sync::Arc::as_ptr))
        .collect();
    open.sort();
    open.dedup();
    assert!(
        open.len() <= haul_manifest::MAX_SHARED_DIRS,
        "{} directories held open",
        open.len()
    );
    assert!(
        open.len() >= haul_manifest::MAX_SHARED_DIRS / 2,
        "{}",
        open.len()
    );
    // With or without a directory handle, every file opens and reads as it is.
    for d in 0..dirs {
        let rel = format!("d{d:04}/f");
        let mut got = String::new();
        std::io::Read::read_to_string(
            &mut find(&entries, rel.as_bytes()).open().unwrap(),
            &mut got,
        )
        .unwrap();
        assert_eq!(got, format!("file {d}"));
    }
}
