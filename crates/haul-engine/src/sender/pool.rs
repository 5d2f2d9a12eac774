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

use std::sync::{Arc, Condvar, Mutex};

use bytes::Bytes;

use crate::lock;

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
    /// Most buffers on loan at once (`None`: no limit), and how many are.
    limit: Option<usize>,
    loaned: Mutex<Loans>,
    returned: Condvar,
}

#[derive(Default)]
struct Loans {
    out: usize,
    /// Set when the session ends: nobody waits for a buffer any more.
    closed: bool,
}

impl BufferPool {
    pub(crate) fn new(keep: usize) -> Arc<Self> {
        Self::build(keep, None)
    }

    /// A pool that lends at most `most` buffers at once: `take` waits until one comes back
    /// (QUIC gives a buffer back once the peer acknowledged its data). The sender's memory
    /// is then set by this bound rather than by how far QUIC happened to run ahead: every
    /// buffer lent once stays in the pool, so a burst at any moment of a long push was its
    /// peak for the rest of it.
    pub(crate) fn limited(most: usize) -> Arc<Self> {
        Self::build(most, Some(most.max(1)))
    }

    fn build(keep: usize, limit: Option<usize>) -> Arc<Self> {
        Arc::new(BufferPool {
            free: Mutex::new(Vec::new()),
            keep,
            limit,
            loaned: Mutex::default(),
            returned: Condvar::new(),
        })
    }

    /// Stops waiting for buffers to come back (the session is over; QUIC may hold its
    /// buffers until the connection goes): `take` lends beyond the limit from now on.
    pub(crate) fn close(&self) {
        if self.limit.is_some() {
            lock(&self.loaned).closed = true;
            self.returned.notify_all();
        }
    }

    /// Waits for room under the limit and counts one more loan.
    fn reserve(&self) {
        let Some(limit) = self.limit else { return };
        let mut loans = lock(&self.loaned);
        // Every loan is given back when its buffer drops, and `close` wakes every waiter.
        while loans.out >= limit && !loans.closed {
            loans = self
                .returned
                .wait(loans)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        loans.out += 1;
    }

    fn release(&self) {
        if self.limit.is_some() {
            let mut loans = lock(&self.loaned);
            loans.out = loans.out.saturating_sub(1);
            drop(loans);
            self.returned.notify_one();
        }
    }

    /// A buffer of exactly `len` bytes (contents unspecified: the caller overwrites them).
    ///
    /// A recycled buffer is handed out as it is, so only a new buffer is zeroed; re-zeroing
    /// 4 MiB per chunk only to read over it was a measurable share of the sender's CPU. A
    /// recycled buffer too small for the loan is replaced by a new one.
    pub(crate) fn take(self: &Arc<Self>, len: usize) -> PooledBuf {
        self.reserve();
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
        self.release();
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
    use std::time::Duration;

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
    fn a_limited_pool_waits_for_a_loan_to_come_back() {
        let pool = BufferPool::limited(2);
        let a = pool.take(100).into_bytes();
        let b = pool.take(100);
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let pool = pool.clone();
            std::thread::spawn(move || {
                let c = pool.take(100);
                tx.send(()).unwrap();
                c
            })
        };
        // Two on loan: the third waits.
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        drop(a); // what QUIC does once the peer acknowledged it
        rx.recv_timeout(Duration::from_secs(5))
            .expect("a returned buffer wakes the waiter");
        let c = waiter.join().unwrap();
        drop((b, c));
        // A closed pool lends beyond its limit instead of waiting.
        let held: Vec<_> = (0..2).map(|_| pool.take(10)).collect();
        pool.close();
        let extra = pool.take(10);
        assert_eq!(extra.as_ref().len(), 10);
        drop((held, extra));
        assert_eq!(lock(&pool.loaned).out, 0);
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
