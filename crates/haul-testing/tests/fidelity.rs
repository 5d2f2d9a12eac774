//! The fidelity checkers can pass and can fail: a `cp -a` copy of the fidelity tree passes
//! every check, and each single alteration of that copy is reported.
//!
//! Runs as root (as CI does): the tree has other owners, devices and a file capability.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown};
use std::path::{Path, PathBuf};
use std::process::Command;

use haul_testing::fidelity::{
    BIG_FILE_BYTES, FidelityTree, UNNAMED_GID, UNNAMED_UID, build_fidelity_tree, compare_trees,
    du_bytes, rsync_itemize, rsync_itemize_with,
};

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The reference copy. As root `cp -a` keeps owners, modes, ns mtimes (symlinks too), hard
/// links within the tree, specials, devices, ACLs and every xattr including
/// `security.capability`: rsync -naicHAX finds nothing to change in it (asserted below).
fn copy(src: &Path, dst: &Path) {
    run(Command::new("cp").arg("-a").arg(src).arg(dst));
}

fn mtime(path: &Path) -> (i64, i64) {
    let m = fs::symlink_metadata(path).expect("lstat");
    (m.mtime(), m.mtime_nsec())
}

fn set_mtime(path: &Path, (sec, nsec): (i64, i64)) {
    let t = rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .expect("utimensat");
}

/// Runs `change` on `path` and then puts back the mtime of `path` and of its parent
/// directory, so only what `change` means to alter differs.
fn keeping_times(path: &Path, change: impl FnOnce(&Path)) {
    let parent = path.parent().expect("a parent");
    let (own, up) = (
        fs::symlink_metadata(path).ok().map(|_| mtime(path)),
        mtime(parent),
    );
    change(path);
    if let (Some(t), true) = (own, fs::symlink_metadata(path).is_ok()) {
        set_mtime(path, t);
    }
    set_mtime(parent, up);
}

struct Fixture {
    _tmp: tempfile::TempDir,
    tree: FidelityTree,
    work: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::Builder::new()
            .prefix("fid")
            .tempdir()
            .expect("tempdir");
        let tree = build_fidelity_tree(&tmp.path().join("src"));
        let work = tmp.path().to_path_buf();
        Fixture {
            _tmp: tmp,
            tree,
            work,
        }
    }

    fn src(&self) -> &Path {
        &self.tree.root
    }

    /// A fresh `cp -a` copy named `name`.
    fn copy(&self, name: &str) -> PathBuf {
        let dst = self.work.join(name);
        copy(self.src(), &dst);
        dst
    }
}

#[test]
fn the_tree_holds_what_it_says() {
    let fx = Fixture::new();
    let t = &fx.tree;
    let meta = |rel: &Path| fs::symlink_metadata(t.path(rel)).expect("lstat");

    assert_eq!(t.link_groups.len(), 2);
    let sizes: Vec<usize> = t.link_groups.iter().map(Vec::len).collect();
    assert_eq!(sizes, [2, 5]);
    for group in &t.link_groups {
        let first = meta(&group[0]);
        for member in group {
            let m = meta(member);
            assert_eq!((m.dev(), m.ino()), (first.dev(), first.ino()), "{member:?}");
            assert_eq!(m.nlink() as usize, group.len(), "{member:?}");
        }
    }
    let dirs: std::collections::BTreeSet<_> = t.link_groups[1].iter().map(|p| p.parent()).collect();
    assert_eq!(dirs.len(), 3, "the 5-member group spans three directories");
    assert_eq!(meta(&t.link_groups[1][0]).len() as usize, BIG_FILE_BYTES);
    const { assert!(BIG_FILE_BYTES > 8 << 20) };
    assert_eq!(meta(&t.big_file).len() as usize, BIG_FILE_BYTES);
    assert!(t.files.iter().any(|f| meta(f).len() == 0));

    for (rel, uid, gid) in &t.owned {
        let m = meta(rel);
        assert_eq!((m.uid(), m.gid()), (*uid, *gid), "{rel:?}");
    }
    assert!(t.owned.iter().any(|(_, u, _)| *u == t.named_user.uid));
    assert!(t.owned.iter().any(|(_, u, _)| *u == UNNAMED_UID));
    assert!(t.owned.iter().any(|(_, _, g)| *g == UNNAMED_GID));
    assert!(t.owned.iter().any(|(rel, _, _)| meta(rel).is_dir()));
    assert!(t.owned.iter().any(|(rel, _, _)| meta(rel).is_symlink()));
    for (rel, mode) in &t.setid {
        assert_eq!(meta(rel).mode() & 0o7777, *mode, "{rel:?}");
    }
    assert!(t.setid.iter().any(|(rel, _)| meta(rel).uid() == 0));
    assert!(t.setid.iter().any(|(rel, _)| meta(rel).uid() != 0));
    assert_eq!(meta(&t.sticky_dir).mode() & 0o7777, 0o1777);
    for rel in &t.mode_000 {
        assert_eq!(meta(rel).mode() & 0o7777, 0, "{rel:?}");
    }

    let ft = |rel: &Path| meta(rel).mode() & 0o170_000;
    assert_eq!(ft(&t.fifo), 0o010_000);
    assert_eq!(ft(&t.socket), 0o140_000);
    assert_eq!(ft(&t.char_device), 0o020_000);
    assert_eq!(ft(&t.block_device), 0o060_000);
    assert_eq!(meta(&t.char_device).rdev(), rustix::fs::makedev(1, 3));
    assert_eq!(meta(&t.block_device).rdev(), rustix::fs::makedev(7, 200));
    for rel in &t.symlinks {
        assert!(meta(rel).is_symlink(), "{rel:?}");
    }
    assert!(
        t.odd_names
            .iter()
            .any(|p| p.as_os_str().as_bytes().contains(&b'\n'))
    );
    assert!(t.odd_names.iter().any(|p| p.to_str().is_none()));
    for rel in &t.empty_dirs {
        assert_eq!(fs::read_dir(t.path(rel)).unwrap().count(), 0, "{rel:?}");
    }

    // Nanosecond times everywhere, the root included.
    for rel in [
        Path::new(""),
        &t.big_file,
        &t.sticky_dir,
        &t.symlinks[0],
        &t.fifo,
    ] {
        let nsec = mtime(&t.path(rel)).1;
        assert!(nsec % 1000 != 0, "{rel:?}: mtime nsec {nsec}");
    }

    // xattrs, ACLs and the capability, read back by the tools an administrator would use
    // when they are installed (.ci/run installs attr, acl and libcap2-bin).
    let tool = |cmd: &str, args: &[&OsStr]| -> Option<String> {
        let out = Command::new(cmd).args(args).output().ok()?;
        assert!(out.status.success(), "{cmd} {args:?} failed");
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let xfile = t.path(&t.xattrs[0]);
    if let Some(text) = tool("getfattr", &["-d".as_ref(), "-m-".as_ref(), xfile.as_ref()]) {
        for name in ["user.text", "user.binary", "user.empty"] {
            assert!(text.contains(name), "{name} missing from: {text}");
        }
    }
    let big = rustix::fs::lgetxattr_query(t.path(&t.xattrs[1]), "user.big").expect("user.big");
    assert_eq!(big, t.big_xattr_len);
    assert!(big > 4000, "user.big is {big} bytes");
    let cap = t.path(&t.capability);
    if let Some(text) = tool("getcap", &[cap.as_ref()]) {
        assert!(text.contains("cap_net_bind_service=ep"), "getcap: {text}");
    }
    let acl = t.path(&t.access_acl);
    if let Some(text) = tool("getfacl", &["-n".as_ref(), acl.as_ref()]) {
        assert!(text.contains(&format!("user:{UNNAMED_UID}:r--")), "{text}");
        assert!(
            text.contains(&format!("group:{}:rw-", t.named_user.gid)),
            "{text}"
        );
    }
    let dacl = t.path(&t.default_acl);
    if let Some(text) = tool("getfacl", &["-n".as_ref(), dacl.as_ref()]) {
        assert!(
            text.contains(&format!("default:user:{UNNAMED_UID}:rwx")),
            "{text}"
        );
    }
    let inherited = t.path(&t.inherited_acl);
    if let Some(text) = tool("getfacl", &["-n".as_ref(), inherited.as_ref()]) {
        assert!(text.contains(&format!("user:{UNNAMED_UID}:")), "{text}");
    }
}

#[test]
fn an_exact_copy_passes_every_check() {
    let fx = Fixture::new();
    let dst = fx.copy("dst");
    let diffs = compare_trees(fx.src(), &dst);
    assert!(
        diffs.is_empty(),
        "cp -a copy differs:\n{}",
        diffs.join("\n")
    );
    let rsync = rsync_itemize(fx.src(), &dst);
    assert!(rsync.is_empty(), "rsync -naicHAX reports:\n{rsync}");
    let (a, b) = (du_bytes(fx.src()), du_bytes(&dst));
    assert!(a.abs_diff(b) <= a / 100, "du {a} vs {b}");
    // du counts each hard-linked inode once: the 5-member group and big.bin are two big
    // files, not six.
    assert!(a < 3 * BIG_FILE_BYTES as u64, "du {a}");
    assert!(a > 2 * BIG_FILE_BYTES as u64, "du {a}");
    // A tree compared with itself: trivially nothing.
    assert!(compare_trees(fx.src(), fx.src()).is_empty());
}

/// One alteration of a fresh copy: what `compare_trees` must say about which path, and what
/// rsync must itemize (None where rsync cannot see it).
struct Alteration {
    what: &'static str,
    rel: PathBuf,
    compare_says: String,
    rsync_says: Option<&'static str>,
    /// Extra rsync arguments: `--modify-window=-1` where only nanoseconds differ.
    rsync_args: &'static [&'static str],
    alter: fn(&Path, &FidelityTree),
}

/// rsync compares mtimes to the second unless told otherwise.
const NSEC: &[&str] = &["--modify-window=-1"];

fn check(fx: &Fixture, n: usize, a: &Alteration) {
    let dst = fx.copy(&format!("dst-{n}"));
    (a.alter)(&dst, &fx.tree);
    let shown = match a.rel.as_os_str().as_bytes() {
        b"" => ".".to_string(),
        rel => rel.escape_ascii().to_string(),
    };
    let diffs = compare_trees(fx.src(), &dst);
    assert!(
        diffs
            .iter()
            .any(|d| d.starts_with(&format!("{shown}: ")) && d.contains(&a.compare_says)),
        "{}: compare_trees should report `{shown}: ...{}...`, said:\n{}",
        a.what,
        a.compare_says,
        diffs.join("\n")
    );
    // rsync writes control bytes (and bytes that are not UTF-8) as \#ooo.
    let rsync_shown: String = match a.rel.as_os_str().as_bytes() {
        b"" => ".".to_string(),
        rel => rel
            .iter()
            .map(|&b| match b {
                0x20..0x7f => char::from(b).to_string(),
                _ => format!("\\#{b:03o}"),
            })
            .collect(),
    };
    let rsync = rsync_itemize_with(fx.src(), &dst, a.rsync_args);
    match a.rsync_says {
        Some(item) => assert!(
            rsync
                .lines()
                .any(|l| l.starts_with(item) && l.contains(&rsync_shown)),
            "{}: rsync {:?} should itemize `{item} {rsync_shown}`, said:\n{rsync}",
            a.what,
            a.rsync_args
        ),
        None => assert!(
            rsync.is_empty(),
            "{}: rsync was expected to miss it, said:\n{rsync}",
            a.what
        ),
    }
    fs::remove_dir_all(&dst).expect("remove the copy");
}

#[test]
fn plain_rsync_compares_mtimes_to_the_second() {
    let fx = Fixture::new();
    let dst = fx.copy("dst");
    let path = dst.join("files/small");
    let (sec, nsec) = mtime(&path);
    set_mtime(&path, (sec, nsec ^ 0x100));
    assert!(rsync_itemize(fx.src(), &dst).is_empty());
    assert!(rsync_itemize_with(fx.src(), &dst, NSEC).contains("files/small"));
    assert!(!compare_trees(fx.src(), &dst).is_empty());
}

#[test]
fn every_alteration_is_reported() {
    let fx = Fixture::new();
    let t = &fx.tree;
    let p = PathBuf::from;
    let alterations = [
        Alteration {
            what: "chown a file",
            rel: p("owners/named-file"),
            compare_says: format!("uid {} in a, {UNNAMED_UID} in b", t.named_user.uid),
            rsync_says: Some(".f....o"),
            rsync_args: &[],
            alter: |dst, _| lchown(dst.join("owners/named-file"), Some(UNNAMED_UID), None).unwrap(),
        },
        Alteration {
            what: "chgrp a directory",
            rel: p("owners/unnamed-dir"),
            compare_says: format!("gid {UNNAMED_GID} in a, 0 in b"),
            rsync_says: Some(".d.....g"),
            rsync_args: &[],
            alter: |dst, _| lchown(dst.join("owners/unnamed-dir"), None, Some(0)).unwrap(),
        },
        Alteration {
            what: "chmod a file",
            rel: p("modes/0751"),
            compare_says: "mode 0751 in a, 0755 in b".into(),
            rsync_says: Some(".f...p"),
            rsync_args: &[],
            alter: |dst, _| {
                fs::set_permissions(dst.join("modes/0751"), fs::Permissions::from_mode(0o755))
                    .unwrap()
            },
        },
        Alteration {
            what: "drop the setgid bit",
            rel: p("setid/both-named"),
            compare_says: "mode 6750 in a, 4750 in b".into(),
            rsync_says: Some(".f...p"),
            rsync_args: &[],
            alter: |dst, _| {
                fs::set_permissions(
                    dst.join("setid/both-named"),
                    fs::Permissions::from_mode(0o4750),
                )
                .unwrap()
            },
        },
        Alteration {
            what: "change one xattr",
            rel: p("xattrs/file"),
            compare_says: "xattr user.binary".into(),
            rsync_says: Some(".f........x"),
            rsync_args: &[],
            alter: |dst, _| {
                rustix::fs::lsetxattr(
                    dst.join("xattrs/file"),
                    "user.binary",
                    &[0, 255, 1, 254, 0, 0, 10, 14],
                    rustix::fs::XattrFlags::REPLACE,
                )
                .unwrap()
            },
        },
        Alteration {
            what: "remove the capability",
            rel: p("caps/bind-low-ports"),
            compare_says: "xattr security.capability only in a".into(),
            rsync_says: Some(".f........x"),
            rsync_args: &[],
            alter: |dst, _| {
                rustix::fs::lremovexattr(dst.join("caps/bind-low-ports"), "security.capability")
                    .unwrap()
            },
        },
        Alteration {
            what: "remove the access ACL",
            rel: p("acl/file"),
            compare_says: "xattr system.posix_acl_access only in a".into(),
            rsync_says: Some(".f.......a"),
            rsync_args: &[],
            alter: |dst, _| {
                rustix::fs::lremovexattr(dst.join("acl/file"), "system.posix_acl_access").unwrap()
            },
        },
        Alteration {
            what: "break a hard link by copying over it",
            rel: p("links/b/five-3"),
            compare_says: "hard links".into(),
            rsync_says: Some("hf"),
            rsync_args: &[],
            alter: |dst, _| {
                keeping_times(&dst.join("links/b/five-3"), |path| {
                    let tmp = path.with_file_name("tmp");
                    run(Command::new("cp").arg("-a").arg(path).arg(&tmp));
                    fs::rename(&tmp, path).unwrap();
                })
            },
        },
        Alteration {
            what: "change a symlink target",
            rel: p("symlinks/dangling"),
            compare_says: "symlink target \"does/not/exist\" in a, \"does/not/exis\" in b".into(),
            rsync_says: Some("cL"),
            rsync_args: &[],
            alter: |dst, _| {
                keeping_times(&dst.join("symlinks/dangling"), |path| {
                    fs::remove_file(path).unwrap();
                    std::os::unix::fs::symlink("does/not/exis", path).unwrap();
                })
            },
        },
        Alteration {
            what: "change an mtime by one nanosecond",
            rel: p("files/small"),
            compare_says: "mtime".into(),
            rsync_says: Some(".f..t"),
            rsync_args: NSEC,
            alter: |dst, _| {
                let path = dst.join("files/small");
                let (sec, nsec) = mtime(&path);
                set_mtime(&path, (sec, nsec + 1));
            },
        },
        Alteration {
            what: "change a directory's mtime",
            rel: p("empty/nested/deeper"),
            compare_says: "mtime".into(),
            rsync_says: Some(".d..t"),
            rsync_args: &[],
            alter: |dst, _| set_mtime(&dst.join("empty/nested/deeper"), (1, 1)),
        },
        Alteration {
            what: "change a symlink's mtime",
            rel: p("symlinks/self"),
            compare_says: "mtime".into(),
            rsync_says: Some(".L..t"),
            rsync_args: &[],
            alter: |dst, _| set_mtime(&dst.join("symlinks/self"), (2, 2)),
        },
        Alteration {
            what: "change the content of a file, same size and mtime",
            rel: p("files/page"),
            compare_says: "content blake3".into(),
            rsync_says: Some(">fc"),
            rsync_args: &[],
            alter: |dst, _| {
                keeping_times(&dst.join("files/page"), |path| {
                    let mut data = fs::read(path).unwrap();
                    data[2000] ^= 1;
                    fs::write(path, data).unwrap();
                })
            },
        },
        Alteration {
            // Written through links/c/five-5; rsync -H names the group by its first member.
            what: "change one byte in the third chunk of a linked multi-chunk file",
            rel: p("links/a/five-1"),
            compare_says: "content blake3".into(),
            rsync_says: Some(">fc"),
            rsync_args: &[],
            alter: |dst, _| {
                keeping_times(&dst.join("links/c/five-5"), |path| {
                    use std::os::unix::fs::FileExt;
                    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
                    f.write_all_at(b"!", 8 << 20).unwrap();
                })
            },
        },
        Alteration {
            what: "change a device number",
            rel: p("special/null"),
            compare_says: "device 1:3 in a, 1:5 in b".into(),
            rsync_says: Some("cD"),
            rsync_args: &[],
            alter: |dst, _| {
                keeping_times(&dst.join("special/null"), |path| {
                    fs::remove_file(path).unwrap();
                    rustix::fs::mknodat(
                        rustix::fs::CWD,
                        path,
                        rustix::fs::FileType::CharacterDevice,
                        rustix::fs::Mode::from_raw_mode(0o666),
                        rustix::fs::makedev(1, 5),
                    )
                    .unwrap();
                })
            },
        },
        Alteration {
            what: "replace a FIFO with a file",
            rel: p("special/fifo"),
            compare_says: "kind fifo in a, file in b".into(),
            rsync_says: Some("cS"),
            rsync_args: &[],
            alter: |dst, _| {
                keeping_times(&dst.join("special/fifo"), |path| {
                    fs::remove_file(path).unwrap();
                    fs::write(path, b"").unwrap();
                    fs::set_permissions(path, fs::Permissions::from_mode(0o640)).unwrap();
                })
            },
        },
        Alteration {
            what: "remove a file with an odd name",
            rel: PathBuf::from(OsStr::from_bytes(b"names/new\nline")),
            compare_says: "file only in a".into(),
            rsync_says: Some(">f+++++++++"),
            rsync_args: &[],
            alter: |dst, _| {
                keeping_times(&dst.join(OsStr::from_bytes(b"names/new\nline")), |path| {
                    fs::remove_file(path).unwrap()
                })
            },
        },
        Alteration {
            what: "change the root's mtime",
            rel: p(""),
            compare_says: "mtime".into(),
            rsync_says: Some(".d..t"),
            rsync_args: &[],
            alter: |dst, _| set_mtime(dst, (3, 3)),
        },
        Alteration {
            // Without --delete rsync does not list what only the target has.
            what: "add a file to the copy",
            rel: p("files/extra"),
            compare_says: "file only in b".into(),
            rsync_says: None,
            rsync_args: &[],
            alter: |dst, _| {
                keeping_times(&dst.join("files/extra"), |path| {
                    fs::write(path, b"x").unwrap()
                })
            },
        },
    ];
    for (n, a) in alterations.iter().enumerate() {
        check(&fx, n, a);
    }
}
