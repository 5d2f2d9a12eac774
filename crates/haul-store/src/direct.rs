//! Direct (`O_DIRECT`) writes for large partial files, chosen at run time.
//!
//! Why: a buffered write copies every byte into freshly allocated page-cache pages, and the
//! final `fdatasync` then waits for all of them to reach the disk. For a multi-gigabyte file
//! that copy was half of the receiver's CPU, and on a virtual machine whose host reclaims idle
//! guest memory the first touch of each new page is slower still (the same 2 GiB `dd` took
//! 0.6 s or 5 s from one run to the next). A direct write goes from our buffer to the device,
//! so the disk works while we hash and receive, and nothing is left to flush at the end.
//!
//! What it needs: the file offset, the length and the buffer's address aligned to the
//! device's block. Offsets are chunk starts (a power of two of at least 64 KiB) plus whole
//! 4 KiB blocks, so only the buffer and the file's unaligned tail need care: an unaligned
//! buffer is copied into an aligned per-thread bounce buffer first, and a tail shorter than a
//! block is written through the ordinary (buffered) descriptor. A file system that refuses
//! `O_DIRECT` at open or at the first write (`EINVAL`) turns it off for that file, and the
//! buffered path does everything, as before.
//!
//! Each direct write first allocates its range (`fallocate`, as unwritten extents). Writing
//! into holes is an allocating write, which ext4 does under the inode's exclusive lock, so two
//! writers of one file took turns and the disk saw one 4 MiB write at a time; into an
//! allocated range it is an overwrite under the shared lock, and two writers keep two writes
//! in flight (two `dd`s on one file: 3.1-4.1 s for 2 GiB here, against 4.2-7.8 s for one).
//! Only ranges that carry data are allocated, so holes stay holes.
//!
//! `HAUL_NO_DIRECT=1` turns it off everywhere (to compare both paths, or for a file system
//! where direct I/O is slow).

use std::cell::RefCell;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{FallocateFlags, Mode, OFlags};
use rustix::io::Errno;

use crate::fsutil::pwrite_all;

/// The alignment every direct write keeps: the largest logical block size in common use.
pub(crate) const ALIGN: usize = 4096;

/// Largest piece copied through the bounce buffer at once.
const BOUNCE: usize = 8 << 20;

thread_local! {
    /// Over-allocated by [`ALIGN`] so an aligned window of [`BOUNCE`] bytes always fits.
    static BOUNCE_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A second, `O_DIRECT` descriptor of a file, used for its block-aligned writes.
pub(crate) struct DirectWriter {
    fd: OwnedFd,
    /// Cleared for good by the first write the file system refuses.
    enabled: AtomicBool,
}

impl DirectWriter {
    /// Opens `name` in `dir` for direct writes, if this file system allows it and the
    /// operator has not turned it off. `same_as` is the buffered descriptor of the file: the
    /// new descriptor is used only if it names the same inode.
    pub(crate) fn open(dir: BorrowedFd<'_>, name: &str, same_as: BorrowedFd<'_>) -> Option<Self> {
        if disabled_by_env() {
            return None;
        }
        let flags = OFlags::WRONLY | OFlags::DIRECT | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        let fd = rustix::fs::openat(dir, name, flags, Mode::empty()).ok()?;
        let (a, b) = (
            rustix::fs::fstat(&fd).ok()?,
            rustix::fs::fstat(same_as).ok()?,
        );
        if a.st_ino != b.st_ino || a.st_dev != b.st_dev {
            return None;
        }
        Some(DirectWriter {
            fd,
            enabled: AtomicBool::new(true),
        })
    }

    /// Writes the block-aligned head of `data` at `offset` directly and returns how many
    /// bytes it wrote: 0 when direct writes are off or `offset` is unaligned, else a multiple
    /// of [`ALIGN`] (the caller writes the rest through the page cache). A refusal by the file
    /// system turns direct writes off for this file and returns 0; a real error (a full disk,
    /// an I/O error) is returned.
    pub(crate) fn write_head(&self, offset: u64, data: &[u8]) -> Result<usize, Errno> {
        let head = data.len() / ALIGN * ALIGN;
        if head == 0
            || !offset.is_multiple_of(ALIGN as u64)
            || !self.enabled.load(Ordering::Relaxed)
        {
            return Ok(0);
        }
        // Best effort: a file system without `fallocate` just writes into the hole. A full
        // disk says so here, before anything is written.
        match rustix::fs::fallocate(&self.fd, FallocateFlags::empty(), offset, head as u64) {
            Ok(()) | Err(Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) => {}
            Err(e) => return Err(e),
        }
        let result = if data.as_ptr().align_offset(ALIGN) == 0 {
            pwrite_all(self.fd.as_fd(), offset, &data[..head])
        } else {
            self.write_bounced(offset, &data[..head])
        };
        match result {
            Ok(()) => Ok(head),
            // Nothing was written: this file system (or this kernel) refuses direct I/O
            // for this file after all. The buffered path takes over.
            Err(Errno::INVAL | Errno::OPNOTSUPP) => {
                self.enabled.store(false, Ordering::Relaxed);
                Ok(0)
            }
            Err(e) => Err(e),
        }
    }

    /// Whether a write of `len` bytes at `offset` would go to the disk directly in full: no
    /// page-cache part, so writers of other ranges of the file need not wait for it.
    pub(crate) fn covers(&self, offset: u64, len: usize) -> bool {
        len > 0
            && len.is_multiple_of(ALIGN)
            && offset.is_multiple_of(ALIGN as u64)
            && self.enabled.load(Ordering::Relaxed)
    }

    fn write_bounced(&self, mut offset: u64, mut data: &[u8]) -> Result<(), Errno> {
        BOUNCE_BUF.with(|cell| {
            let mut buf = cell.borrow_mut();
            if buf.len() < BOUNCE + ALIGN {
                buf.resize(BOUNCE + ALIGN, 0);
            }
            let start = buf.as_ptr().align_offset(ALIGN);
            let window = &mut buf[start..start + BOUNCE];
            while !data.is_empty() {
                let n = data.len().min(BOUNCE);
                window[..n].copy_from_slice(&data[..n]);
                pwrite_all(self.fd.as_fd(), offset, &window[..n])?;
                data = &data[n..];
                offset += n as u64;
            }
            Ok(())
        })
    }

    /// Whether direct writes are still on for this file.
    #[cfg(test)]
    pub(crate) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }
}

fn disabled_by_env() -> bool {
    std::env::var_os("HAUL_NO_DIRECT").is_some_and(|v| !v.is_empty() && v != "0")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::FileExt;

    fn open_pair() -> (tempfile::TempDir, std::fs::File, Option<DirectWriter>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.set_len(1 << 20).unwrap();
        let d = std::fs::File::open(dir.path()).unwrap();
        let direct = DirectWriter::open(d.as_fd(), "f", file.as_fd());
        (dir, file, direct)
    }

    /// Aligned and unaligned buffers, and a ragged length, all land byte for byte; the part
    /// past the last whole block is left for the caller.
    #[test]
    fn aligned_and_bounced_writes_land_intact() {
        let (_dir, file, direct) = open_pair();
        let Some(direct) = direct else {
            // The test directory's file system has no direct I/O: nothing to check here.
            return;
        };
        let data: Vec<u8> = (0..3 * ALIGN + 5 + 1).map(|i| (i % 253) as u8).collect();
        // Offset 1 into the vector: almost certainly not aligned, so it is bounced.
        let unaligned = &data[1..];
        let wrote = direct.write_head(8192, unaligned).unwrap();
        if !direct.enabled() {
            return;
        }
        assert_eq!(wrote, 3 * ALIGN);
        let mut back = vec![0u8; wrote];
        file.read_exact_at(&mut back, 8192).unwrap();
        assert_eq!(back, unaligned[..wrote]);
        // An unaligned file offset is refused without writing.
        assert_eq!(direct.write_head(100, unaligned).unwrap(), 0);
        // Less than a block: nothing for the direct path.
        assert_eq!(direct.write_head(0, &data[..100]).unwrap(), 0);
        let mut all = Vec::new();
        (&file).read_to_end(&mut all).unwrap();
        assert!(all[..8192].iter().all(|&b| b == 0), "nothing else written");
    }
}
