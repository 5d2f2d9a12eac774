//! A migration task as the state database keeps it: kind [`TASK_KIND`] in the generic
//! `tasks` table (JSON state), its log lines in `log` under the profile [`Task::log_profile`].

use std::path::PathBuf;

use haul_state::{Level, StateDb};
use serde::{Deserialize, Serialize};

use crate::error::ElmError;

/// The `tasks.kind` of a migration task.
pub const TASK_KIND: &str = "elm.task";
/// The `tasks.kind` of a cancel request for a running task (id `<task>.cancel`): a record of
/// its own, so the running process never overwrites it with its own copy of the task.
pub const CANCEL_KIND: &str = "elm.cancel";

/// Copy or Move (the article's "Migrate Reason").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The source keeps its resources and share; the target gets a new share.
    Copy,
    /// The target takes over the source's share; the source's share setting is removed once
    /// everything else succeeded.
    Move,
}

impl Mode {
    /// "copy" or "move".
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Copy => "copy",
            Mode::Move => "move",
        }
    }
}

/// Which phase a task is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Checking preconditions (nothing copied yet).
    Preflight,
    /// Layers, templates, connectors, agent registrations.
    One,
    /// The database, then the mode's configuration.
    Two,
    /// Finished (done, refused or reverted).
    Closed,
}

impl Phase {
    /// As shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Preflight => "preflight",
            Phase::One => "phase one",
            Phase::Two => "phase two",
            Phase::Closed => "closed",
        }
    }
}

/// Where a task stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum State {
    /// Checking preconditions.
    Checking,
    /// A precondition failed; nothing was copied.
    Refused,
    /// Copying.
    Running,
    /// The target is full; polling its free space, continuing by itself once expanded.
    Paused {
        /// Bytes the target still needs.
        bytes_needed: u64,
    },
    /// Phase One is done; `haul elm proceed` starts Phase Two.
    AwaitingConfirmation,
    /// The process stopped with an error in Phase One; `haul elm resume` continues.
    Failed {
        /// Why.
        error: String,
    },
    /// Cancelled in Phase One: the copied layers stay, `haul elm resume` continues.
    Cancelled,
    /// Cancelled or failed in Phase Two: the target is marked non-recoverable and must be
    /// reverted (`haul elm revert`) before another migration into it.
    NonRecoverable {
        /// Why.
        reason: String,
    },
    /// Migrated.
    Done,
    /// The target was restored from its pre-migration snapshot.
    Reverted,
}

impl State {
    /// As `tasks` and `show` print it.
    pub fn describe(&self) -> String {
        match self {
            State::Checking => "checking preconditions".into(),
            State::Refused => "refused (a precondition failed)".into(),
            State::Running => "running".into(),
            State::Paused { bytes_needed } => {
                format!("paused: target needs {bytes_needed} more bytes")
            }
            State::AwaitingConfirmation => "awaiting confirmation".into(),
            State::Failed { error } => format!("failed: {error}"),
            State::Cancelled => "cancelled (resumable)".into(),
            State::NonRecoverable { reason } => {
                format!("target non-recoverable ({reason}): revert it with `haul elm revert`")
            }
            State::Done => "done".into(),
            State::Reverted => "reverted".into(),
        }
    }

    /// True while the task holds its source and target (not finished).
    pub fn is_open(&self) -> bool {
        !matches!(self, State::Refused | State::Done | State::Reverted)
    }
}

/// One precondition and its result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// What is checked.
    pub name: String,
    /// Whether it holds.
    pub pass: bool,
    /// What was found (and, on failure, what to do).
    pub detail: String,
}

/// How to reach the target again (for `proceed`, `resume`, `cancel`, `revert`). Credentials
/// themselves are never stored: only where the token file is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRef {
    /// `quic://HOST:PORT/PATH`, or a local directory.
    pub url: String,
    /// The pinned certificate fingerprint, if one was given.
    pub fingerprint: Option<String>,
    /// The token file given.
    pub token_file: Option<PathBuf>,
}

/// A migration task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Its id (a number).
    pub id: String,
    /// The source appliance directory (canonical).
    pub source: PathBuf,
    /// The target.
    pub target: TargetRef,
    /// Copy or Move.
    pub mode: Mode,
    /// Copy: the target's new share.
    pub share: Option<String>,
    /// The source's share when the task began.
    pub source_share: Option<String>,
    /// The phase.
    pub phase: Phase,
    /// The state.
    pub state: State,
    /// The preconditions as last checked.
    pub checks: Vec<Check>,
    /// The pre-migration snapshot of the target.
    pub snapshot: Option<String>,
    /// The lease holder name this task writes as.
    pub holder: String,
    /// Layers on the source at the last scan.
    pub layers_total: u64,
    /// Of those, on the target and verified.
    pub layers_done: u64,
    /// Bytes of the current phase's data.
    pub bytes_total: u64,
    /// Of those, on the target.
    pub bytes_done: u64,
    /// Payload bytes sent over the whole task.
    pub bytes_sent: u64,
    /// Bytes per second, recently.
    pub rate_bps: f64,
    /// Seconds left at that rate.
    pub eta_s: Option<u64>,
    /// Phase One scans run.
    pub passes: u32,
    /// Errors met (newest last).
    pub errors: Vec<String>,
    /// Warnings for the operator.
    pub warnings: Vec<String>,
    /// The process running the task now, if any.
    pub pid: Option<u32>,
    /// Created, unix milliseconds.
    pub created_ms: u64,
    /// Finished, unix milliseconds.
    pub finished_ms: Option<u64>,
}

/// What each side may be used for, in the article's terms.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Access {
    /// The source appliance.
    pub source: &'static str,
    /// The target appliance.
    pub target: &'static str,
}

impl Task {
    /// The access levels of the task's phase (the article's "UI access during a
    /// migration").
    pub fn access(&self) -> Access {
        match (self.phase, self.state.is_open()) {
            (Phase::One, true) => Access {
                source: "full",
                target: "expand storage, export logs",
            },
            (Phase::Two, true) => Access {
                source: "expand storage, export logs",
                target: "none",
            },
            _ => Access {
                source: "full",
                target: "full",
            },
        }
    }

    /// The `log.profile` of the task's lines.
    pub fn log_profile(id: &str) -> String {
        format!("elm.task.{id}")
    }

    /// Whether the process named in `pid` is alive.
    pub fn process_alive(&self) -> bool {
        self.pid.is_some_and(|pid| {
            rustix::process::Pid::from_raw(pid as i32)
                .is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
        })
    }

    /// The state as shown, saying when its process is gone.
    pub fn describe(&self) -> String {
        let state = self.state.describe();
        match self.state {
            State::Running | State::Paused { .. } | State::Checking if !self.process_alive() => {
                format!(
                    "{state} (its process is gone: `haul elm resume {}` continues)",
                    self.id
                )
            }
            _ => state,
        }
    }
}

/// Reads and writes tasks.
#[derive(Debug)]
pub struct Tasks<'a> {
    db: &'a StateDb,
}

impl<'a> Tasks<'a> {
    /// Over `db`.
    pub fn new(db: &'a StateDb) -> Tasks<'a> {
        Tasks { db }
    }

    /// Every migration task, by number.
    pub fn all(&self) -> Result<Vec<Task>, ElmError> {
        let mut out: Vec<Task> = self
            .db
            .tasks(Some(TASK_KIND))?
            .into_iter()
            .filter_map(|r| serde_json::from_str(&r.state).ok())
            .collect();
        out.sort_by_key(|t: &Task| t.id.parse::<u64>().unwrap_or(u64::MAX));
        Ok(out)
    }

    /// Task `id`.
    pub fn get(&self, id: &str) -> Result<Task, ElmError> {
        let record = self
            .db
            .task(id)?
            .filter(|r| r.kind == TASK_KIND)
            .ok_or_else(|| ElmError::NoTask(id.into()))?;
        serde_json::from_str(&record.state)
            .map_err(|e| ElmError::Invalid(format!("task {id} cannot be read: {e}")))
    }

    /// The next free id.
    pub fn next_id(&self) -> Result<String, ElmError> {
        let max = self
            .db
            .tasks(None)?
            .iter()
            .filter_map(|r| r.id.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        Ok((max + 1).to_string())
    }

    /// Stores `task`.
    pub fn put(&self, task: &Task) -> Result<(), ElmError> {
        let json = serde_json::to_string(task).expect("tasks serialize");
        self.db.put_task(&task.id, TASK_KIND, &json)?;
        Ok(())
    }

    /// Appends a line to the task's log.
    pub fn log(&self, id: &str, level: Level, message: &str) {
        let _ = self
            .db
            .log(None, Some(&Task::log_profile(id)), level, message);
    }

    /// Asks the process running `id` to stop.
    pub fn request_cancel(&self, id: &str) -> Result<(), ElmError> {
        self.db
            .put_task(&format!("{id}.cancel"), CANCEL_KIND, "{}")?;
        Ok(())
    }

    /// Whether a cancel was asked for `id`.
    pub fn cancel_requested(&self, id: &str) -> bool {
        matches!(self.db.task(&format!("{id}.cancel")), Ok(Some(_)))
    }

    /// Forgets a cancel request.
    pub fn clear_cancel(&self, id: &str) {
        let _ = self.db.delete_task(&format!("{id}.cancel"));
    }
}

/// Unix milliseconds now.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
