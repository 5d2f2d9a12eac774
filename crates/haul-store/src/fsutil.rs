//! Small file-system helpers shared by several modules: the retrying positional write, the
//! mode and mtime a [`haul_proto::Meta`] asks for, and opening (or making) one directory
//! below another without following a symlink, the step every confined walk is made of.
//!
//! It uses no module of the crate but `error`, so every module that touches the disk may use it.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;

use crate::error::StoreError;

/// How every directory on the way is opened: never following a symlink.
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Mode of directories the store creates until [`crate::Root::set_dir_meta`] sets the real
/// one: private, so a half-received tree is not readable by others.
const NEW_DIR_MODE: u32 = 0o700;

/// Whether a step of a walk creates missing directories.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Missing {
    Create,
    /// Report a missing component as `None`.
    Absent,
}

pub(crate) fn mode_bits(mode: u32, special_bits: bool) -> Mode {
    // Permission bits and sticky; setuid/setgid from a peer only if the operator asked.
    Mode::from_raw_mode(mode & if special_bits { 0o7777 } else { 0o1777 })
}

pub(crate) fn mtime(meta: &haul_proto::Meta) -> Timestamps {
    Timestamps {
        // Access time is left as it is: only the modification time is replicated.
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: meta.mtime_sec,
            tv_nsec: meta.mtime_nsec.into(),
        },
    }
}

pub(crate) fn not_found(path: PathBuf, op: &'static str) -> StoreError {
    StoreError::Io {
        path,
        op,
        source: io::Error::from(io::ErrorKind::NotFound),
    }
}

/// Opens (and with `Missing::Create`, makes) the directory `name` in `parent` without
/// following a symlink. `shown` is its full path, for messages.
pub(crate) fn open_child_dir(
    parent: &OwnedFd,
    name: &[u8],
    missing: Missing,
    shown: &dyn Fn() -> PathBuf,
    space_path: &Path,
) -> Result<Option<OwnedFd>, StoreError> {
    open_or_make_child_dir(parent, name, missing, shown, space_path).map(|d| d.map(|(fd, _)| fd))
}

/// [`open_child_dir`], also saying whether this call made the directory (its `mkdirat`
/// succeeded): such a directory is empty but for what this process puts in it.
pub(crate) fn open_or_make_child_dir(
    parent: &OwnedFd,
    name: &[u8],
    missing: Missing,
    shown: &dyn Fn() -> PathBuf,
    space_path: &Path,
) -> Result<Option<(OwnedFd, bool)>, StoreError> {
    let mut made = false;
    // Two rounds: a directory made by mkdirat (or by a racing thread, EEXIST) is opened on
    // the second. A third would mean someone is deleting it as fast as it is made.
    for _ in 0..3 {
        match rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => return Ok(Some((fd, made))),
            Err(Errno::NOENT) if missing == Missing::Create => {
                match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(NEW_DIR_MODE)) {
                    Ok(()) => made = true,
                    Err(Errno::EXIST) => continue,
                    Err(e) => {
                        return Err(StoreError::from_errno(
                            e,
                            shown(),
                            space_path,
                            "create directory",
                        ));
                    }
                }
            }
            Err(Errno::NOENT) => return Ok(None),
            // O_NOFOLLOW|O_DIRECTORY on a symlink gives ELOOP or ENOTDIR depending on the
            // kernel path taken, so ask what is there instead of trusting the errno.
            Err(errno @ (Errno::NOTDIR | Errno::LOOP)) => {
                return Err(
                    match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                            StoreError::SymlinkInPath { path: shown() }
                        }
                        Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::Directory => {
                            StoreError::NotADirectory { path: shown() }
                        }
                        _ => StoreError::from_errno(errno, shown(), space_path, "open directory"),
                    },
                );
            }
            Err(e) => {
                return Err(StoreError::from_errno(
                    e,
                    shown(),
                    space_path,
                    "open directory",
                ));
            }
        }
    }
    Err(not_found(
        shown(),
        "create directory (it keeps disappearing)",
    ))
}

/// Writes all of `buf` at `offset`, retrying short writes and EINTR. A write that makes no
/// progress (which a regular file never does) is reported as EIO.
pub(crate) fn pwrite_all(fd: BorrowedFd<'_>, mut offset: u64, mut buf: &[u8]) -> Result<(), Errno> {
    while !buf.is_empty() {
        match rustix::io::pwrite(fd, buf, offset) {
            Ok(0) => return Err(Errno::IO),
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Removes every entry of the directory `name` in `parent` (one that holds no directories,
/// such as the chunk-hash cache's records and temp files), then the directory itself, through
/// `parent`'s fd (never following a symlink: `unlinkat` removes a link, not its target). Best
/// effort.
pub(crate) fn remove_flat_dir(parent: &OwnedFd, name: &[u8]) {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let Ok(dir) = rustix::fs::openat(parent, name, flags, Mode::empty()) else {
        return;
    };
    if let Ok(entries) = rustix::fs::Dir::read_from(&dir) {
        for entry in entries.flatten() {
            let child = entry.file_name();
            if child.to_bytes() != b"." && child.to_bytes() != b".." {
                let _ = rustix::fs::unlinkat(&dir, child, AtFlags::empty());
            }
        }
    }
    let _ = rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR);
}
