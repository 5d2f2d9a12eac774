//! The tree registry: a small text record kept per destination subtree, beside (never inside)
//! the user's files, so that whoever can reach a host learns what a tree is for (a
//! protection workflow records there which relationships replicate into it and which
//! management server owns them).
//!
//! One file per subtree in `<top root>/.haul/registry/`, named by the BLAKE3 hex of the
//! subtree's path from the top root (as leases are), holding a `subtree=` line (escaped as in
//! `snapshot`) and then the record, which must be UTF-8 text of at most [`MAX_RECORD`] bytes.
//! The store does not read the record; its owner does. Files are written atomically
//! (temporary name, `fsync`, `rename`), under an exclusive `flock` on
//! `.haul/registry/.lock` (shared to read), so a reader sees one record or the next, never a
//! mix. Records live in `.haul`, so a push with `--delete`, a snapshot, a listing or a
//! manifest of the tree never sees them, and a mirror of the source never removes them.
//!
//! Paths given and returned are relative to the [`Root`] called; records of subtrees outside
//! it (a root opened at a grant's sub-root) are not listed.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use crate::error::StoreError;
use crate::fsutil::{Missing, open_child_dir};
use crate::path::RelPath;
use crate::root::Root;
use crate::snapshot::{MAX_TEXT, escape, names, read_text, unescape, write_atomic};

const DIR: &[u8] = b"registry";
const LOCK: &str = ".lock";
/// The longest record accepted, in bytes (the file also holds its subtree line).
pub const MAX_RECORD: usize = MAX_TEXT - (8 << 10);

fn file_name(top_rel: &RelPath) -> String {
    blake3::hash(top_rel.as_bytes()).to_hex().to_string()
}

struct Locked {
    dir: OwnedFd,
    _lock: OwnedFd,
}

impl Root {
    /// The record kept for `subtree`, if any.
    pub fn registry_get(&self, subtree: &RelPath) -> Result<Option<String>, StoreError> {
        let Some(locked) = self.lock_registry(false, Missing::Absent)? else {
            return Ok(None);
        };
        let top = self.prefix.join(subtree);
        Ok(self
            .read_record(&locked.dir, &file_name(&top))?
            .filter(|(t, _)| *t == top)
            .map(|(_, record)| record))
    }

    /// Replaces the record kept for `subtree` with `record` (UTF-8 text, at most
    /// [`MAX_RECORD`] bytes); an empty `record` removes it. The subtree need not exist.
    pub fn registry_put(&self, subtree: &RelPath, record: &str) -> Result<(), StoreError> {
        const OP: &str = "write the registry record of";
        if record.len() > MAX_RECORD {
            return Err(StoreError::Io {
                path: self.display_path(subtree),
                op: OP,
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("the record is longer than {MAX_RECORD} bytes"),
                ),
            });
        }
        let missing = if record.is_empty() {
            Missing::Absent
        } else {
            Missing::Create
        };
        let Some(locked) = self.lock_registry(true, missing)? else {
            return Ok(()); // removing from a registry never made
        };
        let top = self.prefix.join(subtree);
        let name = file_name(&top);
        if record.is_empty() {
            return match rustix::fs::unlinkat(&locked.dir, name.as_str(), AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => Ok(()),
                Err(e) => Err(self.registry_err(e, &name, "remove the registry record")),
            };
        }
        let text = format!("subtree={}\n{record}", escape(top.as_bytes()));
        write_atomic(&locked.dir, &name, text.as_bytes())
            .map_err(|e| self.registry_err(e, &name, "write the registry record"))
    }

    /// Every record under this root, by subtree (relative to this root).
    pub fn registry_list(&self) -> Result<Vec<(RelPath, String)>, StoreError> {
        let Some(locked) = self.lock_registry(false, Missing::Absent)? else {
            return Ok(Vec::new());
        };
        let listing =
            names(&locked.dir).map_err(|e| self.registry_err(e, "", "list the registry"))?;
        let mut out = Vec::new();
        for name in listing {
            let Ok(name) = String::from_utf8(name) else {
                continue;
            };
            if name.len() != 64 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue; // the lock, temporary files
            }
            let Some((top, record)) = self.read_record(&locked.dir, &name)? else {
                continue;
            };
            if file_name(&top) != name {
                continue;
            }
            if let Some(rel) = top.strip_prefix(&self.prefix) {
                out.push((rel, record));
            }
        }
        out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        Ok(out)
    }

    fn read_record(
        &self,
        dir: &OwnedFd,
        name: &str,
    ) -> Result<Option<(RelPath, String)>, StoreError> {
        let text =
            read_text(dir, name).map_err(|e| self.registry_err(e, name, "read the registry"))?;
        let Some(text) = text else { return Ok(None) };
        let Some((first, record)) = text.split_once('\n') else {
            return Ok(None);
        };
        let top = first
            .strip_prefix("subtree=")
            .and_then(unescape)
            .and_then(|b| RelPath::parse(&b).ok());
        Ok(top.map(|top| (top, record.to_owned())))
    }

    fn registry_path(&self) -> PathBuf {
        self.top.haul_path.join("registry")
    }

    fn registry_err(&self, e: Errno, name: &str, op: &'static str) -> StoreError {
        StoreError::from_errno(
            e,
            self.registry_path().join(name),
            &self.staging.root_path,
            op,
        )
    }

    fn lock_registry(
        &self,
        exclusive: bool,
        missing: Missing,
    ) -> Result<Option<Locked>, StoreError> {
        let shown = || self.registry_path();
        let Some(dir) = open_child_dir(
            &self.top.haul,
            DIR,
            missing,
            &shown,
            &self.staging.root_path,
        )?
        else {
            return Ok(None);
        };
        let lock = rustix::fs::openat(
            &dir,
            LOCK,
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| self.registry_err(e, LOCK, "open the lock file"))?;
        let op = if exclusive {
            FlockOperation::LockExclusive
        } else {
            FlockOperation::LockShared
        };
        rustix::fs::flock(&lock, op).map_err(|e| self.registry_err(e, LOCK, "lock"))?;
        Ok(Some(Locked { dir, _lock: lock }))
    }
}
