//! Chunk reads for the read/hash workers: io_uring where the kernel offers it, `pread`
//! otherwise, chosen once per worker at run time. Reads of up to [`PREAD_UP_TO`] bytes (small
//! files) always use `pread`.
//!
//! io_uring is tried first because it is the path that can grow into queued, zero-syscall
//! reads; `pread` stays as the portable fallback for kernels without `IORING_OP_READ`
//! (before 5.6), sandboxes whose seccomp filter or `kernel.io_uring_disabled` refuses
//! `io_uring_setup`, non-Linux systems, and anyone who sets `HAUL_NO_URING=1`.
//!
//! This is the only module of the crate allowed `unsafe`: after a read is submitted the kernel
//! writes into the caller's buffer on its own schedule, which the borrow checker cannot see.
//! The whole argument is kept here and small: exactly one read is in flight at a time, and
//! [`ChunkReader::read_exact_at`] never returns, nor unwinds, before that read's completion
//! has been reaped.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Reads whole chunks of files into caller buffers; one per worker thread.
pub(crate) struct ChunkReader {
    backend: Backend,
}

enum Backend {
    /// Boxed: the ring's bookkeeping is a few hundred bytes, the fallback none.
    #[cfg(target_os = "linux")]
    Uring(Box<io_uring::IoUring>),
    Pread,
}

/// Entries in each worker's ring: one read is in flight at a time, the rest is headroom.
#[cfg(target_os = "linux")]
const RING_ENTRIES: u32 = 8;

impl ChunkReader {
    /// An io_uring reader if this kernel and process allow one, else a `pread` reader.
    pub(crate) fn new() -> Self {
        if uring_disabled_by_env() {
            return Self::pread();
        }
        #[cfg(target_os = "linux")]
        if let Some(ring) = setup_ring() {
            return ChunkReader {
                backend: Backend::Uring(Box::new(ring)),
            };
        }
        Self::pread()
    }

    /// A reader that always uses `pread` (the fallback, also used by tests).
    pub(crate) fn pread() -> Self {
        ChunkReader {
            backend: Backend::Pread,
        }
    }

    /// Which backend this reader uses: `"io_uring"` or `"pread"`.
    pub(crate) fn kind(&self) -> &'static str {
        match self.backend {
            #[cfg(target_os = "linux")]
            Backend::Uring(_) => "io_uring",
            Backend::Pread => "pread",
        }
    }

    /// Fills `buf` from `file` at `offset`, retrying short reads and interrupts. A file that
    /// ends before `buf` is full gives [`io::ErrorKind::UnexpectedEof`], as
    /// [`FileExt::read_exact_at`] does.
    pub(crate) fn read_exact_at(
        &mut self,
        file: &File,
        buf: &mut [u8],
        offset: u64,
    ) -> io::Result<()> {
        match &mut self.backend {
            #[cfg(target_os = "linux")]
            Backend::Uring(ring) if buf.len() > PREAD_UP_TO => {
                uring_read_exact_at(ring, file, buf, offset)
            }
            _ => file.read_exact_at(buf, offset),
        }
    }
}

/// Reads this short go through `pread` even on an io_uring reader: a post office's 4 KiB
/// BLOBs are one read each, where a submission and its completion cost more than the one
/// system call (about 4% of the sender's CPU on a million small files).
const PREAD_UP_TO: usize = 256 << 10;

/// `HAUL_NO_URING` set to anything but empty or `0` forces `pread`.
fn uring_disabled_by_env() -> bool {
    std::env::var_os("HAUL_NO_URING").is_some_and(|v| !v.is_empty() && v != "0")
}

/// A ring whose kernel supports `IORING_OP_READ`, or `None` (any failure means "use pread").
#[cfg(target_os = "linux")]
fn setup_ring() -> Option<io_uring::IoUring> {
    let ring = io_uring::IoUring::new(RING_ENTRIES).ok()?;
    // The probe itself needs 5.6, the same kernel that brought IORING_OP_READ: a kernel that
    // cannot answer it cannot do our reads either.
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe).ok()?;
    probe
        .is_supported(io_uring::opcode::Read::CODE)
        .then_some(ring)
}

#[cfg(target_os = "linux")]
fn uring_read_exact_at(
    ring: &mut io_uring::IoUring,
    file: &File,
    mut buf: &mut [u8],
    mut offset: u64,
) -> io::Result<()> {
    while !buf.is_empty() {
        match uring_read_once(ring, file, buf, offset) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "failed to fill whole buffer",
                ));
            }
            Ok(n) => {
                buf = &mut buf[n..];
                offset = offset.checked_add(n as u64).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "read offset overflows")
                })?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One `IORING_OP_READ` of up to `buf.len()` bytes; returns the byte count. Returns only after
/// the kernel has completed the read.
#[cfg(target_os = "linux")]
fn uring_read_once(
    ring: &mut io_uring::IoUring,
    file: &File,
    buf: &mut [u8],
    offset: u64,
) -> io::Result<usize> {
    use std::os::fd::AsRawFd;

    // Larger buffers are read in several rounds by the caller's loop.
    let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
    let sqe =
        io_uring::opcode::Read::new(io_uring::types::Fd(file.as_raw_fd()), buf.as_mut_ptr(), len)
            .offset(offset)
            .build();
    // Nothing of ours is in the ring at this point (every earlier read was reaped before its
    // call returned), so the completion we wait for below can only be this one.
    let guard = AbortOnUnwind;
    // SAFETY: the entry points at `buf` (valid for `len` bytes, exclusively borrowed) and at
    // `file`'s descriptor (borrowed). Both borrows last until this function returns, and it
    // cannot return before `reap` has taken this read's completion: `reap` returns only then,
    // and an unwind in between aborts the process through `guard` instead of releasing the
    // borrows. If `push` fails the kernel never saw the entry.
    unsafe { ring.submission().push(&sqe) }
        .map_err(|_| io::Error::other("the io_uring submission queue is unexpectedly full"))?;
    let res = reap(ring);
    std::mem::forget(guard);
    if res < 0 {
        return Err(io::Error::from_raw_os_error(-res));
    }
    Ok(res as usize)
}

/// Submits what is queued and waits for one completion; returns its result. Does not return
/// before a completion has been taken: a read still owned by the kernel must not outlive the
/// borrow of its buffer.
#[cfg(target_os = "linux")]
fn reap(ring: &mut io_uring::IoUring) -> i32 {
    loop {
        if let Some(cqe) = ring.completion().next() {
            return cqe.result();
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            // Interrupted waits, and short-lived resource shortages while submitting, clear
            // up by themselves; the entry stays queued (or in flight) either way.
            Err(e)
                if matches!(
                    rustix::io::Errno::from_io_error(&e),
                    Some(
                        rustix::io::Errno::INTR
                            | rustix::io::Errno::AGAIN
                            | rustix::io::Errno::BUSY
                    )
                ) =>
            {
                std::thread::yield_now();
            }
            Err(e) => {
                // We can neither wait for the read nor cancel it, and returning would let the
                // kernel write into memory that is no longer ours. Stopping is the only sound
                // choice; it cannot happen with a ring we set up ourselves and use as here.
                eprintln!("haul: io_uring wait failed with a read in flight ({e}); aborting");
                std::process::abort();
            }
        }
    }
}

/// Aborts the process if dropped during an unwind, i.e. if anything panics while a read
/// is in flight; forgotten on the normal path.
#[cfg(target_os = "linux")]
struct AbortOnUnwind;

#[cfg(target_os = "linux")]
impl Drop for AbortOnUnwind {
    fn drop(&mut self) {
        eprintln!("haul: panic with an io_uring read in flight; aborting");
        std::process::abort();
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::io::Write;

    use super::*;

    /// A temp file of `len` bytes with position-dependent contents.
    fn sample(len: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
        let data: Vec<u8> = (0..len)
            .map(|i| (i.wrapping_mul(31) ^ (i >> 9)) as u8)
            .collect();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&data).unwrap();
        f.flush().unwrap();
        (f, data)
    }

    fn readers() -> Vec<ChunkReader> {
        let mut all = vec![ChunkReader::pread()];
        if let Some(ring) = setup_ring() {
            all.push(ChunkReader {
                backend: Backend::Uring(Box::new(ring)),
            });
        }
        all
    }

    #[test]
    fn both_backends_match_std_reads_at_odd_offsets_and_lengths() {
        let (f, data) = sample(3 * 1024 * 1024 + 777);
        let file = File::open(f.path()).unwrap();
        let cases: &[(u64, usize)] = &[
            (0, 1),
            (0, 4096),
            (1, 4095),
            (12_345, 1_000_003),
            (4096 * 3 + 17, 2 * 1024 * 1024),
            (data.len() as u64 - 1, 1),
            (0, data.len()),
        ];
        for mut reader in readers() {
            for &(offset, len) in cases {
                let mut buf = vec![0xAA; len];
                reader.read_exact_at(&file, &mut buf, offset).unwrap();
                let mut expected = vec![0; len];
                file.read_exact_at(&mut expected, offset).unwrap();
                assert_eq!(
                    buf,
                    expected,
                    "{} at {offset}+{len} differs from std",
                    reader.kind()
                );
                assert_eq!(buf, data[offset as usize..offset as usize + len]);
            }
        }
    }

    #[test]
    fn a_read_past_the_end_is_unexpected_eof() {
        // Small reads and reads longer than PREAD_UP_TO (which take the ring when there is one).
        for len in [200, PREAD_UP_TO + 200] {
            let (f, data) = sample(len + 10_000);
            let file = File::open(f.path()).unwrap();
            let near_end = data.len() as u64 - 100;
            for mut reader in readers() {
                let mut buf = vec![0; len];
                let err = reader.read_exact_at(&file, &mut buf, near_end).unwrap_err();
                assert_eq!(
                    err.kind(),
                    io::ErrorKind::UnexpectedEof,
                    "{}",
                    reader.kind()
                );
                // What was there was still read.
                assert_eq!(buf[..100], data[near_end as usize..]);
                let err = reader
                    .read_exact_at(&file, &mut buf, data.len() as u64 + 5)
                    .unwrap_err();
                assert_eq!(
                    err.kind(),
                    io::ErrorKind::UnexpectedEof,
                    "{}",
                    reader.kind()
                );
                // The reader is still usable after an error.
                let mut ok = vec![0; 10];
                reader.read_exact_at(&file, &mut ok, 0).unwrap();
                assert_eq!(ok, data[..10]);
            }
        }
    }

    #[test]
    fn a_zero_length_read_succeeds_anywhere() {
        let (f, _) = sample(100);
        let file = File::open(f.path()).unwrap();
        for mut reader in readers() {
            reader.read_exact_at(&file, &mut [], 0).unwrap();
            reader.read_exact_at(&file, &mut [], 1 << 40).unwrap();
        }
    }

    #[test]
    fn an_unreadable_descriptor_is_an_error_not_a_hang() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let write_only = File::options().write(true).open(f.path()).unwrap();
        for len in [16, PREAD_UP_TO + 1] {
            for mut reader in readers() {
                let mut buf = vec![0; len];
                let err = reader.read_exact_at(&write_only, &mut buf, 0).unwrap_err();
                assert_eq!(
                    err.raw_os_error(),
                    Some(rustix::io::Errno::BADF.raw_os_error()),
                    "EBADF from {} reading {len} bytes",
                    reader.kind()
                );
            }
        }
    }

    #[test]
    fn pread_is_chosen_when_forced_and_io_uring_otherwise_where_available() {
        assert_eq!(ChunkReader::pread().kind(), "pread");
        let auto = ChunkReader::new();
        if uring_disabled_by_env() {
            assert_eq!(auto.kind(), "pread");
        } else {
            let expected = if setup_ring().is_some() {
                "io_uring"
            } else {
                "pread"
            };
            assert_eq!(auto.kind(), expected);
        }
    }
}
