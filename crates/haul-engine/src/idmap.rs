//! Maps keyed by entry id.
//!
//! Both sides keep the entries in flight in hash maps keyed by the session's entry ids, which
//! are small sequential numbers the sender assigns. The standard SipHash defends against keys
//! chosen to collide, which these maps do not need: on the sender the ids are its own, and on
//! the receiver every id is checked against the session (`ServerSession`), which bounds how
//! many are in flight. Hashing them with one multiply-rotate is several times cheaper, and a
//! re-run of a million files looks each one up a few times.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// A map from entry id to `V`.
pub(crate) type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// A set of entry ids.
pub(crate) type IdSet = HashSet<u64, BuildHasherDefault<IdHasher>>;

/// Hashes one `u64` by a multiply with an odd constant (Fibonacci hashing) and a rotate, so
/// that the high bits, which the map's control bytes use, depend on every bit of the id.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by these maps; any other key still hashes every byte.
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(26);
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn sequential_ids_spread_over_the_high_and_low_bits() {
        let build = BuildHasherDefault::<IdHasher>::default();
        let mut high = HashSet::new();
        let mut low = HashSet::new();
        for id in 1..=4096u64 {
            let h = build.hash_one(id);
            high.insert(h >> 57);
            low.insert(h & 0xFFF);
        }
        // 7 high bits (128 values) and 12 low bits (4096 values) over 4096 keys.
        assert_eq!(high.len(), 128);
        assert!(low.len() > 2500, "{} distinct low values", low.len());
    }

    #[test]
    fn maps_behave_as_maps() {
        let mut map: IdMap<u64> = IdMap::default();
        for id in 0..10_000u64 {
            map.insert(id * 7, id);
        }
        for id in 0..10_000u64 {
            assert_eq!(map.remove(&(id * 7)), Some(id));
        }
        assert!(map.is_empty());
        let set: IdSet = [1, 2, 3].into_iter().collect();
        assert!(set.contains(&2) && !set.contains(&4));
    }
}
