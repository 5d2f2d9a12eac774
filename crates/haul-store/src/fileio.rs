//! Positional I/O shared by [`crate::StagingFile`] and [`crate::Partial`]: the sparse-aware
//! write, the range copy from another file, and read-back.
//!
//! Why one place: both kinds of file are "a sized file of holes that verified chunks are
//! written into", and a fix to the zero-block logic must reach both.

use std::io;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use rustix::fs::FallocateFlags;
use rustix::io::Errno;

use crate::direct::DirectWriter;
use crate::error::StoreError;
use crate::fsutil::pwrite_all;

/// Sparse granularity: the common file-system block size. A 4 KiB-aligned block of zeros is
/// not written, so it stays (or becomes) a hole.
const BLOCK: u64 = 4096;

/// Bytes of a block looked at before the whole of it: data (random, compressed, text) almost
/// always has a non-zero byte here, so most blocks cost one cache line, not 4 KiB of reading.
const PROBE: usize = 64;

/// Whether `block` is all zeros: its first [`PROBE`] bytes, then (only if those were zero)
/// the rest. A fold with no early exit vectorizes; 4 KiB at a time stays in L1.
fn all_zero(block: &[u8]) -> bool {
    let zero = |bytes: &[u8]| bytes.iter().fold(0u8, |acc, &b| acc | b) == 0;
    let (head, rest) = block.split_at(block.len().min(PROBE));
    zero(head) && zero(rest)
}

/// Piece size of the read/write fallback of [`copy_range`].
const COPY_PIECE: usize = 1 << 20;

/// What to do with an all-zero block.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Zeros {
    /// Skip it: the region has never been written, so it is a hole already.
    Skip,
    /// Punch a hole there (or write the zeros where punching is unsupported): the region may
    /// hold bytes from an earlier, unverified write (a resumed partial), which must not
    /// survive under a block the source says is zeros.
    Punch,
}

/// A sized file being filled, with what its error messages need.
pub(crate) struct Target<'a> {
    pub(crate) fd: BorrowedFd<'a>,
    /// The declared size; nothing is ever written past it.
    pub(crate) size: u64,
    /// The file's full path, for messages (built only on error).
    pub(crate) path: &'a dyn Fn() -> PathBuf,
    /// The top root, named by NoSpace messages.
    pub(crate) space_path: &'a Path,
    /// "staging file" or "partial file", for messages.
    pub(crate) ops: &'a Ops,
    /// The file's `O_DIRECT` descriptor, for its block-aligned writes (large partials only).
    pub(crate) direct: Option<&'a DirectWriter>,
}

/// The operation names of one kind of file (they must be `'static` for [`StoreError`]).
pub(crate) struct Ops {
    pub(crate) write: &'static str,
    pub(crate) past_end: &'static str,
    pub(crate) read: &'static str,
    pub(crate) copy: &'static str,
}

impl Target<'_> {
    fn err(&self, errno: Errno, op: &'static str) -> StoreError {
        StoreError::from_errno(errno, (self.path)(), self.space_path, op)
    }

    fn invalid(&self, op: &'static str, kind: io::ErrorKind, msg: String) -> StoreError {
        StoreError::Io {
            path: (self.path)(),
            op,
            source: io::Error::new(kind, msg),
        }
    }

    /// Refuses a range past the declared size: growing the file would break the "untouched
    /// regions are holes of the right size" invariant; it is a caller bug, not a disk condition.
    fn check_range(&self, offset: u64, len: u64, op: &'static str) -> Result<(), StoreError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(self.invalid(
                op,
                io::ErrorKind::InvalidInput,
                format!(
                    "{len} bytes at offset {offset} exceed the file size {}",
                    self.size
                ),
            )),
        }
    }

    /// Positional write of `data` at `offset`, sparse-aware (see [`Zeros`]). Returns the bytes
    /// actually written to disk.
    pub(crate) fn write_sparse(
        &self,
        offset: u64,
        data: &[u8],
        zeros: Zeros,
    ) -> Result<u64, StoreError> {
        self.check_range(offset, data.len() as u64, self.ops.past_end)?;
        let mut written = 0u64;
        // The current run of blocks of one kind: (start index into `data`, all zeros?).
        let mut run: Option<(usize, bool)> = None;
        let mut pos = 0usize;
        while pos < data.len() {
            let file_pos = offset + pos as u64;
            // Up to the next 4 KiB boundary of the *file*, so skipped blocks align with the
            // file system's blocks.
            let to_boundary = (BLOCK - file_pos % BLOCK) as usize;
            let block_end = data.len().min(pos + to_boundary);
            let zero = all_zero(&data[pos..block_end]);
            match run {
                Some((start, was_zero)) if was_zero != zero => {
                    written += self.flush_run(offset, data, start..pos, was_zero, zeros)?;
                    run = Some((pos, zero));
                }
                None => run = Some((pos, zero)),
                Some(_) => {}
            }
            pos = block_end;
        }
        if let Some((start, was_zero)) = run {
            written += self.flush_run(offset, data, start..data.len(), was_zero, zeros)?;
        }
        Ok(written)
    }

    fn flush_run(
        &self,
        offset: u64,
        data: &[u8],
        range: std::ops::Range<usize>,
        zero: bool,
        zeros: Zeros,
    ) -> Result<u64, StoreError> {
        let at = offset + range.start as u64;
        if !zero {
            return self.pwrite_all(at, &data[range]);
        }
        if zeros == Zeros::Skip {
            return Ok(0);
        }
        let len = (range.end - range.start) as u64;
        let punch = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        match rustix::fs::fallocate(self.fd, punch, at, len) {
            Ok(()) => Ok(0),
            // A file system that cannot punch holes gets the zeros written out instead.
            Err(Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) => {
                self.pwrite_all(at, &data[range])
            }
            Err(e) => Err(self.err(e, self.ops.write)),
        }
    }

    fn pwrite_all(&self, offset: u64, buf: &[u8]) -> Result<u64, StoreError> {
        let direct = match self.direct {
            Some(d) => d
                .write_head(offset, buf)
                .map_err(|e| self.err(e, self.ops.write))?,
            None => 0,
        };
        pwrite_all(self.fd, offset + direct as u64, &buf[direct..])
            .map_err(|e| self.err(e, self.ops.write))?;
        Ok(buf.len() as u64)
    }

    /// Fills `buf` from `offset`; a short file is an error (the range was promised to exist).
    pub(crate) fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        self.check_range(offset, buf.len() as u64, self.ops.read)?;
        pread_exact(self.fd, offset, buf).map_err(|e| match e {
            ReadError::Errno(e) => self.err(e, self.ops.read),
            ReadError::Eof => self.invalid(
                self.ops.read,
                io::ErrorKind::UnexpectedEof,
                format!("the file ends before offset {}", offset + buf.len() as u64),
            ),
        })
    }

    /// Copies `[offset, offset + len)` of `src` into the same range of this file with
    /// `copy_file_range` (which may share extents or copy in the kernel), falling back to
    /// reads and writes where the kernel or file system cannot. Returns the bytes copied.
    pub(crate) fn copy_range(
        &self,
        src: BorrowedFd<'_>,
        offset: u64,
        len: u64,
        force_fallback: bool,
    ) -> Result<u64, StoreError> {
        self.check_range(offset, len, self.ops.copy)?;
        let end = offset + len;
        let (mut off_in, mut off_out) = (offset, offset);
        let mut fast = !force_fallback;
        while off_out < end && fast {
            let want = usize::try_from(end - off_out)
                .unwrap_or(usize::MAX)
                .min(1 << 30);
            match rustix::fs::copy_file_range(
                src,
                Some(&mut off_in),
                self.fd,
                Some(&mut off_out),
                want,
            ) {
                Ok(0) => return Err(self.short_source(off_in)),
                Ok(_) => {}
                Err(Errno::INTR) => {}
                // Cross-device, unsupported file systems or kernels: the slow path copies the
                // rest (the offsets already say how far the fast path got).
                Err(Errno::XDEV | Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => fast = false,
                Err(e) => return Err(self.err(e, self.ops.copy)),
            }
        }
        let mut buf = vec![0u8; COPY_PIECE.min(usize::try_from(end - off_out).unwrap_or(0))];
        while off_out < end {
            let n = usize::try_from(end - off_out).map_or(buf.len(), |n| n.min(buf.len()));
            let piece = &mut buf[..n];
            pread_exact(src, off_in, piece).map_err(|e| match e {
                ReadError::Errno(e) => self.err(e, self.ops.copy),
                ReadError::Eof => self.short_source(off_in),
            })?;
            self.pwrite_all(off_out, piece)?;
            off_in += n as u64;
            off_out += n as u64;
        }
        Ok(len)
    }

    fn short_source(&self, at: u64) -> StoreError {
        self.invalid(
            self.ops.copy,
            io::ErrorKind::UnexpectedEof,
            format!("the file copied from ends at offset {at}, before the requested range"),
        )
    }
}

enum ReadError {
    Errno(Errno),
    Eof,
}

fn pread_exact(fd: BorrowedFd<'_>, mut offset: u64, mut buf: &mut [u8]) -> Result<(), ReadError> {
    while !buf.is_empty() {
        match rustix::io::pread(fd, &mut *buf, offset) {
            Ok(0) => return Err(ReadError::Eof),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(ReadError::Errno(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;

    const OPS: Ops = Ops {
        write: "write",
        past_end: "write past",
        read: "read",
        copy: "copy",
    };

    /// Both copy paths give the same bytes; the fallback is forced because no test file
    /// system reliably refuses `copy_file_range`.
    #[test]
    fn copy_range_fast_and_fallback_paths_agree() {
        let mut src = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..3 * COPY_PIECE + 123)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        src.write_all(&data).unwrap();
        for force in [false, true] {
            let dst = tempfile::tempfile().unwrap();
            dst.set_len(data.len() as u64).unwrap();
            let path = || PathBuf::from("dst");
            let target = Target {
                fd: dst.as_fd(),
                size: data.len() as u64,
                path: &path,
                space_path: Path::new("/"),
                ops: &OPS,
                direct: None,
            };
            let (off, len) = (5000u64, 2 * COPY_PIECE as u64 + 99);
            assert_eq!(
                target.copy_range(src.as_fd(), off, len, force).unwrap(),
                len
            );
            let mut back = vec![0u8; data.len()];
            target.read_exact_at(0, &mut back).unwrap();
            let (o, e) = (off as usize, (off + len) as usize);
            assert_eq!(&back[o..e], &data[o..e], "force_fallback={force}");
            assert!(back[..o].iter().all(|&b| b == 0));
            assert!(back[e..].iter().all(|&b| b == 0));
            // A range the source does not have is an error, on both paths.
            let short = Target {
                size: 1 << 30,
                ..target
            };
            dst.set_len(1 << 30).unwrap();
            let err = short
                .copy_range(src.as_fd(), data.len() as u64 - 10, 100, force)
                .unwrap_err();
            assert!(err.to_string().contains("ends at offset"), "{err}");
        }
    }

    #[test]
    fn punch_mode_clears_old_bytes_under_zero_blocks() {
        let file = tempfile::tempfile().unwrap();
        let size = 5 * BLOCK;
        file.set_len(size).unwrap();
        let path = || PathBuf::from("f");
        let target = Target {
            fd: file.as_fd(),
            size,
            path: &path,
            space_path: Path::new("/"),
            ops: &OPS,
            direct: None,
        };
        target
            .write_sparse(0, &vec![0xEE; size as usize], Zeros::Skip)
            .unwrap();
        let mut new = vec![0u8; size as usize];
        new[BLOCK as usize..2 * BLOCK as usize].fill(1);
        let written = target.write_sparse(0, &new, Zeros::Punch).unwrap();
        assert!(
            written <= 2 * BLOCK,
            "zeros were punched, not written: {written}"
        );
        let mut back = vec![0xFFu8; size as usize];
        target.read_exact_at(0, &mut back).unwrap();
        assert_eq!(back, new);
    }

    /// The probe only shortcuts data: a block whose first bytes are zero is still read to its
    /// end, so a single late byte keeps it data (never a hole that loses it).
    #[test]
    fn a_block_is_zero_only_when_every_byte_is() {
        let mut block = vec![0u8; BLOCK as usize];
        assert!(all_zero(&block));
        assert!(all_zero(&block[..10]), "a short end piece");
        assert!(all_zero(&[]));
        for at in [0, PROBE - 1, PROBE, BLOCK as usize - 1] {
            block[at] = 1;
            assert!(!all_zero(&block), "a byte at {at}");
            block[at] = 0;
        }
    }
}
