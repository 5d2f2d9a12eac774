//! Busy/idle bookkeeping of a session's files: which blocking tasks work on them right now,
//! and whether the session is over. The session's end sets `closed`, waits until no task is
//! busy, and only then abandons what is left (see `Files::abandon_all`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Files;

/// Marks a blocking task as working on a session's files until dropped.
pub(crate) struct Busy(Arc<AtomicU64>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Files {
    /// Marks the session over (see `closed`).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Whether the session is over.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
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
}
