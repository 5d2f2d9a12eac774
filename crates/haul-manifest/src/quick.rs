//! The quick-check digest of a run of files: what lets one message stand for a directory of
//! unchanged files on a re-run (see [`haul_proto::QuickCheck`]).
//!
//! Each file contributes a BLAKE3 hash of exactly what the per-file quick check compares:
//! its name, size, mtime (seconds and nanoseconds) and permission bits. The contributions are
//! added lane by lane, so the digest does not depend on the order the files are visited in:
//! the sender walks names sorted, the receiver in its directory's own order, and neither has
//! to sort or hold the names.
//!
//! Equal digests over equal counts mean equal sets of (name, size, mtime, mode), short of a
//! forged collision. Only someone who can already write the target could try to forge one,
//! and such a writer can defeat the per-file quick check more simply (by setting an mtime).

use haul_proto::Hash;

/// Accumulates the quick-check digest of a run of files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuickDigest {
    files: u64,
    lanes: [u64; 4],
}

impl QuickDigest {
    /// Adds one regular file. `mode` is the permission bits as the quick check compares them
    /// (the sender's `mode & 0o1777`, the receiver's `st_mode & 0o7777`).
    pub fn add(&mut self, name: &[u8], size: u64, mtime_sec: i64, mtime_nsec: u32, mode: u32) {
        self.add_owned(name, size, mtime_sec, mtime_nsec, mode, None);
    }

    /// [`QuickDigest::add`], also covering the file's owner and group when `owner` is given
    /// (a session that applies owners: both sides then pass the sender's numbers).
    pub fn add_owned(
        &mut self,
        name: &[u8],
        size: u64,
        mtime_sec: i64,
        mtime_nsec: u32,
        mode: u32,
        owner: Option<(u32, u32)>,
    ) {
        // One buffer and one `hash` call: a `Hasher` costs more to set up than a short name
        // costs to hash, and this runs once per file on both sides of a re-run.
        // The fixed-size fields first, then the name: no length prefix is needed.
        let mut buf = [0u8; 256];
        buf[..8].copy_from_slice(&size.to_le_bytes());
        buf[8..16].copy_from_slice(&mtime_sec.to_le_bytes());
        buf[16..20].copy_from_slice(&mtime_nsec.to_le_bytes());
        buf[20..24].copy_from_slice(&mode.to_le_bytes());
        let mut fixed = 24;
        if let Some((uid, gid)) = owner {
            buf[24..28].copy_from_slice(&uid.to_le_bytes());
            buf[28..32].copy_from_slice(&gid.to_le_bytes());
            fixed = 32;
        }
        let out = if name.len() <= buf.len() - fixed {
            buf[fixed..fixed + name.len()].copy_from_slice(name);
            blake3::hash(&buf[..fixed + name.len()])
        } else {
            let mut h = blake3::Hasher::new();
            h.update(&buf[..fixed]);
            h.update(name);
            h.finalize()
        };
        for (lane, bytes) in self.lanes.iter_mut().zip(out.as_bytes().chunks_exact(8)) {
            let mut word = [0; 8];
            word.copy_from_slice(bytes);
            *lane = lane.wrapping_add(u64::from_le_bytes(word));
        }
        self.files += 1;
    }

    /// Files added so far.
    pub fn files(&self) -> u64 {
        self.files
    }

    /// The digest of the files added so far.
    pub fn digest(&self) -> Hash {
        let mut out = [0; 32];
        for (bytes, lane) in out.chunks_exact_mut(8).zip(self.lanes) {
            bytes.copy_from_slice(&lane.to_le_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type File = (Vec<u8>, u64, i64, u32, u32);

    fn digest_of(files: &[File]) -> QuickDigest {
        let mut d = QuickDigest::default();
        for (name, size, sec, nsec, mode) in files {
            d.add(name, *size, *sec, *nsec, *mode);
        }
        d
    }

    proptest! {
        /// The order files are added in does not matter; any one field of any one file does.
        #[test]
        fn order_does_not_matter_and_every_field_does(
            files in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 1..20), any::<u64>(), any::<i64>(),
                 0u32..1_000_000_000, 0u32..0o7777),
                1..40,
            ),
            seed in any::<u64>(),
            pick in any::<usize>(),
            field in 0usize..5,
        ) {
            let base = digest_of(&files);
            let mut shuffled = files.clone();
            let n = shuffled.len();
            shuffled.rotate_left((seed as usize) % n);
            shuffled.reverse();
            prop_assert_eq!(digest_of(&shuffled), base);

            let mut changed = files.clone();
            let f = &mut changed[pick % n];
            match field {
                0 => f.0.push(b'x'),
                1 => f.1 = f.1.wrapping_add(1),
                2 => f.2 = f.2.wrapping_add(1),
                3 => f.3 = (f.3 + 1) % 1_000_000_000,
                _ => f.4 ^= 0o100,
            }
            prop_assert_ne!(digest_of(&changed).digest(), base.digest());
        }
    }

    #[test]
    fn a_missing_or_extra_file_changes_the_digest() {
        let files: Vec<File> = (0..5)
            .map(|i| (format!("f{i}").into_bytes(), i, 1_700_000_000, 0, 0o644))
            .collect();
        let all = digest_of(&files);
        assert_eq!(all.files(), 5);
        assert_ne!(digest_of(&files[..4]).digest(), all.digest());
        let mut more = files.clone();
        more.push((b"f5".to_vec(), 5, 1_700_000_000, 0, 0o644));
        assert_ne!(digest_of(&more).digest(), all.digest());
    }
}
