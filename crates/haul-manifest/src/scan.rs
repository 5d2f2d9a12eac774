//! Streaming a source tree into entries, depth first, in a stable order.
//!
//! The scanner keeps one sorted name list per open directory level and nothing else, so its
//! memory is bounded by depth times directory width, never by the size of the tree. Symlinks
//! are never followed: every path is `lstat`ed, the root included. Children are `statat`ed
//! relative to their directory's descriptor (opened `O_NOFOLLOW`), so a million files do not
//! each cost a walk of their whole path.
//!
//! [`scan_with`] adds what a session asks for ([`ScanOptions`]): extended attributes, a
//! [`Filter`] (an excluded directory is never opened), and staying on the root's file system.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use bytes::Bytes;
use haul_proto::{EntryKind, MAX_XATTR_TOTAL, MAX_XATTR_VALUE, MAX_XATTRS, Meta, Xattr};
use rustix::io::Errno;

use crate::filter::Filter;

/// One entry of a source tree.
#[derive(Clone, Debug)]
pub struct ScanEntry {
    /// File, directory, symlink, or a special file (FIFO, socket, character or block device).
    /// Never [`EntryKind::HardLink`]: the scan reports every name as what it is, and `nlink`
    /// with `dev` and `ino` lets the caller find the other names of a file.
    pub kind: EntryKind,
    /// `/`-separated path relative to the scan root, as raw bytes; empty for the root itself.
    pub rel: Vec<u8>,
    /// The path to open on the source side (the root as given, joined with `rel`), for
    /// messages; [`ScanEntry::open`] opens it relative to `dir`.
    pub source: PathBuf,
    /// The directory the entry was found in, as the scan opened it (`O_NOFOLLOW`): opening
    /// the entry relative to it costs one name lookup instead of a walk of the whole path,
    /// and a directory of the path swapped for a symlink since the scan is not followed.
    /// `None` for the root, and while the entries already handed out hold
    /// [`MAX_SHARED_DIRS`] directories open (a tree of one file per directory must not run
    /// the process out of descriptors): such an entry is opened by its path.
    pub dir: Option<Arc<SourceDir>>,
    /// Size in bytes for files; 0 for everything else.
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`) and mtime with nanoseconds, from `lstat`.
    pub meta: Meta,
    /// Owner (`st_uid`).
    pub uid: u32,
    /// Group (`st_gid`).
    pub gid: u32,
    /// The device number of a character or block device (`st_rdev`); 0 for everything else.
    pub rdev: u64,
    /// Hard link count (`st_nlink`).
    pub nlink: u64,
    /// Extended attributes, sorted by name, when [`ScanOptions::xattrs`] asked for them (else
    /// empty): every namespace the kernel lists to this process (`user.`, `security.`,
    /// `trusted.` as root, `system.posix_acl_access` and `_default`), within
    /// [`MAX_XATTRS`], [`MAX_XATTR_VALUE`] and [`MAX_XATTR_TOTAL`].
    pub xattrs: Vec<Xattr>,
    /// The symlink's target as raw bytes (symlinks only; empty otherwise).
    pub link_target: Vec<u8>,
    /// Device of the entry (`st_dev`).
    pub dev: u64,
    /// Inode of the entry (`st_ino`); with `dev`, identifies hard links.
    pub ino: u64,
    /// This version of a regular file: a hash of its change time (nanoseconds), inode and
    /// device, which any rewrite changes even when size and mtime are put back. 0 for other
    /// kinds.
    pub stamp: u64,
}

/// A problem with one path of the tree. Apart from a bad root, the scan goes on after it.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// A system call on `path` failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// The path the call was made on.
        path: PathBuf,
        /// What was being done, e.g. "read directory", "stat", "read link".
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The path is a kind of file haul does not know (the kernel reported a file type that
    /// is none of the kinds in [`EntryKind`]); it is skipped.
    #[error("skipping {}: {what}", path.display())]
    Unsupported {
        /// The skipped path.
        path: PathBuf,
        /// Why, e.g. "files of this type are not copied".
        what: &'static str,
    },
    /// The entry's extended attributes exceed what one entry may carry ([`MAX_XATTRS`],
    /// [`MAX_XATTR_VALUE`], [`MAX_XATTR_TOTAL`]); the entry is skipped.
    #[error("skipping {}: its extended attributes are over haul's limit: {what}", path.display())]
    TooManyXattrs {
        /// The skipped path.
        path: PathBuf,
        /// Which bound, e.g. "130 attributes, more than 128".
        what: String,
    },
}

impl ScanError {
    /// The path the error is about.
    pub fn path(&self) -> &Path {
        match self {
            ScanError::Io { path, .. }
            | ScanError::Unsupported { path, .. }
            | ScanError::TooManyXattrs { path, .. } => path,
        }
    }
}

/// What a scan reads and where it goes, besides the tree itself. The default reads no
/// extended attributes, filters nothing and crosses into other file systems.
#[derive(Clone, Debug, Default)]
pub struct ScanOptions {
    /// Read every entry's extended attributes into [`ScanEntry::xattrs`]. An entry whose
    /// attributes are over the limits is yielded as [`ScanError::TooManyXattrs`] instead.
    pub xattrs: bool,
    /// Entries the filter excludes are not yielded, and an excluded directory is not opened.
    /// The root is never filtered.
    pub filter: Option<Arc<Filter>>,
    /// A directory on another file system than the root (a mount point) is yielded, so it
    /// exists on the target, but not descended into.
    pub one_file_system: bool,
}

/// Streams the tree at `root`, depth first: the root first, then each directory's entries
/// sorted by name bytes, a directory always before its contents. The same as [`scan_with`]
/// with the default [`ScanOptions`] (no extended attributes, no filter).
///
/// A root that is a file, a symlink or a special file yields that one entry with an empty
/// `rel`. A missing or unreadable root is yielded as the first item and ends the scan; any
/// other error (an unreadable directory, a file that vanished) is yielded and the scan goes on.
pub fn scan(root: &Path) -> Scanner {
    scan_with(root, &ScanOptions::default())
}

/// [`scan`], reading what `opts` asks for: extended attributes, a filter, one file system.
pub fn scan_with(root: &Path, opts: &ScanOptions) -> Scanner {
    Scanner {
        root: Some(root.to_path_buf()),
        open_next: None,
        stack: Vec::new(),
        threads: std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
        live: Arc::default(),
        walk: Walk {
            xattrs: opts.xattrs,
            // Reading attributes through the directory's descriptor needs /proc; without it
            // they are read by the whole path.
            proc_fd: opts.xattrs && Path::new("/proc/self/fd").is_dir(),
            filter: opts.filter.clone(),
        },
        one_file_system: opts.one_file_system,
        root_dev: None,
    }
}

/// What each entry's description needs from the options, shared by the stat threads.
#[derive(Debug)]
struct Walk {
    xattrs: bool,
    proc_fd: bool,
    filter: Option<Arc<Filter>>,
}

/// The iterator returned by [`scan`] and [`scan_with`].
#[derive(Debug)]
pub struct Scanner {
    /// The root, until the first call to `next`.
    root: Option<PathBuf>,
    /// A directory just yielded, whose listing is read on the next call so that it comes
    /// after the directory itself.
    open_next: Option<(PathBuf, Vec<u8>)>,
    /// One pending listing per directory level being walked, innermost last.
    stack: Vec<Listing>,
    /// Threads to `statat` a directory's names on.
    threads: usize,
    /// Source directories open now, by listings and the entries they handed out.
    live: Arc<AtomicUsize>,
    walk: Walk,
    one_file_system: bool,
    /// The root's `st_dev`, once it was stat'ed.
    root_dev: Option<u64>,
}

/// Most directories the entries of one scan keep open at once (see [`ScanEntry::dir`]), far
/// below the 1024 descriptors a process gets by default.
pub const MAX_SHARED_DIRS: usize = 128;

/// A source directory held open by the scan and the entries found in it.
#[derive(Debug)]
pub struct SourceDir {
    fd: OwnedFd,
    /// The scan's count of directories open, given back on drop.
    live: Arc<AtomicUsize>,
}

impl AsFd for SourceDir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for SourceDir {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The names of one directory not yet yielded.
#[derive(Debug)]
struct Listing {
    path: PathBuf,
    /// The directory itself, opened once: its children are `statat`ed relative to it (and
    /// later opened relative to it, through [`ScanEntry::dir`], if `share`).
    dir: Arc<SourceDir>,
    /// Hand `dir` to the entries: fewer than [`MAX_SHARED_DIRS`] were open when this
    /// listing was made.
    share: bool,
    rel: Vec<u8>,
    /// Sorted in reverse so the next name is popped from the end.
    names: Names,
    /// The next names, already `statat`ed (in order): at most [`STAT_WINDOW`] of them.
    ready: std::collections::VecDeque<Result<ScanEntry, ScanError>>,
}

/// Names `statat`ed ahead of the iterator, per directory: enough to split over the cores,
/// few enough that a directory of a million names holds only its names plus this many
/// entries.
const STAT_WINDOW: usize = 4096;
/// A window at least this long is `statat`ed on several threads; shorter ones on this one.
const PARALLEL_FROM: usize = 128;

impl Listing {
    fn new(
        path: PathBuf,
        fd: OwnedFd,
        rel: Vec<u8>,
        names: Names,
        live: &Arc<AtomicUsize>,
    ) -> Listing {
        let share = live.fetch_add(1, Ordering::Relaxed) < MAX_SHARED_DIRS;
        Listing {
            path,
            dir: Arc::new(SourceDir {
                fd,
                live: Arc::clone(live),
            }),
            share,
            rel,
            names,
            ready: std::collections::VecDeque::new(),
        }
    }

    /// `statat`s the next window of names into `ready`, on up to `threads` threads. A
    /// million-file post office spends most of a no-change re-run in these calls; in one
    /// thread they kept one core busy while the receiver waited.
    /// Extended attributes are read here too, so they are read in parallel as well; the
    /// filter is applied here, before the `statat` where the name's `d_type` tells whether it
    /// is a directory.
    fn refill(&mut self, threads: usize, walk: &Walk) {
        let take = self.names.spans.len().min(STAT_WINDOW);
        let from = self.names.spans.len() - take;
        let window: Vec<(usize, usize)> = self.names.spans.drain(from..).rev().collect();
        let names = &self.names;
        let one = |&span: &(usize, usize)| {
            let name = OsStr::from_bytes(names.name(span));
            // The source path in one allocation too (`join` reallocated once more per file).
            let mut source = PathBuf::with_capacity(self.path.as_os_str().len() + 1 + name.len());
            source.push(&self.path);
            source.push(name);
            // One allocation of the final length (a clone and two pushes reallocated twice per
            // file of a million-file re-run).
            let mut rel = Vec::with_capacity(self.rel.len() + 1 + name.len());
            rel.extend_from_slice(&self.rel);
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(name.as_bytes());
            let shared = self.share.then_some(&self.dir);
            let at = At {
                dir: self.dir.as_fd(),
                shared,
                name,
                d_type: names.file_type(span),
            };
            entry_at(at, source, rel, walk, false)
        };
        if threads < 2 || window.len() < PARALLEL_FROM {
            self.ready.extend(window.iter().filter_map(one));
            return;
        }
        let per = window.len().div_ceil(threads);
        let parts: Vec<Vec<_>> = std::thread::scope(|scope| {
            let handles: Vec<_> = window
                .chunks(per)
                .skip(1)
                .map(|part| scope.spawn(move || part.iter().filter_map(one).collect::<Vec<_>>()))
                .collect();
            let mut parts = vec![
                window[..per.min(window.len())]
                    .iter()
                    .filter_map(one)
                    .collect(),
            ];
            for handle in handles {
                // A stat thread cannot panic short of a bug; if it did, say so loudly.
                parts.push(handle.join().expect("a scan thread panicked"));
            }
            parts
        });
        self.ready.extend(parts.into_iter().flatten());
    }
}

impl Iterator for Scanner {
    type Item = Result<ScanEntry, ScanError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(root) = self.root.take() {
            return self.start(root);
        }
        if let Some((path, rel)) = self.open_next.take() {
            match read_listing(rustix::fs::CWD, &path, &path, OFlags::NOFOLLOW) {
                Ok((dir, names)) => {
                    let listing = Listing::new(path, dir, rel, names, &self.live);
                    self.stack.push(listing);
                }
                Err(err) => return Some(Err(err)),
            }
        }
        loop {
            let threads = self.threads;
            let listing = self.stack.last_mut()?;
            if listing.ready.is_empty() {
                if listing.names.spans.is_empty() {
                    self.stack.pop();
                    continue;
                }
                listing.refill(threads, &self.walk);
            }
            let Some(item) = listing.ready.pop_front() else {
                continue;
            };
            if let Ok(
                dir @ ScanEntry {
                    kind: EntryKind::Dir,
                    ..
                },
            ) = &item
                && !(self.one_file_system && Some(dir.dev) != self.root_dev)
            {
                self.open_next = Some((dir.source.clone(), dir.rel.clone()));
            }
            return Some(item);
        }
    }
}

impl Scanner {
    /// The first item. A root directory's listing is read before the root is yielded, so that
    /// an unreadable root ends the scan with its error instead of an empty tree.
    fn start(&mut self, root: PathBuf) -> Option<Result<ScanEntry, ScanError>> {
        // `lstat` of the root as named (a trailing slash follows a symlink, as ever).
        let at = At {
            dir: rustix::fs::CWD,
            shared: None,
            name: root.as_os_str(),
            d_type: FileType::Unknown,
        };
        // The root is never filtered, so there is always an item.
        let item = entry_at(at, root.clone(), Vec::new(), &self.walk, true)?;
        if let Ok(entry) = &item {
            self.root_dev = Some(entry.dev);
        }
        if let Ok(
            dir @ ScanEntry {
                kind: EntryKind::Dir,
                ..
            },
        ) = &item
        {
            // The root as the user named it: a trailing slash on a symlink follows it, as
            // `lstat` of that name did.
            match read_listing(rustix::fs::CWD, &dir.source, &dir.source, OFlags::empty()) {
                Ok((fd, names)) => {
                    let path = dir.source.clone();
                    let listing = Listing::new(path, fd, Vec::new(), names, &self.live);
                    self.stack.push(listing);
                }
                Err(err) => return Some(Err(err)),
            }
        }
        Some(item)
    }
}

/// Opens a directory, `path` relative to `at` (with `extra` flags: `O_NOFOLLOW` for one found
/// by `lstat`, so a directory swapped for a symlink since is refused), and lists all its
/// names with their `d_type`, reverse-sorted by bytes (popped from the end in order).
/// `shown` is the path errors name.
pub(crate) fn read_listing(
    at: BorrowedFd<'_>,
    path: &Path,
    shown: &Path,
    extra: OFlags,
) -> Result<(OwnedFd, Names), ScanError> {
    let io_err = |source: Errno| ScanError::Io {
        path: shown.to_path_buf(),
        op: "read directory",
        source: source.into(),
    };
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | extra;
    let fd = rustix::fs::openat(at, path, flags, Mode::empty()).map_err(io_err)?;
    let reader = fd
        .try_clone()
        .map_err(|e| ScanError::Io {
            path: shown.to_path_buf(),
            op: "read directory",
            source: e,
        })
        .and_then(|dup| rustix::fs::Dir::new(dup).map_err(io_err))?;
    let mut names = Names::default();
    for dirent in reader {
        // A failure partway through drops the whole listing: a directory reported as
        // unreadable never looks complete but short.
        let dirent = dirent.map_err(io_err)?;
        let name = dirent.file_name().to_bytes();
        if name != b"." && name != b".." {
            // The type byte first, then the name: the span covers the name alone.
            names.bytes.push(type_code(dirent.file_type()));
            let start = names.bytes.len();
            names.bytes.extend_from_slice(name);
            names.spans.push((start, names.bytes.len()));
        }
    }
    let bytes = &names.bytes;
    names
        .spans
        .sort_unstable_by(|a, b| bytes[b.0..b.1].cmp(&bytes[a.0..a.1]));
    Ok((fd, names))
}

/// A directory's names, all in one buffer: a post office's directories hold thousands of names
/// each, and a re-run of a big tree spends a large share of its scan in the allocator; one
/// allocation per name (made here, freed once it was `statat`ed) was part of that.
#[derive(Debug, Default)]
pub(crate) struct Names {
    /// Each name preceded by one byte of its `d_type` (see [`type_code`]).
    bytes: Vec<u8>,
    /// Each name's range in `bytes`.
    pub(crate) spans: Vec<(usize, usize)>,
}

impl Names {
    /// The name at `span`.
    pub(crate) fn name(&self, span: (usize, usize)) -> &[u8] {
        &self.bytes[span.0..span.1]
    }

    /// The type readdir reported for the name at `span` (`Unknown` when the file system does
    /// not say).
    pub(crate) fn file_type(&self, span: (usize, usize)) -> FileType {
        FileType::from_raw_mode(u32::from(self.bytes[span.0 - 1]) << 12)
    }
}

/// A file type in one byte: its `S_IFMT` bits shifted down (they are the top 4 of 16).
fn type_code(file_type: FileType) -> u8 {
    ((file_type.as_raw_mode() >> 12) & 0xf) as u8
}

/// Where an entry is: its name in an open directory.
struct At<'a> {
    dir: BorrowedFd<'a>,
    /// The handle of `dir` the entry keeps (see [`ScanEntry::dir`]), if any.
    shared: Option<&'a Arc<SourceDir>>,
    name: &'a OsStr,
    /// What readdir said it is, for the filter (`Unknown` for the root).
    d_type: FileType,
}

/// `statat`s `at.name` in the open directory `at.dir` (never following a symlink) and
/// describes it; `source` is its full path, for messages. `None` when `walk`'s filter
/// excludes it (never for the `root`, whose name is its whole path).
fn entry_at(
    at: At<'_>,
    source: PathBuf,
    rel: Vec<u8>,
    walk: &Walk,
    root: bool,
) -> Option<Result<ScanEntry, ScanError>> {
    let filter = walk.filter.as_deref().filter(|_| !root);
    // Decided before the `statat` when readdir said what the name is: an excluded name costs
    // no system call at all.
    let hint = (at.d_type != FileType::Unknown).then_some(at.d_type == FileType::Directory);
    if let (Some(filter), Some(is_dir)) = (filter, hint)
        && filter.excludes(&rel, is_dir)
    {
        return None;
    }
    let st = match rustix::fs::statat(at.dir, at.name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(errno) => {
            return Some(Err(ScanError::Io {
                path: source,
                op: "stat",
                source: errno.into(),
            }));
        }
    };
    let kind = match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => EntryKind::File,
        FileType::Directory => EntryKind::Dir,
        FileType::Symlink => EntryKind::Symlink,
        FileType::Fifo => EntryKind::Fifo,
        FileType::Socket => EntryKind::Socket,
        FileType::CharacterDevice => EntryKind::CharDev,
        FileType::BlockDevice => EntryKind::BlockDev,
        FileType::Unknown => {
            return Some(Err(ScanError::Unsupported {
                path: source,
                what: "files of this type are not copied",
            }));
        }
    };
    let is_dir = kind == EntryKind::Dir;
    // Unknown to readdir, or changed since: decide on what `statat` found.
    if let Some(filter) = filter
        && hint != Some(is_dir)
        && filter.excludes(&rel, is_dir)
    {
        return None;
    }
    let link_target = if kind == EntryKind::Symlink {
        match rustix::fs::readlinkat(at.dir, at.name, Vec::new()) {
            Ok(target) => target.into_bytes(),
            Err(errno) => {
                return Some(Err(ScanError::Io {
                    path: source,
                    op: "read link",
                    source: errno.into(),
                }));
            }
        }
    } else {
        Vec::new()
    };
    let xattrs = if walk.xattrs {
        let read = if walk.proc_fd && !root {
            // Through the directory the scan holds open: one name lookup, not a walk of the
            // whole path.
            let mut path = format!("/proc/self/fd/{}/", at.dir.as_raw_fd()).into_bytes();
            path.extend_from_slice(at.name.as_bytes());
            read_xattrs(Path::new(OsStr::from_bytes(&path)), &source)
        } else {
            read_xattrs(&source, &source)
        };
        match read {
            Ok(xattrs) => xattrs,
            Err(err) => return Some(Err(err)),
        }
    } else {
        Vec::new()
    };
    let special = matches!(kind, EntryKind::CharDev | EntryKind::BlockDev);
    Some(Ok(ScanEntry {
        kind,
        rel,
        size: if kind == EntryKind::File {
            u64::try_from(st.st_size).unwrap_or(0)
        } else {
            0
        },
        meta: Meta {
            mode: st.st_mode & 0o7777,
            mtime_sec: st.st_mtime,
            // The kernel keeps this in 0..1e9; clamp rather than trust a strange file system.
            mtime_nsec: st.st_mtime_nsec.clamp(0, 999_999_999) as u32,
        },
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: if special { st.st_rdev } else { 0 },
        nlink: st.st_nlink,
        xattrs,
        link_target,
        dev: st.st_dev,
        ino: st.st_ino,
        stamp: if kind == EntryKind::File {
            version_stamp(&st)
        } else {
            0
        },
        source,
        dir: at.shared.cloned(),
    }))
}

/// See [`ScanEntry::stamp`]: never 0 for a file, so 0 can mean "unknown".
fn version_stamp(st: &rustix::fs::Stat) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&st.st_ctime.to_le_bytes());
    h.update(&(st.st_ctime_nsec as i64).to_le_bytes());
    h.update(&st.st_ino.to_le_bytes());
    h.update(&st.st_dev.to_le_bytes());
    let bytes = h.finalize();
    u64::from_le_bytes(bytes.as_bytes()[..8].try_into().unwrap_or([1; 8])).max(1)
}

/// Errors of the `*xattr` calls that mean "this file system keeps no extended attributes".
fn no_xattr_support(errno: Errno) -> bool {
    errno == Errno::NOTSUP || errno == Errno::OPNOTSUPP
}

/// The extended attributes of `path` (never following a final symlink), sorted by name;
/// `source` is the path errors name. One `llistxattr` when there are none.
fn read_xattrs(path: &Path, source: &Path) -> Result<Vec<Xattr>, ScanError> {
    let io_err = |op: &'static str, errno: Errno| ScanError::Io {
        path: source.to_path_buf(),
        op,
        source: errno.into(),
    };
    let over = |what: String| ScanError::TooManyXattrs {
        path: source.to_path_buf(),
        what,
    };
    // Most lists fit here: no allocation for the common case of few short names.
    let mut small = [0u8; 1024];
    let mut large = Vec::new();
    let list: &[u8] = match rustix::fs::llistxattr(path, &mut small[..]) {
        Ok(0) => return Ok(Vec::new()),
        Ok(len) => &small[..len],
        Err(errno) if no_xattr_support(errno) => return Ok(Vec::new()),
        Err(Errno::RANGE) => {
            // Longer than the buffer: ask for the length, and again if it grew meanwhile.
            let mut tries = 0;
            loop {
                let len = rustix::fs::llistxattr_query(path)
                    .map_err(|e| io_err("list extended attributes of", e))?;
                large.resize(len, 0);
                match rustix::fs::llistxattr(path, &mut large[..]) {
                    Ok(len) => {
                        large.truncate(len);
                        break &large[..];
                    }
                    Err(Errno::RANGE) if tries < 8 => tries += 1,
                    Err(errno) => return Err(io_err("list extended attributes of", errno)),
                }
            }
        }
        Err(errno) => return Err(io_err("list extended attributes of", errno)),
    };
    let names: Vec<&[u8]> = list
        .split_inclusive(|&b| b == 0)
        .filter(|name| name.len() > 1)
        .collect();
    if names.len() > MAX_XATTRS as usize {
        return Err(over(format!(
            "{} attributes, more than {MAX_XATTRS}",
            names.len()
        )));
    }
    let mut xattrs = Vec::with_capacity(names.len());
    let mut total = 0usize;
    let mut buf = [0u8; 4096];
    for with_nul in names {
        let Ok(cname) = std::ffi::CStr::from_bytes_with_nul(with_nul) else {
            continue;
        };
        let name = &with_nul[..with_nul.len() - 1];
        let value = match rustix::fs::lgetxattr(path, cname, &mut buf[..]) {
            Ok(len) => Bytes::copy_from_slice(&buf[..len]),
            // Removed since it was listed.
            Err(Errno::NODATA) => continue,
            Err(Errno::RANGE) => read_large_value(path, cname)
                .map_err(|e| io_err("read extended attributes of", e))?,
            Err(errno) => return Err(io_err("read extended attributes of", errno)),
        };
        if value.len() > MAX_XATTR_VALUE as usize {
            return Err(over(format!(
                "{} is {} bytes, more than {} KiB",
                String::from_utf8_lossy(name),
                value.len(),
                MAX_XATTR_VALUE >> 10
            )));
        }
        total += name.len() + value.len();
        if total > MAX_XATTR_TOTAL {
            return Err(over(format!(
                "names and values of more than {} KiB in total",
                MAX_XATTR_TOTAL >> 10
            )));
        }
        xattrs.push(Xattr {
            name: Bytes::copy_from_slice(name),
            value,
        });
    }
    xattrs.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    Ok(xattrs)
}

/// A value too long for the stack buffer: its length first, then the value (again if it
/// grew meanwhile). A value longer than any file system allows is returned as it is, for the
/// caller to refuse.
fn read_large_value(path: &Path, name: &std::ffi::CStr) -> Result<Bytes, Errno> {
    let mut tries = 0;
    loop {
        let len = rustix::fs::lgetxattr_query(path, name)?;
        let mut value = vec![0u8; len];
        match rustix::fs::lgetxattr(path, name, &mut value[..]) {
            Ok(len) => {
                value.truncate(len);
                return Ok(Bytes::from(value));
            }
            Err(Errno::RANGE) if tries < 8 => tries += 1,
            Err(errno) => return Err(errno),
        }
    }
}

impl ScanEntry {
    /// Opens the entry for reading, relative to the directory it was found in, never
    /// following a symlink: if the file was swapped for one since the scan, this fails
    /// rather than open whatever the link points at.
    pub fn open(&self) -> io::Result<std::fs::File> {
        open_source(self.dir.as_deref(), &self.source)
    }
}

/// Opens `source` for reading with `O_NOFOLLOW`: by its last component relative to `dir` when
/// there is one (as [`ScanEntry::open`] does), else by the whole path.
pub fn open_source(dir: Option<&SourceDir>, source: &Path) -> io::Result<std::fs::File> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = match (dir, source.file_name()) {
        (Some(dir), Some(name)) => rustix::fs::openat(dir, name, flags, Mode::empty()),
        _ => rustix::fs::openat(rustix::fs::CWD, source, flags, Mode::empty()),
    }?;
    Ok(std::fs::File::from(fd))
}
