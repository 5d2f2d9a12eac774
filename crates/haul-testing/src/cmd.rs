//! Running the real `haul` binary.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};

/// The `haul` binary under test.
#[derive(Clone, Debug)]
pub struct Haul {
    bin: PathBuf,
}

impl Haul {
    /// Uses the binary at `bin` (pass `env!("CARGO_BIN_EXE_haul")`).
    pub fn new(bin: impl Into<PathBuf>) -> Self {
        Haul { bin: bin.into() }
    }

    /// A command for the binary with a private config directory (and its cache under
    /// `<config_dir>/cache`), so tests never touch the user's certificate, token, known-hosts
    /// or cache.
    pub fn command(&self, config_dir: &Path) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.env("HAUL_CONFIG_DIR", config_dir)
            .env("HAUL_CACHE_DIR", config_dir.join("cache"))
            .env_remove("HAUL_TOKEN");
        cmd
    }

    /// Runs with `args` and returns the output.
    pub fn run(&self, config_dir: &Path, args: &[&std::ffi::OsStr]) -> Output {
        let out = self.command(config_dir).args(args).output();
        out.unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()))
    }

    /// Starts `haul serve` on a free loopback port with its own root and config directory.
    pub fn serve(&self, root: &Path, config_dir: &Path, token_file: Option<&Path>) -> Server {
        let extra: Vec<std::ffi::OsString> = match token_file {
            Some(token) => vec!["--token-file".into(), token.into()],
            None => Vec::new(),
        };
        self.serve_with(root, config_dir, &extra)
    }

    /// Starts `haul serve` like [`serve`](Self::serve) with extra arguments (tokens, grants).
    pub fn serve_with(
        &self,
        root: &Path,
        config_dir: &Path,
        extra: &[std::ffi::OsString],
    ) -> Server {
        let mut cmd = self.command(config_dir);
        cmd.arg("serve")
            .arg("--root")
            .arg(root)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.args(extra);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start haul serve: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .expect("read the listening line");
        // Both pipes are drained for as long as the server runs: a pipe nobody reads fills
        // up after 64 KiB of log lines, and the server then blocks in the middle of a session.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let stderr_log = Arc::new(Mutex::new(Vec::new()));
        let stderr_thread = child.stderr.take().map(|mut pipe| {
            let log = stderr_log.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    log.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend_from_slice(&buf[..n]);
                }
            })
        });
        // "haul serve: listening on ADDR fingerprint sha256:HEX"
        let words: Vec<&str> = line.split_whitespace().collect();
        let addr = words
            .iter()
            .position(|w| *w == "on")
            .and_then(|i| words.get(i + 1));
        let fp = words
            .iter()
            .position(|w| *w == "fingerprint")
            .and_then(|i| words.get(i + 1));
        let (Some(addr), Some(fp)) = (addr, fp) else {
            let _ = child.kill();
            let out = child.wait_with_output().expect("serve output");
            panic!(
                "unexpected first line from haul serve: {line:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        Server {
            child,
            addr: addr.to_string(),
            fingerprint: fp.to_string(),
            stderr_log,
            stderr_thread,
        }
    }
}

/// A running `haul serve`, killed on drop.
#[derive(Debug)]
pub struct Server {
    child: Child,
    /// "127.0.0.1:PORT".
    pub addr: String,
    /// "sha256:HEX".
    pub fingerprint: String,
    /// What the server wrote to stderr so far (drained by `stderr_thread`).
    stderr_log: Arc<Mutex<Vec<u8>>>,
    stderr_thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// The server process's id (to read its `/proc` figures).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// quic://ADDR/PATH for this server.
    pub fn url(&self, path: &str) -> String {
        format!("quic://{}/{path}", self.addr)
    }

    /// Stops the server and returns what it wrote to stderr.
    pub fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(thread) = self.stderr_thread.take() {
            let _ = thread.join();
        }
        let log = self.stderr_log.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&log).into_owned()
    }

    /// True while the server process is alive.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test shows what the server said: often the half of the story it needs.
        if std::thread::panicking() {
            if let Some(thread) = self.stderr_thread.take() {
                let _ = thread.join();
            }
            let log = self.stderr_log.lock().unwrap_or_else(|p| p.into_inner());
            let text = String::from_utf8_lossy(&log);
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            eprintln!("--- haul serve stderr (last {} lines) ---", tail.len());
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Asserts that a run of the binary exited with success; the panic shows its status and
/// stderr (what the user would have read).
#[track_caller]
pub fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "haul failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The `"event":"summary"` object from `--json` output.
pub fn summary_of(output: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "summary")
        .unwrap_or_else(|| {
            panic!(
                "no summary in the output.\nstdout:\n{stdout}\nstderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
}

/// Writes a secret file (a token) with mode 0600, as `haul` requires of the secrets it loads;
/// an existing file is truncated and made 0600 before the secret goes in.
pub fn write_secret(path: &Path, contents: impl AsRef<[u8]>) {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .and_then(|()| file.write_all(contents.as_ref()))
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}
