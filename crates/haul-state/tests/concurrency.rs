//! Several writers on one database at once: threads sharing a handle, threads with their own
//! handles, and another process.

mod common;

use std::collections::HashSet;
use std::io::{BufReader, Write};
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use haul_state::{RunFilter, StateDb, StateError};

use common::{ok, push, spawn_test, wait_for};

const PER_WRITER: usize = 200;
const WRITER_ENV: &str = "HAUL_STATE_TEST_WRITER_DIR";
const OPENER_ENV: &str = "HAUL_STATE_TEST_OPENER_DIR";

/// Records `PER_WRITER` finished runs from `source`.
fn write_runs(db: &StateDb, source: &str) {
    for i in 0..PER_WRITER {
        let id = db.start_run(&push(source, "quic://target/po1")).unwrap();
        db.finish_run(id, &ok(i as u64 + 1)).unwrap();
    }
}

fn count_by_source(db: &StateDb) -> Vec<(String, usize)> {
    let runs = db.runs(&RunFilter::default()).unwrap();
    let ids: HashSet<_> = runs.iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), runs.len(), "run ids are unique");
    assert!(
        runs.iter().all(|r| r.outcome.is_some()),
        "every run finished"
    );
    let mut counts = std::collections::BTreeMap::new();
    for run in runs {
        *counts.entry(run.source).or_insert(0) += 1;
    }
    counts.into_iter().collect()
}

/// The writer in the child process: opens the database, says so, waits for the parent's go,
/// writes. A no-op in the parent's own test run.
#[test]
fn child_writer() {
    let Some(dir) = std::env::var_os(WRITER_ENV) else {
        return;
    };
    let db = StateDb::open(Path::new(&dir)).unwrap();
    println!("HAUL-CHILD-READY");
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).unwrap();
    write_runs(&db, "/child");
    println!("HAUL-CHILD-DONE");
}

#[test]
fn two_threads_with_own_handles_and_a_second_process_lose_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    // The child creates the database while the threads race to open it too.
    let mut child = spawn_test("child_writer", &[(WRITER_ENV, &dir)]);
    let mut child_out = BufReader::new(child.stdout.take().unwrap());
    let start = Arc::new(Barrier::new(3));
    let threads: Vec<_> = ["/thread-a", "/thread-b"]
        .into_iter()
        .map(|source| {
            let dir = dir.clone();
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                let db = StateDb::open(&dir);
                // Wait before unwrapping, so a failed open fails the test instead of leaving
                // the others at the barrier.
                start.wait();
                write_runs(&db.unwrap(), source);
            })
        })
        .collect();
    wait_for(&mut child_out, "HAUL-CHILD-READY");
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    start.wait();
    for thread in threads {
        thread.join().unwrap();
    }
    wait_for(&mut child_out, "HAUL-CHILD-DONE");
    let status = child.wait().unwrap();
    assert!(status.success(), "child writer failed: {status}");

    let db = StateDb::open(&dir).unwrap();
    assert_eq!(
        count_by_source(&db),
        [
            ("/child".to_string(), PER_WRITER),
            ("/thread-a".to_string(), PER_WRITER),
            ("/thread-b".to_string(), PER_WRITER),
        ]
    );
}

/// The opener in the child process: opens the database once. A no-op in the parent's run.
#[test]
fn child_opener() {
    let Some(dir) = std::env::var_os(OPENER_ENV) else {
        return;
    };
    StateDb::open(Path::new(&dir)).unwrap();
}

/// Regression: two processes creating one database at once used to fail now and then (a
/// read-only check finding the creator's journal hot, a journal deleted twice by two
/// switches to WAL, a busy error without the busy handler); opens are serialized now.
#[test]
fn first_opens_race_safely_across_processes() {
    for _ in 0..20 {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let children: Vec<_> = (0..2)
            .map(|_| spawn_test("child_opener", &[(OPENER_ENV, &dir)]))
            .collect();
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let dir = dir.clone();
                std::thread::spawn(move || StateDb::open(&dir).map(drop))
            })
            .collect();
        for thread in threads {
            thread.join().unwrap().unwrap();
        }
        for mut child in children {
            drop(child.stdin.take());
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "child open failed: {out:?}");
        }
        assert!(
            StateDb::open(&dir)
                .unwrap()
                .runs(&RunFilter::default())
                .unwrap()
                .is_empty()
        );
    }
}

#[test]
fn threads_share_one_handle() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<StateDb>();

    let tmp = tempfile::tempdir().unwrap();
    let db = Arc::new(StateDb::open(tmp.path()).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let db = Arc::clone(&db);
            std::thread::spawn(move || {
                for i in 0..50 {
                    let id = db.start_run(&push(&format!("/t{t}"), "/dst")).unwrap();
                    db.finish_run(id, &ok(i + 1)).unwrap();
                    db.log(Some(id), None, haul_state::Level::Debug, "done")
                        .unwrap();
                    db.put_task(&format!("t{t}-{i}"), "test", "{}").unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let counts = count_by_source(&db);
    assert_eq!(counts.len(), 4);
    assert!(counts.iter().all(|(_, n)| *n == 50), "{counts:?}");
    assert_eq!(db.logs(None, 1000).unwrap().len(), 200);
    assert_eq!(db.tasks(Some("test")).unwrap().len(), 200);
}

#[test]
fn a_writer_held_beyond_the_busy_timeout_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let timeout = Duration::from_millis(300);
    let db = StateDb::open_with_busy_timeout(tmp.path(), timeout).unwrap();
    // Another process's long write transaction, as SQLite sees it.
    let other = rusqlite::Connection::open(db.path()).unwrap();
    other
        .execute_batch("BEGIN IMMEDIATE; INSERT INTO tasks VALUES ('x', 'k', '{}', 0, 0);")
        .unwrap();

    // Opening a current database takes no write lock, so it does not wait.
    let opened = Instant::now();
    let second = StateDb::open_with_busy_timeout(tmp.path(), timeout).unwrap();
    assert!(opened.elapsed() < timeout, "open waited for the writer");
    assert!(
        second.runs(&RunFilter::default()).unwrap().is_empty(),
        "reads go on"
    );

    let started = Instant::now();
    let err = db.start_run(&push("/a", "/b")).unwrap_err();
    assert!(
        started.elapsed() >= timeout,
        "gave up after {:?}",
        started.elapsed()
    );
    match &err {
        StateError::Busy { path, timeout: t } => {
            assert_eq!((path.as_path(), *t), (db.path(), timeout));
        }
        other => panic!("expected Busy, got {other:?}"),
    }
    assert!(err.is_retryable());
    let message = err.to_string();
    assert!(
        message.contains("stayed locked by another haul process for more than 300ms"),
        "{message}"
    );
    assert!(
        message.contains("wait for that process to finish"),
        "{message}"
    );

    other.execute_batch("COMMIT").unwrap();
    db.start_run(&push("/a", "/b")).unwrap();
    assert_eq!(db.task("x").unwrap().unwrap().kind, "k");
}
