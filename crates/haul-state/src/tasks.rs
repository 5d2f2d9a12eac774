//! Workflow tasks that survive restarts: [`StateDb::put_task`], [`StateDb::task`],
//! [`StateDb::tasks`], [`StateDb::delete_task`]. A task is an id, a kind and a JSON state that
//! only its workflow reads; this crate stores it and checks it is JSON, nothing more.

use rusqlite::{ErrorCode, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

use crate::db::{StateDb, now_ms};
use crate::error::StateError;

/// One stored task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Its id, chosen by the workflow.
    pub id: String,
    /// Its kind, chosen by the workflow ("groupwise-po", ...).
    pub kind: String,
    /// Its state: JSON text, as last given to [`StateDb::put_task`].
    pub state: String,
    /// When it was first stored, unix milliseconds.
    pub created_at: i64,
    /// When it was last stored, unix milliseconds.
    pub updated_at: i64,
}

impl TaskRecord {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<TaskRecord> {
        Ok(TaskRecord {
            id: row.get(0)?,
            kind: row.get(1)?,
            state: row.get(2)?,
            created_at: row.get(3)?,
            updated_at: row.get(4)?,
        })
    }
}

const TASK_COLUMNS: &str = "id, kind, state, created_at, updated_at";

impl StateDb {
    /// Stores task `id` with `kind` and `state_json`, replacing its kind and state if it
    /// exists (its `created_at` stays). [`StateError::InvalidTaskState`] if `state_json` is
    /// not JSON.
    pub fn put_task(&self, id: &str, kind: &str, state_json: &str) -> Result<(), StateError> {
        let now = now_ms();
        let result = self.conn().execute(
            "INSERT INTO tasks (id, kind, state, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?4)
             ON CONFLICT (id) DO UPDATE
                 SET kind = excluded.kind, state = excluded.state, updated_at = excluded.updated_at",
            params![id, kind, state_json, now],
        );
        match result {
            Ok(_) => Ok(()),
            // The json_valid check is the only constraint an upsert can break.
            Err(e) if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => {
                Err(StateError::InvalidTaskState { id: id.to_owned() })
            }
            Err(e) => Err(self.err("store a task")(e)),
        }
    }

    /// Task `id`, if stored.
    pub fn task(&self, id: &str) -> Result<Option<TaskRecord>, StateError> {
        let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1");
        self.conn()
            .query_row(&sql, [id], TaskRecord::from_row)
            .optional()
            .map_err(self.err("read a task"))
    }

    /// The tasks of `kind` (all tasks if `None`), by id.
    pub fn tasks(&self, kind: Option<&str>) -> Result<Vec<TaskRecord>, StateError> {
        let conn = self.conn();
        let err = self.err("read the tasks");
        let sql = if kind.is_some() {
            format!("SELECT {TASK_COLUMNS} FROM tasks WHERE kind = ?1 ORDER BY id")
        } else {
            format!("SELECT {TASK_COLUMNS} FROM tasks WHERE ?1 IS NULL ORDER BY id")
        };
        let mut stmt = conn.prepare(&sql).map_err(&err)?;
        let tasks = stmt
            .query_map([kind], TaskRecord::from_row)
            .map_err(&err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(&err)?;
        Ok(tasks)
    }

    /// Removes task `id`. True if it was stored.
    pub fn delete_task(&self, id: &str) -> Result<bool, StateError> {
        let removed = self
            .conn()
            .execute("DELETE FROM tasks WHERE id = ?1", [id])
            .map_err(self.err("delete a task"))?;
        Ok(removed > 0)
    }
}
