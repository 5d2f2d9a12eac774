//! One chunk from a data stream, on a blocking thread: checked against what the file expects
//! (not sent twice, not a changed version of a chunk offered from an interrupted run), hashed
//! and compared with the sender's hash before a byte of it is written, written to the file's
//! target (created on the first chunk), and counted. The chunk that completes a file hands it
//! on to `install` (`Files::try_complete`).

use std::sync::Arc;

use haul_proto::Chunk;

use super::{Files, Slot};
use crate::lock;
use crate::receiver::target::{Disposal, Target};

impl Files {
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
            if slot.replaceable
                && let Some(held) = st.hashes.get_mut(index as usize)
            {
                // Journaled under another version of the source and compared by the sender,
                // which found it changed: the new chunk replaces it.
                *held = None;
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

    fn sent_twice(&self, slot: &Slot, index: u64) {
        let message = format!(
            "chunk {index} of {} was sent twice; the file was dropped",
            self.root.display_path(&slot.rel).display()
        );
        self.fail(slot, message, Disposal::Discard);
    }
}
