//! The arena for hostile-client tests: a real `haul serve` with a root, an `outside` directory
//! next to it holding a sentinel, and the checks that must hold whatever a client sent.
//!
//! The QUIC client itself lives in the test (`tests/hostile.rs`), since it needs quinn types;
//! this module holds what does not: the layout, the snapshots and the final verdicts.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{Haul, Server, TreeBuilder, assert_same_tree};

/// What the sentinel under `outside` holds.
pub const SENTINEL: &[u8] = b"if you can read a changed version of this, the root leaked\n";
/// The sentinel's mode (unusual, so a chmod through a link would show).
pub const SENTINEL_MODE: u32 = 0o640;
/// The token the arena's server accepts.
pub const TOKEN: &[u8] = b"hostile-test-token";

/// One entry of a snapshot: its kind, its mode, and its content (files) or target (links).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// "file", "dir", "symlink" or "other".
    pub kind: &'static str,
    /// `st_mode & 0o7777`.
    pub mode: u32,
    /// File content or link target; empty for directories.
    pub bytes: Vec<u8>,
}

/// Everything under `dir`, walked without following symlinks, by path relative to `dir`.
/// `skip` names top-level entries left out (the receiver's `.haul`).
pub fn snapshot(dir: &Path, skip: &[&str]) -> BTreeMap<PathBuf, Seen> {
    let mut out = BTreeMap::new();
    walk(dir, Path::new(""), skip, &mut out);
    out
}

fn walk(base: &Path, rel: &Path, skip: &[&str], out: &mut BTreeMap<PathBuf, Seen>) {
    let dir = base.join(rel);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    for name in names {
        if rel.as_os_str().is_empty() && skip.iter().any(|s| OsStr::new(s) == name) {
            continue;
        }
        let rel = rel.join(&name);
        let path = base.join(&rel);
        let md = fs::symlink_metadata(&path).unwrap();
        let mode = md.mode() & 0o7777;
        let ft = md.file_type();
        let seen = if ft.is_symlink() {
            let target = fs::read_link(&path).unwrap();
            Seen {
                kind: "symlink",
                mode,
                bytes: target.into_os_string().into_encoded_bytes(),
            }
        } else if ft.is_dir() {
            walk(base, &rel, skip, out);
            Seen {
                kind: "dir",
                mode,
                bytes: Vec::new(),
            }
        } else if ft.is_file() {
            Seen {
                kind: "file",
                mode,
                bytes: fs::read(&path).unwrap(),
            }
        } else {
            Seen {
                kind: "other",
                mode,
                bytes: Vec::new(),
            }
        };
        out.insert(rel, seen);
    }
}

/// A running `haul serve` under attack, and what it must still look like afterwards.
#[derive(Debug)]
pub struct Arena {
    /// The receiver's root.
    pub root: PathBuf,
    /// A directory next to the root that no client may touch.
    pub outside: PathBuf,
    /// The server under test.
    pub server: Server,
    haul: Haul,
    token_file: PathBuf,
    client_cfg: PathBuf,
    outside_before: BTreeMap<PathBuf, Seen>,
    /// Regular files a client legitimately sent in full, by path under the root.
    legit: BTreeMap<PathBuf, Vec<u8>>,
    // Last, so the server is killed before its directories go.
    tmp: tempfile::TempDir,
}

impl Arena {
    /// Lays out `root/`, `outside/sentinel` and a token file; `prepare` may add to the root
    /// (planted symlinks) before the server starts.
    pub fn start(haul: Haul, prepare: impl FnOnce(&Path, &Path)) -> Arena {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let outside = tmp.path().join("outside");
        fs::create_dir(&root).unwrap();
        fs::create_dir(&outside).unwrap();
        let sentinel = outside.join("sentinel");
        fs::write(&sentinel, SENTINEL).unwrap();
        fs::set_permissions(&sentinel, fs::Permissions::from_mode(SENTINEL_MODE)).unwrap();
        let token_file = tmp.path().join("token");
        crate::cmd::write_secret(&token_file, [TOKEN, b"\n"].concat());
        prepare(&root, &outside);
        let outside_before = snapshot(&outside, &[]);
        let server = haul.serve(&root, &tmp.path().join("server-cfg"), Some(&token_file));
        Arena {
            root,
            outside,
            server,
            haul,
            token_file,
            client_cfg: tmp.path().join("client-cfg"),
            outside_before,
            legit: BTreeMap::new(),
            tmp,
        }
    }

    /// Records that a client sent `content` in full for `rel` (under the root) and the server
    /// said it installed it.
    pub fn allow(&mut self, rel: impl Into<PathBuf>, content: &[u8]) {
        self.legit.insert(rel.into(), content.to_vec());
    }

    /// The server's process id, found by its command line (the root path is unique).
    pub fn server_pid(&self) -> Option<u32> {
        let root = self.root.as_os_str().as_encoded_bytes();
        for entry in fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            if args.contains(&&b"serve"[..]) && args.contains(&root) {
                return Some(pid);
            }
        }
        None
    }

    /// The server's resident memory in KiB, from `/proc/PID/status`.
    pub fn server_rss_kib(&self) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.server_pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// The checks that must hold whatever the clients did: the server runs, `outside` is
    /// untouched, every regular file under the root is one a client legitimately sent in full,
    /// no staging file is left behind, and an honest `haul push` still works.
    pub fn verdict(mut self) {
        assert!(
            self.server.is_running(),
            "the server died under the hostile clients"
        );
        assert_eq!(
            snapshot(&self.outside, &[]),
            self.outside_before,
            "something changed outside the root"
        );

        let under_root = snapshot(&self.root, &[".haul"]);
        for (rel, seen) in &under_root {
            if seen.kind != "file" {
                continue;
            }
            let Some(expected) = self.legit.get(rel) else {
                panic!(
                    "{} exists under a final name but no client sent it in full ({} bytes: {:?})",
                    rel.display(),
                    seen.bytes.len(),
                    String::from_utf8_lossy(&seen.bytes[..seen.bytes.len().min(64)])
                );
            };
            assert!(
                &seen.bytes == expected,
                "{} holds {} bytes that differ from the {} bytes sent",
                rel.display(),
                seen.bytes.len(),
                expected.len()
            );
        }
        for rel in self.legit.keys() {
            assert_eq!(
                under_root.get(rel).map(|s| s.kind),
                Some("file"),
                "{} was reported installed but is not there",
                rel.display()
            );
        }

        // Sessions wind down asynchronously after a client leaves; give them a moment.
        let staging = self.root.join(".haul").join("staging");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = snapshot(&staging, &[]);
            if left.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "staging files left behind after every session ended: {:?}",
                left.keys().collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(100));
        }

        let src = self.tmp.path().join("honest");
        let mut tree = TreeBuilder::new(&src, 99);
        tree.file("a.txt", 1000);
        tree.file("sub/b.bin", 300_000);
        tree.file("sub/empty", 0);
        tree.symlink("sub/link", "../a.txt");
        let url = self.server.url("honest/copy");
        let out = self.haul.run(
            &self.client_cfg,
            &[
                OsStr::new("push"),
                src.as_os_str(),
                OsStr::new(&url),
                OsStr::new("--fingerprint"),
                OsStr::new(&self.server.fingerprint),
                OsStr::new("--token-file"),
                self.token_file.as_os_str(),
            ],
        );
        assert!(
            out.status.success(),
            "an honest push failed after the hostile clients: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_same_tree(&src, &self.root.join("honest/copy"));
        assert!(self.server.is_running(), "the server died after the push");
    }
}
