//! Leases: a job's claim on a destination subtree, so two jobs (a replication run and a
//! restore from a snapshot, say) do not write the same files at once, and a job that died is
//! not waited for forever.
//!
//! One file per lease in `<top root>/.haul/leases/`, named by the BLAKE3 hex of the leased
//! subtree's path from the top root, holding `key=value` lines (values escaped as in
//! `snapshot`, so a holder or purpose with newlines cannot forge a line): `subtree`,
//! `holder`, `purpose`, `expires` and `taken` (Unix time in milliseconds). Files are written
//! atomically (temporary name, `fsync`, `rename`). Every operation holds an `flock` on
//! `.haul/leases/.lock` (exclusive to change, shared to read), so processes sharing a root,
//! and threads each with their own open, see one order of events.
//!
//! Two subtrees overlap when one is the other or lies inside it. A lease is taken when no
//! unexpired lease of another holder overlaps; overlapping expired leases of other holders
//! are taken over (removed: their holder is presumed dead). Expiry is the only way a dead
//! holder's lease goes, so the time to live is what a crashed job costs the next one.
//!
//! Paths in [`LeaseInfo`] are from the top root; the `subtree` and `path` arguments are, as
//! everywhere, relative to the [`Root`] called.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

use rustix::fs::{FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use crate::clock::now_ms;
use crate::error::StoreError;
use crate::fsutil::{Missing, not_found, open_child_dir};
use crate::path::RelPath;
use crate::root::Root;
use crate::snapshot::{escape, names, read_text, unescape, write_atomic};

const DIR: &[u8] = b"leases";
const LOCK: &str = ".lock";
/// The longest holder accepted, in bytes.
const MAX_HOLDER: usize = 1024;
/// The longest purpose accepted, in bytes.
const MAX_PURPOSE: usize = 4096;

/// One lease as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The leased subtree, from the top root (empty: all of it).
    pub subtree: RelPath,
    /// Who holds it (a job id, a host name: any text the holder chose).
    pub holder: String,
    /// What it is for, for messages.
    pub purpose: String,
    /// When it expires, Unix time in milliseconds.
    pub expires_unix_ms: u64,
    /// When it was first taken by this holder, Unix time in milliseconds (renewals keep it).
    pub taken_unix_ms: u64,
}

impl LeaseInfo {
    /// Whether it has expired at `now_unix_ms`.
    pub fn is_expired_at(&self, now_unix_ms: u64) -> bool {
        self.expires_unix_ms <= now_unix_ms
    }

    /// Whether it has expired now.
    pub fn is_expired(&self) -> bool {
        self.is_expired_at(now_ms())
    }

    fn to_text(&self) -> String {
        format!(
            "subtree={}\nholder={}\npurpose={}\nexpires={}\ntaken={}\n",
            escape(self.subtree.as_bytes()),
            escape(self.holder.as_bytes()),
            escape(self.purpose.as_bytes()),
            self.expires_unix_ms,
            self.taken_unix_ms,
        )
    }

    fn parse(text: &str) -> Option<LeaseInfo> {
        let (mut subtree, mut holder, mut purpose, mut expires, mut taken) =
            (None, None, None, None, None);
        let string = |v: &str| unescape(v).and_then(|b| String::from_utf8(b).ok());
        for (key, value) in text.lines().filter_map(|l| l.split_once('=')) {
            match key {
                "subtree" => subtree = unescape(value).and_then(|b| RelPath::parse(&b).ok()),
                "holder" => holder = string(value),
                "purpose" => purpose = string(value),
                "expires" => expires = value.parse().ok(),
                "taken" => taken = value.parse().ok(),
                _ => {}
            }
        }
        Some(LeaseInfo {
            subtree: subtree?,
            holder: holder?,
            purpose: purpose.unwrap_or_default(),
            expires_unix_ms: expires?,
            taken_unix_ms: taken.unwrap_or(0),
        })
    }
}

/// A lease just taken or renewed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The lease as now stored.
    pub info: LeaseInfo,
    /// The holder of an expired overlapping lease this one took over (the one on the same
    /// subtree if there was one, else the first found), whose job is presumed dead.
    pub took_over: Option<String>,
    /// The holder already held this very lease: it was renewed.
    pub renewed: bool,
}

/// Whether two subtrees (path bytes from the top root) overlap: one is, or holds, the other.
fn overlaps(a: &[u8], b: &[u8]) -> bool {
    let inside = |inner: &[u8], outer: &[u8]| {
        outer.is_empty()
            || inner == outer
            || (inner.starts_with(outer) && inner.get(outer.len()) == Some(&b'/'))
    };
    inside(a, b) || inside(b, a)
}

fn file_name(top_rel: &RelPath) -> String {
    blake3::hash(top_rel.as_bytes()).to_hex().to_string()
}

/// The leases directory and the held lock on it.
struct Locked {
    dir: OwnedFd,
    /// Held for as long as this lives (closing the fd releases the `flock`).
    _lock: OwnedFd,
}

impl Root {
    /// Takes a lease on `subtree` for `holder` (non-empty; any text, at most 1024 bytes) and
    /// `purpose` (at most 4096 bytes), expiring `ttl` from now. Refused with
    /// [`StoreError::Leased`] while another holder's unexpired lease overlaps it (on the same
    /// subtree, an ancestor or a descendant). Expired overlapping leases of other holders are
    /// taken over ([`Lease::took_over`]); the same holder taking the same subtree again
    /// renews its lease ([`Lease::renewed`]).
    pub fn take_lease(
        &self,
        subtree: &RelPath,
        holder: &str,
        purpose: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        self.check_lease_args(subtree, holder, purpose, "take a lease on")?;
        let locked = self
            .lock_leases(true, Missing::Create)?
            .ok_or_else(|| not_found(self.leases_path(), "create directory"))?;
        let top = self.prefix.join(subtree);
        let now = now_ms();
        let all = self.read_leases(&locked.dir)?;
        if let Some(other) = all.iter().find(|(_, l)| {
            l.holder != holder
                && !l.is_expired_at(now)
                && overlaps(l.subtree.as_bytes(), top.as_bytes())
        }) {
            return Err(self.leased(subtree, &other.1));
        }
        let mut took_over = None;
        let mut mine = None;
        for (name, lease) in &all {
            if !overlaps(lease.subtree.as_bytes(), top.as_bytes()) {
                continue;
            }
            if lease.holder == holder {
                if lease.subtree == top {
                    mine = Some(lease);
                }
                continue;
            }
            // Expired (checked above): its holder is presumed dead.
            match rustix::fs::unlinkat(&locked.dir, name.as_str(), rustix::fs::AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(self.lease_err(e, name, "remove the expired lease")),
            }
            if took_over.is_none() || lease.subtree == top {
                took_over = Some(lease.holder.clone());
            }
        }
        let info = LeaseInfo {
            subtree: top.clone(),
            holder: holder.to_owned(),
            purpose: purpose.to_owned(),
            expires_unix_ms: now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
            taken_unix_ms: mine.map_or(now, |m| m.taken_unix_ms),
        };
        self.write_lease(&locked.dir, &info)?;
        Ok(Lease {
            info,
            took_over,
            renewed: mine.is_some(),
        })
    }

    /// Extends `holder`'s lease on `subtree` to expire `ttl` from now (it may have expired
    /// meanwhile, as long as nobody took it over). [`StoreError::LeaseLost`] if the holder no
    /// longer holds it.
    pub fn renew_lease(
        &self,
        subtree: &RelPath,
        holder: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        self.check_lease_args(subtree, holder, "", "renew the lease on")?;
        let lost = || StoreError::LeaseLost {
            path: self.display_path(subtree),
            holder: holder.to_owned(),
        };
        let locked = self.lock_leases(true, Missing::Absent)?.ok_or_else(lost)?;
        let top = self.prefix.join(subtree);
        let name = file_name(&top);
        let Some(mut info) = self.read_lease(&locked.dir, &name)? else {
            return Err(lost());
        };
        if info.subtree != top || info.holder != holder {
            return Err(lost());
        }
        info.expires_unix_ms =
            now_ms().saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        self.write_lease(&locked.dir, &info)?;
        Ok(Lease {
            info,
            took_over: None,
            renewed: true,
        })
    }

    /// Gives up `holder`'s lease on `subtree`. Returns false, changing nothing, when
    /// `holder` holds no lease there (never took one, released it, or lost it; another
    /// holder's lease is left alone).
    pub fn release_lease(&self, subtree: &RelPath, holder: &str) -> Result<bool, StoreError> {
        let Some(locked) = self.lock_leases(true, Missing::Absent)? else {
            return Ok(false);
        };
        let top = self.prefix.join(subtree);
        let name = file_name(&top);
        match self.read_lease(&locked.dir, &name)? {
            Some(info) if info.subtree == top && info.holder == holder => {}
            _ => return Ok(false),
        }
        match rustix::fs::unlinkat(&locked.dir, name.as_str(), rustix::fs::AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(self.lease_err(e, &name, "release the lease")),
        }
    }

    /// Every stored lease, expired ones included, ordered by subtree. Unreadable lease files
    /// are left out (this is for display; [`Root::check_lease`] reports errors).
    pub fn leases(&self) -> Vec<LeaseInfo> {
        let Ok(Some(locked)) = self.lock_leases(false, Missing::Absent) else {
            return Vec::new();
        };
        let mut all: Vec<LeaseInfo> = self
            .read_leases(&locked.dir)
            .unwrap_or_default()
            .into_iter()
            .map(|(_, l)| l)
            .collect();
        all.sort_by(|a, b| a.subtree.as_bytes().cmp(b.subtree.as_bytes()));
        all
    }

    /// Refuses with [`StoreError::Leased`] when `path` lies in, or holds, a subtree leased
    /// by someone other than `holder` (`None`: by anyone) whose lease has not expired. Costs
    /// one `openat` when no lease was ever taken here, a shared `flock` and a read of every
    /// lease file otherwise: check once per job or directory, not per file.
    pub fn check_lease(&self, path: &RelPath, holder: Option<&str>) -> Result<(), StoreError> {
        let Some(locked) = self.lock_leases(false, Missing::Absent)? else {
            return Ok(());
        };
        let top = self.prefix.join(path);
        let now = now_ms();
        let all = self.read_leases(&locked.dir)?;
        match all.iter().find(|(_, l)| {
            Some(l.holder.as_str()) != holder
                && !l.is_expired_at(now)
                && overlaps(l.subtree.as_bytes(), top.as_bytes())
        }) {
            Some((_, lease)) => Err(self.leased(path, lease)),
            None => Ok(()),
        }
    }

    fn leased(&self, rel: &RelPath, lease: &LeaseInfo) -> StoreError {
        StoreError::Leased {
            path: self.display_path(rel),
            holder: lease.holder.clone(),
            purpose: lease.purpose.clone(),
            expires: lease.expires_unix_ms,
        }
    }

    fn check_lease_args(
        &self,
        subtree: &RelPath,
        holder: &str,
        purpose: &str,
        op: &'static str,
    ) -> Result<(), StoreError> {
        let why = if holder.is_empty() {
            "the holder is empty"
        } else if holder.len() > MAX_HOLDER {
            "the holder is longer than 1024 bytes"
        } else if purpose.len() > MAX_PURPOSE {
            "the purpose is longer than 4096 bytes"
        } else {
            return Ok(());
        };
        Err(StoreError::Io {
            path: self.display_path(subtree),
            op,
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, why),
        })
    }

    fn leases_path(&self) -> PathBuf {
        self.top.haul_path.join("leases")
    }

    fn lease_err(&self, e: Errno, name: &str, op: &'static str) -> StoreError {
        StoreError::from_errno(
            e,
            self.leases_path().join(name),
            &self.staging.root_path,
            op,
        )
    }

    /// Opens the leases directory (made if `missing` says so) and locks it; `None` when it
    /// does not exist (no lease was ever taken).
    fn lock_leases(&self, exclusive: bool, missing: Missing) -> Result<Option<Locked>, StoreError> {
        let shown = || self.leases_path();
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
        .map_err(|e| self.lease_err(e, LOCK, "open the lock file"))?;
        let op = if exclusive {
            FlockOperation::LockExclusive
        } else {
            FlockOperation::LockShared
        };
        rustix::fs::flock(&lock, op).map_err(|e| self.lease_err(e, LOCK, "lock"))?;
        Ok(Some(Locked { dir, _lock: lock }))
    }

    /// Every lease file in `dir` (by name) that parses and sits under its own name.
    fn read_leases(&self, dir: &OwnedFd) -> Result<Vec<(String, LeaseInfo)>, StoreError> {
        let listing = names(dir).map_err(|e| {
            StoreError::from_errno(e, self.leases_path(), &self.staging.root_path, "list")
        })?;
        let mut out = Vec::new();
        for name in listing {
            let Ok(name) = String::from_utf8(name) else {
                continue;
            };
            if name.len() != 64 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue; // the lock, temporary files, anything not ours
            }
            if let Some(info) = self.read_lease(dir, &name)? {
                out.push((name, info));
            }
        }
        Ok(out)
    }

    /// The lease stored as `name`, if it parses and `name` is its subtree's.
    fn read_lease(&self, dir: &OwnedFd, name: &str) -> Result<Option<LeaseInfo>, StoreError> {
        let text = read_text(dir, name).map_err(|e| self.lease_err(e, name, "read the lease"))?;
        Ok(text
            .as_deref()
            .and_then(LeaseInfo::parse)
            .filter(|info| file_name(&info.subtree) == name))
    }

    fn write_lease(&self, dir: &OwnedFd, info: &LeaseInfo) -> Result<(), StoreError> {
        let name = file_name(&info.subtree);
        write_atomic(dir, &name, info.to_text().as_bytes())
            .map_err(|e| self.lease_err(e, &name, "write the lease"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_is_by_whole_components() {
        assert!(overlaps(b"a", b"a"));
        assert!(overlaps(b"a", b"a/b"));
        assert!(overlaps(b"a/b/c", b"a"));
        assert!(overlaps(b"", b"x/y"));
        assert!(!overlaps(b"a", b"ab"));
        assert!(!overlaps(b"a/b", b"a/c"));
        assert!(!overlaps(b"ab/c", b"a"));
    }

    #[test]
    fn lease_text_round_trips_hostile_strings() {
        let info = LeaseInfo {
            subtree: RelPath::parse(b"dir/with\nnewline").unwrap(),
            holder: "evil\nsubtree=/etc\nexpires=99999999999999".into(),
            purpose: "back\\slash \u{1F600}\r\n".into(),
            expires_unix_ms: 5,
            taken_unix_ms: 3,
        };
        let text = info.to_text();
        assert_eq!(text.lines().count(), 5);
        assert_eq!(LeaseInfo::parse(&text).unwrap(), info);
    }
}
