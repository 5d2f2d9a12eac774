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

/// How many directory fds to keep open per [`crate::Root`].
pub(crate) const CAPACITY: usize = 64;

pub(crate) struct DirCache {
    entries: HashMap<Vec<u8>, (Arc<OwnedFd>, u64)>,
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

    /// The fd for `key` (the '/'-joined relative path), marking it recently used.
    pub(crate) fn get(&mut self, key: &[u8]) -> Option<Arc<OwnedFd>> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(key).map(|(fd, used)| {
            *used = clock;
            Arc::clone(fd)
        })
    }

    /// Like [`get`](Self::get), but drops and misses an entry whose directory has been deleted
    /// since it was cached (a deleted directory has no links left): an administrator who
    /// removes a destination between pushes gets it recreated, not written into the void.
    pub(crate) fn get_live(&mut self, key: &[u8]) -> Option<Arc<OwnedFd>> {
        let fd = self.get(key)?;
        match rustix::fs::fstat(&*fd) {
            Ok(st) if st.st_nlink > 0 => Some(fd),
            _ => {
                self.entries.remove(key);
                None
            }
        }
    }

    pub(crate) fn insert(&mut self, key: &[u8], fd: Arc<OwnedFd>) {
        self.clock += 1;
        if !self.entries.contains_key(key) && self.entries.len() >= CAPACITY {
            // A linear scan over 64 entries is cheaper than keeping an ordered list in sync.
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(key.to_vec(), (fd, self.clock));
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
            cache.insert(format!("d{i}").as_bytes(), fd());
        }
        // Touch d0 so that d1 becomes the oldest.
        assert!(cache.get(b"d0").is_some());
        cache.insert(b"new", fd());
        assert_eq!(cache.len(), CAPACITY);
        assert!(cache.get(b"d0").is_some());
        assert!(cache.get(b"d1").is_none());
        assert!(cache.get(b"new").is_some());
    }

    #[test]
    fn forget_under_drops_the_subtree_only() {
        let mut cache = DirCache::new();
        for key in ["a", "a/b", "a/b/c", "ab", "b/a"] {
            cache.insert(key.as_bytes(), fd());
        }
        cache.forget_under(b"a");
        for key in ["a", "a/b", "a/b/c"] {
            assert!(cache.get(key.as_bytes()).is_none(), "{key}");
        }
        assert!(cache.get(b"ab").is_some());
        assert!(cache.get(b"b/a").is_some());
    }
}
