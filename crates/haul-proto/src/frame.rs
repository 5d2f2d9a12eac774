//! Length-prefixed frames.
//!
//! A frame is `[u32 length, big endian][u8 type][body]`, where `length` counts the type byte and
//! the body. The decoder never allocates more than the limit allows: the length is checked before
//! any byte of the body is buffered for it.

use bytes::{Buf, Bytes, BytesMut};

use crate::Limits;

/// Size of the frame header: the length and the type byte.
pub const HEADER_LEN: usize = 5;

/// One whole frame: its type byte and its body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The message type.
    pub kind: u8,
    /// The body, without the header.
    pub body: Bytes,
    /// The rest of the body, when it arrived as one large buffer that was kept by reference
    /// instead of copied after `body` (see [`FrameDecoder::push_bytes`]). Usually empty; the
    /// whole body is always `body` followed by `tail`.
    pub tail: Bytes,
}

/// A frame that cannot be accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The declared length is larger than the negotiated maximum.
    #[error("frame of {declared} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// What the peer declared.
        declared: u32,
        /// What we accept.
        limit: u32,
    },
    /// A frame with length zero has no type byte.
    #[error("empty frame (length 0)")]
    Empty,
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({buffered} bytes of a frame buffered)")]
    Truncated {
        /// Bytes left over.
        buffered: usize,
    },
}

/// Accumulates bytes from a stream and yields whole frames.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    limits: Limits,
    /// The end of the frame in `buf`, kept by reference.
    tail: Option<Bytes>,
    /// Bytes that arrived after `tail`, for the frames that follow it.
    after: BytesMut,
}

/// A frame's missing part is kept by reference rather than copied from this size on; below
/// it, copying costs less than keeping a buffer alive.
const ZERO_COPY_MIN: usize = 16 << 10;

/// Frames from this size on are assembled in a buffer of their own whose *end* falls on a
/// [`FRAME_END_ALIGN`] boundary. A chunk's data is the last field of its frame, so a chunk of
/// whole 4 KiB blocks then starts on a block boundary too, and the receiver can write it with
/// direct I/O straight from the frame instead of through a bounce copy.
const ALIGN_FRAMES_FROM: usize = 64 << 10;

/// See [`ALIGN_FRAMES_FROM`]: the block size direct I/O asks buffers to be aligned to.
pub const FRAME_END_ALIGN: usize = 4096;

/// Room past a large frame's end in its buffer, for the start of the next frame that arrives in
/// the same read (a reader asks for what the frame lacks, at least 64 KiB): without it, the last
/// read would reallocate, and copy, the whole frame.
const AFTER_FRAME_ROOM: usize = 64 << 10;

impl FrameDecoder {
    /// A decoder enforcing `limits.max_frame`.
    pub fn new(limits: Limits) -> Self {
        FrameDecoder {
            buf: BytesMut::new(),
            limits,
            tail: None,
            after: BytesMut::new(),
        }
    }

    /// Replaces the limits, e.g. once the chunk size is negotiated.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.tail.is_some() {
            self.after.extend_from_slice(bytes);
        } else {
            self.prepare_large_frame();
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Once a large frame's length is known, moves what is buffered of it into a buffer sized
    /// for the whole frame and placed so that the frame ends on a [`FRAME_END_ALIGN`] boundary
    /// (see [`ALIGN_FRAMES_FROM`]). Growing the buffer piece by piece instead would also copy
    /// the frame several times over as it doubled.
    fn prepare_large_frame(&mut self) {
        if self.buf.len() < 4 {
            return;
        }
        let declared = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        let total = 4 + declared as usize;
        // Within the limit only: a hostile length must not make us allocate.
        if declared > self.limits.max_frame
            || total < ALIGN_FRAMES_FROM
            || self.buf.len() >= total
            || self.buf.capacity() >= total + AFTER_FRAME_ROOM
        {
            return;
        }
        let mut fresh = BytesMut::with_capacity(total + FRAME_END_ALIGN + AFTER_FRAME_ROOM);
        let end = fresh.as_ptr() as usize + total;
        let pad = (FRAME_END_ALIGN - end % FRAME_END_ALIGN) % FRAME_END_ALIGN;
        fresh.resize(pad, 0);
        fresh.advance(pad);
        fresh.extend_from_slice(&self.buf);
        self.buf = fresh;
    }

    /// Appends a buffer read from the stream, like [`push`](Self::push), except that when it
    /// holds all that the frame being assembled lacks, and that is large (a chunk's data after
    /// its fields), that part is kept by reference and returned as the frame's
    /// [`tail`](Frame::tail) instead of being copied.
    pub fn push_bytes(&mut self, bytes: Bytes) {
        if self.tail.is_none() && self.buf.len() >= HEADER_LEN {
            let wanted = self.wanted();
            if wanted >= ZERO_COPY_MIN && bytes.len() >= wanted {
                self.tail = Some(bytes.slice(..wanted));
                self.after.extend_from_slice(&bytes[wanted..]);
                return;
            }
        }
        self.push(&bytes);
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() + self.tail.as_ref().map_or(0, Bytes::len) + self.after.len()
    }

    /// How many more bytes are needed before [`next_frame`](Self::next_frame) can return a frame.
    /// Lets a reader size its next read so a large chunk arrives in one buffer.
    pub fn wanted(&self) -> usize {
        if self.buf.len() < HEADER_LEN {
            return HEADER_LEN - self.buf.len();
        }
        let declared = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        (declared as usize + 4).saturating_sub(self.buf.len())
    }

    /// Reserves room for `additional` bytes so that reads can land in place.
    pub fn reserve(&mut self, additional: usize) {
        self.buf.reserve(additional);
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed, or an error if the peer broke
    /// the limits (the connection should then be closed).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let declared = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        if declared == 0 {
            return Err(FrameError::Empty);
        }
        if declared > self.limits.max_frame {
            return Err(FrameError::TooLarge {
                declared,
                limit: self.limits.max_frame,
            });
        }
        if let Some(tail) = self.tail.take() {
            // `buf` holds exactly the frame's head (push_bytes measured the tail to fit).
            let mut frame = self.buf.split();
            frame.advance(4);
            let kind = frame.get_u8();
            self.buf.extend_from_slice(&self.after);
            self.after.clear();
            return Ok(Some(Frame {
                kind,
                body: frame.freeze(),
                tail,
            }));
        }
        let total = 4 + declared as usize;
        if self.buf.len() < total {
            return Ok(None);
        }
        let mut frame = self.buf.split_to(total);
        frame.advance(4);
        let kind = frame.get_u8();
        Ok(Some(Frame {
            kind,
            body: frame.freeze(),
            tail: Bytes::new(),
        }))
    }

    /// Called when the stream ends: an error if a partial frame is left over.
    pub fn finish(&self) -> Result<(), FrameError> {
        match self.buffered() {
            0 => Ok(()),
            buffered => Err(FrameError::Truncated { buffered }),
        }
    }
}

/// Writes a frame header for a body of `body_len` bytes.
pub fn header(kind: u8, body_len: usize) -> [u8; HEADER_LEN] {
    let len = (body_len as u32).saturating_add(1).to_be_bytes();
    [len[0], len[1], len[2], len[3], kind]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_at_a_time() {
        let mut wire = header(9, 3).to_vec();
        wire.extend_from_slice(b"abc");
        let mut dec = FrameDecoder::new(Limits::default());
        for (i, b) in wire.iter().enumerate() {
            dec.push(&[*b]);
            let got = dec.next_frame().unwrap();
            if i + 1 < wire.len() {
                assert!(got.is_none());
            } else {
                assert_eq!(
                    got,
                    Some(Frame {
                        kind: 9,
                        body: Bytes::from_static(b"abc"),
                        tail: Bytes::new(),
                    })
                );
            }
        }
        dec.finish().unwrap();
    }

    #[test]
    fn oversized_is_refused_before_buffering() {
        let mut dec = FrameDecoder::new(Limits::for_chunk_size(64 << 10));
        dec.push(&u32::MAX.to_be_bytes());
        assert!(matches!(dec.next_frame(), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn truncated_stream_is_an_error() {
        let mut dec = FrameDecoder::new(Limits::default());
        dec.push(&header(1, 10));
        assert_eq!(dec.next_frame(), Ok(None));
        assert!(dec.finish().is_err());
    }

    #[test]
    fn a_large_missing_part_is_kept_by_reference() {
        let body_len = 3 + (64 << 10);
        let mut head = header(9, body_len).to_vec();
        head.extend_from_slice(b"abc");
        let mut rest = vec![7u8; 64 << 10];
        rest.extend_from_slice(&header(2, 1));
        rest.push(b'z');
        let rest = Bytes::from(rest);
        let mut dec = FrameDecoder::new(Limits::default());
        dec.push_bytes(Bytes::from(head));
        dec.push_bytes(rest.clone());
        let frame = dec.next_frame().unwrap().unwrap();
        assert_eq!(frame.kind, 9);
        assert_eq!(&frame.body[..], b"abc");
        assert_eq!(frame.tail.len(), 64 << 10);
        assert_eq!(frame.tail.as_ptr(), rest.as_ptr(), "kept, not copied");
        // What followed the tail is the next frame.
        let next = dec.next_frame().unwrap().unwrap();
        assert_eq!((next.kind, &next.body[..]), (2, &b"z"[..]));
        dec.finish().unwrap();
    }

    #[test]
    fn a_tail_still_honours_the_frame_limit() {
        let mut dec = FrameDecoder::new(Limits::for_chunk_size(64 << 10));
        dec.push_bytes(Bytes::from(header(9, 100 << 20).to_vec()));
        dec.push_bytes(Bytes::from(vec![0u8; 100 << 20]));
        assert!(matches!(dec.next_frame(), Err(FrameError::TooLarge { .. })));
    }

    /// A large frame fed in small pieces comes out whole, ending on a block boundary, with
    /// the next frame (whose start came in the same piece) intact behind it.
    #[test]
    fn a_large_frame_in_pieces_ends_on_a_block_boundary() {
        let body_len = 100 + (256 << 10);
        let mut wire = header(9, body_len).to_vec();
        wire.extend((0..body_len).map(|i| (i % 251) as u8));
        wire.extend_from_slice(&header(2, 1));
        wire.push(b'z');
        let mut dec = FrameDecoder::new(Limits::default());
        let mut frames = Vec::new();
        for piece in wire.chunks(1200) {
            dec.push(piece);
            while let Some(f) = dec.next_frame().unwrap() {
                frames.push(f);
            }
        }
        dec.finish().unwrap();
        assert_eq!(frames.len(), 2);
        let big = &frames[0];
        assert_eq!(big.kind, 9);
        assert_eq!(big.body.len(), body_len);
        assert!(big.tail.is_empty());
        assert_eq!(&big.body[..], &wire[HEADER_LEN..HEADER_LEN + body_len]);
        let end = big.body.as_ptr() as usize + big.body.len();
        assert_eq!(end % FRAME_END_ALIGN, 0, "the frame ends aligned");
        assert_eq!((frames[1].kind, &frames[1].body[..]), (2, &b"z"[..]));
    }

    /// A hostile length over the limit is refused, and nothing of that size is allocated.
    #[test]
    fn an_oversized_frame_in_pieces_allocates_nothing_large() {
        let mut dec = FrameDecoder::new(Limits::for_chunk_size(64 << 10));
        dec.push(&header(9, 1 << 30));
        dec.push(&[0u8; 100]);
        assert!(dec.buf.capacity() < 1 << 20);
        assert!(matches!(dec.next_frame(), Err(FrameError::TooLarge { .. })));
    }
}
