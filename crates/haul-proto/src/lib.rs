//! The haul wire protocol, sans-IO.
//!
//! This crate owns everything two haul peers must agree on, and nothing that touches the
//! outside world: no sockets, no tokio, no file system and no clock. Bytes go in, typed
//! messages and protocol errors come out, in the manner of `quinn-proto`. That is what lets the
//! fuzzers and the simulation tests in `haul-testing` drive it directly.
//!
//! # Layout
//! - [`frame`]: the length-prefixed frame codec ([`FrameDecoder`] accumulates bytes and yields
//!   whole frames; "incomplete" is a normal answer, not an error).
//! - [`message`]: the messages ([`Message`]) and their total, bounds-checked encode/decode.
//! - [`layout`]: how a file of a given size is cut into chunks ([`ChunkLayout`]).
//! - [`session`]: the control-stream state machines ([`ServerSession`], [`ClientSession`]) that
//!   check each message arrives in a legal order and within the negotiated limits.
//! - [`limits`]: the bounds every length a peer declares is checked against.
//!
//! # Example
//! ```
//! use haul_proto::{FrameDecoder, Limits, Message, Meta, Entry, EntryKind};
//! let entry = Message::Entry(Entry {
//!     id: 7,
//!     kind: EntryKind::File,
//!     path: b"po1/wphost.db".to_vec().into(),
//!     size: 5,
//!     meta: Meta { mode: 0o644, mtime_sec: 1_700_000_000, mtime_nsec: 0 },
//!     link_target: Default::default(),
//!     uid: 0,
//!     gid: 0,
//!     rdev: 0,
//!     source_stamp: 0,
//!     xattrs: Vec::new(),
//! });
//! let wire = entry.encode();
//! let mut decoder = FrameDecoder::new(Limits::default());
//! decoder.push(&wire);
//! let frame = decoder.next_frame().unwrap().expect("a whole frame");
//! assert_eq!(Message::decode(frame, &Limits::default()).unwrap(), entry);
//! ```
//!
//! # Must not depend on
//! Any async runtime, any I/O crate, any other haul crate. Everything above depends on this.

pub mod frame;
pub mod layout;
pub mod limits;
pub mod message;
pub mod session;

pub use frame::{FrameDecoder, FrameError};
pub use layout::ChunkLayout;
pub use limits::Limits;
pub use message::{
    Abort, Chunk, DecodeError, Deleted, Entry, EntryKind, Failed, FileDone, Finished, Hash, Have,
    Hello, Installed, MAX_XATTR_TOTAL, MAX_XATTR_VALUE, MAX_XATTRS, Message, Meta, Names, Need,
    NotApplied, Prune, QuickCheck, QuickChecked, RefuseReason, Refused, Renamed, Request, Response,
    SourceFailed, Welcome, Xattr,
};
pub use session::{ClientSession, ProtocolError, ServerSession};

/// The protocol version this build speaks. Peers with a different version are refused with a
/// message naming both versions.
pub const PROTOCOL_VERSION: u16 = 7;

/// The default chunk size: 4 MiB. Chunk sizes are powers of two so that every chunk is a whole
/// BLAKE3 subtree and a file's hash can be assembled from its chunk hashes.
pub const DEFAULT_CHUNK_SIZE: u32 = 4 << 20;
