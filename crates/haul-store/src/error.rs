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
    /// A request was refused because of what is (or is not) at the path: the root itself, a
    /// name already taken, something that is not a directory or regular file, too large.
    #[error("refusing to {op} {}: {reason}", path.display())]
    Refused {
        /// The path the request named (or the one in the way).
        path: PathBuf,
        /// What was asked ("remove", "rename", ...).
        op: &'static str,
        /// Why, and what to do about it.
        reason: String,
    },
    /// A snapshot id given by a caller is not one (ids are letters, digits, `-` and `_`).
    #[error(
        "{id:?} is not a snapshot id: ids look like 20261204T181700Z-3fa9c1; list the snapshots to see which exist"
    )]
    InvalidSnapshotId {
        /// The id as given.
        id: String,
    },
    /// No snapshot has this id.
    #[error(
        "there is no snapshot {id:?} in {}: list the snapshots to see which exist",
        path.display()
    )]
    NoSuchSnapshot {
        /// The id asked for.
        id: String,
        /// The snapshots directory looked in.
        path: PathBuf,
    },
    /// The snapshot's creation never finished (it died or failed part way).
    #[error(
        "snapshot {id:?} at {} is incomplete (its creation was interrupted), so it cannot be read back or restored from: delete it and take a new one",
        path.display()
    )]
    SnapshotIncomplete {
        /// The snapshot's id.
        id: String,
        /// Its directory.
        path: PathBuf,
    },
    /// Someone else holds an unexpired lease on a subtree `path` lies in (or holds).
    #[error(
        "{} is in (or holds) a subtree leased to {holder:?} for {purpose:?}; the lease expires at {}: wait for that job to finish or to release its lease, then run again; if that job died, its lease can be taken over once it has expired",
        path.display(),
        crate::clock::describe_expiry(*expires)
    )]
    Leased {
        /// The path that was refused.
        path: PathBuf,
        /// Who holds the lease.
        holder: String,
        /// What the holder said it is for.
        purpose: String,
        /// When the lease expires, Unix time in milliseconds.
        expires: u64,
    },
    /// A lease to renew is not held by this holder any more.
    #[error(
        "{holder:?} no longer holds the lease on {} (it was released, or it expired and was taken over): take a new lease before going on",
        path.display()
    )]
    LeaseLost {
        /// The leased subtree.
        path: PathBuf,
        /// The holder that asked.
        holder: String,
    },
    /// The root's `.haul` state directory is owned by another user or writable by group or
    /// others, so someone else could plant or swap the partial files and journals in it.
    #[error(
        "refusing to use the state directory {}: {reason}",
        path.display()
    )]
    UnsafeStateDir {
        /// The `.haul` directory.
        path: PathBuf,
        /// What is wrong with it and the command that fixes it.
        reason: String,
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
