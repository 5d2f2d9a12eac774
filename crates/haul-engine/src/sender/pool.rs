//! Recycled chunk buffers for the sender.
//!
//! A fresh 4 MiB buffer per chunk costs a thousand page faults and the kernel zeroing every
//! page before the read overwrites it; at network speed that was a third of the sender's CPU.
//! Buffers are instead handed to QUIC as [`Bytes`] that return to the pool when QUIC is done
//! with them (after the peer acknowledged the data).
//!
//! Each loan starts at a 4 KiB-aligned address, so when `copy` hands a buffer straight to the
//! embedded receiver, its direct (`O_DIRECT`) write can take it without a bounce copy.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Alignment of every loan's first byte (what direct I/O asks of a buffer).
const ALIGN: usize = 4096;

/// Free buffers, reused by the read workers.
pub(crate) struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
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
        let fits = |b: &Vec<u8>| b.len() >= b.as_ptr().align_offset(ALIGN) + len;
        let buf = match recycled {
            Some(b) if fits(&b) => b,
            // Over-allocated by ALIGN, so an aligned window of `len` bytes always fits.
            _ => vec![0; len + ALIGN],
        };
        let start = buf.as_ptr().align_offset(ALIGN);
        PooledBuf {
            buf,
            start,
            len,
            pool: self.clone(),
        }
    }

    fn give_back(&self, buf: Vec<u8>) {
        if let Ok(mut free) = self.free.lock()
            && free.len() < self.keep
        {
            free.push(buf);
        }
    }
}

/// A buffer on loan from a [`BufferPool`].
pub(crate) struct PooledBuf {
    /// The whole allocation, initialized throughout.
    buf: Vec<u8>,
    /// The bytes this loan covers: `buf[start..start + len]`, `start` aligned to [`ALIGN`].
    start: usize,
    len: usize,
    pool: Arc<BufferPool>,
}

impl PooledBuf {
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }

    /// Hands the buffer to QUIC; it comes back to the pool when the last `Bytes` is dropped.
    pub(crate) fn into_bytes(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
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
