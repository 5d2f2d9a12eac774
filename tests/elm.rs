//! `haul elm` end to end: the real binary, a real `haul serve` on loopback QUIC, real files.
//!
//! Both modes through Phase One and Phase Two; layers added during Phase One and while
//! awaiting confirmation; the preconditions that refuse before anything is copied (a target
//! with a layer, copy mode with the source's own share, a second migration from one source);
//! the task's lease refusing a plain push; a target on a tmpfs that fills during Phase One and
//! is grown while the task waits; a killed task resumed at chunk level; a failure injected in
//! Phase Two leaving the source unchanged; a Phase Two cancel marking the target, the next
//! migration refused, `revert` from the pre-migration snapshot, and a new migration.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use haul_testing::{Haul, Server, Tmpfs, TreeBuilder, assert_same_tree, kill_when, partial_bytes};

const MIB: u64 = 1 << 20;
const SOURCE_SHARE: &str = "//fileserver/elm-source";

fn haul() -> Haul {
    Haul::new(env!("CARGO_BIN_EXE_haul"))
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// A source appliance, a `haul serve` on a target root, and a state database.
struct Lab {
    _tmp: tempfile::TempDir,
    work: PathBuf,
    source: PathBuf,
    target: PathBuf,
    server: Server,
    token: PathBuf,
    state: PathBuf,
}

impl Lab {
    /// A sample appliance of `layers` layers of `layer_size` (via `haul elm sample`) and a
    /// server on an empty target root (or on `target` if given).
    fn new(layers: u32, layer_size: &str, target: Option<PathBuf>) -> Lab {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path().to_path_buf();
        let source = work.join("source-elm");
        let target = target.unwrap_or_else(|| work.join("target-elm"));
        fs::create_dir_all(&target).unwrap();
        let out = haul().run(
            &work.join("cfg"),
            &[
                os("elm"),
                os("sample"),
                source.as_os_str(),
                os("--layers"),
                os(&layers.to_string()),
                os("--layer-size"),
                os(layer_size),
                os("--share"),
                os(SOURCE_SHARE),
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = work.join("token");
        fs::write(&token, "elm-test-token-0123456789\n").unwrap();
        fs::set_permissions(&token, fs::Permissions::from_mode(0o600)).unwrap();
        let server = haul().serve(&target, &work.join("server-cfg"), Some(&token));
        Lab {
            state: work.join("state"),
            _tmp: tmp,
            work,
            source,
            target,
            server,
            token,
        }
    }

    fn command(&self, args: &[&OsStr]) -> Command {
        let mut cmd = haul().command(&self.work.join("cfg"));
        cmd.env("HAUL_STATE_DIR", &self.state).arg("elm").args(args);
        cmd
    }

    /// `haul elm ARGS`.
    fn elm(&self, args: &[&OsStr]) -> Output {
        self.command(args).output().unwrap()
    }

    /// `haul elm migrate` of the lab's source to PATH on its server, with `extra`.
    fn migrate_args(&self, path: &str, mode: &str, extra: &[&str]) -> Vec<OsString> {
        let mut args: Vec<OsString> = [
            "migrate",
            "--source",
            self.source.to_str().unwrap(),
            "--target",
            &self.server.url(path),
            "--mode",
            mode,
            "--fingerprint",
            &self.server.fingerprint,
            "--token-file",
            self.token.to_str().unwrap(),
            "--poll-interval",
            "200ms",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        args.extend(extra.iter().map(OsString::from));
        args
    }

    fn migrate(&self, path: &str, mode: &str, extra: &[&str]) -> Output {
        let args = self.migrate_args(path, mode, extra);
        let refs: Vec<&OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        self.elm(&refs)
    }

    /// Starts `haul elm ARGS` in the background (output to files in the work directory).
    fn spawn(&self, args: &[OsString], name: &str) -> Child {
        let refs: Vec<&OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let out = fs::File::create(self.work.join(format!("{name}.out"))).unwrap();
        let err = fs::File::create(self.work.join(format!("{name}.err"))).unwrap();
        self.command(&refs)
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap()
    }

    fn stderr_of(&self, name: &str) -> String {
        fs::read_to_string(self.work.join(format!("{name}.err"))).unwrap_or_default()
    }

    /// `haul elm show ID --json`.
    fn show(&self, id: &str) -> serde_json::Value {
        let out = self.elm(&[os("show"), os(id), os("--json")]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Waits until task `id` satisfies `cond` (panics after a minute, showing the task).
    fn wait_for(
        &self,
        id: &str,
        what: &str,
        cond: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // The task exists once `migrate` has recorded it.
            let out = self.elm(&[os("show"), os(id), os("--json")]);
            if out.status.success() {
                let task: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                if cond(&task) {
                    return task;
                }
                assert!(
                    Instant::now() < deadline,
                    "task {id} never got {what}: {task}"
                );
            } else {
                assert!(Instant::now() < deadline, "task {id} never appeared");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `haul push SRC quic://.../PATH` as a plain push.
    fn push(&self, src: &Path, path: &str) -> Output {
        haul().run(
            &self.work.join("cfg"),
            &[
                os("push"),
                src.as_os_str(),
                os(&self.server.url(path)),
                os("--fingerprint"),
                os(&self.server.fingerprint),
                os("--token-file"),
                self.token.as_os_str(),
            ],
        )
    }
}

#[track_caller]
fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "haul elm failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The last JSON object on stdout (the task as the command left it).
fn task_of(out: &Output) -> serde_json::Value {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .rfind(|v| v["event"] == "task")
        .unwrap_or_else(|| panic!("no task in the output: {}", stderr(out)))
}

fn state_kind(task: &serde_json::Value) -> &str {
    task["state"]["kind"].as_str().unwrap_or_default()
}

/// Everything Phase One and Phase Two copy arrived: layers, templates, agents, database and
/// connectors equal the source's, without caches or the certificate.
fn assert_migrated(source: &Path, target: &Path) {
    for part in ["layers", "templates", "agents", "database"] {
        assert_same_tree(&source.join(part), &target.join(part));
    }
    for connector in ["vsphere-1", "nutanix-1"] {
        let (s, t) = (
            source.join("connectors").join(connector),
            target.join("connectors").join(connector),
        );
        assert_eq!(
            fs::read(s.join("connector.json")).unwrap(),
            fs::read(t.join("connector.json")).unwrap()
        );
        assert!(!t.join("cache").exists(), "a connector cache was migrated");
    }
    assert!(
        !target.join("config/certs").exists(),
        "the certificate was migrated"
    );
}

fn share_of(dir: &Path) -> Option<String> {
    fs::read_to_string(dir.join("config/share"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Copy mode, start to end: every precondition passes and is reported; a layer added during
/// Phase One (slowed with --bwlimit) arrives through a re-scan; a plain push into the target
/// during the task is refused naming the task; a second migration from the same source is
/// refused; a layer added while awaiting confirmation arrives on proceed; the target then
/// holds everything but caches and certificate, with its own share; the source keeps its
/// share and loses only its connector caches.
#[test]
fn copy_migration_end_to_end() {
    let lab = Lab::new(3, "8M", None);
    let args = lab.migrate_args(
        "",
        "copy",
        &[
            "--share",
            "//fileserver/elm-target",
            "--bwlimit",
            "1M",
            "--json",
        ],
    );
    let mut child = lab.spawn(&args, "migrate");
    lab.wait_for("1", "running", |t| {
        state_kind(t) == "running" && t["passes"].as_u64() >= Some(1)
    });
    TreeBuilder::new(&lab.source, 7).file("layers/layer-during-phase-one.vhdx", 300_000);
    // While the task holds the target, a plain push into it is refused, naming the task.
    let push = lab.push(&lab.source.join("database"), "intruder");
    assert!(!push.status.success());
    let err = stderr(&push);
    assert!(
        err.contains("haul-elm-task-1") && err.contains("appliance migration task 1"),
        "{err}"
    );
    assert!(
        child.wait().unwrap().success(),
        "{}",
        lab.stderr_of("migrate")
    );
    let out = fs::read_to_string(lab.work.join("migrate.out")).unwrap();
    let checks: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "check")
        .collect();
    assert_eq!(checks.len(), 7, "{out}");
    assert!(checks.iter().all(|c| c["pass"] == true), "{out}");
    assert!(
        out.contains("custom certificate"),
        "the certificate warning is missing: {out}"
    );
    let task = lab.show("1");
    assert_eq!(state_kind(&task), "awaiting_confirmation", "{task}");
    assert!(task["passes"].as_u64().unwrap() >= 2, "no re-scan: {task}");
    assert_eq!(task["layers_total"], 4, "{task}");
    assert_eq!(task["layers_done"], 4, "{task}");
    assert_eq!(task["access"]["target"], "expand storage, export logs");
    assert!(task["snapshot"].is_string(), "{task}");
    assert!(
        lab.target
            .join("layers/layer-during-phase-one.vhdx")
            .exists()
    );
    assert!(
        !lab.target.join("database").exists(),
        "the database is Phase Two's"
    );
    assert!(!lab.target.join("intruder").exists());

    // A second migration from this source, while the first awaits confirmation: refused
    // before anything is copied.
    let other = lab.work.join("other-target");
    fs::create_dir_all(&other).unwrap();
    let second = lab.elm(&[
        os("migrate"),
        os("--source"),
        lab.source.as_os_str(),
        os("--target"),
        other.as_os_str(),
        os("--mode"),
        os("copy"),
        os("--share"),
        os("//fileserver/other"),
    ]);
    assert_eq!(second.status.code(), Some(1));
    assert!(
        stderr(&second).contains("FAIL  no other migration from this source"),
        "{}",
        stderr(&second)
    );
    assert!(
        !other.join("layers").exists(),
        "the refused migration copied something"
    );

    // A layer made while awaiting confirmation arrives with proceed's last re-scan.
    TreeBuilder::new(&lab.source, 8).file("layers/layer-while-waiting.vhdx", 200_000);
    let source_share = share_of(&lab.source);
    let out = lab.elm(&[os("proceed"), os("1"), os("--json")]);
    assert_ok(&out);
    let task = task_of(&out);
    assert_eq!(state_kind(&task), "done", "{task}");
    assert_eq!(task["layers_total"], 5);
    assert_migrated(&lab.source, &lab.target);
    assert_eq!(
        share_of(&lab.target).as_deref(),
        Some("//fileserver/elm-target")
    );
    assert_eq!(
        share_of(&lab.source),
        source_share,
        "copy changed the source's share"
    );
    for connector in ["vsphere-1", "nutanix-1"] {
        let cache = lab.source.join("connectors").join(connector).join("cache");
        assert!(
            cache.is_dir() && fs::read_dir(&cache).unwrap().next().is_none(),
            "cache not cleaned"
        );
    }
    // Done: the target is free again.
    assert!(
        lab.push(&lab.source.join("agents"), "after")
            .status
            .success()
    );
    // The tasks list and the exported logs say what happened.
    let tasks = lab.elm(&[os("tasks")]);
    assert_ok(&tasks);
    assert!(String::from_utf8_lossy(&tasks.stdout).contains("done"));
    let archive = lab.work.join("task-1.tar");
    assert_ok(&lab.elm(&[os("logs"), os("1"), os("--export"), archive.as_os_str()]));
    let listing = Command::new("tar")
        .arg("-tf")
        .arg(&archive)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.contains("task-1/state.json") && listing.contains("task-1/log.txt"),
        "{listing}"
    );
    let log = Command::new("tar")
        .arg("-xOf")
        .arg(&archive)
        .arg("task-1/log.txt")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&log.stdout).contains("pre-migration snapshot"));
}

/// Preconditions refuse before anything is copied: a target that already has a layer, and
/// copy mode given the source's own share; each failed check is named, nothing reaches the
/// target, no snapshot is taken, and the task is recorded as refused.
#[test]
fn preconditions_refuse_before_anything_is_copied() {
    let lab = Lab::new(2, "1M", None);
    fs::create_dir_all(lab.target.join("layers")).unwrap();
    fs::write(
        lab.target.join("layers/existing.vhdx"),
        b"a layer made on the target",
    )
    .unwrap();
    let out = lab.migrate("", "copy", &["--share", SOURCE_SHARE]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("FAIL  target has no layers"), "{err}");
    assert!(err.contains("FAIL  network file share"), "{err}");
    assert!(
        err.contains("pass  target reachable, credentials accepted"),
        "{err}"
    );
    assert!(
        !lab.target.join("templates").exists(),
        "something was copied"
    );
    assert!(
        !lab.target.join(".haul/snapshots").exists()
            || fs::read_dir(lab.target.join(".haul/snapshots"))
                .unwrap()
                .next()
                .is_none()
    );
    assert_eq!(state_kind(&lab.show("1")), "refused");
    // Wrong credentials are a failed check too, not a crash.
    let bad = lab.work.join("bad-token");
    fs::write(&bad, "not-the-token-at-all\n").unwrap();
    fs::set_permissions(&bad, fs::Permissions::from_mode(0o600)).unwrap();
    fs::remove_file(lab.target.join("layers/existing.vhdx")).unwrap();
    let mut args = lab.migrate_args("", "move", &[]);
    let at = args.iter().position(|a| a == "--token-file").unwrap();
    args[at + 1] = bad.into_os_string();
    let refs: Vec<&OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let out = lab.elm(&refs);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("FAIL  target reachable, credentials accepted"),
        "{}",
        stderr(&out)
    );
}

/// Move mode with a failure injected in Phase Two (the target's config/share is a
/// directory, so the share cannot be written): the source is left exactly as it was, share
/// included; the target is marked non-recoverable and a new migration into it is refused
/// with the instruction to revert; `revert` restores the pre-migration snapshot and clears
/// the mark; a new move then succeeds and only then removes the source's share.
#[test]
fn move_failure_in_phase_two_leaves_the_source_unchanged_and_revert_recovers() {
    let lab = Lab::new(2, "2M", None);
    assert_ok(&lab.migrate("", "move", &[]));
    let before = tree_listing(&lab.source);
    fs::create_dir_all(lab.target.join("config/share")).unwrap();
    let out = lab.elm(&[os("proceed"), os("1")]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        tree_listing(&lab.source),
        before,
        "the source changed before the move completed"
    );
    assert_eq!(share_of(&lab.source).as_deref(), Some(SOURCE_SHARE));
    let task = lab.show("1");
    assert_eq!(state_kind(&task), "non_recoverable", "{task}");
    assert!(lab.target.join("HAUL-ELM-NON-RECOVERABLE").exists());

    let again = lab.migrate("", "move", &[]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("FAIL  target not marked non-recoverable"),
        "{}",
        stderr(&again)
    );
    assert!(
        stderr(&again).contains("haul elm revert 1"),
        "{}",
        stderr(&again)
    );

    let out = lab.elm(&[os("revert"), os("1"), os("--json")]);
    assert_ok(&out);
    assert_eq!(state_kind(&task_of(&out)), "reverted");
    // Back to the pre-migration target: empty apart from haul's own state.
    let left: Vec<_> = fs::read_dir(&lab.target)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != ".haul")
        .collect();
    assert!(
        left.is_empty(),
        "after revert the target still holds {left:?}"
    );

    let out = lab.migrate("", "move", &["--json"]);
    assert_ok(&out);
    let id = task_of(&out)["id"].as_str().unwrap().to_string();
    assert_ok(&lab.elm(&[os("proceed"), os(&id)]));
    assert_migrated(&lab.source, &lab.target);
    assert_eq!(share_of(&lab.target).as_deref(), Some(SOURCE_SHARE));
    assert_eq!(
        share_of(&lab.source),
        None,
        "the source kept its share after the move"
    );
}

/// A Phase Two cancel: refused without confirmation, then (with --yes) it stops the running
/// Phase Two and marks the target; the next migration is refused; `revert` restores the
/// snapshot and a new migration succeeds.
#[test]
fn phase_two_cancel_marks_the_target_until_reverted() {
    let lab = Lab::new(1, "1M", None);
    TreeBuilder::new(&lab.source, 9).file("database/big-table.db", (6 * MIB) as usize);
    assert_ok(&lab.migrate("", "copy", &["--share", "//fileserver/new"]));
    let args: Vec<OsString> = ["proceed", "1", "--bwlimit", "1M"]
        .iter()
        .map(OsString::from)
        .collect();
    let mut child = lab.spawn(&args, "proceed");
    lab.wait_for("1", "phase two", |t| {
        t["phase"] == "two" && state_kind(t) == "running"
    });
    let refused = lab.elm(&[os("cancel"), os("1")]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("non-recoverable"),
        "{}",
        stderr(&refused)
    );
    let out = lab.elm(&[os("cancel"), os("1"), os("--yes"), os("--json")]);
    assert_ok(&out);
    assert_eq!(state_kind(&task_of(&out)), "non_recoverable");
    assert!(
        !child.wait().unwrap().success(),
        "proceed finished despite the cancel"
    );
    assert!(lab.target.join("HAUL-ELM-NON-RECOVERABLE").exists());
    // Still held by the task: a plain push is refused, naming it.
    let push = lab.push(&lab.source.join("agents"), "x");
    assert!(!push.status.success() && stderr(&push).contains("haul-elm-task-1"));
    let again = lab.migrate("", "copy", &["--share", "//fileserver/new"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("FAIL  target not marked non-recoverable"));
    assert_ok(&lab.elm(&[os("revert"), os("1")]));
    assert!(!lab.target.join("HAUL-ELM-NON-RECOVERABLE").exists());
    assert!(
        !lab.target.join("layers").exists(),
        "revert left the copied layers"
    );
    let out = lab.migrate("", "copy", &["--share", "//fileserver/new", "--json"]);
    assert_ok(&out);
    let id = task_of(&out)["id"].as_str().unwrap().to_string();
    assert_ok(&lab.elm(&[os("proceed"), os(&id)]));
    assert_migrated(&lab.source, &lab.target);
}

/// What may be in flight and not yet journaled when a run is killed (see tests/resume.rs).
const WINDOW: u64 = 224 * MIB;

/// The target is a small tmpfs that fills during Phase One (another tenant's data lands on
/// it after the space check): the task shows "paused: target needs N more bytes", keeps
/// polling, and once the tmpfs is remounted larger continues by itself from the verified
/// chunks: the bytes it sent over the whole task stay within the chunks in flight of the
/// data, far below what sending the verified part again would cost.
#[test]
fn a_full_target_pauses_and_continues_once_expanded() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&tmp.path().join("disk"), "200m");
    let root = disk.path().join("target");
    let lab = Lab::new(0, "1M", Some(root.clone()));
    TreeBuilder::new(&lab.source, 21).file("layers/full-1.vhdx", (160 * MIB) as usize);
    let data = 160 * MIB;
    let args = lab.migrate_args("", "copy", &["--share", "//fs/t", "--bwlimit", "64M"]);
    let mut child = lab.spawn(&args, "migrate");
    lab.wait_for("1", "running", |t| state_kind(t) == "running");
    // Another tenant's 90 MiB land on the same file system: 160 MiB no longer fit.
    TreeBuilder::new(disk.path(), 3).file("other-tenant.bin", (90 * MIB) as usize);
    let paused = lab.wait_for("1", "paused", |t| state_kind(t) == "paused");
    let needed = paused["state"]["bytes_needed"].as_u64().unwrap();
    assert!(needed > 0, "{paused}");
    let text = paused["state_text"].as_str().unwrap();
    assert!(
        text.contains(&format!("paused: target needs {needed} more bytes")),
        "{paused}"
    );
    // Polling, not failing: still paused a moment later.
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        child.try_wait().unwrap().is_none(),
        "{}",
        lab.stderr_of("migrate")
    );
    let paused = lab.show("1");
    assert_eq!(state_kind(&paused), "paused");
    let sent_at_pause = paused["bytes_sent"].as_u64().unwrap();
    // What the target verified and kept (its partial data) before it filled.
    let kept = partial_bytes(&root);
    assert!(
        kept > 64 * MIB,
        "it paused before writing much: {kept} kept; {paused}"
    );
    disk.grow("512m");
    assert!(
        child.wait().unwrap().success(),
        "{}",
        lab.stderr_of("migrate")
    );
    let task = lab.show("1");
    assert_eq!(state_kind(&task), "awaiting_confirmation", "{task}");
    assert_same_tree(&lab.source.join("layers"), &root.join("layers"));
    // After the pause only what the target had not kept travels (plus chunks in flight):
    // sending the kept part again would cost `kept` more.
    let continued = task["bytes_sent"].as_u64().unwrap() - sent_at_pause;
    assert!(
        continued <= data - kept + 16 * MIB && continued + 32 * MIB < data,
        "sent {continued} bytes after the pause for {data} bytes, {kept} of them kept"
    );
    assert!(lab.stderr_of("migrate").contains("continuing"));
}

/// A migration killed in Phase One is continued by `haul elm resume` at chunk level: what
/// was verified before the kill is not sent again.
#[test]
fn a_killed_task_resumes_where_it_stopped() {
    let lab = Lab::new(0, "1M", None);
    TreeBuilder::new(&lab.source, 31).file("layers/big-1.vhdx", (400 * MIB) as usize);
    let data = 400 * MIB;
    let args = lab.migrate_args("", "copy", &["--share", "//fs/k"]);
    let mut child = lab.spawn(&args, "migrate");
    let seen = kill_when(&mut child, &lab.target, 300 * MIB);
    let killed = lab.show("1");
    let text = killed["state_text"].as_str().unwrap();
    assert!(text.contains("haul elm resume 1"), "{killed}");
    let sent_before = killed["bytes_sent"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let out = lab.elm(&[os("resume"), os("1"), os("--json")]);
    assert_ok(&out);
    let task = task_of(&out);
    assert_eq!(state_kind(&task), "awaiting_confirmation", "{task}");
    assert_same_tree(&lab.source.join("layers"), &lab.target.join("layers"));
    let resumed_sent = task["bytes_sent"].as_u64().unwrap() - sent_before;
    assert!(
        resumed_sent <= data - seen + WINDOW && resumed_sent < data,
        "the resume sent {resumed_sent} of {data} bytes although {seen} were on the target"
    );
    assert_ok(&lab.elm(&[os("proceed"), os("1")]));
    assert_migrated(&lab.source, &lab.target);
}

/// Every file below `dir` with its size and contents hash, and every directory.
fn tree_listing(dir: &Path) -> Vec<(PathBuf, u64, String)> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(PathBuf, u64, String)>) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let rel = path.strip_prefix(base).unwrap().to_path_buf();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                out.push((rel, 0, "dir".into()));
                walk(base, &path, out);
            } else {
                let hash = blake3::hash(&fs::read(&path).unwrap()).to_hex().to_string();
                out.push((rel, meta.len(), hash));
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}
