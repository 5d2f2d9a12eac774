//! Early flushes: while small files keep arriving, the page cache is written out in the
//! background, so the session's closing `syncfs` does not find gigabytes left to write.

use std::sync::atomic::Ordering;

use super::Files;

/// Once this much has been written through the page cache, a background `syncfs` starts
/// writing it out (see [`Files::written`]).
const EARLY_FLUSH_BYTES: u64 = 32 << 20;

impl Files {
    /// Counts bytes written through the page cache. Every [`EARLY_FLUSH_BYTES`] a `syncfs`
    /// starts on its own thread (one at a time), so the disk writes small files out while
    /// more arrive: the kernel would otherwise wait 30 s or for gigabytes of dirty pages, and
    /// the session's closing `syncfs` (its success means "durable") would write everything
    /// then, with the network idle. An early flush that fails changes nothing: the closing
    /// one reports.
    pub(super) fn written(&self, bytes: u64) {
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
}
