//! Appliance migration (Citrix App Layering ELM, workflow 2 of `WORKFLOWS.md`): the
//! workflow's rules written as calls to haul's engine.
//!
//! An appliance is a directory ([`layout`]): a layer repository, templates, connectors
//! (each with a cache), agent registrations, a database and a configuration with its network
//! file share and perhaps a custom certificate. A migration copies a source appliance (a
//! local directory) to a target appliance (a path on a `haul serve` host, or a local
//! directory) as Copy or Move ([`Mode`]), in the article's two phases:
//!
//! - [`Elm::migrate`] records a [`Task`], checks every precondition before anything is
//!   copied ([`Check`]s: target reachable with working credentials, no layers on it, enough
//!   free space, a distinct share in Copy mode, no other migration from this source, target
//!   not marked non-recoverable), takes the task's lease on the whole target, snapshots the
//!   target, and runs Phase One (layers, templates, connectors without caches, agent
//!   registrations), re-scanning the source until a scan finds nothing new, then stops
//!   "awaiting confirmation". A full target pauses the task, which polls the free space and
//!   continues by itself from the verified chunks.
//! - [`Elm::proceed`]: a last re-scan, then Phase Two (database, then the mode's share
//!   handling). The source is never changed before a Move has completed.
//! - [`Elm::resume`], [`Elm::cancel`], [`Elm::revert`] (from the pre-migration snapshot),
//!   [`Elm::tasks`], [`Elm::task`], [`Elm::export_logs`].
//!
//! Tasks live in the state database's generic `tasks` table (kind [`task::TASK_KIND`], JSON
//! state) and its `log`; "one migration from a source at a time" is a
//! [`haul_state::SourceLock`] while a process runs plus the open tasks in the database. The
//! target is held by an engine lease whose holder and purpose name the task, so any other
//! push, removal or rename into it is refused naming the task.
//!
//! # Main types
//! [`Elm`] (the database and [`RunOptions`]), [`MigrateRequest`], [`TargetSpec`], [`Task`]
//! with its [`State`], [`Phase`] and [`task::Access`], [`ElmEvent`] (what a running step
//! reports), [`ElmError`]. [`sample::generate`] writes a synthetic appliance.
//!
//! # Must not depend on
//! Anything that renders output (clap, indicatif): it returns values and reports
//! [`ElmEvent`]s. It moves, queries and locks only through `haul-engine` (jobs, remote
//! operations, leases, snapshots) and `haul-state`; it never opens a connection or writes a
//! chunk itself.

pub mod error;
mod export;
pub mod layout;
mod run;
pub mod sample;
mod target;
pub mod task;
mod workflow;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

pub use error::ElmError;
pub use target::TargetSpec;
pub use task::{Check, Mode, Phase, State, TargetRef, Task};

/// How a run is shaped.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Most bytes per second put on the wire.
    pub bwlimit: Option<u64>,
    /// How often a paused task looks at the target's free space.
    pub poll: Duration,
    /// How long the task's lease on the target lasts unless renewed (every step renews it;
    /// it must outlast the wait for the operator's confirmation).
    pub lease_ttl: Duration,
    /// Chunk size (default: the engine's).
    pub chunk_size: Option<u32>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            bwlimit: None,
            poll: Duration::from_secs(30),
            lease_ttl: Duration::from_secs(7 * 24 * 3600),
            chunk_size: None,
        }
    }
}

/// The workflow, over one state database.
#[derive(Clone, Debug)]
pub struct Elm {
    /// The state database.
    pub db: Arc<haul_state::StateDb>,
    /// Its directory (the source locks live there).
    pub state_dir: PathBuf,
    /// How runs are shaped.
    pub options: RunOptions,
}

/// What `migrate` is asked to do.
#[derive(Clone, Debug)]
pub struct MigrateRequest {
    /// The source appliance directory.
    pub source: PathBuf,
    /// The target, as reached.
    pub target: TargetSpec,
    /// The target, as recorded (to reach it again).
    pub target_ref: TargetRef,
    /// Copy or Move.
    pub mode: Mode,
    /// Copy: the target's new network file share.
    pub share: Option<String>,
}

/// What a running step reports.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ElmEvent {
    /// The task was recorded (or an existing one is continued).
    Task {
        /// Its id.
        id: String,
        /// True when an earlier task is resumed instead of a new one started.
        resumed: bool,
    },
    /// A precondition was checked.
    Check(Check),
    /// The pre-migration snapshot of the target was taken.
    Snapshot {
        /// Its id on the host.
        id: String,
    },
    /// A Phase One scan began.
    Pass {
        /// Its number.
        pass: u32,
        /// Layers on the source.
        layers: u64,
    },
    /// A layer was copied and verified.
    LayerCopied {
        /// Its name.
        name: String,
    },
    /// The target is full: the task waits for more space.
    Paused {
        /// Bytes it needs.
        bytes_needed: u64,
    },
    /// The target has room again: the task continues.
    Continued {
        /// Free bytes now.
        free_bytes: u64,
    },
    /// Something the operator must know or do.
    Warning {
        /// What.
        message: String,
    },
    /// The task's state changed.
    State {
        /// As shown.
        state: String,
    },
}

/// A callback for [`ElmEvent`]s.
pub type Events = Arc<dyn Fn(ElmEvent) + Send + Sync>;

/// Events nobody listens to.
pub fn no_events() -> Events {
    Arc::new(|_| {})
}
