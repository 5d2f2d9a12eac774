//! What the scan reports beyond names and sizes (owners, links, special files, extended
//! attributes) and what its options change (one file system).

use std::fs::{self, File};
use std::os::unix::fs::{MetadataExt, symlink};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use haul_manifest::{ScanEntry, ScanError, ScanOptions, scan, scan_with, walk_names};
use haul_proto::{EntryKind, MAX_XATTRS};
use rustix::fs::{CWD, FileType, Mode, XattrFlags, makedev, mknodat};

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn with_xattrs() -> ScanOptions {
    ScanOptions {
        xattrs: true,
        ..ScanOptions::default()
    }
}

fn set(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, XattrFlags::empty())
        .unwrap_or_else(|e| panic!("setting {name} on {}: {e}", path.display()));
}

fn entries(root: &Path, opts: &ScanOptions) -> Vec<ScanEntry> {
    scan_with(root, opts)
        .map(|item| item.unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

fn find<'a>(entries: &'a [ScanEntry], rel: &[u8]) -> &'a ScanEntry {
    entries
        .iter()
        .find(|e| e.rel == rel)
        .unwrap_or_else(|| panic!("no entry {:?}", String::from_utf8_lossy(rel)))
}

fn names(entry: &ScanEntry) -> Vec<&[u8]> {
    entry.xattrs.iter().map(|x| x.name.as_ref()).collect()
}

#[test]
fn owners_links_and_special_files_are_entries() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::write(root.join("file"), b"abc").unwrap();
    fs::hard_link(root.join("file"), root.join("link")).unwrap();
    mknodat(CWD, root.join("fifo"), FileType::Fifo, Mode::RUSR, 0).unwrap();
    let _listener = UnixListener::bind(root.join("sock")).unwrap();
    if is_root() {
        rustix::fs::chown(
            root.join("file"),
            Some(rustix::fs::Uid::from_raw(1234)),
            Some(rustix::fs::Gid::from_raw(5678)),
        )
        .unwrap();
        mknodat(
            CWD,
            root.join("null"),
            FileType::CharacterDevice,
            Mode::RUSR,
            makedev(1, 3),
        )
        .unwrap();
        mknodat(
            CWD,
            root.join("loop"),
            FileType::BlockDevice,
            Mode::RUSR,
            makedev(7, 42),
        )
        .unwrap();
    }
    let all = entries(root, &ScanOptions::default());

    let file = find(&all, b"file");
    assert_eq!(
        (file.kind, file.size, file.nlink, file.rdev),
        (EntryKind::File, 3, 2, 0)
    );
    let link = find(&all, b"link");
    assert_eq!((link.kind, link.nlink), (EntryKind::File, 2));
    assert_eq!((link.dev, link.ino), (file.dev, file.ino));
    let disk = fs::symlink_metadata(root.join("file")).unwrap();
    assert_eq!((file.uid, file.gid), (disk.uid(), disk.gid()));
    if is_root() {
        assert_eq!((file.uid, file.gid), (1234, 5678));
    }

    let fifo = find(&all, b"fifo");
    assert_eq!((fifo.kind, fifo.size, fifo.rdev), (EntryKind::Fifo, 0, 0));
    assert_eq!(fifo.meta.mode, 0o400);
    let sock = find(&all, b"sock");
    assert_eq!((sock.kind, sock.size), (EntryKind::Socket, 0));
    if is_root() {
        let null = find(&all, b"null");
        assert_eq!(
            (null.kind, null.size, null.rdev),
            (EntryKind::CharDev, 0, makedev(1, 3))
        );
        let block = find(&all, b"loop");
        assert_eq!(
            (block.kind, block.rdev),
            (EntryKind::BlockDev, makedev(7, 42))
        );
    }
    let dir_entry = find(&all, b"");
    assert!(dir_entry.nlink >= 2);
    assert!(all.iter().all(|e| e.xattrs.is_empty()));
}

#[test]
fn xattrs_are_read_sorted_for_every_entry_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("src");
    fs::create_dir_all(root.join("sub")).unwrap();
    fs::write(root.join("file"), b"x").unwrap();
    fs::write(root.join("plain"), b"x").unwrap();
    fs::write(root.join("sub/many"), b"x").unwrap();
    symlink("file", root.join("symlink")).unwrap();
    mknodat(CWD, root.join("fifo"), FileType::Fifo, Mode::RUSR, 0).unwrap();
    set(&root, "user.on-the-root", b"r");
    set(&root.join("file"), "user.b", b"2");
    set(&root.join("file"), "user.a", b"1");
    set(&root.join("sub"), "user.dir", b"");
    // An access ACL is an attribute too (system.posix_acl_access), when setfacl is there.
    let acl = Command::new("setfacl")
        .args(["-m", "u:1234:r"])
        .arg(root.join("plain"))
        .status()
        .is_ok_and(|s| s.success());
    // A list longer than the first buffer the scan tries (1 KiB); ext4 keeps no more than a
    // block of attributes, so a long value is tried on tmpfs below.
    let long_names: Vec<String> = (0..45)
        .map(|i| format!("user.{i:03}-{}", "n".repeat(20)))
        .collect();
    for name in &long_names {
        set(&root.join("sub/many"), name, name.as_bytes());
    }
    if is_root() {
        // Only trusted.* (and security.*) can be set on symlinks and special files.
        set(&root.join("symlink"), "trusted.link", b"l");
        set(&root.join("fifo"), "trusted.pipe", b"p");
    }

    assert!(
        entries(&root, &ScanOptions::default())
            .iter()
            .all(|e| e.xattrs.is_empty())
    );
    assert!(scan(&root).all(|e| e.unwrap().xattrs.is_empty()));

    let all = entries(&root, &with_xattrs());
    let top = find(&all, b"");
    assert_eq!(names(top), vec![&b"user.on-the-root"[..]]);
    let file = find(&all, b"file");
    assert_eq!(names(file), vec![&b"user.a"[..], b"user.b"]);
    assert_eq!(file.xattrs[0].value.as_ref(), b"1");
    assert_eq!(file.xattrs[1].value.as_ref(), b"2");
    let plain = find(&all, b"plain");
    if acl {
        assert_eq!(names(plain), vec![&b"system.posix_acl_access"[..]]);
        assert!(!plain.xattrs[0].value.is_empty());
    } else {
        eprintln!("no setfacl: the ACL case is skipped");
        assert!(plain.xattrs.is_empty());
    }
    let sub = find(&all, b"sub");
    assert_eq!(names(sub), vec![&b"user.dir"[..]]);
    assert!(sub.xattrs[0].value.is_empty());
    let many = find(&all, b"sub/many");
    let want: Vec<&[u8]> = long_names.iter().map(|n| n.as_bytes()).collect();
    assert_eq!(names(many), want);
    for x in &many.xattrs {
        assert_eq!(x.name, x.value);
    }
    if is_root() {
        assert_eq!(names(find(&all, b"symlink")), vec![&b"trusted.link"[..]]);
        assert_eq!(names(find(&all, b"fifo")), vec![&b"trusted.pipe"[..]]);
    }
}

#[test]
fn a_wide_directory_reads_xattrs_on_the_stat_threads() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..600 {
        let path = dir.path().join(format!("f{i:04}"));
        File::create(&path).unwrap();
        if i % 3 == 0 {
            set(&path, "user.n", format!("{i}").as_bytes());
        }
    }
    let all = entries(dir.path(), &with_xattrs());
    assert_eq!(all.len(), 601);
    for (i, entry) in all[1..].iter().enumerate() {
        assert_eq!(entry.rel, format!("f{i:04}").as_bytes());
        if i % 3 == 0 {
            assert_eq!(entry.xattrs.len(), 1, "{entry:?}");
            assert_eq!(entry.xattrs[0].value.as_ref(), format!("{i}").as_bytes());
        } else {
            assert!(entry.xattrs.is_empty(), "{entry:?}");
        }
    }
}

#[test]
fn an_entry_over_the_xattr_limits_is_skipped_with_an_error_and_the_scan_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::write(root.join("a"), b"").unwrap();
    fs::write(root.join("crowded"), b"").unwrap();
    fs::write(root.join("z"), b"").unwrap();
    for i in 0..=MAX_XATTRS {
        set(&root.join("crowded"), &format!("user.x{i}"), b"v");
    }
    let items: Vec<_> = scan_with(root, &with_xattrs()).collect();
    let rels: Vec<Vec<u8>> = items
        .iter()
        .filter_map(|i| i.as_ref().ok().map(|e| e.rel.clone()))
        .collect();
    assert_eq!(rels, vec![b"".to_vec(), b"a".to_vec(), b"z".to_vec()]);
    let err = items[2].as_ref().unwrap_err();
    assert!(matches!(err, ScanError::TooManyXattrs { .. }), "{err}");
    assert_eq!(err.path(), root.join("crowded"));
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("skipping {}", root.join("crowded").display()))
            && text.contains("129 attributes, more than 128"),
        "{text}"
    );
    // Without --xattrs the same file is an ordinary entry.
    assert_eq!(entries(root, &ScanOptions::default()).len(), 4);
}

#[test]
fn long_values_are_read_and_xattrs_over_the_total_are_refused() {
    // ext4 keeps one block of attributes per file; tmpfs takes big values.
    let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
        eprintln!("skipped: no /dev/shm");
        return;
    };
    let long = dir.path().join("long");
    fs::write(&long, b"").unwrap();
    let value: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
    if let Err(e) = rustix::fs::lsetxattr(&long, "user.long", &value, XattrFlags::empty()) {
        eprintln!("skipped: this tmpfs takes no large user xattrs ({e})");
        return;
    }
    let read = entries(&long, &with_xattrs());
    assert_eq!(names(&read[0]), vec![&b"user.long"[..]]);
    assert_eq!(read[0].xattrs[0].value.as_ref(), value.as_slice());

    let file = dir.path().join("heavy");
    fs::write(&file, b"").unwrap();
    for i in 0..5 {
        let set = rustix::fs::lsetxattr(
            &file,
            format!("user.big{i}").as_str(),
            &vec![1u8; 60_000],
            XattrFlags::empty(),
        );
        if let Err(e) = set {
            eprintln!("skipped: this tmpfs takes no large user xattrs ({e})");
            return;
        }
    }
    let items: Vec<_> = scan_with(&file, &with_xattrs()).collect();
    assert_eq!(items.len(), 1);
    let err = items[0].as_ref().unwrap_err();
    assert!(matches!(err, ScanError::TooManyXattrs { .. }), "{err}");
    assert!(err.to_string().contains("256 KiB in total"), "{err}");
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Mount(PathBuf);

impl Mount {
    fn new(at: &Path) -> Option<Mount> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Mount(at.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn one_file_system_lists_a_mount_point_but_does_not_enter_it() {
    if !is_root() {
        eprintln!("skipped: mounting needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("src");
    fs::create_dir_all(root.join("mnt")).unwrap();
    fs::create_dir_all(root.join("same/deeper")).unwrap();
    fs::write(root.join("same/deeper/f"), b"x").unwrap();
    let Some(_mount) = Mount::new(&root.join("mnt")) else {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    };
    fs::create_dir(root.join("mnt/inside")).unwrap();
    fs::write(root.join("mnt/inside/g"), b"x").unwrap();

    let rels = |opts: &ScanOptions| -> Vec<String> {
        entries(&root, opts)
            .into_iter()
            .map(|e| String::from_utf8(e.rel).unwrap())
            .collect()
    };
    let whole = rels(&ScanOptions::default());
    assert_eq!(
        whole,
        [
            "",
            "mnt",
            "mnt/inside",
            "mnt/inside/g",
            "same",
            "same/deeper",
            "same/deeper/f"
        ]
    );
    let one = ScanOptions {
        one_file_system: true,
        ..ScanOptions::default()
    };
    assert_eq!(
        rels(&one),
        ["", "mnt", "same", "same/deeper", "same/deeper/f"]
    );

    // The --delete listing stops at the same place: "mnt" is named, never walked.
    let walked: Vec<Vec<u8>> = walk_names(&root, &one).map(|d| d.unwrap().rel).collect();
    assert_eq!(
        walked,
        vec![b"".to_vec(), b"same".to_vec(), b"same/deeper".to_vec()]
    );
    let first = walk_names(&root, &one).next().unwrap().unwrap();
    assert_eq!(first.names, vec![b"mnt".to_vec(), b"same".to_vec()]);
    let everything: Vec<Vec<u8>> = walk_names(&root, &ScanOptions::default())
        .map(|d| d.unwrap().rel)
        .collect();
    assert!(
        everything.contains(&b"mnt/inside".to_vec()),
        "{everything:?}"
    );
}
