//! The confined operations a remote client may ask of a receiver's [`Root`]: free space, the
//! stat of one path, a directory listing, the size of a tree, a walk that opens each regular
//! file (the engine hashes them into a manifest of the remote side; the store does not hash),
//! rename, removal, and small control files read whole and replaced atomically.
//!
//! Confinement, as everywhere in the store, and without the directory cache: every request
//! walks from the root's fd afresh, one component at a time with
//! `openat(O_DIRECTORY | O_NOFOLLOW)`, because a remote request must act on what a name means
//! *now* (a cached fd follows a directory that was renamed since, so it could answer for a
//! name with a directory that no longer bears it). The final component is acted on with an
//! `*at()` call that never follows it: a symlink there is reported as a symlink, renamed or
//! removed as the link itself, and never read or written through. A symlink on the way is
//! [`StoreError::SymlinkInPath`].
//!
//! Walks (tree size, the tree walk, removal) descend with `O_NOFOLLOW` from each parent's fd,
//! holding one directory fd per level below the start, so a directory swapped for a symlink
//! mid-walk is seen as the link it has become and never entered. The top root's `.haul` is
//! never listed, counted, walked into or removed.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, Stat};
use rustix::io::Errno;

use crate::error::StoreError;
use crate::fsutil::{Missing, not_found};
use crate::path::{RESERVED, RelPath};
use crate::root::{FileKind, Root};

/// How a directory below the start of a walk is opened: never following a symlink.
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// How a regular file is opened for reading: never following a symlink, never becoming the
/// controlling terminal, and not blocking should it have been swapped for a FIFO since its
/// `lstat` (the `fstat` after opening catches that).
const READ_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::NOCTTY)
    .union(OFlags::NONBLOCK)
    .union(OFlags::CLOEXEC);

/// Mode of a file written by [`Root::write_control`].
const CONTROL_MODE: u32 = 0o644;

/// How often an entry that keeps changing kind under a walk is looked at again.
const RETRIES: usize = 3;

/// Why the root itself is refused, for every operation that needs a name inside it.
const ROOT_REASON: &str = "that is the receiver's root directory itself: name a path inside it";

/// Counter of temporary names for [`Root::write_control`], unique within this process (the
/// pid makes them unique across receivers sharing a root).
static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);

/// Space on the file system holding the root ([`Root::statfs`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpaceInfo {
    /// Bytes an unprivileged user may still write (`f_bavail * f_frsize`).
    pub free_bytes: u64,
    /// Size of the file system in bytes (`f_blocks * f_frsize`).
    pub total_bytes: u64,
    /// Inodes an unprivileged user may still create (`f_favail`). 0 on file systems without
    /// a fixed inode table (btrfs), which never run out of inodes before space.
    pub free_inodes: u64,
    /// Inodes in all (`f_files`); 0 on file systems without a fixed inode table.
    pub total_inodes: u64,
}

/// What [`Root::stat_path`] reports of one entry (from `lstat`: a symlink is not followed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathStat {
    /// What it is.
    pub kind: FileKind,
    /// Size in bytes (a symlink's: the length of its target).
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime_sec: i64,
    /// Nanoseconds part of the modification time.
    pub mtime_nsec: u32,
    /// Hard links to it.
    pub nlink: u64,
}

impl PathStat {
    fn of(st: &Stat) -> PathStat {
        PathStat {
            kind: FileKind::of_mode(st.st_mode),
            size: u64::try_from(st.st_size).unwrap_or(0),
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            mtime_sec: st.st_mtime,
            mtime_nsec: u32::try_from(st.st_mtime_nsec).unwrap_or(0),
            nlink: st.st_nlink,
        }
    }
}

/// One entry of [`Root::list_dir`] (from `lstat`: a symlink is not followed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirItem {
    /// The name in the directory, as bytes (file names need not be UTF-8).
    pub name: Vec<u8>,
    /// What it is.
    pub kind: FileKind,
    /// Size in bytes (a symlink's: the length of its target).
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime_sec: i64,
    /// Nanoseconds part of the modification time.
    pub mtime_nsec: u32,
}

/// What [`Root::tree_size`] counts under a path (the path itself included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeSize {
    /// Apparent size of the regular files (`st_size`), each name counted.
    pub bytes: u64,
    /// Space the entries take on disk (`st_blocks * 512`) as `du` counts it: files,
    /// directories and symlinks, a hard-linked inode once however many names it has.
    pub allocated_bytes: u64,
    /// Regular files (each name of a hard-linked file counted).
    pub files: u64,
    /// Directories (the starting one included).
    pub dirs: u64,
    /// Symbolic links (counted, never followed).
    pub symlinks: u64,
    /// FIFOs, sockets, device nodes and anything else.
    pub others: u64,
}

/// What [`Root::visit_tree`] calls for each entry: its path relative to where the walk
/// started, its stat, and for a regular file the file, open read-only. An error stops the walk.
pub type TreeVisitor<'v> =
    dyn FnMut(&RelPath, &PathStat, Option<&File>) -> Result<(), StoreError> + 'v;

/// Where a fresh walk led: the root itself, or a name in an open directory.
enum Spot<'r> {
    /// The root itself, with its fd.
    Root(Arc<OwnedFd>),
    /// `name` in the directory `parent`.
    In(Arc<OwnedFd>, &'r [u8]),
}

/// What a fresh walk found at a path.
struct Found<'r> {
    spot: Spot<'r>,
    /// Its `lstat` (the root's `fstat`).
    st: Stat,
}

/// How the internal walk behaves for one operation.
struct Walk<'a> {
    /// The path walked, for messages.
    start: &'a RelPath,
    /// What is being done, for messages.
    op: &'static str,
    /// Open each regular file (read-only) and hand it to the visitor.
    open_files: bool,
    /// Skip entries named `.haul` directly in the starting directory.
    skip_reserved: bool,
}

/// A directory being walked: its fd, the names still to visit, its path from the start.
struct Level {
    dir: Arc<OwnedFd>,
    names: std::vec::IntoIter<Vec<u8>>,
    path: Vec<u8>,
}

/// The internal walk's visitor: the path from the start ('/'-joined, empty for the start
/// itself), the entry's stat and, for a regular file when asked, its fd.
type Visit<'v> = dyn FnMut(&[u8], &Stat, Option<OwnedFd>) -> Result<(), StoreError> + 'v;

/// What removing one entry found.
enum Removal {
    /// Removed (1) or already gone (0).
    Done(u64),
    /// A directory, opened to empty it first.
    Opened(OwnedFd),
}

/// How messages name a kind of entry.
fn kind_name(kind: FileKind) -> &'static str {
    match kind {
        FileKind::File => "a regular file",
        FileKind::Dir => "a directory",
        FileKind::Symlink => "a symbolic link (links are never followed)",
        FileKind::Fifo => "a named pipe",
        FileKind::Socket => "a socket",
        FileKind::CharDev => "a character device",
        FileKind::BlockDev => "a block device",
        FileKind::Other => "a special file",
    }
}

fn kind_of_stat(st: &Stat) -> FileKind {
    FileKind::of_mode(st.st_mode)
}

/// The names in a directory, sorted bytewise, without `.`, `..` and (if `skip_reserved`)
/// `.haul`. Reads through a second fd of the same directory, closed before returning.
fn sorted_names(dir: &OwnedFd, skip_reserved: bool) -> Result<Vec<Vec<u8>>, Errno> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." || (skip_reserved && name == RESERVED) {
            continue;
        }
        names.push(name.to_vec());
    }
    names.sort_unstable();
    Ok(names)
}

/// `a/b` from `a` and `b`; `b` alone when `a` is empty.
fn joined(base: &[u8], name: &[u8]) -> Vec<u8> {
    let mut path = Vec::with_capacity(base.len() + 1 + name.len());
    path.extend_from_slice(base);
    if !base.is_empty() {
        path.push(b'/');
    }
    path.extend_from_slice(name);
    path
}

/// Removes `name` in `parent` if it is not a directory, or opens it if it is; never follows
/// a symlink. An entry that changes kind in between is looked at again.
fn remove_or_open(parent: &OwnedFd, name: &[u8]) -> Result<Removal, Errno> {
    let mut last = Errno::AGAIN;
    for _ in 0..RETRIES {
        let st = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(Removal::Done(0)),
            Err(e) => return Err(e),
        };
        if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
            // unlinkat without AT_REMOVEDIR removes a symlink itself, never its target.
            match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
                Ok(()) => return Ok(Removal::Done(1)),
                Err(Errno::NOENT) => return Ok(Removal::Done(0)),
                // Swapped for a directory since the stat.
                Err(e @ (Errno::ISDIR | Errno::PERM)) => last = e,
                Err(e) => return Err(e),
            }
            continue;
        }
        match rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => return Ok(Removal::Opened(fd)),
            Err(Errno::NOENT) => return Ok(Removal::Done(0)),
            // Swapped for a symlink or a file since the stat: removed as what it is now.
            Err(e @ (Errno::NOTDIR | Errno::LOOP)) => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// A directory being emptied: its fd, its name in the level above, the names still to
/// remove, and how many times it has been listed.
struct Emptying {
    dir: OwnedFd,
    name: Vec<u8>,
    names: std::vec::IntoIter<Vec<u8>>,
    passes: usize,
}

/// Removes `name` in `parent` and everything under it, never following a symlink, holding
/// one directory fd per level. Returns how many entries went; on failure, the errno and the
/// path (from `name`) where it happened.
fn remove_all(parent: &OwnedFd, name: &[u8]) -> Result<u64, (Errno, Vec<u8>)> {
    let path_of = |stack: &[Emptying], last: Option<&[u8]>| {
        let mut path = Vec::new();
        for name in stack.iter().map(|l| l.name.as_slice()).chain(last) {
            path = joined(&path, name);
        }
        path
    };
    let first = match remove_or_open(parent, name).map_err(|e| (e, name.to_vec()))? {
        Removal::Done(n) => return Ok(n),
        Removal::Opened(fd) => fd,
    };
    let names = sorted_names(&first, false).map_err(|e| (e, name.to_vec()))?;
    let mut stack = vec![Emptying {
        dir: first,
        name: name.to_vec(),
        names: names.into_iter(),
        passes: 1,
    }];
    let mut removed = 0;
    while let Some(level) = stack.last_mut() {
        if let Some(child) = level.names.next() {
            match remove_or_open(&level.dir, &child) {
                Ok(Removal::Done(n)) => removed += n,
                Ok(Removal::Opened(fd)) => {
                    let names =
                        sorted_names(&fd, false).map_err(|e| (e, path_of(&stack, Some(&child))))?;
                    stack.push(Emptying {
                        dir: fd,
                        name: child,
                        names: names.into_iter(),
                        passes: 1,
                    });
                }
                Err(e) => return Err((e, path_of(&stack, Some(&child)))),
            }
            continue;
        }
        // Emptied: whatever was made in it meanwhile is removed too (a few rounds at most;
        // someone filling it as fast as it is emptied gets ENOTEMPTY below).
        if level.passes < RETRIES {
            match sorted_names(&level.dir, false) {
                Ok(again) if !again.is_empty() => {
                    level.names = again.into_iter();
                    level.passes += 1;
                    continue;
                }
                Ok(_) => {}
                Err(e) => return Err((e, path_of(&stack, None))),
            }
        }
        let Some(done) = stack.pop() else { break };
        let holder = stack.last().map_or(parent, |l| &l.dir);
        // By name in the level above: if the name is a symlink by now, this fails (ENOTDIR)
        // and nothing the link points to is touched.
        match rustix::fs::unlinkat(holder, done.name.as_slice(), AtFlags::REMOVEDIR) {
            Ok(()) => removed += 1,
            Err(Errno::NOENT) => {}
            Err(e) => return Err((e, path_of(&stack, Some(&done.name)))),
        }
    }
    Ok(removed)
}

impl Root {
    /// Free and total bytes and inodes of the file system holding the root (`fstatvfs` on
    /// the root's fd). Free counts are what an unprivileged user may still use.
    pub fn statfs(&self) -> Result<SpaceInfo, StoreError> {
        let root = self.root_fd()?;
        let st = rustix::fs::fstatvfs(&*root)
            .map_err(|e| self.err(e, &RelPath::root(), "query the free space of"))?;
        let unit = if st.f_frsize == 0 {
            st.f_bsize
        } else {
            st.f_frsize
        };
        Ok(SpaceInfo {
            free_bytes: st.f_bavail.saturating_mul(unit),
            total_bytes: st.f_blocks.saturating_mul(unit),
            free_inodes: st.f_favail,
            total_inodes: st.f_files,
        })
    }

    /// What is at `rel`, from `lstat` (a symlink is reported as one, never followed); the
    /// root's own stat for the root. `None` when nothing is there, or a component on the way
    /// is missing or not a directory. A symlink on the way is [`StoreError::SymlinkInPath`].
    pub fn stat_path(&self, rel: &RelPath) -> Result<Option<PathStat>, StoreError> {
        Ok(self.find(rel, "inspect")?.map(|f| PathStat::of(&f.st)))
    }

    /// Whether the directory `rel` is empty (at the top root, `.haul` does not count); `None`
    /// when nothing is there. Anything but a directory (a symlink included, which is not
    /// followed) is [`StoreError::Refused`].
    pub fn is_empty_dir(&self, rel: &RelPath) -> Result<Option<bool>, StoreError> {
        const OP: &str = "look into";
        let Some(found) = self.find(rel, OP)? else {
            return Ok(None);
        };
        let dir = self.open_found_dir(rel, found, OP)?;
        let skip_reserved = self.is_top(rel);
        let entries = rustix::fs::Dir::read_from(&*dir).map_err(|e| self.err(e, rel, OP))?;
        for entry in entries {
            let entry = entry.map_err(|e| self.err(e, rel, OP))?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." || (skip_reserved && name == RESERVED) {
                continue;
            }
            return Ok(Some(false));
        }
        Ok(Some(true))
    }

    /// The entries of the directory `rel`, sorted by name (bytewise), each from `lstat`
    /// (symlinks are listed as links, never followed). The top root's `.haul` is never
    /// listed. Nothing there is a not-found error; anything but a directory is
    /// [`StoreError::Refused`]. An entry removed while the listing is made is left out.
    pub fn list_dir(&self, rel: &RelPath) -> Result<Vec<DirItem>, StoreError> {
        const OP: &str = "list directory";
        let found = self
            .find(rel, OP)?
            .ok_or_else(|| not_found(self.display_path(rel), OP))?;
        let dir = self.open_found_dir(rel, found, OP)?;
        let names = sorted_names(&dir, self.is_top(rel)).map_err(|e| self.err(e, rel, OP))?;
        let mut items = Vec::with_capacity(names.len());
        for name in names {
            let st = match rustix::fs::statat(&*dir, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(self.err_below(e, rel, &name, OP)),
            };
            items.push(DirItem {
                name,
                kind: kind_of_stat(&st),
                size: u64::try_from(st.st_size).unwrap_or(0),
                mtime_sec: st.st_mtime,
                mtime_nsec: u32::try_from(st.st_mtime_nsec).unwrap_or(0),
            });
        }
        Ok(items)
    }

    /// Counts what is under `rel` (itself included): bytes of regular files, bytes allocated
    /// on disk (a hard-linked inode once), and entries by kind. Symlinks are counted, never
    /// followed; the top root's `.haul` is never entered. Nothing there is a not-found error.
    pub fn tree_size(&self, rel: &RelPath) -> Result<TreeSize, StoreError> {
        let mut size = TreeSize::default();
        let mut seen_inodes = HashSet::new();
        let walk = Walk {
            start: rel,
            op: "measure",
            open_files: false,
            skip_reserved: self.is_top(rel),
        };
        self.walk(&walk, &mut |_, st, _| {
            let kind = kind_of_stat(st);
            // Directories always have several links (their subdirectories' `..`), and
            // cannot be hard-linked: only other inodes with several names are remembered.
            let first = kind == FileKind::Dir
                || st.st_nlink <= 1
                || seen_inodes.insert((st.st_dev, st.st_ino));
            if first {
                let blocks = u64::try_from(st.st_blocks).unwrap_or(0);
                size.allocated_bytes = size
                    .allocated_bytes
                    .saturating_add(blocks.saturating_mul(512));
            }
            match kind {
                FileKind::File => {
                    size.files += 1;
                    let bytes = u64::try_from(st.st_size).unwrap_or(0);
                    size.bytes = size.bytes.saturating_add(bytes);
                }
                FileKind::Dir => size.dirs += 1,
                FileKind::Symlink => size.symlinks += 1,
                _ => size.others += 1,
            }
            Ok(())
        })?;
        Ok(size)
    }

    /// A confined depth-first walk of `rel`: `visit` gets each entry's path relative to `rel`
    /// (the root path for `rel` itself, first), its stat (from `lstat`, or `fstat` of what was
    /// opened) and, for a regular file, the file opened read-only with
    /// `O_NOFOLLOW | O_NOCTTY | O_NONBLOCK` from its parent's fd, for the caller to read (the
    /// engine hashes it; the store does not). A directory is visited before what it holds,
    /// names in bytewise order, so the order is deterministic. Symlinks are visited as links,
    /// never followed or entered; an entry removed during the walk is left out.
    ///
    /// An entry named `.haul` directly in `rel` is skipped: no [`RelPath`] relative to `rel`
    /// can name it (at the top root it is the receiver's own state). At most one directory fd
    /// per level below `rel` is open, plus the file being visited (closed when `visit`
    /// returns). An error from `visit` stops the walk and is returned. Nothing at `rel` is a
    /// not-found error.
    //
    // Named `visit_tree`: `walk_tree` is taken by a private method of `Root` in `entries`
    // (behind `remove_tree` and `count_tree`).
    pub fn visit_tree(&self, rel: &RelPath, visit: &mut TreeVisitor<'_>) -> Result<(), StoreError> {
        let walk = Walk {
            start: rel,
            op: "walk",
            open_files: true,
            skip_reserved: true,
        };
        self.walk(&walk, &mut |path, st, fd| {
            let below = RelPath::parse(path).map_err(|source| StoreError::Path {
                rel: String::from_utf8_lossy(path).into_owned(),
                source,
            })?;
            let file = fd.map(File::from);
            visit(&below, &PathStat::of(st), file.as_ref())
        })
    }

    /// Renames `from` to `to` within the root (`renameat2(RENAME_NOREPLACE)`): never
    /// replaces anything at `to` ([`StoreError::Refused`] when something is there), never
    /// creates `to`'s parent (it must be an existing directory), and refuses the root itself
    /// on either side and a directory moved into itself. A symlink at `from` is renamed as
    /// the link. Where the file system lacks `RENAME_NOREPLACE`, a file or symlink is moved by
    /// a hard link (which cannot replace either) and a directory is refused with a message
    /// saying so.
    pub fn rename_path(&self, from: &RelPath, to: &RelPath) -> Result<(), StoreError> {
        const OP: &str = "rename";
        let (Some((from_parent, from_name)), Some((to_parent, to_name))) =
            (from.parent_and_name(), to.parent_and_name())
        else {
            let root = if from.is_root() { from } else { to };
            return Err(self.refused(root, OP, ROOT_REASON));
        };
        let (f, t) = (from.as_bytes(), to.as_bytes());
        if t.len() > f.len() && t.starts_with(f) && t[f.len()] == b'/' {
            return Err(self.refused(
                from,
                OP,
                format!(
                    "{} lies inside it: a directory cannot be moved into itself",
                    self.display_path(to).display()
                ),
            ));
        }
        let src = self
            .open_dir_fresh(&from_parent)?
            .ok_or_else(|| not_found(self.display_path(from), OP))?;
        let dst = self.open_dir_fresh(&to_parent)?.ok_or_else(|| {
            self.refused(
                &to_parent,
                "rename into",
                "this directory does not exist: create it first (rename does not create directories)",
            )
        })?;
        let result = match rustix::fs::renameat_with(
            &*src,
            from_name,
            &*dst,
            to_name,
            RenameFlags::NOREPLACE,
        ) {
            Ok(()) => Ok(()),
            Err(Errno::EXIST | Errno::NOTEMPTY) => Err(self.exists(to)),
            Err(Errno::NOENT) => Err(not_found(self.display_path(from), OP)),
            // No RENAME_NOREPLACE here (an older kernel, or a file system such as NFS).
            Err(Errno::INVAL | Errno::NOSYS) => {
                self.rename_by_link(&src, from_name, &dst, to_name, from, to)
            }
            Err(e) => Err(self.err(e, from, OP)),
        };
        // Cached fds follow the directory, not the name: neither name may answer any more.
        self.forget_cached(from);
        self.forget_cached(to);
        result
    }

    /// Removes what is at `rel`: a file, a symlink (the link itself, never its target) or a
    /// whole directory tree, descending with `O_NOFOLLOW` from each parent's fd. Returns how
    /// many entries went (`rel` included; 0 when nothing was there). The root itself is
    /// [`StoreError::Refused`]; the top root's `.haul` can never be named or reached.
    pub fn remove_path(&self, rel: &RelPath) -> Result<u64, StoreError> {
        const OP: &str = "remove";
        let Some((parent_rel, name)) = rel.parent_and_name() else {
            return Err(self.refused(rel, OP, ROOT_REASON));
        };
        if self.is_top(&parent_rel) && name == RESERVED {
            // A RelPath never starts with `.haul`; refused here too, should that ever change.
            return Err(self.refused(rel, OP, "that is the receiver's own state directory"));
        }
        let parent = match self.open_dir_fresh(&parent_rel) {
            Ok(Some(fd)) => fd,
            Ok(None) | Err(StoreError::NotADirectory { .. }) => return Ok(0),
            Err(e) => return Err(e),
        };
        self.forget_cached(rel);
        let removed = remove_all(&parent, name)
            .map_err(|(e, below)| self.err_below(e, &parent_rel, &below, OP));
        self.forget_cached(rel);
        removed
    }

    /// The contents of the small regular file at `rel`. A symlink (never followed), a
    /// directory, a special file or a file longer than `max` bytes is
    /// [`StoreError::Refused`]; nothing there is a not-found error.
    pub fn read_control(&self, rel: &RelPath, max: usize) -> Result<Vec<u8>, StoreError> {
        const OP: &str = "read control file";
        let found = self
            .find(rel, OP)?
            .ok_or_else(|| not_found(self.display_path(rel), OP))?;
        let Spot::In(parent, name) = found.spot else {
            return Err(self.refused(rel, OP, ROOT_REASON));
        };
        self.check_control(rel, &found.st, max, OP)?;
        let fd = match rustix::fs::openat(&*parent, name, READ_FLAGS, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Err(not_found(self.display_path(rel), OP)),
            // Swapped for a symlink since the stat.
            Err(Errno::LOOP) => {
                let reason = format!(
                    "it is {}: control files are read only from regular files",
                    kind_name(FileKind::Symlink)
                );
                return Err(self.refused(rel, OP, reason));
            }
            Err(e) => return Err(self.err(e, rel, OP)),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| self.err(e, rel, OP))?;
        self.check_control(rel, &st, max, OP)?;
        let mut data = Vec::with_capacity(usize::try_from(st.st_size).unwrap_or(0).min(max));
        // One byte more than allowed tells a file that grew since the stat.
        let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
        File::from(fd)
            .take(limit)
            .read_to_end(&mut data)
            .map_err(|source| StoreError::Io {
                path: self.display_path(rel),
                op: OP,
                source,
            })?;
        if data.len() > max {
            return Err(self.too_large(rel, OP, None, max));
        }
        Ok(data)
    }

    /// Replaces the small file at `rel` with `bytes` atomically: written to a temporary file
    /// (`.haul-control-<pid>-<n>`) in the same directory, flushed, renamed over `rel`, and
    /// the directory flushed, so a reader sees the old contents or the new, never a mix, and
    /// a crash leaves one of them. The file gets mode 0644. The parent must be an existing
    /// directory; what is at `rel` must be a regular file or nothing (a symlink, which is not
    /// followed, a directory or a special file is [`StoreError::Refused`]; should one appear
    /// there meanwhile, the rename replaces the name and never writes through it).
    pub fn write_control(&self, rel: &RelPath, bytes: &[u8]) -> Result<(), StoreError> {
        const OP: &str = "write control file";
        let Some((parent_rel, name)) = rel.parent_and_name() else {
            return Err(self.refused(rel, OP, ROOT_REASON));
        };
        let parent = self.open_dir_fresh(&parent_rel)?.ok_or_else(|| {
            self.refused(
                &parent_rel,
                "write a control file into",
                "this directory does not exist: create it first",
            )
        })?;
        match rustix::fs::statat(&*parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if kind_of_stat(&st) == FileKind::File => {}
            Ok(st) => {
                return Err(self.refused(
                    rel,
                    OP,
                    format!(
                        "it is {}: only a regular file is replaced; move it out of the way first",
                        kind_name(kind_of_stat(&st))
                    ),
                ));
            }
            Err(Errno::NOENT) => {}
            Err(e) => return Err(self.err(e, rel, OP)),
        }
        let pid = rustix::process::getpid().as_raw_nonzero();
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let (temp, fd) = loop {
            let n = NEXT_TEMP.fetch_add(1, Ordering::Relaxed);
            let temp = format!(".haul-control-{pid}-{n}");
            match rustix::fs::openat(
                &*parent,
                temp.as_str(),
                flags,
                Mode::from_raw_mode(CONTROL_MODE),
            ) {
                Ok(fd) => break (temp, fd),
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(self.err_below(e, &parent_rel, temp.as_bytes(), OP)),
            }
        };
        let shown_temp = || {
            self.display_path(&parent_rel)
                .join(OsStr::from_bytes(temp.as_bytes()))
        };
        let written = (|| {
            // The umask may have taken bits away at creation.
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(CONTROL_MODE))
                .map_err(|e| self.err_at(e, shown_temp(), OP))?;
            let mut file = File::from(fd);
            file.write_all(bytes)
                .and_then(|()| file.sync_all())
                .map_err(
                    |source| match source.raw_os_error().map(Errno::from_raw_os_error) {
                        // A full disk is NoSpace, as everywhere.
                        Some(e) => self.err_at(e, shown_temp(), OP),
                        None => StoreError::Io {
                            path: shown_temp(),
                            op: OP,
                            source,
                        },
                    },
                )?;
            rustix::fs::renameat(&*parent, temp.as_str(), &*parent, name)
                .map_err(|e| self.err(e, rel, "write control file (rename into place)"))
        })();
        if let Err(e) = written {
            // Best effort: nothing half-written is left behind.
            let _ = rustix::fs::unlinkat(&*parent, temp.as_str(), AtFlags::empty());
            return Err(e);
        }
        rustix::fs::fsync(&*parent).map_err(|e| {
            self.err(
                e,
                &parent_rel,
                "flush (fsync) the directory of a control file",
            )
        })
    }

    /// The root's own fd.
    fn root_fd(&self) -> Result<Arc<OwnedFd>, StoreError> {
        // The root resolves to the fd opened by `Root::open`, without a walk or the cache.
        self.resolve_dir(&RelPath::root(), Missing::Absent)?
            .ok_or_else(|| not_found(self.path().to_path_buf(), "open the root directory"))
    }

    /// Whether `rel` is the top root itself, whose `.haul` is the receiver's state.
    fn is_top(&self, rel: &RelPath) -> bool {
        self.prefix.is_root() && rel.is_root()
    }

    /// Opens the directory `dir` by a fresh walk from the root's fd, one component at a time
    /// with `O_DIRECTORY | O_NOFOLLOW`, bypassing the directory cache. `Ok(None)` when a
    /// component is missing; a symlink is [`StoreError::SymlinkInPath`] and a component that
    /// is something else [`StoreError::NotADirectory`].
    fn open_dir_fresh(&self, dir: &RelPath) -> Result<Option<Arc<OwnedFd>>, StoreError> {
        let mut fd = self.root_fd()?;
        let bytes = dir.as_bytes();
        let mut end = 0;
        for name in dir.components() {
            end += name.len();
            match self.open_child(&fd, name, &bytes[..end])? {
                Some(child) => fd = Arc::new(child),
                None => return Ok(None),
            }
            end += 1; // the '/' after this name
        }
        Ok(Some(fd))
    }

    /// Opens the directory `name` in `parent` (`shown` is its path from the root) without
    /// following a symlink. `O_NOFOLLOW | O_DIRECTORY` on a symlink gives ELOOP or ENOTDIR
    /// depending on the kernel path taken, so what is there is asked instead; a directory
    /// there by then (swapped back meanwhile) is opened again.
    fn open_child(
        &self,
        parent: &OwnedFd,
        name: &[u8],
        shown: &[u8],
    ) -> Result<Option<OwnedFd>, StoreError> {
        const OP: &str = "open directory";
        let path = || self.path().join(OsStr::from_bytes(shown));
        let mut last = Errno::AGAIN;
        for _ in 0..RETRIES {
            match rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => return Ok(Some(fd)),
                Err(Errno::NOENT) => return Ok(None),
                Err(e @ (Errno::NOTDIR | Errno::LOOP)) => {
                    last = e;
                    match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(st) => match kind_of_stat(&st) {
                            FileKind::Symlink => {
                                return Err(StoreError::SymlinkInPath { path: path() });
                            }
                            FileKind::Dir => {}
                            _ => return Err(StoreError::NotADirectory { path: path() }),
                        },
                        Err(Errno::NOENT) => return Ok(None),
                        Err(e) => return Err(self.err_at(e, path(), OP)),
                    }
                }
                Err(e) => return Err(self.err_at(e, path(), OP)),
            }
        }
        Err(self.err_at(last, path(), OP))
    }

    /// Finds `rel` by a fresh walk: where it is and its `lstat`. `Ok(None)` when nothing is
    /// there, or a component on the way is missing or not a directory; a symlink on the way
    /// is [`StoreError::SymlinkInPath`].
    fn find<'r>(
        &self,
        rel: &'r RelPath,
        op: &'static str,
    ) -> Result<Option<Found<'r>>, StoreError> {
        let Some((parent_rel, name)) = rel.parent_and_name() else {
            let root = self.root_fd()?;
            let st = rustix::fs::fstat(&*root).map_err(|e| self.err(e, rel, op))?;
            return Ok(Some(Found {
                spot: Spot::Root(root),
                st,
            }));
        };
        let parent = match self.open_dir_fresh(&parent_rel) {
            Ok(Some(fd)) => fd,
            Ok(None) | Err(StoreError::NotADirectory { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        match rustix::fs::statat(&*parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(Found {
                spot: Spot::In(parent, name),
                st,
            })),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(self.err(e, rel, op)),
        }
    }

    /// Opens what `find` found at `rel` as a directory; anything else is refused, naming what
    /// it is (a symlink is never followed).
    fn open_found_dir(
        &self,
        rel: &RelPath,
        found: Found<'_>,
        op: &'static str,
    ) -> Result<Arc<OwnedFd>, StoreError> {
        let (parent, name) = match found.spot {
            Spot::Root(fd) => return Ok(fd),
            Spot::In(parent, name) => (parent, name),
        };
        let not_dir = |kind| {
            self.refused(
                rel,
                op,
                format!("it is {}, not a directory", kind_name(kind)),
            )
        };
        let mut st = found.st;
        for _ in 0..RETRIES {
            let kind = kind_of_stat(&st);
            if kind != FileKind::Dir {
                return Err(not_dir(kind));
            }
            match rustix::fs::openat(&*parent, name, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => return Ok(Arc::new(fd)),
                Err(Errno::NOENT) => return Err(not_found(self.display_path(rel), op)),
                // Swapped since the stat: look at what it is now.
                Err(Errno::NOTDIR | Errno::LOOP) => {}
                Err(e) => return Err(self.err(e, rel, op)),
            }
            st = match rustix::fs::statat(&*parent, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::NOENT) => return Err(not_found(self.display_path(rel), op)),
                Err(e) => return Err(self.err(e, rel, op)),
            };
        }
        Err(self.err(Errno::NOTDIR, rel, op))
    }

    /// The walk behind [`Root::tree_size`] and [`Root::visit_tree`]: depth first, names in
    /// bytewise order, one directory fd per level.
    fn walk(&self, walk: &Walk<'_>, visit: &mut Visit<'_>) -> Result<(), StoreError> {
        let found = self
            .find(walk.start, walk.op)?
            .ok_or_else(|| not_found(self.display_path(walk.start), walk.op))?;
        let mut stack = Vec::new();
        match found.spot {
            Spot::Root(fd) => {
                visit(b"", &found.st, None)?;
                let names = sorted_names(&fd, walk.skip_reserved)
                    .map_err(|e| self.err(e, walk.start, walk.op))?;
                stack.push(Level {
                    dir: fd,
                    names: names.into_iter(),
                    path: Vec::new(),
                });
            }
            Spot::In(parent, name) => {
                self.walk_entry(walk, &parent, name, Vec::new(), &mut stack, visit)?;
            }
        }
        while let Some(level) = stack.last_mut() {
            let Some(name) = level.names.next() else {
                stack.pop();
                continue;
            };
            let (dir, path) = (Arc::clone(&level.dir), joined(&level.path, &name));
            self.walk_entry(walk, &dir, &name, path, &mut stack, visit)?;
        }
        Ok(())
    }

    /// Visits `name` in `parent` (at `path` from the walk's start) and, for a directory,
    /// pushes it onto `stack` to be walked. An entry swapped for another kind between its
    /// `lstat` and its opening is looked at again; one that is gone is left out.
    fn walk_entry(
        &self,
        walk: &Walk<'_>,
        parent: &OwnedFd,
        name: &[u8],
        path: Vec<u8>,
        stack: &mut Vec<Level>,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        let fail = |e: Errno, path: &[u8]| self.err_below(e, walk.start, path, walk.op);
        for _ in 0..RETRIES {
            let st = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::NOENT) => return Ok(()),
                Err(e) => return Err(fail(e, &path)),
            };
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => {
                    match rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty()) {
                        Ok(fd) => {
                            let st = rustix::fs::fstat(&fd).map_err(|e| fail(e, &path))?;
                            visit(&path, &st, None)?;
                            let skip = walk.skip_reserved && path.is_empty();
                            let names = sorted_names(&fd, skip).map_err(|e| fail(e, &path))?;
                            stack.push(Level {
                                dir: Arc::new(fd),
                                names: names.into_iter(),
                                path,
                            });
                            return Ok(());
                        }
                        Err(Errno::NOENT) => return Ok(()),
                        // Swapped for a symlink or a file since the stat: look again.
                        Err(Errno::NOTDIR | Errno::LOOP) => {}
                        Err(e) => return Err(fail(e, &path)),
                    }
                }
                FileType::RegularFile if walk.open_files => {
                    match rustix::fs::openat(parent, name, READ_FLAGS, Mode::empty()) {
                        Ok(fd) => {
                            let st = rustix::fs::fstat(&fd).map_err(|e| fail(e, &path))?;
                            if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile {
                                return visit(&path, &st, Some(fd));
                            }
                            // Swapped for something else since the stat: look again.
                        }
                        Err(Errno::NOENT) => return Ok(()),
                        // Swapped for a symlink since the stat: look again.
                        Err(Errno::LOOP) => {}
                        Err(e) => return Err(fail(e, &path)),
                    }
                }
                _ => return visit(&path, &st, None),
            }
        }
        Err(StoreError::Io {
            path: self.shown_below(walk.start, &path),
            op: walk.op,
            source: io::Error::other("it kept changing kind while it was being walked"),
        })
    }

    /// Moves a file or symlink without replacing anything where `RENAME_NOREPLACE` is not
    /// supported: a hard link under the new name (which fails if the name is taken), then the
    /// old name removed, but only while it still is the same inode. Directories cannot be
    /// linked: refused.
    fn rename_by_link(
        &self,
        src: &OwnedFd,
        from_name: &[u8],
        dst: &OwnedFd,
        to_name: &[u8],
        from: &RelPath,
        to: &RelPath,
    ) -> Result<(), StoreError> {
        const OP: &str = "rename";
        let st = match rustix::fs::statat(src, from_name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Err(not_found(self.display_path(from), OP)),
            Err(e) => return Err(self.err(e, from, OP)),
        };
        if kind_of_stat(&st) == FileKind::Dir {
            return Err(self.refused(
                from,
                OP,
                "the file system holding it cannot rename a directory without the risk of replacing what is at the new name (it lacks RENAME_NOREPLACE): rename it on the receiver's machine",
            ));
        }
        // linkat without AT_SYMLINK_FOLLOW links a symlink itself, never its target.
        match rustix::fs::linkat(src, from_name, dst, to_name, AtFlags::empty()) {
            Ok(()) => {}
            Err(Errno::EXIST) => return Err(self.exists(to)),
            Err(Errno::NOENT) => return Err(not_found(self.display_path(from), OP)),
            Err(e) => return Err(self.err(e, to, "rename (link under the new name)")),
        }
        let same = |a: &Stat, b: &Stat| a.st_dev == b.st_dev && a.st_ino == b.st_ino;
        let linked = rustix::fs::statat(dst, to_name, AtFlags::SYMLINK_NOFOLLOW);
        let still = rustix::fs::statat(src, from_name, AtFlags::SYMLINK_NOFOLLOW);
        if let (Ok(linked), Ok(still)) = (&linked, &still)
            && same(linked, still)
        {
            match rustix::fs::unlinkat(src, from_name, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => {
                    let _ = rustix::fs::unlinkat(dst, to_name, AtFlags::empty());
                    return Err(self.err(e, from, "rename (remove the old name)"));
                }
            }
        }
        Ok(())
    }

    /// Refuses a control file that is not a regular file of at most `max` bytes.
    fn check_control(
        &self,
        rel: &RelPath,
        st: &Stat,
        max: usize,
        op: &'static str,
    ) -> Result<(), StoreError> {
        let kind = kind_of_stat(st);
        if kind != FileKind::File {
            return Err(self.refused(
                rel,
                op,
                format!(
                    "it is {}: control files are read only from regular files",
                    kind_name(kind)
                ),
            ));
        }
        let size = u64::try_from(st.st_size).unwrap_or(0);
        if size > u64::try_from(max).unwrap_or(u64::MAX) {
            return Err(self.too_large(rel, op, Some(size), max));
        }
        Ok(())
    }

    fn too_large(
        &self,
        rel: &RelPath,
        op: &'static str,
        size: Option<u64>,
        max: usize,
    ) -> StoreError {
        let what = match size {
            Some(size) => format!("it is {size} bytes"),
            None => format!("it grew past {max} bytes while being read"),
        };
        self.refused(
            rel,
            op,
            format!("{what}, and a control file may have at most {max} bytes"),
        )
    }

    fn exists(&self, to: &RelPath) -> StoreError {
        self.refused(
            to,
            "rename onto",
            "something is already there: remove it first or choose another name",
        )
    }

    fn refused(&self, rel: &RelPath, op: &'static str, reason: impl Into<String>) -> StoreError {
        StoreError::Refused {
            path: self.display_path(rel),
            op,
            reason: reason.into(),
        }
    }

    /// `root/rel/below`, for messages (`root/rel` when `below` is empty).
    fn shown_below(&self, rel: &RelPath, below: &[u8]) -> PathBuf {
        let base = self.display_path(rel);
        if below.is_empty() {
            return base;
        }
        base.join(OsStr::from_bytes(below))
    }

    fn err_at(&self, errno: Errno, path: PathBuf, op: &'static str) -> StoreError {
        StoreError::from_errno(errno, path, &self.staging.root_path, op)
    }

    fn err_below(&self, errno: Errno, rel: &RelPath, below: &[u8], op: &'static str) -> StoreError {
        self.err_at(errno, self.shown_below(rel, below), op)
    }

    /// Drops cached directory fds at and below `rel`: after a rename or removal the name no
    /// longer means the directory they follow.
    fn forget_cached(&self, rel: &RelPath) {
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .forget_under(rel.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;
    use std::os::unix::fs::symlink;

    use crate::{RelPath, Root};

    fn dir_fd(path: &std::path::Path) -> OwnedFd {
        OwnedFd::from(std::fs::File::open(path).unwrap())
    }

    /// The fallback for file systems without RENAME_NOREPLACE, exercised directly (the test
    /// machine's file system has the flag, so `rename_path` never gets there).
    #[test]
    fn rename_by_link_moves_files_and_links_never_replaces_and_refuses_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::open(tmp.path()).unwrap();
        let rel = |s: &str| RelPath::parse(s.as_bytes()).unwrap();
        std::fs::write(tmp.path().join("a"), b"A").unwrap();
        std::fs::write(tmp.path().join("taken"), b"T").unwrap();
        symlink("/nonexistent-target", tmp.path().join("link")).unwrap();
        std::fs::create_dir(tmp.path().join("d")).unwrap();
        let fd = dir_fd(tmp.path());

        root.rename_by_link(&fd, b"a", &fd, b"b", &rel("a"), &rel("b"))
            .unwrap();
        assert!(!tmp.path().join("a").exists());
        assert_eq!(std::fs::read(tmp.path().join("b")).unwrap(), b"A");

        let err = root
            .rename_by_link(&fd, b"b", &fd, b"taken", &rel("b"), &rel("taken"))
            .unwrap_err();
        assert!(matches!(err, crate::StoreError::Refused { .. }), "{err}");
        assert_eq!(std::fs::read(tmp.path().join("taken")).unwrap(), b"T");
        assert_eq!(std::fs::read(tmp.path().join("b")).unwrap(), b"A");

        root.rename_by_link(&fd, b"link", &fd, b"link2", &rel("link"), &rel("link2"))
            .unwrap();
        assert_eq!(
            std::fs::read_link(tmp.path().join("link2")).unwrap(),
            std::path::Path::new("/nonexistent-target")
        );
        assert!(std::fs::symlink_metadata(tmp.path().join("link")).is_err());

        let err = root
            .rename_by_link(&fd, b"d", &fd, b"e", &rel("d"), &rel("e"))
            .unwrap_err();
        assert!(err.to_string().contains("RENAME_NOREPLACE"), "{err}");
        assert!(tmp.path().join("d").is_dir());
    }
}
