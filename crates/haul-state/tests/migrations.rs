//! Schema migrations: from nothing, and from a database as each earlier version left it.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use haul_state::schema::{self, MIGRATIONS, V1, V2, V3};
use haul_state::{Level, Outcome, RunFilter, RunId, RunKind, RunStart, StateDb, StateError};
use rusqlite::Connection;

use common::{ok, push};

/// A database built the way a haul at `version` built it, without this crate's code.
fn build_at(dir: &Path, version: u32) -> Connection {
    let conn = Connection::open(dir.join(haul_state::DB_FILE_NAME)).unwrap();
    conn.pragma_update_and_check(None, "journal_mode", "wal", |_| Ok(()))
        .unwrap();
    for sql in &MIGRATIONS[..version as usize] {
        conn.execute_batch(sql).unwrap();
    }
    conn.pragma_update(None, "user_version", version).unwrap();
    conn
}

fn user_version(dir: &Path) -> u32 {
    Connection::open(dir.join(haul_state::DB_FILE_NAME))
        .unwrap()
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .unwrap()
}

fn table_names(dir: &Path) -> Vec<String> {
    let conn = Connection::open(dir.join(haul_state::DB_FILE_NAME)).unwrap();
    let mut stmt = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap();
    stmt.query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn migrations_are_one_constant_per_version() {
    assert_eq!(MIGRATIONS, [V1, V2, V3]);
    assert_eq!(schema::VERSION as usize, MIGRATIONS.len());
}

#[test]
fn a_fresh_database_gets_every_migration() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nested/state");
    let db = StateDb::open(&dir).unwrap();
    assert_eq!(db.path(), dir.join("state.sqlite3"));
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & 0o077, 0, "the state directory is private: {mode:o}");

    assert_eq!(user_version(&dir), schema::VERSION);
    assert_eq!(table_names(&dir), ["log", "runs", "tasks"]);
    let conn = Connection::open(db.path()).unwrap();
    let journal: String = conn
        .pragma_query_value(None, "journal_mode", |row| row.get(0))
        .unwrap();
    assert_eq!(journal, "wal");

    // Opening again changes nothing and keeps the data.
    let id = db.start_run(&push("/a", "/b")).unwrap();
    drop(db);
    let db = StateDb::open(&dir).unwrap();
    assert_eq!(db.run(id).unwrap().unwrap().source, "/a");
    assert_eq!(user_version(&dir), schema::VERSION);
}

#[test]
fn a_v1_database_keeps_its_runs_and_gains_profiles_log_and_tasks() {
    let tmp = tempfile::tempdir().unwrap();
    let conn = build_at(tmp.path(), 1);
    conn.execute_batch(
        "INSERT INTO runs (id, kind, source, destination, started_at, ended_at, bytes, files, chunks, outcome, error)
         VALUES (1, 'push', '/backups/po1', 'quic://t/po1', 1000, 11000, 10000000, 40, 10, 'ok', NULL),
                (2, 'copy', '/a', '/b', 20000, NULL, 0, 0, 0, NULL, NULL),
                (3, 'push', '/backups/po1', 'quic://t/po1', 30000, 31000, 5, 1, 1, 'failed', 'link lost');",
    )
    .unwrap();
    drop(conn);

    let db = StateDb::open(tmp.path()).unwrap();
    assert_eq!(user_version(tmp.path()), schema::VERSION);
    let runs = db.runs(&RunFilter::default()).unwrap();
    assert_eq!(
        runs.iter().map(|r| r.id).collect::<Vec<_>>(),
        [RunId(3), RunId(2), RunId(1)]
    );
    let first = &runs[2];
    assert_eq!(first.kind, RunKind::Push);
    assert_eq!(
        (first.bytes, first.files, first.chunks),
        (10_000_000, 40, 10)
    );
    assert_eq!(first.outcome, Some(Outcome::Ok));
    assert_eq!(first.profile, None);
    assert_eq!(runs[0].error.as_deref(), Some("link lost"));
    assert_eq!(runs[1].outcome, None);

    // The old rows feed the estimate; the new column, the log and the tasks work.
    let estimate = db
        .throughput_estimate(&RunKind::Push, "/backups/po1", "quic://t/po1")
        .unwrap()
        .unwrap();
    assert_eq!(
        (estimate.bytes_per_sec, estimate.runs_used),
        (1_000_000.0, 1)
    );
    let id = db
        .start_run(&RunStart {
            profile: Some("groupwise".into()),
            ..push("/backups/po1", "quic://t/po1")
        })
        .unwrap();
    db.log(Some(id), Some("groupwise"), Level::Info, "started")
        .unwrap();
    db.log(Some(RunId(1)), None, Level::Info, "about an old run")
        .unwrap();
    let filter = RunFilter {
        profile: Some("groupwise".into()),
        ..RunFilter::default()
    };
    assert_eq!(db.runs(&filter).unwrap().len(), 1);
    assert_eq!(
        db.logs(Some("groupwise"), 10).unwrap()[0].message,
        "started"
    );
    db.put_task("po1", "groupwise-po", r#"{"step":1}"#).unwrap();
    assert_eq!(db.task("po1").unwrap().unwrap().state, r#"{"step":1}"#);
}

#[test]
fn a_v2_database_keeps_its_runs_and_log_and_gains_tasks() {
    let tmp = tempfile::tempdir().unwrap();
    let conn = build_at(tmp.path(), 2);
    conn.execute_batch(
        "INSERT INTO runs (id, kind, source, destination, profile, started_at, ended_at, bytes, files, chunks, outcome)
         VALUES (7, 'pull', 'quic://s/elm', '/srv/elm', 'app-layering', 1000, 3000, 4000, 2, 1, 'ok');
         INSERT INTO log (id, run_id, profile, at, level, message)
         VALUES (1, 7, 'app-layering', 1500, 'warn', 'slow disk'),
                (2, NULL, NULL, 1600, 'info', 'no profile');",
    )
    .unwrap();
    drop(conn);

    let db = StateDb::open(tmp.path()).unwrap();
    assert_eq!(user_version(tmp.path()), schema::VERSION);
    let run = db.run(RunId(7)).unwrap().unwrap();
    assert_eq!(run.kind, RunKind::Pull);
    assert_eq!(run.profile.as_deref(), Some("app-layering"));
    assert_eq!(run.duration_ms(), Some(2000));
    let lines = db.logs(Some("app-layering"), 10).unwrap();
    assert_eq!(lines.len(), 1);
    assert_eq!(
        (lines[0].run, lines[0].level),
        (Some(RunId(7)), Level::Warn)
    );
    assert_eq!(lines[0].message, "slow disk");
    assert_eq!(db.logs(None, 10).unwrap().len(), 2);

    // New rows go after the old ones.
    let id = db.start_run(&push("/x", "/y")).unwrap();
    assert!(id > RunId(7));
    db.finish_run(id, &ok(1)).unwrap();
    db.put_task("elm", "app-layering", r#"{"phase":"copy"}"#)
        .unwrap();
    assert_eq!(db.tasks(Some("app-layering")).unwrap().len(), 1);
}

#[test]
fn a_newer_database_is_refused_and_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let conn = build_at(tmp.path(), schema::VERSION);
    conn.pragma_update(None, "user_version", schema::VERSION + 2)
        .unwrap();
    drop(conn);
    let path = tmp.path().join(haul_state::DB_FILE_NAME);
    let before = std::fs::read(&path).unwrap();

    let err = StateDb::open(tmp.path()).unwrap_err();
    match &err {
        StateError::Newer {
            path: p,
            found,
            supported,
        } => {
            assert_eq!(p, &path);
            assert_eq!((*found, *supported), (schema::VERSION + 2, schema::VERSION));
        }
        other => panic!("expected Newer, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains("schema version 5"), "{message}");
    assert!(message.contains("versions up to 3"), "{message}");
    assert!(message.contains("newer haul"), "{message}");
    assert!(!err.is_retryable());
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(user_version(tmp.path()), schema::VERSION + 2);
}

#[test]
fn default_dir_follows_haul_state_dir_then_xdg_then_home() {
    use std::ffi::OsString;
    let env = |vars: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        }
    };
    let dir = |vars| haul_state::default_dir_from(env(vars)).ok();
    let all = &[
        ("HAUL_STATE_DIR", "/var/lib/haul"),
        ("XDG_STATE_HOME", "/home/u/.state"),
        ("HOME", "/home/u"),
    ];
    assert_eq!(dir(all), Some("/var/lib/haul".into()));
    assert_eq!(dir(&all[1..]), Some("/home/u/.state/haul".into()));
    assert_eq!(dir(&all[2..]), Some("/home/u/.local/state/haul".into()));
    // Empty counts as unset; a relative XDG_STATE_HOME is ignored, as the XDG spec says.
    let odd = &[
        ("HAUL_STATE_DIR", ""),
        ("XDG_STATE_HOME", "relative"),
        ("HOME", "/root"),
    ];
    assert_eq!(dir(odd), Some("/root/.local/state/haul".into()));
    let err = haul_state::default_dir_from(env(&[])).unwrap_err();
    assert!(matches!(err, StateError::NoStateDir));
    assert!(err.to_string().contains("set HAUL_STATE_DIR"));
}
