//! The transport the sender and receiver run over.
//!
//! The pipelines only need four things from a connection: a control stream, unidirectional data
//! streams, and a way to close. [`Link`] names exactly that, so the same sender and receiver run
//! over real QUIC ([`QuicLink`]) and over the in-memory simulated link of `haul-testing`, where
//! delays, reordering and kills are chosen by a seed.

use std::future::Future;
use std::io;
use std::pin::Pin;

use bytes::Bytes;

/// A boxed, sendable future: the transport traits must be object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The sending half of a stream.
pub trait SendHalf: Send {
    /// Writes every buffer, in order, without copying them first.
    fn write_parts<'a>(&'a mut self, parts: &'a mut [Bytes]) -> BoxFuture<'a, io::Result<()>>;
    /// Ends the stream cleanly once everything written is delivered.
    fn finish(&mut self) -> io::Result<()>;
}

/// The receiving half of a stream.
pub trait RecvHalf: Send {
    /// Up to `max` bytes, or `None` at the clean end of the stream.
    fn read_some(&mut self, max: usize) -> BoxFuture<'_, io::Result<Option<Bytes>>>;
}

/// A boxed sending half.
pub type BoxSend = Box<dyn SendHalf>;
/// A boxed receiving half.
pub type BoxRecv = Box<dyn RecvHalf>;

/// One connection between a sender (the client) and a receiver (the server).
pub trait Link: Send + Sync {
    /// Client: opens the control stream.
    fn open_control(&self) -> BoxFuture<'_, io::Result<(BoxSend, BoxRecv)>>;
    /// Server: accepts the control stream.
    fn accept_control(&self) -> BoxFuture<'_, io::Result<(BoxSend, BoxRecv)>>;
    /// Client: opens a data stream.
    fn open_data(&self) -> BoxFuture<'_, io::Result<BoxSend>>;
    /// Server: accepts the next data stream, `None` once the connection is closed.
    fn accept_data(&self) -> BoxFuture<'_, io::Result<Option<BoxRecv>>>;
    /// Closes the connection with an application code and a reason for the peer.
    fn close(&self, code: u32, reason: &str);

    /// Resolves once the connection is closed (by either end). An in-process link has no
    /// connection to wait for and resolves at once.
    fn closed(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// True when both ends run in this process and a chunk arrives as the very buffer the
    /// sender hashed (`haul copy`'s in-process link). The receiver then takes the sender's
    /// hash instead of hashing the same memory a second time: nothing crossed a wire, so
    /// there is nothing a second hash could catch, and it cost a third of a local copy's CPU.
    fn shares_buffers(&self) -> bool {
        false
    }

    /// What identifies this connection's TLS session on both ends (its exporter value); the
    /// token proof is bound to it ([`haul_net::present`]). `None` for links with no TLS
    /// session, where the token itself is presented.
    fn channel_binding(&self) -> Option<[u8; haul_net::BINDING_LEN]> {
        None
    }
}

/// A [`Link`] over a quinn connection.
#[derive(Clone, Debug)]
pub struct QuicLink {
    conn: quinn::Connection,
}

impl QuicLink {
    /// Wraps an established connection.
    pub fn new(conn: quinn::Connection) -> Self {
        QuicLink { conn }
    }

    /// The underlying connection (for stats).
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }
}

fn conn_err(e: quinn::ConnectionError) -> io::Error {
    let kind = match e {
        quinn::ConnectionError::TimedOut => io::ErrorKind::TimedOut,
        quinn::ConnectionError::LocallyClosed => io::ErrorKind::NotConnected,
        _ => io::ErrorKind::ConnectionAborted,
    };
    io::Error::new(kind, describe_close(&e))
}

/// Turns a quinn close reason into a sentence an operator can act on.
fn describe_close(e: &quinn::ConnectionError) -> String {
    match e {
        quinn::ConnectionError::ApplicationClosed(close) => {
            let reason = String::from_utf8_lossy(&close.reason);
            if reason.is_empty() {
                "the peer closed the connection".to_string()
            } else {
                format!("the peer closed the connection: {reason}")
            }
        }
        quinn::ConnectionError::TimedOut => {
            "the connection timed out: the peer stopped answering (killed, or the network is down)"
                .to_string()
        }
        quinn::ConnectionError::Reset => "the peer reset the connection (it was restarted?)".into(),
        other => format!("connection lost: {other}"),
    }
}

struct QuicSend(quinn::SendStream);
struct QuicRecv(quinn::RecvStream);

impl SendHalf for QuicSend {
    fn write_parts<'a>(&'a mut self, parts: &'a mut [Bytes]) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            self.0
                .write_all_chunks(parts)
                .await
                .map_err(io::Error::from)
        })
    }
    fn finish(&mut self) -> io::Result<()> {
        self.0
            .finish()
            .map_err(|e| io::Error::new(io::ErrorKind::NotConnected, e))
    }
}

impl RecvHalf for QuicRecv {
    fn read_some(&mut self, max: usize) -> BoxFuture<'_, io::Result<Option<Bytes>>> {
        Box::pin(async move {
            match self.0.read_chunk(max, true).await {
                Ok(chunk) => Ok(chunk.map(|c| c.bytes)),
                Err(e) => Err(io::Error::from(e)),
            }
        })
    }
}

/// The control stream goes out before any data: data streams are sent one after the other
/// rather than interleaved (see `haul_net::transport_config`), and a control message must not
/// wait behind megabytes of chunks the receiver has not asked about yet.
fn control_first(send: &quinn::SendStream) {
    let _ = send.set_priority(1);
}

impl Link for QuicLink {
    fn open_control(&self) -> BoxFuture<'_, io::Result<(BoxSend, BoxRecv)>> {
        Box::pin(async move {
            let (send, recv) = self.conn.open_bi().await.map_err(conn_err)?;
            control_first(&send);
            Ok((
                Box::new(QuicSend(send)) as BoxSend,
                Box::new(QuicRecv(recv)) as BoxRecv,
            ))
        })
    }
    fn accept_control(&self) -> BoxFuture<'_, io::Result<(BoxSend, BoxRecv)>> {
        Box::pin(async move {
            let (send, recv) = self.conn.accept_bi().await.map_err(conn_err)?;
            control_first(&send);
            Ok((
                Box::new(QuicSend(send)) as BoxSend,
                Box::new(QuicRecv(recv)) as BoxRecv,
            ))
        })
    }
    fn open_data(&self) -> BoxFuture<'_, io::Result<BoxSend>> {
        Box::pin(async move {
            let send = self.conn.open_uni().await.map_err(conn_err)?;
            Ok(Box::new(QuicSend(send)) as BoxSend)
        })
    }
    fn accept_data(&self) -> BoxFuture<'_, io::Result<Option<BoxRecv>>> {
        Box::pin(async move {
            match self.conn.accept_uni().await {
                Ok(recv) => Ok(Some(Box::new(QuicRecv(recv)) as BoxRecv)),
                Err(
                    quinn::ConnectionError::ApplicationClosed(_)
                    | quinn::ConnectionError::LocallyClosed,
                ) => Ok(None),
                Err(e) => Err(conn_err(e)),
            }
        })
    }
    fn close(&self, code: u32, reason: &str) {
        self.conn
            .close(quinn::VarInt::from_u32(code), reason.as_bytes());
    }
    fn closed(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.conn.closed().await;
        })
    }
    fn channel_binding(&self) -> Option<[u8; haul_net::BINDING_LEN]> {
        haul_net::channel_binding(&self.conn)
    }
}
