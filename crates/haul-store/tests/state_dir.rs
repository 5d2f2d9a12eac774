//! `Root::open` refuses a `.haul` state directory another user could write to: one writable by
//! group or others, or one owned by a user other than the receiver's (root excepted, which may
//! use a `.haul` owned by anyone as long as nobody else can write it).
//!
//! The tests normally run as root, where a foreign owner is accepted, so the non-root refusal
//! is tested by re-running this test binary as uid/gid 65534 (`nobody`) against a `.haul`
//! owned by root; when not running as root, those tests that need `chown` are skipped.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use haul_store::{Root, StoreError};

const NOBODY: u32 = 65534;
/// Set in the re-run child to the root it must open.
const CHILD_ENV: &str = "HAUL_STATE_DIR_TEST_ROOT";

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A root directory holding an existing, empty `.haul` with `mode`.
fn root_with_state_dir(tmp: &Path, mode: u32) -> (PathBuf, PathBuf) {
    let root = tmp.join("root");
    fs::create_dir(&root).unwrap();
    let haul = root.join(".haul");
    fs::create_dir(&haul).unwrap();
    chmod(&haul, mode);
    (root, haul)
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn refusal(root: &Path) -> String {
    match Root::open(root) {
        Err(e @ StoreError::UnsafeStateDir { .. }) => e.to_string(),
        Err(e) => panic!("expected UnsafeStateDir, got {e:?}"),
        Ok(_) => panic!("{} was accepted", root.display()),
    }
}

#[test]
fn a_new_state_dir_is_private_and_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    Root::open(tmp.path()).unwrap();
    assert_eq!(mode_of(&tmp.path().join(".haul")), 0o700);
    // And it is accepted again once it exists.
    Root::open(tmp.path()).unwrap();
}

#[test]
fn a_world_writable_state_dir_is_refused_and_left_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, haul) = root_with_state_dir(tmp.path(), 0o777);
    let message = refusal(&root);
    assert!(message.contains(&haul.display().to_string()), "{message}");
    assert!(message.contains("0777"), "{message}");
    assert!(message.contains("others"), "{message}");
    assert!(
        message.contains(&format!("chmod go-w {}", haul.display())),
        "{message}"
    );
    // Refused before anything was made in it or changed about it.
    assert_eq!(mode_of(&haul), 0o777);
    assert!(entries(&haul).is_empty(), "{:?}", entries(&haul));

    // The advised fix works.
    chmod(&haul, 0o755);
    Root::open(&root).unwrap();
    assert_eq!(entries(&haul), ["partial", "staging"]);
}

#[test]
fn a_group_writable_state_dir_is_refused_but_a_readable_one_is_accepted() {
    for mode in [0o770, 0o720, 0o702] {
        let tmp = tempfile::tempdir().unwrap();
        let (root, haul) = root_with_state_dir(tmp.path(), mode);
        let message = refusal(&root);
        assert!(message.contains("chmod go-w"), "{mode:o}: {message}");
        assert!(entries(&haul).is_empty(), "{mode:o}");
    }
    for mode in [0o700, 0o750, 0o755] {
        let tmp = tempfile::tempdir().unwrap();
        let (root, _) = root_with_state_dir(tmp.path(), mode);
        Root::open(&root).unwrap_or_else(|e| panic!("{mode:o}: {e}"));
    }
}

/// Root runs receivers for every user, so it may use a `.haul` someone else owns; what still
/// matters is that nobody but that owner (and root) can write to it.
#[test]
fn root_accepts_a_foreign_owned_state_dir_only_if_others_cannot_write_it() {
    if !is_root() {
        eprintln!("state_dir: not root, cannot chown; skipping");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (root, haul) = root_with_state_dir(tmp.path(), 0o700);
    std::os::unix::fs::chown(&haul, Some(NOBODY), Some(NOBODY)).unwrap();
    Root::open(&root).unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let (root, haul) = root_with_state_dir(tmp.path(), 0o775);
    std::os::unix::fs::chown(&haul, Some(NOBODY), Some(NOBODY)).unwrap();
    let message = refusal(&root);
    assert!(message.contains("chmod go-w"), "{message}");
    assert!(!message.contains("chown"), "root needs no chown: {message}");
    assert!(entries(&haul).is_empty());
}

/// A non-root receiver must not use a `.haul` owned by someone else, even a read-only one:
/// its owner could swap what is in it. Needs a second user, so as root this test re-runs
/// itself as `nobody` against a `.haul` owned by root (mode 0755, so `nobody` can open it).
#[test]
fn a_state_dir_owned_by_another_user_is_refused() {
    if let Some(root) = std::env::var_os(CHILD_ENV) {
        // The child, running as `nobody`.
        assert!(!is_root());
        let root = PathBuf::from(root);
        let message = refusal(&root);
        assert!(message.contains("owned by uid 0"), "{message}");
        assert!(message.contains(&format!("uid {NOBODY}")), "{message}");
        assert!(
            message.contains(&format!("chown -R {NOBODY} ")),
            "{message}"
        );
        assert!(!message.contains("chmod"), "{message}");
        return;
    }
    if !is_root() {
        eprintln!("state_dir: not root, cannot make a directory owned by another user; skipping");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    chmod(tmp.path(), 0o755);
    let (root, haul) = root_with_state_dir(tmp.path(), 0o755);
    chmod(&root, 0o755);
    let exe = std::env::current_exe().unwrap();
    let output = Command::new(&exe)
        .args([
            "--exact",
            "a_state_dir_owned_by_another_user_is_refused",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(CHILD_ENV, &root)
        .uid(NOBODY)
        .gid(NOBODY)
        .output();
    let output = match output {
        Ok(output) => output,
        Err(e) => {
            eprintln!(
                "state_dir: cannot run {} as uid {NOBODY} ({e}); skipping",
                exe.display()
            );
            return;
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "child as uid {NOBODY} failed:\n{stdout}\n{stderr}"
    );
    // The child really ran the test (rather than matching no test at all).
    assert!(stdout.contains("1 passed"), "{stdout}");
    assert!(entries(&haul).is_empty());
    assert_eq!(mode_of(&haul), 0o755);
}
