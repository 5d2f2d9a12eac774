//! BLAKE3 chunk and file hashes that agree with `b3sum`.
//!
//! A chunk size is a power of two of at least 64 KiB, so every chunk of a file is a complete
//! BLAKE3 subtree: its chaining value depends only on its bytes and its offset. The file hash is
//! then assembled from the chunk values with the `hazmat` merge functions, and comes out equal
//! to the plain BLAKE3 hash of the whole file. That is what lets an operator check any copied
//! file with an ordinary `b3sum`, and lets the receiver verify each chunk on its own.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use blake3::Hasher;
use blake3::hazmat::{
    HasherExt, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root,
};
use haul_proto::{ChunkLayout, DEFAULT_CHUNK_SIZE, Hash};

use crate::sparse::SparseMap;

/// Zeros fed repeatedly to the hasher for holes, so a hole never needs a chunk-sized buffer.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// How a chunk is hashed, decided from the layout alone.
enum Role {
    /// The file's only chunk: its hash is the root hash of the file.
    Whole,
    /// One of several chunks: a non-root subtree at this byte offset.
    Subtree(u64),
    /// No such chunk, or a buffer of the wrong length, or a chunk size that is not a whole
    /// BLAKE3 subtree. Hashing it the ordinary way could panic inside `hazmat`, and the data may
    /// come from a peer, so it gets a marker value instead.
    Invalid,
}

fn role(layout: &ChunkLayout, index: u64, len: u64) -> Role {
    if layout.chunk_size() == 0 {
        return Role::Invalid;
    }
    let count = layout.count();
    if index >= count || layout.len(index).map(u64::from) != Some(len) {
        return Role::Invalid;
    }
    if count == 1 {
        return Role::Whole;
    }
    if !is_subtree_size(layout.chunk_size()) {
        return Role::Invalid;
    }
    Role::Subtree(layout.offset(index))
}

/// Only power-of-two sizes of at least one BLAKE3 chunk are whole subtrees at every offset.
fn is_subtree_size(chunk_size: u32) -> bool {
    chunk_size.is_power_of_two() && chunk_size as usize >= blake3::CHUNK_LEN
}

/// What a chunk that cannot be hashed hashes to: domain-separated from every real chunk value,
/// so it never verifies against the hash of the correct bytes.
fn invalid_marker(index: u64, len: u64) -> Hash {
    let mut input = [0u8; 16];
    input[..8].copy_from_slice(&index.to_le_bytes());
    input[8..].copy_from_slice(&len.to_le_bytes());
    blake3::derive_key(
        "haul-manifest 2025 chunk that does not fit its layout",
        &input,
    )
}

/// The hash carried with chunk `index` of a file with `layout`: if the file has exactly one
/// chunk, the BLAKE3 root hash of the whole file (what b3sum prints); otherwise the non-root
/// chaining value of that chunk's subtree at its byte offset.
///
/// `data` must be exactly the chunk's bytes. A buffer of the wrong length, an index past the
/// end, or a chunk size that is not a power of two of at least 1 KiB yields a marker value that
/// never matches a real chunk hash (it never panics, since the data may come from a peer).
pub fn chunk_hash(layout: &ChunkLayout, index: u64, data: &[u8]) -> Hash {
    let len = data.len() as u64;
    match role(layout, index, len) {
        Role::Whole => *blake3::hash(data).as_bytes(),
        Role::Subtree(offset) => {
            let mut hasher = Hasher::new();
            hasher.set_input_offset(offset).update(data);
            hasher.finalize_non_root()
        }
        Role::Invalid => invalid_marker(index, len),
    }
}

/// The same as [`chunk_hash`] for a chunk known to be all zeros (a hole), without the caller
/// providing a buffer. Equals `chunk_hash` of a zero-filled buffer of that chunk's length.
/// Full-size chunks are computed once per process (and once per machine with
/// [`zeros::persist_in`](crate::zeros::persist_in)), then looked up.
pub fn zero_chunk_hash(layout: &ChunkLayout, index: u64) -> Hash {
    let Some(len) = (layout.chunk_size() != 0)
        .then(|| layout.len(index))
        .flatten()
    else {
        return invalid_marker(index, 0);
    };
    let len = u64::from(len);
    let mut hasher = Hasher::new();
    // Only full-size subtree chunks are remembered: a file's one chunk or short last chunk
    // is a value no other file shares.
    let mut remember = None;
    let root = match role(layout, index, len) {
        Role::Whole => true,
        Role::Subtree(offset) => {
            if len == u64::from(layout.chunk_size()) {
                if let Some(value) = crate::zeros::lookup(layout.chunk_size(), index) {
                    return value;
                }
                remember = Some(layout.chunk_size());
            }
            hasher.set_input_offset(offset);
            false
        }
        Role::Invalid => return invalid_marker(index, len),
    };
    let mut left = len;
    while left > 0 {
        let step = left.min(ZEROS.len() as u64);
        hasher.update(&ZEROS[..step as usize]);
        left -= step;
    }
    if root {
        return *hasher.finalize().as_bytes();
    }
    let value = hasher.finalize_non_root();
    if let Some(chunk_size) = remember {
        crate::zeros::remember(chunk_size, index, value);
    }
    value
}

/// Combines the chunk hashes (index order, all of them) into the file hash that b3sum prints.
/// An empty file hashes to `blake3::hash(b"")`.
///
/// Returns `None` if `chunk_hashes.len() != layout.count()`, or if the file has several chunks
/// and the chunk size is not a power of two of at least 1 KiB (such chunks are not whole BLAKE3
/// subtrees, so no file hash can be assembled from them).
pub fn file_hash(layout: &ChunkLayout, chunk_hashes: &[Hash]) -> Option<Hash> {
    if layout.chunk_size() == 0 {
        return None;
    }
    if chunk_hashes.len() as u64 != layout.count() {
        return None;
    }
    match chunk_hashes {
        [] => Some(*blake3::hash(b"").as_bytes()),
        [only] => Some(*only),
        _ if !is_subtree_size(layout.chunk_size()) => None,
        _ => {
            let chunk_size = u64::from(layout.chunk_size());
            let (left, right) = split(chunk_hashes, chunk_size, layout.size());
            Some(*merge_subtrees_root(&left, &right, Mode::Hash).as_bytes())
        }
    }
}

/// The chaining values of the left and right children of a subtree of `len` bytes made of
/// `hashes` (at least two). Recursion depth is log2 of the chunk count, at most 64.
fn split(hashes: &[Hash], chunk_size: u64, len: u64) -> (Hash, Hash) {
    // left_subtree_len is a power of two >= chunk_size because len > chunk_size, so the split
    // falls on a chunk boundary and leaves at least one chunk on each side.
    let left_len = left_subtree_len(len);
    let left_count = (left_len / chunk_size) as usize;
    let (left, right) = hashes.split_at(left_count);
    (
        subtree(left, chunk_size, left_len),
        subtree(right, chunk_size, len - left_len),
    )
}

fn subtree(hashes: &[Hash], chunk_size: u64, len: u64) -> Hash {
    if let [only] = hashes {
        return *only;
    }
    let (left, right) = split(hashes, chunk_size, len);
    merge_subtrees_non_root(&left, &right, Mode::Hash)
}

/// Merges chunk values as they arrive, holding at most one value per tree level (64), so a file
/// of any size is hashed in bounded memory. Gives the same result as [`file_hash`] for files of
/// two or more chunks: all chunks but the last are equal power-of-two subtrees, so the tree over
/// chunks has the same shape as BLAKE3's own tree over its 1 KiB chunks.
#[derive(Default)]
pub(crate) struct CvStack {
    /// Completed subtrees, largest (leftmost) first.
    stack: Vec<Hash>,
    /// Chunks merged into `stack` so far.
    merged: u64,
    /// The newest chunk, held back because only the final merge may produce a root.
    pending: Option<Hash>,
}

impl CvStack {
    pub(crate) fn push(&mut self, cv: Hash) {
        if let Some(mut prev) = self.pending.replace(cv) {
            self.merged += 1;
            // Each trailing zero bit of the count is a pair of equal subtrees now complete.
            let mut total = self.merged;
            while total & 1 == 0 {
                let Some(left) = self.stack.pop() else { break };
                prev = merge_subtrees_non_root(&left, &prev, Mode::Hash);
                total >>= 1;
            }
            self.stack.push(prev);
        }
    }

    /// The root hash, or `None` unless at least two chunks were pushed (a single chunk's hash
    /// is already a root hash, see [`chunk_hash`]).
    pub(crate) fn finish(mut self) -> Option<Hash> {
        let mut right = self.pending?;
        let mut left = self.stack.pop()?;
        while let Some(next) = self.stack.pop() {
            right = merge_subtrees_non_root(&left, &right, Mode::Hash);
            left = next;
        }
        Some(*merge_subtrees_root(&left, &right, Mode::Hash).as_bytes())
    }
}

/// Hashes a file from disk exactly as haul would: chunk by chunk at the default chunk size,
/// holes without reading them, merged in bounded memory. Equals what `b3sum` prints.
/// Something other than a regular file (a pipe, a device) is read as a stream.
pub fn hash_file(path: &Path) -> io::Result<Hash> {
    let file = File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        let mut hasher = Hasher::new();
        hasher.update_reader(&file)?;
        return Ok(*hasher.finalize().as_bytes());
    }
    let layout = ChunkLayout::new(meta.len(), DEFAULT_CHUNK_SIZE);
    let sparse = SparseMap::probe(&file, layout.size())?;
    let mut buf = vec![0u8; layout.size().min(u64::from(DEFAULT_CHUNK_SIZE)) as usize];
    let mut stack = CvStack::default();
    let mut only = None;
    for index in 0..layout.count() {
        let offset = layout.offset(index);
        let len = layout.len(index).map_or(0, |len| len as usize);
        let hash = if sparse.is_hole(offset, offset + len as u64) {
            zero_chunk_hash(&layout, index)
        } else {
            read_chunk(&file, &mut buf[..len], offset, path)?;
            chunk_hash(&layout, index, &buf[..len])
        };
        if layout.count() == 1 {
            only = Some(hash);
        } else {
            stack.push(hash);
        }
    }
    match only {
        Some(hash) => Ok(hash),
        None if layout.is_empty() => Ok(*blake3::hash(b"").as_bytes()),
        None => stack
            .finish()
            .ok_or_else(|| io::Error::other("internal: chunk count mismatch")),
    }
}

fn read_chunk(file: &File, buf: &mut [u8], offset: u64, path: &Path) -> io::Result<()> {
    file.read_exact_at(buf, offset).map_err(|err| {
        if err.kind() == io::ErrorKind::UnexpectedEof {
            io::Error::new(
                err.kind(),
                format!(
                    "{} shrank while it was being hashed; hash it again once nothing writes to it",
                    path.display()
                ),
            )
        } else {
            err
        }
    })
}

/// Lower-case hex, for output.
pub fn to_hex(hash: &Hash) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(hash.len() * 2);
    for byte in hash {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cv(layout: &ChunkLayout, index: u64, fill: u8) -> Hash {
        let len = layout.len(index).unwrap() as usize;
        chunk_hash(layout, index, &vec![fill.wrapping_add(index as u8); len])
    }

    #[test]
    fn streaming_merge_equals_file_hash() {
        let chunk = 64 << 10;
        for count in 2..=40u64 {
            for tail in [0, 1, chunk - 1] {
                let size = (count - 1) * chunk + if tail == 0 { chunk } else { tail };
                let layout = ChunkLayout::new(size, chunk as u32);
                assert_eq!(layout.count(), count);
                let hashes: Vec<Hash> = (0..count).map(|i| cv(&layout, i, 3)).collect();
                let mut stack = CvStack::default();
                for hash in &hashes {
                    stack.push(*hash);
                }
                assert_eq!(stack.finish(), file_hash(&layout, &hashes), "count {count}");
            }
        }
    }

    #[test]
    fn streaming_merge_needs_two_chunks() {
        assert_eq!(CvStack::default().finish(), None);
        let mut one = CvStack::default();
        one.push([1; 32]);
        assert_eq!(one.finish(), None);
    }
}
