//! A small, bounded cache of open directory fds keyed by their path under the root.
//!
//! Why: resolving a parent walks every component with `openat`, and a tree of a million
//! files in a few thousand directories would otherwise re-walk the same components for each
//! file. Why it is safe: a cached fd was itself reached without following any symlink, and an
//! fd keeps naming the same directory even if someone later renames or replaces the path, so
//! a cache hit can never lead outside the root. A hit on a directory that has since been
//! deleted is dropped; otherwise the bound is the only eviction (least recently used).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How many directory fds to keep open per [`crate::Root`].
pub(crate) const CAPACITY: usize = 64;

/// How long a liveness check of a cached directory holds: a deleted destination is noticed
/// within this, and a million files in a few thousand directories cost one `fstat` per
/// directory per interval instead of one per file.
const LIVE_FOR: Duration = Duration::from_secs(1);

pub(crate) struct DirCache {
    /// Per path: the fd, its last use (for eviction), when it was last seen live, and whether
    /// this process made it (see [`DirCache::is_fresh`]).
    entries: HashMap<Vec<u8>, (Arc<OwnedFd>, u64, Instant, bool)>,
    /// Monotonic use counter: the entry with the smallest stamp is the least recently used.
    clock: u64,
}

impl DirCache {
    pub(crate) fn new() -> DirCache {
        DirCache {
            entries: HashMap::with_capacity(CAPACITY + 1),
            clock: 0,
        }
    }

    /// The fd for `key` (the '/'-joined relative path), marking it recently used. An entry
    /// whose directory has been deleted since it was cached (a deleted directory has no links
    /// left) is dropped and missed: an administrator who removes a destination between pushes
    /// gets it recreated, not written into the void.
    ///
    /// `recheck`: look again even if the directory was seen live less than [`LIVE_FOR`] ago
    /// (creating directories always does, so a destination removed behind a running receiver
    /// is made again; lookups of a file's parent trust a recent check: creating or linking a
    /// file in a removed directory fails, it is never silently lost).
    pub(crate) fn get_live(&mut self, key: &[u8], recheck: bool) -> Option<Arc<OwnedFd>> {
        // One lookup: every file of a million-file tree asks for its parent.
        self.clock += 1;
        let clock = self.clock;
        let (fd, used, seen, _) = self.entries.get_mut(key)?;
        *used = clock;
        let now = Instant::now();
        if !recheck && now.duration_since(*seen) < LIVE_FOR {
            return Some(Arc::clone(fd));
        }
        match rustix::fs::fstat(&**fd) {
            Ok(st) if st.st_nlink > 0 => {
                *seen = now;
                Some(Arc::clone(fd))
            }
            _ => {
                self.entries.remove(key);
                None
            }
        }
    }

    /// Whether the directory cached for `key` was made by this process (`insert`'s `fresh`).
    pub(crate) fn is_fresh(&self, key: &[u8]) -> bool {
        self.entries.get(key).is_some_and(|e| e.3)
    }

    /// Caches `fd` for `key`; `fresh`: this process made the directory just now.
    pub(crate) fn insert(&mut self, key: &[u8], fd: Arc<OwnedFd>, fresh: bool) {
        self.clock += 1;
        if !self.entries.contains_key(key) && self.entries.len() >= CAPACITY {
            // A linear scan over 64 entries is cheaper than keeping an ordered list in sync.
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used, _, _))| *used)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
        // Just opened by the caller: live now.
        self.entries
            .insert(key.to_vec(), (fd, self.clock, Instant::now(), fresh));
    }

    /// Drops `key` and every entry below it: the directory was renamed away, so its cached fd
    /// (which follows the directory, not the name) must no longer answer for the name.
    pub(crate) fn forget_under(&mut self, key: &[u8]) {
        self.entries.retain(|k, _| {
            !(k.starts_with(key) && (k.len() == key.len() || k.get(key.len()) == Some(&b'/')))
        });
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd() -> Arc<OwnedFd> {
        let dir = std::fs::File::open("/").unwrap();
        Arc::new(OwnedFd::from(dir))
    }

    #[test]
    fn evicts_least_recently_used_and_stays_bounded() {
        let mut cache = DirCache::new();
        for i in 0..CAPACITY {
            cache.insert(format!("d{i}").as_bytes(), fd(), false);
        }
        // Touch d0 so that d1 becomes the oldest.
        assert!(cache.get_live(b"d0", false).is_some());
        cache.insert(b"new", fd(), true);
        assert!(cache.is_fresh(b"new") && !cache.is_fresh(b"d0"));
        assert_eq!(cache.len(), CAPACITY);
        assert!(cache.get_live(b"d0", false).is_some());
        assert!(cache.get_live(b"d1", false).is_none());
        assert!(cache.get_live(b"new", false).is_some());
    }

    #[test]
    fn forget_under_drops_the_subtree_only() {
        let mut cache = DirCache::new();
        for key in ["a", "a/b", "a/b/c", "ab", "b/a"] {
            cache.insert(key.as_bytes(), fd(), false);
        }
        cache.forget_under(b"a");
        for key in ["a", "a/b", "a/b/c"] {
            assert!(cache.get_live(key.as_bytes(), false).is_none(), "{key}");
        }
        assert!(cache.get_live(b"ab", false).is_some());
        assert!(cache.get_live(b"b/a", false).is_some());
    }
}
