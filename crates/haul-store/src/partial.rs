//! [`Partial`]: a file being received that survives the death of either process.
//!
//! A partial is two files in `<top root>/.haul/partial/`, named by the BLAKE3 of the final
//! destination's path from the top root, so the next run for the same destination finds them:
//! `<key>.data` (the file's bytes, sized up front, holes where nothing has arrived) and
//! `<key>.journal` (which chunks are verified; format in `journal`).
//!
//! The one invariant: a record trusted from the journal describes data that survived. A
//! durable checkpoint syncs the data file *before* appending the records, and syncs the
//! journal after; a light checkpoint syncs nothing and is trusted only in the boot that wrote
//! it, when the page cache holding the data survived too (see `journal`). A crash can lose
//! recent records (those chunks are resent) but never claim an unwritten one.
//!
//! Exclusion: the journal is `flock`ed while open, so two receivers (or two sessions of one)
//! never write the same destination at once; the lock dies with the process.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::attrs::Attrs;
use crate::direct::DirectWriter;
use crate::error::StoreError;
use crate::fileio::{Ops, Target, Zeros};
use crate::fsutil::pwrite_all;
use crate::journal::{self, Batch, RECORD_LEN, SourceIdentity};
use crate::partial_dir::PartialDir;
use crate::path::RelPath;
use crate::root::Root;

/// A checkpoint is taken once this much recorded chunk data is not yet in the journal...
const CHECKPOINT_BYTES: u64 = 64 << 20;
/// ...or this long after the previous one: at most this much work is redone after a kill.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// A checkpoint is durable (synced, survives a power cut) if the last durable one is this old;
/// the others are light (see `journal`). The kernel writes dirty pages back after 30 s on its
/// own, so by then the data sync finds little left to write.
const DURABLE_INTERVAL: Duration = Duration::from_secs(30);

const OPS: Ops = Ops {
    write: "write to partial file",
    past_end: "write past the declared size of partial file",
    read: "read partial file",
    copy: "copy into partial file",
};

/// The journal's fd and where the next record goes (just past the last good one, so a torn
/// append is overwritten rather than left in the middle of the file).
pub(crate) struct Journal {
    pub(crate) fd: OwnedFd,
    pub(crate) len: u64,
}

/// Records not yet durable.
pub(crate) struct Pending {
    pub(crate) records: Vec<(u64, [u8; 32])>,
    pub(crate) bytes: u64,
    pub(crate) since: Instant,
    /// When the last durable checkpoint was taken.
    pub(crate) durable_since: Instant,
    /// Light batches were written since the last durable checkpoint.
    pub(crate) light_unsynced: bool,
}

impl Pending {
    fn due(&self) -> bool {
        !self.records.is_empty()
            && (self.bytes >= CHECKPOINT_BYTES || self.since.elapsed() >= CHECKPOINT_INTERVAL)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data under these locks stays consistent at every await-free step, so a panic in
    // another writer thread does not make it unusable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A file being received that survives the death of either process (see the module docs).
///
/// `Send + Sync`: several threads write different chunks at once through `&self`. Dropping it
/// without [`Partial::install`] or [`Partial::discard`] keeps both files (they are the resume
/// state); it releases the lock and tries a final checkpoint.
pub struct Partial {
    pub(crate) data: OwnedFd,
    /// A second descriptor of the data file for direct writes, where the file system has them.
    pub(crate) direct: Option<DirectWriter>,
    pub(crate) journal: Mutex<Journal>,
    pub(crate) pending: Mutex<Pending>,
    pub(crate) dir: Arc<PartialDir>,
    pub(crate) key: String,
    pub(crate) identity: SourceIdentity,
    /// Whether any region may hold bytes that were not written by this run with verified data
    /// (a resumed file, or after a copy): zero blocks must then be punched, not skipped.
    pub(crate) dirty: AtomicBool,
    /// Set once installed or discarded: Drop then has nothing to checkpoint.
    pub(crate) finished: bool,
}

impl Partial {
    fn data_name(&self) -> String {
        format!("{}.data", self.key)
    }

    fn journal_name(&self) -> String {
        format!("{}.journal", self.key)
    }

    fn with_target<T>(&self, f: impl FnOnce(&Target<'_>) -> T) -> T {
        let path = || self.dir.path.join(self.data_name());
        f(&Target {
            fd: self.data.as_fd(),
            size: self.identity.size,
            path: &path,
            space_path: &self.dir.root_path,
            ops: &OPS,
            direct: self.direct.as_ref(),
        })
    }

    /// The identity the partial was opened with.
    pub fn identity(&self) -> SourceIdentity {
        self.identity
    }

    /// Whether [`Partial::write_at`] of `len` bytes at `offset` goes to the disk directly in
    /// full (`O_DIRECT`, see `direct.rs`). Such writes of one file may run side by side; writes
    /// through the page cache are better made one at a time (they contend for the inode).
    pub fn writes_direct(&self, offset: u64, len: usize) -> bool {
        self.direct.as_ref().is_some_and(|d| d.covers(offset, len))
    }

    /// Positional write of `data` at `offset`, sparse-aware like [`crate::StagingFile::write_at`].
    /// On a resumed partial (or after [`Partial::copy_from`]) all-zero blocks are punched out
    /// instead of skipped, since the region may hold unverified bytes from before. Returns the
    /// bytes written to disk; a full disk is [`StoreError::NoSpace`].
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<u64, StoreError> {
        let zeros = if self.dirty.load(Ordering::Acquire) {
            Zeros::Punch
        } else {
            Zeros::Skip
        };
        self.with_target(|t| t.write_sparse(offset, data, zeros))
    }

    /// Copies `[offset, offset + len)` from `src` into the same range of the partial
    /// (`copy_file_range`, falling back to reads and writes in 1 MiB pieces where the kernel
    /// or file system refuses). Returns the bytes copied. A source shorter than the range is
    /// an error.
    pub fn copy_from(&self, src: &std::fs::File, offset: u64, len: u64) -> Result<u64, StoreError> {
        // Before the copy: a later write_at over this range (say the copied bytes did not
        // verify) must not leave them under zero blocks.
        self.dirty.store(true, Ordering::Release);
        self.with_target(|t| t.copy_range(src.as_fd(), offset, len, false))
    }

    /// Reads `buf.len()` bytes at `offset` back (to verify reused data).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        self.with_target(|t| t.read_exact_at(offset, buf))
    }

    /// Records that chunk `index` (of `len` bytes, with `hash`) has been written. It becomes
    /// durable at the next checkpoint, which this call takes itself once 64 MiB of recorded
    /// data or one second has accumulated since the last one.
    pub fn record(&self, index: u64, hash: [u8; 32], len: u64) -> Result<(), StoreError> {
        if index >= self.identity.chunk_count() {
            return Err(StoreError::Io {
                path: self.dir.path.join(self.journal_name()),
                op: "record a chunk in partial journal",
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "chunk {index} is past the last chunk of a {}-byte file",
                        self.identity.size
                    ),
                ),
            });
        }
        let due = {
            let mut pending = lock(&self.pending);
            pending.records.push((index, hash));
            pending.bytes = pending.bytes.saturating_add(len);
            pending.due()
        };
        if due {
            self.checkpoint_inner(false)
        } else {
            Ok(())
        }
    }

    /// Makes every recorded chunk durable: `fdatasync` of the data file first, then the
    /// records are appended to the journal and it is `fdatasync`ed.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.checkpoint_inner(true)
    }

    /// `force: false` is the automatic checkpoint: threads that found it due at once queue
    /// on the journal lock, and only the first still finds it due.
    fn checkpoint_inner(&self, force: bool) -> Result<(), StoreError> {
        let mut journal = lock(&self.journal);
        let (taken, batch) = {
            let mut pending = lock(&self.pending);
            let nothing_to_sync = pending.records.is_empty() && !pending.light_unsynced;
            if nothing_to_sync || !(force || pending.due()) {
                return Ok(());
            }
            let batch = if force || pending.durable_since.elapsed() >= DURABLE_INTERVAL {
                pending.durable_since = Instant::now();
                pending.light_unsynced = false;
                Batch::Durable
            } else {
                pending.light_unsynced = true;
                Batch::Light
            };
            pending.bytes = 0;
            pending.since = Instant::now();
            (std::mem::take(&mut pending.records), batch)
        };
        let result = self.append(&mut journal, &taken, batch);
        if result.is_err() {
            // Not durable: keep them for the next checkpoint, ahead of newer records so that
            // "last wins" still holds for an index recorded twice.
            let mut pending = lock(&self.pending);
            pending.light_unsynced = true;
            let newer = std::mem::replace(&mut pending.records, taken);
            pending.records.extend(newer);
        }
        result
    }

    fn append(
        &self,
        journal: &mut Journal,
        records: &[(u64, [u8; 32])],
        batch: Batch,
    ) -> Result<(), StoreError> {
        if batch == Batch::Durable {
            rustix::fs::fdatasync(&self.data).map_err(|e| {
                self.dir
                    .err(e, &self.data_name(), "flush (fdatasync) partial file")
            })?;
        }
        let mut buf = Vec::with_capacity((records.len() + 1) * RECORD_LEN);
        buf.extend_from_slice(&journal::encode_marker(batch, journal::current_boot()));
        for (index, hash) in records {
            buf.extend_from_slice(&journal::encode_record(*index, hash));
        }
        let jerr = |e| {
            self.dir
                .err(e, &self.journal_name(), "append to partial journal")
        };
        if let Err(e) = pwrite_all(journal.fd.as_fd(), journal.len, &buf) {
            // Best effort; `len` is not advanced either way, so the retry overwrites the tail.
            let _ = rustix::fs::ftruncate(&journal.fd, journal.len);
            return Err(jerr(e));
        }
        if batch == Batch::Durable {
            rustix::fs::fdatasync(&journal.fd).map_err(jerr)?;
        }
        journal.len += buf.len() as u64;
        Ok(())
    }

    /// Sets mode and mtime (like [`Root::install_file`]), renames the data file over `rel`
    /// in `root` (replacing a file or symlink; a directory is [`StoreError::IsADirectory`]),
    /// then removes the journal. `rel` is normally the path the partial was opened for.
    pub fn install(mut self, root: &Root, rel: &RelPath, attrs: &Attrs) -> Result<(), StoreError> {
        let (parent, name) = root.parent_of(rel)?;
        let data_name = self.data_name();
        let err = |e, op| self.dir.err(e, &data_name, op);
        attrs.apply_fd(self.data.as_fd(), &|| root.display_path(rel))?;
        // The data reaches the disk before the name does: after a power cut the final name
        // holds the whole file or is absent, never a file whose size and mtime match the
        // source (so a re-run's quick check would skip it) over missing data.
        rustix::fs::fdatasync(&self.data).map_err(|e| err(e, "flush"))?;
        rustix::fs::renameat(&self.dir.dir, data_name.as_str(), &*parent, name)
            .map_err(|e| root.err(e, rel, "install (rename into place)"))?;
        self.finished = true;
        // The file is in place; a journal left behind (removal failed) is harmless: its data
        // file is gone, so the next open starts fresh.
        let _ = self.dir.remove(&self.journal_name());
        Ok(())
    }

    /// Removes the data file and the journal.
    pub fn discard(mut self) -> Result<(), StoreError> {
        self.finished = true;
        self.dir.remove(&self.data_name())?;
        self.dir.remove(&self.journal_name())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.finished {
            // The files stay: they are the resume state. What was recorded is made durable if
            // the disk allows; the lock goes with the journal fd.
            let _ = self.checkpoint_inner(true);
        }
    }
}

impl std::fmt::Debug for Partial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partial")
            .field("data", &self.dir.path.join(self.data_name()))
            .field("identity", &self.identity)
            .finish()
    }
}
