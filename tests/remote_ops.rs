//! `haul remote ...`, `haul snapshot create`, `haul push` and `haul pull` against a real
//! `haul serve` over loopback QUIC: every remote operation does what it says; none reaches
//! outside the root or the token's grant (`..`, `.haul`, symlinks); read and write scopes
//! hold; and a lease keeps other jobs out of a tree until its holder releases it or dies and
//! it expires.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use haul_testing::{Haul, Server, TreeBuilder, assert_same_tree, assert_success};
use serde_json::{Value, json};

fn haul() -> Haul {
    Haul::new(env!("CARGO_BIN_EXE_haul"))
}

/// How long one command may run before the test gives up on it: a hang fails the test
/// instead of stalling the whole run.
const LIMIT: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------------
// Running commands

fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// Runs `cmd` to its end (feeding it `stdin`, if any) within [`LIMIT`].
fn run(mut cmd: Command, stdin: Option<&[u8]>) -> Output {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let shown = format!(
        "{} {:?}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args().collect::<Vec<_>>()
    );
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {shown}: {e}"));
    if let Some(bytes) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        let bytes = bytes.to_vec();
        // Dropping the pipe at the end closes it: the end of the input.
        std::thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        });
    }
    let out = drain(child.stdout.take().expect("piped stdout"));
    let err = drain(child.stderr.take().expect("piped stderr"));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for haul") {
            break status;
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            let err = err.join().unwrap_or_default();
            panic!(
                "{shown} did not finish within {LIMIT:?}; stderr: {}",
                String::from_utf8_lossy(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts that `out` is a refusal: exit status 1 and every one of `needles` in what it
/// printed on stderr. Returns that stderr.
#[track_caller]
fn assert_refused(out: &Output, needles: &[&str]) -> String {
    let err = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected a refusal (exit 1), got {}; stdout: {}; stderr: {err}",
        out.status,
        stdout(out)
    );
    for needle in needles {
        assert!(err.contains(needle), "{needle:?} not in stderr: {err}");
    }
    err
}

// ---------------------------------------------------------------------------------------------
// A host and its clients

/// A temporary directory with a root to serve, config directories and token files.
struct Env {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    root: PathBuf,
    server_cfg: PathBuf,
    client_cfg: PathBuf,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        fs::create_dir(dir.join("root")).unwrap();
        Env {
            root: dir.join("root"),
            server_cfg: dir.join("server-cfg"),
            client_cfg: dir.join("client-cfg"),
            dir,
            _tmp: tmp,
        }
    }

    /// A token file (mode 0600) outside the root holding a secret of its own.
    fn token(&self, name: &str) -> PathBuf {
        let path = self.dir.join(format!("{name}.token"));
        fs::write(&path, format!("secret-for-{name}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    /// `haul serve` with `token` for the whole root.
    fn serve(&self, token: &Path) -> Server {
        haul().serve(&self.root, &self.server_cfg, Some(token))
    }

    /// `haul serve` with only `--grant SPEC` tokens (no token for the whole root).
    fn serve_grants(&self, grants: &[String]) -> Server {
        let mut extra: Vec<OsString> = Vec::new();
        for grant in grants {
            extra.push("--grant".into());
            extra.push(grant.into());
        }
        haul().serve_with(&self.root, &self.server_cfg, &extra)
    }

    fn client<'a>(&'a self, server: &'a Server, token: &Path) -> Client<'a> {
        Client {
            env: self,
            server,
            token: token.to_path_buf(),
        }
    }
}

/// "SUBDIR=FILE[,scope]" for `--grant`.
fn grant(subdir: &str, token: &Path, scope: &str) -> String {
    format!("{subdir}={}{scope}", token.display())
}

/// One token's view of a server.
struct Client<'a> {
    env: &'a Env,
    server: &'a Server,
    token: PathBuf,
}

impl Client<'_> {
    /// A command for `haul ARGS... --fingerprint FP --token-file TOKEN`.
    fn command(&self, args: &[&OsStr]) -> Command {
        let mut cmd = haul().command(&self.env.client_cfg);
        cmd.args(args)
            .arg("--fingerprint")
            .arg(&self.server.fingerprint)
            .arg("--token-file")
            .arg(&self.token);
        cmd
    }

    fn remote_command(&self, op: &str, path: &str, extra: &[&str]) -> Command {
        let url = self.server.url(path);
        let mut args: Vec<&OsStr> = vec!["remote".as_ref(), op.as_ref(), url.as_ref()];
        args.extend(extra.iter().map(|a| OsStr::new(*a)));
        self.command(&args)
    }

    /// `haul remote OP quic://ADDR/PATH EXTRA...`.
    fn remote(&self, op: &str, path: &str, extra: &[&str]) -> Output {
        run(self.remote_command(op, path, extra), None)
    }

    /// Like [`remote`](Self::remote), with `input` on stdin.
    fn remote_stdin(&self, op: &str, path: &str, extra: &[&str], input: &[u8]) -> Output {
        run(self.remote_command(op, path, extra), Some(input))
    }

    /// `haul remote OP ... --json`, which must succeed; its answer.
    #[track_caller]
    fn json(&self, op: &str, path: &str, extra: &[&str]) -> Value {
        let mut args = extra.to_vec();
        args.push("--json");
        let out = self.remote(op, path, &args);
        assert_success(&out);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{op} --json printed no JSON ({e}): {}; stderr: {}",
                stdout(&out),
                stderr(&out)
            )
        })
    }

    /// `haul push SRC quic://ADDR/DEST EXTRA...`.
    fn push(&self, src: &Path, dest: &str, extra: &[&str]) -> Output {
        let url = self.server.url(dest);
        let mut args: Vec<&OsStr> = vec!["push".as_ref(), src.as_os_str(), url.as_ref()];
        args.extend(extra.iter().map(|a| OsStr::new(*a)));
        run(self.command(&args), None)
    }

    /// `haul pull quic://ADDR/SRC DEST`.
    fn pull(&self, src: &str, dest: &Path) -> Output {
        let url = self.server.url(src);
        run(
            self.command(&["pull".as_ref(), url.as_ref(), dest.as_os_str()]),
            None,
        )
    }

    /// `haul snapshot create quic://ADDR/PATH`.
    fn snapshot_create(&self, path: &str) -> Output {
        let url = self.server.url(path);
        run(
            self.command(&["snapshot".as_ref(), "create".as_ref(), url.as_ref()]),
            None,
        )
    }

    /// The host's snapshots under the grant (`haul snapshot list --json`).
    fn snapshots(&self) -> Value {
        let url = self.server.url("");
        let out = run(
            self.command(&[
                "snapshot".as_ref(),
                "list".as_ref(),
                url.as_ref(),
                "--json".as_ref(),
            ]),
            None,
        );
        assert_success(&out);
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The leases under the grant (`haul remote leases --json`).
    fn leases(&self) -> Value {
        self.json("leases", "", &[])
    }

    fn lease_command(&self, path: &str, holder: &str, purpose: &str, ttl: &str) -> Command {
        self.remote_command(
            "lease",
            path,
            &["--holder", holder, "--purpose", purpose, "--ttl", ttl],
        )
    }

    /// `haul remote lease` run to its end, for a lease that must be refused. Should it be
    /// granted after all, it is stopped (SIGTERM, which releases it) and its exit status
    /// (then a success) returned for the caller's assertion to reject.
    fn lease_refused(&self, path: &str, holder: &str, purpose: &str) -> Output {
        let mut lease = LeaseHolder::spawn(self.lease_command(path, holder, purpose, "2s"));
        let mut said = String::new();
        while let Ok(line) = lease.lines.recv_timeout(LIMIT) {
            said.push_str(&line);
            said.push('\n');
            if line.contains("holding") {
                lease.signal(rustix::process::Signal::TERM);
            }
        }
        let status = lease.wait();
        Output {
            status,
            stdout: said.into_bytes(),
            stderr: lease.stderr().into_bytes(),
        }
    }

    /// `haul remote lease` started in the background, holding until stopped.
    fn lease(&self, path: &str, holder: &str, purpose: &str, ttl: &str) -> LeaseHolder {
        LeaseHolder::spawn(self.lease_command(path, holder, purpose, ttl))
    }
}

/// A `haul remote lease` running in the background.
struct LeaseHolder {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

impl LeaseHolder {
    fn spawn(mut cmd: Command) -> LeaseHolder {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start haul remote lease");
        let out = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Some(drain(child.stderr.take().expect("piped stderr")));
        LeaseHolder {
            child,
            lines,
            stderr,
        }
    }

    /// What it wrote to stderr (once it has exited).
    fn stderr(&mut self) -> String {
        let err = self
            .stderr
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default();
        String::from_utf8_lossy(&err).into_owned()
    }

    /// Waits for the "holding the lease" line; returns every line printed up to it.
    #[track_caller]
    fn wait_holding(&mut self) -> Vec<String> {
        let mut seen = Vec::new();
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let holding = line.contains("holding");
                    seen.push(line);
                    if holding {
                        return seen;
                    }
                }
                Err(e) => {
                    let _ = self.child.kill();
                    let status = self.child.wait();
                    panic!(
                        "haul remote lease never said it holds the lease ({e}; {status:?}); \
                         stdout: {seen:?}; stderr: {}",
                        self.stderr()
                    );
                }
            }
        }
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("a pid");
        rustix::process::kill_process(pid, signal).expect("signal haul remote lease");
    }

    /// Waits for it to exit, within [`LIMIT`].
    fn wait(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            if start.elapsed() > LIMIT {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "haul remote lease did not exit within {LIMIT:?}; stderr: {}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL: the holder dies without releasing anything.
    fn kill(&mut self) {
        self.signal(rustix::process::Signal::KILL);
        self.wait();
    }

    /// SIGTERM: the holder releases its lease and exits; returns its exit status.
    fn terminate(&mut self) -> ExitStatus {
        self.signal(rustix::process::Signal::TERM);
        self.wait()
    }
}

impl Drop for LeaseHolder {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Looking at trees locally

/// Everything under `dir`, never following a symlink: each entry's kind, mode and contents
/// (a file's BLAKE3, a link's target). A top-level `.haul` is left out.
fn state(dir: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(dir: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for name in names {
            if rel.as_os_str().is_empty() && name == ".haul" {
                continue;
            }
            let (path, rel) = (dir.join(&name), rel.join(&name));
            let meta = fs::symlink_metadata(&path).unwrap();
            let mode = meta.mode() & 0o7777;
            let what = if meta.file_type().is_symlink() {
                format!("symlink -> {}", fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                walk(&path, &rel, out);
                format!("dir {mode:o}")
            } else {
                let hash = blake3::hash(&fs::read(&path).unwrap());
                format!("file {mode:o} {} {hash}", meta.len())
            };
            out.insert(rel, what);
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, Path::new(""), &mut out);
    out
}

/// `HASH  PATH` for every regular file under `dir`, as `b3sum` prints it for plain names,
/// sorted.
fn expected_manifest(dir: &Path) -> Vec<String> {
    let mut lines: Vec<String> = state(dir)
        .keys()
        .filter(|rel| {
            fs::symlink_metadata(dir.join(rel))
                .unwrap()
                .file_type()
                .is_file()
        })
        .map(|rel| {
            let hash = blake3::hash(&fs::read(dir.join(rel)).unwrap());
            format!("{}  {}", hash.to_hex(), rel.display())
        })
        .collect();
    lines.sort();
    lines
}

fn sorted_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

/// The names of a `ls --json` answer.
fn names(ls: &Value) -> Vec<String> {
    ls.as_array()
        .unwrap_or_else(|| panic!("not a listing: {ls}"))
        .iter()
        .map(|item| item["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Whether `b3sum` is installed (it checks our manifests independently when it is).
fn have_b3sum() -> bool {
    Command::new("b3sum")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `b3sum --check` of `manifest` in `dir`; asserts it passes.
#[track_caller]
fn assert_b3sum_checks(dir: &Path, manifest: &[u8]) {
    let mut cmd = Command::new("b3sum");
    cmd.arg("--check").current_dir(dir);
    let out = run(cmd, Some(manifest));
    assert!(
        out.status.success(),
        "b3sum --check rejects the manifest:\n{}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(manifest),
        stdout(&out),
        stderr(&out)
    );
}

/// Lines of the server's log about remote operation `op` on `paths` ("/a" or "/a -> /b").
fn log_lines<'a>(log: &'a str, op_and_paths: &str) -> Vec<&'a str> {
    let needle = format!(": {op_and_paths}");
    log.lines()
        .filter(|l| {
            l.find(&needle).is_some_and(|at| {
                let rest = &l[at + needle.len()..];
                rest.is_empty() || rest.starts_with(' ')
            })
        })
        .collect()
}

/// Asserts the server logged `op_and_paths` as done (`refused == false`) or refused.
#[track_caller]
fn assert_logged(log: &str, op_and_paths: &str, refused: bool) {
    let lines = log_lines(log, op_and_paths);
    let found = lines
        .iter()
        .any(|l| l.contains(" refused: ") == refused && l.starts_with("haul serve: "));
    assert!(
        found,
        "no {} log line for {op_and_paths:?} (found {lines:?}); log:\n{log}",
        if refused { "refusal" } else { "success" }
    );
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

// ---------------------------------------------------------------------------------------------
// 1. Each operation works

#[test]
fn df_reports_the_file_system_holding_the_root() {
    let env = Env::new();
    let token = env.token("root");
    let server = env.serve(&token);
    let c = env.client(&server, &token);

    let df = c.json("df", "", &[]);
    let local = rustix::fs::statvfs(&env.root).unwrap();
    let unit = if local.f_frsize == 0 {
        local.f_bsize
    } else {
        local.f_frsize
    };
    let total = df["total_bytes"].as_u64().unwrap();
    let free = df["free_bytes"].as_u64().unwrap();
    assert_eq!(total, local.f_blocks * unit, "{df}");
    assert!(free > 0 && free <= total, "{df}");
    // Others write to this disk meanwhile: the free space only has to be about the same.
    let slack = (total / 20).max(1 << 30);
    assert!(
        free.abs_diff(local.f_bavail * unit) < slack,
        "{df} vs {} free locally",
        local.f_bavail * unit
    );
    let (inodes, free_inodes) = (
        df["total_inodes"].as_u64().unwrap(),
        df["free_inodes"].as_u64().unwrap(),
    );
    assert_eq!(inodes, local.f_files, "{df}");
    assert!(free_inodes <= inodes, "{df}");

    let out = c.remote("df", "", &[]);
    assert_success(&out);
    let text = stdout(&out);
    assert!(
        text.contains(" free of ") && text.contains("inodes free"),
        "{text}"
    );
}

#[test]
fn ls_stat_and_du_describe_the_tree_and_never_show_the_state_directory() {
    let env = Env::new();
    let token = env.token("root");
    let server = env.serve(&token);
    let c = env.client(&server, &token);
    assert!(
        env.root.join(".haul").is_dir(),
        "haul serve keeps its state in the root"
    );

    // Nothing but `.haul` in the root: it is empty as far as a client can tell.
    let top = c.json("stat", "", &[]);
    assert_eq!(top["kind"], "dir", "{top}");
    assert_eq!(top["empty"], true, "{top}");
    assert_eq!(c.json("ls", "", &[]), json!([]));
    let du = c.json("du", "", &[]);
    assert_eq!(
        (&du["files"], &du["dirs"], &du["bytes"]),
        (&json!(0), &json!(1), &json!(0)),
        "{du}"
    );

    let mut t = TreeBuilder::new(&env.root.join("po1"), 3);
    t.file("wphost.db", 1000);
    t.file("ofuser/user1.db", 20_000);
    t.dir("ofwork");
    t.symlink("current", "ofuser/user1.db");
    // A push leaves more state under `.haul`; none of it is ever shown.
    let mut src = TreeBuilder::new(&env.dir.join("src"), 4);
    src.file("a", 70_000);
    src.file("d/b", 10);
    assert_success(&c.push(&env.dir.join("src"), "po2", &[]));

    let top = c.json("ls", "", &[]);
    assert_eq!(names(&top), ["po1", "po2"], "{top}");
    let ls = c.json("ls", "po1", &[]);
    assert_eq!(
        names(&ls),
        ["current", "ofuser", "ofwork", "wphost.db"],
        "{ls}"
    );
    let kinds: Vec<&str> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["symlink", "dir", "dir", "file"], "{ls}");
    assert_eq!(ls[3]["size"], 1000, "{ls}");
    assert_eq!(ls[0]["size"], "ofuser/user1.db".len(), "{ls}");
    let out = c.remote("ls", "po1", &[]);
    assert_success(&out);
    let text = stdout(&out);
    assert!(
        text.contains("ofuser/") && text.contains("wphost.db"),
        "{text}"
    );
    let out = c.remote("ls", "", &[]);
    assert_success(&out);
    assert!(!stdout(&out).contains(".haul"), "{}", stdout(&out));
    // Not a directory, or nothing there: an error.
    assert_refused(&c.remote("ls", "po1/wphost.db", &[]), &["not a directory"]);
    assert_refused(&c.remote("ls", "po1/missing", &[]), &["not found"]);

    // stat: a file, directories (empty or not), a symlink (not followed), nothing.
    let local = fs::metadata(env.root.join("po1/wphost.db")).unwrap();
    let st = c.json("stat", "po1/wphost.db", &[]);
    assert_eq!(st["kind"], "file", "{st}");
    assert_eq!(st["size"], 1000, "{st}");
    assert_eq!(
        st["mode"].as_u64().unwrap() & 0o7777,
        u64::from(local.mode() & 0o7777)
    );
    assert_eq!(st["mtime_sec"], local.mtime(), "{st}");
    assert_eq!(st["nlink"], 1, "{st}");
    assert_eq!(st["empty"], Value::Null, "{st}");
    let st = c.json("stat", "po1/ofwork", &[]);
    assert_eq!((&st["kind"], &st["empty"]), (&json!("dir"), &json!(true)));
    let st = c.json("stat", "po1/ofuser", &[]);
    assert_eq!((&st["kind"], &st["empty"]), (&json!("dir"), &json!(false)));
    assert_eq!(c.json("stat", "", &[])["empty"], false);
    let st = c.json("stat", "po1/current", &[]);
    assert_eq!(st["kind"], "symlink", "{st}");
    assert_eq!(st["size"], "ofuser/user1.db".len(), "{st}");
    let out = c.remote("stat", "po1/wphost.db", &[]);
    assert_success(&out);
    assert!(
        stdout(&out).starts_with("file 1000 bytes"),
        "{}",
        stdout(&out)
    );

    let out = c.remote("stat", "po1/missing", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("nothing at /po1/missing"),
        "{}",
        stdout(&out)
    );
    let out = c.remote("stat", "po1/missing", &["--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "null");

    // du: bytes, files, directories (the tree itself included), symlinks.
    let du = c.json("du", "po1", &[]);
    assert_eq!(du["bytes"], 21_000, "{du}");
    assert_eq!(du["files"], 2, "{du}");
    assert_eq!(du["dirs"], 3, "{du}");
    assert_eq!(du["symlinks"], 1, "{du}");
    assert_eq!(du["others"], 0, "{du}");
    let allocated = du["allocated_bytes"].as_u64().unwrap();
    assert!(allocated >= 21_000, "{du}");
    // A second name for a file counts as a file, but its blocks only once.
    fs::hard_link(
        env.root.join("po1/ofuser/user1.db"),
        env.root.join("po1/ofuser/user1.hard"),
    )
    .unwrap();
    let du = c.json("du", "po1", &[]);
    assert_eq!((&du["files"], &du["bytes"]), (&json!(3), &json!(41_000)));
    assert_eq!(du["allocated_bytes"], allocated, "{du}");
    let du = c.json("du", "po1/wphost.db", &[]);
    assert_eq!((&du["files"], &du["bytes"]), (&json!(1), &json!(1000)));
    // The whole root: both trees and the root, nothing of `.haul`.
    let du = c.json("du", "", &[]);
    assert_eq!(du["files"], 5, "{du}");
    assert_eq!(du["dirs"], 6, "{du}");
    assert_eq!(du["bytes"], 41_000 + 70_010, "{du}");
    let out = c.remote("du", "po1", &[]);
    assert_success(&out);
    assert!(stdout(&out).contains(" in 3 files "), "{}", stdout(&out));
    assert_refused(&c.remote("du", "po1/missing", &[]), &["not found"]);
}

#[test]
fn manifest_lists_every_file_with_its_blake3_as_b3sum_prints_it() {
    let env = Env::new();
    let token = env.token("root");
    let server = env.serve(&token);
    let c = env.client(&server, &token);
    let mut t = TreeBuilder::new(&env.root.join("po1"), 5);
    t.file("wphost.db", 40_000);
    t.file("empty.db", 0);
    t.file("one", 1);
    t.file("ofuser/user1.db", 5 << 20);
    t.file("ofuser/user 2.db", 1025);
    t.file("offiles/fd0/blob1", 3000);
    t.file("offiles/fdé/blob2", 70);
    t.dir("ofwork");
    t.symlink("current", "ofuser/user1.db");
    // Something in `.haul` to leave out.
    let mut src = TreeBuilder::new(&env.dir.join("src"), 6);
    src.file("x", 10);
    assert_success(&c.push(&env.dir.join("src"), "po2", &[]));

    let out = c.remote("manifest", "po1", &[]);
    assert_success(&out);
    let po1 = env.root.join("po1");
    let expected = expected_manifest(&po1);
    assert_eq!(expected.len(), 7);
    assert_eq!(sorted_lines(&stdout(&out)), expected);
    if have_b3sum() {
        assert_b3sum_checks(&po1, &out.stdout);
    }

    // A subtree's paths are relative to it.
    let out = c.remote("manifest", "po1/offiles", &[]);
    assert_success(&out);
    assert_eq!(
        sorted_lines(&stdout(&out)),
        expected_manifest(&po1.join("offiles"))
    );

    // JSON: every entry, the tree itself first; only files have a hash.
    let entries = c.json("manifest", "po1", &[]);
    let entries = entries.as_array().unwrap();
    assert_eq!(
        (&entries[0]["path"], &entries[0]["kind"]),
        (&json!(""), &json!("dir"))
    );
    let by_path: BTreeMap<&str, &Value> = entries
        .iter()
        .map(|e| (e["path"].as_str().unwrap(), e))
        .collect();
    assert_eq!(by_path.len(), entries.len(), "no entry twice");
    for (rel, what) in state(&po1) {
        let rel = rel.to_str().unwrap().to_owned();
        let entry = by_path
            .get(rel.as_str())
            .unwrap_or_else(|| panic!("{rel} missing from {entries:?}"));
        let meta = fs::symlink_metadata(po1.join(&rel)).unwrap();
        if meta.file_type().is_file() {
            assert_eq!(entry["kind"], "file", "{rel}: {what}");
            assert_eq!(entry["size"], meta.len(), "{rel}");
            let hash = blake3::hash(&fs::read(po1.join(&rel)).unwrap());
            assert_eq!(entry["blake3"], hash.to_hex().as_str(), "{rel}");
        } else {
            assert_eq!(entry["blake3"], Value::Null, "{rel}: {what}");
        }
    }
    assert_eq!(by_path["current"]["kind"], "symlink");
    assert_eq!(by_path["ofwork"]["kind"], "dir");
    assert_eq!(entries.len(), state(&po1).len() + 1);

    // The whole root: both trees, nothing under `.haul`.
    let out = c.remote("manifest", "", &[]);
    assert_success(&out);
    assert_eq!(sorted_lines(&stdout(&out)), expected_manifest(&env.root));
    let all = c.json("manifest", "", &[]);
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .all(|e| !e["path"].as_str().unwrap().starts_with(".haul")),
        "{all}"
    );
    assert_refused(&c.remote("manifest", "po1/missing", &[]), &["not found"]);
}

/// `b3sum` escapes a name holding a backslash or a newline (the line starts with `\`, and
/// the name is written with `\\` and `\n`), so every file is exactly one line and
/// `b3sum --check` reads the list back. A manifest "in b3sum format" must do the same, or a
/// file named "x\n<hash>  y" adds a line of its choosing to the list.
#[test]
fn manifest_escapes_names_as_b3sum_does() {
    let env = Env::new();
    let token = env.token("root");
    let server = env.serve(&token);
    let c = env.client(&server, &token);
    let dir = env.root.join("po1");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("plain"), b"plain").unwrap();
    fs::write(dir.join("new\nline"), b"x").unwrap();
    fs::write(dir.join("back\\slash"), b"y").unwrap();
    let line = |name: &str, data: &[u8]| {
        let hash = blake3::hash(data).to_hex();
        if name.contains(['\\', '\n']) {
            let escaped = name.replace('\\', "\\\\").replace('\n', "\\n");
            format!("\\{hash}  {escaped}")
        } else {
            format!("{hash}  {name}")
        }
    };
    let mut expected = vec![
        line("plain", b"plain"),
        line("new\nline", b"x"),
        line("back\\slash", b"y"),
    ];
    expected.sort();

    let out = c.remote("manifest", "po1", &[]);
    assert_success(&out);
    assert_eq!(
        sorted_lines(&stdout(&out)),
        expected,
        "one line per file, escaped as b3sum escapes it"
    );
    if have_b3sum() {
        assert_b3sum_checks(&dir, &out.stdout);
    }
}

#[test]
fn rm_removes_a_file_or_a_whole_tree_and_never_the_grant_itself() {
    let env = Env::new();
    let token = env.token("root");
    let server = env.serve(&token);
    let c = env.client(&server, &token);
    let mut t = TreeBuilder::new(&env.root.join("po1"), 7);
    t.file("old/a", 100);
    t.file("old/b/c", 200);
    t.file("old/b/d/e", 300);
    t.dir("old/empty");
    t.symlink("old/link", "b/c");
    t.file("keep", 10);
    t.file("single", 10);
    let keep = fs::read(env.root.join("po1/keep")).unwrap();
    let entries = state(&env.root.join("po1/old")).len() as u64 + 1;

    let out = c.json("rm", "po1/old", &[]);
    assert_eq!(out["removed"], entries, "{out}");
    assert!(!env.root.join("po1/old").exists());
    let out = c.remote("rm", "po1/single", &[]);
    assert_success(&out);
    assert!(
        stdout(&out).contains("removed /po1/single (1 entries)"),
        "{}",
        stdout(&out)
    );
    assert!(!env.root.join("po1/single").exists());
    assert_eq!(fs::read(env.root.join("po1/keep")).unwrap(), keep);
    // Nothing there: nothing removed, no error.
    assert_eq!(c.json("rm", "po1/missing", &[])["removed"], 0);
    // The top of the grant stays (here: the whole root).
    let before = state(&env.root);
    assert_refused(&c.remote("rm", "", &[]), &["whole grant"]);
    assert_eq!(state(&env.root), before);
    assert!(env.root.join(".haul").is_dir());

    let log = server.stop();
    assert_logged(&log, "rm /po1/old", false);
    assert_logged(&log, "rm /po1/single", false);
    assert_logged(&log, "rm /po1/missing", false);
    assert_logged(&log, "rm /", true);
}

#[test]
fn mv_renames_within_the_grant_and_never_replaces_anything() {
    let env = Env::new();
    let token = env.token("root");
    let server = env.serve(&token);
    let c = env.client(&server, &token);
    let mut t = TreeBuilder::new(&env.root.join("po1"), 8);
    t.file("a.db", 1000);
    t.file("dir/x", 50);
    t.file("taken", 20);
    t.file("takendir/y", 30);
    let a = fs::read(env.root.join("po1/a.db")).unwrap();

    let out = c.remote("mv", "po1/a.db", &["po1/b.db"]);
    assert_success(&out);
    assert!(
        stdout(&out).contains("renamed /po1/a.db to /po1/b.db"),
        "{}",
        stdout(&out)
    );
    assert!(!env.root.join("po1/a.db").exists());
    assert_eq!(fs::read(env.root.join("po1/b.db")).unwrap(), a);
    // A whole directory; a target written with a leading slash is still in the grant.
    assert_success(&c.remote("mv", "po1/dir", &["po1/moved"]));
    assert!(env.root.join("po1/moved/x").is_file() && !env.root.join("po1/dir").exists());
    let out = c.json("mv", "po1/b.db", &["/po1/c.db"]);
    assert_eq!(out, json!({"from": "po1/b.db", "to": "/po1/c.db"}));
    assert_eq!(fs::read(env.root.join("po1/c.db")).unwrap(), a);

    // Never onto something that exists, file or directory; never anywhere odd.
    let before = state(&env.root);
    assert_refused(
        &c.remote("mv", "po1/c.db", &["po1/taken"]),
        &["already there"],
    );
    assert_refused(
        &c.remote("mv", "po1/moved", &["po1/takendir"]),
        &["already there"],
    );
    assert_refused(
        &c.remote("mv", "po1/c.db", &["po1/nodir/c.db"]),
        &["does not exist"],
    );
    assert_refused(
        &c.remote("mv", "po1/moved", &["po1/moved/inner"]),
        &["into itself"],
    );
    assert_refused(&c.remote("mv", "po1/missing", &["po1/y"]), &["not found"]);
    assert_refused(&c.remote("mv", "", &["elsewhere"]), &["top of the grant"]);
    assert_refused(&c.remote("mv", "po1/c.db", &[""]), &["mv"]);
    assert_eq!(state(&env.root), before, "a refused rename changes nothing");

    let log = server.stop();
    assert_logged(&log, "mv /po1/a.db -> /po1/b.db", false);
    assert_logged(&log, "mv /po1/dir -> /po1/moved", false);
    assert_logged(&log, "mv /po1/c.db -> /po1/taken", true);
    assert_logged(&log, "mv /po1/moved -> /po1/takendir", true);
}

#[test]
fn put_then_cat_round_trips_control_files_and_the_host_logs_each_change() {
    let env = Env::new();
    let token = env.token("root");
    let server = env.serve(&token);
    let c = env.client(&server, &token);
    fs::create_dir_all(env.root.join("po1/sub")).unwrap();
    let control = env.root.join("po1/control.json");

    // From a file: any bytes, NULs and invalid UTF-8 included.
    let first: Vec<u8> = b"{\"phase\":\"cutover\"}\n\0\xff\xfe\x80 tail\r\n".to_vec();
    let local = env.dir.join("control.local");
    fs::write(&local, &first).unwrap();
    let out = c.remote("put", "po1/control.json", &[local.to_str().unwrap()]);
    assert_success(&out);
    assert!(
        stdout(&out).contains(&format!("wrote /po1/control.json ({} bytes)", first.len())),
        "{}",
        stdout(&out)
    );
    assert_eq!(fs::read(&control).unwrap(), first);
    assert_eq!(
        fs::metadata(&control).unwrap().permissions().mode() & 0o777,
        0o644
    );
    let out = c.remote("cat", "po1/control.json", &[]);
    assert_success(&out);
    assert_eq!(out.stdout, first);

    // From stdin, replacing it (shorter: nothing of the old contents is left).
    let second = b"phase=done\n".to_vec();
    assert_success(&c.remote_stdin("put", "po1/control.json", &["-"], &second));
    assert_eq!(fs::read(&control).unwrap(), second);
    assert_eq!(c.remote("cat", "po1/control.json", &[]).stdout, second);
    // Empty, and as large as a control file may be.
    assert_success(&c.remote_stdin("put", "po1/sub/empty", &["-"], b""));
    assert_eq!(c.remote("cat", "po1/sub/empty", &[]).stdout, b"");
    let largest: Vec<u8> = (0..512 << 10).map(|i: u32| (i % 251) as u8).collect();
    assert_success(&c.remote_stdin("put", "po1/sub/largest", &["-"], &largest));
    let out = c.remote("cat", "po1/sub/largest", &[]);
    assert_success(&out);
    assert!(
        out.stdout == largest,
        "cat of a 512 KiB control file differs"
    );
    // No temporary file is left next to them.
    assert_eq!(names(&c.json("ls", "po1", &[])), ["control.json", "sub"]);
    assert_eq!(names(&c.json("ls", "po1/sub", &[])), ["empty", "largest"]);

    // What is not a small regular file is refused, and stays as it was.
    let before = state(&env.root);
    assert_refused(
        &c.remote_stdin("put", "po1/sub", &["-"], b"x"),
        &["it is a directory"],
    );
    assert_refused(
        &c.remote_stdin("put", "po1/nodir/f", &["-"], b"x"),
        &["does not exist"],
    );
    let too_big = vec![7u8; (512 << 10) + 1];
    assert_refused(
        &c.remote_stdin("put", "po1/control.json", &["-"], &too_big),
        &["more than a control file may hold"],
    );
    assert_refused(&c.remote("cat", "po1/sub", &[]), &["directory"]);
    assert_refused(&c.remote("cat", "po1/missing", &[]), &["not found"]);
    fs::write(env.root.join("po1/sub/big"), vec![1u8; 600_000]).unwrap();
    assert_refused(&c.remote("cat", "po1/sub/big", &[]), &["at most 524288"]);
    fs::remove_file(env.root.join("po1/sub/big")).unwrap();
    assert_eq!(state(&env.root), before);

    // The host logged every change (rm and mv are logged in their own tests as well).
    assert_success(&c.remote("mv", "po1/sub/empty", &["po1/sub/renamed"]));
    assert_success(&c.remote("rm", "po1/sub/renamed", &[]));
    let log = server.stop();
    assert!(
        log_lines(&log, "put /po1/control.json")
            .iter()
            .filter(|l| !l.contains(" refused: "))
            .count()
            >= 2,
        "{log}"
    );
    assert_logged(&log, "put /po1/sub/empty", false);
    assert_logged(&log, "put /po1/sub", true);
    assert_logged(&log, "put /po1/nodir/f", true);
    assert_logged(&log, "mv /po1/sub/empty -> /po1/sub/renamed", false);
    assert_logged(&log, "rm /po1/sub/renamed", false);
    // Looking and reading change nothing and are not logged as changes.
    assert!(log_lines(&log, "cat /po1/control.json").is_empty(), "{log}");
    assert!(log_lines(&log, "ls /po1").is_empty(), "{log}");
}

/// GroupWise's `offiles` directories hold tens of thousands of files: listing one must work.
#[test]
fn ls_lists_a_directory_of_ten_thousand_entries() {
    let env = Env::new();
    let token = env.token("root");
    let server = env.serve(&token);
    let c = env.client(&server, &token);
    let dir = env.root.join("offiles");
    fs::create_dir(&dir).unwrap();
    for i in 0..10_000 {
        fs::File::create(dir.join(format!("blob{i:05}.db"))).unwrap();
    }
    let out = c.remote("ls", "offiles", &["--json"]);
    assert_success(&out);
    let listing: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names = names(&listing);
    assert_eq!(names.len(), 10_000);
    assert_eq!(names[0], "blob00000.db");
    assert_eq!(names[9_999], "blob09999.db");
}

/// Names JSON must escape (control characters: six bytes each) make a manifest's answer
/// many times longer than the file names: it must still arrive.
#[test]
fn manifest_of_names_that_json_escapes_still_fits_its_frames() {
    let env = Env::new();
    let token = env.token("root");
    let server = env.serve(&token);
    let c = env.client(&server, &token);
    let dir = env.root.join("odd");
    fs::create_dir(&dir).unwrap();
    for i in 0..2_500 {
        let mut name = vec![1u8; 240];
        name.extend_from_slice(i.to_string().as_bytes());
        fs::File::create(dir.join(OsStr::from_bytes(&name))).unwrap();
    }
    let out = c.remote("manifest", "odd", &["--json"]);
    assert_success(&out);
    let entries: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(entries.as_array().unwrap().len(), 2_501);
}

/// A refused operation is an ordinary answer: the client closes its connection as after a
/// success, and the host's connection slots (32) are free again for the next client. Scripts
/// probe with `stat`/`cat` and get refusals all day; a burst of them must not lock every other
/// client out, pushes included.
#[test]
fn refused_operations_do_not_lock_other_clients_out() {
    let env = Env::new();
    let token = env.token("root");
    let server = env.serve(&token);
    let c = env.client(&server, &token);
    let scratch = env.dir.join("scratch");
    fs::create_dir(&scratch).unwrap();
    TreeBuilder::new(&env.root, 21).file("inside/file", 10);
    let mut refused = 0;
    for path in ["../x", "a/../../x", "../y"] {
        for (op, out) in every_op_on(&c, path, &scratch, true) {
            refused += 1;
            assert!(
                !stderr(&out).contains("refused to accept a new connection"),
                "after {refused} refused operations, {op} {path:?} was turned away at the \
                 door: {}",
                stderr(&out)
            );
            assert_refused(&out, &["'..'"]);
        }
    }
    assert_success(&c.remote("ls", "", &[]));
    let src = env.dir.join("src");
    TreeBuilder::new(&src, 22).file("f", 100);
    assert_success(&c.push(&src, "copy", &[]));
}

// ---------------------------------------------------------------------------------------------
// 2. Confinement

/// Every operation, with `path` where it names a path on the host (`mv` both ways). `lease`
/// says whether to take a lease on it too (a lease names a tree without touching it, so it
/// is confined by its path alone).
fn every_op_on(c: &Client<'_>, path: &str, scratch: &Path, lease: bool) -> Vec<(String, Output)> {
    let local = scratch.join("put-source");
    fs::write(&local, b"planted").unwrap();
    let src = scratch.join("push-source");
    TreeBuilder::new(&src, 9).file("planted", 100);
    let pulled = scratch.join(format!("pulled-{}", path.replace('/', "_")));
    let mut all = vec![
        ("ls".into(), c.remote("ls", path, &[])),
        ("stat".into(), c.remote("stat", path, &[])),
        ("du".into(), c.remote("du", path, &[])),
        ("manifest".into(), c.remote("manifest", path, &[])),
        ("cat".into(), c.remote("cat", path, &[])),
        ("rm".into(), c.remote("rm", path, &[])),
        (
            "put".into(),
            c.remote("put", path, &[local.to_str().unwrap()]),
        ),
        (
            "put -".into(),
            c.remote_stdin("put", path, &["-"], b"planted"),
        ),
        ("mv from".into(), c.remote("mv", path, &["taken-away"])),
        ("mv to".into(), c.remote("mv", "inside/file", &[path])),
        ("snapshot create".into(), c.snapshot_create(path)),
        ("push".into(), c.push(&src, path, &[])),
        ("pull".into(), c.pull(path, &pulled)),
    ];
    if lease {
        all.push(("lease".into(), c.lease_refused(path, "intruder", "escape")));
    }
    all
}

#[test]
fn paths_that_climb_out_or_name_the_state_directory_are_refused_by_every_operation() {
    let env = Env::new();
    let token = env.token("root");
    let scratch = env.dir.join("scratch");
    fs::create_dir(&scratch).unwrap();
    // `ROOT/../x` is this file: what a climb out would reach.
    fs::write(env.dir.join("x"), b"outside the root").unwrap();
    fs::create_dir(env.dir.join("xdir")).unwrap();
    fs::write(env.dir.join("xdir/sentinel"), b"outside too").unwrap();
    let mut t = TreeBuilder::new(&env.root, 10);
    t.file("a/file", 10);
    t.file("inside/file", 20);
    // And something of the host's own in `.haul` (made by the first start), which no client
    // may touch.
    drop(env.serve(&token));
    fs::write(env.root.join(".haul/anything"), b"host state").unwrap();
    let outside = state(&env.dir.join("xdir"));
    let root_before = state(&env.root);

    let cases: &[(&str, &str)] = &[
        ("../x", "'..'"),
        ("../xdir/sentinel", "'..'"),
        ("a/../../x", "'..'"),
        ("inside/../../xdir", "'..'"),
        (".haul", "'.haul'"),
        (".haul/anything", "'.haul'"),
        (".haul/leases", "'.haul'"),
    ];
    for (path, why) in cases {
        // A server per case: a refused operation holds one of its connection slots for a
        // while (see `refused_operations_do_not_lock_other_clients_out`).
        let server = env.serve(&token);
        let c = env.client(&server, &token);
        for (op, out) in every_op_on(&c, path, &scratch, true) {
            let err = stderr(&out);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{op} {path:?} was not refused: {}; stdout: {}; stderr: {err}",
                out.status,
                stdout(&out)
            );
            assert!(err.contains(why), "{op} {path:?}: {err}");
        }
    }
    assert_eq!(fs::read(env.dir.join("x")).unwrap(), b"outside the root");
    assert_eq!(state(&env.dir.join("xdir")), outside);
    assert!(!env.dir.join("taken-away").exists() && !env.root.join("taken-away").exists());
    assert_eq!(state(&env.root), root_before, "nothing changed in the root");
    assert_eq!(
        fs::read(env.root.join(".haul/anything")).unwrap(),
        b"host state"
    );
    let server = env.serve(&token);
    let c = env.client(&server, &token);
    assert_eq!(c.leases(), json!([]));
    assert_eq!(c.snapshots(), json!([]));
    for entry in fs::read_dir(&scratch).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name.to_string_lossy().starts_with("pulled-") {
            let empty = match fs::read_dir(entry.path()) {
                Ok(mut d) => d.next().is_none(),
                Err(_) => true,
            };
            assert!(empty, "a refused pull wrote {}", entry.path().display());
        }
    }
}

#[test]
fn a_symlink_to_the_outside_is_reported_never_followed() {
    let env = Env::new();
    let token = env.token("root");
    let scratch = env.dir.join("scratch");
    fs::create_dir(&scratch).unwrap();
    let outside = env.dir.join("outside");
    let mut o = TreeBuilder::new(&outside, 11);
    o.file("sentinel", 64);
    o.file("sub/deep", 32);
    let outside_before = state(&outside);
    let mut t = TreeBuilder::new(&env.root, 12);
    t.file("inside/file", 20);
    t.file("tree/kept", 5);
    symlink(&outside, env.root.join("out")).unwrap();
    // A tree holding a link to the outside, and a relative link that climbs out.
    symlink(&outside, env.root.join("tree/link")).unwrap();
    symlink("../../outside/sentinel", env.root.join("tree/climb")).unwrap();

    // Through the link: every operation refused, naming the link.
    for path in ["out/sentinel", "out/sub", "out/sub/deep", "out/new"] {
        // A server per case (see `refused_operations_do_not_lock_other_clients_out`).
        let server = env.serve(&token);
        let c = env.client(&server, &token);
        for (op, out) in every_op_on(&c, path, &scratch, false) {
            if op == "stat" {
                // Nothing is reported of what lies behind the link either.
                assert_eq!(out.status.code(), Some(1), "stat {path}: {}", stdout(&out));
                assert!(
                    !stdout(&out).contains("file"),
                    "stat {path}: {}",
                    stdout(&out)
                );
                continue;
            }
            let err = stderr(&out);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{op} {path:?} was not refused: {}; stdout: {}; stderr: {err}",
                out.status,
                stdout(&out)
            );
            if !matches!(op.as_str(), "push" | "pull" | "snapshot create") {
                assert!(err.contains("symbolic link"), "{op} {path:?}: {err}");
            }
        }
    }
    assert_eq!(state(&outside), outside_before, "the outside is untouched");

    // The link itself: reported as a link, never entered or read.
    let server = env.serve(&token);
    let c = env.client(&server, &token);
    let st = c.json("stat", "out", &[]);
    assert_eq!(st["kind"], "symlink", "{st}");
    assert_refused(&c.remote("ls", "out", &[]), &["symbolic link"]);
    let du = c.json("du", "out", &[]);
    assert_eq!(
        (&du["symlinks"], &du["files"], &du["bytes"]),
        (&json!(1), &json!(0), &json!(0)),
        "{du}"
    );
    let manifest = c.json("manifest", "out", &[]);
    assert_eq!(
        manifest,
        json!([{"path": "", "kind": "symlink",
                "size": outside.as_os_str().len(), "blake3": null}])
    );
    assert_refused(&c.remote("cat", "out", &[]), &["symbolic link"]);
    assert_refused(
        &c.remote_stdin("put", "out", &["-"], b"over the link"),
        &["symbolic link"],
    );
    assert_refused(&c.remote("cat", "tree/climb", &[]), &["symbolic link"]);
    assert_refused(
        &c.remote_stdin("put", "tree/climb", &["-"], b"through the link"),
        &["symbolic link"],
    );
    // Walks of the whole root count the links and never what they point at.
    let du = c.json("du", "", &[]);
    assert_eq!(
        (&du["files"], &du["symlinks"], &du["bytes"]),
        (&json!(2), &json!(3), &json!(25)),
        "{du}"
    );
    let out = c.remote("manifest", "", &[]);
    assert_success(&out);
    assert_eq!(
        sorted_lines(&stdout(&out)),
        expected_manifest(&env.root),
        "only the files inside the root"
    );
    assert_eq!(state(&outside), outside_before);

    // Removing the link removes the link; removing a tree holding links removes the links.
    assert_eq!(c.json("rm", "out", &[])["removed"], 1);
    assert!(fs::symlink_metadata(env.root.join("out")).is_err());
    assert_eq!(c.json("rm", "tree", &[])["removed"], 4);
    assert!(!env.root.join("tree").exists());
    assert_eq!(state(&outside), outside_before, "the outside is untouched");
    assert!(outside.join("sentinel").is_file());
}

#[test]
fn a_grant_reaches_neither_a_sibling_grant_nor_through_links() {
    let env = Env::new();
    let (po1, po2, po3) = (env.token("po1"), env.token("po2"), env.token("po3"));
    let scratch = env.dir.join("scratch");
    fs::create_dir(&scratch).unwrap();
    let mut t = TreeBuilder::new(&env.root, 13);
    t.file("po1/inside/file", 10);
    t.file("po2/secret", 100);
    t.file("po2/dir/more", 200);
    t.file("top-secret", 300);
    // In po1, a link into po2; po3's own directory is a link to the outside.
    symlink("../po2", env.root.join("po1/up")).unwrap();
    let outside = env.dir.join("outside");
    TreeBuilder::new(&outside, 14).file("s", 9);
    symlink(&outside, env.root.join("po3")).unwrap();
    // A server per case (see `refused_operations_do_not_lock_other_clients_out`).
    let serve = || {
        env.serve_grants(&[
            grant("po1", &po1, ""),
            grant("po2", &po2, ""),
            grant("po3", &po3, ""),
        ])
    };
    let server = serve();
    let c1 = env.client(&server, &po1);
    let root_before = state(&env.root);
    let outside_before = state(&outside);

    // The grant is the client's whole world.
    assert_eq!(names(&c1.json("ls", "", &[])), ["inside", "up"]);
    assert_eq!(c1.json("stat", "", &[])["kind"], "dir");
    assert_eq!(c1.json("du", "", &[])["files"], 1);
    for path in [
        "../po2",
        "../po2/secret",
        "../top-secret",
        "inside/../../po2/dir",
    ] {
        let server = serve();
        let c1 = env.client(&server, &po1);
        for (op, out) in every_op_on(&c1, path, &scratch, true) {
            assert_eq!(
                out.status.code(),
                Some(1),
                "{op} {path:?} was not refused: stdout: {}; stderr: {}",
                stdout(&out),
                stderr(&out)
            );
            assert!(
                stderr(&out).contains("'..'"),
                "{op} {path}: {}",
                stderr(&out)
            );
        }
    }
    for path in ["up/secret", "up/dir", "up/new"] {
        let server = serve();
        let c1 = env.client(&server, &po1);
        for (op, out) in every_op_on(&c1, path, &scratch, false) {
            assert_eq!(
                out.status.code(),
                Some(1),
                "{op} {path:?} was not refused: stdout: {}; stderr: {}",
                stdout(&out),
                stderr(&out)
            );
            assert!(
                !stdout(&out).contains("file "),
                "{op} {path}: {}",
                stdout(&out)
            );
        }
    }
    let server = serve();
    let c1 = env.client(&server, &po1);
    assert_eq!(c1.json("stat", "up", &[])["kind"], "symlink");
    assert_refused(&c1.remote("ls", "up", &[]), &["symbolic link"]);
    assert_eq!(
        state(&env.root),
        root_before,
        "po2 and the root are untouched"
    );

    // A grant whose own directory is a link to the outside: a look at the link is all it
    // gets.
    let c3 = env.client(&server, &po3);
    assert_eq!(c3.json("stat", "", &[])["kind"], "symlink");
    let du = c3.json("du", "", &[]);
    assert_eq!(
        (&du["symlinks"], &du["files"]),
        (&json!(1), &json!(0)),
        "{du}"
    );
    let manifest = c3.json("manifest", "", &[]);
    assert_eq!(manifest.as_array().unwrap().len(), 1, "{manifest}");
    assert_eq!(manifest[0]["kind"], "symlink", "{manifest}");
    for path in ["", "s", "new"] {
        let server = serve();
        let c3 = env.client(&server, &po3);
        for (op, out) in every_op_on(&c3, path, &scratch, false) {
            // Looking at the grant's top, or pulling it, reports the link itself.
            if path.is_empty() && matches!(op.as_str(), "stat" | "du" | "manifest" | "pull") {
                continue;
            }
            assert_ne!(
                out.status.code(),
                Some(0),
                "{op} {path:?} succeeded through po3 -> outside: stdout: {}; stderr: {}",
                stdout(&out),
                stderr(&out)
            );
            assert!(
                !stdout(&out).contains("file "),
                "{op} {path}: {}",
                stdout(&out)
            );
        }
    }
    // A pull of the grant's top copied the link, never what it points at.
    let pulled = scratch.join("pulled-");
    if let Ok(meta) = fs::symlink_metadata(&pulled) {
        assert!(
            meta.file_type().is_symlink(),
            "a pull through po3 -> outside made {}: {:?}",
            pulled.display(),
            state(&scratch)
        );
    }
    assert_eq!(state(&outside), outside_before, "the outside is untouched");
    assert_eq!(state(&env.root), root_before);
}

// ---------------------------------------------------------------------------------------------
// 3. Scope

#[test]
fn a_read_grant_may_look_and_read_but_change_nothing() {
    let env = Env::new();
    let (reader, writer) = (env.token("reader"), env.token("writer"));
    let mut t = TreeBuilder::new(&env.root.join("po1"), 15);
    t.file("wphost.db", 3000);
    t.file("control", 20);
    t.file("ofuser/user1.db", 1000);
    let server = env.serve_grants(&[
        grant("po1", &reader, ",read"),
        grant("po1", &writer, ",write"),
    ]);
    let c = env.client(&server, &reader);
    let src = env.dir.join("src");
    TreeBuilder::new(&src, 16).file("new.db", 500);
    let put_file = env.dir.join("put");
    fs::write(&put_file, b"new contents").unwrap();
    let before = state(&env.root);

    let refusals = [
        ("rm", c.remote("rm", "wphost.db", &[])),
        ("rm tree", c.remote("rm", "ofuser", &[])),
        ("mv", c.remote("mv", "wphost.db", &["renamed.db"])),
        (
            "put",
            c.remote("put", "control", &[put_file.to_str().unwrap()]),
        ),
        ("put -", c.remote_stdin("put", "new-control", &["-"], b"x")),
        ("lease", c.lease_refused("", "reader-job", "should not")),
        ("snapshot create", c.snapshot_create("")),
        ("push", c.push(&src, "pushed", &[])),
    ];
    for (what, out) in &refusals {
        let err = assert_refused(out, &["write scope"]);
        assert!(!err.contains("read scope"), "{what}: {err}");
    }
    assert_eq!(state(&env.root), before, "a read token changed nothing");
    assert_eq!(c.leases(), json!([]));
    assert_eq!(c.snapshots(), json!([]));

    // What it may do.
    assert_eq!(
        names(&c.json("ls", "", &[])),
        ["control", "ofuser", "wphost.db"]
    );
    assert_eq!(c.json("stat", "wphost.db", &[])["size"], 3000);
    assert_eq!(c.json("du", "", &[])["files"], 3);
    assert!(c.json("df", "", &[])["total_bytes"].as_u64().unwrap() > 0);
    let out = c.remote("cat", "control", &[]);
    assert_success(&out);
    assert_eq!(out.stdout, fs::read(env.root.join("po1/control")).unwrap());
    let out = c.remote("manifest", "", &[]);
    assert_success(&out);
    assert_eq!(
        sorted_lines(&stdout(&out)),
        expected_manifest(&env.root.join("po1"))
    );
    let pulled = env.dir.join("pulled");
    assert_success(&c.pull("", &pulled));
    assert_same_tree(&env.root.join("po1"), &pulled);
    assert_eq!(state(&env.root), before);

    let log = server.stop();
    assert_logged(&log, "rm /wphost.db", true);
    assert_logged(&log, "put /control", true);
}

#[test]
fn a_write_grant_may_look_and_change_but_never_read_data() {
    let env = Env::new();
    let writer = env.token("writer");
    let mut t = TreeBuilder::new(&env.root.join("po1"), 17);
    t.file("wphost.db", 3000);
    t.file("control", 20);
    let server = env.serve_grants(&[grant("po1", &writer, ",write")]);
    let c = env.client(&server, &writer);
    let before = state(&env.root);

    let cat = c.remote("cat", "control", &[]);
    assert_refused(&cat, &["read scope"]);
    assert!(cat.stdout.is_empty(), "cat printed data: {:?}", cat.stdout);
    let manifest = c.remote("manifest", "", &[]);
    assert_refused(&manifest, &["read scope"]);
    let hash = blake3::hash(&fs::read(env.root.join("po1/wphost.db")).unwrap());
    assert!(!stdout(&manifest).contains(hash.to_hex().as_str()));
    let pulled = env.dir.join("pulled");
    assert_refused(&c.pull("", &pulled), &["read scope"]);
    assert_refused(&c.pull("wphost.db", &pulled), &["read scope"]);
    assert!(!pulled.join("wphost.db").exists() && !pulled.join("control").exists());
    assert_eq!(state(&env.root), before);

    // Looking needs no read scope.
    assert_eq!(names(&c.json("ls", "", &[])), ["control", "wphost.db"]);
    assert_eq!(c.json("stat", "wphost.db", &[])["kind"], "file");
    assert_eq!(c.json("du", "", &[])["bytes"], 3020);
    assert!(c.json("df", "", &[])["free_bytes"].as_u64().unwrap() > 0);
    // And it may change things.
    let src = env.dir.join("src");
    TreeBuilder::new(&src, 18).file("new.db", 500);
    assert_success(&c.push(&src, "pushed", &[]));
    assert_same_tree(&src, &env.root.join("po1/pushed"));
    assert_success(&c.remote_stdin("put", "control", &["-"], b"written"));
    assert_eq!(fs::read(env.root.join("po1/control")).unwrap(), b"written");
    assert_success(&c.remote("mv", "wphost.db", &["renamed.db"]));
    assert_success(&c.remote("rm", "renamed.db", &[]));
    assert!(!env.root.join("po1/renamed.db").exists());
}

// ---------------------------------------------------------------------------------------------
// 4. Leases

/// A host with a tree to lease and a source to push.
struct LeaseSetup {
    env: Env,
    token: PathBuf,
    src: PathBuf,
}

fn lease_setup() -> LeaseSetup {
    let env = Env::new();
    let token = env.token("root");
    let mut t = TreeBuilder::new(&env.root.join("elm"), 19);
    t.file("existing/file", 100);
    t.file("control", 10);
    let src = env.dir.join("src");
    let mut s = TreeBuilder::new(&src, 20);
    s.file("wphost.db", 30_000);
    s.file("ofuser/user1.db", 2000);
    LeaseSetup { env, token, src }
}

#[test]
fn a_lease_keeps_everyone_but_its_holder_out() {
    let s = lease_setup();
    let server = s.env.serve(&s.token);
    let c = s.env.client(&server, &s.token);
    let mut holder = c.lease("elm", "job-A", "ELM migration", "2s");
    let said = holder.wait_holding();
    assert!(
        said.iter()
            .any(|l| l.contains("job-A") && l.contains("ELM migration")),
        "{said:?}"
    );
    let leases = c.leases();
    assert_eq!(leases.as_array().unwrap().len(), 1, "{leases}");
    assert_eq!(
        (
            &leases[0]["path"],
            &leases[0]["holder"],
            &leases[0]["purpose"]
        ),
        (&json!("elm"), &json!("job-A"), &json!("ELM migration"))
    );
    let before = state(&s.env.root);

    // Another job's push into the tree (or into a tree holding it) is refused, naming who
    // holds it and why.
    for dest in ["elm/po1", "elm", ""] {
        let out = c.push(&s.src, dest, &[]);
        assert_refused(&out, &["job-A", "ELM migration"]);
    }
    let out = c.push(&s.src, "elm/po1", &["--lease-holder", "job-B"]);
    assert_refused(&out, &["job-A", "ELM migration"]);
    // And so are removals, renames and writes of control files there.
    assert_refused(
        &c.remote("rm", "elm/existing", &[]),
        &["job-A", "ELM migration"],
    );
    assert_refused(
        &c.remote("mv", "elm/control", &["moved-out"]),
        &["job-A", "ELM migration"],
    );
    fs::write(s.env.root.join("outside-file"), b"o").unwrap();
    assert_refused(
        &c.remote("mv", "outside-file", &["elm/moved-in"]),
        &["job-A", "ELM migration"],
    );
    fs::remove_file(s.env.root.join("outside-file")).unwrap();
    assert_refused(
        &c.remote_stdin("put", "elm/control", &["-"], b"x"),
        &["job-A", "ELM migration"],
    );
    // Nobody else may take a lease overlapping it.
    assert_refused(
        &c.lease_refused("elm/po1", "job-B", "restore"),
        &["job-A", "ELM migration"],
    );
    assert_eq!(
        state(&s.env.root),
        before,
        "nothing changed in the leased tree"
    );

    // Outside the leased tree everyone may write.
    assert_success(&c.push(&s.src, "other/po1", &[]));
    assert_same_tree(&s.src, &s.env.root.join("other/po1"));
    // The holder's own push goes in.
    assert_success(&c.push(&s.src, "elm/po1", &["--lease-holder", "job-A"]));
    assert_same_tree(&s.src, &s.env.root.join("elm/po1"));
    assert!(s.env.root.join("elm/existing/file").is_file());

    let status = holder.terminate();
    assert!(status.success(), "{status}: {}", holder.stderr());
    assert_eq!(c.leases(), json!([]));
}

#[test]
fn a_dead_holders_lease_holds_until_it_expires_then_can_be_taken_over() {
    let s = lease_setup();
    let server = s.env.serve(&s.token);
    let c = s.env.client(&server, &s.token);
    let mut a = c.lease("elm", "job-A", "ELM migration", "2s");
    a.wait_holding();
    a.kill();

    // Dead, but its lease has not expired: still refused.
    let out = c.push(&s.src, "elm/po1", &[]);
    assert_refused(&out, &["job-A", "ELM migration"]);
    assert!(!s.env.root.join("elm/po1").exists());
    let leases = c.leases();
    let expires = leases[0]["expires_ms"].as_u64().unwrap();
    assert_eq!(leases[0]["holder"], "job-A", "{leases}");

    // Once its time to live has passed, another job takes it over.
    while now_ms() <= expires + 50 {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut b = c.lease("elm", "job-B", "restore from snapshot", "2s");
    let said = b.wait_holding();
    assert!(
        said.iter()
            .any(|l| l.contains("took over") && l.contains("job-A")),
        "{said:?}"
    );
    let leases = c.leases();
    assert_eq!(leases.as_array().unwrap().len(), 1, "{leases}");
    assert_eq!(leases[0]["holder"], "job-B", "{leases}");
    assert_success(&c.push(&s.src, "elm/po1", &["--lease-holder", "job-B"]));
    assert_same_tree(&s.src, &s.env.root.join("elm/po1"));
    // Now job-A (were it still around) and anyone else are the ones kept out.
    let out = c.push(&s.src, "elm/po2", &["--lease-holder", "job-A"]);
    assert_refused(&out, &["job-B", "restore from snapshot"]);
    assert_refused(&c.push(&s.src, "elm/po2", &[]), &["job-B"]);
    assert!(!s.env.root.join("elm/po2").exists());

    let status = b.terminate();
    assert!(status.success(), "{status}: {}", b.stderr());
}

#[test]
fn a_held_lease_is_renewed_past_its_ttl_and_released_on_sigterm() {
    let s = lease_setup();
    let server = s.env.serve(&s.token);
    let c = s.env.client(&server, &s.token);
    let mut holder = c.lease("elm", "job-A", "ELM migration", "1s");
    holder.wait_holding();
    let first = c.leases()[0]["expires_ms"].as_u64().unwrap();

    // Three and a half times its time to live later it still holds: it was renewed.
    std::thread::sleep(Duration::from_millis(3500));
    let out = c.push(&s.src, "elm/po1", &[]);
    assert_refused(&out, &["job-A", "ELM migration"]);
    assert!(!s.env.root.join("elm/po1").exists());
    let leases = c.leases();
    let renewed = leases[0]["expires_ms"].as_u64().unwrap();
    assert!(
        renewed > first + 2000,
        "expiry moved from {first} to {renewed}"
    );
    assert!(
        renewed > now_ms(),
        "the lease expired at {renewed} though its holder runs"
    );

    // SIGTERM: it releases the lease on the way out, so nobody has to wait for the expiry.
    let status = holder.terminate();
    assert!(status.success(), "{status}: {}", holder.stderr());
    assert_eq!(c.leases(), json!([]));
    assert_success(&c.push(&s.src, "elm/po1", &[]));
    assert_same_tree(&s.src, &s.env.root.join("elm/po1"));

    let log = server.stop();
    assert_logged(&log, "lease take /elm", false);
    assert_logged(&log, "lease release /elm", false);
}
