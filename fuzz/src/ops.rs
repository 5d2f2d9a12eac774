//! The `session` input's vocabulary: wrapper types that derive `Arbitrary`, since
//! `haul-proto`'s own types do not (and must not depend on `arbitrary`).

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;

/// Up to 255 arbitrary bytes: a length byte, then that many bytes (fewer if the input ends).
/// Written by hand, not derived, so that seeds can be written byte by byte.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Blob(pub Vec<u8>);

impl<'a> Arbitrary<'a> for Blob {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let len = usize::from(u8::arbitrary(u)?).min(u.len());
        Ok(Blob(u.bytes(len)?.to_vec()))
    }
}

impl Blob {
    /// The blob cut at `,` into a list (empty blob: empty list), for list-valued fields.
    pub fn list(&self) -> Vec<Bytes> {
        if self.0.is_empty() {
            return Vec::new();
        }
        self.0
            .split(|&b| b == b',')
            .map(Bytes::copy_from_slice)
            .collect()
    }
}

/// First thing in an input: the limits the session is created with.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub struct Setup {
    /// `Some(n)`: `max_outstanding = n`, small enough to be reached. `None`: the defaults.
    pub max_outstanding: Option<u8>,
}

/// A protocol version.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionSel {
    /// The version this build speaks.
    Current,
    /// Any other.
    Raw(u16),
}

/// A chunk size for a hello.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkSizeSel {
    /// `1 << (n % 32)`: a power of two, legal when within the limits.
    Shift(u8),
    /// Any value.
    Raw(u32),
}

/// The fields of a `Hello`.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub struct HelloArgs {
    /// Version.
    pub version: VersionSel,
    /// Token bytes.
    pub token: Blob,
    /// Destination bytes.
    pub dest: Blob,
    /// Chunk size.
    pub chunk_size: ChunkSizeSel,
    /// Option bits (`Hello::CHECKSUM`, `Hello::DRY_RUN`, or anything).
    pub flags: u32,
    /// Directories to rename aside, `,`-separated (empty: none).
    pub rename_aside: Blob,
}

/// The fields of the `Welcome` the engine passes to `accept`.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub struct WelcomeArgs {
    /// The version the engine writes; `accept` must replace it with `PROTOCOL_VERSION`.
    pub version: u16,
    /// Session id.
    pub session: u64,
    /// Free bytes.
    pub free_bytes: u64,
    /// History bytes.
    pub history_bytes: u64,
    /// History milliseconds.
    pub history_ms: u64,
    /// Directories renamed aside, `,`-separated; each `X` becomes `X -> X.1`.
    pub renamed: Blob,
}

/// An entry id, relative to the last id the session accepted.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdSel {
    /// The last accepted id plus one (1 for the first entry).
    Next,
    /// The last accepted id plus `n` (0 repeats it).
    Skip(u8),
    /// Any id.
    Raw(u64),
}

/// An id that names an entry in a later message.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdRef {
    /// The `n`-th accepted entry (mod their count; resolved ones included), or 0 if none.
    Announced(u8),
    /// Any id.
    Raw(u64),
}

/// A file size for an entry.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeSel {
    /// A small size.
    Bytes(u16),
    /// `chunks` whole chunks of the negotiated size plus `extra` bytes.
    Chunks {
        /// Whole chunks.
        chunks: u8,
        /// Bytes after them.
        extra: u16,
    },
    /// Any size.
    Raw(u64),
}

/// An entry kind.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KindSel {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symlink.
    Symlink,
}

/// A chunk index, relative to the named file's chunk count.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexSel {
    /// `n` mod the count (0 if the file has no chunks).
    Nth(u8),
    /// The last chunk (0 if none).
    Last,
    /// One past the last.
    Past,
    /// Any index.
    Raw(u64),
}

/// A chunk's data length, relative to the length the layout gives it.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LenSel {
    /// Exactly the layout's length (0 if the index is not in the file).
    Exact,
    /// A zero chunk: `zero = true` and no data.
    Zero,
    /// The exact length plus `delta` (never below 0).
    Off(i8),
    /// Any length up to 64 KiB.
    Raw(u16),
}

/// A control message from the client.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub enum ClientMsg {
    /// `Hello`.
    Hello(HelloArgs),
    /// `Entry`.
    Entry {
        /// Id.
        id: IdSel,
        /// Kind.
        kind: KindSel,
        /// Path bytes.
        path: Blob,
        /// Size.
        size: SizeSel,
        /// Mode bits.
        mode: u16,
        /// Mtime seconds.
        mtime_sec: i64,
        /// Mtime nanoseconds (not range-checked by the session; the decoder does that).
        mtime_nsec: u32,
        /// Link target bytes.
        link_target: Blob,
    },
    /// `EndOfEntries`.
    EndOfEntries,
    /// `FileDone`.
    FileDone {
        /// Id.
        id: IdRef,
        /// Hash, repeated 32 times.
        hash: u8,
        /// Chunks sent (not checked by the session; passed through in the event).
        chunks_sent: u64,
    },
    /// `SourceFailed`.
    SourceFailed {
        /// Id.
        id: IdRef,
        /// Text.
        message: Blob,
    },
    /// `Abort`.
    Abort {
        /// Text.
        message: Blob,
    },
    /// A message the server never accepts on the control stream.
    Stray(StrayMsg),
    /// `QuickCheck` of a run in directory `dir`.
    QuickCheck {
        /// Id (from the entry sequence).
        id: IdSel,
        /// Directory bytes.
        dir: Blob,
        /// Files in the run.
        files: u64,
    },
}

/// Messages only the server sends, and chunks (which belong on data streams).
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub enum StrayMsg {
    /// `Welcome`.
    Welcome,
    /// `Refused`.
    Refused,
    /// `Need` with one range.
    Need(IdRef),
    /// `Have` with one hash.
    Have(IdRef),
    /// `Installed` (`unchanged` as given).
    Installed(IdRef, bool),
    /// `Failed`.
    Failed(IdRef),
    /// `Finished`.
    Finished,
    /// `Chunk` with 16 bytes.
    Chunk(IdRef),
    /// `QuickChecked` (`unchanged` as given).
    QuickChecked(IdRef, bool),
}

/// One step of an input.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Feed a client message to `handle`.
    Send(ClientMsg),
    /// Decide the pending hello as the engine does: accept if `check_hello` passes, else
    /// refuse with its answer. Does nothing without a pending hello.
    Decide(WelcomeArgs),
    /// Refuse the pending hello (e.g. a bad token). Does nothing without one.
    Refuse,
    /// A chunk arrives on a data stream: `check_chunk`.
    Chunk {
        /// Which entry.
        id: IdRef,
        /// Which chunk.
        index: IndexSel,
        /// How long.
        len: LenSel,
    },
    /// The engine resolved an entry (installed or failed).
    Resolve(IdRef),
    /// Call `accept` whatever the state (a buggy engine): it must refuse outside the
    /// handshake and whatever `check_hello` refuses.
    Accept {
        /// The hello to accept; `None`: the last hello the session handled (a legal default
        /// hello if there was none).
        hello: Option<HelloArgs>,
        /// The welcome to send.
        welcome: WelcomeArgs,
    },
}
