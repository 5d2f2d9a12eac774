//! [`Attrs`]: everything applied to an entry besides its data: mode, mtime, owner, extended
//! attributes; and [`NotAppliedCounter`], the count of what the receiver could not apply.
//!
//! Order matters, and is the same everywhere: owner, then mode, then extended attributes,
//! then mtime. The kernel clears setuid/setgid on a chown and `security.capability` on a
//! write or a chown, so a file's data must be complete and its owner set before its mode and
//! attributes, and the mtime goes last because setting attributes does not change it but a
//! later write would.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use haul_proto::{Meta, NotApplied, Xattr};
use rustix::fs::{Gid, Uid, XattrFlags};
use rustix::io::Errno;

use crate::error::StoreError;
use crate::fsutil::mtime;

/// What to apply to an entry besides its data (see the module docs for the order).
#[derive(Clone, Debug, Default)]
pub struct Attrs {
    /// Permission bits and mtime.
    pub meta: Meta,
    /// The owner and group to set (local numbers); `None` leaves what the entry was made with.
    pub owner: Option<(u32, u32)>,
    /// Keep setuid/setgid from `meta.mode`; otherwise they are dropped (and counted).
    pub special_bits: bool,
    /// `Some`: afterwards the entry's extended attributes are exactly these, within what may
    /// be set (`user.*` and `system.posix_acl_*` always, `security.*` and `trusted.*` only with
    /// `privileged_xattrs`); extras in those namespaces are removed. `None`: left alone.
    pub xattrs: Option<Vec<Xattr>>,
    /// `security.*` and `trusted.*` may be set.
    pub privileged_xattrs: bool,
    /// Leave the modification time at the time the data was written, instead of the
    /// source's: for a file whose data is not yet durable (see [`Root::settle_times`]). A
    /// quick check compares size and mtime, so until the source's mtime is set a file whose
    /// data a power cut lost can never pass for the source's.
    ///
    /// [`Root::settle_times`]: crate::Root::settle_times
    pub keep_write_time: bool,
    /// Where to count what could not be applied.
    pub report: Option<Arc<NotAppliedCounter>>,
}

impl From<Meta> for Attrs {
    fn from(meta: Meta) -> Attrs {
        Attrs {
            meta,
            ..Attrs::default()
        }
    }
}

/// Counts of what a session could not apply (see [`haul_proto::NotApplied`]).
#[derive(Debug, Default)]
pub struct NotAppliedCounter {
    owners: AtomicU64,
    special_bits: AtomicU64,
    devices: AtomicU64,
    xattrs: AtomicU64,
}

impl NotAppliedCounter {
    /// The counts so far.
    pub fn snapshot(&self) -> NotApplied {
        NotApplied {
            owners: self.owners.load(Ordering::Relaxed),
            special_bits: self.special_bits.load(Ordering::Relaxed),
            devices: self.devices.load(Ordering::Relaxed),
            xattrs: self.xattrs.load(Ordering::Relaxed),
        }
    }
    /// Counts owners not set.
    pub fn add_owners(&self, n: u64) {
        self.owners.fetch_add(n, Ordering::Relaxed);
    }
    /// Counts setuid/setgid bits dropped.
    pub fn add_special_bits(&self, n: u64) {
        self.special_bits.fetch_add(n, Ordering::Relaxed);
    }
    /// Counts device nodes not made.
    pub fn add_devices(&self, n: u64) {
        self.devices.fetch_add(n, Ordering::Relaxed);
    }
    /// Counts extended attributes not set.
    pub fn add_xattrs(&self, n: u64) {
        self.xattrs.fetch_add(n, Ordering::Relaxed);
    }
}

impl Attrs {
    fn count(&self, f: impl FnOnce(&NotAppliedCounter)) {
        if let Some(r) = &self.report {
            f(r);
        }
    }

    /// The mode to set: setuid/setgid only when allowed (a drop is counted once per call).
    pub(crate) fn mode(&self) -> rustix::fs::Mode {
        let mode = self.meta.mode & 0o7777;
        if !self.special_bits && mode & 0o6000 != 0 {
            self.count(|r| r.add_special_bits(1));
        }
        rustix::fs::Mode::from_raw_mode(mode & if self.special_bits { 0o7777 } else { 0o1777 })
    }

    /// Sets the owner of `name` in `dir` without following a symlink, counting (not failing)
    /// what this process may not set. The errno and the operation on any other failure.
    pub(crate) fn chown_at(
        &self,
        dir: &std::os::fd::OwnedFd,
        name: &str,
    ) -> Result<(), (Errno, &'static str)> {
        let Some((uid, gid)) = self.owner else {
            return Ok(());
        };
        match rustix::fs::chownat(
            dir,
            name,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        ) {
            Ok(()) => Ok(()),
            Err(Errno::PERM | Errno::ACCESS | Errno::INVAL) => {
                self.count(|r| r.add_owners(1));
                Ok(())
            }
            Err(e) => Err((e, "set the owner of")),
        }
    }

    /// Applies owner, mode, attributes and mtime to an open file or directory. `shown` names
    /// it in errors.
    pub(crate) fn apply_fd(
        &self,
        fd: BorrowedFd<'_>,
        shown: &dyn Fn() -> PathBuf,
    ) -> Result<(), StoreError> {
        self.apply_fd_known(fd, None, shown)
    }

    /// [`Attrs::apply_fd`] for a file whose mode is known to be `seen` already (a fresh file):
    /// the chmod is skipped when nothing would change it.
    pub(crate) fn apply_fd_known(
        &self,
        fd: BorrowedFd<'_>,
        seen: Option<u32>,
        shown: &dyn Fn() -> PathBuf,
    ) -> Result<(), StoreError> {
        let err = |e: Errno, op| StoreError::Io {
            path: shown(),
            op,
            source: e.into(),
        };
        if let Some((uid, gid)) = self.owner {
            match rustix::fs::fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid))) {
                Ok(()) => {}
                Err(Errno::PERM | Errno::ACCESS | Errno::INVAL) => self.count(|r| r.add_owners(1)),
                Err(e) => return Err(err(e, "set the owner of")),
            }
        }
        let mode = self.mode();
        if self.owner.is_some() || seen != Some(mode.as_raw_mode()) {
            rustix::fs::fchmod(fd, mode).map_err(|e| err(e, "set the mode of"))?;
        }
        if let Some(want) = &self.xattrs {
            self.apply_xattrs(&XattrTarget::Fd(fd), want)
                .map_err(|e| err(e, "set the extended attributes of"))?;
        }
        if self.keep_write_time {
            return Ok(());
        }
        rustix::fs::futimens(fd, &mtime(&self.meta))
            .map_err(|e| err(e, "set the modification time of"))
    }

    /// Makes the attributes of `target` the wanted ones, within what may be set.
    pub(crate) fn apply_xattrs(
        &self,
        target: &XattrTarget<'_>,
        want: &[Xattr],
    ) -> Result<(), Errno> {
        let settable = |name: &[u8]| {
            name.starts_with(b"user.")
                || name.starts_with(b"system.posix_acl_")
                || (self.privileged_xattrs
                    && (name.starts_with(b"security.") || name.starts_with(b"trusted.")))
        };
        let have = match target.read_all() {
            Ok(have) => have,
            Err(e) if unsupported(e) => {
                let n = want.len() as u64;
                if n > 0 {
                    self.count(|r| r.add_xattrs(n));
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        for x in &have {
            if settable(&x.name) && !want.iter().any(|w| w.name == x.name) {
                match target.remove(&x.name) {
                    Ok(()) | Err(Errno::NODATA) => {}
                    Err(e) if unsupported(e) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        for w in want {
            if have.iter().any(|h| h.name == w.name && h.value == w.value) {
                continue;
            }
            if !settable(&w.name) {
                self.count(|r| r.add_xattrs(1));
                continue;
            }
            match target.set(&w.name, &w.value) {
                Ok(()) => {}
                Err(e) if unsupported(e) => self.count(|r| r.add_xattrs(1)),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Errors that mean "this file system, namespace or privilege does not allow it": counted,
/// not fatal.
fn unsupported(e: Errno) -> bool {
    matches!(
        e,
        Errno::OPNOTSUPP | Errno::PERM | Errno::ACCESS | Errno::INVAL
    ) || e == Errno::NOSYS
}

/// Where attributes are read and set: an open fd, or a path not followed (symlinks).
pub(crate) enum XattrTarget<'a> {
    Fd(BorrowedFd<'a>),
    Path(PathBuf),
}

impl XattrTarget<'_> {
    /// Every attribute, sorted by name.
    pub(crate) fn read_all(&self) -> Result<Vec<Xattr>, Errno> {
        let mut names = vec![0u8; 64 << 10];
        let n = match self {
            XattrTarget::Fd(fd) => rustix::fs::flistxattr(fd.as_fd(), &mut names[..])?,
            XattrTarget::Path(p) => rustix::fs::llistxattr(p, &mut names[..])?,
        };
        let mut out = Vec::new();
        let mut value = vec![0u8; haul_proto::MAX_XATTR_VALUE as usize];
        for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
            let got = match self {
                XattrTarget::Fd(fd) => rustix::fs::fgetxattr(fd.as_fd(), name, &mut value[..]),
                XattrTarget::Path(p) => rustix::fs::lgetxattr(p, name, &mut value[..]),
            };
            match got {
                Ok(len) => out.push(Xattr {
                    name: bytes_of(name),
                    value: bytes_of(&value[..len]),
                }),
                Err(Errno::NODATA) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn set(&self, name: &[u8], value: &[u8]) -> Result<(), Errno> {
        match self {
            XattrTarget::Fd(fd) => {
                rustix::fs::fsetxattr(fd.as_fd(), name, value, XattrFlags::empty())
            }
            XattrTarget::Path(p) => rustix::fs::lsetxattr(p, name, value, XattrFlags::empty()),
        }
    }

    fn remove(&self, name: &[u8]) -> Result<(), Errno> {
        match self {
            XattrTarget::Fd(fd) => rustix::fs::fremovexattr(fd.as_fd(), name),
            XattrTarget::Path(p) => rustix::fs::lremovexattr(p, name),
        }
    }
}

fn bytes_of(b: &[u8]) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(b)
}
