//! Rename-aside: a repeated full migration moves the previous copy of a directory to
//! `name.1`, `name.2`, ... instead of overwriting it, so an administrator can fall back.

use std::io;
use std::os::fd::OwnedFd;

use rustix::fs::{AtFlags, OFlags, RenameFlags};
use rustix::io::Errno;

use crate::error::StoreError;
use crate::fsutil::Missing;
use crate::path::RelPath;
use crate::root::Root;

/// `N` if `entry` is `name.N` with `N` all ASCII digits.
fn aside_number(entry: &[u8], name: &[u8]) -> Option<u64> {
    let digits = entry.strip_prefix(name)?.strip_prefix(b".")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

impl Root {
    /// If `rel` exists (a directory, or anything: it is not followed), renames it to the first
    /// free `rel.1`, `rel.2`, ... in the same parent (never replacing anything) and returns the
    /// new path; `Ok(None)` if nothing is at `rel`. "First free" means a gap left by a removed
    /// `rel.2` is filled before `rel.4` is made.
    ///
    /// This root's cached directory fds for `rel` and below are forgotten. Other [`Root`]s
    /// (sub-roots made earlier inside `rel`, or roots with their own cache) still point at the
    /// moved directory: rename aside before making them, or call
    /// [`Root::forget_cached_dirs`] on them.
    pub fn rename_aside(&self, rel: &RelPath) -> Result<Option<RelPath>, StoreError> {
        let op = "rename aside";
        let Some((parent_rel, name)) = rel.parent_and_name() else {
            return Err(StoreError::Io {
                path: self.path().to_path_buf(),
                op,
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the root itself cannot be renamed aside",
                ),
            });
        };
        if self.kind_of(rel)?.is_none() {
            return Ok(None);
        }
        let (parent, _) = self.parent_of(rel)?;
        let mut n = 1u64;
        loop {
            let mut new_name = name.to_vec();
            new_name.extend_from_slice(format!(".{n}").as_bytes());
            let mut new_rel = parent_rel.clone();
            new_rel.push(&new_name).map_err(|source| StoreError::Path {
                rel: String::from_utf8_lossy(&new_name).into_owned(),
                source,
            })?;
            match rename_noreplace(&parent, name, &new_name) {
                Ok(()) => {
                    self.forget_cached_under(rel);
                    // Recorded, so that --delete never removes the old copy.
                    self.record_aside(&new_rel)?;
                    return Ok(Some(new_rel));
                }
                Err(Errno::EXIST | Errno::NOTEMPTY) => n += 1,
                Err(Errno::NOENT) => return Ok(None),
                Err(e) => return Err(self.err(e, rel, op)),
            }
        }
    }

    /// The existing aside copies of `rel` (`rel.N` for any `N` that parses), sorted by `N`.
    pub fn list_aside(&self, rel: &RelPath) -> Result<Vec<RelPath>, StoreError> {
        let op = "list the aside copies of";
        let Some((parent_rel, name)) = rel.parent_and_name() else {
            return Ok(Vec::new());
        };
        let parent = match self.resolve_dir(&parent_rel, Missing::Absent) {
            Ok(Some(fd)) => fd,
            Ok(None) | Err(StoreError::NotADirectory { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for (_, aside_name) in self.aside_entries(&parent, name, rel, op)? {
            let mut aside = parent_rel.clone();
            // A listed name is a valid single name (the directory held it).
            if aside.push(&aside_name).is_ok() {
                out.push(aside);
            }
        }
        Ok(out)
    }

    /// The `name.N` entries in `parent`, sorted by `N` (then by name: `x.7` before `x.07`).
    fn aside_entries(
        &self,
        parent: &OwnedFd,
        name: &[u8],
        rel: &RelPath,
        op: &'static str,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let fd = rustix::fs::openat(
            parent,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| self.err(e, rel, op))?;
        let dir = rustix::fs::Dir::new(fd).map_err(|e| self.err(e, rel, op))?;
        let mut entries = Vec::new();
        for entry in dir {
            let entry = entry.map_err(|e| self.err(e, rel, op))?;
            let entry_name = entry.file_name().to_bytes();
            if let Some(n) = aside_number(entry_name, name) {
                entries.push((n, entry_name.to_vec()));
            }
        }
        entries.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then(a.1.len().cmp(&b.1.len()))
                .then(a.1.cmp(&b.1))
        });
        Ok(entries)
    }

    fn forget_cached_under(&self, rel: &RelPath) {
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .forget_under(rel.as_bytes());
    }
}

/// Renames without ever replacing what is at `to`. Where `RENAME_NOREPLACE` is unsupported,
/// a look first (racy only against someone else creating `to` in the same instant).
fn rename_noreplace(parent: &OwnedFd, from: &[u8], to: &[u8]) -> Result<(), Errno> {
    match rustix::fs::renameat_with(parent, from, parent, to, RenameFlags::NOREPLACE) {
        Err(Errno::INVAL | Errno::NOSYS) => {
            match rustix::fs::statat(parent, to, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(_) => Err(Errno::EXIST),
                Err(Errno::NOENT) => rustix::fs::renameat(parent, from, parent, to),
                Err(e) => Err(e),
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::aside_number;

    #[test]
    fn only_name_dot_digits_counts() {
        assert_eq!(aside_number(b"po.1", b"po"), Some(1));
        assert_eq!(aside_number(b"po.007", b"po"), Some(7));
        assert_eq!(aside_number(b"po.12", b"po"), Some(12));
        for other in [
            &b"po"[..],
            b"po.",
            b"po.+1",
            b"po.1a",
            b"pox.1",
            b"po.1.2",
            b"p.1",
        ] {
            assert_eq!(aside_number(other, b"po"), None, "{}", other.escape_ascii());
        }
    }
}
