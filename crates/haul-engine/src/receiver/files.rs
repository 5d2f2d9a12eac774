//! The receiver's per-file state: staging, verification, install.
//!
//! Every function here runs on a blocking thread. A chunk is hashed and compared with the hash
//! the sender announced before a single byte of it is written; a file is renamed to its final
//! name only when every chunk is verified and the whole-file hash assembled from them matches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use haul_proto::{Chunk, ChunkLayout, Failed, Hash, Installed, Message, Meta};
use haul_store::{RelPath, Root, StagingFile, StoreError};
use tokio::sync::mpsc::UnboundedSender;

/// What the control writer must send, and which entry it resolves.
pub(crate) enum Outcome {
    /// A message that resolves an entry (Installed or Failed).
    Resolved(u64, Message),
    /// A message that resolves nothing (Need).
    Plain(Message),
    /// The client has announced its last entry.
    EndOfEntries,
}

struct SlotState {
    staging: Option<Arc<StagingFile>>,
    hashes: Vec<Option<Hash>>,
    received: u64,
    bytes_written: u64,
    client_hash: Option<Hash>,
    finished: bool,
}

/// A file being received.
pub(crate) struct Slot {
    id: u64,
    rel: RelPath,
    layout: ChunkLayout,
    meta: Meta,
    state: Mutex<SlotState>,
}

/// Every file of one session that is being received.
pub(crate) struct Files {
    root: Arc<Root>,
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
    out: UnboundedSender<Outcome>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Files {
    pub(crate) fn new(root: Arc<Root>, out: UnboundedSender<Outcome>) -> Self {
        Files {
            root,
            slots: Mutex::new(HashMap::new()),
            out,
        }
    }

    pub(crate) fn root(&self) -> &Root {
        &self.root
    }

    pub(crate) fn send(&self, outcome: Outcome) {
        let _ = self.out.send(outcome);
    }

    /// Registers a file with data to receive.
    pub(crate) fn open(&self, id: u64, rel: RelPath, layout: ChunkLayout, meta: Meta) {
        let count = layout.count() as usize;
        let slot = Slot {
            id,
            rel,
            layout,
            meta,
            state: Mutex::new(SlotState {
                staging: None,
                hashes: vec![None; count],
                received: 0,
                bytes_written: 0,
                client_hash: None,
                finished: false,
            }),
        };
        lock(&self.slots).insert(id, Arc::new(slot));
    }

    fn slot(&self, id: u64) -> Option<Arc<Slot>> {
        lock(&self.slots).get(&id).cloned()
    }

    /// Verifies and writes one chunk; installs the file if it was the last piece missing.
    pub(crate) fn receive(&self, chunk: Chunk) {
        let Some(slot) = self.slot(chunk.id) else {
            return;
        };
        let staging = {
            let mut st = lock(&slot.state);
            if st.finished {
                return;
            }
            if st.staging.is_none() {
                match self.root.create_staging(slot.layout.size()) {
                    Ok(file) => st.staging = Some(Arc::new(file)),
                    Err(e) => {
                        drop(st);
                        return self.fail_store(&slot, e);
                    }
                }
            }
            st.staging.clone()
        };
        let Some(staging) = staging else { return };
        let index = chunk.index;
        let hash = if chunk.zero {
            haul_manifest::zero_chunk_hash(&slot.layout, index)
        } else {
            haul_manifest::chunk_hash(&slot.layout, index, &chunk.data)
        };
        if hash != chunk.hash {
            drop(staging);
            return self.fail(
                &slot,
                format!(
                    "chunk {index} of {} failed verification (its BLAKE3 hash differs from the \
                     sender's): the data was damaged in transit or the sender is faulty; nothing \
                     of it was written",
                    self.root.display_path(&slot.rel).display()
                ),
                false,
            );
        }
        let written = if chunk.zero {
            Ok(0)
        } else {
            staging.write_at(slot.layout.offset(index), &chunk.data)
        };
        // Drop our handle before recording, so the thread that records the last chunk holds
        // the only reference and can install the file.
        drop(staging);
        let written = match written {
            Ok(n) => n,
            Err(e) => return self.fail_store(&slot, e),
        };
        {
            let mut st = lock(&slot.state);
            let Some(entry) = st.hashes.get_mut(index as usize) else {
                return;
            };
            if entry.is_some() {
                drop(st);
                return self.fail(&slot, format!("chunk {index} was sent twice"), false);
            }
            *entry = Some(hash);
            st.received += 1;
            st.bytes_written += written;
        }
        self.try_complete(&slot);
    }

    /// Records the sender's whole-file hash.
    pub(crate) fn file_done(&self, id: u64, hash: Hash) {
        let Some(slot) = self.slot(id) else { return };
        lock(&slot.state).client_hash = Some(hash);
        self.try_complete(&slot);
    }

    /// The sender could not read the file: drop what we have.
    pub(crate) fn source_failed(&self, id: u64, message: String) {
        if let Some(slot) = self.slot(id) {
            self.fail(
                &slot,
                format!("the sender could not read it: {message}"),
                false,
            );
        }
    }

    fn try_complete(&self, slot: &Slot) {
        let mut st = lock(&slot.state);
        let count = slot.layout.count();
        if st.finished || st.received < count {
            return;
        }
        let hashes: Vec<Hash> = st.hashes.iter().flatten().copied().collect();
        let hash = if count == 1 {
            hashes[0]
        } else {
            let Some(client) = st.client_hash else { return };
            let ours = haul_manifest::file_hash(&slot.layout, &hashes);
            if ours != Some(client) {
                drop(st);
                return self.fail(
                    slot,
                    "the whole-file hash differs from the sender's although every chunk verified: \
                     the sender's file changed while it was read; run the copy again"
                        .into(),
                    false,
                );
            }
            client
        };
        st.finished = true;
        let staging = st.staging.take().and_then(|s| Arc::try_unwrap(s).ok());
        let bytes_written = st.bytes_written;
        drop(st);
        lock(&self.slots).remove(&slot.id);
        let Some(staging) = staging else {
            return self.fail(
                slot,
                "internal error: staging file still in use".into(),
                false,
            );
        };
        match self.root.install_file(staging, &slot.rel, &slot.meta) {
            Ok(()) => self.send(Outcome::Resolved(
                slot.id,
                Message::Installed(Installed {
                    id: slot.id,
                    hash,
                    bytes_written,
                }),
            )),
            Err(e) => self.report_store(slot.id, e),
        }
    }

    fn fail_store(&self, slot: &Slot, e: StoreError) {
        if self.finish(slot) {
            self.report_store(slot.id, e);
        }
    }

    fn report_store(&self, id: u64, e: StoreError) {
        let no_space = e.is_no_space();
        self.send(Outcome::Resolved(
            id,
            Message::Failed(Failed {
                id,
                message: e.to_string(),
                no_space,
            }),
        ));
    }

    fn fail(&self, slot: &Slot, message: String, no_space: bool) {
        if self.finish(slot) {
            self.send(Outcome::Resolved(
                slot.id,
                Message::Failed(Failed {
                    id: slot.id,
                    message,
                    no_space,
                }),
            ));
        }
    }

    /// Marks a slot finished and drops its staging file; false if it already was.
    fn finish(&self, slot: &Slot) -> bool {
        let staging = {
            let mut st = lock(&slot.state);
            if st.finished {
                return false;
            }
            st.finished = true;
            st.staging.take()
        };
        lock(&self.slots).remove(&slot.id);
        if let Some(staging) = staging.and_then(|s| Arc::try_unwrap(s).ok()) {
            let _ = staging.discard();
        }
        true
    }

    /// Drops every unfinished file (the session ended early).
    pub(crate) fn abandon_all(&self) {
        let slots: Vec<_> = lock(&self.slots).drain().map(|(_, s)| s).collect();
        for slot in slots {
            let staging = lock(&slot.state).staging.take();
            drop(staging);
        }
    }
}
