//! The end of a file: the sender's `FileDone` (its whole-file hash and how many chunks it
//! sent) and the last chunk meet in `try_complete`, whichever comes second. Then what was not
//! sent is filled from the old copy (or the old copy is patched in place: see `reuse`), the
//! whole-file hash is checked against the sender's, and the target is renamed into place with
//! its metadata; the chunk hashes go to the cache for the next run.

use std::sync::Arc;

use haul_proto::Hash;

use super::reuse::{fill_from, patch};
use super::{Files, Slot, source_changed};
use crate::lock;
use crate::receiver::outcome::{failed, installed};
use crate::receiver::target::{Disposal, Target};

/// How a file's install ended.
enum Done {
    /// Durable and answered now; `true` when nothing had to be rewritten.
    Durable(bool),
    /// Renamed into place, to be answered once a flush has made its name (and, from
    /// staging, its data) durable; `time_set` when it already has the source's mtime.
    Installed {
        /// The file has its final mtime (a synced partial).
        time_set: bool,
    },
}

impl Files {
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

    pub(super) fn try_complete(&self, slot: &Slot) {
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
            Ok(Done::Durable(unchanged)) => {
                self.send(installed(slot.id, client, bytes_written, unchanged))
            }
            // Answered once a flush has made its data durable (see `flush`).
            Ok(Done::Installed { time_set }) => self.unsettled(
                slot.rel.clone(),
                (!time_set).then_some(slot.attrs.meta),
                slot.id,
                installed(slot.id, client, bytes_written, false),
            ),
            Err((message, no_space)) => self.send(failed(slot.id, message, no_space)),
        }
    }

    /// Fills the chunks the sender did not send from the reusable copy, checks the whole-file
    /// hash and installs. Says whether the file was unchanged (nothing rewritten) or waits
    /// for a flush.
    fn finish_file(
        &self,
        slot: &Slot,
        target: Option<Target>,
        hashes: &mut [Option<Hash>],
        bytes_written: &mut u64,
        received: u64,
        client: Hash,
    ) -> Result<Done, (String, bool)> {
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
                    Ok(()) => Ok(Done::Durable(true)),
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
            match patch(&self.root, slot, reuse, partial, hashes, client) {
                Ok(Some(written)) => {
                    *bytes_written = written;
                    target.discard();
                    return Ok(Done::Durable(false));
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
            if let Err(e) = fill_from(&self.root, slot, reuse, &target, hashes, bytes_written) {
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
        // A staging file's data is in the page cache only: it takes the source's mtime once
        // a flush has made the data durable (see `flush`). A partial is synced as it installs.
        let staged = matches!(target, Target::Staging(_));
        let installed = if staged {
            let attrs = haul_store::Attrs {
                keep_write_time: true,
                ..slot.attrs.clone()
            };
            target.install(&self.root, &slot.rel, &attrs)
        } else {
            target.install(&self.root, &slot.rel, &slot.attrs)
        };
        match installed {
            Ok(()) => {
                // The next run that finds this file changed reuses its chunks without
                // re-hashing them (a cache: failing to record costs only that).
                if let Err(e) =
                    self.root
                        .store_chunk_hashes(&slot.rel, slot.layout.chunk_size(), &all)
                {
                    tracing::debug!(error = %e, "chunk-hash cache not updated");
                }
                Ok(Done::Installed { time_set: !staged })
            }
            Err(e) => Err((e.to_string(), e.is_no_space())),
        }
    }
}
