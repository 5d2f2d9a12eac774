//! haul's local state: what this host remembers between runs.
//!
//! This crate owns the embedded state database (one SQLite file, `state.sqlite3`, in the state
//! directory) and the source lock. The database holds the run history (what ran, from where to
//! where, how much it moved, how it ended), from which throughput estimates for `haul plan`
//! are drawn; a log that outlives the terminal, tied to runs and workflow profiles; and the
//! tasks of the migration workflows, so that a workflow picks up where it stopped after a
//! restart. It is synchronous and small: SQLite is bundled (no system library), and
//! [`StateDb`] is `Send + Sync` with every method on `&self`.
//!
//! # Main types
//! - [`StateDb`]: the open database. [`StateDb::open`] creates the directory (mode 0700),
//!   checks an existing file before writing anything to it, switches it to WAL mode with a
//!   [`BUSY_TIMEOUT`] and foreign keys on, and applies the [`schema`] migrations in one
//!   transaction. Several threads, handles and processes may use one database at once; opens
//!   of one directory are serialized by an `flock` on `open.lock` beside the database,
//!   because creating the file and switching it to WAL is the one step SQLite does not make
//!   safe against a second process.
//! - [`RunStart`] → [`StateDb::start_run`] → [`RunId`] → [`StateDb::finish_run`] with a
//!   [`RunEnd`] ([`Outcome`]); [`StateDb::runs`] with a [`RunFilter`] gives [`RunRecord`]s,
//!   newest first; [`StateDb::throughput_estimate`] an [`Estimate`].
//! - [`StateDb::log`] / [`StateDb::logs`]: [`LogRecord`]s at a [`Level`].
//! - [`StateDb::put_task`], [`StateDb::task`], [`StateDb::tasks`], [`StateDb::delete_task`]:
//!   [`TaskRecord`]s whose JSON state belongs to the workflow.
//! - [`SourceLock`]: one migration from a source at a time; an `flock` the kernel releases
//!   when its holder dies, whose file names the holder.
//! - [`StateError`]: what went wrong, naming the file and what to do.
//!   [`StateError::Corrupt`] and [`StateError::Newer`] leave the database untouched;
//!   [`StateError::is_retryable`] tells waiting for another process from needing a person.
//!
//! The record types derive serde's traits, so a CLI can print them as JSON.
//!
//! # Example
//! ```
//! use haul_state::{Outcome, RunEnd, RunFilter, RunKind, RunStart, StateDb};
//! let dir = tempfile::tempdir().unwrap();
//! let db = StateDb::open(dir.path()).unwrap();
//! let start = RunStart {
//!     kind: RunKind::Push,
//!     source: "/backups/po1".into(),
//!     destination: "quic://target:7470/po1".into(),
//!     profile: Some("groupwise".into()),
//! };
//! let id = db.start_run_at(&start, 1_000).unwrap();
//! let end = RunEnd { bytes: 5_000_000, files: 3, chunks: 5, outcome: Outcome::Ok, error: None };
//! db.finish_run_at(id, &end, 6_000).unwrap();
//! let runs = db.runs(&RunFilter::default()).unwrap();
//! assert_eq!(runs[0].outcome, Some(Outcome::Ok));
//! let estimate = db
//!     .throughput_estimate(&RunKind::Push, "/backups/po1", "quic://target:7470/po1")
//!     .unwrap()
//!     .unwrap();
//! assert_eq!(estimate.bytes_per_sec, 1_000_000.0);
//! ```
//!
//! # Must not depend on
//! `haul-engine`, `haul-net`, tokio or any async runtime, the CLI crates (`haul-cli`, clap).
//! It sits beside the transfer crates, not on top of them: the CLI and the workflows record
//! into it. Only `rusqlite`, `rustix` (`flock`, `uname`), `blake3` (lock file names), serde
//! and thiserror.
//!
//! # Layout
//! - `db`: [`StateDb::open`], the open lock, the pre-open check, [`default_dir`].
//! - [`schema`]: the migrations, one constant each.
//! - `runs`: the run history and [`StateDb::throughput_estimate`].
//! - `log`: the log. `tasks`: workflow tasks.
//! - `lock`: [`SourceLock`].
//! - `error`: [`StateError`].

#![forbid(unsafe_code)]

mod db;
mod error;
mod lock;
mod log;
mod runs;
pub mod schema;
mod tasks;

pub use db::{BUSY_TIMEOUT, DB_FILE_NAME, StateDb, default_dir, default_dir_from};
pub use error::StateError;
pub use lock::SourceLock;
pub use log::{Level, LogRecord};
pub use runs::{
    ESTIMATE_RUNS, Estimate, Outcome, RunEnd, RunFilter, RunId, RunKind, RunRecord, RunStart,
};
pub use tasks::TaskRecord;
