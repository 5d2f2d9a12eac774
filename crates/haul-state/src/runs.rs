//! The run history: [`StateDb::start_run`], [`StateDb::finish_run`], [`StateDb::runs`] and the
//! throughput estimate drawn from it.

use std::fmt;

use rusqlite::types::Value;
use rusqlite::{OptionalExtension, Row, params, params_from_iter};
use serde::{Deserialize, Serialize};

use crate::db::{StateDb, now_ms};
use crate::error::StateError;

/// How many of the latest successful runs [`StateDb::throughput_estimate`] looks at.
pub const ESTIMATE_RUNS: usize = 10;

/// The id of a recorded run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(pub i64);

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What a run did. Stored as its [`RunKind::as_str`] text; kinds this build does not name
/// (a workflow's own steps) are kept as [`RunKind::Other`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", from = "String")]
pub enum RunKind {
    /// `haul push`: local source, remote receiver.
    Push,
    /// `haul pull`: remote source, local target.
    Pull,
    /// `haul copy`: local to local through an embedded receiver.
    Copy,
    /// Anything else, by name (never "push", "pull" or "copy": [`RunKind::from`] maps those to
    /// their own variants).
    Other(String),
}

impl RunKind {
    /// The stored text: "push", "pull", "copy" or the other kind's name.
    pub fn as_str(&self) -> &str {
        match self {
            RunKind::Push => "push",
            RunKind::Pull => "pull",
            RunKind::Copy => "copy",
            RunKind::Other(name) => name,
        }
    }
}

impl From<&str> for RunKind {
    fn from(name: &str) -> RunKind {
        match name {
            "push" => RunKind::Push,
            "pull" => RunKind::Pull,
            "copy" => RunKind::Copy,
            other => RunKind::Other(other.to_owned()),
        }
    }
}

impl From<String> for RunKind {
    fn from(name: String) -> RunKind {
        RunKind::from(name.as_str())
    }
}

impl From<RunKind> for String {
    fn from(kind: RunKind) -> String {
        match kind {
            RunKind::Other(name) => name,
            known => known.as_str().to_owned(),
        }
    }
}

impl fmt::Display for RunKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a finished run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Everything was transferred and verified.
    Ok,
    /// The run gave up on an error (see [`RunEnd::error`]).
    Failed,
    /// Stopped from outside (signal, lost link) before the end; the same command resumes.
    Interrupted,
    /// Stopped on a condition someone must fix first (a full disk); then it resumes.
    Paused,
}

impl Outcome {
    /// The stored text: "ok", "failed", "interrupted" or "paused".
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Interrupted => "interrupted",
            Outcome::Paused => "paused",
        }
    }

    /// The outcome stored as `text`, if this build knows it.
    pub fn parse(text: &str) -> Option<Outcome> {
        Some(match text {
            "ok" => Outcome::Ok,
            "failed" => Outcome::Failed,
            "interrupted" => Outcome::Interrupted,
            "paused" => Outcome::Paused,
            _ => return None,
        })
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A run about to start: what [`StateDb::start_run`] records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStart {
    /// What the run does.
    pub kind: RunKind,
    /// Where it reads from: a path or a URL, as the operator gave it.
    pub source: String,
    /// Where it writes to: a path or a URL, as the operator gave it.
    pub destination: String,
    /// The workflow profile the run belongs to, if any.
    pub profile: Option<String>,
}

/// How a run ended: what [`StateDb::finish_run`] records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunEnd {
    /// Bytes sent (or copied), not counting reused chunks.
    pub bytes: u64,
    /// Files transferred.
    pub files: u64,
    /// Chunks sent.
    pub chunks: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// The error that ended it, for [`Outcome::Failed`] (and any other outcome with one).
    pub error: Option<String>,
}

/// One row of the run history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Its id.
    pub id: RunId,
    /// What it did.
    pub kind: RunKind,
    /// Where it read from.
    pub source: String,
    /// Where it wrote to.
    pub destination: String,
    /// Its workflow profile, if any.
    pub profile: Option<String>,
    /// When it started, unix milliseconds.
    pub started_at: i64,
    /// When it finished, unix milliseconds; `None` while it runs, or if its process died
    /// before it could say.
    pub ended_at: Option<i64>,
    /// Bytes sent (0 until finished).
    pub bytes: u64,
    /// Files transferred (0 until finished).
    pub files: u64,
    /// Chunks sent (0 until finished).
    pub chunks: u64,
    /// How it ended; `None` like `ended_at`.
    pub outcome: Option<Outcome>,
    /// The error that ended it, if any.
    pub error: Option<String>,
}

impl RunRecord {
    /// How long it took, in milliseconds, once finished.
    pub fn duration_ms(&self) -> Option<i64> {
        self.ended_at.map(|end| end - self.started_at)
    }
}

/// Which runs [`StateDb::runs`] returns: every field that is `Some` must match exactly.
/// `RunFilter::default()` selects all runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFilter {
    /// Only runs of this kind.
    pub kind: Option<RunKind>,
    /// Only runs from this source.
    pub source: Option<String>,
    /// Only runs to this destination.
    pub destination: Option<String>,
    /// Only runs of this profile.
    pub profile: Option<String>,
    /// At most this many (the newest).
    pub limit: Option<usize>,
}

/// A throughput estimate from the run history.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// The median rate of the runs used, bytes per second.
    pub bytes_per_sec: f64,
    /// How many runs it was drawn from (1 to [`ESTIMATE_RUNS`]).
    pub runs_used: usize,
}

impl StateDb {
    /// Records the start of a run, now. Returns its id for [`StateDb::finish_run`].
    pub fn start_run(&self, start: &RunStart) -> Result<RunId, StateError> {
        self.start_run_at(start, now_ms())
    }

    /// [`StateDb::start_run`] with the start time given (unix milliseconds): for tests and
    /// for importing history.
    pub fn start_run_at(&self, start: &RunStart, started_at: i64) -> Result<RunId, StateError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO runs (kind, source, destination, profile, started_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                start.kind.as_str(),
                start.source,
                start.destination,
                start.profile,
                started_at
            ],
        )
        .map_err(self.err("record the start of a run"))?;
        Ok(RunId(conn.last_insert_rowid()))
    }

    /// Records how run `id` ended, now. A second call overwrites the first.
    pub fn finish_run(&self, id: RunId, end: &RunEnd) -> Result<(), StateError> {
        self.finish_run_at(id, end, now_ms())
    }

    /// [`StateDb::finish_run`] with the end time given (unix milliseconds).
    pub fn finish_run_at(&self, id: RunId, end: &RunEnd, ended_at: i64) -> Result<(), StateError> {
        let changed = self
            .conn()
            .execute(
                "UPDATE runs SET ended_at = ?1, bytes = ?2, files = ?3, chunks = ?4,
                                 outcome = ?5, error = ?6
                 WHERE id = ?7",
                params![
                    ended_at,
                    to_sql_count(end.bytes),
                    to_sql_count(end.files),
                    to_sql_count(end.chunks),
                    end.outcome.as_str(),
                    end.error,
                    id.0
                ],
            )
            .map_err(self.err("record the end of a run"))?;
        if changed == 0 {
            return Err(StateError::NoSuchRun {
                path: self.path().to_path_buf(),
                id,
            });
        }
        Ok(())
    }

    /// Run `id`, if recorded.
    pub fn run(&self, id: RunId) -> Result<Option<RunRecord>, StateError> {
        let conn = self.conn();
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1");
        let raw = conn
            .query_row(&sql, [id.0], RawRun::from_row)
            .optional()
            .map_err(self.err("read a run"))?;
        raw.map(|raw| raw.into_record(self)).transpose()
    }

    /// The runs `filter` selects, newest first (by start time, then id).
    pub fn runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>, StateError> {
        let mut clauses = Vec::new();
        let mut args: Vec<Value> = Vec::new();
        let mut want = |column: &str, value: Option<&str>| {
            if let Some(value) = value {
                args.push(Value::Text(value.to_owned()));
                clauses.push(format!("{column} = ?{}", args.len()));
            }
        };
        want("kind", filter.kind.as_ref().map(RunKind::as_str));
        want("source", filter.source.as_deref());
        want("destination", filter.destination.as_deref());
        want("profile", filter.profile.as_deref());
        let mut sql = format!("SELECT {RUN_COLUMNS} FROM runs");
        if !clauses.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&clauses.join(" AND "));
        }
        // LIMIT -1 is SQLite's "no limit".
        let limit = filter
            .limit
            .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
        args.push(Value::Integer(limit));
        sql.push_str(&format!(
            " ORDER BY started_at DESC, id DESC LIMIT ?{}",
            args.len()
        ));

        let conn = self.conn();
        let err = self.err("read the run history");
        let mut stmt = conn.prepare(&sql).map_err(&err)?;
        let raws = stmt
            .query_map(params_from_iter(args), RawRun::from_row)
            .map_err(&err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(&err)?;
        raws.into_iter().map(|raw| raw.into_record(self)).collect()
    }

    /// How fast runs of `kind` from `source` to `destination` went: the median rate (bytes /
    /// wall time) of the latest [`ESTIMATE_RUNS`] runs that ended [`Outcome::Ok`], moved at
    /// least one byte and took a measurable time. The median rather than a mean so that one
    /// run over a congested link, or one that moved a handful of bytes and was all setup,
    /// does not drag the estimate. `None` without such a run.
    pub fn throughput_estimate(
        &self,
        kind: &RunKind,
        source: &str,
        destination: &str,
    ) -> Result<Option<Estimate>, StateError> {
        let conn = self.conn();
        let err = self.err("read the run history");
        let mut stmt = conn
            .prepare(
                "SELECT bytes, ended_at - started_at FROM runs
                 WHERE kind = ?1 AND source = ?2 AND destination = ?3 AND outcome = 'ok'
                   AND bytes > 0 AND ended_at > started_at
                 ORDER BY started_at DESC, id DESC LIMIT ?4",
            )
            .map_err(&err)?;
        let mut rates = stmt
            .query_map(
                params![kind.as_str(), source, destination, ESTIMATE_RUNS as i64],
                |row| {
                    let bytes: i64 = row.get(0)?;
                    let ms: i64 = row.get(1)?;
                    Ok(bytes as f64 * 1000.0 / ms as f64)
                },
            )
            .map_err(&err)?
            .collect::<Result<Vec<f64>, _>>()
            .map_err(&err)?;
        if rates.is_empty() {
            return Ok(None);
        }
        rates.sort_by(f64::total_cmp);
        let mid = rates.len() / 2;
        let median = if rates.len() % 2 == 1 {
            rates[mid]
        } else {
            (rates[mid - 1] + rates[mid]) / 2.0
        };
        Ok(Some(Estimate {
            bytes_per_sec: median,
            runs_used: rates.len(),
        }))
    }
}

const RUN_COLUMNS: &str = "id, kind, source, destination, profile, started_at, ended_at, \
                           bytes, files, chunks, outcome, error";

/// A row as SQLite holds it, before the checks that need the database's path for errors.
struct RawRun {
    id: i64,
    kind: String,
    source: String,
    destination: String,
    profile: Option<String>,
    started_at: i64,
    ended_at: Option<i64>,
    bytes: i64,
    files: i64,
    chunks: i64,
    outcome: Option<String>,
    error: Option<String>,
}

impl RawRun {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<RawRun> {
        Ok(RawRun {
            id: row.get(0)?,
            kind: row.get(1)?,
            source: row.get(2)?,
            destination: row.get(3)?,
            profile: row.get(4)?,
            started_at: row.get(5)?,
            ended_at: row.get(6)?,
            bytes: row.get(7)?,
            files: row.get(8)?,
            chunks: row.get(9)?,
            outcome: row.get(10)?,
            error: row.get(11)?,
        })
    }

    fn into_record(self, db: &StateDb) -> Result<RunRecord, StateError> {
        let bad = |detail: String| StateError::BadValue {
            path: db.path().to_path_buf(),
            detail,
        };
        let count = |name: &str, value: i64| {
            u64::try_from(value).map_err(|_| bad(format!("{name} = {value} in run {}", self.id)))
        };
        let outcome = match &self.outcome {
            None => None,
            Some(text) => Some(
                Outcome::parse(text)
                    .ok_or_else(|| bad(format!("outcome {text:?} in run {}", self.id)))?,
            ),
        };
        Ok(RunRecord {
            id: RunId(self.id),
            bytes: count("bytes", self.bytes)?,
            files: count("files", self.files)?,
            chunks: count("chunks", self.chunks)?,
            kind: RunKind::from(self.kind),
            source: self.source,
            destination: self.destination,
            profile: self.profile,
            started_at: self.started_at,
            ended_at: self.ended_at,
            outcome,
            error: self.error,
        })
    }
}

/// A count as SQLite's signed integer; no real count comes near the limit.
fn to_sql_count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
