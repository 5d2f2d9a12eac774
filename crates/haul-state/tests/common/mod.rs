//! Helpers shared by the integration tests: run records and child processes.

#![allow(dead_code)] // Each test binary uses its own part of this module.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};

use haul_state::{Outcome, RunEnd, RunKind, RunStart};

/// A push from `source` to `destination` without a profile.
pub(crate) fn push(source: &str, destination: &str) -> RunStart {
    RunStart {
        kind: RunKind::Push,
        source: source.into(),
        destination: destination.into(),
        profile: None,
    }
}

/// A successful end that moved `bytes`.
pub(crate) fn ok(bytes: u64) -> RunEnd {
    RunEnd {
        bytes,
        files: 1,
        chunks: bytes.div_ceil(1 << 20),
        outcome: Outcome::Ok,
        error: None,
    }
}

/// Runs one test of this test binary in a child process, with `envs` set: the test is a
/// no-op unless its env var is there, so the parent's own run of it passes at once.
pub(crate) fn spawn_test(test: &str, envs: &[(&str, &std::path::Path)]) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    for (name, value) in envs {
        cmd.env(name, value);
    }
    cmd.spawn().unwrap()
}

/// Reads the child's stdout until a line containing `token` (libtest prints its own lines
/// around it). Panics if the child exits first.
pub(crate) fn wait_for(stdout: &mut BufReader<ChildStdout>, token: &str) {
    let mut line = String::new();
    loop {
        line.clear();
        let n = stdout.read_line(&mut line).unwrap();
        assert!(n > 0, "child exited before printing {token}");
        if line.contains(token) {
            return;
        }
    }
}
