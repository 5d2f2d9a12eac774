//! The log: [`StateDb::log`] and [`StateDb::logs`]; lines that outlive the terminal, tied to a
//! run, a workflow profile, both or neither.

use std::fmt;

use rusqlite::{ErrorCode, params};
use serde::{Deserialize, Serialize};

use crate::db::{StateDb, now_ms};
use crate::error::StateError;
use crate::runs::RunId;

/// How much a log line matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Something failed.
    Error,
    /// Something an operator should look at.
    Warn,
    /// The normal course of things.
    Info,
    /// Detail for whoever debugs.
    Debug,
}

impl Level {
    /// The stored text: "error", "warn", "info" or "debug".
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }

    /// The level stored as `text`, if this build knows it.
    pub fn parse(text: &str) -> Option<Level> {
        Some(match text {
            "error" => Level::Error,
            "warn" => Level::Warn,
            "info" => Level::Info,
            "debug" => Level::Debug,
            _ => return None,
        })
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Its id: increases with every line written to this database.
    pub id: i64,
    /// The run it is about, if any.
    pub run: Option<RunId>,
    /// The workflow profile it is about, if any.
    pub profile: Option<String>,
    /// When it was written, unix milliseconds.
    pub at: i64,
    /// How much it matters.
    pub level: Level,
    /// The line.
    pub message: String,
}

impl StateDb {
    /// Appends a line to the log. `run`, if given, must be a recorded run
    /// ([`StateError::NoSuchRun`] otherwise).
    pub fn log(
        &self,
        run: Option<RunId>,
        profile: Option<&str>,
        level: Level,
        message: &str,
    ) -> Result<(), StateError> {
        let result = self.conn().execute(
            "INSERT INTO log (run_id, profile, at, level, message) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![run.map(|r| r.0), profile, now_ms(), level.as_str(), message],
        );
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => {
                Err(StateError::NoSuchRun {
                    path: self.path().to_path_buf(),
                    // The foreign key is the only constraint a log line can break.
                    id: run.unwrap_or(RunId(0)),
                })
            }
            Err(e) => Err(self.err("write to the log")(e)),
        }
    }

    /// The latest `limit` lines, of `profile` if given (else of all), oldest first, as a
    /// `tail` would show them.
    pub fn logs(&self, profile: Option<&str>, limit: usize) -> Result<Vec<LogRecord>, StateError> {
        let conn = self.conn();
        let err = self.err("read the log");
        // Two statements rather than `?1 IS NULL OR profile = ?1`, which would keep SQLite
        // from walking the (profile, id) index.
        let sql = if profile.is_some() {
            "SELECT id, run_id, profile, at, level, message FROM log
             WHERE profile = ?1 ORDER BY id DESC LIMIT ?2"
        } else {
            "SELECT id, run_id, profile, at, level, message FROM log
             WHERE ?1 IS NULL ORDER BY id DESC LIMIT ?2"
        };
        let mut stmt = conn.prepare(sql).map_err(&err)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt
            .query_map(params![profile, limit], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, Option<i64>>(1)?,
                    row.get::<_, Option<String>>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, String>(5)?,
                ))
            })
            .map_err(&err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(&err)?;
        let mut lines = rows
            .into_iter()
            .map(|(id, run, profile, at, level, message)| {
                let level = Level::parse(&level).ok_or_else(|| StateError::BadValue {
                    path: self.path().to_path_buf(),
                    detail: format!("level {level:?} in log line {id}"),
                })?;
                Ok(LogRecord {
                    id,
                    run: run.map(RunId),
                    profile,
                    at,
                    level,
                    message,
                })
            })
            .collect::<Result<Vec<_>, StateError>>()?;
        lines.reverse();
        Ok(lines)
    }
}
