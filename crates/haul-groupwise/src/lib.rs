//! Post office migration (Reload for GroupWise), workflow 1 of haul: the rules of the
//! article "How to Migrate a Post Office While In Disaster Recovery Mode", written as calls to
//! the engine.
//!
//! A GroupWise post office (`po1/`) holds `offiles/` (the BLOB store, 85-90% of its bytes,
//! millions of small files in `fd0`..`fd7f`), `ofuser/` and `ofmsg/` (user and message
//! databases), `ofwork/`, `ofviews/`, `gwdms/` and database files at the top. Reload keeps
//! dated backups of it (`<backups>/<TAG>/po1/`); the migration copies from one of them.
//!
//! This crate owns the workflow's rules and its record, nothing that moves or checks data:
//! every copy is a [`haul_engine::job::Job`], every question to the target (free space,
//! listings, manifests, removal, leases) a [`haul_engine::remote::Remote`] call, for a local
//! target too ([`haul_engine::local_ops`]). It never prints: steps return serde-serializable
//! values and report [`StepEvent`]s to a callback.
//!
//! # Main types
//! - [`sample::generate`] with a [`SampleSpec`]: a deterministic synthetic backup area.
//! - [`Profile`] ([`profile::add`], [`profile::get`], [`profile::set_target`], ...): a named
//!   post office, its backups and target, and the [`ProfileState`] of the workflow, stored
//!   as a generic task (kind `groupwise.profile`) of the state database; every step appends
//!   to the profile's migration log (the state database's log, `profile` = its name).
//! - [`Target`]: a local directory or a path on a serving host, resolved by the caller.
//! - Step 1 and step 3: [`migrate::plan`] gives a [`StepPlan`] ([`StepKind::Premigrate`]
//!   copies only `offiles/`; [`StepKind::Migrate`] copies everything, mirrors `offiles/` and
//!   renames the other directories aside), [`migrate::execute`] runs it into a
//!   [`StepReport`].
//! - [`verify::verify`] → [`VerifyReport`] (every [`Difference`]); [`care::check`] →
//!   [`CheckReport`]; [`care::cleanup`] → [`CleanupReport`]; [`care::estimate`] →
//!   [`EstimateReport`]; [`care::log`] reads the migration log.
//! - [`GwError`]: what went wrong and what to do; [`GwError::exit_code`] (3: not enough
//!   space, expand the storage and run again).
//!
//! # Must not depend on
//! clap, indicatif or anything that renders output; `haul-cli`; the network and store crates
//! directly (`haul-net`, `haul-store`, `haul-proto`): it reaches them only through
//! `haul-engine`. It uses `haul-engine`, `haul-state`, `haul-manifest` (filter rules) and serde.

pub mod backup;
pub mod care;
pub mod clock;
pub mod migrate;
pub mod profile;
pub mod sample;
pub mod target;
pub mod verify;

use std::path::{Path, PathBuf};

pub use backup::Backup;
pub use care::{CheckReport, CleanupReport, EstimateInput, EstimateReport};
pub use migrate::{SpaceNeed, StepEvent, StepKind, StepPlan, StepReport, StepSink};
pub use profile::{Profile, ProfileState};
pub use sample::SampleSpec;
pub use target::Target;
pub use verify::{Difference, VerifyReport};

/// The BLOB store's directory.
pub const OFFILES: &str = "offiles";
/// The directories that must exist and hold data before the POA is loaded.
pub const REQUIRED_DIRS: [&str; 2] = ["ofuser", "ofmsg"];

/// What went wrong in a workflow step.
#[derive(Debug, thiserror::Error)]
pub enum GwError {
    /// A request that cannot be carried out as given.
    #[error("{0}")]
    Invalid(String),
    /// No such profile.
    #[error("{0}")]
    NoProfile(String),
    /// No such backup.
    #[error("{0}")]
    NoBackup(String),
    /// A local file operation failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The state database.
    #[error(transparent)]
    State(#[from] haul_state::StateError),
    /// The engine.
    #[error(transparent)]
    Engine(#[from] haul_engine::EngineError),
    /// The target lacks the space the step needs; nothing was copied.
    #[error(
        "the target has {} free but this step needs {} (the renamed-aside copies keep {}); \
         nothing was copied: expand the storage (or run `haul groupwise cleanup --delete`) and \
         run the step again",
        clock::format_bytes(*free),
        clock::format_bytes(*need),
        clock::format_bytes(*kept)
    )]
    NoSpace {
        /// Bytes needed.
        need: u64,
        /// Bytes free.
        free: u64,
        /// Bytes the renamed-aside copies keep.
        kept: u64,
    },
    /// The `--before` command failed; nothing was copied.
    #[error("the --before command {command:?} failed ({status}); nothing was copied: {stderr}")]
    BeforeFailed {
        /// The command.
        command: String,
        /// Its exit status.
        status: String,
        /// What it wrote to stderr.
        stderr: String,
    },
    /// The step ran but did not finish its work.
    #[error("{0}")]
    Failed(String),
}

impl GwError {
    pub(crate) fn io(path: &Path, op: &'static str, source: std::io::Error) -> GwError {
        GwError::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    }

    /// The process exit code: 3 when the target lacks space (expand it and run again), the
    /// engine's code for its errors, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            GwError::NoSpace { .. } => 3,
            GwError::Engine(e) => e.exit_code(),
            _ => 1,
        }
    }
}
