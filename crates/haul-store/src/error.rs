//! [`StoreError`]: what went wrong on the receiver's disk, with the path and the operation.
//!
//! Policy: every variant carries the path an administrator would look at. A full disk is its
//! own variant because the engine must pause (exit code 3) rather than fail; permission
//! problems are their own variant because the fix (ownership, mode) differs from other I/O.

use std::io;
use std::path::PathBuf;

use rustix::io::Errno;

use crate::path::PathError;

/// An error from the receiver's side on disk.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file system holding `path` is full (ENOSPC) or the user's quota is used up (EDQUOT).
    #[error(
        "no space left on the device holding {}: expand the storage and run the same command again; verified data is kept",
        path.display()
    )]
    NoSpace {
        /// A path on the full file system.
        path: PathBuf,
    },
    /// A path from the peer was refused.
    #[error("refusing the path {rel:?} sent by the peer: {source}")]
    Path {
        /// The path as received (lossy UTF-8).
        rel: String,
        /// Why it was refused.
        source: PathError,
    },
    /// A component on the target side is a symlink: refusing to follow it.
    #[error(
        "{} is a symbolic link: refusing to follow it, since the receiver writes only inside its root; replace the link with a real directory (or remove it) on the target and run again",
        path.display()
    )]
    SymlinkInPath {
        /// The symlink.
        path: PathBuf,
    },
    /// Something that must be a directory is not one.
    #[error(
        "{} exists and is not a directory: move it out of the way on the target and run again",
        path.display()
    )]
    NotADirectory {
        /// The path that is not a directory.
        path: PathBuf,
    },
    /// A directory is where a file or symlink is to be installed.
    #[error(
        "{} is a directory where a file or symbolic link must be installed: move it out of the way on the target and run again",
        path.display()
    )]
    IsADirectory {
        /// The directory in the way.
        path: PathBuf,
    },
    /// The OS refused the operation (EACCES, EPERM).
    #[error(
        "permission denied: could not {op} {}: give the receiver's user write access there (or run the receiver as the owner) and run again",
        path.display()
    )]
    PermissionDenied {
        /// The path the operation was on.
        path: PathBuf,
        /// What was being done ("create directory", ...).
        op: &'static str,
    },
    /// Another live receiver holds the partial of this destination (its journal is locked).
    #[error(
        "another haul receiver is writing {} right now: wait for it to finish (or stop it) and run again",
        path.display()
    )]
    Busy {
        /// The destination both receivers are writing.
        path: PathBuf,
    },
    /// Any other I/O failure.
    #[error("could not {op} {}: {source}", path.display())]
    Io {
        /// The path the operation was on.
        path: PathBuf,
        /// What was being done ("create directory", ...).
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

impl StoreError {
    /// Whether this is a full disk or exhausted quota: the run should pause, not fail, and the
    /// same command continues once the storage is expanded.
    pub fn is_no_space(&self) -> bool {
        matches!(self, StoreError::NoSpace { .. })
    }

    /// Maps an errno to the variant an administrator can act on. `space_path` is what the
    /// NoSpace message names (the root, which is what gets expanded), `path` the file at hand.
    pub(crate) fn from_errno(
        errno: Errno,
        path: PathBuf,
        space_path: &std::path::Path,
        op: &'static str,
    ) -> StoreError {
        match errno {
            Errno::NOSPC | Errno::DQUOT => StoreError::NoSpace {
                path: space_path.to_path_buf(),
            },
            Errno::ACCESS | Errno::PERM => StoreError::PermissionDenied { path, op },
            Errno::ISDIR => StoreError::IsADirectory { path },
            _ => StoreError::Io {
                path,
                op,
                source: io::Error::from(errno),
            },
        }
    }
}
