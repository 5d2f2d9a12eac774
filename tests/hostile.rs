//! A hostile client against a real `haul serve`: a small client built from haul's own crates
//! (`haul_proto` frames, `haul_net::connect` for QUIC and pinning) that breaks the protocol on
//! purpose. Each test function runs one server and many connections, then checks the verdict
//! that must hold whatever a client sent (see `haul_testing::hostile::Arena::verdict`): the
//! server still runs, nothing outside the root changed, nothing partial or wrong sits under a
//! final name, and an honest push still works.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use haul_proto::{
    Chunk, ChunkLayout, Entry, EntryKind, FileDone, FrameDecoder, Hash, Hello, Limits, Message,
    Meta, PROTOCOL_VERSION, RefuseReason,
};
use haul_testing::Haul;
use haul_testing::hostile::{Arena, TOKEN};

/// The smallest chunk size: multi-chunk files stay small.
const CHUNK: u32 = 64 << 10;
/// How long any single answer may take before the test calls the server stuck.
const WAIT: Duration = Duration::from_secs(10);

fn haul() -> Haul {
    Haul::new(env!("CARGO_BIN_EXE_haul"))
}

fn meta() -> Meta {
    Meta {
        mode: 0o644,
        mtime_sec: 1_700_000_000,
        mtime_nsec: 0,
    }
}

fn dir_meta() -> Meta {
    Meta {
        mode: 0o755,
        ..meta()
    }
}

fn hello(token: &[u8], dest: &[u8]) -> Message {
    Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        token: Bytes::copy_from_slice(token),
        dest: Bytes::copy_from_slice(dest),
        chunk_size: CHUNK,
        flags: 0,
        rename_aside: Vec::new(),
        filters: Vec::new(),
        max_delete: u64::MAX,
        holder: Bytes::new(),
        snapshot: Bytes::new(),
    })
}

fn entry(id: u64, kind: EntryKind, path: &[u8], size: u64) -> Message {
    Message::Entry(Entry {
        id,
        kind,
        path: Bytes::copy_from_slice(path),
        size,
        meta: if kind == EntryKind::Dir {
            dir_meta()
        } else {
            meta()
        },
        link_target: Bytes::new(),
        uid: 0,
        gid: 0,
        rdev: 0,
        source_stamp: 0,
        xattrs: Vec::new(),
    })
}

/// Deterministic filler so file contents differ from each other.
fn content(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The chunks of `data` (index, bytes, hash) and the whole-file hash.
fn chunks_of(data: &[u8]) -> (Vec<(u64, Bytes, Hash)>, Hash) {
    let layout = ChunkLayout::new(data.len() as u64, CHUNK);
    let chunks: Vec<_> = (0..layout.count())
        .map(|i| {
            let start = layout.offset(i) as usize;
            let part = &data[start..start + layout.len(i).unwrap() as usize];
            let hash = haul_manifest::chunk_hash(&layout, i, part);
            (i, Bytes::copy_from_slice(part), hash)
        })
        .collect();
    let hashes: Vec<Hash> = chunks.iter().map(|c| c.2).collect();
    let file = haul_manifest::file_hash(&layout, &hashes).unwrap();
    assert_eq!(file, *blake3::hash(data).as_bytes());
    (chunks, file)
}

/// Why the control stream gave no message.
#[derive(Debug)]
enum Ended {
    /// The server finished its side of the stream.
    Eof,
    /// The connection is gone.
    Lost(quinn::ReadError),
    /// Nothing arrived within `WAIT`.
    Silent,
}

/// One connection with its control stream.
struct Client {
    conn: quinn::Connection,
    _endpoint: quinn::Endpoint,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
    /// Messages read while waiting for another entry's answer.
    stash: VecDeque<Message>,
}

impl Client {
    async fn connect(arena: &Arena) -> Client {
        let addr: SocketAddr = arena.server.addr.parse().unwrap();
        let fp = arena.server.fingerprint.parse().unwrap();
        let connected = haul_net::connect(addr, &arena.server.addr, &haul_net::Trust::Pinned(fp))
            .await
            .unwrap();
        let conn = connected.connection;
        let (send, recv) = conn.open_bi().await.unwrap();
        Client {
            conn,
            _endpoint: connected.endpoint,
            send,
            recv,
            decoder: FrameDecoder::new(Limits::default()),
            stash: VecDeque::new(),
        }
    }

    /// What a client holding the right token presents on this connection: the proof bound
    /// to its TLS session.
    fn proof(&self) -> Vec<u8> {
        haul_net::present(TOKEN, haul_net::channel_binding(&self.conn).as_ref())
    }

    /// Connects and says hello with the right token; the server must welcome us.
    async fn session(arena: &Arena, dest: &str) -> Client {
        let mut c = Client::connect(arena).await;
        c.send(&hello(&c.proof(), dest.as_bytes())).await;
        match c.next().await {
            Ok(Message::Welcome(_)) => {}
            other => panic!("expected a welcome for {dest:?}, got {other:?}"),
        }
        c
    }

    /// Like `session`, and creates the destination directory (entry 1), as the real sender
    /// does first.
    async fn session_with_dest(arena: &Arena, dest: &str) -> Client {
        let mut c = Client::session(arena, dest).await;
        c.send(&entry(1, EntryKind::Dir, b"", 0)).await;
        let answer = c.answer(1).await;
        assert!(
            matches!(answer, Message::Installed(_)),
            "creating {dest:?}: {answer:?}"
        );
        c
    }

    async fn raw(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.unwrap();
    }

    async fn send(&mut self, msg: &Message) {
        self.raw(&msg.encode()).await;
    }

    /// The next control message from the server.
    async fn next(&mut self) -> Result<Message, Ended> {
        if let Some(msg) = self.stash.pop_front() {
            return Ok(msg);
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(frame) = self.decoder.next_frame().unwrap() {
                return Ok(Message::decode(frame, &Limits::default()).unwrap());
            }
            match tokio::time::timeout_at(deadline, self.recv.read_chunk(64 << 10, true)).await {
                Err(_) => return Err(Ended::Silent),
                Ok(Ok(Some(chunk))) => self.decoder.push(&chunk.bytes),
                Ok(Ok(None)) => return Err(Ended::Eof),
                Ok(Err(e)) => return Err(Ended::Lost(e)),
            }
        }
    }

    /// The next message about entry `id` that resolves it or asks for chunks (`Need`,
    /// `Installed`, `Failed`); `Have`s for it and messages about other entries are kept.
    async fn about(&mut self, id: u64) -> Message {
        let mut skipped = VecDeque::new();
        let found = loop {
            let msg = match self.next().await {
                Ok(msg) => msg,
                Err(e) => panic!("waiting for an answer about entry {id}: {e:?}"),
            };
            let mine = match &msg {
                Message::Need(n) => n.id == id,
                Message::Installed(i) => i.id == id,
                Message::Failed(f) => f.id == id,
                _ => false,
            };
            if mine {
                break msg;
            }
            skipped.push_back(msg);
        };
        skipped.extend(self.stash.drain(..));
        self.stash = skipped;
        found
    }

    /// The message that resolves entry `id` (`Installed` or `Failed`).
    async fn answer(&mut self, id: u64) -> Message {
        loop {
            let msg = self.about(id).await;
            if !matches!(msg, Message::Need(_)) {
                return msg;
            }
        }
    }

    /// Sends chunks on one new data stream and finishes it.
    async fn chunks(&self, chunks: &[Chunk]) {
        let mut stream = self.conn.open_uni().await.unwrap();
        for chunk in chunks {
            stream
                .write_all(&Message::Chunk(chunk.clone()).encode())
                .await
                .unwrap();
        }
        stream.finish().unwrap();
    }

    /// Announces a file and sends what the server needs, honestly; returns the resolution.
    async fn file(&mut self, id: u64, path: &str, data: &[u8]) -> Message {
        self.send(&entry(
            id,
            EntryKind::File,
            path.as_bytes(),
            data.len() as u64,
        ))
        .await;
        let need = match self.about(id).await {
            Message::Need(need) => need,
            resolved => return resolved,
        };
        let (all, file_hash) = chunks_of(data);
        let wanted: Vec<Chunk> = all
            .into_iter()
            .filter(|(i, _, _)| need.ranges.iter().any(|(s, n)| *i >= *s && *i < s + n))
            .map(|(index, data, hash)| Chunk {
                id,
                index,
                hash,
                zero: false,
                compressed: false,
                data,
            })
            .collect();
        if !wanted.is_empty() {
            self.chunks(&wanted).await;
        }
        self.send(&Message::FileDone(FileDone {
            id,
            hash: file_hash,
            chunks_sent: wanted.len() as u64,
        }))
        .await;
        self.answer(id).await
    }

    /// Ends the session cleanly: `EndOfEntries`, then `Finished`, then close.
    async fn end(mut self) {
        self.send(&Message::EndOfEntries).await;
        loop {
            match self.next().await {
                Ok(Message::Finished(_)) => break,
                Ok(Message::Need(_) | Message::Have(_)) => {}
                other => panic!("expected Finished, got {other:?}"),
            }
        }
        let _ = self.send.finish();
        self.conn.close(0u32.into(), b"done");
    }

    /// Waits for the server to close the connection; returns (code, reason), code `None` when
    /// the connection ended some other way (reset, timeout).
    async fn closed_by_server(&self) -> (Option<u64>, String) {
        let err = tokio::time::timeout(WAIT, self.conn.closed())
            .await
            .expect("the server did not close the connection");
        match err {
            quinn::ConnectionError::ApplicationClosed(close) => (
                Some(close.error_code.into_inner()),
                String::from_utf8_lossy(&close.reason).into_owned(),
            ),
            other => (None, other.to_string()),
        }
    }
}

fn failed_message(msg: &Message) -> &str {
    match msg {
        Message::Failed(f) => &f.message,
        other => panic!("expected Failed, got {other:?}"),
    }
}

/// Asserts the server closed the connection as a protocol error (code 2) whose reason
/// contains `why`.
async fn assert_protocol_close(c: &Client, case: &str, why: &str) {
    let (code, reason) = c.closed_by_server().await;
    assert_eq!(code, Some(2), "{case}: closed with {code:?} {reason:?}");
    assert!(
        reason.contains(why),
        "{case}: the close reason {reason:?} does not say {why:?}"
    );
}

/// Asserts the server closed the connection without ever sending a message.
async fn assert_dropped_silently(mut c: Client, case: &str) {
    match c.next().await {
        Err(Ended::Lost(quinn::ReadError::ConnectionLost(_)) | Ended::Eof) => {}
        other => panic!("{case}: expected the connection to be dropped, got {other:?}"),
    }
    let (code, reason) = c.closed_by_server().await;
    assert!(code.is_some(), "{case}: ended with {reason}");
}

/// Cases 1-3: frames that are too large, garbage, and messages cut short, before and after
/// the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_end_the_connection_not_the_server() {
    let mut arena = Arena::start(haul(), |_, _| {});

    // 1. Oversized frame before the hello: refused before anything is buffered for it.
    let mut c = Client::connect(&arena).await;
    c.raw(&[0xff, 0xff, 0xff, 0xff, 1, 0, 0]).await;
    assert_dropped_silently(c, "oversized frame before hello").await;

    // 1b. Oversized frame after the welcome: a protocol error naming the limit.
    let mut c = Client::session(&arena, "m1").await;
    c.raw(&[0xff, 0xff, 0xff, 0xff, 4]).await;
    assert_protocol_close(&c, "oversized frame", "exceeds the limit").await;

    // 2. Garbage before the hello (an HTTP request, as a port scanner would send).
    let mut c = Client::connect(&arena).await;
    c.raw(b"GET / HTTP/1.1\r\nHost: haul\r\n\r\n").await;
    assert_dropped_silently(c, "HTTP garbage").await;

    // 2b. Garbage after the welcome: a frame of an unknown type, then a message the server
    // itself sends, then a second hello.
    let mut c = Client::session(&arena, "m2").await;
    c.raw(&[0, 0, 0, 4, 0xee, 1, 2, 3]).await;
    assert_protocol_close(&c, "unknown message type", "unknown message type").await;
    let mut c = Client::session(&arena, "m2").await;
    c.send(&Message::Finished(haul_proto::Finished {
        installed: 1,
        failed: 0,
        not_applied: Default::default(),
    }))
    .await;
    assert_protocol_close(&c, "Finished from the client", "unexpected Finished").await;
    let mut c = Client::session(&arena, "m2").await;
    c.send(&hello(TOKEN, b"m2")).await;
    assert_protocol_close(&c, "second hello", "Hello").await;
    let mut c = Client::session(&arena, "m2").await;
    c.raw(&[0, 0, 0, 0]).await;
    assert_protocol_close(&c, "empty frame", "empty frame").await;
    // An entry before any hello.
    let mut c = Client::connect(&arena).await;
    c.send(&entry(1, EntryKind::File, b"early", 5)).await;
    assert_dropped_silently(c, "entry before hello").await;

    // 3. A hello cut short, then the stream finished.
    let mut c = Client::connect(&arena).await;
    let whole = hello(TOKEN, b"m3").encode();
    c.raw(&whole[..whole.len() - 3]).await;
    c.send.finish().unwrap();
    assert_dropped_silently(c, "truncated hello").await;

    // 3b. An entry cut short after the welcome, then the stream finished.
    let mut c = Client::session(&arena, "m3").await;
    let whole = entry(1, EntryKind::File, b"cut", 100).encode();
    c.raw(&whole[..whole.len() - 5]).await;
    c.send.finish().unwrap();
    assert_protocol_close(&c, "truncated entry", "stream ended inside a frame").await;

    // The server still serves: a well-behaved session on the same server.
    let mut c = Client::session_with_dest(&arena, "m-ok").await;
    let data = content(1, 5000);
    let answer = c.file(2, "fine.txt", &data).await;
    assert!(matches!(answer, Message::Installed(_)), "{answer:?}");
    arena.allow("m-ok/fine.txt", &data);
    c.end().await;

    tokio::task::spawn_blocking(move || arena.verdict())
        .await
        .unwrap();
}

/// Cases 4-6: paths that leave the root or enter the receiver's own state, a target-side
/// symlink that points outside, and a wrong token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_out_of_the_root_are_refused() {
    let mut arena = Arena::start(haul(), |root, outside| {
        std::fs::create_dir(root.join("p5")).unwrap();
        std::os::unix::fs::symlink(outside, root.join("p5/link")).unwrap();
    });
    let outside = arena.outside.clone();

    // 6. A wrong token, and none at all: refused, nothing created. Then what a relay could
    // have seen: the right token itself (sent bare, as an older client did), and the proof
    // another connection presented, replayed.
    let other = Client::connect(&arena).await;
    let replayed = other.proof();
    for token in [
        &b"hostile-test-tokem"[..],
        b"",
        &[b'x'; 1024],
        TOKEN,
        replayed.as_slice(),
    ] {
        let mut c = Client::connect(&arena).await;
        c.send(&hello(token, b"p6")).await;
        match c.next().await {
            Ok(Message::Refused(r)) => {
                assert_eq!(r.reason, RefuseReason::BadToken, "{r:?}");
                assert!(r.message.contains("token"), "{r:?}");
            }
            other => panic!("wrong token {token:?}: expected Refused, got {other:?}"),
        }
        // Nothing more is accepted: entries after a refusal end the connection.
        c.send(&entry(1, EntryKind::Dir, b"", 0)).await;
        c.closed_by_server().await;
    }
    assert!(!arena.root.join("p6").exists());
    // The proof is good on its own connection: what the refusals above refused was the
    // replay, not a malformed proof.
    let mut other = other;
    other.send(&hello(&replayed, b"p6")).await;
    assert!(
        matches!(other.next().await, Ok(Message::Welcome(_))),
        "the proof on its own connection"
    );
    other.end().await;
    std::fs::remove_dir(arena.root.join("p6")).ok();

    // 4a. Destinations that leave the root are refused at the hello.
    let abs_outside = outside.as_os_str().as_encoded_bytes().to_vec();
    for dest in [
        &b"../outside"[..],
        &abs_outside,
        b".haul/staging",
        b"a//b",
        b"a/\0b",
    ] {
        let mut c = Client::connect(&arena).await;
        c.send(&hello(&c.proof(), dest)).await;
        match c.next().await {
            Ok(Message::Refused(r)) => assert_eq!(r.reason, RefuseReason::BadPath, "{r:?}"),
            other => panic!(
                "destination {:?}: expected Refused, got {other:?}",
                String::from_utf8_lossy(dest)
            ),
        }
        c.conn.close(0u32.into(), b"bye");
    }

    // 4b. Entries that leave the root: each fails with a message naming the problem, and the
    // session goes on.
    let mut c = Client::session_with_dest(&arena, "p4").await;
    let mut abs_sentinel = abs_outside.clone();
    abs_sentinel.extend_from_slice(b"/sentinel");
    let bad: [(&[u8], &str); 9] = [
        (b"../outside/sentinel", "'..'"),
        (b"x/../../outside/sentinel", "'..'"),
        (&abs_sentinel, "absolute"),
        (b"/etc/passwd", "absolute"),
        (b"a//b", "empty component"),
        (b"trailing/", "empty component"),
        (b"./dot", "'.'"),
        (b"nul\0byte", "NUL"),
        (b".haul/staging/x", ".haul"),
    ];
    let mut id = 1;
    for (path, why) in bad {
        for kind in [EntryKind::File, EntryKind::Dir, EntryKind::Symlink] {
            id += 1;
            let mut msg = entry(id, kind, path, 5);
            if let Message::Entry(e) = &mut msg {
                e.link_target = Bytes::from_static(b"target");
            }
            c.send(&msg).await;
            let answer = c.answer(id).await;
            let text = failed_message(&answer);
            assert!(
                text.contains("refused path") && text.contains(why),
                "{kind:?} {:?}: {text:?} does not say {why:?}",
                String::from_utf8_lossy(path)
            );
        }
    }
    // A long path and a long name are refused too.
    id += 1;
    c.send(&entry(id, EntryKind::File, &[b'n'; 300], 5)).await;
    assert!(failed_message(&c.answer(id).await).contains("255"));
    id += 1;
    let data = content(4, 777);
    let answer = c.file(id, "still-fine.txt", &data).await;
    assert!(matches!(answer, Message::Installed(_)), "{answer:?}");
    arena.allow("p4/still-fine.txt", &data);
    c.end().await;

    // 5. Through a target-side symlink that points outside: files (one and several chunks),
    // a directory and a link under it all fail, naming the link.
    let mut c = Client::session_with_dest(&arena, "p5").await;
    let answer = c.file(2, "link/evil", b"PWNED!").await;
    let text = failed_message(&answer);
    assert!(text.contains("symbolic link"), "{text:?}");
    let big = content(5, 3 * CHUNK as usize + 10);
    let answer = c.file(3, "link/big", &big).await;
    let text = failed_message(&answer);
    assert!(text.contains("symbolic link"), "{text:?}");
    c.send(&entry(4, EntryKind::Dir, b"link/sub", 0)).await;
    assert!(failed_message(&c.answer(4).await).contains("symbolic link"));
    let mut ln = entry(5, EntryKind::Symlink, b"link/ln", 0);
    if let Message::Entry(e) = &mut ln {
        e.link_target = Bytes::from_static(b"/etc/passwd");
    }
    c.send(&ln).await;
    assert!(failed_message(&c.answer(5).await).contains("symbolic link"));

    // 5b. A symlink the client itself plants, then a file through it.
    let mut esc = entry(6, EntryKind::Symlink, b"esc", 0);
    if let Message::Entry(e) = &mut esc {
        e.link_target = Bytes::from(abs_outside.clone());
    }
    c.send(&esc).await;
    let answer = c.answer(6).await;
    assert!(matches!(answer, Message::Installed(_)), "{answer:?}");
    let answer = c.file(7, "esc/sentinel", b"PWNED!").await;
    assert!(failed_message(&answer).contains("symbolic link"));
    c.send(&entry(8, EntryKind::Dir, b"esc/d", 0)).await;
    assert!(failed_message(&c.answer(8).await).contains("symbolic link"));

    // 5c. The destination itself as a file or a link, when the destination is the root.
    c.end().await;
    let mut c = Client::session(&arena, "").await;
    let answer = c.file(1, "", b"root as a file").await;
    failed_message(&answer);
    let mut root_link = entry(2, EntryKind::Symlink, b"", 0);
    if let Message::Entry(e) = &mut root_link {
        e.link_target = Bytes::from(abs_outside.clone());
    }
    c.send(&root_link).await;
    failed_message(&c.answer(2).await);
    c.end().await;
    assert!(arena.root.is_dir() && !arena.root.is_symlink());

    tokio::task::spawn_blocking(move || arena.verdict())
        .await
        .unwrap();
}

/// Case 7: thousands of tiny data streams (10,000). Empty ones are harmless and the session goes on;
/// a stream that ends inside a frame is a protocol error; streams left open are bounded by
/// the QUIC stream limit. Memory stays bounded throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_data_streams_is_survived() {
    let mut arena = Arena::start(haul(), |_, _| {});
    let mut c = Client::session_with_dest(&arena, "f7").await;
    let rss_before = arena.server_rss_kib().expect("the server's memory");

    let started = Instant::now();
    for _ in 0..10_000 {
        let mut stream = c.conn.open_uni().await.unwrap();
        stream.finish().unwrap();
    }
    // The session still works, with a file of several chunks; its answer also proves every
    // stream before it was taken in.
    let data = content(7, 2 * CHUNK as usize + 99);
    let answer = c.file(2, "after-flood.bin", &data).await;
    assert!(matches!(answer, Message::Installed(_)), "{answer:?}");
    let rss_after = arena.server_rss_kib().expect("the server's memory");
    eprintln!(
        "10,000 empty streams: {:?}, server RSS {rss_before} KiB -> {rss_after} KiB",
        started.elapsed()
    );
    assert!(
        rss_after < rss_before + 64 * 1024,
        "the server grew from {rss_before} KiB to {rss_after} KiB for 10,000 empty streams"
    );
    arena.allow("f7/after-flood.bin", &data);
    // Once warm, more streams must not cost more memory: a session's footprint may not grow
    // with the number of streams it ever opened, or a client opening them in a loop (about
    // 200,000 a second over loopback) exhausts the server.
    for _ in 0..20_000 {
        let mut stream = c.conn.open_uni().await.unwrap();
        stream.finish().unwrap();
    }
    let answer = c.file(3, "after-more.bin", b"sync").await;
    assert!(matches!(answer, Message::Installed(_)), "{answer:?}");
    arena.allow("f7/after-more.bin", b"sync");
    let rss_more = arena.server_rss_kib().expect("the server's memory");
    eprintln!("20,000 more empty streams: server RSS {rss_after} KiB -> {rss_more} KiB");
    // Checked at the end, so the cases below still run if this fails.

    c.end().await;

    // 7b. Streams of one byte each: the first one to end is a protocol error.
    let c = Client::session_with_dest(&arena, "f7b").await;
    for _ in 0..1000 {
        let Ok(mut stream) = c.conn.open_uni().await else {
            break;
        };
        if stream.write_all(&[0]).await.is_err() || stream.finish().is_err() {
            break;
        }
    }
    assert_protocol_close(&c, "one-byte streams", "stream ended inside a frame").await;

    // 7c. Streams opened and never finished: the server holds at most its stream limit (256)
    // and the client cannot open more, so it cannot make the server hold more.
    let c = Client::session_with_dest(&arena, "f7c").await;
    let mut open = Vec::new();
    for _ in 0..256 {
        let mut stream = c.conn.open_uni().await.unwrap();
        stream.write_all(&[0, 0]).await.unwrap();
        open.push(stream);
    }
    let more = tokio::time::timeout(Duration::from_millis(1500), c.conn.open_uni()).await;
    assert!(more.is_err(), "a 257th concurrent data stream was granted");
    drop(open);
    c.conn.close(0u32.into(), b"bye");

    // 7d. Many small valid chunks on separate streams: each for one small file.
    let mut c = Client::session_with_dest(&arena, "f7d").await;
    for id in 2..202u64 {
        let data = content(id as u8, 10 + id as usize);
        let answer = c.file(id, &format!("small-{id}"), &data).await;
        assert!(matches!(answer, Message::Installed(_)), "{answer:?}");
        arena.allow(format!("f7d/small-{id}"), &data);
    }
    c.end().await;
    let rss_end = arena.server_rss_kib().expect("the server's memory");
    eprintln!("server RSS at the end: {rss_end} KiB");

    tokio::task::spawn_blocking(move || arena.verdict())
        .await
        .unwrap();
    assert!(
        rss_more < rss_after + 8 * 1024,
        "the server grew from {rss_after} KiB to {rss_more} KiB for 20,000 more empty streams \
         in the same session: memory grows with every data stream ever opened"
    );
}

/// Cases 8-10: chunks whose hash lies, files longer than announced, chunks past the end, and
/// a client that vanishes halfway through a file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_chunks_and_vanishing_clients_leave_nothing_under_a_final_name() {
    let mut arena = Arena::start(haul(), |_, _| {});

    // 8. A chunk whose hash does not match its data: the file fails, the session goes on.
    let mut c = Client::session_with_dest(&arena, "d8").await;
    let data = content(8, 1000);
    c.send(&entry(2, EntryKind::File, b"bad-hash", 1000)).await;
    assert!(matches!(c.about(2).await, Message::Need(_)));
    c.chunks(&[Chunk {
        id: 2,
        index: 0,
        hash: [0x55; 32],
        zero: false,
        compressed: false,
        data: Bytes::from(data.clone()),
    }])
    .await;
    let text = failed_message(&c.answer(2).await).to_owned();
    assert!(text.contains("failed verification"), "{text:?}");

    // 8b. Chunks that verify but a whole-file hash that does not.
    c.send(&entry(3, EntryKind::File, b"bad-file-hash", 1000))
        .await;
    assert!(matches!(c.about(3).await, Message::Need(_)));
    let (chunks, _) = chunks_of(&data);
    let (index, bytes, hash) = chunks[0].clone();
    c.chunks(&[Chunk {
        id: 3,
        index,
        hash,
        zero: false,
        compressed: false,
        data: bytes,
    }])
    .await;
    c.send(&Message::FileDone(FileDone {
        id: 3,
        hash: [0x66; 32],
        chunks_sent: 1,
    }))
    .await;
    let text = failed_message(&c.answer(3).await).to_owned();
    assert!(text.contains("whole-file hash differs"), "{text:?}");

    // 8c. A file done with none of its chunks sent (and none held).
    c.send(&entry(4, EntryKind::File, b"never-sent", 1000))
        .await;
    assert!(matches!(c.about(4).await, Message::Need(_)));
    c.send(&Message::FileDone(FileDone {
        id: 4,
        hash: *blake3::hash(&data).as_bytes(),
        chunks_sent: 0,
    }))
    .await;
    let text = failed_message(&c.answer(4).await).to_owned();
    assert!(text.contains("neither sent nor held"), "{text:?}");

    // 8d. The same chunk twice.
    let twice = content(9, 2 * CHUNK as usize);
    c.send(&entry(5, EntryKind::File, b"twice", twice.len() as u64))
        .await;
    assert!(matches!(c.about(5).await, Message::Need(_)));
    let (chunks, _) = chunks_of(&twice);
    let (index, bytes, hash) = chunks[0].clone();
    let first = Chunk {
        id: 5,
        index,
        hash,
        zero: false,
        compressed: false,
        data: bytes,
    };
    c.chunks(&[first.clone(), first]).await;
    // The file fails, names itself and says what happened; nothing is mixed or kept.
    let text = failed_message(&c.answer(5).await).to_owned();
    assert!(
        text.contains("d8/twice") && text.contains("sent twice"),
        "{text:?}"
    );

    let data = content(10, 4321);
    let answer = c.file(6, "good", &data).await;
    assert!(matches!(answer, Message::Installed(_)), "{answer:?}");
    arena.allow("d8/good", &data);
    c.end().await;

    // 9. Chunks that do not fit the announced file: a protocol error each.
    let bad_chunks = [
        (
            10u64,
            0u64,
            11usize,
            "length differs from the announced file size",
        ),
        (10, 1, 10, "index past the end of the file"),
        (10, u64::MAX, 10, "index past the end of the file"),
        (10, 0, 9, "length differs from the announced file size"),
    ];
    for (size, index, len, why) in bad_chunks {
        let mut c = Client::session_with_dest(&arena, "d9").await;
        c.send(&entry(2, EntryKind::File, b"ten", size)).await;
        assert!(matches!(c.about(2).await, Message::Need(_)));
        let data = content(11, len);
        let layout = ChunkLayout::new(len as u64, CHUNK);
        c.chunks(&[Chunk {
            id: 2,
            index,
            hash: haul_manifest::chunk_hash(&layout, 0, &data),
            zero: false,
            compressed: false,
            data: Bytes::from(data),
        }])
        .await;
        assert_protocol_close(&c, why, why).await;
    }
    // A chunk for an entry never announced, and for a directory.
    for (id, why) in [(99u64, "unknown entry 99"), (1, "unknown entry 1")] {
        let c = Client::session_with_dest(&arena, "d9").await;
        c.chunks(&[Chunk {
            id,
            index: 0,
            hash: [0; 32],
            zero: false,
            compressed: false,
            data: Bytes::from_static(b"x"),
        }])
        .await;
        assert_protocol_close(&c, why, why).await;
    }

    // 10. A client that vanishes halfway through a file of four chunks.
    let big = content(12, 4 * CHUNK as usize);
    let mut c = Client::session_with_dest(&arena, "d10").await;
    c.send(&entry(2, EntryKind::File, b"big", big.len() as u64))
        .await;
    assert!(matches!(c.about(2).await, Message::Need(_)));
    let (chunks, _) = chunks_of(&big);
    let half: Vec<Chunk> = chunks[..2]
        .iter()
        .map(|(index, data, hash)| Chunk {
            id: 2,
            index: *index,
            hash: *hash,
            zero: false,
            compressed: false,
            data: data.clone(),
        })
        .collect();
    c.chunks(&half).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.conn.close(0u32.into(), b"");
    drop(c);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !arena.root.join("d10/big").exists(),
        "half a file is under its final name"
    );
    // 10b. Again, vanishing after every chunk but before the file's hash.
    let mut c = Client::session_with_dest(&arena, "d10").await;
    c.send(&entry(2, EntryKind::File, b"big", big.len() as u64))
        .await;
    let need = match c.about(2).await {
        Message::Need(need) => need,
        other => panic!("{other:?}"),
    };
    let rest: Vec<Chunk> = chunks
        .iter()
        .filter(|(i, _, _)| need.ranges.iter().any(|(s, n)| *i >= *s && *i < s + n))
        .map(|(index, data, hash)| Chunk {
            id: 2,
            index: *index,
            hash: *hash,
            zero: false,
            compressed: false,
            data: data.clone(),
        })
        .collect();
    c.chunks(&rest).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.conn.close(0u32.into(), b"");
    drop(c);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !arena.root.join("d10/big").exists(),
        "a file whose hash never came is under its final name"
    );
    // 10c. An honest client resumes it: what the vanished ones sent is reused or resent, and
    // the file is installed whole.
    let mut c = Client::session_with_dest(&arena, "d10").await;
    let answer = c.file(2, "big", &big).await;
    assert!(matches!(answer, Message::Installed(_)), "{answer:?}");
    arena.allow("d10/big", &big);
    c.end().await;

    tokio::task::spawn_blocking(move || arena.verdict())
        .await
        .unwrap();
}

/// Declared sizes that would cost the server memory: a hello frame far larger than any hello
/// can be, from a client that has not proved anything yet, and files of absurd sizes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_declared_sizes_are_refused_cheaply() {
    let arena = Arena::start(haul(), |_, _| {});

    // The largest legal hello (1 KiB token, 4 KiB destination, 256 rename-aside paths of
    // 4 KiB) is about 1 MiB. A client that announces a 16 MiB first frame is not sending a
    // hello: the server should not wait to buffer it before the token is checked.
    let mut c = Client::connect(&arena).await;
    let mut head = (16u32 << 20).to_be_bytes().to_vec();
    head.push(1); // Hello
    c.raw(&head).await;
    c.raw(&vec![0u8; 1 << 20]).await;
    let closed = tokio::time::timeout(WAIT, c.conn.closed()).await;
    // Checked at the end, so the cases below still run if this fails.
    drop(c);

    // A file of u64::MAX bytes: fails, the session goes on.
    let mut c = Client::session_with_dest(&arena, "s1").await;
    c.send(&entry(2, EntryKind::File, b"huge", u64::MAX)).await;
    let answer = c.about(2).await;
    let text = failed_message(&answer);
    assert!(text.contains("chunk"), "{text:?}");
    c.end().await;

    // The same in a dry run, where no partial file is opened first.
    let mut c = Client::connect(&arena).await;
    let mut h = hello(&c.proof(), b"s2");
    if let Message::Hello(h) = &mut h {
        h.flags = Hello::DRY_RUN;
    }
    c.send(&h).await;
    assert!(matches!(c.next().await, Ok(Message::Welcome(_))));
    c.send(&entry(1, EntryKind::File, b"huge", u64::MAX)).await;
    let answer = tokio::time::timeout(WAIT, c.about(1)).await;
    let mut arena = arena;
    assert!(
        arena.server.is_running(),
        "a dry run announcing a file of u64::MAX bytes killed the server (answer: {answer:?})"
    );
    let text = failed_message(answer.as_ref().unwrap());
    assert!(text.contains("more than"), "{text:?}");

    tokio::task::spawn_blocking(move || arena.verdict())
        .await
        .unwrap();
    assert!(
        closed.is_ok(),
        "an unauthenticated client announced a 16 MiB hello and the server kept buffering it \
         (the pre-hello frame limit is the chunk limit, 64 MiB)"
    );
}

/// The verdict itself must catch what it looks for, or the tests above prove nothing.
#[test]
#[should_panic(expected = "no client sent it in full")]
fn the_verdict_catches_a_file_nobody_sent() {
    let arena = Arena::start(haul(), |_, _| {});
    std::fs::create_dir(arena.root.join("x")).unwrap();
    std::fs::write(arena.root.join("x/stray"), b"half a fi").unwrap();
    arena.verdict();
}

/// See above: a change outside the root is caught, down to the sentinel's mode.
#[test]
#[should_panic(expected = "something changed outside the root")]
fn the_verdict_catches_a_change_outside() {
    use std::os::unix::fs::PermissionsExt;
    let arena = Arena::start(haul(), |_, _| {});
    let sentinel = arena.outside.join("sentinel");
    std::fs::set_permissions(&sentinel, std::fs::Permissions::from_mode(0o666)).unwrap();
    arena.verdict();
}
