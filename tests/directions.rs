//! One suite, both directions: every case runs as a push (this host sends to `haul serve`) and
//! as a pull (`haul serve` sends to this host), through the real binary over loopback QUIC.
//! A pull swaps which end runs the sender and which the receiver, so it must keep every
//! guarantee a push has: verified chunks, resume after a kill, a full disk that pauses and
//! continues after expansion, incremental re-runs, rename-aside and `--delete`.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use haul_testing::fidelity::rsync_itemize;
use haul_testing::{
    Haul, Server, Tmpfs, TreeBuilder, assert_same_tree, assert_success, kill_when, summary_of,
};

const MIB: u64 = 1 << 20;
/// What a killed run may have had in flight and not yet journaled (see tests/resume.rs).
const WINDOW: u64 = 224 * MIB;

fn haul() -> Haul {
    Haul::new(env!("CARGO_BIN_EXE_haul"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Push,
    Pull,
}

const BOTH: [Direction; 2] = [Direction::Push, Direction::Pull];

/// A serving host and a client, with the tree on the sending side and the copy on the other.
struct Case {
    dir: Direction,
    _tmp: tempfile::TempDir,
    /// The serving host's root.
    root: PathBuf,
    /// This host's side: the source of a push, the destination of a pull.
    local: PathBuf,
    client_cfg: PathBuf,
    server_cfg: PathBuf,
    token: PathBuf,
    _disk: Option<Tmpfs>,
}

impl Case {
    fn new(dir: Direction) -> Case {
        Case::build(dir, None)
    }

    /// The receiving side's file system is a tmpfs of `size`.
    fn with_small_target(dir: Direction, size: &str) -> Case {
        Case::build(dir, Some(size))
    }

    fn build(dir: Direction, disk: Option<&str>) -> Case {
        let tmp = tempfile::tempdir().unwrap();
        let mut root = tmp.path().join("root");
        let mut local = tmp.path().join("local");
        let disk = disk.map(|size| Tmpfs::mount(&tmp.path().join("disk"), size));
        if let Some(disk) = &disk {
            match dir {
                Direction::Push => root = disk.path().join("root"),
                Direction::Pull => local = disk.path().join("local"),
            }
        }
        std::fs::create_dir_all(&root).unwrap();
        let token = tmp.path().join("token");
        haul_testing::cmd::write_secret(&token, "directions-token");
        Case {
            dir,
            client_cfg: tmp.path().join("client-cfg"),
            server_cfg: tmp.path().join("server-cfg"),
            root,
            local,
            token,
            _tmp: tmp,
            _disk: disk,
        }
    }

    fn serve(&self) -> Server {
        haul().serve(&self.root, &self.server_cfg, Some(&self.token))
    }

    /// Where the tree to copy lives.
    fn source(&self) -> PathBuf {
        match self.dir {
            Direction::Push => self.local.clone(),
            Direction::Pull => self.root.join("data"),
        }
    }

    /// Where the copy goes.
    fn target(&self) -> PathBuf {
        match self.dir {
            Direction::Push => self.root.join("data"),
            Direction::Pull => self.local.clone(),
        }
    }

    /// The receiving side's root, where its resumable state lives.
    fn receiver_root(&self) -> PathBuf {
        match self.dir {
            Direction::Push => self.root.clone(),
            Direction::Pull => self.local.clone(),
        }
    }

    fn args(&self, server: &Server, extra: &[&str]) -> Vec<OsString> {
        let mut args: Vec<OsString> = match self.dir {
            Direction::Push => vec![
                "push".into(),
                self.local.clone().into(),
                server.url("data").into(),
            ],
            Direction::Pull => vec![
                "pull".into(),
                server.url("data").into(),
                self.local.clone().into(),
            ],
        };
        args.extend(
            [
                "--json",
                "--fingerprint",
                server.fingerprint.as_str(),
                "--token-file",
            ]
            .map(OsString::from),
        );
        args.push(self.token.clone().into());
        args.extend(extra.iter().map(OsString::from));
        args
    }

    fn run(&self, server: &Server, extra: &[&str]) -> Output {
        let args = self.args(server, extra);
        let args: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
        haul().run(&self.client_cfg, &args)
    }

    fn spawn(&self, server: &Server, extra: &[&str]) -> Child {
        haul()
            .command(&self.client_cfg)
            .args(self.args(server, extra))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn haul")
    }

    /// Runs and checks success; returns the summary.
    #[track_caller]
    fn ok(&self, server: &Server, extra: &[&str]) -> serde_json::Value {
        let out = self.run(server, extra);
        assert_success(&out);
        summary_of(&out)
    }
}

fn small_tree(dir: &Path) {
    let mut t = TreeBuilder::new(dir, 7);
    t.file("big.img", (24 * MIB) as usize);
    for i in 0..40 {
        t.file(format!("mail/ofuser/u{i}.db"), 3000 + i * 17);
    }
    t.file("sub/deep/x.bin", 70_000);
    t.symlink("current", "sub/deep");
    t.mtime("big.img", 1_650_000_000, 123_456_789);
}

#[test]
fn both_directions_copy_exactly_and_rerun_incrementally() {
    for dir in BOTH {
        let case = Case::new(dir);
        small_tree(&case.source());
        let server = case.serve();
        let first = case.ok(&server, &[]);
        assert_same_tree(&case.source(), &case.target());
        assert_eq!(rsync_itemize(&case.source(), &case.target()), "", "{dir:?}");
        assert_eq!(first["files_total"], 42, "{dir:?}: {first}");
        assert!(
            !case.target().join(".haul").exists() || dir == Direction::Push,
            "{dir:?}: a complete pull leaves no state in its destination"
        );

        // A no-change re-run moves no file data.
        let again = case.ok(&server, &[]);
        assert_eq!(again["bytes_sent"], 0, "{dir:?}: {again}");
        assert_eq!(again["files_unchanged"], 42, "{dir:?}: {again}");

        // One changed mebibyte in the big file sends about one chunk.
        let big = case.source().join("big.img");
        let mut data = std::fs::read(&big).unwrap();
        data[10 * MIB as usize..11 * MIB as usize].fill(0xA5);
        std::fs::write(&big, &data).unwrap();
        let changed = case.ok(&server, &[]);
        assert_same_tree(&case.source(), &case.target());
        let sent = changed["bytes_sent"].as_u64().unwrap();
        assert!(
            sent <= 8 * MIB,
            "{dir:?}: sent {sent} bytes for one changed MiB"
        );
    }
}

#[test]
fn both_directions_rename_aside_and_mirror_with_delete() {
    for dir in BOTH {
        let case = Case::new(dir);
        small_tree(&case.source());
        let server = case.serve();
        case.ok(&server, &[]);

        // Rename aside: the old copy of mail/ofuser stays as ofuser.1, a fresh one is made
        // from chunks the old copy holds.
        let aside = case.ok(&server, &["--rename-aside", "mail/ofuser"]);
        assert!(
            case.target().join("mail/ofuser.1/u0.db").exists(),
            "{dir:?}"
        );
        assert_same_tree(
            &case.source().join("mail/ofuser"),
            &case.target().join("mail/ofuser"),
        );
        let to = aside["renamed_aside"][0]["to"].as_str().unwrap_or_default();
        assert!(to.ends_with("mail/ofuser.1"), "{dir:?}: {aside}");

        // --delete removes what the source lacks, keeps renamed-aside copies.
        std::fs::write(case.target().join("stray.txt"), b"not in the source").unwrap();
        std::fs::remove_file(case.source().join("mail/ofuser/u3.db")).unwrap();
        let mirror = case.ok(&server, &["--delete"]);
        assert!(
            !case.target().join("stray.txt").exists(),
            "{dir:?}: {mirror}"
        );
        assert!(!case.target().join("mail/ofuser/u3.db").exists(), "{dir:?}");
        assert!(
            case.target().join("mail/ofuser.1/u3.db").exists(),
            "{dir:?}"
        );
        assert_same_tree(
            &case.source().join("mail/ofuser"),
            &case.target().join("mail/ofuser"),
        );
    }
}

#[test]
fn both_directions_resume_from_verified_chunks_after_the_client_is_killed() {
    for dir in BOTH {
        let case = Case::new(dir);
        let mut t = TreeBuilder::new(&case.source(), 41);
        t.file("layers/base.vhdx", (1024 * MIB) as usize);
        for i in 0..20 {
            t.file(format!("small/f{i}"), 5000 + i);
        }
        let total = 1024 * MIB;
        let server = case.serve();
        let mut client = case.spawn(&server, &[]);
        let seen = kill_when(&mut client, &case.receiver_root(), 600 * MIB);
        assert!(
            !case.target().join("layers/base.vhdx").exists(),
            "{dir:?}: nothing partial under its final name"
        );
        std::thread::sleep(Duration::from_millis(300));
        let resumed = case.ok(&server, &[]);
        assert_same_tree(&case.source(), &case.target());
        let sent = resumed["bytes_sent"].as_u64().unwrap();
        assert!(
            sent <= total - seen + WINDOW,
            "{dir:?}: the resumed run sent {sent} bytes although {seen} of {total} were verified"
        );
    }
}

#[test]
fn both_directions_pause_on_a_full_disk_and_continue_after_expansion() {
    for dir in BOTH {
        let case = Case::with_small_target(dir, "64m");
        let mut t = TreeBuilder::new(&case.source(), 5);
        for name in ["a", "b", "c"] {
            t.file(format!("layers/{name}.vhdx"), (30 * MIB) as usize);
        }
        t.file("wphost.db", 4321);
        let server = case.serve();
        let out = case.run(&server, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{dir:?}: {err}");
        assert!(
            err.contains("space") && err.to_lowercase().contains("expand"),
            "{dir:?}: {err}"
        );
        assert!(
            !case.target().join("layers/c.vhdx").exists() || {
                // Whatever is under a final name is whole.
                std::fs::metadata(case.target().join("layers/c.vhdx"))
                    .unwrap()
                    .len()
                    == 30 * MIB
            },
            "{dir:?}"
        );
        case._disk.as_ref().unwrap().grow("256m");
        let done = case.ok(&server, &[]);
        assert_same_tree(&case.source(), &case.target());
        let sent = done["bytes_sent"].as_u64().unwrap();
        assert!(
            sent < 90 * MIB,
            "{dir:?}: the run after expansion sent {sent} bytes: verified data was sent again"
        );
    }
}

#[test]
fn a_pull_needs_read_scope_and_a_push_needs_write_scope() {
    let case = Case::new(Direction::Pull);
    small_tree(&case.root.join("po1/data"));
    let read = case.root.join("../read.token");
    let write = case.root.join("../write.token");
    for (file, text) in [(&read, "reader-token"), (&write, "writer-token")] {
        haul_testing::cmd::write_secret(file, text);
    }
    let grant =
        |file: &Path, scope: &str| -> OsString { format!("po1={},{scope}", file.display()).into() };
    let server = haul().serve_with(
        &case.root,
        &case.server_cfg,
        &[
            "--grant".into(),
            grant(&read, "read"),
            "--grant".into(),
            grant(&write, "write"),
        ],
    );
    let pull = |token: &Path, dst: &Path| {
        haul().run(
            &case.client_cfg,
            &[
                OsStr::new("pull"),
                OsStr::new(&server.url("data")),
                dst.as_os_str(),
                OsStr::new("--fingerprint"),
                OsStr::new(&server.fingerprint),
                OsStr::new("--token-file"),
                token.as_os_str(),
            ],
        )
    };
    let dst = case.local.join("copy");
    let refused = pull(&write, &dst);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert!(err.contains("read scope"), "{err}");
    assert!(!dst.join("big.img").exists());
    assert_success(&pull(&read, &dst));
    assert_same_tree(&case.root.join("po1/data"), &dst);

    let push = haul().run(
        &case.client_cfg,
        &[
            OsStr::new("push"),
            dst.as_os_str(),
            OsStr::new(&server.url("again")),
            OsStr::new("--fingerprint"),
            OsStr::new(&server.fingerprint),
            OsStr::new("--token-file"),
            read.as_os_str(),
        ],
    );
    let err = String::from_utf8_lossy(&push.stderr);
    assert_eq!(push.status.code(), Some(1), "{err}");
    assert!(err.contains("write scope"), "{err}");
    assert!(!case.root.join("po1/again").exists());
}

/// A serving host that breaks the protocol on purpose, built from haul's own crates: the
/// pulling client must refuse every path that leaves its destination and write nothing
/// outside it.
mod hostile_host {
    use super::*;
    use bytes::Bytes;
    use haul_proto::{Entry, EntryKind, FrameDecoder, Hello, Limits, Message, Meta};

    fn meta(mode: u32) -> Meta {
        Meta {
            mode,
            mtime_sec: 1_700_000_000,
            mtime_nsec: 0,
        }
    }

    fn entry(id: u64, kind: EntryKind, path: &[u8], size: u64, target: &[u8]) -> Message {
        Message::Entry(Entry {
            id,
            kind,
            path: Bytes::copy_from_slice(path),
            size,
            meta: meta(if kind == EntryKind::Dir { 0o755 } else { 0o644 }),
            link_target: Bytes::copy_from_slice(target),
            uid: 0,
            gid: 0,
            rdev: 0,
            source_stamp: 0,
            xattrs: Vec::new(),
        })
    }

    /// A QUIC endpoint on loopback with an ephemeral certificate, to play a serving host by
    /// hand: its runtime, endpoint, address and the fingerprint a client pins.
    fn fake_host() -> (
        tokio::runtime::Runtime,
        quinn::Endpoint,
        std::net::SocketAddr,
        String,
    ) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let identity = haul_net::Identity::ephemeral().unwrap();
        let fingerprint = identity.fingerprint.to_string();
        let endpoint = rt.block_on(async {
            haul_net::server_endpoint("127.0.0.1:0".parse().unwrap(), &identity).unwrap()
        });
        let addr = endpoint.local_addr().unwrap();
        (rt, endpoint, addr, fingerprint)
    }

    struct Host {
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        decoder: FrameDecoder,
    }

    impl Host {
        async fn next(&mut self) -> Option<Message> {
            loop {
                if let Some(frame) = self.decoder.next_frame().unwrap() {
                    return Some(Message::decode(frame, &Limits::default()).unwrap());
                }
                match tokio::time::timeout(
                    Duration::from_secs(10),
                    self.recv.read_chunk(1 << 16, true),
                )
                .await
                {
                    Ok(Ok(Some(chunk))) => self.decoder.push(&chunk.bytes),
                    _ => return None,
                }
            }
        }
        async fn send(&mut self, msg: &Message) {
            let _ = self.send.write_all(&msg.encode()).await;
        }
    }

    #[test]
    fn a_hostile_serving_host_cannot_write_outside_the_pull_destination() {
        let tmp = tempfile::tempdir().unwrap();
        let dst = tmp.path().join("dst");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("sentinel"), b"untouched").unwrap();
        std::fs::create_dir_all(&dst).unwrap();
        // A symlink already in the destination, pointing out of it.
        std::os::unix::fs::symlink(&outside, dst.join("out")).unwrap();
        let token = tmp.path().join("token");
        haul_testing::cmd::write_secret(&token, "hostile-host");

        let (rt, endpoint, addr, fingerprint) = fake_host();
        let host = rt.spawn(async move {
            let conn = endpoint.accept().await.unwrap().await.unwrap();
            let (send, recv) = conn.accept_bi().await.unwrap();
            let mut h = Host {
                send,
                recv,
                decoder: FrameDecoder::new(Limits::default()),
            };
            let Some(Message::Hello(ask)) = h.next().await else {
                panic!("the client did not say hello");
            };
            assert!(ask.has(Hello::PULL));
            let hello_chunk = ask.chunk_size;
            let mut hello = ask.clone();
            hello.flags &= !Hello::PULL;
            hello.dest = Bytes::new();
            h.send(&Message::Hello(hello)).await;
            let Some(Message::Welcome(_)) = h.next().await else {
                panic!("no welcome");
            };
            let evil: [(&[u8], EntryKind, &[u8]); 6] = [
                (b"../escape", EntryKind::File, b""),
                (b"/etc/haul-pwned", EntryKind::File, b""),
                (b".haul/partial/x", EntryKind::File, b""),
                (b"out/pwned", EntryKind::File, b""),
                (b"a/../../b", EntryKind::Dir, b""),
                (b"link", EntryKind::Symlink, b"/etc/passwd"),
            ];
            let mut failed = 0;
            for (i, (path, kind, target)) in evil.iter().enumerate() {
                h.send(&entry(i as u64 + 1, *kind, path, 5, target)).await;
            }
            h.send(&Message::EndOfEntries).await;
            // Every evil entry but the symlink (a link's target is data, not a path the
            // receiver follows) is refused.
            while let Some(msg) = h.next().await {
                match msg {
                    Message::Failed(f) => {
                        eprintln!("refused entry {}: {}", f.id, f.message);
                        failed += 1
                    }
                    Message::Finished(_) => break,
                    // Send what is asked for, honestly: the file still cannot be installed
                    // through the symlink.
                    Message::Need(need) => {
                        let data = b"pwned";
                        let layout = haul_proto::ChunkLayout::new(5, hello_chunk);
                        let chunk = haul_proto::Chunk {
                            id: need.id,
                            index: 0,
                            hash: haul_manifest::chunk_hash(&layout, 0, data),
                            zero: false,
                            compressed: false,
                            data: Bytes::from_static(data),
                        };
                        let mut stream = conn.open_uni().await.unwrap();
                        stream
                            .write_all(&Message::Chunk(chunk).encode())
                            .await
                            .unwrap();
                        stream.finish().unwrap();
                        h.send(&Message::FileDone(haul_proto::FileDone {
                            id: need.id,
                            hash: *blake3::hash(data).as_bytes(),
                            chunks_sent: 1,
                        }))
                        .await;
                    }
                    _ => {}
                }
            }
            conn.close(0u32.into(), b"bye");
            failed
        });
        let out = haul().run(
            &tmp.path().join("cfg"),
            &[
                OsStr::new("pull"),
                OsStr::new(&format!("quic://{addr}/x")),
                dst.as_os_str(),
                OsStr::new("--fingerprint"),
                OsStr::new(&fingerprint),
                OsStr::new("--token-file"),
                token.as_os_str(),
            ],
        );
        let failed = rt.block_on(host).unwrap();
        assert!(
            failed >= 5,
            "the client refused only {failed} hostile entries"
        );
        assert!(!out.status.success(), "a pull of refused entries must fail");
        assert_eq!(
            std::fs::read(outside.join("sentinel")).unwrap(),
            b"untouched"
        );
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
        assert!(!tmp.path().join("escape").exists());
        assert!(!Path::new("/etc/haul-pwned").exists());
        if let Ok(link) = std::fs::read_link(dst.join("link")) {
            assert_eq!(link, Path::new("/etc/passwd"), "a link is made as a link");
        }
    }

    /// A receiver of an older release cannot parse a newer hello and hangs up: the client
    /// says that this is the likely reason, naming its own protocol version.
    #[test]
    fn a_receiver_that_hangs_up_on_the_hello_is_named_as_likely_older() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("f"), b"x").unwrap();
        let token = tmp.path().join("token");
        haul_testing::cmd::write_secret(&token, "old-host");
        let (rt, endpoint, addr, fingerprint) = fake_host();
        let host = rt.spawn(async move {
            let conn = endpoint.accept().await.unwrap().await.unwrap();
            let (_send, mut recv) = conn.accept_bi().await.unwrap();
            let _ = recv.read_chunk(1 << 16, true).await;
            // What a v5 receiver did with a v6 hello.
            conn.close(2u32.into(), b"malformed frame: 42 trailing bytes");
            tokio::time::sleep(Duration::from_millis(200)).await;
        });
        let out = haul().run(
            &tmp.path().join("cfg"),
            &[
                OsStr::new("push"),
                src.as_os_str(),
                OsStr::new(&format!("quic://{addr}/x")),
                OsStr::new("--fingerprint"),
                OsStr::new(&fingerprint),
                OsStr::new("--token-file"),
                token.as_os_str(),
            ],
        );
        rt.block_on(host).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("older haul release")
                && err.contains(&haul_proto::PROTOCOL_VERSION.to_string()),
            "{err}"
        );
    }
}
