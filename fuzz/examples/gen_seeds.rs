//! Writes the seed corpora under `fuzz/corpus/<target>/` and replays each seed through its
//! harness (so a seed that crashes, or that `arbitrary` would read differently, fails here).
//!
//! Run from `fuzz/`: `cargo run --example gen_seeds` (a normal build, no sanitizers).

use std::fs;
use std::path::Path;

use bytes::Bytes;
use haul_fuzz::seed::session_input;
use haul_fuzz::session::{
    Blob, ChunkSizeSel, ClientMsg, HelloArgs, IdRef, IdSel, IndexSel, KindSel, LenSel, Op, Reached,
    SizeSel, StrayMsg, VersionSel, WelcomeArgs,
};
use haul_fuzz::{frames, relpath, session};
use haul_proto::{
    Abort, Chunk, Entry, EntryKind, Failed, FileDone, Finished, Have, Hello, Installed, Message,
    Meta, Need, PROTOCOL_VERSION, RefuseReason, Refused, Renamed, SourceFailed, Welcome,
};

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (name, data) in frame_seeds() {
        frames::run(&data);
        write(&root.join("frame_decode"), name, &data)?;
    }
    for (name, max, ops, want) in session_seeds() {
        let data = session_input(max, &ops);
        let (setup, parsed) = session::parse(&data);
        assert_eq!(
            setup.max_outstanding, max,
            "{name}: setup read back differently"
        );
        assert_eq!(
            parsed, ops,
            "{name}: arbitrary reads the seed back differently"
        );
        let reached = session::run(&data);
        assert_eq!(
            reached, want,
            "{name}: the seed does not reach what it was written for"
        );
        write(&root.join("session"), name, &data)?;
    }
    for (name, data) in relpath_seeds() {
        relpath::run(&data);
        write(&root.join("relpath"), name, &data)?;
    }
    Ok(())
}

fn write(dir: &Path, name: &str, data: &[u8]) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::write(dir.join(name), data)?;
    println!("{} ({} bytes)", dir.join(name).display(), data.len());
    Ok(())
}

/// A frame input: split-count byte, piece sizes, then the messages' encodings back to back.
fn stream(splits: &[u8], msgs: &[Message]) -> Vec<u8> {
    let mut out = vec![u8::try_from(splits.len()).unwrap()];
    out.extend_from_slice(splits);
    for m in msgs {
        out.extend_from_slice(&m.encode());
    }
    out
}

fn frame_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let hello = Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        token: Bytes::from_static(b"secret"),
        dest: Bytes::from_static(b"backups/po1"),
        chunk_size: 1 << 20,
        flags: Hello::CHECKSUM | Hello::DRY_RUN,
        rename_aside: vec![Bytes::from_static(b"po1/cache"), Bytes::from_static(b"old")],
        filters: Vec::new(),
        max_delete: u64::MAX,
        holder: Bytes::new(),
        snapshot: Bytes::new(),
    });
    let entry = |id, kind, path: &'static [u8], link: &'static [u8]| {
        Message::Entry(Entry {
            id,
            kind,
            path: Bytes::from_static(path),
            size: 5,
            meta: Meta {
                mode: 0o644,
                mtime_sec: 1_700_000_000,
                mtime_nsec: 123,
            },
            link_target: Bytes::from_static(link),
            uid: 0,
            gid: 0,
            rdev: 0,
            source_stamp: 0,
            xattrs: Vec::new(),
        })
    };
    let control = vec![
        hello,
        entry(1, EntryKind::Dir, b"", b""),
        entry(2, EntryKind::File, b"po1/wphost.db", b""),
        entry(3, EntryKind::Symlink, b"po1/link", b"../elsewhere"),
        Message::FileDone(FileDone {
            id: 2,
            hash: [7; 32],
            chunks_sent: 1,
        }),
        Message::SourceFailed(SourceFailed {
            id: 2,
            message: "vanished".into(),
        }),
        Message::EndOfEntries,
        Message::Abort(Abort {
            message: "operator interrupted".into(),
        }),
    ];
    let server = vec![
        Message::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            session: 42,
            free_bytes: 1 << 40,
            history_bytes: 10 << 30,
            history_ms: 95_000,
            renamed: vec![Renamed {
                from: Bytes::from_static(b"po1/cache"),
                to: Bytes::from_static(b"po1/cache.1"),
            }],
            privileged: false,
        }),
        Message::Refused(Refused {
            reason: RefuseReason::BadToken,
            message: "bad".into(),
        }),
        Message::Need(Need {
            id: 2,
            ranges: vec![(0, 1), (3, 2)],
        }),
        Message::Have(Have {
            id: 2,
            start: 0,
            journaled: true,
            hashes: vec![[4; 32], [0; 32], [5; 32]],
        }),
        Message::Installed(Installed {
            id: 2,
            hash: [9; 32],
            bytes_written: 5,
            unchanged: false,
            meta_only: false,
        }),
        Message::Installed(Installed {
            id: 4,
            hash: [8; 32],
            bytes_written: 0,
            unchanged: true,
            meta_only: false,
        }),
        Message::Failed(Failed {
            id: 3,
            message: "disk full".into(),
            no_space: true,
        }),
        Message::Finished(Finished {
            installed: 2,
            failed: 1,
            not_applied: Default::default(),
        }),
    ];
    let chunks = vec![
        Message::Chunk(Chunk {
            id: 2,
            index: 0,
            hash: [1; 32],
            zero: false,
            compressed: false,
            data: Bytes::from((0..=255u8).collect::<Vec<_>>()),
        }),
        Message::Chunk(Chunk {
            id: 2,
            index: 1,
            hash: [2; 32],
            zero: true,
            compressed: false,
            data: Bytes::new(),
        }),
    ];
    let mut bad = stream(&[], &control[..1]);
    bad.extend_from_slice(&[0, 0, 0, 3, 99, 1, 2]); // unknown type 99
    bad.extend_from_slice(&[0, 0, 0, 0]); // empty frame: the decoder stops here
    vec![
        ("control-whole", stream(&[], &control)),
        ("control-split", stream(&[0, 6, 2], &control)),
        ("server-messages", stream(&[], &server)),
        ("chunks-split", stream(&[99, 3], &chunks)),
        ("bad-frames", bad),
        ("truncated", stream(&[], &control[..2])[..30].to_vec()),
    ]
}

fn hello_args(version: VersionSel, chunk_size: ChunkSizeSel) -> HelloArgs {
    HelloArgs {
        version,
        token: Blob(b"t".to_vec()),
        dest: Blob::default(),
        chunk_size,
        flags: 0,
        rename_aside: Blob::default(),
    }
}

fn hello(version: VersionSel, chunk_size: ChunkSizeSel) -> Op {
    Op::Send(ClientMsg::Hello(hello_args(version, chunk_size)))
}

fn welcome(session: u64) -> WelcomeArgs {
    WelcomeArgs {
        version: 0,
        session,
        free_bytes: 1 << 30,
        history_bytes: 0,
        history_ms: 0,
        renamed: Blob::default(),
    }
}

fn entry(id: IdSel, kind: KindSel, path: &[u8], size: SizeSel) -> Op {
    Op::Send(ClientMsg::Entry {
        id,
        kind,
        path: Blob(path.to_vec()),
        size,
        mode: 0o644,
        mtime_sec: 1_700_000_000,
        mtime_nsec: 0,
        link_target: Blob::default(),
    })
}

fn chunk(n: u8, index: IndexSel, len: LenSel) -> Op {
    Op::Chunk {
        id: IdRef::Announced(n),
        index,
        len,
    }
}

/// Name, `max_outstanding`, ops, and what the session must accept along the way.
type SessionSeed = (&'static str, Option<u8>, Vec<Op>, Reached);

fn session_seeds() -> Vec<SessionSeed> {
    let good_hello = || hello(VersionSel::Current, ChunkSizeSel::Shift(16)); // 64 KiB chunks
    let accept = Op::Decide(welcome(7));
    let two_chunks = SizeSel::Chunks {
        chunks: 1,
        extra: 10,
    };
    let reached = |handled, welcomed, chunks, resolved_last, finished| Reached {
        handled,
        welcomed,
        chunks,
        resolved_last,
        finished,
    };
    vec![
        (
            // A re-run: a directory, a quick check of its run of files (which takes no data
            // and no file hash), resolved; the session finishes.
            "quick-check",
            None,
            vec![
                good_hello(),
                accept.clone(),
                entry(IdSel::Next, KindSel::Dir, b"d", SizeSel::Bytes(0)),
                Op::Send(ClientMsg::QuickCheck {
                    id: IdSel::Next,
                    dir: Blob(b"d".to_vec()),
                    files: 300,
                }),
                chunk(1, IndexSel::Nth(0), LenSel::Exact),
                Op::Send(ClientMsg::EndOfEntries),
                Op::Resolve(IdRef::Announced(0)),
                Op::Resolve(IdRef::Announced(1)),
            ],
            reached(4, 1, 0, true, true),
        ),
        (
            "happy-path",
            None,
            vec![
                Op::Send(ClientMsg::Hello(HelloArgs {
                    flags: 3,
                    rename_aside: Blob(b"old,po1/cache".to_vec()),
                    ..hello_args(VersionSel::Current, ChunkSizeSel::Shift(16))
                })),
                Op::Decide(WelcomeArgs {
                    renamed: Blob(b"old".to_vec()),
                    history_bytes: 1 << 30,
                    history_ms: 2_000,
                    ..welcome(7)
                }),
                entry(IdSel::Next, KindSel::Dir, b"d", SizeSel::Bytes(0)),
                entry(IdSel::Next, KindSel::File, b"d/f", two_chunks),
                chunk(1, IndexSel::Nth(0), LenSel::Exact),
                chunk(1, IndexSel::Last, LenSel::Exact),
                Op::Send(ClientMsg::FileDone {
                    id: IdRef::Announced(1),
                    hash: 3,
                    chunks_sent: 2,
                }),
                Op::Send(ClientMsg::EndOfEntries),
                Op::Resolve(IdRef::Announced(0)),
                Op::Resolve(IdRef::Announced(1)),
            ],
            reached(5, 1, 2, true, true),
        ),
        (
            "end-with-nothing-outstanding",
            None,
            vec![
                good_hello(),
                accept.clone(),
                entry(IdSel::Next, KindSel::Dir, b"d", SizeSel::Bytes(0)),
                Op::Resolve(IdRef::Announced(0)),
                Op::Send(ClientMsg::EndOfEntries),
                entry(IdSel::Next, KindSel::File, b"late", SizeSel::Bytes(1)),
                Op::Resolve(IdRef::Announced(0)),
            ],
            reached(3, 1, 0, false, true),
        ),
        (
            "refused-hello",
            None,
            vec![
                hello(VersionSel::Raw(9), ChunkSizeSel::Raw(3 << 20)),
                accept.clone(),
                entry(IdSel::Next, KindSel::File, b"f", SizeSel::Bytes(1)),
                hello(VersionSel::Current, ChunkSizeSel::Shift(20)),
                Op::Refuse,
                Op::Accept {
                    hello: None,
                    welcome: welcome(8),
                },
            ],
            reached(1, 0, 0, false, false),
        ),
        (
            "accept-outside-handshake",
            None,
            vec![
                // Before any hello: refused, the session still awaits its hello.
                Op::Accept {
                    hello: None,
                    welcome: welcome(1),
                },
                good_hello(),
                // A chunk size out of range: refused, the hello still awaits a decision.
                Op::Accept {
                    hello: Some(hello_args(VersionSel::Current, ChunkSizeSel::Shift(31))),
                    welcome: welcome(2),
                },
                Op::Send(ClientMsg::Stray(StrayMsg::Welcome)),
                Op::Accept {
                    hello: Some(hello_args(VersionSel::Current, ChunkSizeSel::Shift(17))),
                    welcome: welcome(3),
                },
                // A second accept while active: refused, the chunk size stays.
                Op::Accept {
                    hello: None,
                    welcome: welcome(4),
                },
                entry(IdSel::Next, KindSel::File, b"f", two_chunks),
                chunk(0, IndexSel::Nth(0), LenSel::Exact),
            ],
            reached(2, 1, 1, false, false),
        ),
        (
            "outstanding-limit",
            Some(2),
            vec![
                good_hello(),
                accept.clone(),
                entry(IdSel::Next, KindSel::File, b"a", SizeSel::Bytes(1)),
                entry(IdSel::Skip(5), KindSel::Symlink, b"b", SizeSel::Bytes(0)),
                entry(IdSel::Next, KindSel::File, b"c", SizeSel::Bytes(1)),
                Op::Resolve(IdRef::Announced(0)),
                entry(IdSel::Next, KindSel::File, b"c", SizeSel::Raw(u64::MAX)),
                entry(IdSel::Skip(0), KindSel::File, b"again", SizeSel::Bytes(1)),
                chunk(2, IndexSel::Last, LenSel::Zero),
            ],
            reached(4, 1, 1, false, false),
        ),
        (
            "bad-chunks",
            None,
            vec![
                good_hello(),
                accept.clone(),
                entry(IdSel::Raw(100), KindSel::File, b"f", two_chunks),
                chunk(0, IndexSel::Past, LenSel::Exact),
                chunk(0, IndexSel::Nth(0), LenSel::Off(-1)),
                chunk(0, IndexSel::Last, LenSel::Off(1)),
                chunk(0, IndexSel::Raw(u64::MAX), LenSel::Raw(10)),
                Op::Chunk {
                    id: IdRef::Raw(5),
                    index: IndexSel::Nth(0),
                    len: LenSel::Exact,
                },
                Op::Send(ClientMsg::Stray(StrayMsg::Need(IdRef::Announced(0)))),
                Op::Send(ClientMsg::Stray(StrayMsg::Have(IdRef::Announced(0)))),
                Op::Send(ClientMsg::Stray(StrayMsg::Installed(
                    IdRef::Announced(0),
                    true,
                ))),
                Op::Send(ClientMsg::Stray(StrayMsg::Chunk(IdRef::Announced(0)))),
                Op::Send(ClientMsg::SourceFailed {
                    id: IdRef::Raw(1),
                    message: Blob(b"gone".to_vec()),
                }),
                Op::Send(ClientMsg::Abort {
                    message: Blob(b"bye".to_vec()),
                }),
                chunk(0, IndexSel::Nth(0), LenSel::Exact),
            ],
            reached(3, 1, 0, false, true),
        ),
    ]
}

fn relpath_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut long_name = b"dir/".to_vec();
    long_name.extend(std::iter::repeat_n(b'x', 256));
    vec![
        ("root", Vec::new()),
        ("nested", b"po1/wphost.db".to_vec()),
        ("deep", b"a/b/c/d/e".to_vec()),
        ("reserved-first", b".haul/staging".to_vec()),
        ("reserved-later", b"a/.haul".to_vec()),
        ("dotdot", b"a/../b".to_vec()),
        ("dot", b"./a".to_vec()),
        ("empty-component", b"a//b".to_vec()),
        ("trailing-slash", b"a/".to_vec()),
        ("absolute", b"/etc/passwd".to_vec()),
        ("nul", b"a\0b".to_vec()),
        ("not-utf8", b"\xff\xfe/caf\xe9".to_vec()),
        ("long-name", long_name),
    ]
}
