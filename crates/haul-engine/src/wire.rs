//! Framed reading and writing of messages over a [`Link`](crate::transport::Link) stream.

use std::io;

use bytes::{Bytes, BytesMut};
use haul_proto::{DecodeError, FrameDecoder, FrameError, Limits, Message};

use crate::transport::{BoxRecv, BoxSend};

/// Why a stream stopped yielding messages.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("malformed frame from the peer: {0}")]
    Frame(#[from] FrameError),
    #[error("malformed message from the peer: {0}")]
    Decode(#[from] DecodeError),
}

/// Reads whole messages from a stream.
pub(crate) struct FramedRecv {
    recv: BoxRecv,
    decoder: FrameDecoder,
    limits: Limits,
}

impl FramedRecv {
    pub(crate) fn new(recv: BoxRecv, limits: Limits) -> Self {
        FramedRecv {
            recv,
            decoder: FrameDecoder::new(limits.clone()),
            limits,
        }
    }

    pub(crate) fn set_limits(&mut self, limits: Limits) {
        self.decoder.set_limits(limits.clone());
        self.limits = limits;
    }

    /// A message already buffered, without reading from the stream.
    pub(crate) fn try_next(&mut self) -> Result<Option<Message>, WireError> {
        match self.decoder.next_frame()? {
            Some(frame) => Ok(Some(Message::decode(frame, &self.limits)?)),
            None => Ok(None),
        }
    }

    /// A message if one is buffered or the stream has bytes ready right now, without waiting:
    /// `Ok(None)` if it would have to wait or the stream has ended (the next [`Self::next`]
    /// then says which). Lets a reader gather everything that has arrived into one batch.
    pub(crate) fn next_ready(&mut self) -> Result<Option<Message>, WireError> {
        if let Some(msg) = self.try_next()? {
            return Ok(Some(msg));
        }
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        // `next` is cancel safe, so dropping it unfinished loses nothing.
        let next = std::pin::pin!(self.next());
        match next.poll(&mut cx) {
            std::task::Poll::Ready(Ok(msg)) => Ok(msg),
            std::task::Poll::Ready(Err(e)) => Err(e),
            std::task::Poll::Pending => Ok(None),
        }
    }

    /// The next message, or `None` at a clean end of the stream. Cancel safe: bytes read are
    /// kept in the decoder.
    pub(crate) async fn next(&mut self) -> Result<Option<Message>, WireError> {
        loop {
            if let Some(msg) = self.try_next()? {
                return Ok(Some(msg));
            }
            // Ask for what the current frame still lacks, so a 4 MiB chunk arrives in few reads.
            let want = self.decoder.wanted().clamp(64 << 10, 16 << 20);
            match self.recv.read_some(want).await? {
                Some(bytes) => self.decoder.push_bytes(bytes),
                None => {
                    self.decoder.finish()?;
                    return Ok(None);
                }
            }
        }
    }
}

/// Writes messages to a stream, coalescing small ones.
pub(crate) struct FramedSend {
    send: BoxSend,
    pending: BytesMut,
}

impl FramedSend {
    pub(crate) fn new(send: BoxSend) -> Self {
        FramedSend {
            send,
            pending: BytesMut::new(),
        }
    }

    /// Appends a message to the outgoing buffer (call [`flush`](Self::flush) to send).
    pub(crate) fn queue(&mut self, msg: &Message) {
        msg.encode_into(&mut self.pending);
    }

    /// Bytes queued and not yet flushed.
    pub(crate) fn queued(&self) -> usize {
        self.pending.len()
    }

    pub(crate) async fn flush(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut parts = [self.pending.split().freeze()];
        self.send.write_parts(&mut parts).await
    }

    /// Sends one message now (after anything queued).
    pub(crate) async fn send(&mut self, msg: &Message) -> io::Result<()> {
        self.queue(msg);
        self.flush().await
    }

    /// Sends a frame given as header and payload without copying the payload.
    pub(crate) async fn send_parts(&mut self, head: Bytes, payload: Bytes) -> io::Result<()> {
        self.flush().await?;
        let mut parts = [head, payload];
        self.send.write_parts(&mut parts).await
    }

    pub(crate) fn finish(&mut self) -> io::Result<()> {
        self.send.finish()
    }
}
