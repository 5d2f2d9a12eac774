//! Files already on the target: opened for reading (incremental re-runs reuse their chunks)
//! and their metadata updated in place (a re-run whose content matched).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use crate::attrs::{Attrs, XattrTarget};
use crate::error::StoreError;
use crate::fsutil::Missing;
use crate::path::RelPath;
use crate::root::Root;
use crate::snapshot::{clone_or_copy, copy_xattrs, owner_of};

/// A regular file already at a destination, open for reading.
#[derive(Debug)]
pub struct ExistingFile {
    /// The open file (read-only).
    pub file: std::fs::File,
    /// Its size in bytes.
    pub size: u64,
    /// Its modification time, seconds since the epoch.
    pub mtime_sec: i64,
    /// Nanoseconds part of the modification time.
    pub mtime_nsec: u32,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
}

/// What [`Root::stat_existing`] reports of a regular file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStat {
    /// Its size in bytes.
    pub size: u64,
    /// Its modification time, seconds since the epoch.
    pub mtime_sec: i64,
    /// Nanoseconds part of the modification time.
    pub mtime_nsec: u32,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Hard links to it.
    pub nlink: u64,
}

impl FileStat {
    pub(crate) fn of(st: &Stat) -> FileStat {
        FileStat {
            size: u64::try_from(st.st_size).unwrap_or(0),
            mtime_sec: st.st_mtime,
            mtime_nsec: u32::try_from(st.st_mtime_nsec).unwrap_or(0),
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            nlink: st.st_nlink,
        }
    }
}

fn is_file(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
}

/// Whether the file `fd` (`st` its stat) already has everything `attrs` would set: owner,
/// mode (as [`crate::Attrs`] would filter it), mtime and, when given, the extended attributes
/// in the namespaces that may be set.
fn meta_matches(fd: &OwnedFd, st: &Stat, attrs: &Attrs) -> bool {
    let mode = attrs.meta.mode & 0o7777 & if attrs.special_bits { 0o7777 } else { 0o1777 };
    let owner_ok = attrs
        .owner
        .is_none_or(|(uid, gid)| (st.st_uid, st.st_gid) == (uid, gid));
    let mtime_ok = (st.st_mtime, u32::try_from(st.st_mtime_nsec).ok())
        == (attrs.meta.mtime_sec, Some(attrs.meta.mtime_nsec));
    if !owner_ok || !mtime_ok || st.st_mode & 0o7777 != mode {
        return false;
    }
    let Some(want) = &attrs.xattrs else {
        return true;
    };
    let Ok(have) = XattrTarget::Fd(fd.as_fd()).read_all() else {
        return false;
    };
    let settable = |name: &[u8]| {
        name.starts_with(b"user.")
            || name.starts_with(b"system.posix_acl_")
            || (attrs.privileged_xattrs
                && (name.starts_with(b"security.") || name.starts_with(b"trusted.")))
    };
    want.iter()
        .all(|w| have.iter().any(|h| h.name == w.name && h.value == w.value))
        && have
            .iter()
            .filter(|h| settable(&h.name))
            .all(|h| want.iter().any(|w| w.name == h.name))
}

impl Root {
    /// Opens the regular file at `rel` for reading, confined and without following a symlink
    /// at any step. Nothing there, a symlink, a directory or a special file is `Ok(None)`;
    /// a symlink on the way is [`StoreError::SymlinkInPath`] (as for [`Root::kind_of`]).
    pub fn open_existing(&self, rel: &RelPath) -> Result<Option<ExistingFile>, StoreError> {
        let Some((fd, st)) = self.open_regular(rel, OFlags::RDONLY, "open existing file")? else {
            return Ok(None);
        };
        Ok(Some(ExistingFile {
            file: std::fs::File::from(fd),
            size: u64::try_from(st.st_size).unwrap_or(0),
            mtime_sec: st.st_mtime,
            mtime_nsec: u32::try_from(st.st_mtime_nsec).unwrap_or(0),
            mode: st.st_mode & 0o7777,
        }))
    }

    /// Size, mtime and mode of the regular file at `rel` from one `statat`, without opening it:
    /// what a re-run's quick check needs for every file of the tree. `Ok(None)` as for
    /// [`Root::open_existing`].
    pub fn stat_existing(&self, rel: &RelPath) -> Result<Option<FileStat>, StoreError> {
        // In a directory this receiver just made there is nothing to find: a fresh copy of a
        // million files need not ask a million times.
        if let Some((parent, _)) = rel.parent_and_name()
            && !parent.is_root()
            && self.is_fresh_dir(&parent)
        {
            return Ok(None);
        }
        Ok(self
            .stat_regular(rel, "inspect existing file")?
            .map(|(_, st)| FileStat::of(&st)))
    }

    /// Lists the directory `dir` once and calls `each` for every entry named between `first`
    /// and `last` (inclusive, compared as bytes) that is not a directory: a regular file with
    /// its size, mtime and mode from one `statat` (no symlink followed), anything else (a
    /// symlink, a special file) with `None`. What a re-run's quick check of a whole run of
    /// files needs: one listing and a `statat` per file, and no path resolved per file.
    ///
    /// Returns `Ok(false)`, having called `each` for nothing, when `dir` is missing or not a
    /// directory, or when this receiver made it (nothing is in it that it did not put there).
    pub fn stat_range(
        &self,
        dir: &RelPath,
        first: &[u8],
        last: &[u8],
        mut each: impl FnMut(&[u8], Option<FileStat>),
    ) -> Result<bool, StoreError> {
        let op = "list directory";
        if !dir.is_root() && self.is_fresh_dir(dir) {
            return Ok(false);
        }
        let fd = match self.resolve_dir(dir, Missing::Absent) {
            Ok(Some(fd)) => fd,
            Ok(None) | Err(StoreError::NotADirectory { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        let listing = rustix::fs::Dir::read_from(&*fd).map_err(|e| self.err(e, dir, op))?;
        for entry in listing {
            let entry = entry.map_err(|e| self.err(e, dir, op))?;
            let name = entry.file_name().to_bytes();
            if name < first || name > last || name == b"." || name == b".." {
                continue;
            }
            match entry.file_type() {
                FileType::Directory => continue,
                FileType::RegularFile | FileType::Unknown => {}
                _ => {
                    each(name, None);
                    continue;
                }
            }
            match rustix::fs::statat(&*fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if is_file(&st) => each(name, Some(FileStat::of(&st))),
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {}
                Ok(_) => each(name, None),
                // Gone between the listing and the stat: as if it had not been listed.
                Err(Errno::NOENT) => {}
                Err(e) => return Err(self.err(e, dir, "inspect existing file")),
            }
        }
        Ok(true)
    }

    /// The confined parent directory of `rel` and the `statat` of `rel` in it, when a regular
    /// file is there; `None` for anything else or nothing.
    fn stat_regular(
        &self,
        rel: &RelPath,
        op: &'static str,
    ) -> Result<Option<(std::sync::Arc<OwnedFd>, Stat)>, StoreError> {
        let Some((parent, name)) = rel.parent_and_name() else {
            return Ok(None);
        };
        let parent = match self.resolve_dir(&parent, Missing::Absent) {
            Ok(Some(fd)) => fd,
            Ok(None) | Err(StoreError::NotADirectory { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        match rustix::fs::statat(&*parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if is_file(&st) => Ok(Some((parent, st))),
            Ok(_) | Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(self.err(e, rel, op)),
        }
    }

    /// Sets the owner, mode, attributes and mtime (as [`Root::install_file`] does) of the
    /// existing regular file at `rel`, in place. Anything else there is an error.
    ///
    /// Snapshots: a file with more than one link may share its inode with a hard-link
    /// snapshot, whose copy must not change, and that snapshot may belong to a root above
    /// this one (or be a `cp -al` backup nobody told us about), so [`Root::has_snapshots`]
    /// cannot be the test: every multiply-linked file is treated so. Such a file is left as
    /// it is when it already has the wanted metadata; otherwise it is first copied to a new
    /// inode in staging (`FICLONE` where the file system can, else `copy_file_range` of its
    /// data, holes kept), with its owner (where permitted), mode and extended attributes,
    /// then `attrs` are applied to the copy and it is renamed over `rel`. The other names of
    /// the old inode (the snapshot's, or other names of a live hard-link group, which the
    /// engine links to the new file again as it installs them) keep the old version.
    pub fn set_file_meta(&self, rel: &RelPath, attrs: &Attrs) -> Result<(), StoreError> {
        let op = "set the metadata of";
        let Some((fd, st)) = self.open_regular(rel, OFlags::RDONLY, op)? else {
            return Err(StoreError::Io {
                path: self.display_path(rel),
                op,
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "no regular file is there (missing, a directory, a symbolic link or a special file)",
                ),
            });
        };
        if st.st_nlink > 1 {
            if meta_matches(&fd, &st, attrs) {
                // Nothing to change: what applying would still do is count a dropped setuid.
                let _ = attrs.mode();
                return Ok(());
            }
            let (name, copy) = self.private_copy(rel, fd.as_fd(), &st)?;
            let shown = || self.staging.path.join(&name);
            let applied = attrs.apply_fd(copy.as_fd(), &shown);
            return match applied {
                Ok(()) => self.replace_from_staging(rel, &name),
                Err(e) => {
                    let _ = self.staging.remove(&name);
                    Err(e)
                }
            };
        }
        attrs.apply_fd(fd.as_fd(), &|| self.display_path(rel))
    }

    /// A copy of the regular file `fd` (at `rel`, `st` its stat) as a new inode in staging:
    /// its data (cloned where the file system can, else copied with holes kept), then its
    /// owner (where permitted), mode and extended attributes (best effort). Its times are the
    /// caller's to set. Returns the staging name and the copy, open for writing.
    pub(crate) fn private_copy(
        &self,
        rel: &RelPath,
        fd: BorrowedFd<'_>,
        st: &Stat,
    ) -> Result<(String, OwnedFd), StoreError> {
        let staging = &self.staging;
        let flags =
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let (name, copy) = staging.create_unique("create staging file", |name| {
            rustix::fs::openat(&staging.dir, name, flags, Mode::from_raw_mode(0o600))
        })?;
        let size = u64::try_from(st.st_size).unwrap_or(0);
        let made = clone_or_copy(fd, copy.as_fd(), size)
            .map_err(|e| {
                self.err(
                    e,
                    rel,
                    "copy to a new inode (it may be shared with a snapshot)",
                )
            })
            .and_then(|_| {
                owner_of(copy.as_fd(), st);
                rustix::fs::fchmod(&copy, Mode::from_raw_mode(st.st_mode & 0o7777))
                    .map_err(|e| staging.err(e, &name, "set the mode of"))?;
                copy_xattrs(fd, copy.as_fd());
                Ok(())
            });
        match made {
            Ok(()) => Ok((name, copy)),
            Err(e) => {
                let _ = staging.remove(&name);
                Err(e)
            }
        }
    }

    /// Renames the staging file `name` over `rel` (the parent must exist); on failure the
    /// staging file is removed.
    pub(crate) fn replace_from_staging(&self, rel: &RelPath, name: &str) -> Result<(), StoreError> {
        let renamed = self.parent_of(rel).and_then(|(parent, final_name)| {
            rustix::fs::renameat(&self.staging.dir, name, &*parent, final_name)
                .map_err(|e| self.err(e, rel, "install (rename into place)"))
        });
        if renamed.is_err() {
            let _ = self.staging.remove(name);
        }
        renamed
    }

    /// The fd and stat of the regular file at `rel`, or `None` when something else (or
    /// nothing) is there.
    pub(crate) fn open_regular(
        &self,
        rel: &RelPath,
        flags: OFlags,
        op: &'static str,
    ) -> Result<Option<(OwnedFd, Stat)>, StoreError> {
        // Look before opening: opening a device or FIFO can have effects (a tape rewinds, a
        // FIFO blocks), so only a regular file is opened at all.
        let Some((parent, _)) = self.stat_regular(rel, op)? else {
            return Ok(None);
        };
        let Some((_, name)) = rel.parent_and_name() else {
            return Ok(None);
        };
        // NONBLOCK in case it was swapped for a FIFO since; the fstat below catches that.
        let flags = flags | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(&*parent, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT | Errno::LOOP) => return Ok(None),
            Err(e) => return Err(self.err(e, rel, op)),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| self.err(e, rel, op))?;
        Ok(is_file(&st).then_some((fd, st)))
    }
}

#[cfg(test)]
mod tests {
    use crate::{RelPath, Root};

    #[test]
    fn only_directories_made_in_this_session_are_taken_for_empty() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("old")).unwrap();
        std::fs::write(tmp.path().join("old/f"), b"x").unwrap();
        let root = Root::open(tmp.path()).unwrap();
        let rel = |s: &str| RelPath::parse(s.as_bytes()).unwrap();
        // A directory that was there: its files are looked at.
        root.create_dir_all(&rel("old")).unwrap();
        assert!(!root.is_fresh_dir(&rel("old")));
        assert_eq!(root.stat_existing(&rel("old/f")).unwrap().unwrap().size, 1);
        // Made now (with its parent): nothing to find there, without asking.
        root.create_dir_all(&rel("new/deeper")).unwrap();
        assert!(root.is_fresh_dir(&rel("new/deeper")));
        assert!(root.stat_existing(&rel("new/deeper/f")).unwrap().is_none());
        // A new session forgets: the directory is looked at again like any other.
        std::fs::write(tmp.path().join("new/deeper/f"), b"yz").unwrap();
        root.forget_cached_dirs();
        root.create_dir_all(&rel("new/deeper")).unwrap();
        assert!(!root.is_fresh_dir(&rel("new/deeper")));
        assert_eq!(
            root.stat_existing(&rel("new/deeper/f"))
                .unwrap()
                .unwrap()
                .size,
            2
        );
    }
}
