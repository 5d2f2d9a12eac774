//! The source lock: refused while held (here or in another process), granted once the
//! holder lets go or dies.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;

use haul_state::{SourceLock, StateError};

use common::{spawn_test, wait_for};

const STATE_ENV: &str = "HAUL_STATE_TEST_LOCK_STATE";
const SOURCE_ENV: &str = "HAUL_STATE_TEST_LOCK_SOURCE";

/// The holder in the child process: takes the lock, says so, and holds it until killed (or
/// until its stdin closes, so a dead parent leaves no child behind). A no-op in the parent's
/// own test run.
#[test]
fn child_lock_holder() {
    let (Some(state), Some(source)) = (std::env::var_os(STATE_ENV), std::env::var_os(SOURCE_ENV))
    else {
        return;
    };
    let _lock =
        SourceLock::acquire(Path::new(&state), Path::new(&source), "push from child").unwrap();
    println!("HAUL-CHILD-LOCKED");
    let mut rest = String::new();
    let _ = std::io::stdin().lock().read_line(&mut rest);
}

fn expect_locked(err: StateError) -> (u32, String, String, i64) {
    match err {
        StateError::SourceLocked {
            pid,
            host,
            purpose,
            since,
            ..
        } => (pid, host, purpose, since),
        other => panic!("expected SourceLocked, got {other:?}"),
    }
}

#[test]
fn a_second_holder_in_this_process_is_refused_until_the_first_drops() {
    let state = tempfile::tempdir().unwrap();
    let source = tempfile::tempdir().unwrap();
    let lock = SourceLock::acquire(state.path(), source.path(), "push to target").unwrap();
    assert_eq!(lock.source(), source.path().canonicalize().unwrap());
    assert!(lock.lock_file().starts_with(state.path().join("locks")));
    let text = std::fs::read_to_string(lock.lock_file()).unwrap();
    assert!(
        text.contains(&format!("pid={}\n", std::process::id())),
        "{text}"
    );
    assert!(text.contains("purpose=push to target\n"), "{text}");

    let err = SourceLock::acquire(state.path(), source.path(), "another push").unwrap_err();
    assert!(err.is_retryable());
    let message = err.to_string();
    let (pid, _host, purpose, since) = expect_locked(err);
    assert_eq!(pid, std::process::id());
    assert_eq!(purpose, "push to target");
    assert!(since > 1_600_000_000_000, "since is unix ms: {since}");
    assert!(message.contains(&format!("process {pid}")), "{message}");
    assert!(message.contains("push to target"), "{message}");
    assert!(message.contains("UTC"), "{message}");

    drop(lock);
    let again = SourceLock::acquire(state.path(), source.path(), "another push").unwrap();
    let text = std::fs::read_to_string(again.lock_file()).unwrap();
    assert!(text.contains("purpose=another push\n"), "{text}");
}

#[test]
fn another_spelling_of_the_source_shares_the_lock_and_other_sources_do_not() {
    let state = tempfile::tempdir().unwrap();
    let sources = tempfile::tempdir().unwrap();
    let po1 = sources.path().join("po1");
    let po2 = sources.path().join("po2");
    std::fs::create_dir(&po1).unwrap();
    std::fs::create_dir(&po2).unwrap();
    std::os::unix::fs::symlink(&po1, sources.path().join("link")).unwrap();

    let _held = SourceLock::acquire(state.path(), &po1, "first").unwrap();
    let via_link = SourceLock::acquire(state.path(), &sources.path().join("link"), "second");
    expect_locked(via_link.unwrap_err());
    let dotted = sources.path().join("po2/../po1/.");
    expect_locked(SourceLock::acquire(state.path(), &dotted, "third").unwrap_err());
    SourceLock::acquire(state.path(), &po2, "other source").unwrap();
}

#[test]
fn a_missing_source_is_an_error_not_a_lock() {
    let state = tempfile::tempdir().unwrap();
    let err =
        SourceLock::acquire(state.path(), Path::new("/nonexistent/haul/po1"), "x").unwrap_err();
    assert!(matches!(err, StateError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/haul/po1"));
}

#[test]
fn a_holder_process_blocks_until_it_is_killed() {
    let state = tempfile::tempdir().unwrap();
    let source = tempfile::tempdir().unwrap();
    let mut child = spawn_test(
        "child_lock_holder",
        &[(STATE_ENV, state.path()), (SOURCE_ENV, source.path())],
    );
    let mut out = BufReader::new(child.stdout.take().unwrap());
    wait_for(&mut out, "HAUL-CHILD-LOCKED");

    let err = SourceLock::acquire(state.path(), source.path(), "parent push").unwrap_err();
    let message = err.to_string();
    let (pid, host, purpose, _) = expect_locked(err);
    assert_eq!(pid, child.id());
    assert_eq!(purpose, "push from child");
    assert!(!host.is_empty());
    assert!(message.contains(&child.id().to_string()), "{message}");

    // SIGKILL: the holder gets no chance to clean up; the kernel drops its flock.
    child.kill().unwrap();
    child.wait().unwrap();
    let lock = SourceLock::acquire(state.path(), source.path(), "parent push").unwrap();
    let text = std::fs::read_to_string(lock.lock_file()).unwrap();
    assert!(
        text.contains(&format!("pid={}\n", std::process::id())),
        "{text}"
    );
}
