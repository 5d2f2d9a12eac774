//! Control-stream state machines.
//!
//! [`ServerSession`] and [`ClientSession`] hold no I/O: the engine feeds them every decoded
//! control message (and every chunk header, on the server) and they answer whether it is legal
//! now. A peer that sends a message out of order, reuses an id, names an entry it never
//! announced, or sends a chunk that does not fit the file it claims to belong to gets a
//! [`ProtocolError`] and the connection is closed. That keeps the checks in one testable place
//! instead of scattered through the async code.

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    Chunk, ChunkLayout, Entry, EntryKind, Hello, Limits, Message, Names, PROTOCOL_VERSION, Prune,
    QuickCheck, RefuseReason, Refused, Welcome,
};

/// A peer broke the protocol.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// A message arrived that is not legal in the current state.
    #[error("unexpected {message} while {state}")]
    Unexpected {
        /// The message name.
        message: &'static str,
        /// What the session was doing.
        state: &'static str,
    },
    /// An entry id did not increase.
    #[error("entry id {id} is not greater than the previous id {previous}")]
    IdNotIncreasing {
        /// The id received.
        id: u64,
        /// The last id seen.
        previous: u64,
    },
    /// A message named an entry that is not outstanding.
    #[error("{message} names unknown entry {id}")]
    UnknownEntry {
        /// The message name.
        message: &'static str,
        /// The id.
        id: u64,
    },
    /// Too many entries announced and not resolved.
    #[error("more than {limit} entries outstanding")]
    TooManyOutstanding {
        /// The limit.
        limit: u32,
    },
    /// A chunk does not fit the file it names.
    #[error("chunk {index} of entry {id} is invalid: {why}")]
    BadChunk {
        /// The entry id.
        id: u64,
        /// The chunk index.
        index: u64,
        /// What is wrong with it.
        why: &'static str,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ServerState {
    AwaitHello,
    AwaitDecision,
    Active,
    Draining,
    Finished,
    Refused,
}

impl ServerState {
    fn describe(self) -> &'static str {
        match self {
            ServerState::AwaitHello => "awaiting hello",
            ServerState::AwaitDecision => "deciding on hello",
            ServerState::Active => "receiving entries",
            ServerState::Draining => "finishing entries",
            ServerState::Finished => "finished",
            ServerState::Refused => "refused",
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Outstanding {
    kind: EntryKind,
    layout: ChunkLayout,
}

/// The receiver's view of one session.
#[derive(Debug)]
pub struct ServerSession {
    state: ServerState,
    limits: Limits,
    chunk_size: u32,
    /// The hello set [`Hello::COMPRESS`]: compressed chunks are legal.
    compress: bool,
    /// The hello set [`Hello::DELETE`]: `Prune` lists are legal.
    delete: bool,
    /// `PruneEnd` has arrived: no more `Prune` lists.
    pruned: bool,
    last_id: Option<u64>,
    outstanding: BTreeMap<u64, Outstanding>,
    /// Entries the server failed while the client may still be sending for them: their late
    /// chunks and file hashes are expected and dropped, not protocol errors.
    failed: BTreeSet<u64>,
}

/// What the server learned from a control message.
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub enum ServerEvent {
    /// A well-formed hello: the engine checks the token and path, then calls
    /// [`ServerSession::accept`] or [`ServerSession::refuse`].
    Hello(Hello),
    /// A new entry to create or receive.
    Entry(Entry),
    /// A run of files the client asks about as a whole (answered with `QuickChecked`).
    QuickCheck(QuickCheck),
    /// The client's whole-file hash.
    FileDone {
        /// The entry id.
        id: u64,
        /// The hash.
        hash: crate::Hash,
        /// Chunks the client sent; the rest are reused from what the receiver holds.
        chunks_sent: u64,
    },
    /// The client gave up on a file.
    SourceFailed {
        /// The entry id.
        id: u64,
        /// Why.
        message: String,
    },
    /// Names of owner and group numbers.
    Names(Names),
    /// One source directory's names, for `--delete`.
    Prune(Prune),
    /// Every `Prune` list has been sent: delete now.
    PruneEnd,
    /// No more entries will come.
    EndOfEntries,
    /// The client aborted.
    Abort(String),
}

impl ServerSession {
    /// A session awaiting its hello.
    pub fn new(limits: Limits) -> Self {
        ServerSession {
            state: ServerState::AwaitHello,
            limits,
            chunk_size: crate::DEFAULT_CHUNK_SIZE,
            compress: false,
            delete: false,
            pruned: false,
            last_id: None,
            outstanding: BTreeMap::new(),
            failed: BTreeSet::new(),
        }
    }

    /// The limits in force (the frame limit follows the negotiated chunk size).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The negotiated chunk size.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Feeds one control message from the client.
    pub fn handle(&mut self, msg: Message) -> Result<ServerEvent, ProtocolError> {
        let unexpected = |state: ServerState, msg: &Message| ProtocolError::Unexpected {
            message: msg.name(),
            state: state.describe(),
        };
        match (self.state, msg) {
            (ServerState::AwaitHello, Message::Hello(hello)) => {
                self.state = ServerState::AwaitDecision;
                Ok(ServerEvent::Hello(hello))
            }
            (ServerState::Active, Message::Entry(entry)) => {
                let size = if entry.kind == EntryKind::File {
                    entry.size
                } else {
                    0
                };
                self.open_id(entry.id, entry.kind, size)?;
                Ok(ServerEvent::Entry(entry))
            }
            (ServerState::Active, Message::QuickCheck(check)) => {
                // Outstanding like a directory: no chunks or file hash may name it.
                self.open_id(check.id, EntryKind::Dir, 0)?;
                Ok(ServerEvent::QuickCheck(check))
            }
            (ServerState::Active | ServerState::Draining, Message::FileDone(done)) => {
                self.expect_file(done.id, "FileDone")?;
                Ok(ServerEvent::FileDone {
                    id: done.id,
                    hash: done.hash,
                    chunks_sent: done.chunks_sent,
                })
            }
            (ServerState::Active | ServerState::Draining, Message::SourceFailed(failed)) => {
                self.expect_file(failed.id, "SourceFailed")?;
                Ok(ServerEvent::SourceFailed {
                    id: failed.id,
                    message: failed.message,
                })
            }
            (ServerState::Active, Message::Names(names)) => Ok(ServerEvent::Names(names)),
            (ServerState::Active, Message::Prune(prune)) if self.delete && !self.pruned => {
                Ok(ServerEvent::Prune(prune))
            }
            (ServerState::Active, Message::PruneEnd) if self.delete && !self.pruned => {
                self.pruned = true;
                Ok(ServerEvent::PruneEnd)
            }
            (ServerState::Active, Message::EndOfEntries) => {
                self.state = if self.outstanding.is_empty() {
                    ServerState::Finished
                } else {
                    ServerState::Draining
                };
                Ok(ServerEvent::EndOfEntries)
            }
            (_, Message::Abort(abort)) => {
                self.state = ServerState::Finished;
                Ok(ServerEvent::Abort(abort.message))
            }
            (state, msg) => Err(unexpected(state, &msg)),
        }
    }

    /// Records a new outstanding id (an entry or a quick check): ids must increase, and no
    /// more than the limit may be outstanding.
    fn open_id(&mut self, id: u64, kind: EntryKind, size: u64) -> Result<(), ProtocolError> {
        if let Some(previous) = self.last_id
            && id <= previous
        {
            return Err(ProtocolError::IdNotIncreasing { id, previous });
        }
        if self.outstanding.len() >= self.limits.max_outstanding as usize {
            return Err(ProtocolError::TooManyOutstanding {
                limit: self.limits.max_outstanding,
            });
        }
        self.last_id = Some(id);
        self.outstanding.insert(
            id,
            Outstanding {
                kind,
                layout: ChunkLayout::new(size, self.chunk_size),
            },
        );
        Ok(())
    }

    fn expect_file(&self, id: u64, message: &'static str) -> Result<ChunkLayout, ProtocolError> {
        match self.outstanding.get(&id) {
            Some(o) if o.kind == EntryKind::File => Ok(o.layout),
            _ => Err(ProtocolError::UnknownEntry { message, id }),
        }
    }

    /// Checks the hello's version and chunk size; `Err` carries the refusal to send.
    pub fn check_hello(&self, hello: &Hello) -> Result<(), Refused> {
        if hello.version != PROTOCOL_VERSION {
            return Err(Refused {
                reason: RefuseReason::BadVersion,
                message: format!(
                    "client speaks protocol version {}, this receiver speaks {}; run the same haul \
                     release on both hosts",
                    hello.version, PROTOCOL_VERSION
                ),
            });
        }
        let cs = hello.chunk_size;
        if !cs.is_power_of_two() || cs < self.limits.min_chunk || cs > self.limits.max_chunk {
            return Err(Refused {
                reason: RefuseReason::BadChunkSize,
                message: format!(
                    "chunk size {cs} is not a power of two between {} and {}",
                    self.limits.min_chunk, self.limits.max_chunk
                ),
            });
        }
        Ok(())
    }

    /// Accepts the hello: returns the `Welcome` to send. A hello that fails
    /// [`check_hello`](Self::check_hello), or an accept outside the handshake, is refused
    /// instead, so a caller cannot put the session in a state with an unusable chunk size.
    pub fn accept(&mut self, hello: &Hello, welcome: Welcome) -> Result<Message, Refused> {
        if self.state != ServerState::AwaitDecision {
            return Err(Refused {
                reason: RefuseReason::Other,
                message: format!("cannot accept a hello while {}", self.state.describe()),
            });
        }
        self.check_hello(hello)?;
        self.chunk_size = hello.chunk_size;
        self.compress = hello.has(Hello::COMPRESS);
        self.delete = hello.has(Hello::DELETE);
        self.limits.max_frame = Limits::for_chunk_size(hello.chunk_size).max_frame;
        self.limits.max_chunk = hello.chunk_size;
        self.state = ServerState::Active;
        Ok(Message::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            ..welcome
        }))
    }

    /// Refuses the hello: returns the `Refused` to send. The session accepts nothing more.
    pub fn refuse(&mut self, refused: Refused) -> Message {
        self.state = ServerState::Refused;
        Message::Refused(refused)
    }

    /// True once the hello was accepted and the session has not ended.
    pub fn is_active(&self) -> bool {
        matches!(self.state, ServerState::Active | ServerState::Draining)
    }

    /// True if the client may send compressed chunks (its hello set [`Hello::COMPRESS`]).
    pub fn compression_allowed(&self) -> bool {
        self.compress
    }

    /// Checks a chunk from a data stream against the entry it names; returns the file layout.
    /// A compressed chunk must be allowed by the hello and no longer than the chunk it holds
    /// (the sender only compresses what shrinks); that it decompresses to exactly
    /// `layout.len(index)` bytes is for the engine to check when it decompresses.
    pub fn check_chunk(&self, chunk: &Chunk) -> Result<ChunkLayout, ProtocolError> {
        if !self.is_active() {
            return Err(ProtocolError::Unexpected {
                message: "Chunk",
                state: self.state.describe(),
            });
        }
        let layout = self.expect_file(chunk.id, "Chunk")?;
        let bad = |why| ProtocolError::BadChunk {
            id: chunk.id,
            index: chunk.index,
            why,
        };
        let Some(len) = layout.len(chunk.index) else {
            return Err(bad("index past the end of the file"));
        };
        if chunk.compressed {
            if !self.compress {
                return Err(bad(
                    "compressed, but the client's hello did not offer compression",
                ));
            }
            if chunk.data.len() > len as usize {
                return Err(bad("compressed data is longer than the chunk"));
            }
        } else if !chunk.zero && chunk.data.len() != len as usize {
            return Err(bad("length differs from the announced file size"));
        }
        Ok(layout)
    }

    /// The server resolved an entry (installed or failed). Returns true if that was the last
    /// outstanding entry after `EndOfEntries`: the session is then finished.
    pub fn resolve(&mut self, id: u64) -> bool {
        self.outstanding.remove(&id);
        if self.state == ServerState::Draining && self.outstanding.is_empty() {
            self.state = ServerState::Finished;
            return true;
        }
        false
    }

    /// The server failed an entry: like [`resolve`](Self::resolve), and the client's chunks
    /// and file hash for it that are still in flight will be recognised as late, not as a
    /// protocol violation.
    pub fn resolve_failed(&mut self, id: u64) -> bool {
        if self.outstanding.contains_key(&id) {
            self.failed.insert(id);
        }
        self.resolve(id)
    }

    /// True if `id` is an entry the server failed (see [`resolve_failed`](Self::resolve_failed)):
    /// messages for it are to be dropped.
    pub fn is_failed(&self, id: u64) -> bool {
        self.failed.contains(&id)
    }

    /// Entries announced and not yet resolved.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// True once every entry announced before `EndOfEntries` is resolved (or after an abort).
    pub fn is_finished(&self) -> bool {
        self.state == ServerState::Finished
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientState {
    AwaitWelcome,
    Active,
    Draining,
    Finished,
}

/// The sender's view of one session.
#[derive(Debug)]
pub struct ClientSession {
    state: ClientState,
    outstanding: BTreeMap<u64, EntryKind>,
    next_id: u64,
}

impl Default for ClientSession {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientSession {
    /// A session that has sent its hello.
    pub fn new() -> Self {
        ClientSession {
            state: ClientState::AwaitWelcome,
            outstanding: BTreeMap::new(),
            next_id: 1,
        }
    }

    /// Feeds the server's answer to the hello. `Ok(Ok(welcome))` on acceptance,
    /// `Ok(Err(refused))` on refusal.
    pub fn handle_answer(
        &mut self,
        msg: Message,
    ) -> Result<Result<Welcome, Refused>, ProtocolError> {
        match (self.state, msg) {
            (ClientState::AwaitWelcome, Message::Welcome(w)) => {
                self.state = ClientState::Active;
                Ok(Ok(w))
            }
            (ClientState::AwaitWelcome, Message::Refused(r)) => {
                self.state = ClientState::Finished;
                Ok(Err(r))
            }
            (_, msg) => Err(ProtocolError::Unexpected {
                message: msg.name(),
                state: "awaiting welcome",
            }),
        }
    }

    /// Assigns the next entry id and records the entry as outstanding. A quick check takes its
    /// id the same way, as a [`EntryKind::Dir`] (it is answered, never sent data).
    pub fn announce(&mut self, kind: EntryKind) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.outstanding.insert(id, kind);
        id
    }

    /// Records that every entry has been announced.
    pub fn end_of_entries(&mut self) {
        self.state = ClientState::Draining;
    }

    /// Checks a control message from the server. `Need`, `Installed` and `Failed` must name an
    /// outstanding entry; `Installed` and `Failed` resolve it. `Finished` is legal only once
    /// every entry is resolved.
    pub fn handle(&mut self, msg: &Message) -> Result<(), ProtocolError> {
        let known = |outstanding: &BTreeMap<u64, EntryKind>, id, message| {
            if outstanding.contains_key(&id) {
                Ok(())
            } else {
                Err(ProtocolError::UnknownEntry { message, id })
            }
        };
        match (self.state, msg) {
            (ClientState::Active | ClientState::Draining, Message::Need(n)) => {
                known(&self.outstanding, n.id, "Need")
            }
            (ClientState::Active | ClientState::Draining, Message::Have(h)) => {
                known(&self.outstanding, h.id, "Have")
            }
            (ClientState::Active | ClientState::Draining, Message::Installed(i)) => {
                known(&self.outstanding, i.id, "Installed")?;
                self.outstanding.remove(&i.id);
                Ok(())
            }
            (ClientState::Active | ClientState::Draining, Message::QuickChecked(q)) => {
                known(&self.outstanding, q.id, "QuickChecked")?;
                self.outstanding.remove(&q.id);
                Ok(())
            }
            (ClientState::Active | ClientState::Draining, Message::Failed(f)) => {
                known(&self.outstanding, f.id, "Failed")?;
                self.outstanding.remove(&f.id);
                Ok(())
            }
            (ClientState::Active, Message::Deleted(_)) => Ok(()),
            (ClientState::Draining, Message::Finished(_)) if self.outstanding.is_empty() => {
                self.state = ClientState::Finished;
                Ok(())
            }
            (_, Message::Abort(_)) => {
                self.state = ClientState::Finished;
                Ok(())
            }
            (state, msg) => Err(ProtocolError::Unexpected {
                message: msg.name(),
                state: match state {
                    ClientState::AwaitWelcome => "awaiting welcome",
                    ClientState::Active => "sending entries",
                    ClientState::Draining => "awaiting the last results",
                    ClientState::Finished => "finished",
                },
            }),
        }
    }

    /// Entries announced and not yet resolved.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// True once `Finished` (or `Abort`) arrived.
    pub fn is_finished(&self) -> bool {
        self.state == ClientState::Finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Abort, FileDone, Meta, QuickChecked};
    use bytes::Bytes;

    fn hello() -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            token: Bytes::from_static(b"t"),
            dest: Bytes::new(),
            chunk_size: 1 << 20,
            flags: 0,
            rename_aside: Vec::new(),
            filters: Vec::new(),
            max_delete: u64::MAX,
            holder: Bytes::new(),
            snapshot: Bytes::new(),
        }
    }

    fn welcome() -> Welcome {
        Welcome {
            version: PROTOCOL_VERSION,
            session: 1,
            free_bytes: 0,
            history_bytes: 0,
            history_ms: 0,
            renamed: Vec::new(),
            privileged: false,
        }
    }

    fn entry(id: u64, size: u64) -> Message {
        Message::Entry(Entry {
            id,
            kind: EntryKind::File,
            path: Bytes::from(format!("f{id}")),
            size,
            meta: Meta::default(),
            link_target: Bytes::new(),
            uid: 0,
            gid: 0,
            rdev: 0,
            source_stamp: 0,
            xattrs: Vec::new(),
        })
    }

    fn active() -> ServerSession {
        let mut s = ServerSession::new(Limits::default());
        let ServerEvent::Hello(h) = s.handle(Message::Hello(hello())).unwrap() else {
            panic!()
        };
        assert!(s.check_hello(&h).is_ok());
        assert!(s.accept(&h, welcome()).is_ok());
        s
    }

    #[test]
    fn entries_before_hello_are_refused() {
        let mut s = ServerSession::new(Limits::default());
        assert!(s.handle(entry(1, 0)).is_err());
    }

    #[test]
    fn ids_must_increase_and_chunks_must_fit() {
        let mut s = active();
        let _ = s.handle(entry(5, (1 << 20) + 10)).unwrap();
        assert_eq!(
            s.handle(entry(5, 1)),
            Err(ProtocolError::IdNotIncreasing { id: 5, previous: 5 })
        );
        let chunk = |index, len: usize| Chunk {
            id: 5,
            index,
            hash: [0; 32],
            zero: false,
            compressed: false,
            data: Bytes::from(vec![0; len]),
        };
        assert!(s.check_chunk(&chunk(0, 1 << 20)).is_ok());
        assert!(s.check_chunk(&chunk(1, 10)).is_ok());
        assert!(
            s.check_chunk(&chunk(1, 11)).is_err(),
            "longer than announced"
        );
        assert!(s.check_chunk(&chunk(2, 0)).is_err(), "past the end");
        let mut other = chunk(0, 1 << 20);
        other.id = 6;
        assert!(s.check_chunk(&other).is_err(), "unknown entry");
    }

    fn compressed(index: u64, len: usize) -> Chunk {
        Chunk {
            id: 1,
            index,
            hash: [0; 32],
            zero: false,
            compressed: true,
            data: Bytes::from(vec![7; len]),
        }
    }

    #[test]
    fn compressed_chunks_need_the_hello_flag() {
        let mut s = active();
        assert!(!s.compression_allowed());
        let _ = s.handle(entry(1, 1 << 20)).unwrap();
        assert!(
            matches!(
                s.check_chunk(&compressed(0, 100)),
                Err(ProtocolError::BadChunk { why, .. }) if why.contains("did not offer")
            ),
            "compressed chunks are refused unless the hello offered compression"
        );
    }

    #[test]
    fn compressed_chunks_are_bounded_by_the_chunk_length() {
        let mut s = ServerSession::new(Limits::default());
        let mut h = hello();
        h.flags = Hello::COMPRESS;
        let _ = s.handle(Message::Hello(h.clone())).unwrap();
        assert!(s.accept(&h, welcome()).is_ok());
        assert!(s.compression_allowed());
        // One full 1 MiB chunk and a 10-byte tail.
        let _ = s.handle(entry(1, (1 << 20) + 10)).unwrap();
        assert!(s.check_chunk(&compressed(0, 100)).is_ok());
        assert!(s.check_chunk(&compressed(0, 1 << 20)).is_ok());
        assert!(s.check_chunk(&compressed(1, 10)).is_ok());
        assert!(
            s.check_chunk(&compressed(1, 11)).is_err(),
            "longer than the chunk it holds"
        );
        assert!(s.check_chunk(&compressed(2, 5)).is_err(), "past the end");
    }

    #[test]
    fn finishes_when_last_entry_resolves_after_end() {
        let mut s = active();
        let _ = s.handle(entry(1, 3)).unwrap();
        let _ = s
            .handle(Message::FileDone(FileDone {
                id: 1,
                hash: [1; 32],
                chunks_sent: 1,
            }))
            .unwrap();
        let _ = s.handle(Message::EndOfEntries).unwrap();
        assert!(s.handle(entry(2, 3)).is_err(), "no entries after the end");
        assert!(s.resolve(1));
    }

    #[test]
    fn accept_refuses_what_check_hello_refuses() {
        let mut s = ServerSession::new(Limits::default());
        let mut h = hello();
        h.chunk_size = 0;
        let _ = s.handle(Message::Hello(h.clone())).unwrap();
        assert_eq!(
            s.accept(&h, welcome()).unwrap_err().reason,
            RefuseReason::BadChunkSize
        );
        assert!(
            s.handle(entry(1, 5)).is_err(),
            "nothing is accepted after a refused hello"
        );
    }

    #[test]
    fn late_messages_for_a_failed_entry_are_recognised() {
        let mut s = active();
        let _ = s.handle(entry(1, 10)).unwrap();
        let _ = s.handle(entry(2, 10)).unwrap();
        assert!(!s.resolve_failed(1));
        assert!(s.is_failed(1));
        assert!(!s.is_failed(2), "only the failed entry");
        s.resolve(2);
        assert!(!s.is_failed(2), "an installed entry is not failed");
    }

    #[test]
    fn end_with_nothing_outstanding_finishes_at_once() {
        let mut s = active();
        let _ = s.handle(Message::EndOfEntries).unwrap();
        assert!(s.is_finished());
    }

    #[test]
    fn bad_chunk_size_and_version_are_refused() {
        let s = ServerSession::new(Limits::default());
        let mut h = hello();
        h.chunk_size = 3 << 20;
        assert_eq!(
            s.check_hello(&h).unwrap_err().reason,
            RefuseReason::BadChunkSize
        );
        h.chunk_size = 1 << 20;
        h.version = 99;
        assert_eq!(
            s.check_hello(&h).unwrap_err().reason,
            RefuseReason::BadVersion
        );
    }

    #[test]
    fn a_quick_check_is_outstanding_until_answered_and_takes_no_data() {
        let mut s = active();
        let check = Message::QuickCheck(QuickCheck {
            id: 1,
            dir: Bytes::from_static(b"fd0"),
            first: Bytes::from_static(b"a"),
            last: Bytes::from_static(b"z"),
            files: 10,
            digest: [7; 32],
        });
        assert!(matches!(
            s.handle(check.clone()),
            Ok(ServerEvent::QuickCheck(_))
        ));
        assert_eq!(s.outstanding(), 1);
        // Its id is used up, and it is not a file: no file hash may name it.
        assert!(matches!(
            s.handle(check),
            Err(ProtocolError::IdNotIncreasing { .. })
        ));
        let done = Message::FileDone(FileDone {
            id: 1,
            hash: [0; 32],
            chunks_sent: 0,
        });
        assert!(matches!(
            s.handle(done),
            Err(ProtocolError::UnknownEntry { .. })
        ));
        assert!(matches!(
            s.handle(Message::EndOfEntries),
            Ok(ServerEvent::EndOfEntries)
        ));
        assert!(s.resolve(1));
        assert!(s.is_finished());

        let mut c = ClientSession::new();
        c.handle_answer(Message::Welcome(welcome()))
            .unwrap()
            .unwrap();
        let id = c.announce(EntryKind::Dir);
        let answer = |id| {
            Message::QuickChecked(QuickChecked {
                id,
                unchanged: true,
            })
        };
        assert!(c.handle(&answer(id + 1)).is_err());
        c.handle(&answer(id)).unwrap();
        assert_eq!(c.outstanding(), 0);
        assert!(c.handle(&answer(id)).is_err(), "answered twice");
    }

    #[test]
    fn client_rejects_results_for_unknown_entries() {
        let mut c = ClientSession::new();
        assert!(
            c.handle_answer(Message::Welcome(welcome()))
                .unwrap()
                .is_ok()
        );
        let id = c.announce(EntryKind::File);
        let installed = |id| {
            Message::Installed(crate::Installed {
                id,
                hash: [0; 32],
                bytes_written: 0,
                unchanged: false,
                meta_only: false,
            })
        };
        assert!(c.handle(&installed(id + 1)).is_err());
        c.end_of_entries();
        let finished = Message::Finished(crate::Finished {
            installed: 1,
            failed: 0,
            not_applied: Default::default(),
        });
        assert!(
            c.handle(&finished).is_err(),
            "finished before every entry resolved"
        );
        c.handle(&installed(id)).unwrap();
        c.handle(&finished).unwrap();
        assert!(c.is_finished());
        let _ = Abort {
            message: String::new(),
        };
    }
}
