//! The data side of a session: read/hash worker threads take read jobs from the control loop
//! and put frames on one bounded channel, which the stream writers drain, each onto its own
//! data stream (opened on its first frame; all of them together within `--bwlimit`). Workers
//! and writers report to the control loop through notes (control messages to pass on, files
//! that could not be read, a stream that failed).

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::bwlimit;
use super::options::TransferOptions;
use super::pool::BufferPool;
use super::read::{self, ReadJob, Worker, WorkerNote};
use crate::error::EngineError;
use crate::progress::Progress;
use crate::transport::Link;
use crate::wire::FramedSend;

/// The workers and writers of a session, and the control loop's ends of their channels.
pub(super) struct Streams {
    /// Read jobs for the workers (closed at the end: the workers then drain and stop).
    pub(super) job_tx: async_channel::Sender<ReadJob>,
    /// Notes from the workers and writers.
    pub(super) note_rx: mpsc::UnboundedReceiver<WorkerNote>,
    /// Where the workers' held frame buffers come from (closed at the end).
    pub(super) held_buffers: Arc<BufferPool>,
    pub(super) workers: Vec<std::thread::JoinHandle<()>>,
    pub(super) writers: Vec<tokio::task::JoinHandle<()>>,
}

/// Starts `opts.readers` workers and `opts.streams` stream writers over `link`.
pub(super) fn start(
    link: &Arc<dyn Link>,
    opts: &TransferOptions,
    progress: &Arc<Progress>,
) -> Result<Streams, EngineError> {
    let (job_tx, job_rx) = async_channel::unbounded::<ReadJob>();
    let (frame_tx, frame_rx) = async_channel::bounded::<(Bytes, Bytes)>(opts.streams * 2);
    let (note_tx, note_rx) = mpsc::unbounded_channel::<WorkerNote>();
    // Enough free buffers for what QUIC holds unacknowledged plus the frames queued for it.
    let buffers = BufferPool::new(32);
    let held_buffers = BufferPool::limited(read::MAX_HELD_BUFFERS);
    let mut workers = Vec::new();
    for n in 0..opts.readers {
        let worker = Worker {
            jobs: job_rx.clone(),
            frames: frame_tx.clone(),
            notes: note_tx.clone(),
            progress: progress.clone(),
            buffers: buffers.clone(),
            held_buffers: held_buffers.clone(),
            compress: opts.compress,
            held: Default::default(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("haul-read-{n}"))
            .spawn(move || worker.run())
            .map_err(|e| EngineError::connection("cannot start a reader thread", e))?;
        workers.push(handle);
    }
    drop((job_rx, frame_tx));
    let mut writers = Vec::new();
    let limit = opts
        .bwlimit
        .map(|rate| Arc::new(bwlimit::RateLimit::new(rate)));
    for _ in 0..opts.streams {
        let link = link.clone();
        let frames = frame_rx.clone();
        let notes = note_tx.clone();
        let limit = limit.clone();
        writers.push(tokio::spawn(async move {
            let result = async {
                let Ok(first) = frames.recv().await else {
                    return Ok(());
                };
                let mut stream = FramedSend::new(link.open_data().await?);
                let mut next = Some(first);
                while let Some((head, payload)) = next {
                    if let Some(limit) = &limit {
                        limit.take((head.len() + payload.len()) as u64).await;
                    }
                    stream.send_parts(head, payload).await?;
                    next = frames.recv().await.ok();
                }
                stream.finish()
            }
            .await;
            if let Err(e) = result {
                // Stop feeding this stream's share of frames to nobody.
                frames.close();
                let _ = notes.send(WorkerNote::StreamFailed(e));
            }
        }));
    }
    drop((frame_rx, note_tx));
    Ok(Streams {
        job_tx,
        note_rx,
        held_buffers,
        workers,
        writers,
    })
}
