//! An in-memory, seeded, misbehaving link.
//!
//! [`pair`] returns the client and server ends of one simulated connection. Everything the link
//! does wrong is drawn from the seed: how each write is split into pieces, how long each piece
//! is delayed (so pieces on different streams overtake each other), after how many bytes the
//! connection dies (a kill of either peer looks the same from the other side), and which byte
//! of a data stream gets flipped. Rerunning a seed replays the same link behaviour.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use haul_engine::transport::{BoxFuture, BoxRecv, BoxSend, Link, RecvHalf, SendHalf};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::sync::{mpsc, watch};

/// What the simulated link does to the traffic.
#[derive(Clone, Debug, Default)]
pub struct SimConfig {
    /// Largest piece a write is split into (0: never split).
    pub max_piece: usize,
    /// Largest delay before a piece is delivered, in microseconds (0: none).
    pub max_delay_us: u64,
    /// The connection dies once this many bytes have crossed it (either direction).
    pub kill_after: Option<u64>,
    /// Flip one byte of the data-stream payload at this offset (counted over all data streams).
    pub corrupt_at: Option<u64>,
}

enum Piece {
    Data(Bytes),
    Fin,
}

struct Shared {
    rng: Mutex<StdRng>,
    config: SimConfig,
    crossed: AtomicU64,
    data_crossed: AtomicU64,
    dead: watch::Sender<bool>,
    killed: AtomicBool,
}

impl Shared {
    fn roll(&self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        self.rng
            .lock()
            .map(|mut r| r.random_range(0..=max))
            .unwrap_or(0)
    }

    fn die(&self) {
        self.killed.store(true, Ordering::SeqCst);
        let _ = self.dead.send(true);
    }

    fn is_dead(&self) -> bool {
        *self.dead.borrow()
    }
}

fn reset() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "simulated connection lost")
}

struct SimSend {
    tx: mpsc::Sender<Piece>,
    shared: Arc<Shared>,
    data: bool,
}

impl SendHalf for SimSend {
    fn write_parts<'a>(&'a mut self, parts: &'a mut [Bytes]) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            for part in parts.iter_mut() {
                let mut rest = std::mem::take(part);
                while !rest.is_empty() {
                    if self.shared.is_dead() {
                        return Err(reset());
                    }
                    let cfg = &self.shared.config;
                    let n = if cfg.max_piece == 0 {
                        rest.len()
                    } else {
                        (self.shared.roll(cfg.max_piece as u64 - 1) as usize + 1).min(rest.len())
                    };
                    let mut piece = rest.split_to(n);
                    let before = self.shared.crossed.fetch_add(n as u64, Ordering::SeqCst);
                    if let Some(limit) = cfg.kill_after
                        && before + n as u64 > limit
                    {
                        self.shared.die();
                        return Err(reset());
                    }
                    if self.data {
                        let at = self
                            .shared
                            .data_crossed
                            .fetch_add(n as u64, Ordering::SeqCst);
                        if let Some(target) = cfg.corrupt_at
                            && (at..at + n as u64).contains(&target)
                        {
                            let mut bytes = piece.to_vec();
                            bytes[(target - at) as usize] ^= 0x5a;
                            piece = Bytes::from(bytes);
                        }
                    }
                    let delay = self.shared.roll(cfg.max_delay_us);
                    if delay > 0 {
                        tokio::time::sleep(Duration::from_micros(delay)).await;
                    }
                    self.tx
                        .send(Piece::Data(piece))
                        .await
                        .map_err(|_| reset())?;
                }
            }
            Ok(())
        })
    }

    fn finish(&mut self) -> io::Result<()> {
        self.tx.try_send(Piece::Fin).or_else(|e| match e {
            mpsc::error::TrySendError::Full(piece) => {
                let tx = self.tx.clone();
                tokio::spawn(async move { tx.send(piece).await });
                Ok(())
            }
            mpsc::error::TrySendError::Closed(_) => Err(reset()),
        })
    }
}

struct SimRecv {
    rx: mpsc::Receiver<Piece>,
    leftover: Bytes,
    dead: watch::Receiver<bool>,
}

impl RecvHalf for SimRecv {
    fn read_some(&mut self, max: usize) -> BoxFuture<'_, io::Result<Option<Bytes>>> {
        Box::pin(async move {
            if self.leftover.is_empty() {
                let mut dead = self.dead.clone();
                let piece = tokio::select! {
                    piece = self.rx.recv() => piece,
                    _ = dead.wait_for(|d| *d) => return Err(reset()),
                };
                match piece {
                    Some(Piece::Data(bytes)) => self.leftover = bytes,
                    Some(Piece::Fin) => return Ok(None),
                    None => return Err(reset()),
                }
            }
            let n = max.max(1).min(self.leftover.len());
            Ok(Some(self.leftover.split_to(n)))
        })
    }
}

fn stream(shared: &Arc<Shared>, data: bool) -> (SimSend, SimRecv) {
    let (tx, rx) = mpsc::channel(64);
    (
        SimSend {
            tx,
            shared: shared.clone(),
            data,
        },
        SimRecv {
            rx,
            leftover: Bytes::new(),
            dead: shared.dead.subscribe(),
        },
    )
}

type ControlPair = (BoxSend, BoxRecv);

/// One end of a simulated connection.
pub struct SimLink {
    shared: Arc<Shared>,
    client: bool,
    control_tx: Mutex<Option<mpsc::UnboundedSender<ControlPair>>>,
    control_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<ControlPair>>,
    data_tx: mpsc::UnboundedSender<BoxRecv>,
    data_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<BoxRecv>>,
}

impl SimLink {
    /// True once the link died (killed or closed).
    pub fn is_dead(&self) -> bool {
        self.shared.is_dead()
    }

    /// True when the link died by its kill budget rather than a close.
    pub fn was_killed(&self) -> bool {
        self.shared.killed.load(Ordering::SeqCst)
    }

    /// Bytes that crossed the link in both directions.
    pub fn bytes_crossed(&self) -> u64 {
        self.shared.crossed.load(Ordering::SeqCst)
    }
}

/// The client and server ends of one simulated connection.
pub fn pair(seed: u64, config: SimConfig) -> (Arc<SimLink>, Arc<SimLink>) {
    let (dead, _) = watch::channel(false);
    let shared = Arc::new(Shared {
        rng: Mutex::new(StdRng::seed_from_u64(seed)),
        config,
        crossed: AtomicU64::new(0),
        data_crossed: AtomicU64::new(0),
        dead,
        killed: AtomicBool::new(false),
    });
    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
    let (data_tx, data_rx) = mpsc::unbounded_channel();
    let (unused_ctl_tx, unused_ctl_rx) = mpsc::unbounded_channel();
    let (unused_data_tx, unused_data_rx) = mpsc::unbounded_channel();
    let client = Arc::new(SimLink {
        shared: shared.clone(),
        client: true,
        control_tx: Mutex::new(Some(ctl_tx)),
        control_rx: tokio::sync::Mutex::new(unused_ctl_rx),
        data_tx,
        data_rx: tokio::sync::Mutex::new(unused_data_rx),
    });
    let server = Arc::new(SimLink {
        shared,
        client: false,
        control_tx: Mutex::new(Some(unused_ctl_tx)),
        control_rx: tokio::sync::Mutex::new(ctl_rx),
        data_tx: unused_data_tx,
        data_rx: tokio::sync::Mutex::new(data_rx),
    });
    (client, server)
}

impl Link for SimLink {
    fn open_control(&self) -> BoxFuture<'_, io::Result<(BoxSend, BoxRecv)>> {
        Box::pin(async move {
            if !self.client || self.shared.is_dead() {
                return Err(reset());
            }
            let (c2s_send, c2s_recv) = stream(&self.shared, false);
            let (s2c_send, s2c_recv) = stream(&self.shared, false);
            let tx = self
                .control_tx
                .lock()
                .ok()
                .and_then(|mut t| t.take())
                .ok_or_else(reset)?;
            tx.send((Box::new(s2c_send) as BoxSend, Box::new(c2s_recv) as BoxRecv))
                .map_err(|_| reset())?;
            Ok((Box::new(c2s_send) as BoxSend, Box::new(s2c_recv) as BoxRecv))
        })
    }

    fn accept_control(&self) -> BoxFuture<'_, io::Result<(BoxSend, BoxRecv)>> {
        Box::pin(async move {
            let mut dead = self.shared.dead.subscribe();
            let mut rx = self.control_rx.lock().await;
            tokio::select! {
                pair = rx.recv() => pair.ok_or_else(reset),
                _ = dead.wait_for(|d| *d) => Err(reset()),
            }
        })
    }

    fn open_data(&self) -> BoxFuture<'_, io::Result<BoxSend>> {
        Box::pin(async move {
            if self.shared.is_dead() {
                return Err(reset());
            }
            let (send, recv) = stream(&self.shared, true);
            self.data_tx.send(Box::new(recv)).map_err(|_| reset())?;
            Ok(Box::new(send) as BoxSend)
        })
    }

    fn accept_data(&self) -> BoxFuture<'_, io::Result<Option<BoxRecv>>> {
        Box::pin(async move {
            let mut dead = self.shared.dead.subscribe();
            let mut rx = self.data_rx.lock().await;
            tokio::select! {
                recv = rx.recv() => Ok(recv),
                _ = dead.wait_for(|d| *d) => Ok(None),
            }
        })
    }

    fn close(&self, _code: u32, _reason: &str) {
        let _ = self.shared.dead.send(true);
    }
}
