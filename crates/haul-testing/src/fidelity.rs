//! Exact-copy fidelity: a tree holding every attribute an exact copy must keep, and checkers
//! that owe nothing to haul.
//!
//! [`build_fidelity_tree`] makes hard-link groups, multi-chunk files, other owners and groups
//! (named and unnamed), setuid/setgid files, a sticky directory, `user.*` xattrs, a file
//! capability, POSIX access and default ACLs, a FIFO, a socket, a character and a block
//! device, mode-000 entries, empty directories, odd symlinks and odd names, with nanosecond
//! mtimes on everything.
//!
//! Three independent checks say whether a copy of it is exact:
//! - [`compare_trees`]: a walk of both trees with `lstat`, `readlink`, `llistxattr` and
//!   `lgetxattr`, comparing entry by entry and the hard-link groups;
//! - [`rsync_itemize`]: what `rsync -naicHAX --numeric-ids SRC/ DST/` would change (nothing,
//!   for an exact copy);
//! - [`du_bytes`]: disk use by `du`, which counts each hard-linked inode once.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use rand::{RngCore, SeedableRng, rngs::StdRng};

/// Size of the large files: more than two 4 MiB chunks (haul's default chunk size).
pub const BIG_FILE_BYTES: usize = 9 * (1 << 20) + 12_345;

/// A uid that has no name in `/etc/passwd` on the test hosts (checked when the tree is built).
pub const UNNAMED_UID: u32 = 4242;
/// A gid that has no name in `/etc/group` on the test hosts (checked when the tree is built).
pub const UNNAMED_GID: u32 = 4343;

/// A user from `/etc/passwd`, with its primary group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedUser {
    /// The login name ("daemon" where there is one).
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
}

/// What [`build_fidelity_tree`] made. Every path is relative to [`root`](Self::root); join
/// them with [`path`](Self::path).
#[derive(Clone, Debug)]
pub struct FidelityTree {
    /// The directory the tree was built in.
    pub root: PathBuf,
    /// The user other than root who owns some entries, named in `/etc/passwd`.
    pub named_user: NamedUser,
    /// Regular files outside any hard-link group: empty, small, a page, and
    /// [`big_file`](Self::big_file).
    pub files: Vec<PathBuf>,
    /// A file of [`BIG_FILE_BYTES`] random bytes (more than two 4 MiB chunks), not linked.
    pub big_file: PathBuf,
    /// Hard-link groups, each a list of paths to one inode: one of 2 members (owned by
    /// [`UNNAMED_UID`], with an xattr) and one of 5 members over three directories whose file
    /// is [`BIG_FILE_BYTES`] long.
    pub link_groups: Vec<Vec<PathBuf>>,
    /// Entries not owned by root:root, with the (uid, gid) they were given. Includes
    /// directories, a symlink, and files whose group differs from the owner's primary group.
    pub owned: Vec<(PathBuf, u32, u32)>,
    /// Files with setuid and/or setgid bits, with their modes (04755, 02755, 06750, 04750).
    pub setid: Vec<(PathBuf, u32)>,
    /// A directory with mode 01777.
    pub sticky_dir: PathBuf,
    /// Files and directories with `user.*` xattrs: the first has several, one with a binary
    /// value and one empty; the second holds one of [`big_xattr_len`](Self::big_xattr_len)
    /// bytes.
    pub xattrs: Vec<PathBuf>,
    /// The length of the large xattr value: 4,096 where the file system takes it, else the
    /// largest that fits (ext4 without `ea_inode`: about 4,040).
    pub big_xattr_len: usize,
    /// A file with `security.capability` = cap_net_bind_service+ep.
    pub capability: PathBuf,
    /// A file with a POSIX access ACL (named user and named group entries).
    pub access_acl: PathBuf,
    /// A directory with a POSIX default ACL.
    pub default_acl: PathBuf,
    /// A file created in [`default_acl`](Self::default_acl), which inherited an access ACL.
    pub inherited_acl: PathBuf,
    /// A FIFO.
    pub fifo: PathBuf,
    /// A Unix socket node (bound once, nobody listening).
    pub socket: PathBuf,
    /// A character device, 1:3 (as /dev/null).
    pub char_device: PathBuf,
    /// A block device, 7:200.
    pub block_device: PathBuf,
    /// A mode-000 file and a mode-000 directory (which holds a file).
    pub mode_000: Vec<PathBuf>,
    /// Empty directories, some nested in each other.
    pub empty_dirs: Vec<PathBuf>,
    /// Symlinks: dangling, absolute, relative with `../..`, a self-loop, a 200-byte target,
    /// and ones with odd names or odd targets.
    pub symlinks: Vec<PathBuf>,
    /// Entries whose names hold spaces, a newline or invalid UTF-8.
    pub odd_names: Vec<PathBuf>,
}

impl FidelityTree {
    /// `rel` under the root.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root.join(rel)
    }

    /// Every path of every hard-link group.
    pub fn linked_paths(&self) -> impl Iterator<Item = &PathBuf> {
        self.link_groups.iter().flatten()
    }
}

fn rel(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(bytes))
}

/// Looks `name` up in `/etc/passwd`: (uid, primary gid).
fn passwd_entry(name: &str) -> Option<(u32, u32)> {
    let text = fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 4 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// True if `id` is the numeric id (third field) of a line in `file` (/etc/passwd or
/// /etc/group).
fn id_is_named(file: &str, id: u32) -> bool {
    fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .any(|line| line.split(':').nth(2) == Some(&id.to_string()))
}

fn find_named_user() -> NamedUser {
    for name in ["daemon", "bin", "sys", "nobody"] {
        if let Some((uid, gid)) = passwd_entry(name)
            && uid != 0
            && gid != UNNAMED_GID
        {
            return NamedUser {
                name: name.to_string(),
                uid,
                gid,
            };
        }
    }
    panic!("/etc/passwd has none of daemon, bin, sys, nobody: no named user to own test files");
}

// POSIX ACL xattr layout (linux/posix_acl_xattr.h).
const ACL_USER_OBJ: u16 = 0x01;
const ACL_USER: u16 = 0x02;
const ACL_GROUP_OBJ: u16 = 0x04;
const ACL_GROUP: u16 = 0x08;
const ACL_MASK: u16 = 0x10;
const ACL_OTHER: u16 = 0x20;
const ACL_UNDEFINED_ID: u32 = u32::MAX;

/// The `system.posix_acl_*` value of `entries` (tag, perm, id), sorted by tag then id.
fn acl_xattr(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut sorted = entries.to_vec();
    sorted.sort_by_key(|&(tag, _, id)| (tag, id));
    let mut out = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in sorted {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    out
}

/// `security.capability` (VFS_CAP_REVISION_2, effective) granting `bit` permitted.
fn capability_xattr(bit: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(20);
    out.extend_from_slice(&0x0200_0001u32.to_le_bytes());
    let (low, high) = if bit < 32 {
        (1u32 << bit, 0)
    } else {
        (0, 1u32 << (bit - 32))
    };
    for word in [low, 0, high, 0] {
        out.extend_from_slice(&word.to_le_bytes());
    }
    out
}

const CAP_NET_BIND_SERVICE: u32 = 10;

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty()).unwrap_or_else(|e| {
        panic!(
            "setting xattr {name} on {}: {e} (the file system must support xattrs)",
            path.display()
        )
    });
}

fn chown(path: &Path, uid: u32, gid: u32) {
    lchown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("lchown {uid}:{gid} {}: {e}", path.display()));
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

fn set_mtime(path: &Path, sec: i64, nsec: u32) {
    let t = rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec.into(),
    };
    let times = rustix::fs::Timestamps {
        last_access: t,
        last_modification: t,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &times,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap_or_else(|e| panic!("utimensat {}: {e}", path.display()));
}

struct Maker {
    root: PathBuf,
    rng: StdRng,
    owned: Vec<(PathBuf, u32, u32)>,
}

impl Maker {
    fn at(&self, rel: &Path) -> PathBuf {
        self.root.join(rel)
    }

    fn dir(&self, rel: &Path) -> PathBuf {
        fs::create_dir_all(self.at(rel)).expect("create a directory");
        rel.to_path_buf()
    }

    fn file(&mut self, rel: &Path, len: usize) -> PathBuf {
        let path = self.at(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("create parents");
        }
        let mut data = vec![0u8; len];
        self.rng.fill_bytes(&mut data);
        fs::write(&path, &data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        rel.to_path_buf()
    }

    /// Chowns `rel` and records it as owned.
    fn own(&mut self, rel: PathBuf, uid: u32, gid: u32) {
        chown(&self.at(&rel), uid, gid);
        self.owned.push((rel, uid, gid));
    }

    fn link(&self, existing: &Path, new: &Path) -> PathBuf {
        let new_path = self.at(new);
        if let Some(parent) = new_path.parent() {
            fs::create_dir_all(parent).expect("create parents");
        }
        fs::hard_link(self.at(existing), &new_path).expect("hard link");
        new.to_path_buf()
    }

    fn symlink(&self, rel: &Path, target: &[u8]) -> PathBuf {
        symlink(OsStr::from_bytes(target), self.at(rel)).expect("create a symlink");
        rel.to_path_buf()
    }
}

/// Builds the fidelity tree under `dir` (created if missing) and says what it made.
///
/// **Needs root**: it chowns to other users, writes `security.capability`, and makes device
/// nodes. The file system must support `user.*` and `system.posix_acl_*` xattrs (ext4, xfs,
/// btrfs; tmpfs only for some). `dir` must be short enough for a Unix socket path
/// (`dir/special/socket` under 108 bytes). Content is random from a fixed seed; every entry,
/// including `dir` itself, gets a distinct mtime with a nanosecond part, set last.
///
/// # Panics
/// When not run as root, or when any step fails.
pub fn build_fidelity_tree(dir: &Path) -> FidelityTree {
    assert!(
        rustix::process::geteuid().is_root(),
        "build_fidelity_tree needs root (chown to other users, mknod, security.capability)"
    );
    assert!(
        !id_is_named("/etc/passwd", UNNAMED_UID) && !id_is_named("/etc/group", UNNAMED_GID),
        "uid {UNNAMED_UID} or gid {UNNAMED_GID} has a name on this host; the tree needs ids \
         without one"
    );
    let named = find_named_user();
    fs::create_dir_all(dir).expect("create the tree root");
    let mut m = Maker {
        root: dir.to_path_buf(),
        rng: StdRng::seed_from_u64(0xf1de_11e7),
        owned: Vec::new(),
    };
    let p = |s: &str| PathBuf::from(s);
    let (nu, ng) = (named.uid, named.gid);

    // Regular files of varied sizes.
    let big_file = m.file(&p("files/big.bin"), BIG_FILE_BYTES);
    let files = vec![
        m.file(&p("files/empty"), 0),
        m.file(&p("files/small"), 100),
        m.file(&p("files/page"), 4096),
        m.file(&p("files/odd-size"), 65_537),
        big_file.clone(),
    ];

    // Hard links: 2 members in two directories; 5 members over three, on a multi-chunk file.
    let two = m.file(&p("links/a/two-1"), 3000);
    let two_group = vec![two.clone(), m.link(&two, &p("links/b/two-2"))];
    chown(&m.at(&two), UNNAMED_UID, UNNAMED_GID);
    chmod(&m.at(&two), 0o640);
    set_xattr(&m.at(&two), "user.linked", b"one inode, two names");
    let five = m.file(&p("links/a/five-1"), BIG_FILE_BYTES);
    let mut five_group = vec![five.clone()];
    for other in [
        "links/a/five-2",
        "links/b/five-3",
        "links/c/five-4",
        "links/c/five-5",
    ] {
        five_group.push(m.link(&five, &p(other)));
    }
    let link_groups = vec![two_group, five_group];

    // Owners and groups: named, unnamed, and groups other than the owner's own.
    let named_dir = m.dir(&p("owners/named-dir"));
    let inside = m.file(&p("owners/named-dir/inside"), 10);
    m.own(inside, nu, ng);
    m.own(named_dir, nu, ng);
    let f = m.file(&p("owners/named-file"), 20);
    m.own(f, nu, ng);
    let unnamed_dir = m.dir(&p("owners/unnamed-dir"));
    let inside = m.file(&p("owners/unnamed-dir/inside"), 30);
    m.own(inside, UNNAMED_UID, UNNAMED_GID);
    m.own(unnamed_dir, UNNAMED_UID, UNNAMED_GID);
    let f = m.file(&p("owners/unnamed-file"), 40);
    m.own(f, UNNAMED_UID, UNNAMED_GID);
    // Groups that are not the owner's primary group.
    let f = m.file(&p("owners/named-user-root-group"), 50);
    m.own(f, nu, 0);
    let f = m.file(&p("owners/root-user-named-group"), 60);
    m.own(f, 0, ng);
    let f = m.file(&p("owners/named-user-unnamed-group"), 70);
    m.own(f, nu, UNNAMED_GID);
    let l = m.symlink(&p("owners/named-symlink"), b"named-file");
    m.own(l, nu, ng);
    m.owned.extend(
        link_groups[0]
            .iter()
            .map(|r| (r.clone(), UNNAMED_UID, UNNAMED_GID)),
    );

    // setuid/setgid, after the chown (chown clears them).
    let mut setid = Vec::new();
    for (name, uid, gid, mode) in [
        ("setid/suid-root", 0, 0, 0o4755),
        ("setid/sgid-root", 0, 0, 0o2755),
        ("setid/both-named", nu, ng, 0o6750),
        ("setid/suid-unnamed", UNNAMED_UID, UNNAMED_GID, 0o4750),
    ] {
        let rel = m.file(&p(name), 500);
        if uid != 0 || gid != 0 {
            m.own(rel.clone(), uid, gid);
        }
        chmod(&m.at(&rel), mode);
        setid.push((rel, mode));
    }
    let sticky_dir = m.dir(&p("sticky"));
    let sticky_file = m.file(&p("sticky/someone-else's"), 10);
    m.own(sticky_file, nu, ng);
    chmod(&m.at(&sticky_dir), 0o1777);

    // user.* xattrs on files and a directory.
    let xfile = m.file(&p("xattrs/file"), 1000);
    set_xattr(&m.at(&xfile), "user.text", b"hello, xattr");
    set_xattr(
        &m.at(&xfile),
        "user.binary",
        &[0, 255, 1, 254, 0, 0, 10, 13],
    );
    set_xattr(&m.at(&xfile), "user.empty", b"");
    // 4 KiB where the file system takes it; ext4 without ea_inode keeps all of a file's
    // xattrs in one 4 KiB block, so there the largest value that fits (about 4,040 bytes).
    let xbig = m.file(&p("xattrs/big-value"), 10);
    let mut big_value = vec![0u8; 4096];
    m.rng.fill_bytes(&mut big_value);
    let mut big_xattr_len = big_value.len();
    loop {
        match rustix::fs::lsetxattr(
            m.at(&xbig),
            "user.big",
            &big_value[..big_xattr_len],
            rustix::fs::XattrFlags::empty(),
        ) {
            Ok(()) => break,
            Err(rustix::io::Errno::NOSPC | rustix::io::Errno::TOOBIG) if big_xattr_len > 3072 => {
                big_xattr_len -= 4
            }
            Err(e) => panic!("setting a {big_xattr_len}-byte user.big on {xbig:?}: {e}"),
        }
    }
    let xdir = m.dir(&p("xattrs/dir"));
    set_xattr(&m.at(&xdir), "user.dir", b"on a directory");
    set_xattr(&m.at(&xdir), "user.second", b"\x00\x01\x02");
    let xempty = m.file(&p("xattrs/dir/empty-with-xattr"), 0);
    set_xattr(&m.at(&xempty), "user.on-empty", b"yes");
    let xattrs = vec![xfile, xbig, xdir, xempty, link_groups[0][0].clone()];

    // A file capability, after the content and the owner (writes and chown clear it).
    let capability = m.file(&p("caps/bind-low-ports"), 2000);
    chmod(&m.at(&capability), 0o755);
    set_xattr(
        &m.at(&capability),
        "security.capability",
        &capability_xattr(CAP_NET_BIND_SERVICE),
    );

    // POSIX ACLs: an access ACL on a file, a default ACL on a directory (and a file in it,
    // which inherits an access ACL from it).
    let access_acl = m.file(&p("acl/file"), 300);
    set_xattr(
        &m.at(&access_acl),
        "system.posix_acl_access",
        &acl_xattr(&[
            (ACL_USER_OBJ, 6, ACL_UNDEFINED_ID),
            (ACL_USER, 4, UNNAMED_UID),
            (ACL_GROUP_OBJ, 4, ACL_UNDEFINED_ID),
            (ACL_GROUP, 6, ng),
            (ACL_MASK, 6, ACL_UNDEFINED_ID),
            (ACL_OTHER, 0, ACL_UNDEFINED_ID),
        ]),
    );
    let default_acl = m.dir(&p("acl/dir"));
    set_xattr(
        &m.at(&default_acl),
        "system.posix_acl_default",
        &acl_xattr(&[
            (ACL_USER_OBJ, 7, ACL_UNDEFINED_ID),
            (ACL_USER, 7, UNNAMED_UID),
            (ACL_GROUP_OBJ, 5, ACL_UNDEFINED_ID),
            (ACL_GROUP, 5, ng),
            (ACL_MASK, 7, ACL_UNDEFINED_ID),
            (ACL_OTHER, 0, ACL_UNDEFINED_ID),
        ]),
    );
    let inherited_acl = m.file(&p("acl/dir/inherits"), 400);

    // Special files.
    m.dir(&p("special"));
    let fifo = p("special/fifo");
    let char_device = p("special/null");
    let block_device = p("special/loop200");
    let socket = p("special/socket");
    use rustix::fs::{FileType, Mode, makedev, mknodat};
    mknodat(
        rustix::fs::CWD,
        m.at(&fifo),
        FileType::Fifo,
        Mode::from_raw_mode(0o640),
        0,
    )
    .expect("mkfifo");
    mknodat(
        rustix::fs::CWD,
        m.at(&char_device),
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        makedev(1, 3),
    )
    .expect("mknod c 1 3");
    mknodat(
        rustix::fs::CWD,
        m.at(&block_device),
        FileType::BlockDevice,
        Mode::from_raw_mode(0o660),
        makedev(7, 200),
    )
    .expect("mknod b 7 200");
    let socket_path = m.at(&socket);
    assert!(
        socket_path.as_os_str().len() < 108,
        "{} is too long for a Unix socket path: build the tree in a shorter directory",
        socket_path.display()
    );
    drop(
        std::os::unix::net::UnixListener::bind(&socket_path)
            .unwrap_or_else(|e| panic!("bind {}: {e}", socket_path.display())),
    );
    chmod(&socket_path, 0o755);
    let named_fifo = p("special/fifo-named");
    mknodat(
        rustix::fs::CWD,
        m.at(&named_fifo),
        FileType::Fifo,
        Mode::from_raw_mode(0o600),
        0,
    )
    .expect("mkfifo");
    m.own(named_fifo, nu, UNNAMED_GID);

    // Mode 000: a file, and a directory holding a file (chmod last, after filling it).
    let none_file = m.file(&p("modes/none"), 25);
    let closed_dir = m.dir(&p("modes/closed"));
    m.file(&p("modes/closed/inside"), 35);
    chmod(&m.at(&none_file), 0);
    chmod(&m.at(&closed_dir), 0);
    let odd_mode = m.file(&p("modes/0751"), 5);
    chmod(&m.at(&odd_mode), 0o751);
    let mode_000 = vec![none_file, closed_dir];

    // Empty directories, nested.
    let empty_dirs = vec![
        m.dir(&p("empty/alone")),
        m.dir(&p("empty/nested/deeper/deepest")),
        m.dir(&p("empty/nested/sibling")),
    ];

    // Odd symlinks.
    m.dir(&p("symlinks/deep/er"));
    let long_target: Vec<u8> = b"long-target/".iter().copied().cycle().take(200).collect();
    let mut symlinks = vec![
        m.symlink(&p("symlinks/dangling"), b"does/not/exist"),
        m.symlink(&p("symlinks/absolute"), b"/etc/passwd"),
        m.symlink(&p("symlinks/deep/er/up"), b"../../../files/small"),
        m.symlink(&p("symlinks/deep/updir"), b"../.."),
        m.symlink(&p("symlinks/self"), b"self"),
        m.symlink(&p("symlinks/long"), &long_target),
        m.symlink(&p("symlinks/to-dir"), b"../files"),
    ];

    // Odd names: spaces, newline, invalid UTF-8, on files, directories and symlinks.
    let odd_names = vec![
        m.file(&rel(b"names/with space"), 11),
        m.file(&rel(b"names/new\nline"), 12),
        m.file(&rel(b"names/bad-\xff\xfe-utf8"), 13),
        m.file(&rel(b"names/dir with space/and file"), 14),
        m.dir(&rel(b"names/dir with space")),
        m.symlink(&rel(b"names/link with space"), b"with space"),
        m.symlink(&rel(b"names/link-\xff"), b"bad-\xff\xfe-utf8"),
        m.symlink(&rel(b"names/link-to-newline"), b"new\nline"),
    ];
    symlinks.extend(odd_names[5..].iter().cloned());
    symlinks.push(p("owners/named-symlink"));

    // Times last, deepest first, so creating children does not move a parent's mtime.
    let mut all = Vec::new();
    walk_rel(dir, Path::new(""), &mut all);
    all.sort_by_key(|r| std::cmp::Reverse(r.components().count()));
    for (i, r) in all.iter().enumerate() {
        let i = i as i64;
        // Distinct seconds, nanoseconds that are not whole microseconds.
        let nsec = ((i * 123_456_789 + 987_654_321) % 1_000_000_000) as u32 | 1;
        set_mtime(&dir.join(r), 1_500_000_000 + i * 3_607, nsec);
    }

    FidelityTree {
        root: dir.to_path_buf(),
        named_user: named,
        files,
        big_file,
        link_groups,
        owned: m.owned,
        setid,
        sticky_dir,
        xattrs,
        big_xattr_len,
        capability,
        access_acl,
        default_acl,
        inherited_acl,
        fifo,
        socket,
        char_device,
        block_device,
        mode_000,
        empty_dirs,
        symlinks,
        odd_names,
    }
}

/// Every path under `root` (relative, `rel` first), never following symlinks.
fn walk_rel(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
    out.push(rel.to_path_buf());
    let path = root.join(rel);
    let is_dir = fs::symlink_metadata(&path)
        .map(|m| m.file_type().is_dir())
        .unwrap_or(false);
    if is_dir {
        let mut names: Vec<_> = fs::read_dir(&path)
            .unwrap_or_else(|e| panic!("read_dir {}: {e}", path.display()))
            .map(|e| e.expect("read a directory entry").file_name())
            .collect();
        names.sort();
        for name in names {
            walk_rel(root, &rel.join(name), out);
        }
    }
}

// --- comparing ---------------------------------------------------------------------------

/// One entry of a tree as `compare_trees` sees it.
struct Entry {
    dev: u64,
    ino: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
    rdev: u64,
    target: Option<Vec<u8>>,
    xattrs: Result<BTreeMap<Vec<u8>, Vec<u8>>, String>,
}

const S_IFMT: u32 = 0o170_000;

fn kind_name(mode: u32) -> &'static str {
    match mode & S_IFMT {
        0o100_000 => "file",
        0o040_000 => "directory",
        0o120_000 => "symlink",
        0o010_000 => "fifo",
        0o140_000 => "socket",
        0o020_000 => "char device",
        0o060_000 => "block device",
        _ => "unknown kind",
    }
}

fn is_kind(mode: u32, kind: u32) -> bool {
    mode & S_IFMT == kind
}

/// All xattrs of `path` (not following a symlink), in every namespace the caller may read.
fn read_xattrs(path: &Path) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, String> {
    let mut out = BTreeMap::new();
    let mut list = Vec::new();
    loop {
        let n = match rustix::fs::llistxattr_query(path) {
            Ok(n) => n,
            Err(rustix::io::Errno::NOTSUP) => return Ok(out),
            Err(e) => return Err(format!("llistxattr: {e}")),
        };
        if n == 0 {
            return Ok(out);
        }
        list.resize(n, 0);
        match rustix::fs::llistxattr(path, &mut list[..]) {
            Ok(k) => {
                list.truncate(k);
                break;
            }
            Err(rustix::io::Errno::RANGE) => continue,
            Err(e) => return Err(format!("llistxattr: {e}")),
        }
    }
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name_os = OsStr::from_bytes(name);
        let mut value = Vec::new();
        loop {
            let n = rustix::fs::lgetxattr_query(path, name_os)
                .map_err(|e| format!("lgetxattr {}: {e}", name.escape_ascii()))?;
            value.resize(n, 0);
            if n == 0 {
                break;
            }
            match rustix::fs::lgetxattr(path, name_os, &mut value[..]) {
                Ok(k) => {
                    value.truncate(k);
                    break;
                }
                Err(rustix::io::Errno::RANGE) => continue,
                Err(e) => return Err(format!("lgetxattr {}: {e}", name.escape_ascii())),
            }
        }
        out.insert(name.to_vec(), value);
    }
    Ok(out)
}

/// Every entry under `root`, keyed by its path relative to `root` as bytes ("" for the root).
fn scan(root: &Path) -> Result<BTreeMap<Vec<u8>, Entry>, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![Vec::<u8>::new()];
    while let Some(rel) = stack.pop() {
        let path = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(OsStr::from_bytes(&rel))
        };
        let meta = fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mode = meta.mode();
        if is_kind(mode, 0o040_000) {
            let rd = fs::read_dir(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            for entry in rd {
                let entry = entry.map_err(|e| format!("{}: {e}", path.display()))?;
                let mut child = rel.clone();
                if !child.is_empty() {
                    child.push(b'/');
                }
                child.extend_from_slice(entry.file_name().as_bytes());
                stack.push(child);
            }
        }
        let target = is_kind(mode, 0o120_000)
            .then(|| fs::read_link(&path).map(|t| t.into_os_string().into_vec()))
            .transpose()
            .map_err(|e| format!("readlink {}: {e}", path.display()))?;
        out.insert(
            rel,
            Entry {
                dev: meta.dev(),
                ino: meta.ino(),
                mode,
                uid: meta.uid(),
                gid: meta.gid(),
                size: meta.size(),
                mtime: (meta.mtime(), meta.mtime_nsec()),
                rdev: meta.rdev(),
                target,
                xattrs: read_xattrs(&path),
            },
        );
    }
    Ok(out)
}

use std::os::unix::ffi::OsStringExt;

fn show(rel: &[u8]) -> String {
    if rel.is_empty() {
        ".".to_string()
    } else {
        rel.escape_ascii().to_string()
    }
}

fn show_value(v: &[u8]) -> String {
    if v.len() > 48 {
        format!(
            "{} bytes, blake3 {}",
            v.len(),
            &blake3::hash(v).to_hex()[..16]
        )
    } else {
        format!("\"{}\"", v.escape_ascii())
    }
}

fn hash_file(path: &Path) -> Result<blake3::Hash, String> {
    let mut file = fs::File::open(path).map_err(|e| format!("open: {e}"))?;
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(&mut file)
        .map_err(|e| format!("read: {e}"))?;
    Ok(hasher.finalize())
}

/// Content hash of a regular file, once per inode.
fn content(
    cache: &mut HashMap<(u64, u64), Result<blake3::Hash, String>>,
    root: &Path,
    rel: &[u8],
    e: &Entry,
) -> Result<blake3::Hash, String> {
    cache
        .entry((e.dev, e.ino))
        .or_insert_with(|| hash_file(&root.join(OsStr::from_bytes(rel))))
        .clone()
}

/// Hard-link groups of a tree: for every non-directory path, the set of paths to its inode.
fn link_groups(entries: &BTreeMap<Vec<u8>, Entry>) -> HashMap<&[u8], BTreeSet<&[u8]>> {
    let mut by_inode: HashMap<(u64, u64), BTreeSet<&[u8]>> = HashMap::new();
    for (rel, e) in entries {
        if !is_kind(e.mode, 0o040_000) {
            by_inode
                .entry((e.dev, e.ino))
                .or_default()
                .insert(rel.as_slice());
        }
    }
    let mut out = HashMap::new();
    for group in by_inode.into_values() {
        for &rel in &group {
            out.insert(rel, group.clone());
        }
    }
    out
}

fn show_group(g: &BTreeSet<&[u8]>) -> String {
    let names: Vec<String> = g.iter().map(|r| show(r)).collect();
    format!("{{{}}}", names.join(", "))
}

/// Compares two trees entry by entry with an independent walk (`lstat`, `readlink`,
/// `llistxattr`/`lgetxattr`, blake3 of contents; no haul code), never following symlinks.
///
/// For every path in either tree, including the two roots: that it exists in both; its kind;
/// all mode bits (0o7777); uid and gid; size (for all but directories, whose size depends on
/// the file system and its history); mtime to the nanosecond; the device number of devices;
/// the raw target bytes of symlinks; the blake3 of file contents; every xattr (names and
/// values, all namespaces readable to the caller: `user.*`, `security.*`, `trusted.*` as root,
/// and ACLs as `system.posix_acl_*`). And the hard-link structure: in each tree the paths to
/// one inode form a group, and the groups must be the same sets of relative paths in both.
/// Not compared: atime, ctime, inode numbers, link counts (links from outside the trees
/// count there).
///
/// Returns one human-readable line per difference, "a" being `a` and "b" being `b`; empty
/// when the trees are identical. Names are shown with non-printable bytes escaped.
pub fn compare_trees(a: &Path, b: &Path) -> Vec<String> {
    let (ta, tb) = match (scan(a), scan(b)) {
        (Ok(ta), Ok(tb)) => (ta, tb),
        (Err(e), _) | (_, Err(e)) => return vec![format!("cannot walk: {e}")],
    };
    let mut out = Vec::new();
    let (mut cache_a, mut cache_b) = (HashMap::new(), HashMap::new());
    for (rel, ea) in &ta {
        let Some(eb) = tb.get(rel) else {
            out.push(format!("{}: {} only in a", show(rel), kind_name(ea.mode)));
            continue;
        };
        let name = show(rel);
        if ea.mode & S_IFMT != eb.mode & S_IFMT {
            out.push(format!(
                "{name}: kind {} in a, {} in b",
                kind_name(ea.mode),
                kind_name(eb.mode)
            ));
            continue;
        }
        let mut field = |what: &str, va: String, vb: String| {
            if va != vb {
                out.push(format!("{name}: {what} {va} in a, {vb} in b"));
            }
        };
        field(
            "mode",
            format!("{:04o}", ea.mode & 0o7777),
            format!("{:04o}", eb.mode & 0o7777),
        );
        field("uid", ea.uid.to_string(), eb.uid.to_string());
        field("gid", ea.gid.to_string(), eb.gid.to_string());
        if !is_kind(ea.mode, 0o040_000) {
            field("size", ea.size.to_string(), eb.size.to_string());
        }
        field(
            "mtime",
            format!("{}.{:09}", ea.mtime.0, ea.mtime.1),
            format!("{}.{:09}", eb.mtime.0, eb.mtime.1),
        );
        if is_kind(ea.mode, 0o020_000) || is_kind(ea.mode, 0o060_000) {
            let dev = |d: u64| {
                format!(
                    "{}:{}",
                    rustix::fs::major(d as rustix::fs::Dev),
                    rustix::fs::minor(d as rustix::fs::Dev)
                )
            };
            field("device", dev(ea.rdev), dev(eb.rdev));
        }
        if let (Some(la), Some(lb)) = (&ea.target, &eb.target) {
            field(
                "symlink target",
                format!("\"{}\"", la.escape_ascii()),
                format!("\"{}\"", lb.escape_ascii()),
            );
        }
        match (&ea.xattrs, &eb.xattrs) {
            (Ok(xa), Ok(xb)) => {
                for (k, va) in xa {
                    match xb.get(k) {
                        None => out.push(format!("{name}: xattr {} only in a", k.escape_ascii())),
                        Some(vb) if vb != va => out.push(format!(
                            "{name}: xattr {} {} in a, {} in b",
                            k.escape_ascii(),
                            show_value(va),
                            show_value(vb)
                        )),
                        Some(_) => {}
                    }
                }
                for k in xb.keys().filter(|k| !xa.contains_key(*k)) {
                    out.push(format!("{name}: xattr {} only in b", k.escape_ascii()));
                }
            }
            (Err(e), _) => out.push(format!("{name}: xattrs unreadable in a: {e}")),
            (_, Err(e)) => out.push(format!("{name}: xattrs unreadable in b: {e}")),
        }
        if is_kind(ea.mode, 0o100_000) && ea.size == eb.size {
            match (
                content(&mut cache_a, a, rel, ea),
                content(&mut cache_b, b, rel, eb),
            ) {
                (Ok(ha), Ok(hb)) if ha != hb => out.push(format!(
                    "{name}: content blake3 {} in a, {} in b",
                    &ha.to_hex()[..16],
                    &hb.to_hex()[..16]
                )),
                (Ok(_), Ok(_)) => {}
                (Err(e), _) => out.push(format!("{name}: unreadable in a: {e}")),
                (_, Err(e)) => out.push(format!("{name}: unreadable in b: {e}")),
            }
        }
    }
    for (rel, eb) in &tb {
        if !ta.contains_key(rel) {
            out.push(format!("{}: {} only in b", show(rel), kind_name(eb.mode)));
        }
    }

    // Hard-link structure, once per distinct pair of groups.
    let (ga, gb) = (link_groups(&ta), link_groups(&tb));
    let mut seen = HashSet::new();
    for (rel, group_a) in &ga {
        let Some(group_b) = gb.get(rel) else { continue };
        if group_a != group_b && seen.insert((show_group(group_a), show_group(group_b))) {
            out.push(format!(
                "{}: hard links {} in a, {} in b",
                show(rel),
                show_group(group_a),
                show_group(group_b)
            ));
        }
    }
    out
}

/// What `rsync -naicHAX --numeric-ids SRC/ DST/` would transfer or change: its stdout, empty
/// when `dst` is an exact copy of `src` in everything rsync checks (content by checksum,
/// times, modes, owners by number, devices, hard links, ACLs, xattrs).
///
/// Two things it does not see, both of which [`compare_trees`] reports: entries that exist
/// only in `dst` (rsync lists those only with `--delete`), and mtimes that differ by less
/// than a second (rsync's default `--modify-window=0` compares whole seconds; pass
/// `--modify-window=-1` to [`rsync_itemize_with`] to compare nanoseconds too).
///
/// # Panics
/// When rsync is missing ("apt-get install rsync") or exits with an error.
pub fn rsync_itemize(src: &Path, dst: &Path) -> String {
    rsync_itemize_with(src, dst, &[])
}

/// [`rsync_itemize`] with `extra` arguments after `-naicHAX --numeric-ids`.
///
/// # Panics
/// When rsync is missing ("apt-get install rsync") or exits with an error.
pub fn rsync_itemize_with(src: &Path, dst: &Path, extra: &[&str]) -> String {
    let slash = |p: &Path| {
        let mut s = p.as_os_str().to_os_string();
        s.push("/");
        s
    };
    let out = Command::new("rsync")
        .args(["-naicHAX", "--numeric-ids"])
        .args(extra)
        .arg(slash(src))
        .arg(slash(dst))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run rsync ({e}): install it with `apt-get install rsync`")
        });
    assert!(
        out.status.success(),
        "rsync -naicHAX --numeric-ids {} {}/ {}/ failed ({}): {}",
        extra.join(" "),
        src.display(),
        dst.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Bytes `dir` occupies on disk, as `du -sB1` counts them (each hard-linked inode once).
///
/// # Panics
/// When `du` fails or prints something else than a number first.
pub fn du_bytes(dir: &Path) -> u64 {
    let out = Command::new("du")
        .arg("-sB1")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run du: {e}"));
    assert!(
        out.status.success(),
        "du -sB1 {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected du output: {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_entries_are_sorted_and_little_endian() {
        let v = acl_xattr(&[(ACL_OTHER, 0, ACL_UNDEFINED_ID), (ACL_USER, 4, 7)]);
        assert_eq!(
            v,
            [
                2, 0, 0, 0, // version
                2, 0, 4, 0, 7, 0, 0, 0, // user:7:r--
                0x20, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, // other::---
            ]
        );
    }

    #[test]
    fn capability_is_revision_2_effective() {
        let v = capability_xattr(CAP_NET_BIND_SERVICE);
        assert_eq!(&v[..8], &[1, 0, 0, 2, 0, 4, 0, 0]);
        assert_eq!(&v[8..], &[0; 12]);
    }
}
