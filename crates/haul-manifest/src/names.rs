//! The names in each directory of a source tree, and nothing else: what `--delete` compares
//! the target against.
//!
//! [`walk_names`] reads each directory once (one `getdents` per few dozen names) and takes
//! each name's type from `d_type`, so it costs no `stat` per file: only a name whose file
//! system does not report its type (`DT_UNKNOWN`) is `statat`ed, and, with
//! [`ScanOptions::one_file_system`], each child directory (for its device). Like the scanner
//! it holds one open directory and its pending subdirectories per level, never the whole tree.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, OFlags};

use crate::filter::Filter;
use crate::scan::{ScanError, ScanOptions, read_listing};

/// One source directory and the names in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirNames {
    /// The directory, `/`-separated and relative to the walk's root; empty for the root.
    pub rel: Vec<u8>,
    /// The names of its entries that the filter includes, sorted by bytes.
    pub names: Vec<Vec<u8>>,
}

/// Lists every directory of the tree at `root`, depth first in name order, a directory before
/// the directories below it, each as [`DirNames`].
///
/// It descends into child directories, never into a symlink (whatever it points at), nor into
/// a directory that `opts.filter` excludes (whose name is not listed either), nor, with
/// `opts.one_file_system`, into a directory on another file system than the root (whose name
/// is listed). `opts.xattrs` is ignored. A directory that cannot be read is yielded as
/// [`ScanError::Io`] (`op` "read directory") and the walk goes on without it. A root that is not
/// a directory yields nothing; one that cannot be `lstat`ed yields that error and nothing more.
pub fn walk_names(root: &Path, opts: &ScanOptions) -> NameWalker {
    NameWalker {
        root: Some(root.to_path_buf()),
        rules: Rules {
            filter: opts.filter.clone(),
            one_file_system: opts.one_file_system,
            root_dev: 0,
        },
        stack: Vec::new(),
    }
}

/// The iterator returned by [`walk_names`].
#[derive(Debug)]
pub struct NameWalker {
    /// The root, until the first call to `next`.
    root: Option<PathBuf>,
    rules: Rules,
    /// One open directory per level being walked, innermost last.
    stack: Vec<Frame>,
}

/// What decides which names are listed and walked.
#[derive(Debug)]
struct Rules {
    filter: Option<Arc<Filter>>,
    one_file_system: bool,
    root_dev: u64,
}

/// A directory already listed whose subdirectories are still to be walked.
#[derive(Debug)]
struct Frame {
    fd: OwnedFd,
    path: PathBuf,
    rel: Vec<u8>,
    /// The subdirectories to walk, reverse-sorted (popped from the end in order).
    dirs: Vec<Vec<u8>>,
}

impl Iterator for NameWalker {
    type Item = Result<DirNames, ScanError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(root) = self.root.take() {
            let st = match rustix::fs::statat(rustix::fs::CWD, &root, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(errno) => {
                    return Some(Err(ScanError::Io {
                        path: root,
                        op: "stat",
                        source: errno.into(),
                    }));
                }
            };
            if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                return None;
            }
            self.rules.root_dev = st.st_dev;
            // The root as named (a trailing slash on a symlink follows it, as the `lstat` did).
            let listed = list(
                &self.rules,
                rustix::fs::CWD,
                &root,
                root.clone(),
                Vec::new(),
                OFlags::empty(),
            );
            return Some(self.keep(listed));
        }
        loop {
            let frame = self.stack.last_mut()?;
            let Some(name) = frame.dirs.pop() else {
                self.stack.pop();
                continue;
            };
            let path = frame.path.join(OsStr::from_bytes(&name));
            let rel = child_rel(&frame.rel, &name);
            // Relative to the open parent: one name lookup, and `O_NOFOLLOW` refuses a
            // directory swapped for a symlink since it was listed.
            let listed = list(
                &self.rules,
                frame.fd.as_fd(),
                Path::new(OsStr::from_bytes(&name)),
                path,
                rel,
                OFlags::NOFOLLOW,
            );
            return Some(self.keep(listed));
        }
    }
}

impl NameWalker {
    /// Keeps the frame of a directory just listed, to walk its subdirectories next.
    fn keep(
        &mut self,
        listed: Result<(DirNames, Option<Frame>), ScanError>,
    ) -> Result<DirNames, ScanError> {
        let (names, frame) = listed?;
        self.stack.extend(frame);
        Ok(names)
    }
}

/// Reads the directory `open` (relative to `at`, with `extra` open flags) and keeps the names
/// the filter includes; the frame holds its subdirectories to walk, if it has any.
fn list(
    rules: &Rules,
    at: BorrowedFd<'_>,
    open: &Path,
    path: PathBuf,
    rel: Vec<u8>,
    extra: OFlags,
) -> Result<(DirNames, Option<Frame>), ScanError> {
    let (fd, listing) = read_listing(at, open, &path, extra)?;
    let mut names = Vec::with_capacity(listing.spans.len());
    let mut dirs = Vec::new();
    // The spans are reverse-sorted: walk them backwards for byte order.
    for &span in listing.spans.iter().rev() {
        let name = listing.name(span);
        let mut kind = listing.file_type(span);
        let mut dev = None;
        if kind == FileType::Unknown {
            match rustix::fs::statat(&fd, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => {
                    kind = FileType::from_raw_mode(st.st_mode);
                    dev = Some(st.st_dev);
                }
                // Gone since the listing: not in the source any more.
                Err(rustix::io::Errno::NOENT) => continue,
                // Listed, so the target keeps it, but not walked.
                Err(_) => {}
            }
        }
        let is_dir = kind == FileType::Directory;
        if let Some(filter) = &rules.filter
            && filter.excludes(&child_rel(&rel, name), is_dir)
        {
            continue;
        }
        names.push(name.to_vec());
        if !is_dir {
            continue;
        }
        if rules.one_file_system {
            if dev.is_none() {
                dev = rustix::fs::statat(&fd, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW)
                    .ok()
                    .map(|st| st.st_dev);
            }
            if dev != Some(rules.root_dev) {
                continue;
            }
        }
        dirs.push(name.to_vec());
    }
    dirs.reverse();
    let frame = (!dirs.is_empty()).then(|| Frame {
        fd,
        path,
        rel: rel.clone(),
        dirs,
    });
    Ok((DirNames { rel, names }, frame))
}

fn child_rel(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut rel = Vec::with_capacity(parent.len() + 1 + name.len());
    rel.extend_from_slice(parent);
    if !rel.is_empty() {
        rel.push(b'/');
    }
    rel.extend_from_slice(name);
    rel
}
