//! The chaining values of all-zero chunks (holes), remembered so that each is computed once
//! per machine rather than once per copy.
//!
//! A hole chunk's hash depends only on the chunk size and the chunk's index (BLAKE3 mixes the
//! offset into every 1 KiB block), never on the file, yet computing it costs as much as
//! hashing that many bytes: a 10 GiB disk image holding 100 MiB of data would otherwise hash
//! 10 GiB of zeros on every copy, on both sides. [`zero_chunk_hash`](crate::zero_chunk_hash)
//! looks full-size chunks up here first and records what it computes.
//!
//! The table lives in memory for the life of the process and, once [`persist_in`] names a
//! directory (the CLI passes the user's cache directory), in `zero-chunks.v1` there: loaded
//! by `persist_in`, written by [`save`] (atomically, temp file and rename, mode 0600) when
//! something new was computed. The file is a cache: one that is missing, torn or not ours is
//! ignored and rebuilt. Format: `MAGIC`, then records of chunk size (u32 LE), index (u64 LE)
//! and the 32-byte value, then the BLAKE3 of everything before.

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex, MutexGuard};

use haul_proto::Hash;

const MAGIC: &[u8; 8] = b"HAULZCV1";
const FILE: &str = "zero-chunks.v1";
const RECORD_LEN: usize = 4 + 8 + 32;
/// At most this many values are kept: 4 TiB of holes at the default 4 MiB chunk (48 MiB of
/// memory); past that, values are computed and not remembered.
const MAX_ENTRIES: usize = 1 << 20;

struct Table {
    values: HashMap<(u32, u64), Hash>,
    /// Values computed since the file was last written.
    fresh: usize,
    dir: Option<PathBuf>,
    /// Whether the file in `dir` has been read (on first use, so a copy without holes never
    /// reads it).
    loaded: bool,
}

impl Table {
    fn load(&mut self) {
        self.loaded = true;
        let Some(dir) = &self.dir else { return };
        let loaded = std::fs::read(dir.join(FILE))
            .ok()
            .and_then(|bytes| decode(&bytes));
        for (key, value) in loaded.into_iter().flatten() {
            if self.values.len() >= MAX_ENTRIES {
                break;
            }
            self.values.entry(key).or_insert(value);
        }
    }
}

static TABLE: LazyLock<Mutex<Table>> = LazyLock::new(|| {
    Mutex::new(Table {
        values: HashMap::new(),
        fresh: 0,
        dir: None,
        loaded: false,
    })
});

fn table() -> MutexGuard<'static, Table> {
    TABLE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn with_table<R>(f: impl FnOnce(&mut Table) -> R) -> R {
    let mut table = table();
    if !table.loaded {
        table.load();
    }
    f(&mut table)
}

/// The remembered value of the all-zero chunk `index` of `chunk_size` bytes, if any.
pub(crate) fn lookup(chunk_size: u32, index: u64) -> Option<Hash> {
    with_table(|t| t.values.get(&(chunk_size, index)).copied())
}

/// Remembers a value just computed.
pub(crate) fn remember(chunk_size: u32, index: u64, value: Hash) {
    with_table(|t| {
        if t.values.len() < MAX_ENTRIES && t.values.insert((chunk_size, index), value).is_none() {
            t.fresh += 1;
        }
    });
}

/// Keeps the table in `dir` (created, mode 0700, if missing): what an earlier process saved
/// there is read on first use, and [`save`] writes there. A file that cannot be read or does
/// not verify is ignored (it is rebuilt as values are computed); only a directory that cannot
/// be created is an error, and the table then simply stays in memory.
pub fn persist_in(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mut table = table();
    table.dir = Some(dir.to_path_buf());
    table.loaded = false;
    Ok(())
}

/// Writes the table to the directory given to [`persist_in`] if values were computed since
/// it was last written; does nothing otherwise, or when no directory was given.
pub fn save() -> io::Result<()> {
    let (dir, bytes) = {
        let mut t = table();
        let Some(dir) = t.dir.clone().filter(|_| t.fresh > 0) else {
            return Ok(());
        };
        t.fresh = 0;
        (dir, encode(&t.values))
    };
    let tmp = dir.join(format!("{FILE}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(&bytes)?;
        std::fs::rename(&tmp, dir.join(FILE))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

fn encode(values: &HashMap<(u32, u64), Hash>) -> Vec<u8> {
    let mut keys: Vec<_> = values.keys().copied().collect();
    keys.sort_unstable();
    let mut out = Vec::with_capacity(MAGIC.len() + keys.len() * RECORD_LEN + 32);
    out.extend_from_slice(MAGIC);
    for key in keys {
        out.extend_from_slice(&key.0.to_le_bytes());
        out.extend_from_slice(&key.1.to_le_bytes());
        out.extend_from_slice(&values[&key]);
    }
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

fn decode(bytes: &[u8]) -> Option<Vec<((u32, u64), Hash)>> {
    let body = bytes.strip_prefix(MAGIC.as_slice())?;
    let (records, sum) = body.split_at_checked(body.len().checked_sub(32)?)?;
    if blake3::hash(&bytes[..bytes.len() - 32]).as_bytes() != sum || records.len() % RECORD_LEN != 0
    {
        return None;
    }
    records
        .chunks_exact(RECORD_LEN)
        .map(|r| {
            let size = u32::from_le_bytes(r[..4].try_into().ok()?);
            let index = u64::from_le_bytes(r[4..12].try_into().ok()?);
            Some(((size, index), r[12..].try_into().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_table_reads_back_and_a_damaged_one_is_ignored() {
        let mut values = HashMap::new();
        values.insert((4 << 20, 7), [7u8; 32]);
        values.insert((1 << 16, 0), [1u8; 32]);
        let bytes = encode(&values);
        let back: HashMap<_, _> = decode(&bytes).unwrap().into_iter().collect();
        assert_eq!(back, values);
        let mut torn = bytes.clone();
        torn.truncate(bytes.len() - 1);
        assert!(decode(&torn).is_none());
        let mut flipped = bytes;
        flipped[20] ^= 1;
        assert!(decode(&flipped).is_none());
        assert!(decode(b"").is_none());
    }
}
