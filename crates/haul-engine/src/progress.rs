//! Progress counters, events and the job summary.
//!
//! The engine never prints. Long work updates [`Progress`] (atomics the CLI samples for its bars)
//! and reports discrete happenings as [`Event`]s through an [`EventSink`]; a finished transfer
//! returns a [`Summary`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Live counters of a transfer, sampled by whoever shows progress.
#[derive(Debug, Default)]
pub struct Progress {
    /// Regular files found by the scan so far.
    pub files_scanned: AtomicU64,
    /// Bytes in those files.
    pub bytes_scanned: AtomicU64,
    /// True once the scan has finished (totals are final).
    pub scan_done: AtomicBool,
    /// Files the receiver has installed.
    pub files_done: AtomicU64,
    /// File bytes the receiver has installed (whole files).
    pub bytes_done: AtomicU64,
    /// Payload bytes handed to the network.
    pub bytes_sent: AtomicU64,
    /// Chunks handed to the network.
    pub chunks_sent: AtomicU64,
    /// Chunks the receiver already held (reused locally instead of sent).
    pub chunks_reused: AtomicU64,
    /// Bytes in those chunks.
    pub bytes_reused: AtomicU64,
    /// Dry run: chunks that would be sent.
    pub would_send_chunks: AtomicU64,
    /// Dry run: bytes that would be sent.
    pub would_send_bytes: AtomicU64,
}

impl Progress {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Something worth telling the operator about while a job runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// One file or directory could not be copied; the rest goes on.
    FileFailed {
        /// The path (source side for read problems, target side otherwise).
        path: String,
        /// What went wrong and what to do.
        message: String,
    },
    /// `--delete` removed a path from the target (or would, in a dry run); with
    /// `TransferOptions::list_files` or in a dry run.
    Deleted {
        /// The path, relative to the destination.
        path: String,
        /// True when nothing was removed (a dry run or a plan).
        dry_run: bool,
    },
    /// A file was installed on the target (only with `TransferOptions::list_files`).
    FileInstalled {
        /// Path relative to the destination (lossy UTF-8).
        path: String,
        /// Size in bytes.
        bytes: u64,
        /// The BLAKE3 hash the receiver verified, as `b3sum` prints it.
        blake3: String,
    },
    /// Something the operator should know that does not stop the run.
    Warning {
        /// What, and what to do.
        message: String,
    },
    /// A new server was trusted on first use and recorded.
    TrustedOnFirstUse {
        /// HOST:PORT.
        host: String,
        /// The certificate fingerprint now recorded.
        fingerprint: String,
        /// Where it was recorded.
        known_hosts: String,
    },
    /// The receiver accepted a session.
    SessionStarted {
        /// The peer's address.
        peer: String,
        /// The destination under the root.
        dest: String,
    },
    /// A serving host ran a remote operation that changes its tree (logged whether or not it
    /// succeeded).
    RemoteOperation {
        /// The peer's address.
        peer: String,
        /// `rm`, `mv`, `put`, `snapshot create`, ...
        op: String,
        /// The paths it named, relative to the peer's grant.
        paths: Vec<String>,
        /// Why it failed, if it did.
        error: Option<String>,
    },
    /// A receiver session ended.
    SessionEnded {
        /// The peer's address.
        peer: String,
        /// Entries installed.
        installed: u64,
        /// Entries that failed.
        failed: u64,
        /// Why it ended early, if it did.
        error: Option<String>,
    },
}

/// Where events go.
pub type EventSink = Arc<dyn Fn(Event) + Send + Sync>;

/// An event sink that drops everything.
pub fn no_events() -> EventSink {
    Arc::new(|_| {})
}

/// One file that could not be copied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileProblem {
    /// The path.
    pub path: String,
    /// What went wrong.
    pub message: String,
}

/// What a finished transfer did. Serialized as the last JSON line of `--json` output.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Regular files in the source.
    pub files_total: u64,
    /// Regular files the target now holds as in the source: those copied plus those already
    /// up to date (`files_unchanged`).
    pub files_transferred: u64,
    /// Regular files that could not be copied.
    pub files_failed: u64,
    /// Directories.
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Names of files already sent in this run, made as hard links on the target (no data).
    pub hard_links: u64,
    /// FIFOs, sockets and device nodes.
    pub specials: u64,
    /// Entries whose metadata alone (owner, mode, attributes) was changed: no data was sent.
    pub meta_only_changes: u64,
    /// What the receiver did not apply because its grant or privileges do not allow it.
    pub not_applied: NotAppliedCounts,
    /// With `--delete`: paths removed from the target (or, in a dry run, that would be).
    pub deleted: Vec<String>,
    /// With `--delete`: entries removed in all, counting what removed directories held.
    pub deleted_total: u64,
    /// Bytes in the source's regular files.
    pub bytes_total: u64,
    /// Payload bytes that crossed the network.
    pub bytes_sent: u64,
    /// Chunks that crossed the network.
    pub chunks_sent: u64,
    /// Chunks the receiver already had and did not need.
    pub chunks_reused: u64,
    /// Wall time of the transfer in seconds.
    pub elapsed_s: f64,
    /// Every file that could not be copied, with the reason.
    pub errors: Vec<FileProblem>,
    /// Regular files the target already held unchanged (nothing sent or written).
    pub files_unchanged: u64,
    /// Of `files_unchanged`, those found unchanged a directory run at a time (one quick check
    /// each way for up to a thousand files instead of one message each way per file).
    pub files_unchanged_by_run: u64,
    /// Bytes the receiver copied locally from what it held instead of receiving them.
    pub bytes_reused: u64,
    /// Directories renamed aside before their fresh copy was made.
    pub renamed_aside: Vec<RenamedAside>,
    /// True for a dry run: nothing was sent or changed.
    pub dry_run: bool,
    /// Dry run: bytes that would cross the network.
    pub would_send_bytes: u64,
    /// Dry run: chunks that would cross the network.
    pub would_send_chunks: u64,
    /// Dry run: estimated duration from this receiver's throughput history (None: no history).
    pub estimated_s: Option<f64>,
    /// Free bytes on the target when the run started.
    pub target_free_bytes: u64,
}

/// What the receiver did not apply (see [`haul_proto::NotApplied`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotAppliedCounts {
    /// Entries whose owner or group was not set.
    pub owners: u64,
    /// Entries whose setuid/setgid bits were dropped.
    pub special_bits: u64,
    /// Device nodes not created.
    pub devices: u64,
    /// Extended attributes or ACLs not set.
    pub xattrs: u64,
}

impl From<haul_proto::NotApplied> for NotAppliedCounts {
    fn from(n: haul_proto::NotApplied) -> Self {
        NotAppliedCounts {
            owners: n.owners,
            special_bits: n.special_bits,
            devices: n.devices,
            xattrs: n.xattrs,
        }
    }
}

/// A directory renamed aside.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenamedAside {
    /// The directory (relative to the destination) that was copied anew.
    pub from: String,
    /// Where its previous copy now is.
    pub to: String,
}
