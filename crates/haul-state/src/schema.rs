//! The schema, as numbered migrations recorded in `PRAGMA user_version`.
//!
//! Migration `n` (1-based) takes a database from version `n - 1` to `n`; [`MIGRATIONS`] holds
//! them in order. A released migration is never edited: a change is a new migration. Each is
//! public so a test can build a database exactly as an older haul left it.

use rusqlite::{Connection, TransactionBehavior};

/// The schema version this build writes and the newest it can read.
pub const VERSION: u32 = 3;

/// Version 1: the run history.
pub const V1: &str = "
CREATE TABLE runs (
    id          INTEGER PRIMARY KEY,
    kind        TEXT    NOT NULL,
    source      TEXT    NOT NULL,
    destination TEXT    NOT NULL,
    started_at  INTEGER NOT NULL,
    ended_at    INTEGER,
    bytes       INTEGER NOT NULL DEFAULT 0,
    files       INTEGER NOT NULL DEFAULT 0,
    chunks      INTEGER NOT NULL DEFAULT 0,
    outcome     TEXT,
    error       TEXT
);
CREATE INDEX runs_by_route ON runs (kind, source, destination, started_at);
";

/// Version 2: the workflow profile of a run, and the log.
pub const V2: &str = "
ALTER TABLE runs ADD COLUMN profile TEXT;
CREATE INDEX runs_by_profile ON runs (profile, started_at);
CREATE TABLE log (
    id      INTEGER PRIMARY KEY,
    run_id  INTEGER REFERENCES runs (id),
    profile TEXT,
    at      INTEGER NOT NULL,
    level   TEXT    NOT NULL,
    message TEXT    NOT NULL
);
CREATE INDEX log_by_profile ON log (profile, id);
CREATE INDEX log_by_run ON log (run_id);
";

/// Version 3: workflow tasks that survive restarts. `state` is JSON owned by the caller.
pub const V3: &str = "
CREATE TABLE tasks (
    id         TEXT    PRIMARY KEY,
    kind       TEXT    NOT NULL,
    state      TEXT    NOT NULL CHECK (json_valid(state)),
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX tasks_by_kind ON tasks (kind, id);
";

/// Every migration in order: `MIGRATIONS[n - 1]` builds version `n`.
pub const MIGRATIONS: [&str; VERSION as usize] = [V1, V2, V3];

/// What [`migrate`] found.
pub(crate) enum Migrated {
    /// The database is at [`VERSION`] now.
    Current,
    /// The database is newer than this build.
    Newer(u32),
}

/// Brings the database to [`VERSION`] in one immediate transaction. The version is read
/// again inside it, so two processes opening a fresh database at once migrate it once. A
/// database already current takes no write lock, so opening never waits for a writer.
pub(crate) fn migrate(conn: &mut Connection) -> rusqlite::Result<Migrated> {
    match user_version(conn)? {
        VERSION => return Ok(Migrated::Current),
        newer if newer > VERSION => return Ok(Migrated::Newer(newer)),
        _ => {}
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found = user_version(&tx)?;
    if found > VERSION {
        return Ok(Migrated::Newer(found));
    }
    for sql in &MIGRATIONS[found as usize..] {
        tx.execute_batch(sql)?;
    }
    if found < VERSION {
        tx.pragma_update(None, "user_version", VERSION)?;
    }
    tx.commit()?;
    Ok(Migrated::Current)
}

/// `PRAGMA user_version`.
pub(crate) fn user_version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}
