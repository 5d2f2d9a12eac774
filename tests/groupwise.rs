//! `haul groupwise ...` end to end with the real binary: the post office migration of the
//! article, on a sample backup area, into a local directory and into a `haul serve` on
//! loopback QUIC. Byte counts come from the `--json` summaries, never from the clock.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use haul_testing::cmd::write_secret;
use haul_testing::{Haul, Server, Tmpfs, assert_success};
use serde_json::Value;

fn haul() -> Haul {
    Haul::new(env!("CARGO_BIN_EXE_haul"))
}

/// A private config and state directory, and the commands run with them.
struct Gw {
    dir: tempfile::TempDir,
}

impl Gw {
    fn new() -> Gw {
        Gw {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = haul().command(&self.path("config"));
        cmd.env("HAUL_STATE_DIR", self.path("state"))
            .arg("groupwise")
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run haul")
    }

    /// Runs and asserts success.
    fn ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert_success(&out);
        out
    }

    /// The `"event": event` object of a `--json` run.
    fn json(&self, args: &[&str], event: &str) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.run(&all);
        find(&out, event)
    }
}

fn find(out: &Output, event: &str) -> Value {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["event"] == event)
        .unwrap_or_else(|| {
            panic!(
                "no {event} in the output ({}).\nstdout:\n{}\nstderr:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every regular file under `dir` (relative path -> size), `.haul` left out.
fn files(dir: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_name() == ".haul" {
                continue;
            }
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel, e.metadata().unwrap().len());
            }
        }
    }
    out
}

const TAGS: [&str; 3] = ["TUEMAY28", "WEDMAY29", "THUMAY30"];

/// A sample backup area of three backups, a profile `po` for it with `target`, and `check`.
fn setup(gw: &Gw, size: &str, target: &str, access: &[&str]) {
    let bk = gw.path("backups");
    let sample = gw.json(
        &[
            "sample",
            bk.to_str().unwrap(),
            "--size",
            size,
            "--seed",
            "5",
        ],
        "sample",
    );
    assert_eq!(sample["backups"].as_array().unwrap().len(), 3);
    let mut add = vec![
        "profile",
        "add",
        "po",
        "--backups",
        bk.to_str().unwrap(),
        "--target",
        target,
    ];
    add.extend_from_slice(access);
    gw.ok(&add);
}

fn backup(gw: &Gw, tag: &str) -> PathBuf {
    gw.path("backups").join(tag).join("po1")
}

/// The whole article against `target`, whose post office is `po` on this machine's disk.
fn walkthrough(gw: &Gw, po: &Path) {
    // The connectivity test: reachable, credentials, a test file made and removed, space.
    let check = gw.json(&["check", "po"], "check");
    assert_eq!(check["write_test"], true, "{check}");
    assert_eq!(check["next_step"], "premigrate");
    let newest_blobs: u64 = files(&backup(gw, TAGS[2]).join("offiles")).values().sum();
    assert_eq!(check["space"]["need_bytes"], newest_blobs, "{check}");
    assert!(check["space"]["free_bytes"].as_u64().unwrap() > newest_blobs);

    // Step 1 from the first backup: only offiles/ moves, all of it.
    let first = files(&backup(gw, TAGS[0]).join("offiles"));
    let first_bytes: u64 = first.values().sum();
    let s = gw.json(&["premigrate", "po", "--backup", TAGS[0]], "summary");
    assert_eq!(s["files_total"], first.len() as u64, "{s}");
    assert_eq!(s["bytes_sent"], first_bytes, "{s}");
    assert!(po.join("offiles").is_dir());
    assert!(
        !po.join("ofuser").exists(),
        "the pre-migration copies only BLOBs"
    );
    assert!(!po.join("wphost.db").exists());

    // Again from the newest: only the new BLOBs move.
    let newest = files(&backup(gw, TAGS[2]).join("offiles"));
    let new_bytes: u64 = newest
        .iter()
        .filter(|(p, _)| !first.contains_key(*p))
        .map(|(_, n)| n)
        .sum();
    assert!(new_bytes > 0 && new_bytes < newest_blobs / 4);
    let s = gw.json(&["premigrate", "po"], "summary");
    assert_eq!(s["backup"], TAGS[2]);
    assert_eq!(s["bytes_sent"], new_bytes, "only new BLOBs: {s}");
    assert_eq!(s["deleted_total"], 0, "a pre-migration never removes: {s}");

    // Step 3: everything; BLOBs gone from the backup are removed from offiles/.
    let lost = first.keys().filter(|p| !newest.contains_key(*p)).count() as u64;
    assert!(lost > 0);
    let full = files(&backup(gw, TAGS[2]));
    let s = gw.json(&["migrate", "po"], "summary");
    assert_eq!(s["deleted_total"], lost, "{s}");
    assert_eq!(s["rename_aside"].as_array().unwrap().len(), 0, "{s}");
    assert_eq!(files(po), full, "the target is the newest backup");

    // Again (the real final run after a trial): the other directories are renamed aside and
    // copied anew from the renamed copies' chunks: almost nothing crosses the network.
    let s = gw.json(&["migrate", "po"], "summary");
    let renamed: Vec<&str> = s["rename_aside"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        renamed,
        ["gwdms", "ofmsg", "ofuser", "ofviews", "ofwork"],
        "{s}"
    );
    let total = s["bytes_total"].as_u64().unwrap();
    assert!(s["bytes_sent"].as_u64().unwrap() * 100 < total, "{s}");
    assert!(s["bytes_reused"].as_u64().unwrap() > 0, "{s}");
    for dir in &renamed {
        assert!(po.join(format!("{dir}.1")).is_dir(), "{dir}.1");
    }
    assert_eq!(
        files(&po.join("ofuser.1")),
        files(&po.join("ofuser")),
        "the old copy stays as it was"
    );

    // Verify passes; then each kind of damage fails it, named.
    let v = gw.json(&["verify", "po"], "verify");
    assert_eq!(v["differences"].as_array().unwrap().len(), 0, "{v}");
    assert_eq!(v["files_checked"], full.len() as u64);
    assert_success(&gw.run(&["verify", "po"]));

    let victim = po.join("ofmsg/msg3.db");
    let original = fs::read(&victim).unwrap();
    let mut bad = original.clone();
    bad[0] ^= 0xff;
    fs::write(&victim, &bad).unwrap();
    let out = gw.run(&["verify", "po"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("different: ofmsg/msg3.db"),
        "{}",
        text(&out)
    );
    fs::write(&victim, &original).unwrap();
    assert_success(&gw.run(&["verify", "po"]));

    let extra = po.join("offiles/fd3/deadbeef.000");
    fs::write(&extra, b"not from the backup").unwrap();
    let out = gw.run(&["verify", "po"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("extra: offiles/fd3/deadbeef.000"),
        "{}",
        text(&out)
    );
    fs::remove_file(&extra).unwrap();

    let kept = gw.path("ofuser-kept");
    fs::rename(po.join("ofuser"), &kept).unwrap();
    fs::create_dir(po.join("ofuser")).unwrap();
    let out = gw.run(&["verify", "po"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("empty required directory: ofuser"),
        "{}",
        text(&out)
    );
    fs::remove_dir(po.join("ofuser")).unwrap();
    fs::rename(&kept, po.join("ofuser")).unwrap();
    assert_success(&gw.run(&["verify", "po"]));

    // Cleanup lists the duplicates, and deletes them only when told.
    let c = gw.json(&["cleanup", "po"], "cleanup");
    let listed: Vec<&str> = c["asides"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        ["gwdms.1", "ofmsg.1", "ofuser.1", "ofviews.1", "ofwork.1"]
    );
    assert!(c["bytes"].as_u64().unwrap() > 0);
    assert!(po.join("ofuser.1").exists(), "listing deletes nothing");
    let c = gw.json(&["cleanup", "po", "--delete"], "cleanup");
    assert_eq!(c["deleted"], true);
    for dir in &renamed {
        assert!(!po.join(format!("{dir}.1")).exists(), "{dir}.1 deleted");
    }
    assert_eq!(files(po), full, "cleanup touched only the duplicates");

    // The estimate prints its parts: the last trial, the backup's recorded time, the
    // post-migration time given, a buffer.
    let out = gw.ok(&["estimate", "po", "--post-time", "1.5h", "--buffer", "10"]);
    let shown = text(&out);
    for part in [
        "a) full migration",
        "b) post office backup",
        "c) post migration",
        "buffer",
        "d) TOTAL",
    ] {
        assert!(shown.contains(part), "{part}: {shown}");
    }
    let e = gw.json(
        &["estimate", "po", "--post-time", "1.5h", "--buffer", "10"],
        "estimate",
    );
    assert_eq!(e["projection"], false);
    assert_eq!(e["parts"][2]["seconds"], 5400.0);
    let sum: f64 = (0..3)
        .map(|i| e["parts"][i]["seconds"].as_f64().unwrap())
        .sum();
    assert!(
        (e["total_s"].as_f64().unwrap() - sum * 1.1).abs() < 1e-6,
        "{e}"
    );
    assert!(
        e["parts"][1]["seconds"].as_f64().unwrap() > 0.0,
        "the backup's own duration"
    );

    // The log tells the story.
    let out = gw.ok(&["log", "po"]);
    let log = text(&out);
    for line in [
        "profile created",
        "check passed",
        &format!("premigrate started: backup {}", TAGS[0]),
        &format!("premigrate started: backup {}", TAGS[2]),
        &format!("migrate started: backup {}", TAGS[2]),
        &format!("removed {lost} entries gone from the backup"),
        "renamed aside: ",
        "ofuser.1",
        "migrate finished in",
        "verify passed",
        "verify FAILED",
        "different: ofmsg/msg3.db",
        "cleanup deleted 5 renamed-aside duplicates",
    ] {
        assert!(log.contains(line), "the log lacks {line:?}:\n{log}");
    }

    // Post migration: the profile is pointed at the new place.
    gw.ok(&["profile", "set-target", "po", "/srv/groupwise/po1"]);
    let p = gw.json(&["profile", "show", "po"], "profile");
    assert_eq!(p["target"], "/srv/groupwise/po1");
    assert!(
        gw.ok(&["log", "po"])
            .stdout
            .ends_with(b"-> /srv/groupwise/po1\n")
    );
}

#[test]
fn a_post_office_migrates_into_a_local_directory() {
    let gw = Gw::new();
    let po = gw.path("new/po1");
    setup(&gw, "3M", po.to_str().unwrap(), &[]);
    walkthrough(&gw, &po);
}

fn serve(gw: &Gw, root: &Path) -> (Server, PathBuf) {
    fs::create_dir_all(root).unwrap();
    let token = gw.path("token");
    write_secret(&token, "groupwise-test-token");
    let server = haul().serve(root, &gw.path("serve-config"), Some(&token));
    (server, token)
}

#[test]
fn a_post_office_migrates_to_a_serving_host() {
    let gw = Gw::new();
    let root = gw.path("host");
    let (server, token) = serve(&gw, &root);
    let url = server.url("po1");
    setup(
        &gw,
        "3M",
        &url,
        &[
            "--fingerprint",
            &server.fingerprint,
            "--token-file",
            token.to_str().unwrap(),
        ],
    );
    walkthrough(&gw, &root.join("po1"));

    // Wrong credentials: check says so and fails.
    let wrong = gw.path("wrong-token");
    write_secret(&wrong, "not-the-token");
    gw.ok(&[
        "profile",
        "set-target",
        "po",
        &url,
        "--token-file",
        wrong.to_str().unwrap(),
    ]);
    let out = gw.run(&["check", "po", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let c = find(&out, "check");
    assert_eq!(c["credentials"], false, "{c}");
    assert!(
        c["problems"][0].as_str().unwrap().contains("credentials"),
        "{c}"
    );
}

#[test]
fn another_job_holding_the_target_keeps_the_migration_out() {
    let gw = Gw::new();
    let root = gw.path("host");
    let (server, token) = serve(&gw, &root);
    let url = server.url("po1");
    setup(
        &gw,
        "1M",
        &url,
        &[
            "--fingerprint",
            &server.fingerprint,
            "--token-file",
            token.to_str().unwrap(),
        ],
    );
    fs::create_dir_all(root.join("po1")).unwrap();
    let mut lease = haul()
        .command(&gw.path("config"))
        .args([
            "remote",
            "lease",
            &url,
            "--holder",
            "someone-else",
            "--purpose",
            "restore test",
        ])
        .args([
            "--fingerprint",
            &server.fingerprint,
            "--token-file",
            token.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(lease.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.contains("holding the lease"), "{line}");
    let out = gw.run(&["migrate", "po"]);
    let _ = lease.kill();
    let _ = lease.wait();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("someone-else"), "{}", text(&out));
    assert!(files(&root.join("po1")).is_empty(), "nothing was copied");
}

/// Bytes of file data the target holds: installed files plus verified partial data.
fn held_bytes(po: &Path) -> u64 {
    files(po).values().sum::<u64>() + haul_testing::partial_bytes(po.parent().unwrap())
}

#[test]
fn a_killed_migration_continues_without_resending_verified_chunks() {
    let gw = Gw::new();
    let root = gw.path("host");
    let (server, token) = serve(&gw, &root);
    setup(
        &gw,
        "48M",
        &server.url("po1"),
        &[
            "--fingerprint",
            &server.fingerprint,
            "--token-file",
            token.to_str().unwrap(),
        ],
    );
    let po = root.join("po1");
    let total: u64 = files(&backup(&gw, TAGS[2])).values().sum();
    let mut child = gw
        .command(&["migrate", "po", "--json"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while held_bytes(&po) < total * 2 / 5 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the migration ended before the kill"
        );
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    let _ = child.wait();
    let held = held_bytes(&po);
    assert!(held < total, "killed halfway: {held} of {total}");

    let s = gw.json(&["migrate", "po"], "summary");
    let sent = s["bytes_sent"].as_u64().unwrap();
    // What was verified before the kill is not sent again: at most the chunks in flight
    // (4 streams of 4 MiB) on top of what was missing.
    assert!(
        sent <= total - held + (16 << 20),
        "sent {sent} after {held} of {total} were held"
    );
    assert!(sent < total, "sent {sent} of {total}");
    assert_eq!(s["rename_aside"].as_array().unwrap().len(), 0, "{s}");
    assert_eq!(files(&po), files(&backup(&gw, TAGS[2])));
    assert_success(&gw.run(&["verify", "po"]));
    let log = text(&gw.ok(&["log", "po"]));
    assert!(
        log.contains("continuing the interrupted full migration"),
        "{log}"
    );
    assert!(log.contains("migrate finished"), "{log}");
    drop(server);
}

#[test]
fn a_target_too_small_is_refused_before_anything_moves() {
    let gw = Gw::new();
    let mount = gw.path("small");
    let disk = Tmpfs::mount(&mount, "2m");
    let po = mount.join("po1");
    setup(&gw, "6M", po.to_str().unwrap(), &[]);

    let out = gw.run(&["premigrate", "po"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("free but this step needs"), "{said}");
    assert!(said.contains("expand the storage"), "{said}");
    let out = gw.run(&[
        "migrate",
        "po",
        "--json",
        "--before",
        "touch should-not-run",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(files(&po).is_empty(), "nothing moved");
    assert!(!gw.path("should-not-run").exists());
    assert!(text(&gw.ok(&["log", "po"])).contains("migrate refused"));

    // The administrator expands the storage; a failing --before stops the migration first.
    disk.grow("64m");
    let out = gw.run(&[
        "migrate",
        "po",
        "--before",
        "echo the POA would not unload >&2; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("the POA would not unload"),
        "{}",
        text(&out)
    );
    assert!(files(&po).is_empty(), "nothing moved");

    let marker = gw.path("dr-poa-unloaded");
    let before = format!("touch {}", marker.display());
    gw.ok(&["migrate", "po", "--before", &before]);
    assert!(marker.exists());
    assert_eq!(files(&po), files(&backup(&gw, TAGS[2])));
    assert_success(&gw.run(&["verify", "po"]));
    drop(disk);
}

#[test]
fn help_speaks_the_articles_terms() {
    let gw = Gw::new();
    for (cmd, words) in [
        ("premigrate", "Step #1"),
        ("migrate", "Step #3"),
        ("verify", "ofuser/ and ofmsg/"),
        ("cleanup", "duplicate directories"),
        ("check", "Test the connection"),
        ("estimate", "Planning step 4"),
    ] {
        let out = gw.ok(&[cmd, "--help"]);
        let shown = String::from_utf8_lossy(&out.stdout).replace('\n', " ");
        let shown = shown.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(shown.contains(words), "{cmd}: {shown}");
    }
}
