//! Chunks a file takes from an old copy (the destination's previous version, or a
//! renamed-aside copy) instead of receiving them: read and hashed again, or vouched for by the
//! chunk-hash cache and copied in the kernel, then checked against the hash offered for them;
//! or, for a few changed chunks of the destination itself, an in-place patch under an undo
//! log. The entry stage found the copy and hashed it (the [`Reuse`] of a plan); `install`
//! calls in here when a file completes.

use std::os::unix::fs::FileExt;

use haul_proto::Hash;
use haul_store::{PatchRange, RelPath, Root};

use super::{Reuse, Slot, source_changed};
use crate::receiver::target::Target;

/// A changed file is patched in place only while the changed chunks are at most this share
/// (1/N) of it: beyond that, writing a new file costs little more than the undo log would.
const PATCH_SHARE: u64 = 4;

/// Updates the destination in place when it is the old copy and only a few chunks
/// changed (those the partial holds, at most a [`PATCH_SHARE`]th of the file): the
/// unchanged chunks are checked against what was offered for them (through the chunk-hash
/// cache, or by reading and hashing them), the whole-file hash against the sender's, and
/// then the store overwrites just the changed ranges under an undo log. Returns the bytes
/// written, or `None` when the file is not a candidate (the caller then writes a new file
/// as usual, with nothing changed).
pub(super) fn patch(
    root: &Root,
    slot: &Slot,
    reuse: &Reuse,
    partial: &haul_store::Partial,
    hashes: &[Option<Hash>],
    client: Hash,
) -> Result<Option<u64>, (String, bool)> {
    let layout = &slot.layout;
    let mut ranges: Vec<PatchRange> = Vec::new();
    for (index, have) in hashes.iter().enumerate() {
        let index = index as u64;
        if have.is_none() {
            continue;
        }
        let (offset, len) = (layout.offset(index), layout.len(index).map_or(0, u64::from));
        match ranges.last_mut() {
            Some(last) if last.offset + last.len == offset => last.len += len,
            _ => ranges.push(PatchRange { offset, len }),
        }
    }
    let patched: u64 = ranges.iter().map(|r| r.len).sum();
    if patched == 0 || patched > layout.size() / PATCH_SHARE {
        return Ok(None);
    }
    let shown = || root.display_path(&slot.rel).display().to_string();
    let vouched = match &reuse.cached {
        Some(old) => root.cached_chunk_hashes(old, &reuse.file, layout.chunk_size()),
        None => None,
    };
    let mut all = Vec::with_capacity(hashes.len());
    let mut buf = Vec::new();
    for (index, have) in hashes.iter().enumerate() {
        if let Some(hash) = have {
            all.push(*hash);
            continue;
        }
        let Some(Some(offered)) = reuse.hashes.get(index).copied() else {
            return Err(not_held(&shown(), index as u64));
        };
        let ok = match &vouched {
            Some(still) => still.get(index) == Some(&offered),
            None => {
                let index = index as u64;
                buf.resize(layout.len(index).map_or(0, |l| l as usize), 0);
                reuse
                    .file
                    .read_exact_at(&mut buf, layout.offset(index))
                    .map_err(|e| {
                        (
                            format!("{}: cannot read the old copy to reuse it: {e}", shown()),
                            false,
                        )
                    })?;
                haul_manifest::chunk_hash(layout, index, &buf) == offered
            }
        };
        if !ok {
            return Err(reuse_changed(&shown()));
        }
        all.push(offered);
    }
    if haul_manifest::file_hash(layout, &all) != Some(client) {
        return Err(source_changed(&shown()));
    }
    let done = root.patch_in_place(
        &slot.rel,
        &reuse.file,
        layout.size(),
        &ranges,
        partial,
        &slot.attrs,
    );
    match done {
        Ok(true) => {
            if let Err(e) = root.store_chunk_hashes(&slot.rel, layout.chunk_size(), &all) {
                tracing::debug!(error = %e, "chunk-hash cache not updated");
            }
            Ok(Some(patched))
        }
        Ok(false) => Ok(None),
        Err(e) => Err((e.to_string(), e.is_no_space())),
    }
}

/// [`fill_from`] for a copy whose hashes came from the chunk-hash cache: each run
/// of missing chunks is copied in the kernel (`copy_file_range`), and afterwards the cache
/// must still vouch for the copy (its inode, size, mtime and ctime unchanged), so a copy
/// written to meanwhile fails the file instead of going in unverified. Returns false if
/// the target cannot copy ranges (the caller then reads and hashes instead).
fn fill_from_cached(
    root: &Root,
    slot: &Slot,
    reuse: &Reuse,
    old: &RelPath,
    target: &Target,
    hashes: &mut [Option<Hash>],
    bytes_written: &mut u64,
) -> Result<bool, (String, bool)> {
    let Target::Partial(partial) = target else {
        return Ok(false);
    };
    let shown = || root.display_path(&slot.rel).display().to_string();
    let mut index = 0usize;
    while index < hashes.len() {
        if hashes[index].is_some() {
            index += 1;
            continue;
        }
        let start = index;
        while index < hashes.len() && hashes[index].is_none() {
            index += 1;
        }
        let offset = slot.layout.offset(start as u64);
        let end = slot
            .layout
            .offset(index as u64 - 1)
            .saturating_add(slot.layout.len(index as u64 - 1).map_or(0, u64::from));
        match partial.copy_from(&reuse.file, offset, end - offset) {
            Ok(n) => *bytes_written += n,
            Err(e) => return Err((e.to_string(), e.is_no_space())),
        }
    }
    let still = root.cached_chunk_hashes(old, &reuse.file, slot.layout.chunk_size());
    for (index, have) in hashes.iter_mut().enumerate() {
        if have.is_some() {
            continue;
        }
        let offered = reuse.hashes.get(index).copied().flatten();
        let vouched = still.as_ref().and_then(|s| s.get(index)).copied();
        let (Some(offered), Some(len)) = (offered, slot.layout.len(index as u64)) else {
            return Err(not_held(&shown(), index as u64));
        };
        if vouched != Some(offered) {
            return Err(reuse_changed(&shown()));
        }
        if let Err(e) = target.record(index as u64, offered, u64::from(len)) {
            return Err((e.to_string(), e.is_no_space()));
        }
        *have = Some(offered);
    }
    Ok(true)
}

/// Copies every chunk the sender did not send from the reusable copy, checking each
/// against the hash that was offered for it.
pub(super) fn fill_from(
    root: &Root,
    slot: &Slot,
    reuse: &Reuse,
    target: &Target,
    hashes: &mut [Option<Hash>],
    bytes_written: &mut u64,
) -> Result<(), (String, bool)> {
    if let Some(old) = &reuse.cached
        && fill_from_cached(root, slot, reuse, old, target, hashes, bytes_written)?
    {
        return Ok(());
    }
    let mut buf = Vec::new();
    for (index, have) in hashes.iter_mut().enumerate() {
        if have.is_some() {
            continue;
        }
        let index = index as u64;
        let shown = || root.display_path(&slot.rel).display().to_string();
        let (Some(len), Some(Some(offered))) =
            (slot.layout.len(index), reuse.hashes.get(index as usize))
        else {
            return Err(not_held(&shown(), index));
        };
        buf.resize(len as usize, 0);
        let offset = slot.layout.offset(index);
        if let Err(e) = reuse.file.read_exact_at(&mut buf, offset) {
            return Err((
                format!("{}: cannot read the old copy to reuse it: {e}", shown()),
                false,
            ));
        }
        let hash = haul_manifest::chunk_hash(&slot.layout, index, &buf);
        if hash != *offered {
            return Err(reuse_changed(&shown()));
        }
        match target
            .write_at(offset, &buf)
            .and_then(|n| target.record(index, hash, u64::from(len)).map(|()| n))
        {
            Ok(n) => *bytes_written += n,
            Err(e) => return Err((e.to_string(), e.is_no_space())),
        }
        *have = Some(hash);
    }
    Ok(())
}

/// A file fails because the old copy it reused changed meanwhile.
fn reuse_changed(path: &str) -> (String, bool) {
    let message =
        format!("{path}: the old copy changed while it was being reused; run the copy again");
    (message, false)
}

/// A file fails because one of its chunks was neither sent nor held.
fn not_held(path: &str, index: u64) -> (String, bool) {
    (
        format!("{path}: chunk {index} was neither sent nor held"),
        false,
    )
}
