//! Recycled chunk buffers for the sender.
//!
//! A fresh 4 MiB buffer per chunk costs a thousand page faults and the kernel zeroing every
//! page before the read overwrites it; at network speed that was a third of the sender's CPU.
//! Buffers are instead handed to QUIC as [`Bytes`] that return to the pool when QUIC is done
//! with them (after the peer acknowledged the data).

use std::sync::{Arc, Mutex};

use bytes::Bytes;

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
    /// A recycled buffer keeps every byte it ever held initialized, so only a new buffer, or
    /// the part past a shorter one's end, is zeroed; re-zeroing 4 MiB per chunk only to read
    /// over it was a measurable share of the sender's CPU.
    pub(crate) fn take(self: &Arc<Self>, len: usize) -> PooledBuf {
        let mut buf = self
            .free
            .lock()
            .ok()
            .and_then(|mut f| f.pop())
            .unwrap_or_default();
        if buf.len() < len {
            buf.resize(len, 0);
        }
        PooledBuf {
            buf,
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
    /// The whole allocation, initialized up to its `len()`, which may exceed the loan's.
    buf: Vec<u8>,
    /// The bytes this loan covers: `buf[..len]`.
    len: usize,
    pool: Arc<BufferPool>,
}

impl PooledBuf {
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf[..self.len]
    }

    /// Hands the buffer to QUIC; it comes back to the pool when the last `Bytes` is dropped.
    pub(crate) fn into_bytes(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
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
    fn recycled_buffers_are_not_zeroed_again_and_grow_when_short() {
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
        // The allocation kept all 100 initialized bytes; a longer loan zero-extends past them.
        let big = pool.take(150);
        assert_eq!(big.as_ref().len(), 150);
        assert_eq!(big.as_ref()[..100], [9; 100][..]);
        assert_eq!(big.as_ref()[100..], [0; 50][..]);
        assert_eq!(big.into_bytes().len(), 150);
    }
}
