//! The `session` harness: sequences of client messages and engine calls fed to `ServerSession`.
//!
//! `haul-proto`'s types do not implement `Arbitrary` (and must not depend on it), so the input
//! is a list of [`Op`]s, wrapper types that derive it. Ids, chunk sizes, file sizes and chunk
//! lengths are mostly chosen *relative to what happened so far* (the next id, an announced
//! entry, the exact length of a chunk) so random bytes reach the deep states quickly.
//!
//! Most ops call the session the way the engine does ([`Op::Decide`]: `accept` or `refuse`
//! right after a `Hello` event, `accept` only if `check_hello` passed); [`Op::Accept`] calls
//! `accept` in any state with any hello, as a buggy engine might, and the session must refuse
//! it outside the handshake or when `check_hello` would. Alongside the session runs [`Model`],
//! a reference written from the protocol rules, and after every op the harness checks: no
//! panic, `outstanding() <= limits().max_outstanding`; `outstanding()`, `is_active()`,
//! `is_finished()`, `chunk_size()` and the chunk limits equal the model's; a chunk of the
//! negotiated size fits in a frame; every `handle`, `check_hello`, `accept`, `check_chunk` and
//! `resolve` answer (and `handle`'s event, `accept`'s welcome and refusal reason) is the
//! model's.

use arbitrary::{Arbitrary, Unstructured};

pub use crate::ops::{
    Blob, ChunkSizeSel, ClientMsg, HelloArgs, IdRef, IdSel, IndexSel, KindSel, LenSel, Op, Setup,
    SizeSel, StrayMsg, VersionSel, WelcomeArgs,
};
use bytes::Bytes;

use crate::model::{Model, State};
use haul_proto::session::ServerEvent;
use haul_proto::{
    Abort, Chunk, ChunkLayout, Entry, EntryKind, Failed, FileDone, Finished, Have, Hello,
    Installed, Limits, Message, Meta, Need, PROTOCOL_VERSION, QuickCheck, QuickChecked,
    RefuseReason, Refused, Renamed, ServerSession, SourceFailed, Welcome,
};

/// Frame body bytes of a `Chunk` message besides its data: id, index, hash, zero flag, length.
const CHUNK_OVERHEAD: u64 = 8 + 8 + 32 + 1 + 4;

/// Reads a whole input: the setup, then ops until the bytes run out.
pub fn parse(data: &[u8]) -> (Setup, Vec<Op>) {
    let mut u = Unstructured::new(data);
    let setup = Setup::arbitrary(&mut u).unwrap_or(Setup {
        max_outstanding: None,
    });
    let mut ops = Vec::new();
    while !u.is_empty() {
        match Op::arbitrary(&mut u) {
            Ok(op) => ops.push(op),
            Err(_) => break,
        }
    }
    (setup, ops)
}

/// What one input reached: lets the seed generator check a seed does what it was written for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reached {
    /// Messages `handle` accepted.
    pub handled: usize,
    /// Hellos `accept` accepted.
    pub welcomed: usize,
    /// Chunks `check_chunk` accepted.
    pub chunks: usize,
    /// Whether a `resolve` reported the session finished.
    pub resolved_last: bool,
    /// Whether the session ended finished (`is_finished()` after the last op).
    pub finished: bool,
}

/// Runs one input. Panics when a property fails.
pub fn run(data: &[u8]) -> Reached {
    let (setup, ops) = parse(data);
    let mut h = Harness::new(&setup);
    for op in ops {
        h.step(op);
        h.check_invariants();
    }
    h.reached.finished = h.session.is_finished();
    h.reached
}

/// The session under test, the model, and what the engine would remember.
struct Harness {
    session: ServerSession,
    model: Model,
    /// The hello awaiting a decision, as the engine holds it.
    pending: Option<Hello>,
    /// The last hello the session handled, for [`Op::Accept`] without its own.
    last_hello: Option<Hello>,
    /// Every id the session accepted, for [`IdRef::Announced`].
    announced: Vec<u64>,
    reached: Reached,
}

impl Harness {
    fn new(setup: &Setup) -> Harness {
        let mut limits = Limits::default();
        if let Some(n) = setup.max_outstanding {
            limits.max_outstanding = u32::from(n);
        }
        Harness {
            session: ServerSession::new(limits.clone()),
            model: Model::new(limits),
            pending: None,
            last_hello: None,
            announced: Vec::new(),
            reached: Reached::default(),
        }
    }

    /// The id a new entry or quick check carries, relative to the last one accepted.
    fn new_id(&self, sel: IdSel) -> u64 {
        let last = self.model.last_id;
        match sel {
            IdSel::Next => last.map_or(1, |l| l.wrapping_add(1)),
            IdSel::Skip(n) => last.unwrap_or(0).wrapping_add(u64::from(n)),
            IdSel::Raw(id) => id,
        }
    }

    fn id(&self, r: IdRef) -> u64 {
        match r {
            IdRef::Announced(n) if !self.announced.is_empty() => {
                self.announced[usize::from(n) % self.announced.len()]
            }
            IdRef::Announced(_) => 0,
            IdRef::Raw(id) => id,
        }
    }

    /// The model's layout for `id` if it is an outstanding file.
    fn file_layout(&self, id: u64) -> Option<ChunkLayout> {
        match self.model.outstanding.get(&id) {
            Some(&(EntryKind::File, size)) => Some(ChunkLayout::new(size, self.model.chunk_size)),
            _ => None,
        }
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Send(msg) => {
                let msg = self.message(msg);
                self.send(msg);
            }
            Op::Decide(welcome) => {
                let Some(hello) = self.pending.take() else {
                    return;
                };
                let verdict = self.session.check_hello(&hello);
                assert_eq!(
                    verdict.clone().map_err(|r| r.reason),
                    self.model.check_hello(&hello),
                    "check_hello disagrees for {hello:?}"
                );
                match verdict {
                    Ok(()) => self.accept(&hello, welcome),
                    Err(refused) => {
                        let _ = self.session.refuse(refused);
                        self.model.state = State::Refused;
                    }
                }
            }
            Op::Refuse => {
                if self.pending.take().is_some() {
                    let refused = Refused {
                        reason: RefuseReason::BadToken,
                        message: "no".into(),
                    };
                    let _ = self.session.refuse(refused);
                    self.model.state = State::Refused;
                }
            }
            Op::Chunk { id, index, len } => self.chunk(id, index, len),
            Op::Resolve(id) => {
                let id = self.id(id);
                let done = self.session.resolve(id);
                let expect = self.model.resolve(id);
                assert_eq!(
                    done, expect,
                    "resolve({id}) result disagrees with the model"
                );
                self.reached.resolved_last |= done;
            }
            Op::Accept { hello, welcome } => {
                let hello = match hello {
                    Some(args) => hello_message(args),
                    None => self.last_hello.clone().unwrap_or_else(|| Hello {
                        version: PROTOCOL_VERSION,
                        token: Bytes::from_static(b"t"),
                        dest: Bytes::new(),
                        chunk_size: haul_proto::DEFAULT_CHUNK_SIZE,
                        flags: 0,
                        rename_aside: Vec::new(),
                        filters: Vec::new(),
                        max_delete: u64::MAX,
                        holder: Bytes::new(),
                        snapshot: Bytes::new(),
                    }),
                };
                self.accept(&hello, welcome);
            }
        }
    }

    /// Calls `accept` and compares its answer (the welcome, or the refusal's reason) with the
    /// model's.
    fn accept(&mut self, hello: &Hello, args: WelcomeArgs) {
        let state = self.model.state;
        let welcome = welcome_message(args);
        let expect = self.model.accept(hello).map(|()| {
            Message::Welcome(Welcome {
                version: PROTOCOL_VERSION,
                ..welcome.clone()
            })
        });
        let got = self.session.accept(hello, welcome);
        assert_eq!(
            got.as_ref().map_err(|r| r.reason),
            expect.as_ref().map_err(|r| *r),
            "accept in state {state:?} of {hello:?}: session said {got:?}"
        );
        if got.is_ok() {
            self.pending = None;
            self.reached.welcomed += 1;
        }
    }

    /// Feeds one control message and compares the verdict and event with the model's.
    fn send(&mut self, msg: Message) {
        // Any message after a hello ends the engine's wait for a decision.
        self.pending = None;
        let name = msg.name();
        let state = self.model.state;
        let expect = if self.model.handle(&msg) {
            // A message the model accepts always has an event.
            expected_event(&msg)
        } else {
            None
        };
        let got = self.session.handle(msg);
        self.reached.handled += usize::from(got.is_ok());
        match (&got, &expect) {
            (Ok(event), Some(want)) if event == want => {}
            (Err(_), None) => {}
            _ => {
                panic!("{name} in state {state:?}: session said {got:?}, model expected {expect:?}")
            }
        }
        match got {
            Ok(ServerEvent::Hello(hello)) => {
                self.pending = Some(hello.clone());
                self.last_hello = Some(hello);
            }
            Ok(ServerEvent::Entry(entry)) => self.announced.push(entry.id),
            Ok(ServerEvent::QuickCheck(check)) => self.announced.push(check.id),
            _ => {}
        }
    }

    fn chunk(&mut self, id: IdRef, index: IndexSel, len: LenSel) {
        let id = self.id(id);
        let layout = self.file_layout(id);
        let count = layout.map_or(0, |l| l.count());
        let index = match index {
            IndexSel::Nth(n) if count > 0 => u64::from(n) % count,
            IndexSel::Nth(_) => 0,
            IndexSel::Last => count.saturating_sub(1),
            IndexSel::Past => count,
            IndexSel::Raw(i) => i,
        };
        let exact = layout.and_then(|l| l.len(index)).unwrap_or(0) as usize;
        let (zero, data_len) = match len {
            LenSel::Exact => (false, exact),
            LenSel::Zero => (true, 0),
            LenSel::Off(delta) => (false, exact.saturating_add_signed(isize::from(delta))),
            LenSel::Raw(n) => (false, usize::from(n)),
        };
        // Zeroed allocations are lazily mapped, so even a 64 MiB chunk costs little.
        let chunk = Chunk {
            id,
            index,
            hash: [0; 32],
            zero,
            compressed: false,
            data: Bytes::from(vec![0; data_len]),
        };
        let active = matches!(self.model.state, State::Active | State::Draining);
        let fits = index < count && (zero || data_len == exact);
        let got = self.session.check_chunk(&chunk);
        self.reached.chunks += usize::from(got.is_ok());
        match (&got, active && layout.is_some() && fits) {
            (Ok(got), true) => {
                assert_eq!(Some(*got), layout, "check_chunk returned another layout")
            }
            (Err(_), false) => {}
            (got, expect) => panic!(
                "check_chunk(id {id}, index {index}, zero {zero}, len {data_len}) in {:?}: \
                 session said {got:?}, model expected ok={expect} (layout {layout:?})",
                self.model.state
            ),
        }
    }

    fn check_invariants(&self) {
        let s = &self.session;
        let m = &self.model;
        let limits = s.limits();
        assert!(
            s.outstanding() <= limits.max_outstanding as usize,
            "{} entries outstanding, over the limit of {}",
            s.outstanding(),
            limits.max_outstanding
        );
        assert_eq!(
            s.outstanding(),
            m.outstanding.len(),
            "outstanding count differs"
        );
        let active = matches!(m.state, State::Active | State::Draining);
        assert_eq!(s.is_active(), active, "is_active differs in {:?}", m.state);
        assert_eq!(
            s.is_finished(),
            m.state == State::Finished,
            "is_finished differs in {:?}",
            m.state
        );
        assert_eq!(s.chunk_size(), m.chunk_size, "chunk size differs");
        assert_eq!(
            (limits.max_outstanding, limits.min_chunk, limits.max_chunk),
            (
                m.limits.max_outstanding,
                m.limits.min_chunk,
                m.limits.max_chunk
            ),
            "limits (max_outstanding, min_chunk, max_chunk) differ in {:?}",
            m.state
        );
        assert!(
            u64::from(limits.max_frame) >= u64::from(s.chunk_size()) + CHUNK_OVERHEAD,
            "a whole chunk of {} bytes does not fit the frame limit of {}",
            s.chunk_size(),
            limits.max_frame
        );
    }

    /// Builds the real message for a wrapper.
    fn message(&self, msg: ClientMsg) -> Message {
        match msg {
            ClientMsg::Hello(args) => Message::Hello(hello_message(args)),
            ClientMsg::Entry {
                id,
                kind,
                path,
                size,
                mode,
                mtime_sec,
                mtime_nsec,
                link_target,
            } => Message::Entry(Entry {
                id: self.new_id(id),
                kind: match kind {
                    KindSel::File => EntryKind::File,
                    KindSel::Dir => EntryKind::Dir,
                    KindSel::Symlink => EntryKind::Symlink,
                },
                path: path.0.into(),
                size: match size {
                    SizeSel::Bytes(n) => u64::from(n),
                    SizeSel::Chunks { chunks, extra } => {
                        u64::from(chunks) * u64::from(self.model.chunk_size) + u64::from(extra)
                    }
                    SizeSel::Raw(n) => n,
                },
                meta: Meta {
                    mode: u32::from(mode),
                    mtime_sec,
                    mtime_nsec,
                },
                link_target: link_target.0.into(),
                uid: 0,
                gid: 0,
                rdev: 0,
                source_stamp: 0,
                xattrs: Vec::new(),
            }),
            ClientMsg::EndOfEntries => Message::EndOfEntries,
            ClientMsg::FileDone {
                id,
                hash,
                chunks_sent,
            } => Message::FileDone(FileDone {
                id: self.id(id),
                hash: [hash; 32],
                chunks_sent,
            }),
            ClientMsg::SourceFailed { id, message } => Message::SourceFailed(SourceFailed {
                id: self.id(id),
                message: text(message),
            }),
            ClientMsg::Abort { message } => Message::Abort(Abort {
                message: text(message),
            }),
            ClientMsg::Stray(stray) => self.stray(stray),
            ClientMsg::QuickCheck { id, dir, files } => Message::QuickCheck(QuickCheck {
                id: self.new_id(id),
                dir: dir.0.into(),
                first: Bytes::from_static(b"a"),
                last: Bytes::from_static(b"z"),
                files,
                digest: [0; 32],
            }),
        }
    }

    /// Builds a message the server never accepts from the client.
    fn stray(&self, stray: StrayMsg) -> Message {
        match stray {
            StrayMsg::Welcome => Message::Welcome(Welcome {
                version: PROTOCOL_VERSION,
                session: 1,
                free_bytes: 0,
                history_bytes: 0,
                history_ms: 0,
                renamed: Vec::new(),
                privileged: false,
            }),
            StrayMsg::Refused => Message::Refused(Refused {
                reason: RefuseReason::Other,
                message: String::new(),
            }),
            StrayMsg::Need(id) => Message::Need(Need {
                id: self.id(id),
                ranges: vec![(0, 1)],
            }),
            StrayMsg::Have(id) => Message::Have(Have {
                id: self.id(id),
                start: 0,
                journaled: false,
                hashes: vec![[1; 32]],
            }),
            StrayMsg::Installed(id, unchanged) => Message::Installed(Installed {
                id: self.id(id),
                hash: [0; 32],
                bytes_written: 0,
                unchanged,
                meta_only: false,
            }),
            StrayMsg::Failed(id) => Message::Failed(Failed {
                id: self.id(id),
                message: String::new(),
                no_space: false,
            }),
            StrayMsg::Finished => Message::Finished(Finished {
                installed: 0,
                failed: 0,
                not_applied: Default::default(),
            }),
            StrayMsg::Chunk(id) => Message::Chunk(Chunk {
                id: self.id(id),
                index: 0,
                hash: [0; 32],
                zero: false,
                compressed: false,
                data: Bytes::from_static(&[0; 16]),
            }),
            StrayMsg::QuickChecked(id, unchanged) => Message::QuickChecked(QuickChecked {
                id: self.id(id),
                unchanged,
            }),
        }
    }
}

fn text(b: Blob) -> String {
    String::from_utf8_lossy(&b.0).into_owned()
}

/// Builds the real hello for its wrapper.
fn hello_message(args: HelloArgs) -> Hello {
    Hello {
        version: match args.version {
            VersionSel::Current => PROTOCOL_VERSION,
            VersionSel::Raw(v) => v,
        },
        token: args.token.0.into(),
        dest: args.dest.0.into(),
        chunk_size: match args.chunk_size {
            ChunkSizeSel::Shift(n) => 1 << (n % 32),
            ChunkSizeSel::Raw(v) => v,
        },
        flags: args.flags,
        rename_aside: args.rename_aside.list(),
        filters: Vec::new(),
        max_delete: u64::MAX,
        holder: Bytes::new(),
        snapshot: Bytes::new(),
    }
}

/// Builds the welcome the engine passes to `accept`.
fn welcome_message(args: WelcomeArgs) -> Welcome {
    Welcome {
        version: args.version,
        session: args.session,
        free_bytes: args.free_bytes,
        history_bytes: args.history_bytes,
        history_ms: args.history_ms,
        renamed: args
            .renamed
            .list()
            .into_iter()
            .map(|from| Renamed {
                to: [&from[..], b".1"].concat().into(),
                from,
            })
            .collect(),
        privileged: false,
    }
}

/// The event `handle` must return for a message it accepts (`None` for messages it never
/// accepts).
fn expected_event(msg: &Message) -> Option<ServerEvent> {
    Some(match msg {
        Message::Hello(hello) => ServerEvent::Hello(hello.clone()),
        Message::Entry(entry) => ServerEvent::Entry(entry.clone()),
        Message::QuickCheck(check) => ServerEvent::QuickCheck(check.clone()),
        Message::FileDone(done) => ServerEvent::FileDone {
            id: done.id,
            hash: done.hash,
            chunks_sent: done.chunks_sent,
        },
        Message::SourceFailed(failed) => ServerEvent::SourceFailed {
            id: failed.id,
            message: failed.message.clone(),
        },
        Message::EndOfEntries => ServerEvent::EndOfEntries,
        Message::Abort(abort) => ServerEvent::Abort(abort.message.clone()),
        _ => return None,
    })
}
