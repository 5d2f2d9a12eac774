//! The receiver's per-file state: verification, writing, reuse, install.
//!
//! Every function here runs on a blocking thread. A chunk that arrives is hashed and compared
//! with the hash the sender announced before a byte of it is written (except in-process, where
//! it is the very buffer the sender hashed: see `Link::shares_buffers`). A chunk that does not
//! arrive because the sender found the receiver already holds it (an interrupted run's
//! journal, the old copy, a renamed-aside copy) is read from there, hashed again and compared
//! with what was offered before it is written. A file is renamed to its final name only when
//! the whole-file hash assembled from all its chunk hashes equals the sender's.

use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use haul_proto::{Chunk, ChunkLayout, Failed, Hash, Installed, Message};
use haul_store::{Attrs, PatchRange, RelPath, Root, StoreError};
use tokio::sync::mpsc::UnboundedSender;

use super::target::{Disposal, Target};
use crate::idmap::IdMap;
use crate::lock;

/// What the control writer must send, and which entry it resolves.
pub(crate) enum Outcome {
    /// A message that resolves an entry (Installed or Failed).
    Resolved(u64, Message),
    /// A message that resolves nothing (Have, Need).
    Plain(Message),
    /// The answer to a quick check of `files` files (see [`super::entry::quick_check`]).
    Checked {
        id: u64,
        files: u64,
        unchanged: bool,
    },
    /// The client has announced its last entry.
    EndOfEntries,
}

/// Where reusable chunks of a file come from.
pub(crate) struct Reuse {
    /// The existing copy (the old file at the destination, or in a renamed-aside directory).
    pub(crate) file: File,
    /// Its hash for each chunk it fully covers, by index (None: not usable).
    pub(crate) hashes: Vec<Option<Hash>>,
    /// True when the copy is the destination file itself with the new file's exact size: if
    /// nothing is sent, the file is unchanged and need not be rewritten.
    pub(crate) in_place: bool,
    /// Set when `hashes` came from the chunk-hash cache for the copy at this path rather than
    /// from reading it: reused chunks are then copied in the kernel without hashing them again,
    /// and the cache is asked once more afterwards whether the copy is still that same file.
    pub(crate) cached: Option<RelPath>,
}

struct SlotState {
    target: Option<Arc<Target>>,
    /// Verified chunks already in the target (received now, or journaled by an earlier run).
    hashes: Vec<Option<Hash>>,
    /// Which chunks arrived in this session (to tell a resent chunk from a changed source).
    arrived: Vec<bool>,
    /// Chunks received in this session.
    received: u64,
    /// Chunks the sender says it sent (from `FileDone`).
    expected: Option<u64>,
    client_hash: Option<Hash>,
    bytes_written: u64,
    finished: bool,
    /// What to do with the target once the last thread lets go of it, after a failure.
    disposal: Disposal,
}

/// A file being received.
pub(crate) struct Slot {
    id: u64,
    rel: RelPath,
    layout: ChunkLayout,
    /// Mode, mtime, owner and attributes to install it with.
    attrs: Attrs,
    dry_run: bool,
    /// Nothing was at the destination name when the file was planned: it is created there
    /// and written in place (see `Root::create_fresh_for`).
    fresh: bool,
    reuse: Option<Reuse>,
    state: Mutex<SlotState>,
    /// Held while writing to the target through the page cache. Chunks of one file are
    /// verified in parallel but written one at a time: concurrent writers of one file spin on
    /// its inode lock, and on two cores that more than doubled the cost of a 2 GiB write into
    /// the page cache. Direct writes into allocated ranges share the lock and run side by
    /// side, keeping two writes in flight on the disk.
    writing: Mutex<()>,
}

/// Every file of one session that is being received.
pub(crate) struct Files {
    root: Arc<Root>,
    slots: Mutex<IdMap<Arc<Slot>>>,
    out: UnboundedSender<Vec<Outcome>>,
    /// Chunks of all files in flight, against [`super::entry::MAX_CHUNKS_IN_FLIGHT`].
    chunks_in_flight: AtomicU64,
    /// Blocking tasks working on this session's files right now.
    busy: Arc<AtomicU64>,
    /// Set when the session is over: entries still queued are dropped unhandled, so a dead
    /// session does not go on opening (and locking) partials that a new one needs.
    closed: std::sync::atomic::AtomicBool,
    /// The link hands over the sender's own buffers (see `Link::shares_buffers`): its chunk
    /// hashes are taken as they are.
    shared_buffers: bool,
    /// Bytes written through the page cache since the last early flush was started.
    unflushed: AtomicU64,
    /// An early flush is running.
    flushing: Arc<std::sync::atomic::AtomicBool>,
}

/// Once this much has been written through the page cache, a background `syncfs` starts
/// writing it out (see [`Files::written`]).
const EARLY_FLUSH_BYTES: u64 = 32 << 20;

/// A changed file is patched in place only while the changed chunks are at most this share
/// (1/N) of it: beyond that, writing a new file costs little more than the undo log would.
const PATCH_SHARE: u64 = 4;

/// Marks a blocking task as working on a session's files until dropped.
pub(crate) struct Busy(Arc<AtomicU64>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

thread_local! {
    /// Outcomes held back by [`Files::batched`] on this thread (`None`: send at once).
    static HELD: RefCell<Option<Vec<Outcome>>> = const { RefCell::new(None) };
}

/// A new file to receive, as planned by the session.
pub(crate) struct Plan {
    pub(crate) id: u64,
    pub(crate) rel: RelPath,
    pub(crate) layout: ChunkLayout,
    pub(crate) attrs: Attrs,
    pub(crate) dry_run: bool,
    /// Nothing is at the destination name (see [`Slot`]'s field of the same name).
    pub(crate) fresh: bool,
    /// The journaled partial, with the chunks it already holds (multi-chunk files).
    pub(crate) target: Option<Target>,
    pub(crate) verified: Vec<(u64, Hash)>,
    pub(crate) reuse: Option<Reuse>,
}

impl Files {
    pub(crate) fn new(
        root: Arc<Root>,
        out: UnboundedSender<Vec<Outcome>>,
        shared_buffers: bool,
    ) -> Self {
        Files {
            root,
            slots: Mutex::new(IdMap::default()),
            out,
            chunks_in_flight: AtomicU64::new(0),
            busy: Arc::new(AtomicU64::new(0)),
            closed: std::sync::atomic::AtomicBool::new(false),
            shared_buffers,
            unflushed: AtomicU64::new(0),
            flushing: Arc::default(),
        }
    }

    /// Counts bytes written through the page cache. Every [`EARLY_FLUSH_BYTES`] a `syncfs`
    /// starts on its own thread (one at a time), so the disk writes small files out while
    /// more arrive: the kernel would otherwise wait 30 s or for gigabytes of dirty pages, and
    /// the session's closing `syncfs` (its success means "durable") would write everything
    /// then, with the network idle. An early flush that fails changes nothing: the closing
    /// one reports.
    fn written(&self, bytes: u64) {
        if bytes == 0
            || self.unflushed.fetch_add(bytes, Ordering::Relaxed) + bytes < EARLY_FLUSH_BYTES
            || self.flushing.swap(true, Ordering::AcqRel)
        {
            return;
        }
        self.unflushed.store(0, Ordering::Relaxed);
        let (root, flushing) = (self.root.clone(), self.flushing.clone());
        let started = std::thread::Builder::new()
            .name("haul-flush".into())
            .spawn(move || {
                let _ = root.sync();
                flushing.store(false, Ordering::Release);
            });
        if started.is_err() {
            self.flushing.store(false, Ordering::Release);
        }
    }

    /// Marks the session over (see `closed`).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Whether the session is over.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    pub(crate) fn root(&self) -> &Root {
        &self.root
    }

    /// Counts a blocking task as working on these files until the guard is dropped.
    pub(crate) fn busy(&self) -> Busy {
        self.busy.fetch_add(1, Ordering::SeqCst);
        Busy(self.busy.clone())
    }

    /// Waits (up to a minute) until no blocking task is working on these files.
    pub(crate) async fn wait_idle(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while self.busy.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Accounts for a file's chunks before it is opened; false if that would exceed the budget.
    pub(crate) fn reserve_chunks(&self, count: u64) -> bool {
        let budget = super::entry::MAX_CHUNKS_IN_FLIGHT;
        self.chunks_in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n + count <= budget).then_some(n + count)
            })
            .is_ok()
    }

    /// Forgets a finished slot and gives its chunks back to the budget.
    fn remove_slot(&self, slot: &Slot) {
        if lock(&self.slots).remove(&slot.id).is_some() {
            self.chunks_in_flight
                .fetch_sub(slot.layout.count(), Ordering::AcqRel);
        }
    }

    /// Sends `outcome` to the control writer, or holds it until the end of the enclosing
    /// [`Self::batched`] on this thread.
    pub(crate) fn send(&self, outcome: Outcome) {
        let outcome = HELD.with(|held| match held.borrow_mut().as_mut() {
            Some(held) => {
                held.push(outcome);
                None
            }
            None => Some(outcome),
        });
        if let Some(outcome) = outcome {
            let _ = self.out.send(vec![outcome]);
        }
    }

    /// Runs `work` holding back every outcome it sends on this thread, then sends them as one
    /// message: a batch of small files wakes the control writer once, not once per file (on
    /// two cores those wake-ups were a fifth of the receiver's time). Nested calls join the
    /// outer batch. Nothing is lost if `work` panics: what it held is sent on the way out.
    pub(crate) fn batched<R>(&self, work: impl FnOnce() -> R) -> R {
        struct Flush<'a>(&'a Files);
        impl Drop for Flush<'_> {
            fn drop(&mut self) {
                let held = HELD
                    .with(|held| held.borrow_mut().take())
                    .unwrap_or_default();
                if !held.is_empty() {
                    let _ = self.0.out.send(held);
                }
            }
        }
        let outer = HELD.with(|held| {
            let mut held = held.borrow_mut();
            let outer = held.is_some();
            if !outer {
                *held = Some(Vec::new());
            }
            outer
        });
        if outer {
            return work();
        }
        let _flush = Flush(self);
        work()
    }

    /// Registers a file to receive. Returns the hashes the receiver holds per chunk (for the
    /// `Have` messages): journaled chunks first, else the reusable copy's.
    pub(crate) fn open(&self, plan: Plan) -> Vec<Option<Hash>> {
        let count = plan.layout.count() as usize;
        let mut hashes = vec![None; count];
        for (index, hash) in plan.verified {
            if let Some(slot) = hashes.get_mut(index as usize) {
                *slot = Some(hash);
            }
        }
        let mut held = hashes.clone();
        if let Some(reuse) = &plan.reuse {
            for (h, r) in held.iter_mut().zip(&reuse.hashes) {
                if h.is_none() {
                    *h = *r;
                }
            }
        }
        let slot = Slot {
            id: plan.id,
            rel: plan.rel,
            layout: plan.layout,
            attrs: plan.attrs,
            dry_run: plan.dry_run,
            fresh: plan.fresh,
            reuse: plan.reuse,
            writing: Mutex::new(()),
            state: Mutex::new(SlotState {
                target: plan.target.map(Arc::new),
                hashes,
                arrived: vec![false; count],
                received: 0,
                expected: None,
                client_hash: None,
                bytes_written: 0,
                finished: false,
                disposal: Disposal::Keep,
            }),
        };
        lock(&self.slots).insert(plan.id, Arc::new(slot));
        held
    }

    fn slot(&self, id: u64) -> Option<Arc<Slot>> {
        lock(&self.slots).get(&id).cloned()
    }

    /// Verifies and writes one chunk; completes the file if it was the last piece missing.
    pub(crate) fn receive(&self, chunk: Chunk) {
        let Some(slot) = self.slot(chunk.id) else {
            return;
        };
        let index = chunk.index;
        let target = {
            let mut st = lock(&slot.state);
            if st.finished {
                return;
            }
            if st.arrived.get(index as usize).copied().unwrap_or(false) {
                drop(st);
                return self.sent_twice(&slot, index);
            }
            if st.hashes.get(index as usize).is_some_and(Option::is_some) {
                // We offered this chunk and the sender's differs: the source changed in place
                // since the interrupted run. Never mix old and new data in one file.
                drop(st);
                return self.fail(
                    &slot,
                    format!(
                        "{} changed at the source since the interrupted run (same size and mtime, \
                         different content); its partial data was discarded: run the same command \
                         again to copy it afresh",
                        self.root.display_path(&slot.rel).display()
                    ),
                    Disposal::Discard,
                );
            }
            if st.target.is_none() {
                let (size, mode) = (slot.layout.size(), slot.attrs.meta.mode);
                let created = if slot.fresh {
                    self.root.create_fresh_for(&slot.rel, size, mode)
                } else {
                    self.root.create_staging_for(&slot.rel, size, mode)
                };
                match created {
                    Ok(file) => st.target = Some(Arc::new(Target::Staging(file))),
                    Err(e) => {
                        drop(st);
                        return self.fail_store(&slot, e);
                    }
                }
            }
            st.target.clone()
        };
        let Some(target) = target else { return };
        let hash = if self.shared_buffers && !chunk.compressed {
            // In-process: the bytes are the ones the sender hashed (a hole is no bytes).
            chunk.hash
        } else if chunk.zero {
            haul_manifest::zero_chunk_hash(&slot.layout, index)
        } else {
            haul_manifest::chunk_hash(&slot.layout, index, &chunk.data)
        };
        if hash != chunk.hash {
            drop(target);
            return self.fail(
                &slot,
                format!(
                    "chunk {index} of {} failed verification (its BLAKE3 hash differs from the \
                     sender's): the data was damaged in transit or the sender is faulty; nothing \
                     of it was written",
                    self.root.display_path(&slot.rel).display()
                ),
                Disposal::Discard,
            );
        }
        let len = slot.layout.len(index).map_or(0, u64::from);
        // Partials flush their own data before journaling it; staging files wait for a flush.
        let staged = matches!(*target, Target::Staging(_));
        let written = if chunk.zero {
            Ok(0)
        } else {
            let offset = slot.layout.offset(index);
            let _writing =
                (!target.writes_direct(offset, chunk.data.len())).then(|| lock(&slot.writing));
            target.write_at(offset, &chunk.data)
        };
        let written = written.and_then(|n| target.record(index, hash, len).map(|()| n));
        let written = match written {
            Ok(n) => n,
            Err(e) => {
                drop(target);
                return self.fail_store(&slot, e);
            }
        };
        {
            let mut st = lock(&slot.state);
            if st.finished {
                // The file failed while we wrote: whoever lets go of the target last disposes
                // of it as the failure decided.
                let disposal = st.disposal;
                drop(st);
                if let Ok(target) = Arc::try_unwrap(target) {
                    target.dispose(disposal);
                }
                return;
            }
            // Let go of our handle before counting the chunk, so the thread that completes
            // the file holds the only reference and can install it.
            drop(target);
            let Some(entry) = st.hashes.get_mut(index as usize) else {
                return;
            };
            if entry.is_some() {
                drop(st);
                return self.sent_twice(&slot, index);
            }
            *entry = Some(hash);
            if let Some(arrived) = st.arrived.get_mut(index as usize) {
                *arrived = true;
            }
            st.received += 1;
            st.bytes_written += written;
        }
        if staged {
            self.written(written);
        }
        self.try_complete(&slot);
    }

    /// Records the sender's whole-file hash and how many chunks it sent.
    pub(crate) fn file_done(&self, id: u64, hash: Hash, chunks_sent: u64) {
        let Some(slot) = self.slot(id) else { return };
        {
            let mut st = lock(&slot.state);
            st.client_hash = Some(hash);
            st.expected = Some(chunks_sent);
        }
        self.try_complete(&slot);
    }

    /// The sender could not read the file: drop what we have.
    pub(crate) fn source_failed(&self, id: u64, message: String) {
        if let Some(slot) = self.slot(id) {
            self.fail(
                &slot,
                format!("the sender could not read it: {message}"),
                Disposal::Discard,
            );
        }
    }

    fn try_complete(&self, slot: &Slot) {
        let mut st = lock(&slot.state);
        let (Some(expected), Some(client)) = (st.expected, st.client_hash) else {
            return;
        };
        // A plan receives nothing: it completes on the sender's word alone.
        if st.finished || (!slot.dry_run && st.received < expected) {
            return;
        }
        st.finished = true;
        let target = st.target.take().and_then(|t| Arc::try_unwrap(t).ok());
        let mut hashes = std::mem::take(&mut st.hashes);
        let mut bytes_written = st.bytes_written;
        let received = st.received;
        drop(st);
        self.remove_slot(slot);
        if slot.dry_run {
            return self.send(installed(slot.id, client, 0, expected == 0));
        }
        let result = self.finish_file(
            slot,
            target,
            &mut hashes,
            &mut bytes_written,
            received,
            client,
        );
        match result {
            Ok(unchanged) => self.send(installed(slot.id, client, bytes_written, unchanged)),
            Err((message, no_space)) => self.send(failed(slot.id, message, no_space)),
        }
    }

    /// Fills the chunks the sender did not send from the reusable copy, checks the whole-file
    /// hash and installs. Returns whether the file was unchanged (nothing rewritten).
    fn finish_file(
        &self,
        slot: &Slot,
        target: Option<Target>,
        hashes: &mut [Option<Hash>],
        bytes_written: &mut u64,
        received: u64,
        client: Hash,
    ) -> Result<bool, (String, bool)> {
        let shown = || self.root.display_path(&slot.rel).display().to_string();
        let missing = hashes.iter().filter(|h| h.is_none()).count();
        // The destination itself already holds every chunk (nothing was sent, nothing came
        // from an interrupted run): only metadata may need fixing, and the fresh partial
        // opened for the file is not needed. Adopting an unchanged 50 GiB disk must not
        // rewrite it.
        if let Some(reuse) = &slot.reuse
            && reuse.in_place
            && received == 0
            && missing == hashes.len()
        {
            let offered: Option<Vec<Hash>> = reuse.hashes.iter().copied().collect();
            if let Some(offered) = offered
                && haul_manifest::file_hash(&slot.layout, &offered) == Some(client)
            {
                if let Some(target) = target {
                    target.discard();
                }
                return match self.root.set_file_meta(&slot.rel, &slot.attrs) {
                    Ok(()) => Ok(true),
                    Err(e) => Err((e.to_string(), e.is_no_space())),
                };
            }
        }
        let target = match target {
            Some(t) => t,
            None => match self.root.create_staging(slot.layout.size()) {
                Ok(f) => Target::Staging(f),
                Err(e) => return Err((e.to_string(), e.is_no_space())),
            },
        };
        if missing > 0
            && let (Some(reuse), Target::Partial(partial)) = (&slot.reuse, &target)
            && reuse.in_place
        {
            match self.patch(slot, reuse, partial, hashes, client) {
                Ok(Some(written)) => {
                    *bytes_written = written;
                    target.discard();
                    return Ok(false);
                }
                Ok(None) => {} // not patchable: write a new file below
                Err(e) => {
                    if e.1 {
                        target.keep()
                    } else {
                        target.discard()
                    }
                    return Err(e);
                }
            }
        }
        if missing > 0 {
            let Some(reuse) = &slot.reuse else {
                target.discard();
                return Err((
                    format!("{}: chunks were neither sent nor held", shown()),
                    false,
                ));
            };
            if let Err(e) = self.fill_from(slot, reuse, &target, hashes, bytes_written) {
                let no_space = e.1;
                if no_space {
                    target.keep()
                } else {
                    target.discard()
                }
                return Err(e);
            }
        }
        let all: Vec<Hash> = hashes.iter().flatten().copied().collect();
        if haul_manifest::file_hash(&slot.layout, &all) != Some(client) {
            target.discard();
            return Err(source_changed(&shown()));
        }
        match target.install(&self.root, &slot.rel, &slot.attrs) {
            Ok(()) => {
                // The next run that finds this file changed reuses its chunks without
                // re-hashing them (a cache: failing to record costs only that).
                if let Err(e) =
                    self.root
                        .store_chunk_hashes(&slot.rel, slot.layout.chunk_size(), &all)
                {
                    tracing::debug!(error = %e, "chunk-hash cache not updated");
                }
                Ok(false)
            }
            Err(e) => Err((e.to_string(), e.is_no_space())),
        }
    }

    /// Updates the destination in place when it is the old copy and only a few chunks
    /// changed (those the partial holds, at most a [`PATCH_SHARE`]th of the file): the
    /// unchanged chunks are checked against what was offered for them (through the chunk-hash
    /// cache, or by reading and hashing them), the whole-file hash against the sender's, and
    /// then the store overwrites just the changed ranges under an undo log. Returns the bytes
    /// written, or `None` when the file is not a candidate (the caller then writes a new file
    /// as usual, with nothing changed).
    fn patch(
        &self,
        slot: &Slot,
        reuse: &Reuse,
        partial: &haul_store::Partial,
        hashes: &[Option<Hash>],
        client: Hash,
    ) -> Result<Option<u64>, (String, bool)> {
        let layout = &slot.layout;
        let mut ranges: Vec<PatchRange> = Vec::new();
        for (index, have) in hashes.iter().enumerate() {
            let index = index as u64;
            if have.is_none() {
                continue;
            }
            let (offset, len) = (layout.offset(index), layout.len(index).map_or(0, u64::from));
            match ranges.last_mut() {
                Some(last) if last.offset + last.len == offset => last.len += len,
                _ => ranges.push(PatchRange { offset, len }),
            }
        }
        let patched: u64 = ranges.iter().map(|r| r.len).sum();
        if patched == 0 || patched > layout.size() / PATCH_SHARE {
            return Ok(None);
        }
        let shown = || self.root.display_path(&slot.rel).display().to_string();
        let vouched = match &reuse.cached {
            Some(old) => self
                .root
                .cached_chunk_hashes(old, &reuse.file, layout.chunk_size()),
            None => None,
        };
        let mut all = Vec::with_capacity(hashes.len());
        let mut buf = Vec::new();
        for (index, have) in hashes.iter().enumerate() {
            if let Some(hash) = have {
                all.push(*hash);
                continue;
            }
            let Some(Some(offered)) = reuse.hashes.get(index).copied() else {
                return Err(not_held(&shown(), index as u64));
            };
            let ok = match &vouched {
                Some(still) => still.get(index) == Some(&offered),
                None => {
                    let index = index as u64;
                    buf.resize(layout.len(index).map_or(0, |l| l as usize), 0);
                    reuse
                        .file
                        .read_exact_at(&mut buf, layout.offset(index))
                        .map_err(|e| {
                            (
                                format!("{}: cannot read the old copy to reuse it: {e}", shown()),
                                false,
                            )
                        })?;
                    haul_manifest::chunk_hash(layout, index, &buf) == offered
                }
            };
            if !ok {
                return Err(reuse_changed(&shown()));
            }
            all.push(offered);
        }
        if haul_manifest::file_hash(layout, &all) != Some(client) {
            return Err(source_changed(&shown()));
        }
        let done = self.root.patch_in_place(
            &slot.rel,
            &reuse.file,
            layout.size(),
            &ranges,
            partial,
            &slot.attrs,
        );
        match done {
            Ok(true) => {
                if let Err(e) = self
                    .root
                    .store_chunk_hashes(&slot.rel, layout.chunk_size(), &all)
                {
                    tracing::debug!(error = %e, "chunk-hash cache not updated");
                }
                Ok(Some(patched))
            }
            Ok(false) => Ok(None),
            Err(e) => Err((e.to_string(), e.is_no_space())),
        }
    }

    /// [`Self::fill_from`] for a copy whose hashes came from the chunk-hash cache: each run
    /// of missing chunks is copied in the kernel (`copy_file_range`), and afterwards the cache
    /// must still vouch for the copy (its inode, size, mtime and ctime unchanged), so a copy
    /// written to meanwhile fails the file instead of going in unverified. Returns false if
    /// the target cannot copy ranges (the caller then reads and hashes instead).
    fn fill_from_cached(
        &self,
        slot: &Slot,
        reuse: &Reuse,
        old: &RelPath,
        target: &Target,
        hashes: &mut [Option<Hash>],
        bytes_written: &mut u64,
    ) -> Result<bool, (String, bool)> {
        let Target::Partial(partial) = target else {
            return Ok(false);
        };
        let shown = || self.root.display_path(&slot.rel).display().to_string();
        let mut index = 0usize;
        while index < hashes.len() {
            if hashes[index].is_some() {
                index += 1;
                continue;
            }
            let start = index;
            while index < hashes.len() && hashes[index].is_none() {
                index += 1;
            }
            let offset = slot.layout.offset(start as u64);
            let end = slot
                .layout
                .offset(index as u64 - 1)
                .saturating_add(slot.layout.len(index as u64 - 1).map_or(0, u64::from));
            match partial.copy_from(&reuse.file, offset, end - offset) {
                Ok(n) => *bytes_written += n,
                Err(e) => return Err((e.to_string(), e.is_no_space())),
            }
        }
        let still = self
            .root
            .cached_chunk_hashes(old, &reuse.file, slot.layout.chunk_size());
        for (index, have) in hashes.iter_mut().enumerate() {
            if have.is_some() {
                continue;
            }
            let offered = reuse.hashes.get(index).copied().flatten();
            let vouched = still.as_ref().and_then(|s| s.get(index)).copied();
            let (Some(offered), Some(len)) = (offered, slot.layout.len(index as u64)) else {
                return Err(not_held(&shown(), index as u64));
            };
            if vouched != Some(offered) {
                return Err(reuse_changed(&shown()));
            }
            if let Err(e) = target.record(index as u64, offered, u64::from(len)) {
                return Err((e.to_string(), e.is_no_space()));
            }
            *have = Some(offered);
        }
        Ok(true)
    }

    /// Copies every chunk the sender did not send from the reusable copy, checking each
    /// against the hash that was offered for it.
    fn fill_from(
        &self,
        slot: &Slot,
        reuse: &Reuse,
        target: &Target,
        hashes: &mut [Option<Hash>],
        bytes_written: &mut u64,
    ) -> Result<(), (String, bool)> {
        if let Some(old) = &reuse.cached
            && self.fill_from_cached(slot, reuse, old, target, hashes, bytes_written)?
        {
            return Ok(());
        }
        let mut buf = Vec::new();
        for (index, have) in hashes.iter_mut().enumerate() {
            if have.is_some() {
                continue;
            }
            let index = index as u64;
            let shown = || self.root.display_path(&slot.rel).display().to_string();
            let (Some(len), Some(Some(offered))) =
                (slot.layout.len(index), reuse.hashes.get(index as usize))
            else {
                return Err(not_held(&shown(), index));
            };
            buf.resize(len as usize, 0);
            let offset = slot.layout.offset(index);
            if let Err(e) = reuse.file.read_exact_at(&mut buf, offset) {
                return Err((
                    format!("{}: cannot read the old copy to reuse it: {e}", shown()),
                    false,
                ));
            }
            let hash = haul_manifest::chunk_hash(&slot.layout, index, &buf);
            if hash != *offered {
                return Err(reuse_changed(&shown()));
            }
            match target
                .write_at(offset, &buf)
                .and_then(|n| target.record(index, hash, u64::from(len)).map(|()| n))
            {
                Ok(n) => *bytes_written += n,
                Err(e) => return Err((e.to_string(), e.is_no_space())),
            }
            *have = Some(hash);
        }
        Ok(())
    }

    fn sent_twice(&self, slot: &Slot, index: u64) {
        let message = format!(
            "chunk {index} of {} was sent twice; the file was dropped",
            self.root.display_path(&slot.rel).display()
        );
        self.fail(slot, message, Disposal::Discard);
    }

    fn fail_store(&self, slot: &Slot, e: StoreError) {
        let no_space = e.is_no_space();
        let disposal = if no_space {
            Disposal::Keep
        } else {
            Disposal::Discard
        };
        if self.finish(slot, disposal) {
            self.send(failed(slot.id, e.to_string(), no_space));
        }
    }

    fn fail(&self, slot: &Slot, message: String, disposal: Disposal) {
        if self.finish(slot, disposal) {
            self.send(failed(slot.id, message, false));
        }
    }

    /// Marks a slot finished and disposes of its target; false if it already was finished.
    fn finish(&self, slot: &Slot, disposal: Disposal) -> bool {
        let target = {
            let mut st = lock(&slot.state);
            if st.finished {
                return false;
            }
            st.finished = true;
            st.disposal = disposal;
            st.target.take()
        };
        self.remove_slot(slot);
        // A thread with a write in flight may still hold the target; it then disposes of it
        // when it sees the slot finished.
        if let Some(target) = target.and_then(|t| Arc::try_unwrap(t).ok()) {
            target.dispose(disposal);
        }
        true
    }

    /// Ends every unfinished file (the session ended early): verified chunks of partials are
    /// kept for the next run, staging files removed.
    pub(crate) fn abandon_all(&self) {
        let slots: Vec<_> = lock(&self.slots).values().cloned().collect();
        for slot in slots {
            self.finish(&slot, Disposal::Keep);
        }
    }
}

/// A file fails because the old copy it reused changed meanwhile.
fn reuse_changed(path: &str) -> (String, bool) {
    let message =
        format!("{path}: the old copy changed while it was being reused; run the copy again");
    (message, false)
}

/// A file fails because one of its chunks was neither sent nor held.
fn not_held(path: &str, index: u64) -> (String, bool) {
    (
        format!("{path}: chunk {index} was neither sent nor held"),
        false,
    )
}

/// A file fails because its chunks verified one by one but not as a whole: the source
/// changed while it was read.
fn source_changed(path: &str) -> (String, bool) {
    let message = format!(
        "{path}: the whole-file hash differs from the sender's although every chunk verified: \
         the source changed while it was read; run the copy again"
    );
    (message, false)
}

/// The outcome that resolves entry `id` as installed.
pub(super) fn installed(id: u64, hash: Hash, bytes_written: u64, unchanged: bool) -> Outcome {
    Outcome::Resolved(
        id,
        Message::Installed(Installed {
            id,
            hash,
            bytes_written,
            unchanged,
            meta_only: false,
        }),
    )
}

/// The outcome that resolves entry `id` as installed with nothing written: `unchanged` when
/// the target already held its data, `meta_only` when its metadata (owner, mode, attributes)
/// had to be fixed.
pub(super) fn kept(id: u64, hash: Hash, unchanged: bool, meta_only: bool) -> Outcome {
    Outcome::Resolved(
        id,
        Message::Installed(Installed {
            id,
            hash,
            bytes_written: 0,
            unchanged,
            meta_only,
        }),
    )
}

/// The outcome that resolves entry `id` as failed.
pub(super) fn failed(id: u64, message: String, no_space: bool) -> Outcome {
    Outcome::Resolved(
        id,
        Message::Failed(Failed {
            id,
            message,
            no_space,
        }),
    )
}
