//! How a file is cut into chunks.

/// The chunk geometry of one file: fixed-size chunks, the last one possibly short.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkLayout {
    size: u64,
    chunk_size: u32,
}

impl ChunkLayout {
    /// The layout of a file of `size` bytes cut into `chunk_size` chunks. `chunk_size` must be a
    /// power of two (the session checks this at the hello).
    pub fn new(size: u64, chunk_size: u32) -> Self {
        debug_assert!(chunk_size.is_power_of_two());
        ChunkLayout { size, chunk_size }
    }

    /// The file size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The chunk size.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// How many chunks the file has. An empty file has none.
    pub fn count(&self) -> u64 {
        self.size.div_ceil(u64::from(self.chunk_size))
    }

    /// Byte offset of chunk `index`.
    pub fn offset(&self, index: u64) -> u64 {
        index.saturating_mul(u64::from(self.chunk_size))
    }

    /// Length of chunk `index`, or `None` if the file has no such chunk.
    pub fn len(&self, index: u64) -> Option<u32> {
        if index >= self.count() {
            return None;
        }
        let rest = self.size - self.offset(index);
        Some(rest.min(u64::from(self.chunk_size)) as u32)
    }

    /// True when the file has no chunks at all.
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries() {
        let cs = 4 << 20;
        assert_eq!(ChunkLayout::new(0, cs).count(), 0);
        assert_eq!(ChunkLayout::new(1, cs).count(), 1);
        let exact = ChunkLayout::new(4 << 20, cs);
        assert_eq!(exact.count(), 1);
        assert_eq!(exact.len(0), Some(4 << 20));
        assert_eq!(exact.len(1), None);
        let plus_one = ChunkLayout::new((4 << 20) + 1, cs);
        assert_eq!(plus_one.count(), 2);
        assert_eq!(plus_one.len(1), Some(1));
        assert_eq!(plus_one.offset(1), 4 << 20);
    }
}
