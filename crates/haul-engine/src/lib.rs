//! The transfer engine: sender and receiver sessions and the jobs built from them.
//!
//! `haul-engine` owns the pipelines that move a tree: on the sending side scan → announce →
//! read → hash → send over several streams ([`send`]); on the receiving side authenticate →
//! confine → verify → write → install ([`receive`]). Both run over any [`Link`], so the same
//! code runs over QUIC ([`QuicLink`]) and over the simulated link of `haul-testing`. The
//! [`jobs`] module assembles the user-facing operations: `serve`, `push` and `copy` (a push to
//! an embedded receiver in the same process, over [`local_link`]).
//!
//! The engine never prints: it updates [`Progress`] counters, emits [`Event`]s and returns a
//! [`Summary`] or an [`EngineError`].
//!
//! # Layout
//! - [`transport`]: the [`Link`] abstraction and its QUIC implementation; [`local_link`]: the
//!   in-process link `copy` uses.
//! - `sender`: the sending pipeline. `receiver`: the receiving pipeline.
//! - [`job`]: the library API: a [`job::Job`] from a local or remote source to a local or
//!   remote destination, planned or run with typed events. [`remote`]: the handle for remote
//!   operations (free space, listings, manifests, snapshots, leases) and the host's side of
//!   them. [`pull`]: a transfer where the serving host sends.
//! - [`jobs`]: serve / push / copy. [`admission`]: how many connections a serving host
//!   admits before and after authentication, and when it asks for a QUIC Retry.
//!   [`local_ops`]: the remote operations on a local directory, and manifests and sizes of
//!   local trees (one code path for local and remote targets).
//! - [`progress`]: counters, events, summary. `error`: [`EngineError`].
//!
//! # Must not depend on
//! Anything that renders output (clap, indicatif) or the workflow crates. It uses `haul-net`,
//! `haul-store`, `haul-manifest` and `haul-proto`, never the other way round.

pub mod admission;
pub mod compress;
mod error;
mod idmap;
pub mod job;
pub mod jobs;
pub mod local_link;
pub mod local_ops;
mod owners;
pub mod progress;
pub mod pull;
mod receiver;
pub mod remote;
mod sender;
pub mod transport;
mod wire;

pub use error::EngineError;
pub use progress::{Event, EventSink, FileProblem, Progress, RenamedAside, Summary, no_events};
pub use receiver::{Grant, ReceiverConfig, Scope, SessionReport, receive};
pub use sender::{SendRequest, TransferOptions, send};
pub use transport::{Link, QuicLink};

/// The cores this process may use, asked once: `available_parallelism` reads the cgroup's CPU
/// quota files on every call, and the receiver used to ask for every batch of small files.
pub(crate) fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
}

/// Locks `m`, taking over a lock a panicking thread left poisoned: every state these mutexes
/// guard stays consistent between statements, and a transfer must not stop for it.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
