//! Hostile load on one `haul serve`, with the real binary over loopback QUIC: 2,000 connection
//! attempts that never authenticate (from a second loopback address, 127.0.0.2, as an
//! attacker's host would be) while 64 token holders push at once from 127.0.0.1. Every push
//! must complete with the exact tree, the server must stay within its file and memory bounds,
//! and it must still serve afterwards.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use haul_testing::{Haul, Server, TreeBuilder, assert_same_tree, assert_success};

const FLOOD: u64 = 2_000;
const FLOOD_AT_ONCE: usize = 128;
const SESSIONS: usize = 64;
/// What one serving host may hold in memory with 64 small sessions and a flood: far below
/// what unbounded per-connection state would take (2,000 connections with a hello buffer and
/// a chunk window each), far above what the server needs.
const SERVER_RSS_LIMIT_KIB: u64 = 768 << 10;

fn haul() -> Haul {
    Haul::new(env!("CARGO_BIN_EXE_haul"))
}

/// A figure of the server process from `/proc/PID/status` (in KiB), 0 when gone.
fn status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn open_files(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// The server's soft and hard limits on open files.
fn file_limits(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut figures = line.split_whitespace().skip(3);
    let mut next = || figures.next().unwrap().parse().unwrap();
    (next(), next())
}

/// Runs `start` (which spawns a child) with a soft open-file limit of `soft` (the interactive
/// default is 1,024; the hard limit stays), then puts this process's limit back.
fn with_soft_file_limit<T>(soft: u64, start: impl FnOnce() -> T) -> T {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let lowered = Rlimit {
        current: Some(soft.min(limit.current.unwrap_or(u64::MAX))),
        maximum: limit.maximum,
    };
    setrlimit(Resource::Nofile, lowered).unwrap();
    let started = start();
    setrlimit(Resource::Nofile, limit).unwrap();
    started
}

#[derive(Default)]
struct FloodCounts {
    handshakes: AtomicU64,
    refused: AtomicU64,
}

/// `FLOOD` attempts, `FLOOD_AT_ONCE` at a time, from 127.0.0.2: each completes the TLS
/// handshake if it is let in, then either says nothing, or sends half a frame, or a hello
/// with a wrong token, and holds the connection until the server drops it.
async fn flood(server: &Server, counts: Arc<FloodCounts>) {
    let addr: SocketAddr = server.addr.parse().unwrap();
    let trust = haul_net::Trust::Pinned(server.fingerprint.parse().unwrap());
    let gate = Arc::new(tokio::sync::Semaphore::new(FLOOD_AT_ONCE));
    let mut tasks = Vec::new();
    for i in 0..FLOOD {
        let permit = gate.clone().acquire_owned().await.unwrap();
        let (trust, counts, key) = (trust.clone(), counts.clone(), server.addr.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let local: SocketAddr = "127.0.0.2:0".parse().unwrap();
            let connected =
                haul_net::connect_from(local, addr, &key, &trust, Default::default()).await;
            let Ok(connected) = connected else {
                counts.refused.fetch_add(1, Ordering::Relaxed);
                return;
            };
            counts.handshakes.fetch_add(1, Ordering::Relaxed);
            let conn = connected.connection;
            if let Ok((mut send, _recv)) = conn.open_bi().await {
                match i % 3 {
                    0 => {}
                    1 => {
                        let _ = send.write_all(&[0, 0, 1]).await;
                    }
                    _ => {
                        let hello = haul_proto::Hello {
                            version: haul_proto::PROTOCOL_VERSION,
                            token: bytes::Bytes::from_static(b"a-guessed-token"),
                            dest: bytes::Bytes::from_static(b"flood"),
                            chunk_size: 1 << 20,
                            flags: 0,
                            rename_aside: Vec::new(),
                            filters: Vec::new(),
                            max_delete: u64::MAX,
                            holder: bytes::Bytes::new(),
                            snapshot: bytes::Bytes::new(),
                        };
                        let frame = haul_proto::Message::Hello(hello).encode();
                        let _ = send.write_all(&frame).await;
                    }
                }
            }
            // Hold the connection until the server gives up on it (or 3 s pass).
            let _ = tokio::time::timeout(Duration::from_secs(3), conn.closed()).await;
            conn.close(0u32.into(), b"");
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

fn push(haul: &Haul, cfg: &Path, src: &Path, server: &Server, dest: &str, token: &Path) -> Output {
    haul.command(cfg)
        .args([
            OsStr::new("push"),
            src.as_os_str(),
            OsStr::new(&server.url(dest)),
            OsStr::new("--fingerprint"),
            OsStr::new(&server.fingerprint),
            OsStr::new("--token-file"),
            token.as_os_str(),
        ])
        .output()
        .unwrap()
}

#[test]
fn a_flood_of_unauthenticated_connections_keeps_neither_token_holders_out_nor_memory_unbounded() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, src, cfg) = (
        tmp.path().join("root"),
        tmp.path().join("src"),
        tmp.path().join("cfg"),
    );
    std::fs::create_dir_all(&root).unwrap();
    let mut tree = TreeBuilder::new(&src, 23);
    for i in 0..24 {
        tree.file(format!("d{}/f{i}", i % 4), 1024 + i * 3_000);
    }
    tree.file("big", 3 << 20);
    let token = tmp.path().join("token");
    haul_testing::cmd::write_secret(&token, "load-test-token");
    let haul = haul();
    // The server starts with a shell's usual soft limit and must raise it to the hard one.
    let server = with_soft_file_limit(1024, || {
        haul.serve(&root, &cfg.join("server"), Some(&token))
    });
    let pid = server.pid();
    let (limit, hard) = file_limits(pid);
    assert_eq!(limit, hard, "haul serve did not raise its open-file limit");

    // Sample the server's figures while the load runs.
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let (mut rss, mut files) = (0, 0);
            while !done.load(Ordering::Relaxed) {
                rss = rss.max(status_kib(pid, "VmRSS:"));
                files = files.max(open_files(pid));
                std::thread::sleep(Duration::from_millis(50));
            }
            (rss, files)
        })
    };

    let counts = Arc::new(FloodCounts::default());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let flooding = {
        let counts = counts.clone();
        let server = &server;
        std::thread::scope(|scope| {
            let flooder = scope.spawn(|| runtime.block_on(flood(server, counts)));
            // Let the flood fill the unauthenticated slots first.
            std::thread::sleep(Duration::from_millis(500));
            let pushes: Vec<_> = (0..SESSIONS)
                .map(|i| {
                    let (haul, cfg, src, token) = (&haul, &cfg, &src, &token);
                    scope.spawn(move || {
                        push(
                            haul,
                            &cfg.join(format!("c{i}")),
                            src,
                            server,
                            &format!("s{i}"),
                            token,
                        )
                    })
                })
                .collect();
            let outputs: Vec<Output> = pushes.into_iter().map(|p| p.join().unwrap()).collect();
            flooder.join().unwrap();
            outputs
        })
    };
    done.store(true, Ordering::Relaxed);
    let (peak_rss_kib, peak_files) = sampler.join().unwrap();

    for (i, out) in flooding.iter().enumerate() {
        assert!(
            out.status.success(),
            "push {i} failed under the flood: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_same_tree(&src, &root.join(format!("s{i}")));
    }
    let (handshakes, refused) = (
        counts.handshakes.load(Ordering::Relaxed),
        counts.refused.load(Ordering::Relaxed),
    );
    eprintln!(
        "flood: {FLOOD} attempts, {handshakes} handshakes completed, {refused} refused; \
         server peak RSS {} MiB, peak open files {peak_files} of {limit}",
        peak_rss_kib >> 10
    );
    assert_eq!(handshakes + refused, FLOOD);
    assert!(refused > 0, "a flood from one address was never refused");
    assert!(
        peak_files < limit,
        "the server reached its file limit: {peak_files} of {limit}"
    );
    assert!(
        peak_rss_kib < SERVER_RSS_LIMIT_KIB,
        "the server grew to {peak_rss_kib} KiB under the flood"
    );
    // Nothing of the flood was written, and the server still serves.
    assert!(!root.join("flood").exists());
    let mut server = server;
    assert!(server.is_running(), "the server died under the load");
    let out = push(&haul, &cfg.join("after"), &src, &server, "after", &token);
    assert_success(&out);
    assert_same_tree(&src, &root.join("after"));
    server.stop();
}
