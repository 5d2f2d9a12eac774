//! The on-disk format of a partial's journal: pure encoding and decoding, no I/O.
//!
//! ```text
//! header:  "HAULPRT1" | version u32 | size u64 | mtime_sec i64 | mtime_nsec u32 | chunk_size u32
//!          | rel_len u32 | rel bytes | check (first 8 bytes of blake3 of everything before)
//! record:  index u64 | hash [32] | check (first 8 bytes of blake3 of index and hash)   = 48 bytes
//! ```
//! All integers little-endian. Why a checksum per record: a power cut in the middle of an
//! append can leave a torn record or garbage (blocks allocated but not written) at the tail.
//! Reading stops at the first record whose checksum fails, and everything before it stands.

use crate::partial::SourceIdentity;

const MAGIC: &[u8; 8] = b"HAULPRT1";
const VERSION: u32 = 1;
/// Bytes of the header before the rel path.
const HEADER_FIXED: usize = 8 + 4 + 8 + 8 + 4 + 4 + 4;
const CHECK: usize = 8;
/// Bytes of one record.
pub(crate) const RECORD_LEN: usize = 8 + 32 + CHECK;

fn check(bytes: &[u8]) -> [u8; CHECK] {
    let mut out = [0u8; CHECK];
    out.copy_from_slice(&blake3::hash(bytes).as_bytes()[..CHECK]);
    out
}

/// The header for a partial of `identity` whose destination is `rel` (relative to the top root).
pub(crate) fn encode_header(identity: &SourceIdentity, rel: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_FIXED + rel.len() + CHECK);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&identity.size.to_le_bytes());
    out.extend_from_slice(&identity.mtime_sec.to_le_bytes());
    out.extend_from_slice(&identity.mtime_nsec.to_le_bytes());
    out.extend_from_slice(&identity.chunk_size.to_le_bytes());
    // A RelPath is at most a few KiB, far below u32::MAX.
    out.extend_from_slice(&u32::try_from(rel.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(rel);
    let sum = check(&out);
    out.extend_from_slice(&sum);
    out
}

/// A parsed header: the identity, the rel path bytes and the header's length.
pub(crate) struct Header<'a> {
    pub(crate) identity: SourceIdentity,
    pub(crate) rel: &'a [u8],
    pub(crate) len: usize,
}

/// Cuts `N` bytes off the front of `rest`.
fn take<const N: usize>(rest: &mut &[u8]) -> Option<[u8; N]> {
    let (head, tail) = rest.split_first_chunk::<N>()?;
    *rest = tail;
    Some(*head)
}

/// Parses the header at the start of `bytes`; `None` if it is short, of another version or
/// fails its checksum.
pub(crate) fn decode_header(bytes: &[u8]) -> Option<Header<'_>> {
    let mut rest = bytes;
    if &take::<8>(&mut rest)? != MAGIC || u32::from_le_bytes(take(&mut rest)?) != VERSION {
        return None;
    }
    let size = u64::from_le_bytes(take(&mut rest)?);
    let mtime_sec = i64::from_le_bytes(take(&mut rest)?);
    let mtime_nsec = u32::from_le_bytes(take(&mut rest)?);
    let chunk_size = u32::from_le_bytes(take(&mut rest)?);
    let rel_len = usize::try_from(u32::from_le_bytes(take(&mut rest)?)).ok()?;
    let body_len = HEADER_FIXED.checked_add(rel_len)?;
    let sum = bytes.get(body_len..body_len.checked_add(CHECK)?)?;
    if sum != check(&bytes[..body_len]) {
        return None;
    }
    Some(Header {
        identity: SourceIdentity {
            size,
            mtime_sec,
            mtime_nsec,
            chunk_size,
        },
        rel: &bytes[HEADER_FIXED..body_len],
        len: body_len + CHECK,
    })
}

/// One record.
pub(crate) fn encode_record(index: u64, hash: &[u8; 32]) -> [u8; RECORD_LEN] {
    let mut out = [0u8; RECORD_LEN];
    out[..8].copy_from_slice(&index.to_le_bytes());
    out[8..40].copy_from_slice(hash);
    let sum = check(&out[..40]);
    out[40..].copy_from_slice(&sum);
    out
}

/// The records at the start of `bytes` (in file order), up to the first torn or corrupt one,
/// and how many bytes they span (where the next append must go).
pub(crate) fn decode_records(bytes: &[u8]) -> (Vec<(u64, [u8; 32])>, usize) {
    let mut records = Vec::with_capacity(bytes.len() / RECORD_LEN);
    for record in bytes.chunks_exact(RECORD_LEN) {
        let (body, sum) = record.split_at(40);
        if sum != check(body) {
            break;
        }
        let mut index = [0u8; 8];
        index.copy_from_slice(&body[..8]);
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&body[8..]);
        records.push((u64::from_le_bytes(index), hash));
    }
    let good = records.len() * RECORD_LEN;
    (records, good)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: SourceIdentity = SourceIdentity {
        size: 10 << 20,
        mtime_sec: -5,
        mtime_nsec: 999_999_999,
        chunk_size: 1 << 20,
    };

    #[test]
    fn header_round_trips_and_any_flipped_byte_is_refused() {
        let header = encode_header(&ID, b"a/b\xff");
        let mut file = header.clone();
        file.extend_from_slice(&encode_record(3, &[7; 32]));
        let parsed = decode_header(&file).unwrap();
        assert_eq!(parsed.identity, ID);
        assert_eq!(parsed.rel, b"a/b\xff");
        assert_eq!(parsed.len, header.len());
        for i in 0..header.len() {
            let mut bad = header.clone();
            bad[i] ^= 0x10;
            assert!(decode_header(&bad).is_none(), "byte {i}");
        }
        assert!(decode_header(&header[..header.len() - 1]).is_none());
        assert!(decode_header(b"").is_none());
    }

    #[test]
    fn records_stop_at_the_first_torn_or_garbage_one() {
        let mut bytes = Vec::new();
        for i in 0..3u64 {
            bytes.extend_from_slice(&encode_record(i, &[i as u8; 32]));
        }
        let mut torn = bytes.clone();
        torn.extend_from_slice(&encode_record(9, &[9; 32])[..30]);
        let (records, good) = decode_records(&torn);
        assert_eq!(records.len(), 3);
        assert_eq!(good, 3 * RECORD_LEN);
        let mut garbage = bytes.clone();
        garbage.extend_from_slice(&[0u8; RECORD_LEN]);
        garbage.extend_from_slice(&encode_record(4, &[4; 32]));
        let (records, good) = decode_records(&garbage);
        assert_eq!(records, vec![(0, [0; 32]), (1, [1; 32]), (2, [2; 32])]);
        assert_eq!(good, 3 * RECORD_LEN);
    }
}
