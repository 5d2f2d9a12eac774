//! Streaming a source tree into entries, depth first, in a stable order.
//!
//! The scanner keeps one sorted name list per open directory level and nothing else, so its
//! memory is bounded by depth times directory width, never by the size of the tree. Symlinks
//! are never followed: every path is `lstat`ed, the root included. Children are `statat`ed
//! relative to their directory's descriptor (opened `O_NOFOLLOW`), so a million files do not
//! each cost a walk of their whole path.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use haul_proto::{EntryKind, Meta};

/// One entry of a source tree.
#[derive(Clone, Debug)]
pub struct ScanEntry {
    /// File, directory or symlink.
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
    /// The symlink's target as raw bytes (symlinks only; empty otherwise).
    pub link_target: Vec<u8>,
    /// Device of the entry (`st_dev`).
    pub dev: u64,
    /// Inode of the entry (`st_ino`); with `dev`, identifies hard links.
    pub ino: u64,
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
    /// The path is a kind of file haul does not copy (device node, FIFO, socket); it is skipped.
    #[error("skipping {}: {what}", path.display())]
    Unsupported {
        /// The skipped path.
        path: PathBuf,
        /// Why, e.g. "FIFOs are not copied".
        what: &'static str,
    },
}

impl ScanError {
    /// The path the error is about.
    pub fn path(&self) -> &Path {
        match self {
            ScanError::Io { path, .. } | ScanError::Unsupported { path, .. } => path,
        }
    }
}

/// Streams the tree at `root`, depth first: the root first, then each directory's entries
/// sorted by name bytes, a directory always before its contents.
///
/// A root that is a file or a symlink yields that one entry with an empty `rel`. A missing or
/// unreadable root is yielded as the first item and ends the scan; any other error (an
/// unreadable directory, a file that vanished, a FIFO) is yielded and the scan goes on.
pub fn scan(root: &Path) -> Scanner {
    Scanner {
        root: Some(root.to_path_buf()),
        open_next: None,
        stack: Vec::new(),
        threads: std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
        live: Arc::default(),
    }
}

/// The iterator returned by [`scan`].
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
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
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
    fn refill(&mut self, threads: usize) {
        let take = self.names.spans.len().min(STAT_WINDOW);
        let from = self.names.spans.len() - take;
        let window: Vec<(usize, usize)> = self.names.spans.drain(from..).rev().collect();
        let bytes = &self.names.bytes;
        let one = |&(start, end): &(usize, usize)| {
            let name = OsStr::from_bytes(&bytes[start..end]);
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
            entry_at(self.dir.as_fd(), shared, name, source, rel)
        };
        if threads < 2 || window.len() < PARALLEL_FROM {
            self.ready.extend(window.iter().map(one));
            return;
        }
        let per = window.len().div_ceil(threads);
        let parts: Vec<Vec<_>> = std::thread::scope(|scope| {
            let handles: Vec<_> = window
                .chunks(per)
                .skip(1)
                .map(|part| scope.spawn(move || part.iter().map(one).collect::<Vec<_>>()))
                .collect();
            let mut parts = vec![window[..per.min(window.len())].iter().map(one).collect()];
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
            match read_listing(&path, OFlags::NOFOLLOW) {
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
                listing.refill(threads);
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
        let item = entry_at(
            rustix::fs::CWD,
            None,
            root.as_os_str(),
            root.clone(),
            Vec::new(),
        );
        if let Ok(
            dir @ ScanEntry {
                kind: EntryKind::Dir,
                ..
            },
        ) = &item
        {
            // The root as the user named it: a trailing slash on a symlink follows it, as
            // `lstat` of that name did.
            match read_listing(&dir.source, OFlags::empty()) {
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

/// Opens a directory (with `extra` flags: `O_NOFOLLOW` for one found by `lstat`, so a
/// directory swapped for a symlink since is refused) and lists all its names, reverse-sorted
/// by bytes (popped from the end in order).
fn read_listing(path: &Path, extra: OFlags) -> Result<(OwnedFd, Names), ScanError> {
    let io_err = |source: rustix::io::Errno| ScanError::Io {
        path: path.to_path_buf(),
        op: "read directory",
        source: source.into(),
    };
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | extra;
    let fd = rustix::fs::openat(rustix::fs::CWD, path, flags, Mode::empty()).map_err(io_err)?;
    let reader = fd
        .try_clone()
        .map_err(|e| ScanError::Io {
            path: path.to_path_buf(),
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
struct Names {
    bytes: Vec<u8>,
    /// Each name's range in `bytes`.
    spans: Vec<(usize, usize)>,
}

/// `statat`s `name` in the open directory `dir` (never following a symlink) and describes
/// it; `source` is its full path, for messages. `shared`: the handle of `dir` the entry
/// keeps (see [`ScanEntry::dir`]), if any.
fn entry_at(
    dir: std::os::fd::BorrowedFd<'_>,
    shared: Option<&Arc<SourceDir>>,
    name: &OsStr,
    source: PathBuf,
    rel: Vec<u8>,
) -> Result<ScanEntry, ScanError> {
    let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(errno) => {
            return Err(ScanError::Io {
                path: source,
                op: "stat",
                source: errno.into(),
            });
        }
    };
    let kind = match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => EntryKind::File,
        FileType::Directory => EntryKind::Dir,
        FileType::Symlink => EntryKind::Symlink,
        other => {
            let what = match other {
                FileType::Fifo => "FIFOs are not copied",
                FileType::Socket => "sockets are not copied",
                FileType::BlockDevice | FileType::CharacterDevice => "device nodes are not copied",
                _ => "files of this type are not copied",
            };
            return Err(ScanError::Unsupported { path: source, what });
        }
    };
    let link_target = if kind == EntryKind::Symlink {
        match rustix::fs::readlinkat(dir, name, Vec::new()) {
            Ok(target) => target.into_bytes(),
            Err(errno) => {
                return Err(ScanError::Io {
                    path: source,
                    op: "read link",
                    source: errno.into(),
                });
            }
        }
    } else {
        Vec::new()
    };
    Ok(ScanEntry {
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
        link_target,
        dev: st.st_dev,
        ino: st.st_ino,
        source,
        dir: shared.cloned(),
    })
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
