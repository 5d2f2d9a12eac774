//! Where a sparse file holds data, so holes are sent as zero chunks instead of being read.

use std::fs::File;
use std::io;
use std::ops::Range;

use rustix::fs::{SeekFrom, seek};
use rustix::io::Errno;

/// Extents closer than this are merged: a hole that small is not worth a separate answer, and
/// merging bounds the extent list of a file fragmented into many tiny pieces.
const MERGE_GAP: u64 = 64 << 10;

/// The most extents kept. Past this the merge gap doubles and the list is merged again, so a
/// pathologically fragmented file costs bounded memory. Merging only ever turns holes into
/// "data", which is read and hashed as zeros: slower, never wrong.
const MAX_EXTENTS: usize = 1 << 16;

/// The data extents of an open file, found with `lseek(SEEK_DATA/SEEK_HOLE)`. If the file
/// system does not support that, the whole file is one extent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SparseMap {
    /// Sorted, disjoint, non-empty ranges of the file that may hold data.
    extents: Vec<Range<u64>>,
}

impl SparseMap {
    /// Probes the first `size` bytes of `file`. The file's offset is restored afterwards.
    /// Data past `size` (the file grew since it was stat'ed) is ignored.
    pub fn probe(file: &File, size: u64) -> io::Result<SparseMap> {
        let saved = seek(file, SeekFrom::Current(0))?;
        let probed = probe_extents(file, size);
        // Restore before looking at the result, so even a failed probe leaves the offset alone.
        seek(file, SeekFrom::Start(saved))?;
        let extents = match probed {
            Ok(extents) => extents,
            Err(errno) if unsupported(errno) => whole(size),
            Err(errno) => return Err(errno.into()),
        };
        Ok(SparseMap { extents })
    }

    /// The map of a file of `size` bytes known to have no holes: one extent, no probing.
    /// For a file whose allocated blocks cover its size (`st_blocks * 512 >= st_size`), the
    /// usual case, where the four `lseek`s of a probe would only confirm it.
    pub fn dense(size: u64) -> SparseMap {
        SparseMap {
            extents: whole(size),
        }
    }

    /// True when `[start, end)` holds no data at all (entirely inside holes). An empty range is
    /// a hole.
    pub fn is_hole(&self, start: u64, end: u64) -> bool {
        if start >= end {
            return true;
        }
        let first = self.extents.partition_point(|extent| extent.end <= start);
        self.extents
            .get(first)
            .is_none_or(|extent| extent.start >= end)
    }

    /// The parts of `[start, end)` that may hold data, in order: the extents clipped to it.
    /// Whatever lies between them is a hole and reads as zeros.
    pub fn data_in(&self, start: u64, end: u64) -> impl Iterator<Item = Range<u64>> + '_ {
        let first = self.extents.partition_point(|extent| extent.end <= start);
        self.extents[first..]
            .iter()
            .take_while(move |extent| extent.start < end)
            .map(move |extent| extent.start.max(start)..extent.end.min(end))
    }

    /// Bytes of data (sum of extent lengths).
    pub fn data_bytes(&self) -> u64 {
        self.extents
            .iter()
            .map(|extent| extent.end - extent.start)
            .sum()
    }

    /// The data extents, sorted and disjoint.
    pub fn extents(&self) -> &[Range<u64>] {
        &self.extents
    }
}

/// The fallback map: all of a non-empty file is data.
fn whole(size: u64) -> Vec<Range<u64>> {
    (size > 0).then_some(0..size).into_iter().collect()
}

/// Errors that mean "this file system cannot answer", not "this file is broken".
fn unsupported(errno: Errno) -> bool {
    errno == Errno::INVAL
        || errno == Errno::NOTSUP
        || errno == Errno::OPNOTSUPP
        || errno == Errno::NOSYS
}

fn probe_extents(file: &File, size: u64) -> Result<Vec<Range<u64>>, Errno> {
    let mut extents: Vec<Range<u64>> = Vec::new();
    let mut gap = MERGE_GAP;
    let mut pos = 0;
    while pos < size {
        let start = match seek(file, SeekFrom::Data(pos)) {
            Ok(start) => start,
            // No data at or after `pos`: the rest is a hole.
            Err(Errno::NXIO) => break,
            Err(errno) => return Err(errno),
        };
        if start >= size {
            break;
        }
        // Every file ends in an implicit hole at EOF, so this only fails on odd file systems.
        let end = seek(file, SeekFrom::Hole(start))?.min(size);
        if end <= start {
            // A file system that answers inconsistently (the file changed under us): stop
            // trusting it and call the rest data.
            extents.push(start..size);
            break;
        }
        push_merged(&mut extents, start..end, gap);
        if extents.len() > MAX_EXTENTS {
            gap = gap.saturating_mul(2);
            let old = std::mem::take(&mut extents);
            for extent in old {
                push_merged(&mut extents, extent, gap);
            }
        }
        pos = end;
    }
    Ok(extents)
}

fn push_merged(extents: &mut Vec<Range<u64>>, next: Range<u64>, gap: u64) {
    match extents.last_mut() {
        Some(last) if next.start.saturating_sub(last.end) < gap => {
            last.end = last.end.max(next.end)
        }
        _ => extents.push(next),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_and_queries() {
        let mut extents = Vec::new();
        push_merged(&mut extents, 0..10, 100);
        push_merged(&mut extents, 50..60, 100);
        push_merged(&mut extents, 1000..1010, 100);
        assert_eq!(extents, vec![0..60, 1000..1010]);
        let map = SparseMap { extents };
        assert_eq!(map.data_bytes(), 70);
        assert!(!map.is_hole(0, 1));
        assert!(!map.is_hole(59, 61));
        assert!(map.is_hole(60, 1000));
        assert!(!map.is_hole(60, 1001));
        assert!(map.is_hole(1010, u64::MAX));
        assert!(map.is_hole(5, 5));
    }
}
