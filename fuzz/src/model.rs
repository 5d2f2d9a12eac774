//! The reference model of the receiver's control-stream rules, for the `session` harness.
//!
//! Written from the protocol rules (the module docs of `haul_proto::session` and DESIGN.md),
//! independently of `ServerSession`, so that a rule the session gets wrong shows up as a
//! disagreement rather than being copied into the check.

use std::collections::BTreeMap;

use haul_proto::{
    EntryKind, FileDone, Hello, Limits, Message, PROTOCOL_VERSION, RefuseReason, SourceFailed,
};

/// Where the reference model thinks the session is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    AwaitHello,
    AwaitDecision,
    Active,
    Draining,
    Finished,
    Refused,
}

/// The protocol rules, written independently of `ServerSession`.
#[derive(Debug)]
pub(crate) struct Model {
    pub(crate) state: State,
    /// The limits in force; accepting a hello narrows `max_chunk` to its chunk size.
    pub(crate) limits: Limits,
    pub(crate) chunk_size: u32,
    pub(crate) last_id: Option<u64>,
    /// Outstanding entries: kind and (for files) size.
    pub(crate) outstanding: BTreeMap<u64, (EntryKind, u64)>,
}

impl Model {
    /// A session awaiting its hello, under `limits`.
    pub(crate) fn new(limits: Limits) -> Model {
        Model {
            state: State::AwaitHello,
            limits,
            chunk_size: haul_proto::DEFAULT_CHUNK_SIZE,
            last_id: None,
            outstanding: BTreeMap::new(),
        }
    }

    /// What `check_hello` must answer: the version first, then the chunk size.
    pub(crate) fn check_hello(&self, hello: &Hello) -> Result<(), RefuseReason> {
        let cs = hello.chunk_size;
        if hello.version != PROTOCOL_VERSION {
            Err(RefuseReason::BadVersion)
        } else if !cs.is_power_of_two()
            || !(self.limits.min_chunk..=self.limits.max_chunk).contains(&cs)
        {
            Err(RefuseReason::BadChunkSize)
        } else {
            Ok(())
        }
    }

    /// Applies `accept`: legal only while a hello awaits a decision and if it passes the checks.
    pub(crate) fn accept(&mut self, hello: &Hello) -> Result<(), RefuseReason> {
        if self.state != State::AwaitDecision {
            return Err(RefuseReason::Other);
        }
        self.check_hello(hello)?;
        self.state = State::Active;
        self.chunk_size = hello.chunk_size;
        self.limits.max_chunk = hello.chunk_size;
        Ok(())
    }

    /// Applies `resolve`; true if that finished the session.
    pub(crate) fn resolve(&mut self, id: u64) -> bool {
        self.outstanding.remove(&id);
        let last = self.state == State::Draining && self.outstanding.is_empty();
        if last {
            self.state = State::Finished;
        }
        last
    }

    /// Applies `msg` to the model; true if it is legal.
    pub(crate) fn handle(&mut self, msg: &Message) -> bool {
        let m = self;
        match (m.state, msg) {
            (State::AwaitHello, Message::Hello(_)) => {
                m.state = State::AwaitDecision;
                true
            }
            (State::Active, Message::Entry(e)) => {
                let increasing = m.last_id.is_none_or(|last| e.id > last);
                let room = m.outstanding.len() < m.limits.max_outstanding as usize;
                if increasing && room {
                    m.last_id = Some(e.id);
                    let size = if e.kind == EntryKind::File { e.size } else { 0 };
                    m.outstanding.insert(e.id, (e.kind, size));
                }
                increasing && room
            }
            (State::Active, Message::QuickCheck(q)) => {
                // Outstanding like a directory until resolved; never takes data.
                let increasing = m.last_id.is_none_or(|last| q.id > last);
                let room = m.outstanding.len() < m.limits.max_outstanding as usize;
                if increasing && room {
                    m.last_id = Some(q.id);
                    m.outstanding.insert(q.id, (EntryKind::Dir, 0));
                }
                increasing && room
            }
            (State::Active | State::Draining, Message::FileDone(FileDone { id, .. }))
            | (State::Active | State::Draining, Message::SourceFailed(SourceFailed { id, .. })) => {
                matches!(m.outstanding.get(id), Some((EntryKind::File, _)))
            }
            (State::Active, Message::EndOfEntries) => {
                // Nothing left to resolve: no `resolve` call would ever finish the session.
                m.state = if m.outstanding.is_empty() {
                    State::Finished
                } else {
                    State::Draining
                };
                true
            }
            (_, Message::Abort(_)) => {
                m.state = State::Finished;
                true
            }
            _ => false,
        }
    }
}
