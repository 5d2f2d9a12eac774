//! Bounds on everything a peer may declare. Every length read from the wire is checked against
//! these before it is used to allocate or index anything.

/// The bounds a decoder enforces. Both sides use the same defaults; a receiver may tighten them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame body accepted, in bytes. Must cover one chunk plus its header.
    pub max_frame: u32,
    /// Longest relative path accepted, in bytes.
    pub max_path: u32,
    /// Longest single path component, in bytes (the usual file system limit).
    pub max_name: u32,
    /// Longest free-text field (error messages, refusal reasons).
    pub max_text: u32,
    /// Longest token accepted in a hello.
    pub max_token: u32,
    /// Most chunk ranges in one `Need`.
    pub max_ranges: u32,
    /// Most entries the client may have announced and not yet seen resolved.
    pub max_outstanding: u32,
    /// Smallest and largest chunk size a client may ask for.
    pub min_chunk: u32,
    /// See `min_chunk`.
    pub max_chunk: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: (64 << 20) + 4096,
            max_path: 4096,
            max_name: 255,
            max_text: 4096,
            max_token: 1024,
            max_ranges: 65_536,
            max_outstanding: 65_536,
            min_chunk: 64 << 10,
            max_chunk: 64 << 20,
        }
    }
}

/// The frame limit never goes below this: an entry with 256 KiB of extended attributes and
/// two 4 KiB paths must fit whatever the chunk size.
const MIN_FRAME: u32 = 512 << 10;

impl Limits {
    /// Limits for a session that negotiated `chunk_size`: frames only need to hold one chunk,
    /// or one entry with its longest paths and extended attributes.
    pub fn for_chunk_size(chunk_size: u32) -> Self {
        Limits {
            max_frame: chunk_size.max(MIN_FRAME).saturating_add(4096),
            ..Limits::default()
        }
    }
}
