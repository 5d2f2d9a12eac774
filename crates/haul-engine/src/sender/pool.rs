//! Recycled chunk buffers for the sender.
//!
//! A fresh 4 MiB buffer per chunk costs a thousand page faults and the kernel zeroing every
//! page before the read overwrites it; at network speed that was a third of the sender's CPU.
//! Buffers are instead handed to QUIC as [`Bytes`] that return to the pool when QUIC is done
//! with them (after the peer acknowledged the data).
//!
//! Each loan starts at a 4 KiB-aligned address, so when `copy` hands a buffer straight to the
//! embedded receiver, its direct (`O_DIRECT`) write can take it without a bounce copy.
//!
//! Buffers of [`HUGE_FROM`] bytes or more are anonymous mappings in whole 2 MiB units, marked
//! for transparent huge pages: the first touch of a new 4 MiB buffer then costs two page faults
//! instead of a thousand (a fresh process, or a burst beyond the pool, still fills new ones;
//! in a sparse disk copy those faults were a tenth of the sender's CPU). Where the kernel has
//! no huge pages the advice is ignored and they are ordinary pages.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Alignment of every loan's first byte (what direct I/O asks of a buffer).
const ALIGN: usize = 4096;

/// Loans at least this long come from huge-page mappings.
const HUGE_FROM: usize = 2 << 20;

/// Memory behind a loan.
enum Backing {
    Heap(Vec<u8>),
    Mapped(memmap2::MmapMut),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Heap(v) => v,
            Backing::Mapped(m) => m,
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Backing::Heap(v) => v,
            Backing::Mapped(m) => m,
        }
    }

    /// A zeroed buffer with an aligned window of `len` bytes (a mapping is page-aligned; a
    /// heap buffer is over-allocated by [`ALIGN`] so the window always fits).
    fn new(len: usize) -> Backing {
        if len >= HUGE_FROM {
            let size = len.next_multiple_of(HUGE_FROM);
            if let Ok(map) = memmap2::MmapMut::map_anon(size) {
                let _ = map.advise(memmap2::Advice::HugePage);
                return Backing::Mapped(map);
            }
        }
        Backing::Heap(vec![0; len + ALIGN])
    }
}

/// Free buffers, reused by the read workers.
pub(crate) struct BufferPool {
    free: Mutex<Vec<Backing>>,
    /// Most free buffers kept; more are released to the allocator.
    keep: usize,
}

impl BufferPool {
    pub(crate) fn new(keep: usize) -> Arc<Self> {
        Arc::new(BufferPool {
            free: Mutex::new(Vec::new()),
            keep,
        })
    }

    /// A buffer of exactly `len` bytes (contents unspecified: the caller overwrites them).
    ///
    /// A recycled buffer is handed out as it is, so only a new buffer is zeroed; re-zeroing
    /// 4 MiB per chunk only to read over it was a measurable share of the sender's CPU. A
    /// recycled buffer too small for the loan is replaced by a new one.
    pub(crate) fn take(self: &Arc<Self>, len: usize) -> PooledBuf {
        let recycled = self.free.lock().ok().and_then(|mut f| f.pop());
        let fits = |b: &Backing| {
            let bytes = b.bytes();
            bytes.len() >= bytes.as_ptr().align_offset(ALIGN) + len
        };
        let buf = match recycled {
            Some(b) if fits(&b) => b,
            _ => Backing::new(len),
        };
        let start = buf.bytes().as_ptr().align_offset(ALIGN);
        PooledBuf {
            buf: Some(buf),
            start,
            len,
            pool: self.clone(),
        }
    }

    fn give_back(&self, buf: Backing) {
        if let Ok(mut free) = self.free.lock()
            && free.len() < self.keep
        {
            free.push(buf);
        }
    }
}

/// A buffer on loan from a [`BufferPool`].
pub(crate) struct PooledBuf {
    /// The whole allocation, initialized throughout (`None` only while being dropped).
    buf: Option<Backing>,
    /// The bytes this loan covers: `buf[start..start + len]`, `start` aligned to [`ALIGN`].
    start: usize,
    len: usize,
    pool: Arc<BufferPool>,
}

impl PooledBuf {
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        let (start, len) = (self.start, self.len);
        match self.buf.as_mut() {
            Some(buf) => &mut buf.bytes_mut()[start..start + len],
            None => &mut [],
        }
    }

    /// Hands the buffer to QUIC; it comes back to the pool when the last `Bytes` is dropped.
    pub(crate) fn into_bytes(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        match &self.buf {
            Some(buf) => &buf.bytes()[self.start..self.start + self.len],
            None => &[],
        }
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.pool.give_back(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_when_the_bytes_are_dropped() {
        let pool = BufferPool::new(4);
        let mut buf = pool.take(1000);
        buf.as_mut_slice()[0] = 7;
        let ptr = buf.as_ref().as_ptr();
        let bytes = buf.into_bytes();
        assert_eq!(bytes.len(), 1000);
        assert_eq!(bytes[0], 7);
        let clone = bytes.clone();
        drop(bytes);
        assert!(
            pool.free.lock().unwrap().is_empty(),
            "still referenced by the clone"
        );
        drop(clone);
        let again = pool.take(500);
        assert_eq!(
            again.as_ref().as_ptr(),
            ptr,
            "the same allocation is reused"
        );
        assert_eq!(again.as_ref().len(), 500);
    }

    #[test]
    fn recycled_buffers_are_not_zeroed_again_and_are_replaced_when_short() {
        let pool = BufferPool::new(4);
        let mut buf = pool.take(100);
        assert_eq!(buf.as_ref(), &[0; 100][..], "a new buffer starts zeroed");
        buf.as_mut_slice().fill(9);
        drop(buf);
        // A shorter loan of the same allocation sees the old bytes: nothing was zeroed.
        let mut small = pool.take(10);
        assert_eq!(small.as_ref(), &[9; 10][..]);
        assert_eq!(small.as_mut_slice().len(), 10);
        drop(small);
        // A loan longer than the allocation gets a new, zeroed one.
        let big = pool.take(ALIGN + 150);
        assert_eq!(big.as_ref().len(), ALIGN + 150);
        assert!(big.as_ref().iter().all(|&b| b == 0));
        assert_eq!(big.into_bytes().len(), ALIGN + 150);
    }

    #[test]
    fn every_loan_starts_aligned() {
        let pool = BufferPool::new(4);
        for len in [1, 4095, 4096, 1 << 20, (4 << 20) + 7] {
            let buf = pool.take(len);
            assert_eq!(buf.as_ref().as_ptr().align_offset(ALIGN), 0, "len {len}");
            assert_eq!(buf.into_bytes().as_ptr().align_offset(ALIGN), 0);
        }
    }
}
