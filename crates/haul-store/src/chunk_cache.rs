//! The chunk-hash cache in `<top root>/.haul/chunks/`: the chunk hashes of files this receiver
//! installed, so a re-run can skip re-hashing an unchanged old copy (minutes for a large disk
//! image). A record is trusted only while the file is provably the one recorded: same device,
//! inode, size, mtime and ctime (the ctime cannot be set back by a user, so a rewrite that
//! restores the mtime is still caught). It is a cache: a lost, torn or stale record only costs
//! a re-hash, so records are written atomically (temp file + rename) but never fsynced. The
//! directory holds nothing but records and temp files, so [`Root::remove_state_dir`] removes
//! it entry by entry without looking inside.
//!
//! Record (little-endian): magic+version, chunk size u32, dev u64, ino u64, size u64, mtime
//! sec i64 + nsec u32, ctime sec i64 + nsec u32, count u64, path length u32, the path from
//! the top root, count x 32-byte hashes, then a BLAKE3 of everything before it.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use crate::error::StoreError;
use crate::fsutil::{Missing, not_found, open_child_dir, pwrite_all};
use crate::path::RelPath;
use crate::root::Root;

const DIR: &[u8] = b"chunks";
const MAGIC: &[u8; 8] = b"HAULCHK\x01";
/// The fixed-size part of a record, before the path.
const HEADER: usize = 8 + 4 + 8 + 8 + 8 + 8 + 4 + 8 + 4 + 8 + 4;
/// More chunks than this are refused before allocating (128 MiB of hashes).
const MAX_COUNT: u64 = 1 << 22;
/// Temp names cannot collide with record names (64 hex digits) or between threads.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// What identifies one version of a file: any write, truncate, rename over or chmod changes
/// at least one of these.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, u32),
    ctime: (i64, u32),
}

impl Identity {
    #[allow(clippy::unnecessary_cast)] // the stat field types differ between architectures
    fn of(st: &Stat) -> Option<Identity> {
        Some(Identity {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            size: u64::try_from(st.st_size).ok()?,
            mtime: (st.st_mtime as i64, u32::try_from(st.st_mtime_nsec).ok()?),
            ctime: (st.st_ctime as i64, u32::try_from(st.st_ctime_nsec).ok()?),
        })
    }

    fn chunks(&self, chunk_size: u32) -> u64 {
        self.size.div_ceil(u64::from(chunk_size))
    }
}

impl Root {
    /// The chunk hashes recorded for the file at `rel` (already open as `file`), if a record
    /// exists for this chunk size and the open file is still exactly the file recorded: same
    /// device, inode, size, mtime and ctime (sec+nsec), taken with `fstat` of `file` (not by
    /// path, so a rename race cannot fool it). `None` on any mismatch, a missing, torn or
    /// garbage record, or any error.
    pub fn cached_chunk_hashes(
        &self,
        rel: &RelPath,
        file: &std::fs::File,
        chunk_size: u32,
    ) -> Option<Vec<[u8; 32]>> {
        if chunk_size == 0 || rel.is_root() {
            return None;
        }
        let now = Identity::of(&rustix::fs::fstat(file).ok()?)?;
        let top_rel = self.prefix.join(rel);
        let dir = self.chunks_dir(Missing::Absent).ok()??;
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let record =
            rustix::fs::openat(dir, record_name(&top_rel, chunk_size), flags, Mode::empty())
                .ok()?;
        // Everything before the hashes must read exactly as it would be written for the open
        // file now (identity, count, path: the name is a hash, so a collision must not hand
        // out another file's hashes). Sizes come from the open file, never from the record.
        let count = now.chunks(chunk_size);
        if count > MAX_COUNT {
            return None;
        }
        let expected = header(&now, chunk_size, count, top_rel.as_bytes());
        let total = expected.len() + usize::try_from(count).ok()? * 32 + 32;
        if u64::try_from(rustix::fs::fstat(&record).ok()?.st_size).ok()? != total as u64 {
            return None;
        }
        let mut bytes = vec![0u8; total];
        read_exact_at(&record, &mut bytes)?;
        let (body, sum) = bytes.split_at(total - 32);
        if !body.starts_with(&expected) || blake3::hash(body).as_bytes() != sum {
            return None;
        }
        let hashes = body[expected.len()..].chunks_exact(32);
        Some(hashes.filter_map(|h| h.try_into().ok()).collect())
    }

    /// Records the chunk hashes of the regular file now at `rel` (stat'ed through the root,
    /// confined, without following a final symlink; anything else is not recorded). Files of
    /// fewer than 2 chunks are not recorded (nothing to gain), nor is anything when
    /// `hashes.len()` is not `ceil(size / chunk_size)` of the file as it is now (it changed).
    /// Written atomically (temp file in the cache directory, renamed over the record) but not
    /// fsynced: a lost or torn record only costs a re-hash.
    pub fn store_chunk_hashes(
        &self,
        rel: &RelPath,
        chunk_size: u32,
        hashes: &[[u8; 32]],
    ) -> Result<(), StoreError> {
        let Some((parent, name)) = rel.parent_and_name() else {
            return Ok(());
        };
        if chunk_size == 0 || hashes.len() < 2 || hashes.len() as u64 > MAX_COUNT {
            return Ok(());
        }
        let parent = match self.resolve_dir(&parent, Missing::Absent) {
            Ok(Some(fd)) => fd,
            Ok(None) | Err(StoreError::NotADirectory { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let st = match rustix::fs::statat(&*parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(self.err(e, rel, "inspect")),
        };
        let identity = Identity::of(&st).filter(|id| id.chunks(chunk_size) == hashes.len() as u64);
        let Some(identity) = identity else {
            return Ok(()); // changed since it was hashed
        };
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Ok(());
        }
        let top_rel = self.prefix.join(rel);
        let mut bytes = header(
            &identity,
            chunk_size,
            hashes.len() as u64,
            top_rel.as_bytes(),
        );
        hashes.iter().for_each(|h| bytes.extend_from_slice(h));
        let sum = blake3::hash(&bytes);
        bytes.extend_from_slice(sum.as_bytes());

        let dir = self
            .chunks_dir(Missing::Create)?
            .ok_or_else(|| not_found(self.chunks_path(), "create directory"))?;
        let pid = rustix::process::getpid().as_raw_nonzero();
        let temp = format!("tmp-{pid}-{}", TEMP_SEQ.fetch_add(1, Ordering::Relaxed));
        let shown = self.chunks_path().join(&temp);
        let err = |e, op| StoreError::from_errno(e, shown.clone(), self.path(), op);
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW;
        let fd = rustix::fs::openat(
            dir,
            temp.as_str(),
            flags | OFlags::CLOEXEC,
            Mode::RUSR | Mode::WUSR,
        )
        .map_err(|e| err(e, "create chunk-hash cache record"))?;
        let result = pwrite_all(fd.as_fd(), 0, &bytes)
            .map_err(|e| err(e, "write chunk-hash cache record"))
            .and_then(|()| {
                let name = record_name(&top_rel, chunk_size);
                rustix::fs::renameat(dir, temp.as_str(), dir, name.as_str())
                    .map_err(|e| err(e, "rename chunk-hash cache record"))
            });
        if result.is_err() {
            let _ = rustix::fs::unlinkat(dir, temp.as_str(), AtFlags::empty());
        }
        result
    }

    /// `<top root>/.haul/chunks`, walked from the top `.haul` fd; with `Missing::Absent`, `None`
    /// until the first record is stored.
    fn chunks_dir(&self, missing: Missing) -> Result<Option<&OwnedFd>, StoreError> {
        if let Some(fd) = self.top.chunks.get() {
            return Ok(Some(fd));
        }
        let shown = || self.chunks_path();
        match open_child_dir(&self.top.haul, DIR, missing, &shown, self.path())? {
            // A racing thread may have set it first: either fd is the same directory.
            Some(fd) => Ok(Some(self.top.chunks.get_or_init(|| fd))),
            None => Ok(None),
        }
    }

    fn chunks_path(&self) -> std::path::PathBuf {
        self.top.haul_path.join("chunks")
    }
}

/// The record's file name: hex BLAKE3 of the path from the top root and the chunk size (the
/// size is fixed-length and last, so no two pairs hash the same input).
fn record_name(top_rel: &RelPath, chunk_size: u32) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(top_rel.as_bytes());
    hasher.update(&chunk_size.to_le_bytes());
    hasher.finalize().to_hex().to_string()
}

/// A record up to its hashes.
fn header(id: &Identity, chunk_size: u32, count: u64, path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + path.len() + count as usize * 32 + 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&chunk_size.to_le_bytes());
    for n in [id.dev, id.ino, id.size] {
        out.extend_from_slice(&n.to_le_bytes());
    }
    for (sec, nsec) in [id.mtime, id.ctime] {
        out.extend_from_slice(&sec.to_le_bytes());
        out.extend_from_slice(&nsec.to_le_bytes());
    }
    out.extend_from_slice(&count.to_le_bytes());
    // A RelPath is at most MAX_PATH bytes, so this always fits.
    out.extend_from_slice(&u32::try_from(path.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(path);
    out
}

fn read_exact_at(fd: &OwnedFd, buf: &mut [u8]) -> Option<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match rustix::io::pread(fd, &mut buf[filled..], filled as u64) {
            Ok(0) => return None,
            Ok(n) => filled += n,
            Err(Errno::INTR) => {}
            Err(_) => return None,
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use std::fs::{self, File};
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};

    use super::*;

    const CHUNK: u32 = 4;

    fn hashes(n: u8) -> Vec<[u8; 32]> {
        (0..n).map(|i| [i + 1; 32]).collect()
    }

    fn rel(p: &str) -> RelPath {
        RelPath::parse(p.as_bytes()).unwrap()
    }

    /// A root with a 10-byte file `a` (3 chunks of 4) and a second name `b` for it (made
    /// before the store: linking changes the ctime), with a's hashes recorded.
    fn setup() -> (tempfile::TempDir, Root) {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        fs::write(dir.path().join("a"), b"0123456789").unwrap();
        fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        root.store_chunk_hashes(&rel("a"), CHUNK, &hashes(3))
            .unwrap();
        (dir, root)
    }

    fn lookup(root: &Root, dir: &Path, name: &str, chunk: u32) -> Option<Vec<[u8; 32]>> {
        let file = File::open(dir.join(name)).unwrap();
        root.cached_chunk_hashes(&rel(name), &file, chunk)
    }

    fn records(dir: &Path) -> Vec<PathBuf> {
        fs::read_dir(dir.join(".haul/chunks"))
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn store_then_lookup_returns_the_hashes_for_that_chunk_size() {
        let (dir, root) = setup();
        assert_eq!(lookup(&root, dir.path(), "a", CHUNK), Some(hashes(3)));
        assert_eq!(lookup(&root, dir.path(), "a", 8), None);
        assert_eq!(records(dir.path()).len(), 1, "no temp file left");
        let meta = fs::metadata(dir.path().join(".haul/chunks")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn a_changed_file_is_not_trusted() {
        let (dir, root) = setup();
        let path = dir.path().join("a");
        // Past the file system's timestamp granularity, so the ctime can differ.
        std::thread::sleep(std::time::Duration::from_millis(30));
        let mtime = fs::metadata(&path).unwrap().modified().unwrap();
        fs::write(&path, b"abcdefghij").unwrap();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), mtime);
        assert_eq!(
            lookup(&root, dir.path(), "a", CHUNK),
            None,
            "same size and mtime"
        );

        root.store_chunk_hashes(&rel("a"), CHUNK, &hashes(3))
            .unwrap();
        assert!(lookup(&root, dir.path(), "a", CHUNK).is_some());
        let mut file = File::options().append(true).open(&path).unwrap();
        std::io::Write::write_all(&mut file, b"x").unwrap();
        assert_eq!(lookup(&root, dir.path(), "a", CHUNK), None, "appended");

        fs::write(&path, b"0123456789").unwrap();
        root.store_chunk_hashes(&rel("a"), CHUNK, &hashes(3))
            .unwrap();
        assert!(lookup(&root, dir.path(), "a", CHUNK).is_some());
        fs::write(dir.path().join("new"), b"0123456789").unwrap();
        let new = File::options()
            .write(true)
            .open(dir.path().join("new"))
            .unwrap();
        new.set_modified(fs::metadata(&path).unwrap().modified().unwrap())
            .unwrap();
        fs::rename(dir.path().join("new"), &path).unwrap();
        assert_eq!(
            lookup(&root, dir.path(), "a", CHUNK),
            None,
            "replaced by rename"
        );
    }

    #[test]
    fn a_torn_or_flipped_record_is_rejected() {
        let (dir, root) = setup();
        let record = records(dir.path()).pop().unwrap();
        let good = fs::read(&record).unwrap();
        fs::write(&record, &good[..good.len() - 1]).unwrap();
        assert_eq!(lookup(&root, dir.path(), "a", CHUNK), None, "truncated");
        for at in [0, HEADER - 10, HEADER, good.len() - 40, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 1;
            fs::write(&record, &bad).unwrap();
            assert_eq!(
                lookup(&root, dir.path(), "a", CHUNK),
                None,
                "flipped byte {at}"
            );
        }
        fs::write(&record, &good).unwrap();
        assert_eq!(lookup(&root, dir.path(), "a", CHUNK), Some(hashes(3)));
    }

    #[test]
    fn small_mismatched_or_non_regular_files_are_not_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        fs::write(dir.path().join("small"), b"0123").unwrap();
        fs::write(dir.path().join("big"), b"0123456789").unwrap();
        std::os::unix::fs::symlink("big", dir.path().join("link")).unwrap();
        root.store_chunk_hashes(&rel("small"), CHUNK, &hashes(1))
            .unwrap();
        root.store_chunk_hashes(&rel("big"), CHUNK, &hashes(2))
            .unwrap();
        root.store_chunk_hashes(&rel("link"), 5, &hashes(2))
            .unwrap();
        root.store_chunk_hashes(&rel("missing/x"), CHUNK, &hashes(3))
            .unwrap();
        assert!(!dir.path().join(".haul/chunks").exists());
        assert_eq!(lookup(&root, dir.path(), "big", CHUNK), None);
    }

    #[test]
    fn another_paths_record_is_never_returned() {
        let (dir, root) = setup();
        // b is the very same inode, so only the path in the record tells them apart.
        assert_eq!(lookup(&root, dir.path(), "b", CHUNK), None);
        let chunks = dir.path().join(".haul/chunks");
        let (a, b) = (record_name(&rel("a"), CHUNK), record_name(&rel("b"), CHUNK));
        fs::copy(chunks.join(a), chunks.join(b)).unwrap();
        assert_eq!(
            lookup(&root, dir.path(), "b", CHUNK),
            None,
            "as if the names collided"
        );
        assert!(lookup(&root, dir.path(), "a", CHUNK).is_some());
    }

    #[test]
    fn records_are_keyed_by_the_path_from_the_top_root() {
        let dir = tempfile::tempdir().unwrap();
        let top = Root::open(dir.path()).unwrap();
        let sub = top.subdir(&rel("d")).unwrap();
        fs::write(dir.path().join("d/f"), b"0123456789").unwrap();
        sub.store_chunk_hashes(&rel("f"), CHUNK, &hashes(3))
            .unwrap();
        assert_eq!(lookup(&top, dir.path(), "d/f", CHUNK), Some(hashes(3)));
    }

    #[test]
    fn remove_state_dir_removes_the_cache() {
        let (dir, root) = setup();
        fs::write(
            dir.path().join(".haul/chunks/tmp-1-1"),
            b"left by a dead run",
        )
        .unwrap();
        assert!(root.remove_state_dir());
        assert!(!dir.path().join(".haul").exists());
        assert!(dir.path().join("a").exists());
    }
}
