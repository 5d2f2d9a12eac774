//! [`StateError`]: what went wrong with the state database or the source lock.
//!
//! Policy: every variant names the file an operator would look at and every message ends with
//! what to do. A corrupt database and one written by a newer haul are their own variants
//! because the state must then be left exactly as found; [`StateError::is_retryable`] tells
//! the conditions that clear up by themselves (another process holding the database or the
//! source) from the ones that need a person.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::ErrorCode;

use crate::lock::format_utc;
use crate::runs::RunId;

/// An error from the state database or the source lock.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// None of `HAUL_STATE_DIR`, `XDG_STATE_HOME` and `HOME` is set.
    #[error(
        "no directory for haul's state: set HAUL_STATE_DIR to a directory haul may write to (or set XDG_STATE_HOME or HOME)"
    )]
    NoStateDir,

    /// The file is not a SQLite database, or SQLite found it damaged. It was left untouched.
    #[error(
        "the state database {} is not a valid SQLite database or is corrupt ({detail}); haul left it untouched: move it aside together with its -wal and -shm files, if any (all into one other directory, so they stay together), and run again: haul then starts a new one",
        path.display()
    )]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What SQLite or the header check reported.
        detail: String,
    },

    /// The database was written by a newer haul, whose schema this build does not know.
    #[error(
        "the state database {} has schema version {found}, but this haul knows versions up to {supported}: it was written by a newer haul; run that newer haul, or set HAUL_STATE_DIR to another directory",
        path.display()
    )]
    Newer {
        /// The database file.
        path: PathBuf,
        /// Its `user_version`.
        found: u32,
        /// The newest version this build knows ([`crate::schema::VERSION`]).
        supported: u32,
    },

    /// SQLite could not switch the database to WAL mode.
    #[error(
        "the state database {} could not be switched to WAL mode (its journal mode stays {mode:?}): the file system may not support the shared memory WAL needs (a network file system?); set HAUL_STATE_DIR to a directory on a local disk",
        path.display()
    )]
    NoWal {
        /// The database file.
        path: PathBuf,
        /// The journal mode SQLite reported.
        mode: String,
    },

    /// Another process kept the database locked for longer than the busy timeout.
    #[error(
        "the state database {} stayed locked by another haul process for more than {timeout:?}: wait for that process to finish (or stop it) and run again",
        path.display()
    )]
    Busy {
        /// The database file.
        path: PathBuf,
        /// The busy timeout that ran out.
        timeout: Duration,
    },

    /// Another process holds the lock of this source.
    #[error(
        "{} is already being migrated by process {pid} on {host} ({purpose}, since {}): wait for it to finish or stop that process, then run again; the lock is {}",
        source_path.display(),
        format_utc(*since),
        lock_file.display()
    )]
    SourceLocked {
        /// The source path, canonicalized. (Not named `source`: that name is reserved for the
        /// underlying error of an error type.)
        source_path: PathBuf,
        /// The holder's process id, as it wrote it in the lock file (0 if it was unreadable).
        pid: u32,
        /// The holder's host name.
        host: String,
        /// What the holder said it is doing.
        purpose: String,
        /// When the holder took the lock, unix milliseconds.
        since: i64,
        /// The lock file.
        lock_file: PathBuf,
    },

    /// A run id that is not in the database.
    #[error(
        "run {id} is not in the state database {}: it may have been recorded in another state directory; check HAUL_STATE_DIR",
        path.display()
    )]
    NoSuchRun {
        /// The database file.
        path: PathBuf,
        /// The id asked for.
        id: RunId,
    },

    /// A task's state is not valid JSON.
    #[error("the state of task {id:?} is not valid JSON: this is a bug in the caller; report it")]
    InvalidTaskState {
        /// The task id.
        id: String,
    },

    /// A stored value this build cannot read (an unknown outcome or level, a negative count).
    #[error(
        "the state database {} holds a value this haul cannot read ({detail}): it may have been edited by hand; move it aside with its -wal and -shm files and run again",
        path.display()
    )]
    BadValue {
        /// The database file.
        path: PathBuf,
        /// What was found where.
        detail: String,
    },

    /// Any other SQLite failure.
    #[error(
        "state database {}: could not {op}: {source}; check the file system holding it (space, permissions) and run again",
        path.display()
    )]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What was being done ("record the start of a run", ...).
        op: &'static str,
        /// What SQLite said.
        source: rusqlite::Error,
    },

    /// A file-system operation failed.
    #[error(
        "could not {op} {}: {source}; check that the path exists and that haul's user may write there, then run again",
        path.display()
    )]
    Io {
        /// The path the operation was on.
        path: PathBuf,
        /// What was being done ("create the state directory", ...).
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

impl StateError {
    /// True when the same call may succeed later without anyone changing anything: another
    /// process holds the database ([`StateError::Busy`]; raise [`crate::BUSY_TIMEOUT`] with
    /// [`crate::StateDb::open_with_busy_timeout`] if that happens often) or the source
    /// ([`StateError::SourceLocked`]).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StateError::Busy { .. } | StateError::SourceLocked { .. }
        )
    }

    /// Sorts a SQLite error into Corrupt, Busy or Sqlite.
    pub(crate) fn sqlite(
        path: &Path,
        timeout: Duration,
        op: &'static str,
        err: rusqlite::Error,
    ) -> StateError {
        match err.sqlite_error_code() {
            Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => StateError::Corrupt {
                path: path.to_path_buf(),
                detail: err.to_string(),
            },
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StateError::Busy {
                path: path.to_path_buf(),
                timeout,
            },
            _ => StateError::Sqlite {
                path: path.to_path_buf(),
                op,
                source: err,
            },
        }
    }

    pub(crate) fn io(path: &Path, op: &'static str, source: io::Error) -> StateError {
        StateError::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    }
}
