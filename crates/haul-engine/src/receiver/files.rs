//! The receiver's files in flight: the table of slots, and the stages a file goes through.
//!
//! Every function here runs on a blocking thread. A chunk that arrives is hashed and compared
//! with the hash the sender announced before a byte of it is written (except in-process, where
//! it is the very buffer the sender hashed: see `Link::shares_buffers`). A chunk that does not
//! arrive because the sender found the receiver already holds it (an interrupted run's
//! journal, the old copy, a renamed-aside copy) is read from there, hashed again and compared
//! with what was offered before it is written. A file is renamed to its final name only when
//! the whole-file hash assembled from all its chunk hashes equals the sender's.
//!
//! # Layout
//! A file, in the order it goes (each stage module uses the table here and only stages listed
//! after it):
//! - here: the table. A [`Plan`] (from the entry stage) opens a [`Slot`]; a slot ends
//!   installed or failed (`finish`, `fail`), or abandoned with its session. The chunk budget
//!   of a session ([`MAX_CHUNKS_IN_FLIGHT`]) is kept here.
//! - `chunk`: one chunk from a data stream: checked, hashed, written to the target.
//! - `install`: the sender's `FileDone` and the last chunk meet: fill what was not sent, check
//!   the whole-file hash, install (rename into place with its metadata).
//! - `reuse`: the chunks an old copy supplies, copied into the target or, for a few changed
//!   chunks, patched into the old copy in place.
//! - `flush`: early `syncfs` while small files keep arriving.
//! - `busy`: which blocking tasks work on the files, and whether the session is over.
//!
//! Answers go out through [`super::outcome`]; where the bytes go is [`super::target`].

mod busy;
mod chunk;
mod flush;
mod install;
mod reuse;

use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use haul_proto::{ChunkLayout, Hash};
use haul_store::{Attrs, RelPath, Root, StoreError};
use tokio::sync::mpsc::UnboundedSender;

// `Outcome` is also reachable as `files::Outcome` for the modules that send through `Files`.
pub(crate) use super::outcome::Outcome;
use super::outcome::{Outbox, failed};
use super::target::{Disposal, Target};
use crate::idmap::IdMap;
use crate::lock;

/// Most chunks one file may have: 16 TiB at the default 4 MiB chunk size.
pub(crate) const MAX_CHUNKS_PER_FILE: u64 = 1 << 22;
/// Most chunks of all files in flight in one session (about 70 MB of bookkeeping at most;
/// 4 TiB of file data at the default chunk size).
pub(crate) const MAX_CHUNKS_IN_FLIGHT: u64 = 1 << 20;

/// Where reusable chunks of a file come from (see `reuse` for how they are used).
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
    /// The chunks `verified` came from a partial journaled under another version stamp of
    /// the source: the sender compares them, and one it sends anew replaces the old.
    replaceable: bool,
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
    outbox: Outbox,
    /// Chunks of all files in flight, against [`MAX_CHUNKS_IN_FLIGHT`].
    chunks_in_flight: AtomicU64,
    /// Blocking tasks working on this session's files right now.
    busy: Arc<AtomicU64>,
    /// Set when the session is over: entries still queued are dropped unhandled, so a dead
    /// session does not go on opening (and locking) partials that a new one needs.
    closed: AtomicBool,
    /// The link hands over the sender's own buffers (see `Link::shares_buffers`): its chunk
    /// hashes are taken as they are.
    shared_buffers: bool,
    /// Bytes written through the page cache since the last early flush was started.
    unflushed: AtomicU64,
    /// Installed files whose data is not yet known durable (see `flush`).
    unsettled: Arc<flush::Unsettled>,
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
    /// `verified` is of another version stamp (see [`Slot`]).
    pub(crate) replaceable: bool,
    pub(crate) reuse: Option<Reuse>,
}

impl Files {
    pub(crate) fn new(
        root: Arc<Root>,
        out: UnboundedSender<Vec<Outcome>>,
        shared_buffers: bool,
    ) -> Self {
        let unsettled = flush::Unsettled::start(root.clone(), out.clone());
        Files {
            root,
            slots: Mutex::new(IdMap::default()),
            outbox: Outbox::new(out),
            chunks_in_flight: AtomicU64::new(0),
            busy: Arc::new(AtomicU64::new(0)),
            closed: AtomicBool::new(false),
            shared_buffers,
            unflushed: AtomicU64::new(0),
            unsettled,
        }
    }

    pub(crate) fn root(&self) -> &Root {
        &self.root
    }

    /// Sends `outcome` to the control writer (see [`Outbox::send`]).
    pub(crate) fn send(&self, outcome: Outcome) {
        self.outbox.send(outcome);
    }

    /// Runs `work` sending what it sends as one batch (see [`Outbox::batched`]).
    pub(crate) fn batched<R>(&self, work: impl FnOnce() -> R) -> R {
        self.outbox.batched(work)
    }

    /// Accounts for a file's chunks before it is opened; false if that would exceed the budget.
    pub(crate) fn reserve_chunks(&self, count: u64) -> bool {
        let budget = MAX_CHUNKS_IN_FLIGHT;
        self.chunks_in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n + count <= budget).then_some(n + count)
            })
            .is_ok()
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
            replaceable: plan.replaceable,
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

    /// Forgets a finished slot and gives its chunks back to the budget.
    fn remove_slot(&self, slot: &Slot) {
        if lock(&self.slots).remove(&slot.id).is_some() {
            self.chunks_in_flight
                .fetch_sub(slot.layout.count(), Ordering::AcqRel);
        }
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

/// A file fails because its chunks verified one by one but not as a whole: the source
/// changed while it was read.
fn source_changed(path: &str) -> (String, bool) {
    let message = format!(
        "{path}: the whole-file hash differs from the sender's although every chunk verified: \
         the source changed while it was read; run the copy again"
    );
    (message, false)
}
