//! Reading out of a root: what a serving host needs when a client pulls from it.
//!
//! A pull sends a subtree of the root with the ordinary sender, which reads by path. The
//! subtree named by the client is reached the way every write is, one component at a time
//! with `O_NOFOLLOW` from the root's fd, and the sender is then given a `/proc/self/fd/N`
//! path naming the directory so opened: a symlink swapped into the client's path afterwards
//! changes nothing, because the kernel resolves that path to the very directory found.

use std::os::fd::{AsRawFd, OwnedFd};

use rustix::fs::{AtFlags, Mode, OFlags};
use std::path::PathBuf;
use std::sync::Arc;

use crate::error::StoreError;
use crate::fsutil::Missing;
use crate::path::RelPath;
use crate::root::{FileKind, Root};

/// A subtree (or one file) of a root, opened for reading without following any symlink on the
/// way to it. Keep it alive while reading through [`SourceHandle::path`].
#[derive(Debug)]
pub struct SourceHandle {
    /// The directory itself, or the directory holding the file.
    dir: Arc<OwnedFd>,
    /// The file's name, for a file.
    name: Option<Vec<u8>>,
    kind: FileKind,
}

impl SourceHandle {
    /// A path naming what was opened, valid while `self` lives: `/proc/self/fd/N/.` for a
    /// directory (the `.` makes even `lstat` see the directory, not the fd's magic link),
    /// `/proc/self/fd/N/NAME` for a file.
    pub fn path(&self) -> PathBuf {
        let mut path = PathBuf::from(format!("/proc/self/fd/{}", self.dir.as_raw_fd()));
        match &self.name {
            Some(name) => {
                use std::os::unix::ffi::OsStrExt;
                path.push(std::ffi::OsStr::from_bytes(name));
            }
            None => path.push("."),
        }
        path
    }

    /// What was opened: [`FileKind::Dir`] or another kind for a single entry.
    pub fn kind(&self) -> FileKind {
        self.kind
    }

    /// The file's name, when a single file was opened.
    pub fn file_name(&self) -> Option<&[u8]> {
        self.name.as_deref()
    }
}

impl Root {
    /// Opens `rel` for reading: `None` when nothing is there. A symlink on the way is an
    /// error ([`StoreError::SymlinkInPath`]); a symlink as the last component is opened as a
    /// single entry (sent as a link, never followed).
    pub fn open_source(&self, rel: &RelPath) -> Result<Option<SourceHandle>, StoreError> {
        let Some(kind) = self.kind_of(rel)? else {
            return Ok(None);
        };
        if kind == FileKind::Dir {
            let Some(dir) = self.resolve_dir(rel, Missing::Absent)? else {
                return Ok(None);
            };
            return Ok(Some(SourceHandle {
                dir,
                name: None,
                kind,
            }));
        }
        let Some((parent, name)) = rel.parent_and_name() else {
            return Ok(None);
        };
        let Some(dir) = self.resolve_dir(&parent, Missing::Absent)? else {
            return Ok(None);
        };
        Ok(Some(SourceHandle {
            dir,
            name: Some(name.to_vec()),
            kind,
        }))
    }
}

/// Flags for opening a directory on a confined walk: never through a symlink.
const WALK_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

impl Root {
    /// Opens `rel` inside the snapshot `id` (see `snapshot`) for reading, confined to the
    /// snapshot's copy exactly as [`Root::open_source`] is to the live tree. `None` when the
    /// snapshot or the path does not exist.
    pub fn open_snapshot_source(
        &self,
        id: &str,
        rel: &RelPath,
    ) -> Result<Option<SourceHandle>, StoreError> {
        if id.is_empty() || id.contains('/') || id.starts_with('.') {
            return Err(StoreError::Refused {
                path: self.top.haul_path.join("snapshots"),
                op: "open the snapshot",
                reason: format!("{id:?} is not a snapshot id (`haul snapshot list` shows them)"),
            });
        }
        let shown = || self.top.haul_path.join("snapshots").join(id).join("tree");
        let mut dir = Arc::new(self.top.haul.try_clone().map_err(|e| StoreError::Io {
            path: shown(),
            op: "open the snapshot",
            source: e,
        })?);
        let mut way: Vec<&[u8]> = vec![b"snapshots", id.as_bytes(), b"tree"];
        let components: Vec<&[u8]> = rel.components().collect();
        let (last, parents) = match components.split_last() {
            Some((last, parents)) => (Some(*last), parents),
            None => (None, &[][..]),
        };
        way.extend(parents);
        for name in way {
            match rustix::fs::openat(&*dir, name, WALK_FLAGS, Mode::empty()) {
                Ok(fd) => dir = Arc::new(fd),
                Err(rustix::io::Errno::NOENT) => return Ok(None),
                Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
                    return Err(StoreError::SymlinkInPath { path: shown() });
                }
                Err(e) => {
                    return Err(StoreError::from_errno(
                        e,
                        shown(),
                        &self.top.haul_path,
                        "open the snapshot",
                    ));
                }
            }
        }
        let Some(name) = last else {
            return Ok(Some(SourceHandle {
                dir,
                name: None,
                kind: FileKind::Dir,
            }));
        };
        let st = match rustix::fs::statat(&*dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => {
                return Err(StoreError::from_errno(
                    e,
                    shown(),
                    &self.top.haul_path,
                    "inspect the snapshot",
                ));
            }
        };
        let kind = FileKind::of_mode(st.st_mode);
        if kind == FileKind::Dir {
            let fd = rustix::fs::openat(&*dir, name, WALK_FLAGS, Mode::empty()).map_err(|e| {
                StoreError::from_errno(e, shown(), &self.top.haul_path, "open the snapshot")
            })?;
            return Ok(Some(SourceHandle {
                dir: Arc::new(fd),
                name: None,
                kind,
            }));
        }
        Ok(Some(SourceHandle {
            dir,
            name: Some(name.to_vec()),
            kind,
        }))
    }
}
