//! Re-runs move only what changed: quick check, changed chunks, adopting a copy made by
//! another tool, rename-aside for repeated full migrations, and dry runs.

use std::ffi::OsStr;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use haul_testing::{Haul, TreeBuilder, assert_same_tree, assert_success, summary_of};

fn haul() -> Haul {
    Haul::new(env!("CARGO_BIN_EXE_haul"))
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

const MIB: u64 = 1 << 20;

fn copy_json(cfg: &Path, extra: &[&str], src: &Path, dst: &Path) -> serde_json::Value {
    let mut args: Vec<&OsStr> = vec![os("copy"), os("--json")];
    args.extend(extra.iter().map(|a| os(a)));
    args.push(src.as_os_str());
    args.push(dst.as_os_str());
    let out = haul().run(cfg, &args);
    assert!(
        out.status.success(),
        "copy {extra:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    summary_of(&out)
}

/// Runs `haul CMD --json <p>/src quic://.../DEST` against `server` with the token in
/// `<p>/token`, asserts it succeeded and returns its summary.
fn remote_json(
    p: &Path,
    server: &haul_testing::Server,
    cmd: &str,
    dest: &str,
) -> serde_json::Value {
    let out = haul().run(
        &p.join("ccfg"),
        &[
            os(cmd),
            os("--json"),
            p.join("src").as_os_str(),
            os(&server.url(dest)),
            os("--fingerprint"),
            os(&server.fingerprint),
            os("--token-file"),
            p.join("token").as_os_str(),
        ],
    );
    assert!(
        out.status.success(),
        "{cmd} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    summary_of(&out)
}

/// Sets `path`'s modification time.
fn set_mtime(path: &Path, when: std::time::SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_times(std::fs::FileTimes::new().set_modified(when))
        .unwrap();
}

/// Overwrites `len` bytes at `offset` with new random-ish bytes and gives the file a new mtime.
fn scribble(path: &Path, offset: u64, len: usize, seed: u8) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    f.write_all_at(&data, offset).unwrap();
}

#[test]
fn a_no_change_rerun_of_twenty_thousand_files_sends_no_file_data() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst, cfg) = (
        tmp.path().join("src"),
        tmp.path().join("dst"),
        tmp.path().join("cfg"),
    );
    let mut t = TreeBuilder::new(&src, 8);
    // Every 100th file is empty: unchanged empty files are left alone like the others.
    for i in 0..20_000u32 {
        let len = if i % 100 == 0 {
            0
        } else {
            1 + (i as usize * 37) % 8192
        };
        t.file(format!("offiles/fd{:x}/blob{i}", i % 128), len);
    }
    let first = copy_json(&cfg, &[], &src, &dst);
    assert_eq!(first["files_transferred"], 20_000);
    let empty = dst.join("offiles/fd0/blob0");
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&empty).unwrap());
    let again = copy_json(&cfg, &[], &src, &dst);
    assert_eq!(again["bytes_sent"], 0, "{again}");
    assert_eq!(again["chunks_sent"], 0);
    assert_eq!(again["files_unchanged"], 20_000);
    let after = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&empty).unwrap());
    assert_eq!(inode, after, "an unchanged empty file was created again");
    assert_same_tree(&src, &dst);
}

#[test]
fn one_changed_mebibyte_in_a_gibibyte_file_sends_about_one_chunk() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst, cfg) = (
        tmp.path().join("src"),
        tmp.path().join("dst"),
        tmp.path().join("cfg"),
    );
    let mut t = TreeBuilder::new(&src, 4);
    let big = t.file("layers/disk.vhdx", (1024 * MIB) as usize);
    copy_json(&cfg, &[], &src, &dst);
    scribble(&big, 500 * MIB + 12_345, MIB as usize, 1);
    t.mtime("layers/disk.vhdx", 1_700_000_000, 1);
    let again = copy_json(&cfg, &[], &src, &dst);
    let sent = again["bytes_sent"].as_u64().unwrap();
    assert!(
        sent <= 2 * 4 * MIB,
        "sent {sent} bytes for a 1 MiB change: {again}"
    );
    assert!(again["chunks_sent"].as_u64().unwrap() <= 2);
    assert!(again["chunks_reused"].as_u64().unwrap() >= 254);
    assert_same_tree(&src, &dst);
}

#[test]
fn a_copy_made_with_cp_is_adopted_with_checksum() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst, cfg) = (
        tmp.path().join("src"),
        tmp.path().join("dst"),
        tmp.path().join("cfg"),
    );
    let mut t = TreeBuilder::new(&src, 5);
    t.file("ofuser/user.db", (20 * MIB) as usize);
    t.file("ofmsg/msg.db", (9 * MIB) as usize);
    for i in 0..200 {
        t.file(format!("offiles/fd{}/b{i}", i % 8), 3000 + i);
    }
    let ok = Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(&dst)
        .status()
        .unwrap();
    assert!(ok.success());
    // The source moves on in a few places after the copy, keeping sizes and mtimes (a
    // restore, or an application that preserves them): only --checksum can see it.
    let keep_mtime = |t: &mut TreeBuilder, rel: &str| {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(dst.join(rel)).unwrap();
        t.mtime(rel, m.mtime(), m.mtime_nsec() as u32);
    };
    scribble(&src.join("ofuser/user.db"), 13 * MIB, 1000, 9);
    scribble(&src.join("offiles/fd3/b3"), 10, 20, 9);
    keep_mtime(&mut t, "ofuser/user.db");
    keep_mtime(&mut t, "offiles/fd3/b3");
    let inode = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).unwrap().ino()
    };
    let unchanged_before = inode(&dst.join("ofmsg/msg.db"));
    let adopted = copy_json(&cfg, &["--checksum"], &src, &dst);
    assert_eq!(
        inode(&dst.join("ofmsg/msg.db")),
        unchanged_before,
        "an unchanged multi-chunk file is adopted in place, not rewritten"
    );
    assert_eq!(adopted["files_unchanged"], 200, "{adopted}");
    let sent = adopted["bytes_sent"].as_u64().unwrap();
    assert_eq!(adopted["chunks_sent"], 2, "{adopted}");
    assert!(sent <= 4 * MIB + 3203, "sent {sent}");
    assert_same_tree(&src, &dst);
}

#[test]
fn rename_aside_twice_keeps_old_copies_and_reuses_their_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst, cfg) = (
        tmp.path().join("po1"),
        tmp.path().join("new/po1"),
        tmp.path().join("cfg"),
    );
    let mut t = TreeBuilder::new(&src, 6);
    t.file("wphost.db", 300_000);
    t.file("ofuser/userabc.db", (12 * MIB) as usize);
    t.file("ofuser/userdef.db", 500_000);
    t.file("ofmsg/msg0.db", (6 * MIB) as usize);
    for i in 0..300 {
        t.file(format!("offiles/fd{:x}/blob{i}", i % 16), 5000 + i);
    }
    let data = copy_json(&cfg, &[], &src, &dst)["bytes_total"]
        .as_u64()
        .unwrap();

    let second = copy_json(&cfg, &["--rename-aside", "ofuser,ofmsg"], &src, &dst);
    assert_same_tree(&src.join("ofuser"), &dst.join("ofuser.1"));
    assert_same_tree(&src.join("ofmsg"), &dst.join("ofmsg.1"));
    for name in ["wphost.db", "ofuser", "ofmsg", "offiles"] {
        assert_same_tree(&src.join(name), &dst.join(name));
    }
    let renamed = second["renamed_aside"].as_array().unwrap();
    assert_eq!(renamed.len(), 2, "{second}");
    assert!(renamed.iter().any(|r| r["to"] == "ofuser.1"), "{second}");
    let sent = second["bytes_sent"].as_u64().unwrap();
    assert!(sent * 20 < data, "second run sent {sent} of {data} bytes");
    assert!(second["chunks_reused"].as_u64().unwrap() >= 5, "{second}");

    let third = copy_json(&cfg, &["--rename-aside", "ofuser,ofmsg"], &src, &dst);
    assert!(dst.join("ofuser.2/userabc.db").exists() && dst.join("ofuser.1/userabc.db").exists());
    assert!(third["bytes_sent"].as_u64().unwrap() * 20 < data);
    for name in ["wphost.db", "ofuser", "ofmsg", "offiles"] {
        assert_same_tree(&src.join(name), &dst.join(name));
    }
}

#[test]
fn a_dry_run_reports_what_would_move_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst, cfg) = (
        tmp.path().join("src"),
        tmp.path().join("dst"),
        tmp.path().join("cfg"),
    );
    let mut t = TreeBuilder::new(&src, 7);
    t.file("a.db", (10 * MIB) as usize);
    t.file("b.db", 1000);
    // Before anything exists on the target: everything would be sent, nothing is created.
    let out = haul().run(
        &cfg,
        &[os("plan"), os("--json"), src.as_os_str(), dst.as_os_str()],
    );
    assert_success(&out);
    let plan = summary_of(&out);
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["would_send_bytes"], 10 * MIB + 1000);
    assert!(plan["estimated_s"].is_null(), "no history yet: {plan}");
    assert!(!dst.exists(), "a dry run creates nothing");

    copy_json(&cfg, &[], &src, &dst);
    scribble(&src.join("a.db"), 5 * MIB, 10, 3);
    t.mtime("a.db", 1_750_000_000, 0);
    let before = std::fs::read(dst.join("a.db")).unwrap();
    let out = haul().run(
        &cfg,
        &[
            os("copy"),
            os("--dry-run"),
            os("--json"),
            src.as_os_str(),
            dst.as_os_str(),
        ],
    );
    let plan = summary_of(&out);
    assert_eq!(plan["would_send_chunks"], 1, "{plan}");
    assert_eq!(plan["files_unchanged"], 1);
    assert_eq!(
        std::fs::read(dst.join("a.db")).unwrap(),
        before,
        "a dry run changes nothing"
    );
    assert!(!dst.join(".haul").exists());
}

#[test]
fn a_plan_against_a_receiver_estimates_from_its_history() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path();
    std::fs::create_dir(p.join("root")).unwrap();
    haul_testing::cmd::write_secret(&p.join("token"), "t0k");
    let mut t = TreeBuilder::new(&p.join("src"), 9);
    t.file("layer.vhdx", (40 * MIB) as usize);
    let server = haul().serve(&p.join("root"), &p.join("scfg"), Some(&p.join("token")));
    let run = |cmd: &str, dest: &str| remote_json(p, &server, cmd, dest);
    assert!(run("plan", "x")["estimated_s"].is_null());
    run("push", "x");
    let plan = run("plan", "y");
    assert_eq!(plan["would_send_bytes"], 40 * MIB);
    assert!(plan["estimated_s"].as_f64().unwrap() > 0.0, "{plan}");
}

/// A receiver records the chunk hashes of what it installs (under `.haul/chunks`), so the
/// next push of a changed file reuses the unchanged chunks without re-hashing the old copy;
/// an old copy changed behind haul's back no longer matches its record and is hashed again.
/// Either way only the changed chunks cross and the result is the source, byte for byte.
#[test]
fn a_receivers_chunk_hash_cache_serves_changed_files_and_never_a_changed_target() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path();
    std::fs::create_dir(p.join("root")).unwrap();
    haul_testing::cmd::write_secret(&p.join("token"), "t0k");
    let mut t = TreeBuilder::new(&p.join("src"), 17);
    let layer = t.file("layer.vhdx", (48 * MIB) as usize + 999);
    let server = haul().serve(&p.join("root"), &p.join("scfg"), Some(&p.join("token")));
    let push = || remote_json(p, &server, "push", "x");
    push();
    let records = std::fs::read_dir(p.join("root/.haul/chunks"))
        .unwrap()
        .count();
    assert_eq!(records, 1, "one record for the one multi-chunk file");

    // A changed chunk in the source: it alone is sent, the rest comes from the old copy.
    scribble(&layer, 20 * MIB, 1000, 1);
    let s = push();
    assert_eq!(s["chunks_sent"], 1, "{s}");
    assert_same_tree(&p.join("src"), &p.join("root/x"));

    // The target's copy is changed behind haul's back (and its mtime put back): its record
    // no longer matches (the ctime moved), so its chunks are hashed again and the damaged one
    // is sent, although the source did not change.
    let target = p.join("root/x/layer.vhdx");
    let mtime = std::fs::metadata(&target).unwrap().modified().unwrap();
    scribble(&target, 3 * MIB, 10, 2);
    set_mtime(&target, mtime);
    // Same size and mtime: only a changed source makes haul look; touch the source's mtime.
    let src_mtime = std::fs::metadata(&layer).unwrap().modified().unwrap();
    set_mtime(&layer, src_mtime + std::time::Duration::from_secs(1));
    let s = push();
    assert_eq!(
        s["chunks_sent"], 1,
        "the damaged chunk, found by hashing: {s}"
    );
    assert_same_tree(&p.join("src"), &p.join("root/x"));
}

/// A changed file whose destination holds the old version and only a few changed chunks is
/// patched in place (same inode, under an undo log that is gone afterwards), not rewritten;
/// a destination with other hard links, or with most of it changed, gets a new file instead,
/// so the other link keeps the old content.
#[test]
fn a_few_changed_chunks_are_patched_in_place_but_never_through_a_hard_link() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path();
    std::fs::create_dir(p.join("root")).unwrap();
    haul_testing::cmd::write_secret(&p.join("token"), "t0k");
    let mut t = TreeBuilder::new(&p.join("src"), 23);
    let layer = t.file("layer.vhdx", (48 * MIB) as usize + 999);
    let server = haul().serve(&p.join("root"), &p.join("scfg"), Some(&p.join("token")));
    let push = || remote_json(p, &server, "push", "x");
    let target = p.join("root/x/layer.vhdx");
    let ino = |path: &Path| std::fs::metadata(path).unwrap().ino();
    let undo_logs = || {
        std::fs::read_dir(p.join("root/.haul/undo"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    push();
    let first = ino(&target);

    scribble(&layer, 20 * MIB, 1000, 1);
    let s = push();
    assert_eq!(s["chunks_sent"], 1, "{s}");
    assert_eq!(
        ino(&target),
        first,
        "a one-chunk change was not patched in place"
    );
    assert_same_tree(&p.join("src"), &p.join("root/x"));
    assert_eq!(undo_logs(), 0, "the undo log outlived the patch");

    // Again through the chunk-hash cache's other branch: a patched file's record is fresh.
    scribble(&layer, 40 * MIB, 1000, 2);
    let s = push();
    assert_eq!(s["chunks_sent"], 1, "{s}");
    assert_eq!(ino(&target), first);
    assert_same_tree(&p.join("src"), &p.join("root/x"));

    // A second name for the destination: patching would change it too.
    let other = p.join("root/keep.vhdx");
    std::fs::hard_link(&target, &other).unwrap();
    let before = std::fs::read(&other).unwrap();
    scribble(&layer, 30 * MIB, 1000, 3);
    let s = push();
    assert_eq!(s["chunks_sent"], 1, "{s}");
    assert_ne!(
        ino(&target),
        first,
        "a hard-linked destination was patched in place"
    );
    assert!(
        std::fs::read(&other).unwrap() == before,
        "the other link changed"
    );
    assert_same_tree(&p.join("src"), &p.join("root/x"));

    // Most of the file changed: a new file is cheaper than the undo log.
    let now = ino(&target);
    scribble(&layer, 0, (40 * MIB) as usize, 4);
    let s = push();
    assert!(s["chunks_sent"].as_u64().unwrap() >= 10, "{s}");
    assert_ne!(
        ino(&target),
        now,
        "a mostly changed file was patched in place"
    );
    assert_same_tree(&p.join("src"), &p.join("root/x"));
    assert_eq!(undo_logs(), 0);
}

/// A re-run asks about each directory's run of files as a whole (one quick check each way
/// instead of one message per file), and whatever differs in a run on either side sends it
/// back to the per-file check: a changed source file, a file deleted, chmodded, replaced by a
/// symlink or added on the target. Driven as a user would, by `copy` and by `push` over QUIC.
#[test]
fn quick_checks_of_whole_runs_skip_unchanged_dirs_and_miss_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path();
    std::fs::create_dir(p.join("root")).unwrap();
    haul_testing::cmd::write_secret(&p.join("token"), "t0k");
    let src = p.join("src");
    let mut t = TreeBuilder::new(&src, 23);
    // Eight directories of 60 files; in fd0 a subdirectory and a symlink split the run.
    for d in 0..8 {
        for i in 0..60 {
            t.file(format!("po/fd{d}/b{i:03}"), 100 + i * 7 + d * 3);
        }
    }
    t.file("po/fd0/b030.d/inner", 10);
    t.symlink("po/fd0/b040.lnk", "b001");
    let server = haul().serve(&p.join("root"), &p.join("scfg"), Some(&p.join("token")));
    let dst = p.join("dst");
    let cfg = p.join("cfg");
    let targets = [dst.clone(), p.join("root/x")];
    let both = |what: &str| {
        let copied = copy_json(&cfg, &[], &src, &dst);
        let pushed = remote_json(p, &server, "push", "x");
        for s in [&copied, &pushed] {
            assert_eq!(s["files_failed"], 0, "{what}: {s}");
        }
        [copied, pushed]
    };
    both("first copy");

    // Nothing changed: every file is found unchanged, the long runs as runs.
    for s in both("no change") {
        assert_eq!(s["files_unchanged"], 481, "{s}");
        assert_eq!(s["bytes_sent"], 0, "{s}");
        assert!(s["files_unchanged_by_run"].as_u64().unwrap() >= 400, "{s}");
    }
    for dst in &targets {
        assert_same_tree(&src, dst);
    }

    // One change in each of five directories, on one side or the other.
    let new_data = t.file("po/fd1/b007", 5000); // the source changes
    t.mtime("po/fd1/b007", 1_750_000_000, 5);
    for dst in &targets {
        std::fs::remove_file(dst.join("po/fd2/b059")).unwrap(); // the last of a run
        let chmod = dst.join("po/fd3/b000");
        std::fs::set_permissions(&chmod, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let swapped = dst.join("po/fd4/b033");
        std::fs::remove_file(&swapped).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &swapped).unwrap();
        // Same size and mtime as its neighbour's source, but a name the source lacks.
        std::fs::write(dst.join("po/fd5/b010x"), b"extra").unwrap();
    }
    for s in both("five changes") {
        // fd1's changed file is sent; fd2's deleted one too; the others only fixed up.
        assert_eq!(s["files_unchanged"], 481 - 3, "{s}");
        assert!(s["bytes_sent"].as_u64().unwrap() >= 5000, "{s}");
        assert!(s["files_unchanged_by_run"].as_u64().unwrap() >= 100, "{s}");
    }
    for dst in &targets {
        // The extra file stays: nothing is deleted without being asked.
        assert_eq!(std::fs::read(dst.join("po/fd5/b010x")).unwrap(), b"extra");
        std::fs::remove_file(dst.join("po/fd5/b010x")).unwrap();
        assert_eq!(
            std::fs::read(dst.join("po/fd1/b007")).unwrap(),
            std::fs::read(&new_data).unwrap()
        );
    }
    // Once it is gone, the next run finds everything unchanged (and puts back the mtime of
    // the directory it was removed from): the target is the source.
    for s in both("extra file removed") {
        assert_eq!(s["files_unchanged"], 481, "{s}");
        assert_eq!(s["bytes_sent"], 0, "{s}");
    }
    for dst in &targets {
        assert_same_tree(&src, dst);
    }
    server.stop();
}
