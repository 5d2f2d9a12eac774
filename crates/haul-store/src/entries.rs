//! Entries other than regular files, and the tree operations `--delete` needs: stat of any
//! entry, its extended attributes, FIFOs, sockets and device nodes, hard links, listing,
//! confined recursive removal, and the registry of renamed-aside copies that removal spares.
//!
//! Everything is confined like the rest of the store: parents are reached from the root's fd
//! with `O_NOFOLLOW`, and the final name is acted on with an `*at()` call that never follows
//! it. Removal descends with `openat(O_DIRECTORY | O_NOFOLLOW)` from the parent's fd, so a
//! directory swapped for a symlink mid-way is unlinked as a link, never followed.

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};

use haul_proto::{EntryKind, Xattr};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::attrs::{Attrs, XattrTarget};
use crate::error::StoreError;
use crate::fsutil::{Missing, mtime};
use crate::path::{RESERVED, RelPath};
use crate::root::{FileKind, Root};

/// What [`Root::stat_entry`] reports of any entry (from `lstat`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryStat {
    /// What it is.
    pub kind: FileKind,
    /// Size in bytes (a symlink's: its target's length).
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds.
    pub mtime_sec: i64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: u32,
    /// Device of the file system.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Hard links.
    pub nlink: u64,
    /// Device number (devices).
    pub rdev: u64,
}

/// What [`Root::install_hard_link`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkOutcome {
    /// The name already was that file: nothing touched.
    Unchanged,
    /// The name was made (or replaced) as a link.
    Linked,
}

/// A directory's names with their kinds.
pub type Listing = Vec<(Vec<u8>, FileKind)>;

/// The registry of aside copies in the top root's `.haul`.
const ASIDE_REGISTRY: &str = "aside";

impl Root {
    /// `lstat` of whatever is at `rel`, confined; `None` if nothing is there.
    pub fn stat_entry(&self, rel: &RelPath) -> Result<Option<EntryStat>, StoreError> {
        let st = if let Some((parent, name)) = rel.parent_and_name() {
            let parent = match self.resolve_dir(&parent, Missing::Absent) {
                Ok(Some(fd)) => fd,
                Ok(None) | Err(StoreError::NotADirectory { .. }) => return Ok(None),
                Err(e) => return Err(e),
            };
            match rustix::fs::statat(&*parent, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::NOENT) => return Ok(None),
                Err(e) => return Err(self.err(e, rel, "inspect")),
            }
        } else {
            let dir = self.resolve_dir(rel, Missing::Absent)?;
            let Some(dir) = dir else { return Ok(None) };
            rustix::fs::fstat(&*dir).map_err(|e| self.err(e, rel, "inspect"))?
        };
        Ok(Some(EntryStat {
            kind: FileKind::of_mode(st.st_mode),
            size: u64::try_from(st.st_size).unwrap_or(0),
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            mtime_sec: st.st_mtime,
            mtime_nsec: u32::try_from(st.st_mtime_nsec).unwrap_or(0),
            dev: st.st_dev,
            ino: st.st_ino,
            nlink: st.st_nlink,
            rdev: st.st_rdev,
        }))
    }

    /// The extended attributes of the file or directory at `rel`, sorted by name (empty where
    /// the file system has none). A symlink, special file or nothing there: empty.
    pub fn read_xattrs(&self, rel: &RelPath) -> Result<Vec<Xattr>, StoreError> {
        let fd = match self.kind_of(rel)? {
            Some(FileKind::Dir) => self.resolve_dir(rel, Missing::Absent)?.map(|d| {
                rustix::io::dup(&*d).map_err(|e| self.err(e, rel, "read the attributes of"))
            }),
            Some(FileKind::File) => self
                .open_regular(rel, OFlags::RDONLY, "read the attributes of")?
                .map(|(fd, _)| Ok(fd)),
            _ => None,
        };
        let Some(fd) = fd else { return Ok(Vec::new()) };
        let fd = fd?;
        match XattrTarget::Fd(fd.as_fd()).read_all() {
            Ok(x) => Ok(x),
            Err(Errno::OPNOTSUPP) => Ok(Vec::new()),
            Err(e) => Err(self.err(e, rel, "read the attributes of")),
        }
    }

    /// Makes a FIFO, socket node or (only if `devices`) device node at `rel` with `attrs`:
    /// made in staging and renamed over `rel` (a directory there is an error). A device
    /// without `devices` is counted as not applied and nothing is made: `Ok(false)`.
    pub fn install_special(
        &self,
        rel: &RelPath,
        kind: EntryKind,
        rdev: u64,
        devices: bool,
        attrs: &Attrs,
    ) -> Result<bool, StoreError> {
        let file_type = match kind {
            EntryKind::Fifo => FileType::Fifo,
            EntryKind::Socket => FileType::Socket,
            EntryKind::CharDev => FileType::CharacterDevice,
            EntryKind::BlockDev => FileType::BlockDevice,
            _ => {
                return Err(StoreError::Io {
                    path: self.display_path(rel),
                    op: "create a special file",
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "not a special kind",
                    ),
                });
            }
        };
        let is_device = matches!(kind, EntryKind::CharDev | EntryKind::BlockDev);
        if is_device && !devices {
            if let Some(r) = &attrs.report {
                r.add_devices(1);
            }
            return Ok(false);
        }
        let (parent, name) = self.parent_of(rel)?;
        let staging = &self.staging;
        let dev = if is_device { rdev } else { 0 };
        let (staged, ()) = staging.create_unique("create a special file in staging", |n| {
            rustix::fs::mknodat(&staging.dir, n, file_type, Mode::from_raw_mode(0o600), dev)
        })?;
        // Owner, mode, attributes and mtime on the node, through a path handle (opening a FIFO
        // or a device for real could block or act).
        let result = (|| {
            let fd = rustix::fs::openat(
                &staging.dir,
                staged.as_str(),
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| staging.err(e, &staged, "open"))?;
            self.node_attrs(&staging.dir, &staged, &fd, attrs)
                .map_err(|(e, op)| staging.err(e, &staged, op))?;
            rustix::fs::renameat(&staging.dir, staged.as_str(), &*parent, name)
                .map_err(|e| self.err(e, rel, "install (rename into place)"))
        })();
        if result.is_err() {
            let _ = staging.remove(&staged);
        }
        result.map(|()| true)
    }

    /// Applies attrs to a node staged as `name` in `dir` (`fd` an `O_PATH` handle of it).
    fn node_attrs(
        &self,
        dir: &OwnedFd,
        name: &str,
        fd: &OwnedFd,
        attrs: &Attrs,
    ) -> Result<(), (Errno, &'static str)> {
        let proc = std::path::PathBuf::from(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(fd)
        ));
        attrs.chown_at(dir, name)?;
        rustix::fs::chmodat(dir, name, attrs.mode(), AtFlags::empty())
            .map_err(|e| (e, "set the mode of"))?;
        if let Some(want) = attrs.xattrs.as_ref().filter(|w| !w.is_empty()) {
            attrs
                .apply_xattrs(&XattrTarget::Path(proc), want)
                .map_err(|e| (e, "set the extended attributes of"))?;
        }
        rustix::fs::utimensat(dir, name, &mtime(&attrs.meta), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| (e, "set the modification time of"))
    }

    /// Makes `rel` another name of the regular file at `target` (both in this root). If `rel`
    /// already is that file, nothing is touched. Whatever else is at `rel` (not a directory)
    /// is replaced atomically.
    pub fn install_hard_link(
        &self,
        rel: &RelPath,
        target: &RelPath,
    ) -> Result<LinkOutcome, StoreError> {
        let refused = |why: &str| StoreError::Io {
            path: self.display_path(rel),
            op: "make a hard link",
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{why}: {}", self.display_path(target).display()),
            ),
        };
        let Some(to) = self.stat_entry(target)? else {
            return Err(refused("the first name of the link group is missing"));
        };
        if to.kind != FileKind::File {
            return Err(refused(
                "a hard link must name a regular file, and this is not one",
            ));
        }
        if let Some(at) = self.stat_entry(rel)? {
            if at.dev == to.dev && at.ino == to.ino {
                return Ok(LinkOutcome::Unchanged);
            }
            if at.kind == FileKind::Dir {
                return Err(StoreError::IsADirectory {
                    path: self.display_path(rel),
                });
            }
        }
        let (tparent, tname) = self.parent_of(target)?;
        let (parent, name) = self.parent_of(rel)?;
        match rustix::fs::linkat(&*tparent, tname, &*parent, name, AtFlags::empty()) {
            Ok(()) => return Ok(LinkOutcome::Linked),
            Err(Errno::EXIST) => {}
            Err(e) => return Err(self.err(e, rel, "make a hard link")),
        }
        let pid = rustix::process::getpid().as_raw_nonzero();
        for n in 0u32..1000 {
            let temp = format!(".haul-link-{pid}-{n}");
            match rustix::fs::linkat(&*tparent, tname, &*parent, temp.as_str(), AtFlags::empty()) {
                Ok(()) => {
                    return rustix::fs::renameat(&*parent, temp.as_str(), &*parent, name)
                        .map(|()| LinkOutcome::Linked)
                        .map_err(|e| {
                            let _ = rustix::fs::unlinkat(&*parent, temp.as_str(), AtFlags::empty());
                            self.err(e, rel, "make a hard link (rename into place)")
                        });
                }
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(self.err(e, rel, "make a hard link")),
            }
        }
        Err(self.err(Errno::EXIST, rel, "make a hard link"))
    }

    /// The names in directory `dir` and what each is (`.haul` at the top root never listed);
    /// `None` if `dir` is absent or not a directory.
    pub fn list_names(&self, dir: &RelPath) -> Result<Option<Listing>, StoreError> {
        let fd = match self.resolve_dir(dir, Missing::Absent) {
            Ok(Some(fd)) => fd,
            Ok(None) | Err(StoreError::NotADirectory { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let at_top = self.prefix.is_root() && dir.is_root();
        let names = list(&fd).map_err(|e| self.err(e, dir, "list directory"))?;
        Ok(Some(
            names
                .into_iter()
                .filter(|(n, _)| !(at_top && n.as_slice() == RESERVED))
                .collect(),
        ))
    }

    /// Removes `rel` and, for a directory, everything under it, never following a symlink.
    /// Returns how many entries went (`rel` included). The root itself and the top root's
    /// `.haul` are refused.
    pub fn remove_tree(&self, rel: &RelPath) -> Result<u64, StoreError> {
        self.walk_tree(rel, true)
    }

    /// How many entries [`Root::remove_tree`] would remove; removes nothing.
    pub fn count_tree(&self, rel: &RelPath) -> Result<u64, StoreError> {
        self.walk_tree(rel, false)
    }

    fn walk_tree(&self, rel: &RelPath, remove: bool) -> Result<u64, StoreError> {
        let op = if remove { "remove" } else { "count" };
        let Some((parent_rel, name)) = rel.parent_and_name() else {
            return Err(self.err(Errno::PERM, rel, "remove the root itself"));
        };
        if self.prefix.is_root() && parent_rel.is_root() && name == RESERVED {
            return Err(self.err(Errno::PERM, rel, "remove the receiver's state directory"));
        }
        let parent = match self.resolve_dir(&parent_rel, Missing::Absent) {
            Ok(Some(fd)) => fd,
            Ok(None) | Err(StoreError::NotADirectory { .. }) => return Ok(0),
            Err(e) => return Err(e),
        };
        if remove {
            self.forget_cached_under_path(rel);
        }
        remove_in(&parent, name, remove).map_err(|e| self.err(e, rel, op))
    }

    fn forget_cached_under_path(&self, rel: &RelPath) {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .forget_under(rel.as_bytes());
    }

    /// Records a renamed-aside copy (top-relative path) so `--delete` never removes it.
    pub(crate) fn record_aside(&self, rel: &RelPath) -> Result<(), StoreError> {
        let top = self.prefix.join(rel);
        let fd = rustix::fs::openat(
            &self.top.haul,
            ASIDE_REGISTRY,
            OFlags::WRONLY | OFlags::CREATE | OFlags::APPEND | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| self.err(e, rel, "record the renamed-aside copy"))?;
        let mut file = std::fs::File::from(fd);
        let mut record = top.to_bytes();
        record.push(0);
        file.write_all(&record)
            .and_then(|()| file.sync_data())
            .map_err(|source| StoreError::Io {
                path: self.top.haul_path.join(ASIDE_REGISTRY),
                op: "record the renamed-aside copy",
                source,
            })
    }

    /// True if `rel` is, or lies under, a recorded renamed-aside copy.
    pub fn is_aside(&self, rel: &RelPath) -> bool {
        let Ok(fd) = rustix::fs::openat(
            &self.top.haul,
            ASIDE_REGISTRY,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            return false;
        };
        let mut data = Vec::new();
        if std::io::Read::read_to_end(&mut std::fs::File::from(fd), &mut data).is_err() {
            return false;
        }
        let top = self.prefix.join(rel).to_bytes();
        data.split(|&b| b == 0)
            .filter(|r| !r.is_empty())
            .any(|r| top.as_slice() == r || (top.starts_with(r) && top.get(r.len()) == Some(&b'/')))
    }
}

/// The names in a directory (not `.`/`..`) with their kinds (`d_type`, else `lstat`).
fn list(dir: &OwnedFd) -> Result<Listing, Errno> {
    let fd = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut out = Vec::new();
    for entry in rustix::fs::Dir::new(fd)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let kind = match entry.file_type() {
            FileType::Unknown => match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => FileKind::of_mode(st.st_mode),
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(e),
            },
            t => FileKind::of_mode(t.as_raw_mode()),
        };
        out.push((name.to_vec(), kind));
    }
    Ok(out)
}

/// Removes (or counts) `name` in `parent` and all it holds.
fn remove_in(parent: &OwnedFd, name: &[u8], remove: bool) -> Result<u64, Errno> {
    let st = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(0),
        Err(e) => return Err(e),
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        if remove {
            match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(e),
            }
        }
        return Ok(1);
    }
    let dir = match rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        // Swapped for a symlink or a file since the stat: removed as what it is now.
        Err(Errno::NOTDIR | Errno::LOOP) => return remove_in(parent, name, remove),
        Err(e) => return Err(e),
    };
    let mut n = 1;
    for (child, _) in list(&dir)? {
        n += remove_in(&dir, &child, remove)?;
    }
    if remove {
        match rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
