//! `--delete` (mirror) and filters end to end with the real binary: extras go only after the
//! new content is in place; the receiver's state, renamed-aside copies and excluded entries are
//! kept; an unreadable source deletes nothing; `--max-delete` refuses; a dry run lists; a
//! killed run leaves every entry the target had.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Output;

use haul_testing::{Haul, TreeBuilder, assert_success, summary_of};

fn haul() -> Haul {
    Haul::new(env!("CARGO_BIN_EXE_haul"))
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn copy(cfg: &Path, extra: &[&str], src: &Path, dst: &Path) -> Output {
    let mut args = vec![os("copy"), os("--json")];
    args.extend(extra.iter().map(|a| os(a)));
    args.push(src.as_os_str());
    args.push(dst.as_os_str());
    haul().run(cfg, &args)
}

/// A source post office and a target that holds it plus extras of every kind.
fn mirror_setup(tmp: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let (src, dst, cfg) = (tmp.join("src"), tmp.join("dst"), tmp.join("cfg"));
    let mut t = TreeBuilder::new(&src, 5);
    t.file("wphost.db", 4000);
    t.file("ofuser/user1.db", 3000);
    t.file("offiles/fd0/blob1", 100);
    t.file("offiles/fd1/blob2", 100);
    t.dir("ofwork");
    assert_success(&copy(&cfg, &[], &src, &dst));
    let mut x = TreeBuilder::new(&dst, 6);
    x.file("stale.db", 10);
    x.file("offiles/fd0/deleted-mail", 10);
    x.file("olddir/deep/er/file", 10);
    x.dir("olddir/empty");
    x.symlink("offiles/fd1/link", "/etc/passwd");
    x.file("keep/notes.txt", 10);
    (src, dst, cfg)
}

#[test]
fn delete_removes_extras_and_keeps_state_aside_copies_and_excluded() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst, cfg) = mirror_setup(tmp.path());
    // A renamed-aside copy made by a full migration: ofuser.1.
    assert_success(&copy(&cfg, &["--rename-aside", "ofuser"], &src, &dst));
    assert!(dst.join("ofuser.1/user1.db").is_file());
    // haul copy keeps its state in DST/.haul only while unfinished: make one that stays.
    std::fs::create_dir_all(dst.join(".haul/keepme")).unwrap();

    // Dry run first: lists and removes nothing.
    let out = copy(
        &cfg,
        &["--delete", "--dry-run", "--exclude", "/keep/"],
        &src,
        &dst,
    );
    assert_success(&out);
    let summary = summary_of(&out);
    let listed: Vec<String> = summary["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    for want in [
        "stale.db",
        "offiles/fd0/deleted-mail",
        "olddir",
        "offiles/fd1/link",
    ] {
        assert!(listed.iter().any(|l| l == want), "{want} not in {listed:?}");
    }
    assert!(
        !listed
            .iter()
            .any(|l| l.starts_with("keep") || l.starts_with("ofuser"))
    );
    assert!(dst.join("stale.db").exists(), "a dry run deleted");

    let out = copy(&cfg, &["--delete", "--exclude", "/keep/"], &src, &dst);
    assert_success(&out);
    let summary = summary_of(&out);
    // stale.db, deleted-mail, link, and olddir with the four entries it holds.
    assert_eq!(summary["deleted_total"], 8, "{summary}");
    for gone in [
        "stale.db",
        "offiles/fd0/deleted-mail",
        "olddir",
        "offiles/fd1/link",
    ] {
        assert!(
            std::fs::symlink_metadata(dst.join(gone)).is_err(),
            "{gone} survived"
        );
    }
    for kept in [
        "wphost.db",
        "offiles/fd0/blob1",
        "ofwork",
        "keep/notes.txt",
        "ofuser.1/user1.db",
        ".haul/keepme",
    ] {
        assert!(dst.join(kept).exists(), "{kept} was deleted");
    }
    assert!(Path::new("/etc/passwd").exists());

    // --delete-excluded removes the excluded directory too.
    let out = copy(
        &cfg,
        &["--delete", "--delete-excluded", "--exclude", "/keep/"],
        &src,
        &dst,
    );
    assert_success(&out);
    assert!(!dst.join("keep").exists());
    assert!(dst.join("ofuser.1/user1.db").exists(), "aside copy deleted");
}

#[test]
fn max_delete_refuses_the_whole_deletion() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst, cfg) = mirror_setup(tmp.path());
    let out = copy(&cfg, &["--delete", "--max-delete", "3"], &src, &dst);
    assert!(!out.status.success(), "more than --max-delete must fail");
    let stderr_and_out = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr_and_out.contains("--max-delete"),
        "the error names the limit: {stderr_and_out}"
    );
    assert!(dst.join("stale.db").exists() && dst.join("olddir/deep/er/file").exists());
    // Within the limit it runs: the 8 extras of the previous test plus keep/ and its file.
    assert!(
        !copy(&cfg, &["--delete", "--max-delete", "9"], &src, &dst)
            .status
            .success()
    );
    assert_success(&copy(&cfg, &["--delete", "--max-delete", "10"], &src, &dst));
    assert!(!dst.join("stale.db").exists());
}

#[test]
fn an_unreadable_source_directory_deletes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst, cfg) = mirror_setup(tmp.path());
    // The copy runs as an unprivileged user (who owns both trees) and cannot read one source
    // directory.
    let status = std::process::Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(tmp.path())
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::set_permissions(
        src.join("offiles/fd1"),
        std::os::unix::fs::PermissionsExt::from_mode(0o000),
    )
    .unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_haul"))
        .env("HAUL_CONFIG_DIR", &cfg)
        .env("HAUL_CACHE_DIR", cfg.join("cache"))
        .args(["copy", "--json", "--delete"])
        .arg(&src)
        .arg(&dst)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "an incomplete source must fail --delete"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("nothing was deleted") || stderr.contains("nothing was deleted"),
        "says so: {stderr}{stdout}"
    );
    for kept in [
        "stale.db",
        "offiles/fd0/deleted-mail",
        "olddir/deep/er/file",
        "offiles/fd1/blob2",
    ] {
        assert!(
            std::fs::symlink_metadata(dst.join(kept)).is_ok(),
            "{kept} deleted"
        );
    }
}

#[test]
fn a_run_killed_before_its_deletion_leaves_everything_the_target_had() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst, cfg) = mirror_setup(tmp.path());
    // Enough new data that the copy is still sending when it is killed.
    let mut t = TreeBuilder::new(&src, 9);
    t.file("big/layer.vhdx", 64 << 20);
    let mut child = haul()
        .command(&cfg)
        .args(["copy", "--delete", "--bwlimit", "8M"])
        .arg(&src)
        .arg(&dst)
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    child.kill().unwrap();
    child.wait().unwrap();
    for kept in [
        "stale.db",
        "offiles/fd0/deleted-mail",
        "olddir/deep/er/file",
        "wphost.db",
    ] {
        assert!(
            std::fs::symlink_metadata(dst.join(kept)).is_ok(),
            "{kept} deleted by a killed run"
        );
    }
    // Run again to the end: now the mirror is complete.
    assert_success(&copy(&cfg, &["--delete"], &src, &dst));
    assert!(!dst.join("stale.db").exists());
    assert!(dst.join("big/layer.vhdx").is_file());
}

#[test]
fn push_with_delete_mirrors_the_remote_destination() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path();
    let mut t = TreeBuilder::new(&p.join("src"), 3);
    t.file("a", 10);
    t.file("d/b", 10);
    let root = p.join("root");
    let mut x = TreeBuilder::new(&root.join("po1"), 4);
    x.file("extra", 10);
    x.file("d/extra2", 10);
    haul_testing::cmd::write_secret(&p.join("token"), "tok\n");
    let server = haul().serve(&root, &p.join("scfg"), Some(&p.join("token")));
    let url = server.url("po1");
    let out = haul().run(
        &p.join("ccfg"),
        &[
            os("push"),
            os("--json"),
            os("--delete"),
            os("--fingerprint"),
            OsStr::new(&server.fingerprint),
            os("--token-file"),
            p.join("token").as_os_str(),
            p.join("src").as_os_str(),
            OsStr::new(&url),
        ],
    );
    assert_success(&out);
    assert_eq!(summary_of(&out)["deleted_total"], 2);
    assert!(!root.join("po1/extra").exists() && !root.join("po1/d/extra2").exists());
    assert!(root.join("po1/d/b").exists());
}

/// Filters, end to end: what each rule set copies.
#[test]
fn filters_select_what_is_copied() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let mut t = TreeBuilder::new(&src, 8);
    for f in [
        "wphost.db",
        "ngwguard.db",
        "ofuser/user1.db",
        "ofuser/cache/tmp.db",
        "offiles/fd0/a.blob",
        "offiles/fd0/b.tmp",
        "offiles/fd1/c.blob",
        "logs/2026.log",
        "cache/x",
    ] {
        t.file(f, 10);
    }
    let cases: &[(&[&str], &[&str])] = &[
        (&["--exclude", "*.tmp"], &["offiles/fd0/b.tmp"]),
        (
            &["--exclude", "cache/"],
            &["ofuser/cache/tmp.db", "cache/x"],
        ),
        (&["--exclude", "/cache/"], &["cache/x"]),
        (
            &["--include", "wphost.db", "--exclude", "*.db"],
            &["ngwguard.db", "ofuser/user1.db", "ofuser/cache/tmp.db"],
        ),
        (
            &["--exclude", "offiles/**/*.blob"],
            &["offiles/fd0/a.blob", "offiles/fd1/c.blob"],
        ),
    ];
    let all = [
        "wphost.db",
        "ngwguard.db",
        "ofuser/user1.db",
        "ofuser/cache/tmp.db",
        "offiles/fd0/a.blob",
        "offiles/fd0/b.tmp",
        "offiles/fd1/c.blob",
        "logs/2026.log",
        "cache/x",
    ];
    for (n, (args, left_out)) in cases.iter().enumerate() {
        let dst = tmp.path().join(format!("dst{n}"));
        let out = copy(&tmp.path().join("cfg"), args, &src, &dst);
        assert_success(&out);
        for f in all {
            assert_eq!(
                dst.join(f).exists(),
                !left_out.contains(&f),
                "{args:?}: {f}"
            );
        }
    }
    // --files-from: only the listed paths (a listed directory with its contents).
    let list = tmp.path().join("list");
    std::fs::write(&list, "wphost.db\n# a comment\noffiles/fd0\n").unwrap();
    let dst = tmp.path().join("dst-list");
    let out = copy(
        &tmp.path().join("cfg"),
        &["--files-from", list.to_str().unwrap()],
        &src,
        &dst,
    );
    assert_success(&out);
    for f in all {
        let want = f == "wphost.db" || f.starts_with("offiles/fd0/");
        assert_eq!(dst.join(f).exists(), want, "--files-from: {f}");
    }
}
