//! `haul protect` end to end: two `haul serve` hosts on loopback, two management servers as
//! two state directories, and the server clock set with `--now`. A dataset's updates run on
//! schedule and make backups; preflight catches policy, setting and window problems; a
//! relationship migrates from server A to server B without a re-baseline (B's first update
//! sends only what changed); A goes on expiring its own backups by period and count and
//! never B's; fan-in pairs move together; backups of either server restore exactly; a host
//! that is down is reported by tick while the others go on.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Output;

use haul_testing::cmd::write_secret;
use haul_testing::{Haul, Server, TreeBuilder, assert_same_tree};
use serde_json::Value;

fn haul() -> Haul {
    Haul::new(env!("CARGO_BIN_EXE_haul"))
}

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
/// A time on the hourly grid (10:00 UTC, 1 January 1970): the hourly schedule's slots are
/// T0, T0 + 3600, ...
const T0: i64 = 36_000;
const HOUR: i64 = 3600;

/// A `haul serve` and the token a management server uses for it.
struct Host {
    server: Server,
    token: PathBuf,
}

impl Host {
    fn start(work: &Path, name: &str) -> Host {
        let root = work.join(format!("{name}-root"));
        std::fs::create_dir_all(&root).unwrap();
        let token = work.join(format!("{name}.token"));
        write_secret(&token, format!("{name}-protect-token\n"));
        let server = haul().serve(&root, &work.join(format!("{name}-cfg")), Some(&token));
        Host { server, token }
    }

    fn url(&self) -> String {
        format!("quic://{}", self.server.addr)
    }
}

/// A management server: its directory and a config directory for the client.
struct Pm {
    dir: PathBuf,
    cfg: PathBuf,
}

impl Pm {
    fn new(work: &Path, name: &str) -> Pm {
        Pm {
            dir: work.join(format!("pm-{name}")),
            cfg: work.join(format!("pm-{name}-cfg")),
        }
    }

    /// `haul protect --server DIR --now NOW --json ARGS...`.
    fn run_at(&self, now: i64, args: &[&str]) -> Output {
        let now = now.to_string();
        let mut all: Vec<&OsStr> = vec![
            OsStr::new("protect"),
            OsStr::new("--server"),
            self.dir.as_os_str(),
            OsStr::new("--now"),
            OsStr::new(&now),
            OsStr::new("--json"),
            OsStr::new("--connect-timeout"),
            OsStr::new("3s"),
        ];
        all.extend(args.iter().map(OsStr::new));
        haul().run(&self.cfg, &all)
    }

    /// Runs and asserts success; returns the JSON it printed.
    #[track_caller]
    fn ok(&self, now: i64, args: &[&str]) -> Value {
        let out = self.run_at(now, args);
        assert!(
            out.status.success(),
            "haul protect {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        json(&out)
    }

    /// Runs and asserts exit status 1; returns stdout's JSON (or Null) and stderr.
    #[track_caller]
    fn fails(&self, now: i64, args: &[&str]) -> (Value, String) {
        let out = self.run_at(now, args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "haul protect {args:?} should fail:\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (value, String::from_utf8_lossy(&out.stderr).into_owned())
    }

    fn add_host(&self, name: &str, host: &Host) {
        self.ok(
            T0,
            &[
                "host",
                "add",
                name,
                &host.url(),
                "--fingerprint",
                &host.server.fingerprint,
                "--token-file",
                host.token.to_str().unwrap(),
            ],
        );
    }

    fn policy(&self, name: &str, extra: &[&str]) {
        let mut args = vec!["policy", "add", name];
        args.extend(extra);
        self.ok(T0, &args);
    }

    fn status(&self, dataset: &str) -> String {
        self.ok(T0, &["dataset", "show", dataset])["status"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn tick(&self, now: i64) -> Value {
        self.ok(now, &["tick"])
    }

    fn backups(&self, rel: &str) -> Vec<Value> {
        self.ok(T0, &["backups", rel]).as_array().unwrap().clone()
    }

    fn discovered(&self, rel: &str) -> Value {
        let all = self.ok(T0, &["discover"]);
        all["relationships"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == rel)
            .unwrap_or_else(|| panic!("{rel} not discovered: {all}"))
            .clone()
    }
}

fn json(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_else(|| {
            panic!(
                "no output; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

/// The relationships a tick updated, by name, with the bytes each sent.
fn updated(tick: &Value) -> Vec<(String, u64)> {
    tick["updates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["error"].is_null())
        .map(|u| {
            (
                u["relationship"].as_str().unwrap().to_string(),
                u["report"]["summary"]["bytes_sent"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn expired_ids(tick: &Value) -> Vec<String> {
    tick["expired"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["error"].is_null())
        .map(|e| e["backup"]["id"].as_str().unwrap().to_string())
        .collect()
}

fn backup_of(update: &Value) -> String {
    update["backup"]["id"].as_str().unwrap().to_string()
}

/// A copy of `src` as it is now (`cp -a`), to compare a restore with later.
fn keep_copy(src: &Path, to: &Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn relationship_migrates_between_servers_without_rebaseline() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let (h1, h2) = (Host::start(work, "h1"), Host::start(work, "h2"));
    let (a, b) = (Pm::new(work, "a"), Pm::new(work, "b"));

    // Two sources: a mirror onto h1, a backup onto h2.
    let (src1, src2) = (work.join("src1"), work.join("src2"));
    let mut t1 = TreeBuilder::new(&src1, 1);
    t1.file("db/big.bin", 3 * MIB);
    for i in 0..20 {
        t1.file(format!("docs/f{i}.txt"), 8 * KIB);
    }
    let mut t2 = TreeBuilder::new(&src2, 2);
    t2.file("mail/store.bin", 512 * KIB);
    let src1_bytes = (3 * MIB + 20 * 8 * KIB) as u64;

    // Server A: hosts, an hourly policy keeping backups 2 hours but at least the newest 1.
    a.add_host("h1", &h1);
    a.add_host("h2", &h2);
    let hourly = [
        "--every",
        "1h",
        "--retention-period",
        "2h",
        "--retention-count",
        "1",
    ];
    a.policy("hourly", &hourly);
    a.ok(T0, &["dataset", "create", "ds-a", "--policy", "hourly"]);
    assert_eq!(a.status("ds-a"), "empty");
    let src1_s = src1.to_str().unwrap();
    let src2_s = src2.to_str().unwrap();
    a.ok(
        T0,
        &[
            "relationship",
            "create",
            "--dataset",
            "ds-a",
            "--source",
            src1_s,
            "--dest",
            "h1:vol1/po",
            "--kind",
            "mirror",
        ],
    );
    a.ok(
        T0,
        &[
            "relationship",
            "create",
            "--dataset",
            "ds-a",
            "--source",
            src2_s,
            "--dest",
            "h2:vol2/mail",
            "--kind",
            "backup",
        ],
    );
    assert_eq!(a.status("ds-a"), "warning: no backup history exists");

    // Tick at T0: both never updated, both due; everything is sent once.
    let tick = a.tick(T0);
    let mut done = updated(&tick);
    done.sort();
    assert_eq!(
        done,
        vec![
            ("h1:vol1/po".to_string(), src1_bytes),
            ("h2:vol2/mail".to_string(), 512 * KIB as u64)
        ]
    );
    assert_eq!(a.status("ds-a"), "ok");
    let a_first = a.backups("h1:vol1/po");
    assert_eq!(a_first.len(), 1);
    assert_eq!(a_first[0]["dataset"], "ds-a");
    // Within the hour: nothing is due.
    assert!(updated(&a.tick(T0 + 600)).is_empty());

    // One small file changes; the next slot updates both, sending only that file.
    std::fs::write(
        src1.join("docs/f3.txt"),
        b"changed before the second backup",
    )
    .unwrap();
    let tick = a.tick(T0 + HOUR);
    let done = updated(&tick);
    assert_eq!(done.len(), 2, "{tick}");
    let po = done.iter().find(|(n, _)| n == "h1:vol1/po").unwrap();
    // Only the changed file travels (32 bytes, or fewer if compressed).
    assert!(
        po.1 > 0 && po.1 <= 32,
        "only the changed file's bytes travel: {tick}"
    );
    let a_second = tick["updates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["relationship"] == "h1:vol1/po")
        .map(|u| backup_of(&u["report"]))
        .unwrap();
    let at_a_second = work.join("src1-at-a-second");
    keep_copy(&src1, &at_a_second);

    // Server B: fresh, the same hosts. It already sees A's relationships, as external.
    b.add_host("h1", &h1);
    b.add_host("h2", &h2);
    let seen = b.discovered("h1:vol1/po");
    assert_eq!(seen["ownership"], "external");
    assert_eq!(seen["owner"]["dataset"], "ds-a");
    assert_eq!(a.discovered("h1:vol1/po")["ownership"], "owned");

    // Preflight fails while B's policy differs, its settings differ, and the window holds
    // a scheduled update.
    b.policy(
        "hourly",
        &[
            "--every",
            "1h",
            "--retention-period",
            "3h",
            "--retention-count",
            "1",
        ],
    );
    b.ok(T0, &["server", "set", "max-fan-in", "4"]);
    let (diff, _) = b.fails(
        T0,
        &[
            "policy",
            "diff",
            "hourly",
            "--against",
            a.dir.to_str().unwrap(),
        ],
    );
    assert_eq!(
        diff["differences"][0]["field"],
        "retention period (seconds)"
    );
    let (diff, _) = b.fails(
        T0,
        &[
            "policy",
            "diff",
            "--settings",
            "--against",
            a.dir.to_str().unwrap(),
        ],
    );
    assert_eq!(diff["differences"][0]["field"], "max-fan-in");
    let window_with_slot = format!("{}..{}", T0 + 2 * HOUR - 60, T0 + 2 * HOUR + 60);
    let preflight = |window: &str| {
        a.run_at(
            T0 + HOUR,
            &[
                "preflight",
                "--from",
                a.dir.to_str().unwrap(),
                "--to",
                b.dir.to_str().unwrap(),
                "--relationship",
                "h1:vol1/po",
                "--window",
                window,
            ],
        )
    };
    let out = preflight(&window_with_slot);
    assert_eq!(out.status.code(), Some(1));
    let failed: Vec<String> = json(&out)["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["item"].as_str().unwrap().to_string())
        .collect();
    assert!(
        failed.iter().any(|i| i.starts_with("policy hourly")),
        "{failed:?}"
    );
    assert!(
        failed.iter().any(|i| i == "server settings identical"),
        "{failed:?}"
    );
    assert!(
        failed
            .iter()
            .any(|i| i.starts_with("no update scheduled on the old")),
        "{failed:?}"
    );
    // Fixed: the same policy, the same settings, a window between two slots.
    b.policy("hourly", &hourly);
    b.ok(T0, &["server", "set", "max-fan-in", "8"]);
    b.ok(
        T0,
        &[
            "policy",
            "diff",
            "hourly",
            "--against",
            a.dir.to_str().unwrap(),
        ],
    );
    let quiet_window = format!("{}..{}", T0 + HOUR + 600, T0 + HOUR + 1200);
    let out = preflight(&quiet_window);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(json(&out)["ok"], true);

    // Step 1 on A: relinquish. External on A; the dataset stays, with its backups.
    let moved = a.ok(T0 + HOUR, &["relinquish", "h1:vol1/po"]);
    let steps: Vec<&str> = moved["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(steps[0].starts_with("relinquished h1:vol1/po"), "{steps:?}");
    assert!(steps[1].starts_with("removed primary member"), "{steps:?}");
    assert!(
        steps[2].starts_with("removed secondary member"),
        "{steps:?}"
    );
    assert!(
        steps[3].starts_with("verified h1:vol1/po now shows as external"),
        "{steps:?}"
    );
    let seen = a.discovered("h1:vol1/po");
    assert_eq!(seen["ownership"], "external");
    assert!(seen["owner"].is_null());
    assert_eq!(a.status("ds-a"), "ok");
    // A may no longer update it.
    let (_, err) = a.fails(T0 + HOUR, &["update", "h1:vol1/po"]);
    assert!(err.contains("owns no relationship h1:vol1/po"), "{err}");

    // Step 2 on B: import into an empty dataset; warning until its first backup.
    b.ok(T0, &["dataset", "create", "ds-b", "--policy", "hourly"]);
    b.ok(T0 + HOUR, &["import", "h1:vol1/po", "--dataset", "ds-b"]);
    assert_eq!(b.status("ds-b"), "warning: no backup history exists");
    assert_eq!(b.discovered("h1:vol1/po")["ownership"], "owned");
    assert_eq!(a.discovered("h1:vol1/po")["ownership"], "external");

    // B's first update sends only what changed since A's last one: no re-baseline.
    std::fs::write(src1.join("docs/f7.txt"), b"changed after the migration").unwrap();
    let first_b = b.ok(T0 + HOUR + 900, &["update", "h1:vol1/po"]);
    let sent = first_b["summary"]["bytes_sent"].as_u64().unwrap();
    assert!(
        sent > 0 && sent <= 27,
        "only the changed file travels: {first_b}"
    );
    assert!(sent * 100 < src1_bytes);
    assert_eq!(b.status("ds-b"), "ok");
    let b_backup = backup_of(&first_b);
    assert_eq!(first_b["backup"]["dataset"], "ds-b");

    // A's tick before its backups pass the period expires nothing (count 1, but young).
    let tick = a.tick(T0 + HOUR + 1800);
    assert!(expired_ids(&tick).is_empty(), "{tick}");
    // Past the period: A expires its older backup of the migrated relationship and keeps
    // its newest (the count); B's backup is untouched.
    let tick = a.tick(T0 + 3 * HOUR + 1);
    let expired = expired_ids(&tick);
    assert!(
        expired.contains(&a_first[0]["id"].as_str().unwrap().to_string()),
        "{tick}"
    );
    assert!(!expired.contains(&a_second), "{tick}");
    assert!(!expired.contains(&b_backup), "{tick}");
    // The tick also updated A's other relationship (h2), never the migrated one.
    assert_eq!(
        updated(&tick)
            .iter()
            .map(|u| u.0.as_str())
            .collect::<Vec<_>>(),
        vec!["h2:vol2/mail"]
    );
    let on_host: Vec<String> = b
        .backups("h1:vol1/po")
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(on_host, vec![a_second.clone(), b_backup.clone()]);

    // Restores: A's backup from A, B's from B, both exact.
    let from_a = work.join("restore-a");
    let r = a.ok(
        T0,
        &[
            "restore",
            "h1:vol1/po",
            "--backup",
            &a_second,
            "--to",
            from_a.to_str().unwrap(),
        ],
    );
    assert_eq!(r["files_verified"], 21);
    assert_same_tree(&at_a_second, &from_a);
    let from_b = work.join("restore-b");
    b.ok(
        T0,
        &[
            "restore",
            "h1:vol1/po",
            "--backup",
            &b_backup,
            "--to",
            from_b.to_str().unwrap(),
        ],
    );
    assert_same_tree(&src1, &from_b);
    // B, which owns the relationship now, restores A's old backup too.
    let a_from_b = work.join("restore-a-from-b");
    b.ok(
        T0,
        &[
            "restore",
            "h1:vol1/po",
            "--backup",
            &a_second,
            "--to",
            a_from_b.to_str().unwrap(),
        ],
    );
    assert_same_tree(&at_a_second, &a_from_b);

    // With its retention count at 0, A expires its last backup of it too; B's stays.
    a.policy(
        "hourly",
        &[
            "--every",
            "1h",
            "--retention-period",
            "2h",
            "--retention-count",
            "0",
        ],
    );
    let tick = a.tick(T0 + 4 * HOUR);
    assert!(expired_ids(&tick).contains(&a_second), "{tick}");
    let on_host: Vec<String> = b
        .backups("h1:vol1/po")
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        on_host.contains(&b_backup) && !on_host.contains(&a_second),
        "{on_host:?}"
    );

    // Every state change is in A's audit log.
    let log: Vec<String> = a
        .ok(T0, &["log"])
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap().to_string())
        .collect();
    assert!(
        log.iter()
            .any(|l| l.starts_with("relationship h1:vol1/po relinquished")),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|l| l.starts_with(&format!("backup {a_second}"))),
        "{log:?}"
    );
}

#[test]
fn fan_in_relationships_move_together() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let h1 = Host::start(work, "h1");
    let (a, b) = (Pm::new(work, "a"), Pm::new(work, "b"));
    for pm in [&a, &b] {
        pm.add_host("h1", &h1);
        pm.policy(
            "daily",
            &[
                "--every",
                "1d",
                "--retention-period",
                "1d",
                "--retention-count",
                "0",
            ],
        );
    }
    a.ok(T0, &["dataset", "create", "vault", "--policy", "daily"]);
    let (sx, sy) = (work.join("sx"), work.join("sy"));
    TreeBuilder::new(&sx, 3).file("x.bin", 200 * KIB);
    TreeBuilder::new(&sy, 4).file("y.bin", 300 * KIB);
    for (src, dest) in [(&sx, "h1:vault/x"), (&sy, "h1:vault/y")] {
        a.ok(
            T0,
            &[
                "relationship",
                "create",
                "--dataset",
                "vault",
                "--source",
                src.to_str().unwrap(),
                "--dest",
                dest,
                "--kind",
                "backup",
            ],
        );
    }
    assert_eq!(a.discovered("h1:vault/x")["fan_in_with"][0], "h1:vault/y");
    assert_eq!(updated(&a.tick(T0)).len(), 2);

    // Alone, either half is refused, naming the other.
    let (_, err) = a.fails(T0, &["relinquish", "h1:vault/x"]);
    assert!(
        err.contains("h1:vault/y") && err.contains("fan in"),
        "{err}"
    );
    assert_eq!(a.discovered("h1:vault/x")["ownership"], "owned");
    a.ok(T0, &["relinquish", "h1:vault/x", "h1:vault/y"]);

    b.ok(T0, &["dataset", "create", "vault", "--policy", "daily"]);
    let (_, err) = b.fails(T0, &["import", "h1:vault/y", "--dataset", "vault"]);
    assert!(
        err.contains("h1:vault/x") && err.contains("fan in"),
        "{err}"
    );
    b.ok(
        T0,
        &["import", "h1:vault/x", "h1:vault/y", "--dataset", "vault"],
    );
    // Nothing changed: B's first updates send nothing at all.
    let tick = b.tick(T0 + 60);
    assert_eq!(
        updated(&tick),
        vec![("h1:vault/x".into(), 0), ("h1:vault/y".into(), 0)]
    );

    // A keeps its backups until they expire, then says its dataset can go.
    assert!(
        a.status("vault").starts_with("ok ("),
        "{}",
        a.status("vault")
    );
    let tick = a.tick(T0 + 2 * 86_400);
    assert_eq!(expired_ids(&tick).len(), 2, "{tick}");
    assert!(
        updated(&tick).is_empty(),
        "A no longer updates them: {tick}"
    );
    assert_eq!(a.status("vault"), "can be deleted");
    assert_eq!(b.backups("h1:vault/x").len(), 1, "B's backup stays");
    a.ok(T0, &["dataset", "delete", "vault"]);
}

#[test]
fn tick_reports_a_host_that_is_down_and_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let (h1, h2) = (Host::start(work, "h1"), Host::start(work, "h2"));
    let a = Pm::new(work, "a");
    a.add_host("h1", &h1);
    a.add_host("h2", &h2);
    // A throttled policy: 1 MiB/s.
    a.policy(
        "slow",
        &[
            "--every",
            "1h",
            "--retention-period",
            "1d",
            "--retention-count",
            "2",
            "--throttle",
            "1M",
        ],
    );
    a.ok(T0, &["dataset", "create", "ds", "--policy", "slow"]);
    let (s1, s2) = (work.join("s1"), work.join("s2"));
    let mut t = TreeBuilder::new(&s1, 5);
    for i in 0..3 {
        t.file(format!("part{i}.bin"), MIB);
    }
    TreeBuilder::new(&s2, 6).file("small.bin", 64 * KIB);
    for (src, dest) in [(&s1, "h1:v/one"), (&s2, "h2:v/two")] {
        a.ok(
            T0,
            &[
                "relationship",
                "create",
                "--dataset",
                "ds",
                "--source",
                src.to_str().unwrap(),
                "--dest",
                dest,
                "--kind",
                "mirror",
            ],
        );
    }
    // The throttle holds: 3 MiB at 1 MiB/s cannot take much less than 2 s (lower bound
    // only: how fast the machine is does not matter).
    let one = a.ok(T0, &["update", "h1:v/one"]);
    assert_eq!(one["throttle"], 1 << 20);
    assert_eq!(one["summary"]["bytes_sent"], 3 * MIB as u64);
    let elapsed = one["summary"]["elapsed_s"].as_f64().unwrap();
    assert!(elapsed >= 1.5, "3 MiB at 1 MiB/s took {elapsed} s");

    // host diagnose passes on h2 and fails on a wrong token.
    let diag = a.ok(T0, &["host", "diagnose", "h2"]);
    assert_eq!(diag["ok"], true, "{diag}");
    let wrong = work.join("wrong.token");
    write_secret(&wrong, "not-the-token\n");
    a.ok(
        T0,
        &[
            "host",
            "add",
            "h2-wrong",
            &h2.url(),
            "--fingerprint",
            &h2.server.fingerprint,
            "--token-file",
            wrong.to_str().unwrap(),
        ],
    );
    let (diag, _) = a.fails(T0, &["host", "diagnose", "h2-wrong"]);
    let token_check = diag["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["item"] == "h2-wrong: token")
        .cloned()
        .unwrap_or_else(|| panic!("{diag}"));
    assert_eq!(token_check["ok"], false);

    // A token confined to a sub-root with read scope only: it may look (discover) and read
    // (restore), never write the registry, and creating a relationship with it says so.
    let ro_root = work.join("h3-root");
    std::fs::create_dir_all(ro_root.join("vols")).unwrap();
    let (full, ro) = (work.join("h3.token"), work.join("h3-ro.token"));
    write_secret(&full, "h3-full-token\n");
    write_secret(&ro, "h3-read-only-token\n");
    let grant = format!("vols={},read", ro.display());
    let h3 = haul().serve_with(
        &ro_root,
        &work.join("h3-cfg"),
        &[
            "--token-file".into(),
            full.into(),
            "--grant".into(),
            grant.into(),
        ],
    );
    a.ok(
        T0,
        &[
            "host",
            "add",
            "h3ro",
            &format!("quic://{}", h3.addr),
            "--fingerprint",
            &h3.fingerprint,
            "--token-file",
            ro.to_str().unwrap(),
        ],
    );
    let (diag, _) = a.fails(T0, &["host", "diagnose", "h3ro"]);
    let scope: Vec<(String, bool)> = diag["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["item"].as_str().unwrap().contains("scope"))
        .map(|c| (c["item"].as_str().unwrap().to_string(), c["ok"] == true))
        .collect();
    assert_eq!(
        scope,
        vec![
            (
                "h3ro: scope: look (discover relationships)".to_string(),
                true
            ),
            ("h3ro: scope: read (restores)".to_string(), true),
            (
                "h3ro: scope: write (updates, backups, expiry)".to_string(),
                false
            ),
        ]
    );
    let (_, err) = a.fails(
        T0,
        &[
            "relationship",
            "create",
            "--dataset",
            "ds",
            "--source",
            s2.to_str().unwrap(),
            "--dest",
            "h3ro:vol/x",
            "--kind",
            "backup",
        ],
    );
    assert!(err.contains("write scope"), "{err}");
    assert!(!ro_root.join(".haul/registry").exists());
    drop(h3);

    // h1 goes down. The next slot's tick reports it and still updates h2.
    std::fs::write(s2.join("small.bin"), b"new mail").unwrap();
    let h1_root = work.join("h1-root");
    drop(h1);
    let out = a.run_at(T0 + HOUR, &["tick"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failed update makes tick exit 1"
    );
    let tick = json(&out);
    assert_eq!(tick["hosts_down"], serde_json::json!(["h1"]), "{tick}");
    let failed = tick["updates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["relationship"] == "h1:v/one")
        .unwrap()
        .clone();
    assert!(failed["error"].as_str().unwrap().contains("h1"), "{failed}");
    assert_eq!(updated(&tick), vec![("h2:v/two".to_string(), 8)]);
    assert_same_tree(&s2, &work.join("h2-root/v/two"));
    assert!(h1_root.join("v/one/part0.bin").exists());
    // The registry lives in the host's .haul, not among the user's files.
    assert!(!work.join("h2-root/v/.haul").exists());
    assert!(work.join("h2-root/.haul/registry").is_dir());
}
