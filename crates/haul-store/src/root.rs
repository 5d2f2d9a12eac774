//! [`Root`]: every operation on the receiver's tree, confined to the root.
//!
//! Confinement: a parent directory is reached from the root's fd one component at a time with
//! `openat(O_DIRECTORY | O_NOFOLLOW)`, and the final name is acted on with an `*at()` call
//! that does not follow it either. No string path is ever built and opened, so neither a
//! symlink planted on the target nor a racing rename can send a write outside the root.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;

use crate::attrs::{Attrs, XattrTarget};
use crate::dircache::DirCache;
use crate::error::StoreError;
use crate::fsutil::{
    Missing, mode_bits, mtime, not_found, open_child_dir, open_or_make_child_dir, remove_flat_dir,
};
use crate::partial_dir::PartialDir;
use crate::path::{RESERVED, RelPath};
use crate::staging::{Place, StagingDir, StagingFile};

/// What is at a path, as seen without following symlinks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (not followed).
    Symlink,
    /// A named pipe.
    Fifo,
    /// A Unix socket node.
    Socket,
    /// A character device.
    CharDev,
    /// A block device.
    BlockDev,
    /// Anything else the kernel reports.
    Other,
}

impl FileKind {
    /// The kind of a raw `st_mode`.
    pub fn of_mode(mode: u32) -> FileKind {
        match FileType::from_raw_mode(mode) {
            FileType::RegularFile => FileKind::File,
            FileType::Directory => FileKind::Dir,
            FileType::Symlink => FileKind::Symlink,
            FileType::Fifo => FileKind::Fifo,
            FileType::Socket => FileKind::Socket,
            FileType::CharacterDevice => FileKind::CharDev,
            FileType::BlockDevice => FileKind::BlockDev,
            _ => FileKind::Other,
        }
    }
}

/// An open receiver root. See the crate docs for the confinement rules.
///
/// `Send + Sync`; every method takes `&self`, so the engine's blocking threads share one.
pub struct Root {
    /// The root's path, for messages only (never opened again after [`Root::open`]).
    path: PathBuf,
    dir: Arc<OwnedFd>,
    /// The *top* root's staging directory, also for sub-roots, so install stays a rename
    /// within one file system.
    pub(crate) staging: Arc<StagingDir>,
    pub(crate) cache: Mutex<DirCache>,
    /// The top root's `.haul` and `.haul/partial`, shared by every sub-root.
    pub(crate) top: Arc<TopDirs>,
    /// Where this root sits below the top root (empty for the top root itself): partials are
    /// keyed by the destination's path from the top, whichever sub-root opens them.
    pub(crate) prefix: RelPath,
}

/// The top root's own directories.
pub(crate) struct TopDirs {
    /// `<top root>/.haul`, holding the throughput history.
    pub(crate) haul: OwnedFd,
    pub(crate) haul_path: PathBuf,
    pub(crate) partial: Arc<PartialDir>,
    /// `<top root>/.haul/chunks`, the chunk-hash cache, opened (or made) on first use.
    pub(crate) chunks: OnceLock<OwnedFd>,
    /// A snapshot is known to exist in `.haul/snapshots` (see `snapshot`): set when one is
    /// made or seen, so [`Root::has_snapshots`] is an atomic load from then on.
    pub(crate) snapshots_seen: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Root {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Root").field("path", &self.path).finish()
    }
}

impl Root {
    /// Opens the receiver root at `path`, which must exist and be a directory, and creates
    /// `<root>/.haul/staging` and `<root>/.haul/partial` (mode 0700) if missing.
    pub fn open(path: &Path) -> Result<Root, StoreError> {
        // The root itself is the administrator's choice, so it may be reached via a symlink.
        let dir = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::NOTDIR => StoreError::NotADirectory {
                path: path.to_path_buf(),
            },
            e => StoreError::from_errno(e, path.to_path_buf(), path, "open the root directory"),
        })?;
        let haul_path = path.join(OsStr::from_bytes(RESERVED));
        let haul = open_child_dir(&dir, RESERVED, Missing::Create, &|| haul_path.clone(), path)?
            .ok_or_else(|| not_found(haul_path.clone(), "create directory"))?;
        // Before anything is read from or made in it: another user who can write there could
        // plant or swap partial files, journals and undo records.
        check_state_dir(&haul, &haul_path)?;
        let staging_path = haul_path.join("staging");
        let staging = open_child_dir(
            &haul,
            b"staging",
            Missing::Create,
            &|| staging_path.clone(),
            path,
        )?
        .ok_or_else(|| not_found(staging_path.clone(), "create directory"))?;
        let partial_path = haul_path.join("partial");
        let partial = open_child_dir(
            &haul,
            b"partial",
            Missing::Create,
            &|| partial_path.clone(),
            path,
        )?
        .ok_or_else(|| not_found(partial_path.clone(), "create directory"))?;
        Ok(Root {
            path: path.to_path_buf(),
            dir: Arc::new(dir),
            staging: Arc::new(StagingDir::new(staging, staging_path, path.to_path_buf())),
            cache: Mutex::new(DirCache::new()),
            top: Arc::new(TopDirs {
                haul,
                haul_path,
                partial: Arc::new(PartialDir::new(partial, partial_path, path.to_path_buf())),
                chunks: OnceLock::new(),
                snapshots_seen: std::sync::atomic::AtomicBool::new(false),
            }),
            prefix: RelPath::root(),
        })
    }

    /// Removes this root's `.haul` state directory if nothing in it is needed any more (no
    /// staging or partial files; the throughput history and chunk-hash cache go with it),
    /// keeping the root's own mtime. For `haul copy`, whose state lives inside the user's destination only until the
    /// copy completes. Works through the directory handles opened at [`Root::open`], so a
    /// `.haul` swapped for a symlink meanwhile can never make it remove anything elsewhere.
    /// Returns true if the state directory is gone.
    pub fn remove_state_dir(&self) -> bool {
        if !self.prefix.is_root() {
            return false;
        }
        let Ok(before) = rustix::fs::fstat(&*self.dir) else {
            return false;
        };
        let haul = &self.top.haul;
        let _ = rustix::fs::unlinkat(haul, "staging", AtFlags::REMOVEDIR);
        let _ = rustix::fs::unlinkat(haul, "partial", AtFlags::REMOVEDIR);
        // Non-empty only if a patch could not be undone yet: then `.haul` stays too.
        let _ = rustix::fs::unlinkat(haul, "undo", AtFlags::REMOVEDIR);
        let _ = rustix::fs::unlinkat(haul, "history", AtFlags::empty());
        // The chunk-hash cache (see `chunk_cache`) holds records and temp files only.
        remove_flat_dir(haul, b"chunks");
        // By name in the root: if `.haul` is now a symlink this fails (ENOTDIR) and nothing
        // outside is touched; a non-empty directory is left alone (ENOTEMPTY).
        if rustix::fs::unlinkat(&*self.dir, ".haul", AtFlags::REMOVEDIR).is_err() {
            return false;
        }
        let times = Timestamps {
            last_access: Timespec {
                tv_sec: before.st_atime,
                tv_nsec: before.st_atime_nsec as _,
            },
            last_modification: Timespec {
                tv_sec: before.st_mtime,
                tv_nsec: before.st_mtime_nsec as _,
            },
        };
        let _ = rustix::fs::futimens(&*self.dir, &times);
        true
    }

    /// Removes staging files left behind by receivers that are no longer running (a killed
    /// process cannot clean up after itself). Returns how many were removed.
    pub fn sweep_staging(&self) -> Result<u64, StoreError> {
        self.staging.sweep_dead()
    }

    /// The root's path as given to [`Root::open`] (or joined by [`Root::subdir`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `root/rel`, for messages.
    pub fn display_path(&self, rel: &RelPath) -> PathBuf {
        if rel.is_root() {
            return self.path.clone();
        }
        self.path.join(OsStr::from_bytes(rel.as_bytes()))
    }

    /// A root for the sub-directory `rel`, created with mkdir -p semantics and confined like
    /// everything else. Its staging stays in the top root's `.haul` (same file system).
    pub fn subdir(&self, rel: &RelPath) -> Result<Root, StoreError> {
        let dir = self.resolve_dir(rel, Missing::Create)?;
        let dir = dir.ok_or_else(|| not_found(self.display_path(rel), "create directory"))?;
        Ok(Root {
            path: self.display_path(rel),
            dir,
            staging: Arc::clone(&self.staging),
            cache: Mutex::new(DirCache::new()),
            top: Arc::clone(&self.top),
            prefix: self.prefix.join(rel),
        })
    }

    /// What is at `rel`, without following symlinks; `None` if nothing is there (or a
    /// component on the way is missing or not a directory). A symlink on the way is an error.
    pub fn kind_of(&self, rel: &RelPath) -> Result<Option<FileKind>, StoreError> {
        let Some((parent, name)) = rel.parent_and_name() else {
            return Ok(Some(FileKind::Dir));
        };
        let parent = match self.resolve_dir(&parent, Missing::Absent) {
            Ok(Some(fd)) => fd,
            Ok(None) | Err(StoreError::NotADirectory { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        match rustix::fs::statat(&*parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(FileKind::of_mode(st.st_mode))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(self.err(e, rel, "inspect")),
        }
    }

    /// mkdir -p, one component at a time. An existing component that is a symlink or not a
    /// directory is an error naming it (never followed). New directories get mode 0o700 until
    /// [`Root::set_dir_meta`] is called.
    pub fn create_dir_all(&self, rel: &RelPath) -> Result<(), StoreError> {
        self.resolve_dir(rel, Missing::Create).map(|_| ())
    }

    /// A new staging file (O_CREAT|O_EXCL, 0600, unique name) of `size` bytes, all holes.
    pub fn create_staging(&self, size: u64) -> Result<StagingFile, StoreError> {
        StagingFile::create(Arc::clone(&self.staging), size)
    }

    /// A staging file of `size` bytes for `rel`, anonymous in `rel`'s directory where the file
    /// system allows (see the `staging` module), else a named one in `.haul/staging`. `mode`
    /// is the mode it will be installed with. The parent must already exist.
    pub fn create_staging_for(
        &self,
        rel: &RelPath,
        size: u64,
        mode: u32,
    ) -> Result<StagingFile, StoreError> {
        let (parent, _) = self.parent_of(rel)?;
        self.create_staging_in(parent, rel, size, mode)
    }

    /// Like [`Root::create_staging_for`], for a file whose name was found to hold nothing (a
    /// fresh copy): the file is created under its final name and written in place, which costs
    /// the file system less per file than a staging file linked or renamed there (see the
    /// `staging` module). Should the name be taken after all, the file is staged as usual.
    /// Dropping the result uninstalled removes the file again.
    pub fn create_fresh_for(
        &self,
        rel: &RelPath,
        size: u64,
        mode: u32,
    ) -> Result<StagingFile, StoreError> {
        let (parent, file_name) = self.parent_of(rel)?;
        let staging = Arc::clone(&self.staging);
        let (name, perm) = (
            self.receiving_name(rel),
            mode_bits(mode, false).as_raw_mode(),
        );
        match StagingFile::create_in_place(staging, parent.clone(), file_name, size, name, perm)? {
            Some(file) => Ok(file),
            None => self.create_staging_in(parent, rel, size, mode),
        }
    }

    /// [`Root::create_staging_for`] with `rel`'s parent already resolved.
    fn create_staging_in(
        &self,
        parent: Arc<OwnedFd>,
        rel: &RelPath,
        size: u64,
        mode: u32,
    ) -> Result<StagingFile, StoreError> {
        let staging = Arc::clone(&self.staging);
        let (name, perm) = (
            self.receiving_name(rel),
            mode_bits(mode, false).as_raw_mode(),
        );
        match StagingFile::create_anonymous(staging, parent, size, name, perm)? {
            Some(file) => Ok(file),
            None => self.create_staging(size),
        }
    }

    /// How messages name a file while it is received.
    fn receiving_name(&self, rel: &RelPath) -> String {
        format!("{} (being received)", self.display_path(rel).display())
    }

    /// Sets the mode (permission bits and sticky; setuid/setgid dropped) and the mtime (ns) of
    /// `file`, then renames it over `rel`, replacing a file or symlink there; a directory
    /// there is [`StoreError::IsADirectory`]. The parent must already exist.
    pub fn install_file(
        &self,
        mut file: StagingFile,
        rel: &RelPath,
        attrs: &Attrs,
    ) -> Result<(), StoreError> {
        let (parent, name) = self.parent_of(rel)?;
        let seen = file.fix_size()?;
        let shown = || file.staging.path.join(&file.name);
        attrs.apply_fd_known(file.fd.as_fd(), seen, &shown)?;
        match &file.place {
            Place::Anonymous => {
                self.link_anonymous(&file.fd, &parent, rel, name)?;
                file.finished = true;
                return Ok(());
            }
            // Created under this very name (by `create_fresh_for`, for this `rel`): in place.
            Place::Final { .. } => {
                file.finished = true;
                return Ok(());
            }
            Place::Staging => {}
        }
        rustix::fs::renameat(&file.staging.dir, file.name.as_str(), &*parent, name)
            .map_err(|e| self.err(e, rel, "install (rename into place)"))?;
        // Installed: the name in staging no longer exists, so Drop must not remove anything.
        file.finished = true;
        Ok(())
    }

    /// Gives an anonymous staging file its final name in `parent` (resolved again, confined
    /// like every path; normally the directory it was made in). `linkat` never replaces, so an existing file is replaced by linking under a
    /// temporary name first and renaming that over it (atomic for readers, as always).
    fn link_anonymous(
        &self,
        fd: &OwnedFd,
        parent: &OwnedFd,
        rel: &RelPath,
        name: &[u8],
    ) -> Result<(), StoreError> {
        let link = |to: &[u8]| {
            // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; /proc/self/fd works for anyone.
            rustix::fs::linkat(fd, "", parent, to, AtFlags::EMPTY_PATH).or_else(|_| {
                let proc = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(fd));
                rustix::fs::linkat(
                    rustix::fs::CWD,
                    proc.as_str(),
                    parent,
                    to,
                    AtFlags::SYMLINK_FOLLOW,
                )
            })
        };
        match link(name) {
            Ok(()) => return Ok(()),
            Err(Errno::EXIST) => {}
            Err(errno) => return Err(self.err(errno, rel, "install (link into place)")),
        }
        let pid = rustix::process::getpid().as_raw_nonzero();
        for n in 0u32..1000 {
            let temp = format!(".haul-install-{pid}-{n}");
            match link(temp.as_bytes()) {
                Ok(()) => {
                    return rustix::fs::renameat(parent, temp.as_str(), parent, name).map_err(
                        |e| {
                            let _ = rustix::fs::unlinkat(parent, temp.as_str(), AtFlags::empty());
                            self.err(e, rel, "install (rename into place)")
                        },
                    );
                }
                Err(Errno::EXIST) => continue,
                Err(errno) => return Err(self.err(errno, rel, "install (link into place)")),
            }
        }
        Err(self.err(Errno::EXIST, rel, "install (link into place)"))
    }

    /// Creates a symlink to `target` (raw bytes, never followed or checked) in staging, sets
    /// its mtime without following it, and renames it over `rel`.
    pub fn install_symlink(
        &self,
        rel: &RelPath,
        target: &[u8],
        attrs: &Attrs,
    ) -> Result<(), StoreError> {
        if target.is_empty() || target.contains(&0) {
            return Err(StoreError::Io {
                path: self.display_path(rel),
                op: "create symbolic link",
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the link target sent by the peer is empty or contains a NUL byte",
                ),
            });
        }
        let (parent, name) = self.parent_of(rel)?;
        let staging = &self.staging;
        let (staged, ()) = staging.create_unique("create staging symlink", |name| {
            rustix::fs::symlinkat(target, &staging.dir, name)
        })?;
        let result = self
            .symlink_attrs(&staging.dir, &staged, attrs)
            .map_err(|(e, op)| staging.err(e, &staged, op))
            .and_then(|()| {
                rustix::fs::renameat(&staging.dir, staged.as_str(), &*parent, name)
                    .map_err(|e| self.err(e, rel, "install (rename into place)"))
            });
        if result.is_err() {
            // Best effort, as for a dropped StagingFile: nothing is left behind.
            let _ = staging.remove(&staged);
        }
        result
    }

    /// Owner, attributes and mtime of a symlink staged as `name` in `dir` (its mode is
    /// meaningless on Linux). Attributes on a symlink are set through `/proc/self/fd`, and only
    /// when the source's link has some.
    fn symlink_attrs(
        &self,
        dir: &OwnedFd,
        name: &str,
        attrs: &Attrs,
    ) -> Result<(), (Errno, &'static str)> {
        attrs.chown_at(dir, name)?;
        if let Some(want) = attrs.xattrs.as_ref().filter(|w| !w.is_empty()) {
            let proc = PathBuf::from(format!(
                "/proc/self/fd/{}/{name}",
                std::os::fd::AsRawFd::as_raw_fd(dir)
            ));
            attrs
                .apply_xattrs(&XattrTarget::Path(proc), want)
                .map_err(|e| (e, "set the extended attributes of"))?;
        }
        rustix::fs::utimensat(dir, name, &mtime(&attrs.meta), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| (e, "set the modification time of"))
    }

    /// Sets a directory's owner, mode, attributes and mtime; called after its contents are
    /// installed (adding an entry would change the mtime again).
    pub fn set_dir_meta(&self, rel: &RelPath, attrs: &Attrs) -> Result<(), StoreError> {
        let dir = self
            .resolve_dir(rel, Missing::Absent)?
            .ok_or_else(|| not_found(self.display_path(rel), "set the metadata of"))?;
        attrs.apply_fd(dir.as_fd(), &|| self.display_path(rel))
    }

    /// Flushes the file system holding the root (`syncfs`): after it returns, everything
    /// installed so far survives a power loss.
    pub fn sync(&self) -> Result<(), StoreError> {
        rustix::fs::syncfs(&*self.dir)
            .map_err(|e| self.err(e, &RelPath::root(), "flush (syncfs) the file system of"))
    }

    /// Flushes the file system holding `rel` (a directory under the root) when it is not the
    /// root's own: a destination that is a mount point below the root is flushed too. Nothing
    /// to do for a file or a missing path.
    pub fn sync_dir(&self, rel: &RelPath) -> Result<(), StoreError> {
        // A destination that is a single file lives in a directory of the root's own.
        let dir = match self.resolve_dir(rel, Missing::Absent) {
            Ok(Some(dir)) => dir,
            Ok(None) | Err(StoreError::NotADirectory { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let (here, there) = (rustix::fs::fstat(&*self.dir), rustix::fs::fstat(&*dir));
        if let (Ok(here), Ok(there)) = (here, there)
            && here.st_dev == there.st_dev
        {
            return Ok(());
        }
        rustix::fs::syncfs(&*dir).map_err(|e| self.err(e, rel, "flush (syncfs) the file system of"))
    }

    /// Gives files installed with [`Attrs::keep_write_time`] their source modification time,
    /// once the caller has made their data durable ([`Root::sync`]): the last step of an
    /// install, so that only a file whose data survived can look like the source's. A file
    /// that is gone or is no longer a regular file (replaced since) is skipped.
    pub fn settle_times(&self, files: &[(RelPath, haul_proto::Meta)]) -> Result<(), StoreError> {
        for (rel, meta) in files {
            let (parent, name) = match self.parent_of(rel) {
                Ok(found) => found,
                Err(StoreError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                    continue;
                }
                Err(e) => return Err(e),
            };
            match rustix::fs::statat(&*parent, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {}
                Ok(_) | Err(Errno::NOENT) => continue,
                Err(e) => return Err(self.err(e, rel, "inspect")),
            }
            match rustix::fs::utimensat(&*parent, name, &mtime(meta), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(self.err(e, rel, "set the modification time of")),
            }
        }
        Ok(())
    }

    /// Bytes available to an unprivileged user on the root's file system
    /// (`f_bavail * f_frsize`).
    pub fn available_bytes(&self) -> Result<u64, StoreError> {
        let st = rustix::fs::fstatvfs(&*self.dir)
            .map_err(|e| self.err(e, &RelPath::root(), "query the free space of"))?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }

    pub(crate) fn err(&self, errno: Errno, rel: &RelPath, op: &'static str) -> StoreError {
        StoreError::from_errno(errno, self.display_path(rel), &self.staging.root_path, op)
    }

    /// The parent directory's fd and the final name; the parent must exist.
    pub(crate) fn parent_of<'r>(
        &self,
        rel: &'r RelPath,
    ) -> Result<(Arc<OwnedFd>, &'r [u8]), StoreError> {
        let Some((parent, name)) = rel.parent_and_name() else {
            return Err(StoreError::IsADirectory {
                path: self.path.clone(),
            });
        };
        let fd = self
            .resolve_dir(&parent, Missing::Absent)?
            .ok_or_else(|| not_found(self.display_path(&parent), "open parent directory"))?;
        Ok((fd, name))
    }

    /// Forgets every cached directory fd. A receiver calls this when a session starts, so a
    /// directory renamed or replaced between sessions is looked up afresh.
    pub fn forget_cached_dirs(&self) {
        *self
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = DirCache::new();
    }

    /// The fd of directory `dir`, walking from the longest cached ancestor (or the root).
    /// `Ok(None)` if a component is missing and `missing` is `Absent`.
    pub(crate) fn resolve_dir(
        &self,
        dir: &RelPath,
        missing: Missing,
    ) -> Result<Option<Arc<OwnedFd>>, StoreError> {
        if dir.is_root() {
            return Ok(Some(Arc::clone(&self.dir)));
        }
        let bytes = dir.as_bytes();
        let (mut fd, mut start) = (Arc::clone(&self.dir), 0);
        {
            let mut cache = self
                .cache
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let recheck = missing == Missing::Create;
            if let Some(hit) = cache.get_live(bytes, recheck) {
                return Ok(Some(hit));
            }
            let slashes = bytes.iter().enumerate().rev().filter(|(_, b)| **b == b'/');
            for (i, _) in slashes {
                if let Some(hit) = cache.get_live(&bytes[..i], recheck) {
                    (fd, start) = (hit, i + 1);
                    break;
                }
            }
        }
        // The lock is not held while walking, so threads resolving different directories do
        // not wait on each other's syscalls.
        let mut end = start;
        let mut fresh = false;
        for name in bytes[start..].split(|&b| b == b'/') {
            end += name.len();
            let shown = || self.path.join(OsStr::from_bytes(&bytes[..end]));
            match open_or_make_child_dir(&fd, name, missing, &shown, &self.staging.root_path)? {
                Some((child, made)) => {
                    fd = Arc::new(child);
                    // Everything below a directory made here was made here too.
                    fresh |= made;
                }
                None => return Ok(None),
            }
            end += 1; // the '/' after this name
        }
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        cache.insert(bytes, Arc::clone(&fd), fresh);
        Ok(Some(fd))
    }

    /// True if `dir` was made by this process since the directory cache was last cleared
    /// (and is still cached): nothing can be in it but what this process put there, since a
    /// new directory is mode 0700 until [`Root::set_dir_meta`]. False when unsure.
    pub(crate) fn is_fresh_dir(&self, dir: &RelPath) -> bool {
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .is_fresh(dir.as_bytes())
    }
}

/// Refuses a `.haul` state directory that is owned by a user other than the effective one
/// (root may use one owned by anyone) or that group or others may write, the way ssh refuses
/// an exposed `~/.ssh`. Checked with `fstat` on the directory already opened, so it is the
/// directory then used that was checked. Those haul makes are 0700 and owned by their maker.
fn check_state_dir(haul: &OwnedFd, haul_path: &Path) -> Result<(), StoreError> {
    let st = rustix::fs::fstat(haul).map_err(|e| {
        StoreError::from_errno(e, haul_path.to_path_buf(), haul_path, "inspect directory")
    })?;
    let euid = rustix::process::geteuid();
    let mode = st.st_mode & 0o7777;
    let quoted = shell_word(haul_path);
    let mut problems = Vec::new();
    let mut fixes = Vec::new();
    if !euid.is_root() && st.st_uid != euid.as_raw() {
        problems.push(format!(
            "it is owned by uid {}, not by uid {} that haul runs as",
            st.st_uid,
            euid.as_raw()
        ));
        fixes.push(format!(
            "`chown -R {} {quoted}` (as root) if the state in it is yours, or remove it if it \
             is not (haul makes a new one)",
            euid.as_raw()
        ));
    }
    if mode & 0o022 != 0 {
        problems.push(format!(
            "it is writable by {} (mode {mode:04o})",
            match mode & 0o022 {
                0o020 => "its group",
                0o002 => "others",
                _ => "its group and others",
            }
        ));
        fixes.push(format!("`chmod go-w {quoted}`"));
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(StoreError::UnsafeStateDir {
        path: haul_path.to_path_buf(),
        reason: format!(
            "{}, so another user could tamper with the partial files and journals in it; run \
             {} and run again",
            problems.join(" and "),
            fixes.join(", then ")
        ),
    })
}

/// `path` as one shell word, for commands quoted in messages.
fn shell_word(path: &Path) -> String {
    let mut text = path.display().to_string();
    if text.starts_with('-') {
        text.insert_str(0, "./");
    }
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+,:@%=".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        text
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}
