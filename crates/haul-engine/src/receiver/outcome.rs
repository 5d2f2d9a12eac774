//! What the receiver's stages answer, and how the answers reach the control writer.
//!
//! Every stage (entry handling, the file stages under `files`, `--delete`) resolves entries
//! by sending an [`Outcome`] through the session's [`Outbox`]; the control writer turns them
//! into messages. This module depends on no other part of the receiver.

use std::cell::RefCell;

use haul_proto::{Failed, Hash, Installed, Message};
use tokio::sync::mpsc::UnboundedSender;

/// What the control writer must send, and which entry it resolves.
pub(crate) enum Outcome {
    /// A message that resolves an entry (Installed or Failed).
    Resolved(u64, Message),
    /// A message that resolves nothing (Have, Need).
    Plain(Message),
    /// The answer to a quick check of `files` files (see the entry stage's `quick_check`).
    Checked {
        id: u64,
        files: u64,
        unchanged: bool,
    },
    /// The client has announced its last entry.
    EndOfEntries,
}

thread_local! {
    /// Outcomes held back by [`Outbox::batched`] on this thread (`None`: send at once).
    static HELD: RefCell<Option<Vec<Outcome>>> = const { RefCell::new(None) };
}

/// The way to the control writer.
pub(crate) struct Outbox {
    out: UnboundedSender<Vec<Outcome>>,
}

impl Outbox {
    pub(crate) fn new(out: UnboundedSender<Vec<Outcome>>) -> Self {
        Outbox { out }
    }

    /// The channel itself, for a thread that answers later (see `files::flush`).
    pub(crate) fn sender(&self) -> UnboundedSender<Vec<Outcome>> {
        self.out.clone()
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
        struct Flush<'a>(&'a Outbox);
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
