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
}

impl FrameDecoder {
    /// A decoder enforcing `limits.max_frame`.
    pub fn new(limits: Limits) -> Self {
        FrameDecoder {
            buf: BytesMut::new(),
            limits,
        }
    }

    /// Replaces the limits, e.g. once the chunk size is negotiated.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
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
        }))
    }

    /// Called when the stream ends: an error if a partial frame is left over.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated {
                buffered: self.buf.len(),
            })
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
                        body: Bytes::from_static(b"abc")
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
}
