//! Durability of what a session installs.
//!
//! The rule: a small file (a staging target) is reported installed, and gets the source's
//! modification time, only once its data is durable. It is renamed into place with the time
//! it was written (`Attrs::keep_write_time`) and waits here with its `Installed` answer; the
//! session's settler thread flushes the root (`syncfs`) at most [`SETTLE_AFTER`] after the
//! first file began waiting (sooner once [`SETTLE_FILES`] wait or [`EARLY_FLUSH_BYTES`] were
//! written), then sets their times (`Root::settle_times`) and sends their answers. A power cut
//! before that leaves files whose mtime differs from the source's, which the next run's quick
//! check sends again, and that the sender never reported as installed. Multi-chunk files
//! (partials) are `fdatasync`ed as they install, with their time; they wait here only for
//! their name (the directory entry) to be flushed before they are answered.
//!
//! One `syncfs` covers every file waiting: a file's own `fdatasync` costs 30 times more here
//! (1.6 ms against 0.06 ms a file). A failed flush is never swallowed (the kernel reports a
//! writeback error once): every file that waited on it fails with the error, which also fails
//! the session ([`Files::settle`]).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use haul_proto::Meta;
use haul_store::{RelPath, Root, StoreError};
use tokio::sync::mpsc::UnboundedSender;

use super::Files;
use crate::lock;
use crate::receiver::outcome::{Outcome, failed};

/// Once this much has been written through the page cache, a flush starts (the disk writes
/// small files out while more arrive, instead of all at the end).
const EARLY_FLUSH_BYTES: u64 = 32 << 20;
/// A flush starts once this many files wait (well under the sender's window of answers).
const SETTLE_FILES: usize = 2048;
/// ... or this long after the first of them began waiting.
const SETTLE_AFTER: Duration = Duration::from_millis(20);

/// A file installed and waiting for a flush.
struct Waiting {
    rel: RelPath,
    /// The source's mtime to set, for a file installed with its write time; `None` for one
    /// that has its own already (its data was synced; its name waits for the flush).
    meta: Option<Meta>,
    id: u64,
    answer: Outcome,
}

#[derive(Default)]
struct State {
    files: Vec<Waiting>,
    since: Option<Instant>,
    /// Flush now (bytes written, or the session is ending).
    urgent: bool,
    /// The session is over: the settler exits once nothing waits.
    stop: bool,
    flushing: bool,
    error: Option<StoreError>,
}

/// The waiting files and the settler's signals.
pub(crate) struct Unsettled {
    state: Mutex<State>,
    wake: Condvar,
    done: Condvar,
    /// The settler thread runs (else flushes happen inline).
    threaded: std::sync::atomic::AtomicBool,
}

impl Unsettled {
    /// Starts the settler thread of a session.
    pub(super) fn start(root: Arc<Root>, out: UnboundedSender<Vec<Outcome>>) -> Arc<Unsettled> {
        let me = Arc::new(Unsettled {
            state: Mutex::default(),
            wake: Condvar::new(),
            done: Condvar::new(),
            threaded: false.into(),
        });
        let theirs = me.clone();
        let started = std::thread::Builder::new()
            .name("haul-settle".into())
            .spawn(move || theirs.run(&root, &out));
        me.threaded.store(started.is_ok(), Ordering::Release);
        me
    }

    fn run(self: Arc<Self>, root: &Root, out: &UnboundedSender<Vec<Outcome>>) {
        loop {
            let mut st = lock(&self.state);
            loop {
                let due = st.urgent
                    || st.files.len() >= SETTLE_FILES
                    || st.since.is_some_and(|t| t.elapsed() >= SETTLE_AFTER);
                if due {
                    break;
                }
                // Nobody left to add files (the session is gone), or told to stop.
                if st.files.is_empty() && (st.stop || Arc::strong_count(&self) == 1) {
                    return;
                }
                let wait = st.since.map_or(Duration::from_millis(100), |t| {
                    SETTLE_AFTER.saturating_sub(t.elapsed())
                });
                st = self
                    .wake
                    .wait_timeout(st, wait)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            let batch = self.take(&mut st);
            drop(st);
            self.flush(root, batch, out);
        }
    }

    fn take(&self, st: &mut State) -> Vec<Waiting> {
        st.since = None;
        st.urgent = false;
        st.flushing = true;
        std::mem::take(&mut st.files)
    }

    /// Flushes the root, then settles and answers for `batch`.
    fn flush(&self, root: &Root, batch: Vec<Waiting>, out: &UnboundedSender<Vec<Outcome>>) {
        let times: Vec<(RelPath, Meta)> = batch
            .iter()
            .filter_map(|w| w.meta.map(|m| (w.rel.clone(), m)))
            .collect();
        let result = root.sync().and_then(|()| root.settle_times(&times));
        let answers: Vec<Outcome> = match &result {
            Ok(()) => batch.into_iter().map(|w| w.answer).collect(),
            Err(e) => batch
                .into_iter()
                .map(|w| {
                    failed(
                        w.id,
                        format!(
                            "{} could not be made durable: {e}",
                            root.display_path(&w.rel).display()
                        ),
                        e.is_no_space(),
                    )
                })
                .collect(),
        };
        if !answers.is_empty() {
            let _ = out.send(answers);
        }
        let mut st = lock(&self.state);
        if let Err(e) = result {
            st.error.get_or_insert(e);
        }
        st.flushing = false;
        drop(st);
        self.done.notify_all();
    }
}

impl Files {
    /// Counts bytes written through the page cache; every [`EARLY_FLUSH_BYTES`] asks the
    /// settler to flush.
    pub(super) fn written(&self, bytes: u64) {
        if bytes == 0
            || self.unflushed.fetch_add(bytes, Ordering::Relaxed) + bytes < EARLY_FLUSH_BYTES
        {
            return;
        }
        self.unflushed.store(0, Ordering::Relaxed);
        lock(&self.unsettled.state).urgent = true;
        self.unsettled.wake.notify_one();
    }

    /// A file installed but not yet durable (its data, or only its name): its `answer` goes
    /// out, and its time `meta` (if it was installed with its write time) is set, once a
    /// flush has made it durable.
    pub(crate) fn unsettled(&self, rel: RelPath, meta: Option<Meta>, id: u64, answer: Outcome) {
        let waiting = Waiting {
            rel,
            meta,
            id,
            answer,
        };
        if !self.unsettled.threaded.load(Ordering::Acquire) {
            // No settler thread: flush for this file alone (slow, but never wrong).
            self.unsettled
                .flush(&self.root, vec![waiting], &self.outbox.sender());
            return;
        }
        let mut st = lock(&self.unsettled.state);
        st.files.push(waiting);
        st.since.get_or_insert_with(Instant::now);
        let full = st.files.len() >= SETTLE_FILES;
        drop(st);
        if full {
            self.unsettled.wake.notify_one();
        }
    }

    /// Makes everything installed so far durable with its final times and answered, stops the
    /// settler, and reports the first flush error of the session. Blocking; every end of a
    /// session calls it (a second call finds nothing to do).
    pub(crate) fn settle(&self) -> Result<(), StoreError> {
        let unsettled = &self.unsettled;
        let mut st = lock(&unsettled.state);
        if !unsettled.threaded.load(Ordering::Acquire) && !st.files.is_empty() {
            let batch = unsettled.take(&mut st);
            drop(st);
            unsettled.flush(&self.root, batch, &self.outbox.sender());
            st = lock(&unsettled.state);
        }
        if !st.files.is_empty() {
            st.urgent = true;
        }
        st.stop = true;
        unsettled.wake.notify_one();
        while !st.files.is_empty() || st.flushing || st.urgent {
            st = unsettled
                .done
                .wait_timeout(st, Duration::from_millis(50))
                .unwrap_or_else(|p| p.into_inner())
                .0;
            unsettled.wake.notify_one();
        }
        match st.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
