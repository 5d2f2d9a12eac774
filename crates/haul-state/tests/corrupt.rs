//! A damaged database file is reported as corrupt and left byte for byte as it was.

mod common;

use std::path::{Path, PathBuf};

use haul_state::{RunFilter, StateDb, StateError};

use common::{ok, push};

/// A real database with enough rows to span many pages, closed (so the WAL is checkpointed
/// into the main file and removed).
fn real_database(dir: &Path) -> PathBuf {
    let db = StateDb::open(dir).unwrap();
    for i in 0..500 {
        let id = db
            .start_run(&push(&format!("/backups/po{i}"), "quic://target/po"))
            .unwrap();
        db.finish_run(id, &ok(i)).unwrap();
    }
    let path = db.path().to_path_buf();
    drop(db);
    assert!(std::fs::metadata(&path).unwrap().len() > 16 * 4096);
    path
}

/// Opens, expects Corrupt naming `path`, and checks the bytes did not change.
fn assert_corrupt_and_untouched(dir: &Path, path: &Path) -> String {
    let before = std::fs::read(path).unwrap();
    let err = StateDb::open(dir).unwrap_err();
    match &err {
        StateError::Corrupt { path: p, .. } => assert_eq!(p, path),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(
        std::fs::read(path).unwrap(),
        before,
        "the file was modified"
    );
    // A second attempt says the same and still writes nothing.
    assert!(matches!(
        StateDb::open(dir).unwrap_err(),
        StateError::Corrupt { .. }
    ));
    assert_eq!(
        std::fs::read(path).unwrap(),
        before,
        "the file was modified"
    );
    let message = err.to_string();
    assert!(message.contains("move it aside"), "{message}");
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(!err.is_retryable());
    message
}

#[test]
fn garbage_bytes_are_corrupt_and_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(haul_state::DB_FILE_NAME);
    let garbage: Vec<u8> = (0..10_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &garbage).unwrap();
    let message = assert_corrupt_and_untouched(tmp.path(), &path);
    assert!(message.contains("SQLite header"), "{message}");
}

#[test]
fn a_text_file_is_corrupt_and_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(haul_state::DB_FILE_NAME);
    std::fs::write(&path, "not a database\n").unwrap();
    assert_corrupt_and_untouched(tmp.path(), &path);
}

#[test]
fn a_truncated_database_is_corrupt_and_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let path = real_database(tmp.path());
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert_corrupt_and_untouched(tmp.path(), &path);
}

#[test]
fn a_database_cut_inside_its_first_page_is_corrupt_and_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let path = real_database(tmp.path());
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..1000]).unwrap();
    assert_corrupt_and_untouched(tmp.path(), &path);
}

#[test]
fn an_overwritten_page_is_corrupt_and_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let path = real_database(tmp.path());
    let mut bytes = std::fs::read(&path).unwrap();
    // Page 3 onwards hold table and index b-tree pages; scribble over one of them.
    for b in &mut bytes[3 * 4096..4 * 4096] {
        *b = 0xA5;
    }
    std::fs::write(&path, &bytes).unwrap();
    assert_corrupt_and_untouched(tmp.path(), &path);
}

#[test]
fn moved_aside_a_new_database_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let path = real_database(tmp.path());
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert!(StateDb::open(tmp.path()).is_err());
    // As the message says: the file and its -wal and -shm, if any, into another directory.
    let broken = tmp.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    for name in ["state.sqlite3", "state.sqlite3-wal", "state.sqlite3-shm"] {
        match std::fs::rename(tmp.path().join(name), broken.join(name)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            other => other.unwrap(),
        }
    }
    let db = StateDb::open(tmp.path()).unwrap();
    assert!(db.runs(&RunFilter::default()).unwrap().is_empty());
    db.start_run(&push("/a", "/b")).unwrap();
}

#[test]
fn an_empty_file_becomes_a_new_database() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(haul_state::DB_FILE_NAME);
    std::fs::write(&path, "").unwrap();
    let db = StateDb::open(tmp.path()).unwrap();
    db.start_run(&push("/a", "/b")).unwrap();
}
