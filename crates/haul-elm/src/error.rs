//! The workflow's error type. Each variant says what to do; [`ElmError::exit_code`] says how
//! the CLI ends (1 error, 3 paused for lack of space).

use std::path::{Path, PathBuf};

use crate::task::Check;

/// Why a step of the migration did not happen or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum ElmError {
    /// A precondition failed; nothing was copied.
    #[error("task {task}: {} precondition(s) failed, nothing was copied: {}", failed.len(), failed.iter().map(|c| format!("{}: {}", c.name, c.detail)).collect::<Vec<_>>().join("; "))]
    Preconditions {
        /// The task (recorded, in state "refused").
        task: String,
        /// The checks that failed.
        failed: Vec<Check>,
    },
    /// No such task.
    #[error("no migration task {0}; `haul elm tasks` lists them")]
    NoTask(String),
    /// The task is not in a state that allows this step.
    #[error("task {task} is {state}: {hint}")]
    WrongState {
        /// The task.
        task: String,
        /// Its state, as shown.
        state: String,
        /// What can be done instead.
        hint: String,
    },
    /// The operator asked for something that cannot be done.
    #[error("{0}")]
    Invalid(String),
    /// The task was cancelled while this process ran it.
    #[error("task {0} was cancelled")]
    Cancelled(String),
    /// A local file operation failed.
    #[error("{}: {message}", path.display())]
    Local {
        /// The path.
        path: PathBuf,
        /// What happened.
        message: String,
    },
    /// The engine failed (the connection, the target, a refusal).
    #[error(transparent)]
    Engine(#[from] haul_engine::EngineError),
    /// The state database failed.
    #[error(transparent)]
    State(#[from] haul_state::StateError),
}

impl ElmError {
    /// 3 when the target ran out of space (the task continues once it is expanded), 1
    /// otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            ElmError::Engine(e) => e.exit_code(),
            _ => 1,
        }
    }

    pub(crate) fn local(path: impl AsRef<Path>, e: std::io::Error) -> ElmError {
        ElmError::Local {
            path: path.as_ref().to_path_buf(),
            message: e.to_string(),
        }
    }
}
