//! An in-process [`Link`] for `haul copy`.
//!
//! A local copy runs the sender and the embedded receiver in one process. Over loopback QUIC
//! every byte was encrypted, copied into packets, through the kernel twice, decrypted and
//! reassembled: on two cores that cost more than reading, hashing and writing together. This
//! link hands the sender's buffers to the receiver by reference instead, so the only copies
//! left are the source read and the target write. The protocol, the session checks and the
//! receiver's verification are exactly those of a network transfer.
//!
//! Streams are bounded channels of buffers (a few chunks each), so a slow disk holds the
//! sender back as QUIC flow control would. [`Link::close`] fails every stream at once, as a
//! closed connection does.

use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use crate::transport::{BoxFuture, BoxRecv, BoxSend, Link, RecvHalf, SendHalf};

/// Buffers a stream holds before its writer waits: a chunk is two buffers (its fields and its
/// data), so this is four chunks, 16 MiB at the default chunk size.
const STREAM_BUFFERS: usize = 8;

enum Piece {
    Data(Bytes),
    /// The writer finished the stream; without it a closed channel means it went away.
    Fin,
}

/// What both ends share: the streams on their way to the server, and whether the connection
/// was closed (and why).
struct Shared {
    control: Mutex<Option<mpsc::Sender<(BoxSend, BoxRecv)>>>,
    control_rx: tokio::sync::Mutex<mpsc::Receiver<(BoxSend, BoxRecv)>>,
    data: Mutex<Option<mpsc::Sender<BoxRecv>>>,
    data_rx: tokio::sync::Mutex<mpsc::Receiver<BoxRecv>>,
    closed: watch::Sender<Option<String>>,
}

/// One end of an in-process connection; [`pair`] makes both.
pub struct LocalLink {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LocalLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLink").finish_non_exhaustive()
    }
}

/// The client (sender) and server (receiver) ends of one in-process connection.
pub fn pair() -> (LocalLink, LocalLink) {
    let (control_tx, control_rx) = mpsc::channel(4);
    let (data_tx, data_rx) = mpsc::channel(256);
    let (closed, _) = watch::channel(None);
    let shared = Arc::new(Shared {
        control: Mutex::new(Some(control_tx)),
        control_rx: tokio::sync::Mutex::new(control_rx),
        data: Mutex::new(Some(data_tx)),
        data_rx: tokio::sync::Mutex::new(data_rx),
        closed,
    });
    (
        LocalLink {
            shared: shared.clone(),
        },
        LocalLink { shared },
    )
}

fn closed_error(reason: &str) -> io::Error {
    let message = if reason.is_empty() {
        "the peer closed the connection".to_owned()
    } else {
        format!("the peer closed the connection: {reason}")
    };
    io::Error::new(io::ErrorKind::ConnectionAborted, message)
}

impl Shared {
    /// `Err` once the connection is closed.
    fn check_open(&self) -> io::Result<()> {
        match &*self.closed.borrow() {
            Some(reason) => Err(closed_error(reason)),
            None => Ok(()),
        }
    }

    fn stream(self: &Arc<Self>) -> (LocalSend, LocalRecv) {
        let (tx, rx) = mpsc::channel(STREAM_BUFFERS);
        (
            LocalSend {
                tx: Some(tx),
                closed: self.closed.subscribe(),
            },
            LocalRecv {
                rx,
                left: Bytes::new(),
                ended: false,
                closed: self.closed.subscribe(),
            },
        )
    }
}

/// Waits until the connection is closed and returns the error a stream then reports.
async fn wait_closed(closed: &mut watch::Receiver<Option<String>>) -> io::Error {
    loop {
        if let Some(reason) = &*closed.borrow_and_update() {
            return closed_error(reason);
        }
        if closed.changed().await.is_err() {
            return closed_error("");
        }
    }
}

struct LocalSend {
    tx: Option<mpsc::Sender<Piece>>,
    closed: watch::Receiver<Option<String>>,
}

impl SendHalf for LocalSend {
    fn write_parts<'a>(&'a mut self, parts: &'a mut [Bytes]) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            let Some(tx) = &self.tx else {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "write after the stream was finished",
                ));
            };
            for part in parts.iter_mut() {
                if part.is_empty() {
                    continue;
                }
                let piece = Piece::Data(std::mem::take(part));
                tokio::select! {
                    sent = tx.send(piece) => sent.map_err(|_| {
                        io::Error::new(io::ErrorKind::BrokenPipe, "the receiver stopped reading this stream")
                    })?,
                    e = wait_closed(&mut self.closed) => return Err(e),
                }
            }
            Ok(())
        })
    }

    fn finish(&mut self) -> io::Result<()> {
        let Some(tx) = self.tx.take() else {
            return Ok(());
        };
        // The Fin needs a free slot; a full stream gets it from a task once the reader drains.
        if let Err(mpsc::error::TrySendError::Full(fin)) = tx.try_send(Piece::Fin) {
            tokio::spawn(async move {
                let _ = tx.send(fin).await;
            });
        }
        Ok(())
    }
}

struct LocalRecv {
    rx: mpsc::Receiver<Piece>,
    /// The rest of a buffer larger than the last read asked for.
    left: Bytes,
    ended: bool,
    closed: watch::Receiver<Option<String>>,
}

impl RecvHalf for LocalRecv {
    fn read_some(&mut self, max: usize) -> BoxFuture<'_, io::Result<Option<Bytes>>> {
        Box::pin(async move {
            let max = max.max(1);
            if !self.left.is_empty() {
                let n = self.left.len().min(max);
                return Ok(Some(self.left.split_to(n)));
            }
            if self.ended {
                return Ok(None);
            }
            let piece = tokio::select! {
                biased;
                piece = self.rx.recv() => piece,
                e = wait_closed(&mut self.closed) => return Err(e),
            };
            match piece {
                Some(Piece::Data(mut bytes)) => {
                    if bytes.len() > max {
                        self.left = bytes.split_off(max);
                    }
                    Ok(Some(bytes))
                }
                Some(Piece::Fin) => {
                    self.ended = true;
                    Ok(None)
                }
                None => Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "the sender abandoned the stream",
                )),
            }
        })
    }
}

impl Link for LocalLink {
    fn open_control(&self) -> BoxFuture<'_, io::Result<(BoxSend, BoxRecv)>> {
        Box::pin(async move {
            self.shared.check_open()?;
            let (client_send, server_recv) = self.shared.stream();
            let (server_send, client_recv) = self.shared.stream();
            let tx = self.shared.control.lock().ok().and_then(|c| c.clone());
            let delivered = match tx {
                Some(tx) => tx
                    .send((
                        Box::new(server_send) as BoxSend,
                        Box::new(server_recv) as BoxRecv,
                    ))
                    .await
                    .is_ok(),
                None => false,
            };
            if !delivered {
                return Err(closed_error("the receiver is gone"));
            }
            Ok((
                Box::new(client_send) as BoxSend,
                Box::new(client_recv) as BoxRecv,
            ))
        })
    }

    fn accept_control(&self) -> BoxFuture<'_, io::Result<(BoxSend, BoxRecv)>> {
        Box::pin(async move {
            let mut closed = self.shared.closed.subscribe();
            let mut rx = self.shared.control_rx.lock().await;
            tokio::select! {
                stream = rx.recv() => stream.ok_or_else(|| closed_error("the sender is gone")),
                e = wait_closed(&mut closed) => Err(e),
            }
        })
    }

    fn open_data(&self) -> BoxFuture<'_, io::Result<BoxSend>> {
        Box::pin(async move {
            self.shared.check_open()?;
            let (send, recv) = self.shared.stream();
            let tx = self.shared.data.lock().ok().and_then(|d| d.clone());
            match tx {
                Some(tx) if tx.send(Box::new(recv) as BoxRecv).await.is_ok() => {
                    Ok(Box::new(send) as BoxSend)
                }
                _ => Err(closed_error("the receiver is gone")),
            }
        })
    }

    fn accept_data(&self) -> BoxFuture<'_, io::Result<Option<BoxRecv>>> {
        Box::pin(async move {
            let mut closed = self.shared.closed.subscribe();
            let mut rx = self.shared.data_rx.lock().await;
            tokio::select! {
                stream = rx.recv() => Ok(stream),
                _ = wait_closed(&mut closed) => Ok(None),
            }
        })
    }

    fn shares_buffers(&self) -> bool {
        true
    }

    fn close(&self, _code: u32, reason: &str) {
        self.shared.closed.send_if_modified(|closed| {
            if closed.is_some() {
                return false;
            }
            *closed = Some(reason.to_owned());
            true
        });
        // No new streams after a close.
        if let Ok(mut control) = self.shared.control.lock() {
            control.take();
        }
        if let Ok(mut data) = self.shared.data.lock() {
            data.take();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn buffers_cross_by_reference_and_end_cleanly() {
        let (client, server) = pair();
        let mut send = client.open_data().await.unwrap();
        let mut recv = server.accept_data().await.unwrap().unwrap();
        let payload = Bytes::from(vec![7u8; 1 << 20]);
        let ptr = payload.as_ptr();
        send.write_parts(&mut [Bytes::from_static(b"head"), payload])
            .await
            .unwrap();
        send.finish().unwrap();
        assert_eq!(
            &recv.read_some(1 << 30).await.unwrap().unwrap()[..],
            b"head"
        );
        let got = recv.read_some(1 << 30).await.unwrap().unwrap();
        assert_eq!(got.as_ptr(), ptr, "the payload must not be copied");
        assert_eq!(got.len(), 1 << 20);
        assert!(recv.read_some(16).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn reads_are_split_to_the_size_asked_for() {
        let (client, server) = pair();
        let (mut send, _) = client.open_control().await.unwrap();
        let (_, mut recv) = server.accept_control().await.unwrap();
        send.write_parts(&mut [Bytes::from_static(b"abcdefgh")])
            .await
            .unwrap();
        assert_eq!(&recv.read_some(3).await.unwrap().unwrap()[..], b"abc");
        assert_eq!(&recv.read_some(100).await.unwrap().unwrap()[..], b"defgh");
    }

    #[tokio::test]
    async fn close_fails_streams_on_both_ends_with_the_reason() {
        let (client, server) = pair();
        let (mut send, mut client_recv) = client.open_control().await.unwrap();
        let (_, mut recv) = server.accept_control().await.unwrap();
        let pending = tokio::spawn(async move { recv.read_some(10).await });
        server.close(1, "disk full");
        let err = pending.await.unwrap().unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
        assert!(client_recv.read_some(10).await.is_err());
        assert!(
            send.write_parts(&mut [Bytes::from_static(b"x")])
                .await
                .is_err()
        );
        assert!(client.open_data().await.is_err());
        assert!(server.accept_data().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_writer_that_vanishes_is_not_a_clean_end() {
        let (client, server) = pair();
        let send = client.open_data().await.unwrap();
        let mut recv = server.accept_data().await.unwrap().unwrap();
        drop(send);
        assert!(recv.read_some(10).await.is_err());
    }

    #[tokio::test]
    async fn a_full_stream_holds_the_writer_back() {
        let (client, server) = pair();
        let mut send = client.open_data().await.unwrap();
        let _recv = server.accept_data().await.unwrap().unwrap();
        for _ in 0..STREAM_BUFFERS {
            send.write_parts(&mut [Bytes::from_static(b"x")])
                .await
                .unwrap();
        }
        let blocked = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            send.write_parts(&mut [Bytes::from_static(b"x")]),
        )
        .await;
        assert!(blocked.is_err(), "the writer must wait for the reader");
    }
}
