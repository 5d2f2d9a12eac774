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
//!
//! Records are appended in batches, each opened by a *marker* record (index `u64::MAX`, never
//! a chunk index; hash byte 0 the kind, bytes 1..17 the boot id):
//! - a **durable** batch is written after `fdatasync` of the data file and synced itself, so
//!   it, and every batch before it, survives a power cut;
//! - a **light** batch is written with no sync at all. It survives the death of the process
//!   (the page cache outlives it), not a power cut, so it is trusted only when the journal is
//!   read in the same boot that wrote it. Syncing 64 MiB at a time halved a local copy's
//!   speed; light batches keep resume at chunk granularity after a kill, and durable ones
//!   every 30 s bound what a power cut costs.
//!
//! Records before any marker are durable (journals of the first version had no markers).
//!
//! [`SourceIdentity`], the version of the source file a header records, is defined here, so
//! the format depends on no other module.

/// Which source file a partial belongs to; a partial whose identity differs is stale and
/// discarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceIdentity {
    /// The source file's size in bytes.
    pub size: u64,
    /// Its modification time, seconds since the epoch.
    pub mtime_sec: i64,
    /// Nanoseconds part of the modification time.
    pub mtime_nsec: u32,
    /// The chunk size the transfer uses (chunk indexes are only meaningful with it).
    pub chunk_size: u32,
    /// The sender's stamp of this version of the file (see `haul_proto::Entry::source_stamp`;
    /// 0 when unknown). Not part of what a partial is matched on: a partial journaled under
    /// another stamp is resumed, but its chunks are offered for comparison, not as verified
    /// ([`crate::OpenedPartial::stamp_matches`]).
    pub stamp: u64,
}

impl SourceIdentity {
    /// The same size, mtime and chunk size: a partial journaled under `other` holds chunks of
    /// this file's layout (whether they are still its data is the stamp's question).
    pub(crate) fn same_layout(&self, other: &SourceIdentity) -> bool {
        (self.size, self.mtime_sec, self.mtime_nsec, self.chunk_size)
            == (
                other.size,
                other.mtime_sec,
                other.mtime_nsec,
                other.chunk_size,
            )
    }

    /// How many chunks the file has (`ceil(size / chunk_size)`); the chunk size is non-zero.
    pub(crate) fn chunk_count(&self) -> u64 {
        self.size.div_ceil(u64::from(self.chunk_size.max(1)))
    }
}

const MAGIC: &[u8; 8] = b"HAULPRT1";
const VERSION: u32 = 2;
/// Bytes of the header before the rel path.
const HEADER_FIXED: usize = 8 + 4 + 8 + 8 + 4 + 4 + 8 + 4;
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
    out.extend_from_slice(&identity.stamp.to_le_bytes());
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
    let stamp = u64::from_le_bytes(take(&mut rest)?);
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
            stamp,
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
/// The index of a batch marker.
const MARKER: u64 = u64::MAX;

/// How a batch of records was made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Batch {
    /// Not synced: valid while the boot that wrote it lasts.
    Light,
    /// Synced after the data file was: valid across power cuts.
    Durable,
}

/// A 16-byte identity of the running boot (Linux's random boot id); `None` where unknown,
/// which makes every light batch untrusted.
pub(crate) type BootId = [u8; 16];

/// The marker that opens a batch.
pub(crate) fn encode_marker(batch: Batch, boot: Option<BootId>) -> [u8; RECORD_LEN] {
    let mut hash = [0u8; 32];
    hash[0] = match batch {
        Batch::Light => 1,
        Batch::Durable => 2,
    };
    hash[1..17].copy_from_slice(&boot.unwrap_or_default());
    encode_record(MARKER, &hash)
}

/// This boot's id, read once from `/proc/sys/kernel/random/boot_id`.
pub(crate) fn current_boot() -> Option<BootId> {
    static BOOT: std::sync::OnceLock<Option<BootId>> = std::sync::OnceLock::new();
    *BOOT.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        parse_boot_id(&text)
    })
}

fn parse_boot_id(text: &str) -> Option<BootId> {
    let hex: Vec<u8> = text.trim().bytes().filter(|b| *b != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (byte, pair) in id.iter_mut().zip(hex.chunks_exact(2)) {
        let digits = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(digits, 16).ok()?;
    }
    // All zeros is what an unknown boot writes; never let it match.
    (id != [0; 16]).then_some(id)
}

/// The trusted records of a journal body (after the header) read in boot `boot`, and how
/// many bytes they span: the next append goes there, overwriting anything untrusted.
pub(crate) fn decode_records(bytes: &[u8], boot: Option<BootId>) -> (Vec<(u64, [u8; 32])>, usize) {
    let mut trusted = Vec::with_capacity(bytes.len() / RECORD_LEN);
    // Records of light batches from another boot: trusted only if a durable marker follows.
    let mut tentative = Vec::new();
    let mut in_untrusted_batch = false;
    let mut good = 0usize;
    for (n, (index, hash)) in decode_all(bytes).into_iter().enumerate() {
        let end = (n + 1) * RECORD_LEN;
        if index == MARKER {
            match hash[0] {
                2 => {
                    trusted.append(&mut tentative);
                    in_untrusted_batch = false;
                    good = end;
                }
                _ => {
                    let from: BootId = hash[1..17].try_into().unwrap_or_default();
                    in_untrusted_batch = boot.is_none() || boot != Some(from);
                    if !in_untrusted_batch && tentative.is_empty() {
                        good = end;
                    }
                }
            }
            continue;
        }
        if in_untrusted_batch || !tentative.is_empty() {
            tentative.push((index, hash));
        } else {
            trusted.push((index, hash));
            good = end;
        }
    }
    (trusted, good)
}

/// Every record up to the first whose checksum fails.
fn decode_all(bytes: &[u8]) -> Vec<(u64, [u8; 32])> {
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
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: SourceIdentity = SourceIdentity {
        size: 10 << 20,
        mtime_sec: -5,
        mtime_nsec: 999_999_999,
        chunk_size: 1 << 20,
        stamp: 0xfeed,
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
        let (records, good) = decode_records(&torn, None);
        assert_eq!(records.len(), 3);
        assert_eq!(good, 3 * RECORD_LEN);
        let mut garbage = bytes.clone();
        garbage.extend_from_slice(&[0u8; RECORD_LEN]);
        garbage.extend_from_slice(&encode_record(4, &[4; 32]));
        let (records, good) = decode_records(&garbage, None);
        assert_eq!(records, vec![(0, [0; 32]), (1, [1; 32]), (2, [2; 32])]);
        assert_eq!(good, 3 * RECORD_LEN);
    }

    const BOOT: Option<BootId> = Some([5; 16]);
    const OTHER_BOOT: Option<BootId> = Some([6; 16]);

    fn batch(kind: Batch, boot: Option<BootId>, indexes: &[u64]) -> Vec<u8> {
        let mut out = encode_marker(kind, boot).to_vec();
        for &i in indexes {
            out.extend_from_slice(&encode_record(i, &[i as u8; 32]));
        }
        out
    }

    fn indexes(records: &[(u64, [u8; 32])]) -> Vec<u64> {
        records.iter().map(|r| r.0).collect()
    }

    #[test]
    fn light_batches_count_only_in_the_boot_that_wrote_them() {
        let mut bytes = batch(Batch::Durable, BOOT, &[0, 1]);
        let durable_end = bytes.len();
        bytes.extend(batch(Batch::Light, BOOT, &[2, 3]));
        bytes.extend(batch(Batch::Light, BOOT, &[4]));
        // Same boot (a killed process): everything stands.
        let (records, good) = decode_records(&bytes, BOOT);
        assert_eq!(indexes(&records), [0, 1, 2, 3, 4]);
        assert_eq!(good, bytes.len());
        // After a reboot (maybe a power cut): only what a durable marker covers.
        let (records, good) = decode_records(&bytes, OTHER_BOOT);
        assert_eq!(indexes(&records), [0, 1]);
        assert_eq!(
            good, durable_end,
            "the next append must overwrite the untrusted tail"
        );
        // Unknown boot: light batches are never trusted.
        let (records, _) = decode_records(&bytes, None);
        assert_eq!(indexes(&records), [0, 1]);
    }

    #[test]
    fn a_durable_marker_vouches_for_the_light_batches_before_it() {
        let mut bytes = batch(Batch::Light, OTHER_BOOT, &[0, 1]);
        bytes.extend(batch(Batch::Durable, OTHER_BOOT, &[2]));
        let (records, good) = decode_records(&bytes, BOOT);
        assert_eq!(indexes(&records), [0, 1, 2]);
        assert_eq!(good, bytes.len());
    }

    #[test]
    fn records_without_markers_are_durable() {
        let mut bytes = Vec::new();
        for i in 0..2u64 {
            bytes.extend_from_slice(&encode_record(i, &[i as u8; 32]));
        }
        let (records, good) = decode_records(&bytes, BOOT);
        assert_eq!(indexes(&records), [0, 1]);
        assert_eq!(good, bytes.len());
    }

    #[test]
    fn boot_ids_parse_like_the_kernel_writes_them() {
        let id = parse_boot_id("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0\n").unwrap();
        assert_eq!(id[0], 0x0f);
        assert_eq!(id[15], 0xf0);
        assert!(parse_boot_id("not-a-boot-id").is_none());
        assert!(parse_boot_id("00000000-0000-0000-0000-000000000000").is_none());
        assert!(
            current_boot().is_some(),
            "this is Linux: /proc has a boot id"
        );
    }
}
