//! Chunk-level resume after kills and a full disk, driven through the real binary.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use haul_testing::{
    Haul, Tmpfs, TreeBuilder, assert_same_tree, assert_success, kill_when, partial_bytes,
    summary_of,
};

fn haul() -> Haul {
    Haul::new(env!("CARGO_BIN_EXE_haul"))
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

const MIB: u64 = 1 << 20;
/// What a killed run may have had in flight and not yet journaled: the partial journal's
/// checkpoint interval (64 MiB) plus the sender's and QUIC's buffers.
const WINDOW: u64 = 224 * MIB;

fn source(dir: &Path) -> u64 {
    let mut t = TreeBuilder::new(dir, 99);
    // A multi-GiB tree: two layer disks and some small files.
    t.file("layers/base.vhdx", (1800 * MIB) as usize);
    t.file("layers/app.vhdx", (300 * MIB + 77) as usize);
    for i in 0..50 {
        t.file(format!("small/f{i}"), 10_000 + i);
    }
    t.mtime("layers/base.vhdx", 1_600_000_000, 7);
    1800 * MIB + 300 * MIB + 77 + (0..50).map(|i| 10_000 + i as u64).sum::<u64>()
}

fn spawn_copy(cfg: &Path, src: &Path, dst: &Path) -> Child {
    haul()
        .command(cfg)
        .args([os("copy"), os("--json"), src.as_os_str(), dst.as_os_str()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn haul copy")
}

#[test]
fn copy_killed_three_times_resumes_from_verified_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst, cfg) = (
        tmp.path().join("src"),
        tmp.path().join("dst"),
        tmp.path().join("cfg"),
    );
    let total = source(&src);
    let mut seen = 0;
    for stop in [300 * MIB, 900 * MIB, 1500 * MIB] {
        let mut child = spawn_copy(&cfg, &src, &dst);
        seen = kill_when(&mut child, &dst, stop);
        assert!(
            dst.join(".haul/partial").exists(),
            "a killed copy keeps its partial data"
        );
    }
    let out = haul().run(
        &cfg,
        &[os("copy"), os("--json"), src.as_os_str(), dst.as_os_str()],
    );
    assert_success(&out);
    assert_same_tree(&src, &dst);
    let sent = summary_of(&out)["bytes_sent"].as_u64().unwrap();
    assert!(
        sent <= total - seen + WINDOW,
        "the final run sent {sent} bytes although {seen} of {total} were already on the target"
    );
    assert!(
        !dst.join(".haul").exists(),
        "a completed copy leaves no state behind"
    );
}

struct Remote {
    tmp: tempfile::TempDir,
}

impl Remote {
    fn new() -> Remote {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("root")).unwrap();
        haul_testing::cmd::write_secret(&tmp.path().join("token"), "resume-token");
        Remote { tmp }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
    fn serve(&self) -> haul_testing::Server {
        haul().serve(
            &self.path("root"),
            &self.path("server-cfg"),
            Some(&self.path("token")),
        )
    }
    fn push_args(&self, server: &haul_testing::Server, src: &Path) -> Vec<std::ffi::OsString> {
        vec![
            "push".into(),
            "--json".into(),
            src.into(),
            server.url("po1").into(),
            "--fingerprint".into(),
            server.fingerprint.clone().into(),
            "--token-file".into(),
            self.path("token").into(),
        ]
    }
    /// Starts a push of `src` to `server` in the background, its output discarded.
    fn spawn_push(&self, server: &haul_testing::Server, cfg: &Path, src: &Path) -> Child {
        haul()
            .command(cfg)
            .args(self.push_args(server, src))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }
    /// Runs a push of `src` to `server` to its end.
    fn push(&self, server: &haul_testing::Server, cfg: &Path, src: &Path) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_haul"))
            .env("HAUL_CONFIG_DIR", cfg)
            .args(self.push_args(server, src))
            .output()
            .unwrap()
    }
}

/// Waits for a push whose receiver was killed: it must fail, saying so.
fn assert_receiver_lost(push: Child) {
    let out = push.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "the sender reports the lost receiver"
    );
}

#[test]
fn push_resumes_after_the_sender_or_the_receiver_is_killed() {
    let remote = Remote::new();
    let src = remote.path("src");
    let total = source(&src);
    let root = remote.path("root");
    let client_cfg = remote.path("client-cfg");

    // Kill the sender.
    let server = remote.serve();
    let mut push = remote.spawn_push(&server, &client_cfg, &src);
    let seen_sender = kill_when(&mut push, &root, 500 * MIB);
    // The receiver notices and keeps the verified chunks; it goes on serving.
    std::thread::sleep(Duration::from_millis(300));

    // Kill the receiver while the next push runs.
    let push = remote.spawn_push(&server, &client_cfg, &src);
    let mut server = server;
    let deadline = Instant::now() + Duration::from_secs(120);
    while partial_bytes(&root) < 1200 * MIB {
        assert!(Instant::now() < deadline && server.is_running());
        std::thread::sleep(Duration::from_millis(5));
    }
    let seen_receiver = partial_bytes(&root);
    let _ = server.stop(); // SIGKILL
    assert_receiver_lost(push);
    assert!(seen_receiver > seen_sender);

    // A new receiver on the same root finishes the job from the verified chunks.
    let server = remote.serve();
    let out = remote.push(&server, &client_cfg, &src);
    assert_success(&out);
    assert_same_tree(&src, &root.join("po1"));
    let sent = summary_of(&out)["bytes_sent"].as_u64().unwrap();
    assert!(
        sent <= total - seen_receiver + WINDOW,
        "the last run sent {sent} bytes although {seen_receiver} of {total} were on the target"
    );
}

#[test]
fn a_full_disk_pauses_and_the_same_command_continues_after_expansion() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, cfg) = (tmp.path().join("src"), tmp.path().join("cfg"));
    let mut t = TreeBuilder::new(&src, 3);
    for name in ["a", "b", "c"] {
        t.file(format!("layers/{name}.vhdx"), (40 * MIB) as usize);
    }
    t.file("wphost.db", 12345);
    let data = 120 * MIB + 12345;
    let disk = Tmpfs::mount(&tmp.path().join("disk"), "64m");
    let dst = disk.path().join("po1");

    // --require-space refuses up front and writes nothing.
    let out = haul().run(
        &cfg,
        &[
            os("copy"),
            os("--require-space"),
            src.as_os_str(),
            dst.as_os_str(),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("free") && err.contains("expand"), "{err}");

    let out = haul().run(
        &cfg,
        &[os("copy"), os("--json"), src.as_os_str(), dst.as_os_str()],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("ran out of space") && err.contains("Expand the storage"),
        "{err}"
    );
    assert!(
        err.contains(&disk.path().display().to_string()),
        "names what filled up: {err}"
    );
    let first: serde_json::Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .find(|v: &serde_json::Value| v["event"] == "error")
        .expect("an error object");
    let first_sent = first["bytes_sent"].as_u64().unwrap();

    disk.grow("256m");
    let out = haul().run(
        &cfg,
        &[os("copy"), os("--json"), src.as_os_str(), dst.as_os_str()],
    );
    assert_success(&out);
    assert_same_tree(&src, &dst);
    let second_sent = summary_of(&out)["bytes_sent"].as_u64().unwrap();
    assert!(
        first_sent + second_sent <= data + 40 * MIB,
        "sent {first_sent} + {second_sent} bytes for {data} bytes of data"
    );
}

/// A re-run takes the chunks its journal verified for this same version of the source
/// without reading them again, which is what makes a resume cheap: "same version" is the size
/// and mtime and the sender's stamp (change time, inode, device). A source rewritten with its
/// size and mtime put back has another stamp, so the journaled chunks are compared before
/// reuse: the copy is the new version, never a mix of two. `--checksum` reads everything.
#[test]
fn a_resume_trusts_its_journal_only_for_the_same_source_version() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst, cfg) = (
        tmp.path().join("src"),
        tmp.path().join("dst"),
        tmp.path().join("cfg"),
    );
    let mut t = TreeBuilder::new(&src, 11);
    let file = t.file("disk.vhdx", (1200 * MIB) as usize);
    t.mtime("disk.vhdx", 1_650_000_000, 5);
    let mut child = spawn_copy(&cfg, &src, &dst);
    let seen = kill_when(&mut child, &dst, 700 * MIB);

    // Change the first MiB (journaled by now: light checkpoints come every 64 MiB) and put
    // the mtime back.
    let old: Vec<u8> = std::fs::read(&file).unwrap()[..MIB as usize].to_vec();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.write_all_at(&vec![0xA5; MIB as usize], 0).unwrap();
        let when = std::time::UNIX_EPOCH + Duration::new(1_650_000_000, 5);
        f.set_times(std::fs::FileTimes::new().set_modified(when))
            .unwrap();
    }
    let run = |extra: &[&str]| {
        let mut args = vec![os("copy"), os("--json")];
        args.extend(extra.iter().map(|a| os(a)));
        args.extend([src.as_os_str(), dst.as_os_str()]);
        let out = haul().run(&cfg, &args);
        assert_success(&out);
        summary_of(&out)
    };
    let resumed = run(&[]);
    // The unchanged journaled chunks are still reused (compared, not sent again) ...
    assert!(resumed["chunks_reused"].as_u64().unwrap() > 0, "{resumed}");
    let sent = resumed["bytes_sent"].as_u64().unwrap();
    assert!(
        sent <= 1200 * MIB - seen + WINDOW + MIB,
        "sent {sent} although {seen} were on the target: {resumed}"
    );
    // ... but the rewritten one is not taken as verified: the copy is the new version.
    let copied = std::fs::read(dst.join("disk.vhdx")).unwrap();
    assert_ne!(&copied[..MIB as usize], &old[..], "a mix of two versions");
    assert_same_tree(&src, &dst);

    // Reading everything finds nothing left to send.
    let checked = run(&["--checksum"]);
    assert_eq!(checked["bytes_sent"], 0, "{checked}");
    assert_same_tree(&src, &dst);
}

/// A copy killed with SIGKILL while it patches a file in place (the undo log complete, the
/// changed ranges being overwritten) leaves no torn file behind: the next run on that target,
/// even a dry run, puts the old version back byte for byte, mtime included, and a real run
/// then patches again.
#[test]
fn a_copy_killed_mid_patch_has_the_old_version_put_back() {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst, cfg) = (
        tmp.path().join("src"),
        tmp.path().join("dst"),
        tmp.path().join("cfg"),
    );
    let mut t = TreeBuilder::new(&src, 41);
    let disk = t.file("disk.vhdx", (256 * MIB) as usize);
    let out = haul().run(&cfg, &[os("copy"), src.as_os_str(), dst.as_os_str()]);
    assert_success(&out);
    let target = dst.join("disk.vhdx");
    let undo = dst.join(".haul/undo");
    // A quarter of the file changes (the most that is patched in place): 64 MiB to overwrite
    // and sync, a window a fast poll does not miss.
    let changed = 64 * MIB;
    let mut caught = false;
    for attempt in 0..3u8 {
        let old = std::fs::read(&target).unwrap();
        let old_mtime = std::fs::metadata(&target).unwrap().mtime();
        let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        f.write_all_at(&vec![0xC0 + attempt; changed as usize], 100 * MIB)
            .unwrap();
        drop(f);
        let mut child = spawn_copy(&cfg, &src, &dst);
        let deadline = Instant::now() + Duration::from_secs(120);
        // The first overwritten bytes show that the patch has begun (its undo log is then
        // complete and synced): kill right there.
        let probe = std::fs::File::open(&target).unwrap();
        let mut now = vec![0u8; 4096];
        let killed = loop {
            probe.read_exact_at(&mut now, 100 * MIB).unwrap();
            if now[..] != old[(100 * MIB) as usize..(100 * MIB) as usize + 4096] {
                child.kill().expect("kill -9");
                let _ = child.wait();
                break true;
            }
            if let Ok(Some(status)) = child.try_wait() {
                assert!(status.success(), "the copy failed: {status}");
                break false;
            }
            assert!(
                Instant::now() < deadline,
                "the copy never started its patch"
            );
            std::thread::sleep(Duration::from_micros(200));
        };
        let logged = std::fs::read_dir(&undo).map_or(0, |d| d.count()) > 0;
        if !killed || !logged {
            // The patch finished before the kill landed: finish the copy and try again.
            let out = haul().run(&cfg, &[os("copy"), src.as_os_str(), dst.as_os_str()]);
            assert_success(&out);
            assert_same_tree(&src, &dst);
            continue;
        }
        caught = true;
        // A dry run changes nothing on the target, but it does recover it.
        let out = haul().run(
            &cfg,
            &[
                os("copy"),
                os("--dry-run"),
                src.as_os_str(),
                dst.as_os_str(),
            ],
        );
        assert_success(&out);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("put back the old version"),
            "no recovery reported: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(std::fs::read(&target).unwrap() == old, "not the old bytes");
        assert_eq!(std::fs::metadata(&target).unwrap().mtime(), old_mtime);
        let logs = std::fs::read_dir(&undo).map_or(0, |d| d.count());
        assert_eq!(logs, 0, "the log stayed");
        let ino = std::fs::metadata(&target).unwrap().ino();
        let out = haul().run(&cfg, &[os("copy"), src.as_os_str(), dst.as_os_str()]);
        assert_success(&out);
        assert_same_tree(&src, &dst);
        assert_eq!(
            std::fs::metadata(&target).unwrap().ino(),
            ino,
            "not patched again"
        );
        break;
    }
    assert!(
        caught,
        "three patches all finished before the poll saw their undo log"
    );
}

/// Fresh small files are written under their final names (see haul-store's `staging`): a
/// receiver killed in the middle of a post office may leave the files it was writing, but
/// every one of them that is not exactly the source's bytes has an mtime that is not the
/// source's, so the next run's quick check replaces it and the copy ends identical.
#[test]
fn a_receiver_killed_among_small_files_leaves_nothing_a_rerun_would_trust() {
    use std::os::unix::fs::MetadataExt;
    let remote = Remote::new();
    let src = remote.path("src");
    let mut t = TreeBuilder::new(&src, 7);
    let (dirs, per_dir) = (100, 200);
    for d in 0..dirs {
        for f in 0..per_dir {
            let rel = format!("fd{d}/{f:08x}.000");
            t.file(&rel, 1000 + (d * per_dir + f) % 7000);
            t.mtime(&rel, 1_600_000_000 + i64::from(f as u32), 5);
        }
    }
    let root = remote.path("root");
    let client_cfg = remote.path("client-cfg");
    let copy = root.join("po1");
    let count = |dir: &Path| -> usize {
        (0..dirs)
            .map(|d| std::fs::read_dir(dir.join(format!("fd{d}"))).map_or(0, |r| r.count()))
            .sum()
    };

    let mut server = remote.serve();
    let push = remote.spawn_push(&server, &client_cfg, &src);
    let deadline = Instant::now() + Duration::from_secs(120);
    while count(&copy) < dirs * per_dir / 4 {
        assert!(
            Instant::now() < deadline && server.is_running(),
            "no progress to kill at"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = server.stop(); // SIGKILL, mid-tree
    assert_receiver_lost(push);

    // What the kill left: whatever is not the source's bytes, mode and size must not carry
    // the source's mtime (a re-run would otherwise skip it as unchanged).
    let (mut left, mut unfinished) = (0, 0);
    for d in 0..dirs {
        for f in 0..per_dir {
            let rel = format!("fd{d}/{f:08x}.000");
            let Ok(got) = std::fs::symlink_metadata(copy.join(&rel)) else {
                continue;
            };
            left += 1;
            let want = std::fs::metadata(src.join(&rel)).unwrap();
            let same = got.len() == want.len()
                && std::fs::read(copy.join(&rel)).unwrap()
                    == std::fs::read(src.join(&rel)).unwrap();
            if !same {
                unfinished += 1;
                assert_ne!(
                    (got.mtime(), got.mtime_nsec()),
                    (want.mtime(), want.mtime_nsec()),
                    "{rel}: left unfinished by the kill, yet with the source's mtime"
                );
            }
        }
    }
    assert!(left < dirs * per_dir, "the kill came after the last file");
    eprintln!("the kill left {left} files, {unfinished} of them unfinished");

    // A new receiver on the same root: the same command finishes, and the copy is exact.
    let server = remote.serve();
    let out = remote.push(&server, &client_cfg, &src);
    assert_success(&out);
    assert_same_tree(&src, &copy);
}
