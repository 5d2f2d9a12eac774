//! Streaming a source tree into entries, depth first, in a stable order.
//!
//! The scanner keeps one sorted name list per open directory level and nothing else, so its
//! memory is bounded by depth times directory width, never by the size of the tree. Symlinks
//! are never followed: every path is `lstat`ed, the root included.

use std::ffi::OsString;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use haul_proto::{EntryKind, Meta};

/// One entry of a source tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanEntry {
    /// File, directory or symlink.
    pub kind: EntryKind,
    /// `/`-separated path relative to the scan root, as raw bytes; empty for the root itself.
    pub rel: Vec<u8>,
    /// The path to open on the source side (the root as given, joined with `rel`).
    pub source: PathBuf,
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
}

/// The names of one directory not yet yielded.
#[derive(Debug)]
struct Listing {
    path: PathBuf,
    rel: Vec<u8>,
    /// Sorted in reverse so the next name is popped from the end.
    names: Vec<OsString>,
}

impl Iterator for Scanner {
    type Item = Result<ScanEntry, ScanError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(root) = self.root.take() {
            return self.start(root);
        }
        if let Some((path, rel)) = self.open_next.take() {
            match read_listing(&path) {
                Ok(names) => self.stack.push(Listing { path, rel, names }),
                Err(err) => return Some(Err(err)),
            }
        }
        loop {
            let listing = self.stack.last_mut()?;
            let Some(name) = listing.names.pop() else {
                self.stack.pop();
                continue;
            };
            let source = listing.path.join(&name);
            let mut rel = listing.rel.clone();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(name.as_bytes());
            let item = entry(source, rel);
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
        let item = entry(root, Vec::new());
        if let Ok(
            dir @ ScanEntry {
                kind: EntryKind::Dir,
                ..
            },
        ) = &item
        {
            match read_listing(&dir.source) {
                Ok(names) => {
                    let path = dir.source.clone();
                    self.stack.push(Listing {
                        path,
                        rel: Vec::new(),
                        names,
                    });
                }
                Err(err) => return Some(Err(err)),
            }
        }
        Some(item)
    }
}

/// All names of a directory, reverse-sorted by bytes (popped from the end in order).
fn read_listing(path: &Path) -> Result<Vec<OsString>, ScanError> {
    let io_err = |source| ScanError::Io {
        path: path.to_path_buf(),
        op: "read directory",
        source,
    };
    let mut names = Vec::new();
    for dirent in fs::read_dir(path).map_err(io_err)? {
        // A failure partway through drops the whole listing: a directory reported as
        // unreadable never looks complete but short.
        names.push(dirent.map_err(io_err)?.file_name());
    }
    names.sort_unstable_by(|a, b| b.as_bytes().cmp(a.as_bytes()));
    Ok(names)
}

/// `lstat`s one path and describes it.
fn entry(source: PathBuf, rel: Vec<u8>) -> Result<ScanEntry, ScanError> {
    let meta = match fs::symlink_metadata(&source) {
        Ok(meta) => meta,
        Err(err) => {
            return Err(ScanError::Io {
                path: source,
                op: "stat",
                source: err,
            });
        }
    };
    let file_type = meta.file_type();
    let kind = if file_type.is_file() {
        EntryKind::File
    } else if file_type.is_dir() {
        EntryKind::Dir
    } else if file_type.is_symlink() {
        EntryKind::Symlink
    } else {
        let what = if file_type.is_fifo() {
            "FIFOs are not copied"
        } else if file_type.is_socket() {
            "sockets are not copied"
        } else if file_type.is_block_device() || file_type.is_char_device() {
            "device nodes are not copied"
        } else {
            "files of this type are not copied"
        };
        return Err(ScanError::Unsupported { path: source, what });
    };
    let link_target = if kind == EntryKind::Symlink {
        match fs::read_link(&source) {
            Ok(target) => target.into_os_string().into_encoded_bytes(),
            Err(err) => {
                return Err(ScanError::Io {
                    path: source,
                    op: "read link",
                    source: err,
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
            meta.len()
        } else {
            0
        },
        meta: meta_of(&meta),
        link_target,
        dev: meta.dev(),
        ino: meta.ino(),
        source,
    })
}

fn meta_of(meta: &Metadata) -> Meta {
    Meta {
        mode: meta.mode() & 0o7777,
        mtime_sec: meta.mtime(),
        // The kernel keeps this in 0..1e9; clamp rather than trust a strange file system.
        mtime_nsec: meta.mtime_nsec().clamp(0, 999_999_999) as u32,
    }
}
