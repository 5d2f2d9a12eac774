//! The messages two peers exchange, and their encoding.
//!
//! The control stream (one bidirectional stream per connection, opened by the client) carries
//! the handshake, the streaming manifest (`Entry`), the receiver's answers (`Need`, `Installed`,
//! `Failed`) and the end of the session. Data streams (unidirectional, client to server) carry
//! only `Chunk` messages, many files' chunks one after another, so small files never cost a
//! stream or a round trip each.
//!
//! Decoding is total: any byte string yields a message or a [`DecodeError`], never a panic, and
//! every declared length is checked against [`Limits`] before it is used.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::Limits;
use crate::frame::{Frame, HEADER_LEN, header};

/// A BLAKE3 hash or chaining value.
pub type Hash = [u8; 32];

/// File kinds a manifest can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link, copied as a link and never followed.
    Symlink,
    /// Another name for a file already installed in this session: `link_target` is that
    /// file's path relative to the destination, and the receiver hard-links it (no data).
    HardLink,
    /// A named pipe.
    Fifo,
    /// A Unix domain socket node.
    Socket,
    /// A character device (`rdev` names it); created only where the receiver grants it.
    CharDev,
    /// A block device (`rdev` names it); created only where the receiver grants it.
    BlockDev,
}

impl EntryKind {
    /// FIFOs, sockets and device nodes: made with `mknod`, no data.
    pub fn is_special(self) -> bool {
        matches!(
            self,
            EntryKind::Fifo | EntryKind::Socket | EntryKind::CharDev | EntryKind::BlockDev
        )
    }

    fn code(self) -> u8 {
        match self {
            EntryKind::File => 0,
            EntryKind::Dir => 1,
            EntryKind::Symlink => 2,
            EntryKind::HardLink => 3,
            EntryKind::Fifo => 4,
            EntryKind::Socket => 5,
            EntryKind::CharDev => 6,
            EntryKind::BlockDev => 7,
        }
    }

    fn from_code(code: u8) -> Option<EntryKind> {
        Some(match code {
            0 => EntryKind::File,
            1 => EntryKind::Dir,
            2 => EntryKind::Symlink,
            3 => EntryKind::HardLink,
            4 => EntryKind::Fifo,
            5 => EntryKind::Socket,
            6 => EntryKind::CharDev,
            7 => EntryKind::BlockDev,
            _ => return None,
        })
    }
}

/// One extended attribute (`user.*`, `security.*`, `trusted.*`, `system.posix_acl_*`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Xattr {
    /// The full name with its namespace, e.g. `security.capability`.
    pub name: Bytes,
    /// The raw value (for ACLs, the kernel's binary form).
    pub value: Bytes,
}

/// Most extended attributes one entry may carry.
pub const MAX_XATTRS: u32 = 128;
/// Longest extended attribute value (Linux's own limit).
pub const MAX_XATTR_VALUE: u32 = 64 << 10;
/// Most bytes of names and values of one entry's extended attributes together.
pub const MAX_XATTR_TOTAL: usize = 256 << 10;

/// Metadata carried for every entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Meta {
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Modification time, seconds since the epoch.
    pub mtime_sec: i64,
    /// Nanoseconds part of the modification time.
    pub mtime_nsec: u32,
}

/// Client's first message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version the client speaks.
    pub version: u16,
    /// The secret that proves the client may write under the receiver's root.
    pub token: Bytes,
    /// Destination path relative to the receiver's root (`/`-separated bytes; may be empty).
    pub dest: Bytes,
    /// Chunk size the client will use; a power of two within the limits.
    pub chunk_size: u32,
    /// Options ([`Hello::CHECKSUM`], [`Hello::DRY_RUN`], [`Hello::COMPRESS`], ...).
    pub flags: u32,
    /// Directories under the destination to rename aside (`DIR` becomes `DIR.N`) and copy anew.
    pub rename_aside: Vec<Bytes>,
    /// The sender's filter rules (`+ PATTERN` / `- PATTERN`, in order), so that with
    /// [`Hello::DELETE`] the receiver keeps what the rules exclude.
    pub filters: Vec<Bytes>,
    /// With [`Hello::DELETE`]: most entries the run may delete (`u64::MAX`: no limit). Over
    /// it, nothing is deleted and the run fails.
    pub max_delete: u64,
    /// The job this session works for, as it named itself when it took a lease (empty: none).
    /// A session may write into a leased subtree only when this names the lease's holder.
    pub holder: Bytes,
    /// With [`Hello::PULL`]: the id of a snapshot to read `dest` from instead of the live tree
    /// (empty: the live tree).
    pub snapshot: Bytes,
}

impl Hello {
    /// Compare files by hash even when size and mtime match (adopts copies made by others).
    pub const CHECKSUM: u32 = 1;
    /// Plan only: report what would be sent, change nothing on the target.
    pub const DRY_RUN: u32 = 2;
    /// The client may send zstd-compressed chunks ([`Chunk::compressed`]). Without it the
    /// receiver refuses them, so a receiver never decompresses what it did not agree to.
    pub const COMPRESS: u32 = 4;
    /// Apply the owners and groups the entries carry (where the receiver grants it).
    pub const OWNERS: u32 = 8;
    /// Owners are numbers only: do not map them through user and group names.
    pub const NUMERIC_IDS: u32 = 16;
    /// Entries carry extended attributes and ACLs, and the receiver applies them.
    pub const XATTRS: u32 = 32;
    /// Mirror: the client sends `Prune` lists and the receiver removes what they lack.
    pub const DELETE: u32 = 64;
    /// With [`Hello::DELETE`], also remove what the filter rules exclude.
    pub const DELETE_EXCLUDED: u32 = 128;
    /// Pull: the client asks the server to send `dest` (under the token's grant) to it. The
    /// server answers with a `Hello` of its own, as the sender, and the client receives; the
    /// other flags and fields say how the client wants it sent.
    pub const PULL: u32 = 256;
    /// Remote operations: after the `Welcome`, the client sends [`Request`]s and the server
    /// answers each with [`Response`]s. No entries move.
    pub const OPS: u32 = 512;
    /// With [`Hello::PULL`]: send multiply-linked files as separate files.
    pub const NO_HARD_LINKS: u32 = 1024;
    /// With [`Hello::PULL`]: do not cross into other file systems below the source.
    pub const ONE_FILE_SYSTEM: u32 = 2048;

    /// True if `flag` is set.
    pub fn has(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }
}

/// A directory the receiver renamed aside before copying it anew.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Renamed {
    /// The path under the destination as the client named it.
    pub from: Bytes,
    /// Where the old copy now is (dry run: where it would go).
    pub to: Bytes,
}

/// Server's answer to an accepted hello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    /// Protocol version the server speaks.
    pub version: u16,
    /// An id for this session, for logs on both sides.
    pub session: u64,
    /// Bytes free on the receiver's file system at the start of the session.
    pub free_bytes: u64,
    /// Throughput history of this receiver: bytes moved by recent sessions ...
    pub history_bytes: u64,
    /// ... and the milliseconds they took (0 when there is no history yet).
    pub history_ms: u64,
    /// Directories renamed aside for this session.
    pub renamed: Vec<Renamed>,
    /// The token's grant lets this session apply owners, setuid/setgid bits, device nodes and
    /// `security.*`/`trusted.*` attributes (the operator's choice).
    pub privileged: bool,
}

/// Why a hello was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefuseReason {
    /// The token is not one the receiver accepts.
    BadToken,
    /// The protocol versions differ.
    BadVersion,
    /// The destination path is not acceptable.
    BadPath,
    /// The chunk size is not acceptable.
    BadChunkSize,
    /// Anything else; the text says what.
    Other,
    /// The token's grant does not allow this (a read-only token asked to write, or the
    /// reverse).
    Scope,
    /// The destination is leased by another job; the text names its holder and purpose.
    Leased,
}

/// Server's answer to a refused hello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The category.
    pub reason: RefuseReason,
    /// What to tell the operator.
    pub message: String,
}

/// A remote operation asked of the server in an [`Hello::OPS`] session. The body is the
/// operation and its arguments as the engine encodes them (JSON); the protocol only frames it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Chosen by the client; every [`Response`] to it carries the same id.
    pub id: u64,
    /// The operation.
    pub body: Bytes,
}

/// One part of the answer to a [`Request`]. A long answer (a manifest of a large tree) comes
/// in several parts, each with `more` set but the last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The request's id.
    pub id: u64,
    /// False when the operation failed; the body then holds the error.
    pub ok: bool,
    /// More parts follow.
    pub more: bool,
    /// The result (or the error), as the engine encodes it.
    pub body: Bytes,
}

impl Request {
    /// The largest body a request or response part may have.
    pub const MAX_BODY: u32 = 1 << 20;
}

/// One entry of the streaming manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Client-chosen id, strictly increasing within a session.
    pub id: u64,
    /// What the entry is.
    pub kind: EntryKind,
    /// Path relative to the destination, `/`-separated bytes; empty for the destination itself.
    pub path: Bytes,
    /// Size in bytes (files only).
    pub size: u64,
    /// Permission bits and mtime.
    pub meta: Meta,
    /// Link target (symlinks: the link's text; hard links: the first name's path relative to
    /// the destination), as raw bytes.
    pub link_target: Bytes,
    /// Owner, as the sender's number (see [`Names`] for its name).
    pub uid: u32,
    /// Group, as the sender's number.
    pub gid: u32,
    /// Device number (character and block devices only).
    pub rdev: u64,
    /// For a regular file: the sender's stamp of this version of it (a hash of its change
    /// time, inode and device; 0 when unknown). A receiver resuming the file offers the chunks
    /// an earlier run journaled as already verified only when the stamp is the one they were
    /// journaled under; otherwise the sender reads and compares them first, so a source
    /// rewritten with its size and mtime put back never resumes into a mix of two versions.
    pub source_stamp: u64,
    /// Extended attributes and ACLs, in name order (only when the hello set [`Hello::XATTRS`]).
    pub xattrs: Vec<Xattr>,
}

/// The names of owner and group numbers, sent once per number before the first entry that
/// uses it, so a receiver can map them through its own user database.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Names {
    /// (uid, user name); a number with no name on the sender is not sent.
    pub users: Vec<(u32, Bytes)>,
    /// (gid, group name).
    pub groups: Vec<(u32, Bytes)>,
}

impl Names {
    /// Most names in one message.
    pub const MAX: u32 = 4096;
}

/// With [`Hello::DELETE`], after every entry is resolved: the names the source directory `dir`
/// holds (after filters). The receiver removes what its own directory holds beyond them.
/// A directory with many names takes several messages, the last with `last` set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prune {
    /// The directory, relative to the destination.
    pub dir: Bytes,
    /// Names in it, each one component.
    pub names: Vec<Bytes>,
    /// True on the directory's last message.
    pub last: bool,
}

impl Prune {
    /// Most names in one message.
    pub const MAX_NAMES: u32 = 8192;
}

/// The receiver's report of what `--delete` removed (or, in a dry run, would remove). The
/// last one has `done` set and ends the deletion phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deleted {
    /// Paths removed (each with all it held), relative to the destination.
    pub paths: Vec<Bytes>,
    /// True on the last report.
    pub done: bool,
    /// Entries removed in all, counting what removed directories held (on the last report).
    pub total: u64,
    /// Why nothing was deleted (`--max-delete` exceeded, ...), on the last report; empty if
    /// the deletion ran.
    pub refused: String,
}

impl Deleted {
    /// Most paths in one report.
    pub const MAX_PATHS: u32 = 1024;
}

/// What a receiver did not apply, because its grant or its privileges do not allow it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NotApplied {
    /// Entries whose owner or group was not set.
    pub owners: u64,
    /// Entries whose setuid/setgid bits were dropped.
    pub special_bits: u64,
    /// Device nodes not created.
    pub devices: u64,
    /// Extended attributes (or ACLs) not set.
    pub xattrs: u64,
}

impl NotApplied {
    /// True if everything was applied.
    pub fn is_empty(&self) -> bool {
        *self == NotApplied::default()
    }
}

/// Which chunks of a file the receiver wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Need {
    /// The entry id.
    pub id: u64,
    /// Half-open chunk index ranges `(start, count)`; empty means nothing is needed.
    pub ranges: Vec<(u64, u64)>,
}

/// Chunks the receiver already holds (from an interrupted run, the old copy of the file, or
/// a renamed-aside copy), with their hashes: the sender sends only the chunks whose hash
/// differs. Sent before the file's `Need`; a long list comes in several messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Have {
    /// The entry id.
    pub id: u64,
    /// Chunk index of `hashes[0]`.
    pub start: u64,
    /// True when these chunks were verified against this sender's hashes in an interrupted
    /// run for the same version of the source file (same size and mtime, which the receiver's
    /// journal is keyed on): a sender may then take the hashes as they are instead of reading
    /// the chunks again. False for chunks of an old copy, which must always be compared.
    pub journaled: bool,
    /// Hashes of consecutive chunks; an all-zero hash means "not held".
    pub hashes: Vec<Hash>,
}

impl Have {
    /// Most hashes in one message (32 KiB), well inside any frame limit.
    pub const MAX_HASHES: usize = 1024;
}

/// The client's whole-file hash, sent once every chunk of the file has been read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileDone {
    /// The entry id.
    pub id: u64,
    /// BLAKE3 hash of the whole file (what `b3sum` prints).
    pub hash: Hash,
    /// How many chunks were sent; the others are reused from what the receiver holds.
    pub chunks_sent: u64,
}

/// The client could not read a file it announced; the receiver drops what it has of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFailed {
    /// The entry id.
    pub id: u64,
    /// Why, for the receiver's log.
    pub message: String,
}

/// The receiver installed an entry under its final name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    /// The entry id.
    pub id: u64,
    /// The hash the receiver verified (files), or zeros.
    pub hash: Hash,
    /// Payload bytes the receiver wrote for it.
    pub bytes_written: u64,
    /// True when the target already held this exact file: nothing was written.
    pub unchanged: bool,
    /// True when only metadata (owner, mode, attributes) was changed: no data was written.
    pub meta_only: bool,
}

/// The client asks whether the target already holds a run of files unchanged, instead of
/// announcing them one by one: on a re-run of a tree where little changed, one message each
/// way per directory replaces one each way per file.
///
/// The run is every non-directory entry of the source directory `dir` whose name lies between
/// `first` and `last` (inclusive, compared as bytes), and all of them are regular files. The
/// receiver lists the same range of its own directory and answers with [`QuickChecked`]:
/// unchanged when its regular files there have exactly the same names, sizes, mtimes and
/// permission bits (the quick check, `digest` over `files` of them), and nothing else but
/// directories is in that range. Either way the id is resolved; when the answer is not
/// unchanged, the client announces the run's files as entries of their own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuickCheck {
    /// Client-chosen id from the same sequence as entry ids (strictly increasing).
    pub id: u64,
    /// The directory, relative to the destination (`/`-separated; empty for the destination).
    pub dir: Bytes,
    /// The run's first name.
    pub first: Bytes,
    /// The run's last name.
    pub last: Bytes,
    /// How many files the run holds.
    pub files: u64,
    /// The combined quick-check digest of the run's files (see `haul_manifest::QuickDigest`).
    pub digest: Hash,
}

/// The receiver's answer to a [`QuickCheck`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuickChecked {
    /// The check's id.
    pub id: u64,
    /// True when the target holds every file of the run unchanged: the run is done.
    pub unchanged: bool,
}

/// The receiver could not install an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failed {
    /// The entry id.
    pub id: u64,
    /// What went wrong, for the operator.
    pub message: String,
    /// True when the failure is the target running out of space.
    pub no_space: bool,
}

/// End of the session, sent by the server once every entry is resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    /// Entries installed.
    pub installed: u64,
    /// Entries that failed.
    pub failed: u64,
    /// What the receiver could not or would not apply.
    pub not_applied: NotApplied,
}

/// One chunk of file data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// The entry id.
    pub id: u64,
    /// Chunk index within the file.
    pub index: u64,
    /// The chunk's BLAKE3 chaining value (or the file hash if the file has one chunk).
    pub hash: Hash,
    /// True when the chunk is all zeros and `data` is empty (a hole in a sparse file).
    pub zero: bool,
    /// True when `data` is one zstd frame holding the chunk's bytes (only in a session whose
    /// hello set [`Hello::COMPRESS`]). `hash` still covers the uncompressed bytes, so
    /// verification does not depend on compression. Never set together with `zero`.
    pub compressed: bool,
    /// The chunk's bytes (empty when `zero`; zstd-compressed when `compressed`).
    pub data: Bytes,
}

impl Chunk {
    /// Wire values of the chunk's encoding byte.
    const RAW: u8 = 0;
    const ZERO: u8 = 1;
    const ZSTD: u8 = 2;

    /// The length of a chunk frame before its data: frame header, id, index, hash, encoding
    /// and data length. The same for every chunk, so a sender can leave room for it and read
    /// a chunk's bytes straight into its place in an outgoing buffer.
    pub const HEAD_LEN: usize = HEADER_LEN + 8 + 8 + 32 + 1 + 4;

    /// Writes the head of this chunk's frame for `data_len` bytes of data (which need not be
    /// in `self.data`: see [`Chunk::HEAD_LEN`]) into `out`, exactly as
    /// [`Message::encode_parts`] does. `out` must be [`Chunk::HEAD_LEN`] bytes long.
    pub fn write_head(&self, mut out: &mut [u8], data_len: usize) {
        let body_len = Self::HEAD_LEN - HEADER_LEN + data_len;
        out.put_slice(&header(kind::CHUNK, body_len));
        out.put_u64(self.id);
        out.put_u64(self.index);
        out.put_slice(&self.hash);
        out.put_u8(if self.zero {
            Chunk::ZERO
        } else if self.compressed {
            Chunk::ZSTD
        } else {
            Chunk::RAW
        });
        out.put_u32(data_len as u32);
    }

    /// The chunk's frame as its head and its data, the data not copied.
    fn frame_parts(&self) -> (Bytes, Bytes) {
        let mut head = BytesMut::zeroed(Self::HEAD_LEN);
        self.write_head(&mut head, self.data.len());
        (head.freeze(), self.data.clone())
    }
}

/// A fatal error: the sender closes the session after this.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Abort {
    /// What went wrong.
    pub message: String,
}

/// Every message of the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// See [`Hello`].
    Hello(Hello),
    /// See [`Welcome`].
    Welcome(Welcome),
    /// See [`Refused`].
    Refused(Refused),
    /// See [`Entry`].
    Entry(Entry),
    /// The client has announced every entry.
    EndOfEntries,
    /// See [`Need`].
    Need(Need),
    /// See [`Have`].
    Have(Have),
    /// See [`FileDone`].
    FileDone(FileDone),
    /// See [`SourceFailed`].
    SourceFailed(SourceFailed),
    /// See [`Installed`].
    Installed(Installed),
    /// See [`Failed`].
    Failed(Failed),
    /// See [`Finished`].
    Finished(Finished),
    /// See [`Chunk`].
    Chunk(Chunk),
    /// See [`Abort`].
    Abort(Abort),
    /// See [`QuickCheck`].
    QuickCheck(QuickCheck),
    /// See [`QuickChecked`].
    QuickChecked(QuickChecked),
    /// See [`Names`].
    Names(Names),
    /// See [`Prune`].
    Prune(Prune),
    /// The client has sent every `Prune` list: the receiver deletes and reports [`Deleted`].
    PruneEnd,
    /// See [`Deleted`].
    Deleted(Deleted),
    /// See [`Request`].
    Request(Request),
    /// See [`Response`].
    Response(Response),
}

/// A frame that does not decode to a valid message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Unknown message type byte.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// The body ended before a field.
    #[error("message truncated while reading {field}")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// Bytes left after the last field.
    #[error("{0} unexpected trailing bytes")]
    Trailing(usize),
    /// A declared length is over its limit.
    #[error("{field} of {declared} bytes exceeds the limit of {limit}")]
    TooLong {
        /// The field.
        field: &'static str,
        /// What the peer declared.
        declared: u64,
        /// What we accept.
        limit: u64,
    },
    /// A field holds a value outside its domain.
    #[error("invalid {field}: {value}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// The offending value.
        value: u64,
    },
}

mod kind {
    pub(super) const HELLO: u8 = 1;
    pub(super) const WELCOME: u8 = 2;
    pub(super) const REFUSED: u8 = 3;
    pub(super) const ENTRY: u8 = 4;
    pub(super) const END_OF_ENTRIES: u8 = 5;
    pub(super) const NEED: u8 = 6;
    pub(super) const FILE_DONE: u8 = 7;
    pub(super) const SOURCE_FAILED: u8 = 8;
    pub(super) const INSTALLED: u8 = 9;
    pub(super) const FAILED: u8 = 10;
    pub(super) const FINISHED: u8 = 11;
    pub(super) const CHUNK: u8 = 12;
    pub(super) const ABORT: u8 = 13;
    pub(super) const HAVE: u8 = 14;
    pub(super) const QUICK_CHECK: u8 = 15;
    pub(super) const QUICK_CHECKED: u8 = 16;
    pub(super) const NAMES: u8 = 17;
    pub(super) const PRUNE: u8 = 18;
    pub(super) const PRUNE_END: u8 = 19;
    pub(super) const DELETED: u8 = 20;
    pub(super) const REQUEST: u8 = 21;
    pub(super) const RESPONSE: u8 = 22;
}

impl Message {
    /// Encodes the message as one whole frame.
    pub fn encode(&self) -> Bytes {
        let (head, payload) = self.encode_parts();
        if payload.is_empty() {
            return head;
        }
        let mut all = BytesMut::with_capacity(head.len() + payload.len());
        all.extend_from_slice(&head);
        all.extend_from_slice(&payload);
        all.freeze()
    }

    /// Encodes the message as a frame header plus fields, and a payload that follows them
    /// unchanged. Only chunks have a payload; sending the two parts separately avoids copying
    /// chunk data.
    pub fn encode_parts(&self) -> (Bytes, Bytes) {
        // A chunk's data is its payload, passed on without copying.
        if let Message::Chunk(m) = self {
            return m.frame_parts();
        }
        let mut head = BytesMut::with_capacity(HEADER_LEN + 64);
        self.encode_into(&mut head);
        (head.freeze(), Bytes::new())
    }

    /// Appends the message as one whole frame to `out`. The fields are written in place and
    /// the header filled in after them: a re-run of a million unchanged files sends a million
    /// small control messages each way, and a buffer per message (plus copying it into the
    /// stream's) was a measurable share of both sides.
    pub fn encode_into(&self, out: &mut BytesMut) {
        let at = out.len();
        out.put_slice(&[0; HEADER_LEN]);
        let kind = self.put_fields(out);
        let body_len = out.len() - at - HEADER_LEN;
        out[at..at + HEADER_LEN].copy_from_slice(&header(kind, body_len));
    }

    /// Writes the message's fields (everything after the frame header) to `body`; returns its
    /// kind byte.
    fn put_fields(&self, body: &mut BytesMut) -> u8 {
        match self {
            Message::Hello(m) => {
                body.put_u16(m.version);
                put_bytes(body, &m.token);
                put_bytes(body, &m.dest);
                body.put_u32(m.chunk_size);
                body.put_u32(m.flags);
                body.put_u32(m.rename_aside.len() as u32);
                for dir in &m.rename_aside {
                    put_bytes(body, dir);
                }
                body.put_u32(m.filters.len() as u32);
                for rule in &m.filters {
                    put_bytes(body, rule);
                }
                body.put_u64(m.max_delete);
                put_bytes(body, &m.holder);
                put_bytes(body, &m.snapshot);
                kind::HELLO
            }
            Message::Welcome(m) => {
                body.put_u16(m.version);
                body.put_u64(m.session);
                body.put_u64(m.free_bytes);
                body.put_u64(m.history_bytes);
                body.put_u64(m.history_ms);
                body.put_u32(m.renamed.len() as u32);
                for r in &m.renamed {
                    put_bytes(body, &r.from);
                    put_bytes(body, &r.to);
                }
                body.put_u8(u8::from(m.privileged));
                kind::WELCOME
            }
            Message::Refused(m) => {
                body.put_u8(refuse_code(m.reason));
                put_bytes(body, m.message.as_bytes());
                kind::REFUSED
            }
            Message::Entry(m) => {
                body.put_u64(m.id);
                body.put_u8(m.kind.code());
                put_bytes(body, &m.path);
                body.put_u64(m.size);
                body.put_u32(m.meta.mode);
                body.put_i64(m.meta.mtime_sec);
                body.put_u32(m.meta.mtime_nsec);
                put_bytes(body, &m.link_target);
                body.put_u32(m.uid);
                body.put_u32(m.gid);
                body.put_u64(m.rdev);
                body.put_u64(m.source_stamp);
                body.put_u32(m.xattrs.len() as u32);
                for x in &m.xattrs {
                    put_bytes(body, &x.name);
                    put_bytes(body, &x.value);
                }
                kind::ENTRY
            }
            Message::EndOfEntries => kind::END_OF_ENTRIES,
            Message::Need(m) => {
                body.put_u64(m.id);
                body.put_u32(m.ranges.len() as u32);
                for (start, count) in &m.ranges {
                    body.put_u64(*start);
                    body.put_u64(*count);
                }
                kind::NEED
            }
            Message::Have(m) => {
                body.put_u64(m.id);
                body.put_u64(m.start);
                body.put_u8(u8::from(m.journaled));
                body.put_u32(m.hashes.len() as u32);
                for h in &m.hashes {
                    body.put_slice(h);
                }
                kind::HAVE
            }
            Message::FileDone(m) => {
                body.put_u64(m.id);
                body.put_slice(&m.hash);
                body.put_u64(m.chunks_sent);
                kind::FILE_DONE
            }
            Message::SourceFailed(m) => {
                body.put_u64(m.id);
                put_bytes(body, m.message.as_bytes());
                kind::SOURCE_FAILED
            }
            Message::Installed(m) => {
                body.put_u64(m.id);
                body.put_slice(&m.hash);
                body.put_u64(m.bytes_written);
                body.put_u8(u8::from(m.unchanged) | (u8::from(m.meta_only) << 1));
                kind::INSTALLED
            }
            Message::Failed(m) => {
                body.put_u64(m.id);
                put_bytes(body, m.message.as_bytes());
                body.put_u8(u8::from(m.no_space));
                kind::FAILED
            }
            Message::Finished(m) => {
                body.put_u64(m.installed);
                body.put_u64(m.failed);
                body.put_u64(m.not_applied.owners);
                body.put_u64(m.not_applied.special_bits);
                body.put_u64(m.not_applied.devices);
                body.put_u64(m.not_applied.xattrs);
                kind::FINISHED
            }
            Message::Chunk(m) => {
                // Only `encode_into` comes here (`encode_parts` passes the data on uncopied).
                let mut head = [0; Chunk::HEAD_LEN];
                m.write_head(&mut head, m.data.len());
                body.put_slice(&head[HEADER_LEN..]);
                body.put_slice(&m.data);
                kind::CHUNK
            }
            Message::Abort(m) => {
                put_bytes(body, m.message.as_bytes());
                kind::ABORT
            }
            Message::QuickCheck(m) => {
                body.put_u64(m.id);
                put_bytes(body, &m.dir);
                put_bytes(body, &m.first);
                put_bytes(body, &m.last);
                body.put_u64(m.files);
                body.put_slice(&m.digest);
                kind::QUICK_CHECK
            }
            Message::QuickChecked(m) => {
                body.put_u64(m.id);
                body.put_u8(u8::from(m.unchanged));
                kind::QUICK_CHECKED
            }
            Message::Names(m) => {
                for table in [&m.users, &m.groups] {
                    body.put_u32(table.len() as u32);
                    for (id, name) in table {
                        body.put_u32(*id);
                        put_bytes(body, name);
                    }
                }
                kind::NAMES
            }
            Message::Prune(m) => {
                put_bytes(body, &m.dir);
                body.put_u32(m.names.len() as u32);
                for name in &m.names {
                    put_bytes(body, name);
                }
                body.put_u8(u8::from(m.last));
                kind::PRUNE
            }
            Message::PruneEnd => kind::PRUNE_END,
            Message::Deleted(m) => {
                body.put_u32(m.paths.len() as u32);
                for path in &m.paths {
                    put_bytes(body, path);
                }
                body.put_u8(u8::from(m.done));
                body.put_u64(m.total);
                put_bytes(body, m.refused.as_bytes());
                kind::DELETED
            }
            Message::Request(m) => {
                body.put_u64(m.id);
                put_bytes(body, &m.body);
                kind::REQUEST
            }
            Message::Response(m) => {
                body.put_u64(m.id);
                body.put_u8(u8::from(m.ok) | (u8::from(m.more) << 1));
                put_bytes(body, &m.body);
                kind::RESPONSE
            }
        }
    }

    /// Decodes one frame, checking every declared length against `limits`.
    pub fn decode(frame: Frame, limits: &Limits) -> Result<Message, DecodeError> {
        let mut r = Reader {
            buf: frame.body,
            tail: frame.tail,
        };
        let msg = match frame.kind {
            kind::HELLO => {
                let version = r.u16("version")?;
                if version != crate::PROTOCOL_VERSION {
                    // Another version's hello may have other fields: keep only the version, so
                    // the receiver refuses it with a message naming both versions instead of
                    // failing to decode it.
                    r.buf.advance(r.buf.remaining());
                    r.tail = Bytes::new();
                    return Ok(Message::Hello(Hello {
                        version,
                        token: Bytes::new(),
                        dest: Bytes::new(),
                        chunk_size: 0,
                        flags: 0,
                        rename_aside: Vec::new(),
                        filters: Vec::new(),
                        max_delete: 0,
                        holder: Bytes::new(),
                        snapshot: Bytes::new(),
                    }));
                }
                Message::Hello(Hello {
                    version,
                    token: r.bytes("token", limits.max_token)?,
                    dest: r.bytes("dest", limits.max_path)?,
                    chunk_size: r.u32("chunk_size")?,
                    flags: r.u32("flags")?,
                    rename_aside: {
                        let n = r.count("rename_aside count", MAX_ASIDE, 4)?;
                        let mut dirs = Vec::with_capacity(n);
                        for _ in 0..n {
                            dirs.push(r.bytes("rename_aside", limits.max_path)?);
                        }
                        dirs
                    },
                    filters: {
                        let n = r.count("filter count", MAX_FILTERS, 4)?;
                        let mut rules = Vec::with_capacity(n);
                        for _ in 0..n {
                            rules.push(r.bytes("filter", limits.max_path)?);
                        }
                        rules
                    },
                    max_delete: r.u64("max_delete")?,
                    holder: r.bytes("holder", limits.max_text)?,
                    snapshot: r.bytes("snapshot", limits.max_name)?,
                })
            }
            kind::WELCOME => Message::Welcome(Welcome {
                version: r.u16("version")?,
                session: r.u64("session")?,
                free_bytes: r.u64("free_bytes")?,
                history_bytes: r.u64("history_bytes")?,
                history_ms: r.u64("history_ms")?,
                renamed: {
                    let n = r.count("renamed count", MAX_ASIDE, 8)?;
                    let mut renamed = Vec::with_capacity(n);
                    for _ in 0..n {
                        renamed.push(Renamed {
                            from: r.bytes("renamed from", limits.max_path)?,
                            to: r.bytes("renamed to", limits.max_path)?,
                        });
                    }
                    renamed
                },
                privileged: r.flag("privileged")?,
            }),
            kind::REFUSED => Message::Refused(Refused {
                reason: match r.u8("reason")? {
                    1 => RefuseReason::BadToken,
                    2 => RefuseReason::BadVersion,
                    3 => RefuseReason::BadPath,
                    4 => RefuseReason::BadChunkSize,
                    5 => RefuseReason::Scope,
                    6 => RefuseReason::Leased,
                    _ => RefuseReason::Other,
                },
                message: r.text("message", limits.max_text)?,
            }),
            kind::ENTRY => Message::Entry(Entry {
                id: r.u64("id")?,
                kind: {
                    let code = r.u8("kind")?;
                    EntryKind::from_code(code).ok_or(DecodeError::Invalid {
                        field: "kind",
                        value: code.into(),
                    })?
                },
                path: r.bytes("path", limits.max_path)?,
                size: r.u64("size")?,
                meta: Meta {
                    mode: r.u32("mode")?,
                    mtime_sec: r.i64("mtime_sec")?,
                    mtime_nsec: {
                        let nsec = r.u32("mtime_nsec")?;
                        if nsec >= 1_000_000_000 {
                            return Err(DecodeError::Invalid {
                                field: "mtime_nsec",
                                value: nsec.into(),
                            });
                        }
                        nsec
                    },
                },
                link_target: r.bytes("link_target", limits.max_path)?,
                uid: r.u32("uid")?,
                gid: r.u32("gid")?,
                rdev: r.u64("rdev")?,
                source_stamp: r.u64("source_stamp")?,
                xattrs: r.xattrs()?,
            }),
            kind::END_OF_ENTRIES => Message::EndOfEntries,
            kind::NEED => {
                let id = r.u64("id")?;
                let count = r.count("range count", limits.max_ranges, 16)?;
                let mut ranges = Vec::with_capacity(count);
                for _ in 0..count {
                    ranges.push((r.u64("range start")?, r.u64("range count")?));
                }
                Message::Need(Need { id, ranges })
            }
            kind::HAVE => {
                let id = r.u64("id")?;
                let start = r.u64("start")?;
                let journaled = match r.u8("journaled")? {
                    0 => false,
                    1 => true,
                    v => {
                        return Err(DecodeError::Invalid {
                            field: "journaled",
                            value: v.into(),
                        });
                    }
                };
                let n = r.count("hash count", Have::MAX_HASHES as u32, 32)?;
                let mut hashes = Vec::with_capacity(n);
                for _ in 0..n {
                    hashes.push(r.hash()?);
                }
                Message::Have(Have {
                    id,
                    start,
                    journaled,
                    hashes,
                })
            }
            kind::FILE_DONE => Message::FileDone(FileDone {
                id: r.u64("id")?,
                hash: r.hash()?,
                chunks_sent: r.u64("chunks_sent")?,
            }),
            kind::SOURCE_FAILED => Message::SourceFailed(SourceFailed {
                id: r.u64("id")?,
                message: r.text("message", limits.max_text)?,
            }),
            kind::INSTALLED => Message::Installed(Installed {
                id: r.u64("id")?,
                hash: r.hash()?,
                bytes_written: r.u64("bytes_written")?,
                unchanged: false,
                meta_only: false,
            })
            .with_installed_flags(r.u8("installed flags")?)?,
            kind::FAILED => Message::Failed(Failed {
                id: r.u64("id")?,
                message: r.text("message", limits.max_text)?,
                no_space: r.u8("no_space")? != 0,
            }),
            kind::FINISHED => Message::Finished(Finished {
                installed: r.u64("installed")?,
                failed: r.u64("failed")?,
                not_applied: NotApplied {
                    owners: r.u64("owners not applied")?,
                    special_bits: r.u64("special bits not applied")?,
                    devices: r.u64("devices not applied")?,
                    xattrs: r.u64("xattrs not applied")?,
                },
            }),
            kind::CHUNK => {
                let id = r.u64("id")?;
                let index = r.u64("index")?;
                let hash = r.hash()?;
                let (zero, compressed) = match r.u8("chunk encoding")? {
                    Chunk::RAW => (false, false),
                    Chunk::ZERO => (true, false),
                    Chunk::ZSTD => (false, true),
                    other => {
                        return Err(DecodeError::Invalid {
                            field: "chunk encoding",
                            value: other.into(),
                        });
                    }
                };
                let data = r.bytes("data", limits.max_chunk)?;
                if zero && !data.is_empty() {
                    return Err(DecodeError::Invalid {
                        field: "zero chunk length",
                        value: data.len() as u64,
                    });
                }
                if compressed && data.is_empty() {
                    // A zstd frame is never empty.
                    return Err(DecodeError::Invalid {
                        field: "compressed chunk length",
                        value: 0,
                    });
                }
                Message::Chunk(Chunk {
                    id,
                    index,
                    hash,
                    zero,
                    compressed,
                    data,
                })
            }
            kind::ABORT => Message::Abort(Abort {
                message: r.text("message", limits.max_text)?,
            }),
            kind::QUICK_CHECK => Message::QuickCheck(QuickCheck {
                id: r.u64("id")?,
                dir: r.bytes("dir", limits.max_path)?,
                first: r.bytes("first", limits.max_path)?,
                last: r.bytes("last", limits.max_path)?,
                files: r.u64("files")?,
                digest: r.hash()?,
            }),
            kind::QUICK_CHECKED => Message::QuickChecked(QuickChecked {
                id: r.u64("id")?,
                unchanged: match r.u8("unchanged")? {
                    0 => false,
                    1 => true,
                    v => {
                        return Err(DecodeError::Invalid {
                            field: "unchanged",
                            value: v.into(),
                        });
                    }
                },
            }),
            kind::NAMES => {
                let mut tables = [Vec::new(), Vec::new()];
                for (table, field) in tables.iter_mut().zip(["user count", "group count"]) {
                    let n = r.count(field, Names::MAX, 8)?;
                    table.reserve(n);
                    for _ in 0..n {
                        let id = r.u32("id")?;
                        table.push((id, r.bytes("name", limits.max_name)?));
                    }
                }
                let [users, groups] = tables;
                Message::Names(Names { users, groups })
            }
            kind::PRUNE => Message::Prune(Prune {
                dir: r.bytes("dir", limits.max_path)?,
                names: {
                    let n = r.count("name count", Prune::MAX_NAMES, 4)?;
                    let mut names = Vec::with_capacity(n);
                    for _ in 0..n {
                        names.push(r.bytes("name", limits.max_name)?);
                    }
                    names
                },
                last: r.flag("last")?,
            }),
            kind::PRUNE_END => Message::PruneEnd,
            kind::DELETED => Message::Deleted(Deleted {
                paths: {
                    let n = r.count("path count", Deleted::MAX_PATHS, 4)?;
                    let mut paths = Vec::with_capacity(n);
                    for _ in 0..n {
                        paths.push(r.bytes("path", limits.max_path)?);
                    }
                    paths
                },
                done: r.flag("done")?,
                total: r.u64("total")?,
                refused: r.text("refused", limits.max_text)?,
            }),
            kind::REQUEST => Message::Request(Request {
                id: r.u64("id")?,
                body: r.bytes("request body", Request::MAX_BODY)?,
            }),
            kind::RESPONSE => {
                let id = r.u64("id")?;
                let flags = r.u8("response flags")?;
                if flags > 3 {
                    return Err(DecodeError::Invalid {
                        field: "response flags",
                        value: flags.into(),
                    });
                }
                Message::Response(Response {
                    id,
                    ok: flags & 1 != 0,
                    more: flags & 2 != 0,
                    body: r.bytes("response body", Request::MAX_BODY)?,
                })
            }
            other => return Err(DecodeError::UnknownType(other)),
        };
        if r.buf.has_remaining() || !r.tail.is_empty() {
            return Err(DecodeError::Trailing(r.buf.remaining() + r.tail.len()));
        }
        Ok(msg)
    }

    /// A short name for logs and error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello(_) => "Hello",
            Message::Welcome(_) => "Welcome",
            Message::Refused(_) => "Refused",
            Message::Entry(_) => "Entry",
            Message::EndOfEntries => "EndOfEntries",
            Message::Need(_) => "Need",
            Message::Have(_) => "Have",
            Message::FileDone(_) => "FileDone",
            Message::SourceFailed(_) => "SourceFailed",
            Message::Installed(_) => "Installed",
            Message::Failed(_) => "Failed",
            Message::Finished(_) => "Finished",
            Message::Chunk(_) => "Chunk",
            Message::Abort(_) => "Abort",
            Message::QuickCheck(_) => "QuickCheck",
            Message::QuickChecked(_) => "QuickChecked",
            Message::Names(_) => "Names",
            Message::Prune(_) => "Prune",
            Message::PruneEnd => "PruneEnd",
            Message::Deleted(_) => "Deleted",
            Message::Request(_) => "Request",
            Message::Response(_) => "Response",
        }
    }
}

/// Most directories one session may rename aside.
const MAX_ASIDE: u32 = 256;
/// Most filter rules one hello may carry.
const MAX_FILTERS: u32 = 1024;

impl Message {
    /// An `Installed` decoded so far, with its flags byte applied.
    fn with_installed_flags(self, flags: u8) -> Result<Message, DecodeError> {
        if flags > 3 {
            return Err(DecodeError::Invalid {
                field: "installed flags",
                value: flags.into(),
            });
        }
        Ok(match self {
            Message::Installed(i) => Message::Installed(Installed {
                unchanged: flags & 1 != 0,
                meta_only: flags & 2 != 0,
                ..i
            }),
            other => other,
        })
    }
}

fn refuse_code(reason: RefuseReason) -> u8 {
    match reason {
        RefuseReason::BadToken => 1,
        RefuseReason::BadVersion => 2,
        RefuseReason::BadPath => 3,
        RefuseReason::BadChunkSize => 4,
        RefuseReason::Scope => 5,
        RefuseReason::Leased => 6,
        RefuseReason::Other => 0,
    }
}

fn put_bytes(buf: &mut BytesMut, bytes: &[u8]) {
    buf.put_u32(bytes.len() as u32);
    buf.put_slice(bytes);
}

struct Reader {
    buf: Bytes,
    /// The frame's [`Frame::tail`]: read after `buf`, by reference when a field is exactly it.
    tail: Bytes,
}

impl Reader {
    fn need(&mut self, n: usize, field: &'static str) -> Result<(), DecodeError> {
        if self.buf.remaining() < n && !self.tail.is_empty() {
            // A field straddles the split: join the two (a copy, but only for odd splits).
            let mut joined = BytesMut::with_capacity(self.buf.len() + self.tail.len());
            joined.extend_from_slice(&self.buf);
            joined.extend_from_slice(&std::mem::take(&mut self.tail));
            self.buf = joined.freeze();
        }
        if self.buf.remaining() < n {
            Err(DecodeError::Truncated { field })
        } else {
            Ok(())
        }
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        self.need(1, field)?;
        Ok(self.buf.get_u8())
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        self.need(2, field)?;
        Ok(self.buf.get_u16())
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.need(4, field)?;
        Ok(self.buf.get_u32())
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        self.need(8, field)?;
        Ok(self.buf.get_u64())
    }
    fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        self.need(8, field)?;
        Ok(self.buf.get_i64())
    }
    /// A declared element count, bounded by `limit` and by the bytes left (each element
    /// takes at least `min_size` bytes), checked before anything is allocated for it.
    fn count(
        &mut self,
        field: &'static str,
        limit: u32,
        min_size: usize,
    ) -> Result<usize, DecodeError> {
        let n = self.u32(field)?;
        if n > limit {
            return Err(DecodeError::TooLong {
                field,
                declared: n.into(),
                limit: limit.into(),
            });
        }
        if self.buf.remaining() < n as usize * min_size {
            return Err(DecodeError::Truncated { field });
        }
        Ok(n as usize)
    }

    fn hash(&mut self) -> Result<Hash, DecodeError> {
        self.need(32, "hash")?;
        let mut hash = [0u8; 32];
        self.buf.copy_to_slice(&mut hash);
        Ok(hash)
    }
    fn bytes(&mut self, field: &'static str, limit: u32) -> Result<Bytes, DecodeError> {
        let len = self.u32(field)?;
        if len > limit {
            return Err(DecodeError::TooLong {
                field,
                declared: len.into(),
                limit: limit.into(),
            });
        }
        if self.buf.is_empty() && self.tail.len() == len as usize {
            // A chunk's data that arrived as one buffer: no copy.
            return Ok(std::mem::take(&mut self.tail));
        }
        self.need(len as usize, field)?;
        Ok(self.buf.split_to(len as usize))
    }
    /// A byte that must be 0 or 1.
    fn flag(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(DecodeError::Invalid {
                field,
                value: v.into(),
            }),
        }
    }

    /// An entry's extended attributes, within [`MAX_XATTRS`], [`MAX_XATTR_VALUE`] and
    /// [`MAX_XATTR_TOTAL`].
    fn xattrs(&mut self) -> Result<Vec<Xattr>, DecodeError> {
        let n = self.count("xattr count", MAX_XATTRS, 8)?;
        let mut xattrs = Vec::with_capacity(n);
        let mut total = 0usize;
        for _ in 0..n {
            let name = self.bytes("xattr name", 255)?;
            if name.is_empty() || name.contains(&0) {
                return Err(DecodeError::Invalid {
                    field: "xattr name length",
                    value: name.len() as u64,
                });
            }
            let value = self.bytes("xattr value", MAX_XATTR_VALUE)?;
            total += name.len() + value.len();
            if total > MAX_XATTR_TOTAL {
                return Err(DecodeError::TooLong {
                    field: "xattrs",
                    declared: total as u64,
                    limit: MAX_XATTR_TOTAL as u64,
                });
            }
            xattrs.push(Xattr { name, value });
        }
        Ok(xattrs)
    }

    fn text(&mut self, field: &'static str, limit: u32) -> Result<String, DecodeError> {
        let bytes = self.bytes(field, limit)?;
        let mut text = String::from_utf8_lossy(&bytes).into_owned();
        // Each invalid byte becomes a 3-byte U+FFFD: cut back to the limit so that what we
        // accepted also re-encodes within it.
        if text.len() > limit as usize {
            let mut end = limit as usize;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        Ok(text)
    }
}
