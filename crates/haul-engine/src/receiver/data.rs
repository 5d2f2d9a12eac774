//! The receiver's data streams: each one is read on its own task, its chunks checked against
//! the session and handed in batches to blocking threads that decompress (when the sender
//! compressed them), verify and write them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use haul_proto::{Chunk, Limits, Message, ServerSession};

use super::PROTOCOL_ERROR;
use super::files::Files;
use crate::compress;
use crate::error::EngineError;
use crate::lock;
use crate::transport::{BoxRecv, Link};
use crate::wire::FramedRecv;

/// Accepts data streams and runs a reader for each.
pub(super) async fn accept_data(
    link: Arc<dyn Link>,
    session: Arc<Mutex<ServerSession>>,
    files: Arc<Files>,
    limits: Limits,
) {
    let mut tasks = tokio::task::JoinSet::new();
    // Verify-and-write batches in flight across all streams: one per core. More only made
    // threads evict each other's chunks from the caches on a two-core receiver.
    let workers = crate::cores();
    let gate = Arc::new(tokio::sync::Semaphore::new(workers));
    while let Ok(Some(recv)) = link.accept_data().await {
        // Reap finished stream tasks as we go: a client opening stream after stream must not
        // make the session hold one task per stream it ever opened.
        while tasks.try_join_next().is_some() {}
        let (link, session, files, limits, gate) = (
            link.clone(),
            session.clone(),
            files.clone(),
            limits.clone(),
            gate.clone(),
        );
        tasks.spawn(async move {
            if let Err(e) = data_stream(recv, &session, &files, limits, gate).await {
                link.close(PROTOCOL_ERROR, &e.to_string());
            }
        });
    }
    tasks.shutdown().await;
}

/// Reads chunks from one data stream, checks each against the session, and verifies and writes
/// them on blocking threads, at most two batches in flight per stream. A compressed chunk that
/// does not decompress to exactly its chunk's length is a protocol error: the sender is faulty
/// or hostile, and the session is closed as for any malformed data.
async fn data_stream(
    recv: BoxRecv,
    session: &Mutex<ServerSession>,
    files: &Arc<Files>,
    limits: Limits,
    gate: Arc<tokio::sync::Semaphore>,
) -> Result<(), EngineError> {
    let mut framed = FramedRecv::new(recv, limits);
    let mut inflight = VecDeque::new();
    while let Some(first) = framed.next().await? {
        let mut batch = Batch::default();
        batch.add(first, session)?;
        while !batch.full() {
            match framed.try_next()? {
                Some(msg) => batch.add(msg, session)?,
                None => break,
            }
        }
        // While every worker is busy, go on reading into this batch: small files then travel
        // to the workers hundreds at a time instead of waking one for each (an idle worker
        // still gets the first chunk at once).
        let mut ended = false;
        let permit = loop {
            if batch.full() {
                break gate.clone().acquire_owned().await;
            }
            tokio::select! {
                biased;
                permit = gate.clone().acquire_owned() => break permit,
                msg = framed.next() => match msg? {
                    Some(msg) => batch.add(msg, session)?,
                    None => {
                        ended = true;
                        break gate.clone().acquire_owned().await;
                    }
                },
            }
        };
        let batch = batch.chunks;
        let files = files.clone();
        let busy = files.busy();
        inflight.push_back(tokio::task::spawn_blocking(move || {
            let _busy = busy;
            let _permit = permit;
            files.batched(|| {
                for (chunk, len) in batch {
                    files.receive(decompressed(chunk, len)?);
                }
                Ok::<_, EngineError>(())
            })
        }));
        if inflight.len() >= 2
            && let Some(oldest) = inflight.pop_front()
            && let Ok(Err(e)) = oldest.await
        {
            return Err(e);
        }
        if ended {
            break;
        }
    }
    for task in inflight {
        if let Ok(Err(e)) = task.await {
            return Err(e);
        }
    }
    Ok(())
}

/// The most data one stream reads ahead into its batch while every worker is busy. A write
/// to the target that stalls (seen here: single 4 MiB direct writes of 0.5-0.8 s on the
/// benchmark host's virtual disk, every few seconds) holds up every worker of that file, and
/// the sender stops once the data streams' QUIC windows (8 MiB each) are full: at 8 MiB per
/// batch a gigabit WAN push lost a quarter second of link time at each stall. At 32 MiB four
/// streams ride out about a second of stall at a gigabit, and memory stays bounded by
/// streams times this.
const BATCH_BYTES: usize = 32 << 20;
/// The most chunks in one batch (small files: one trip to a worker for hundreds of them).
const BATCH_CHUNKS: usize = 512;

/// Chunks read from one data stream for one trip to a blocking worker.
#[derive(Default)]
struct Batch {
    /// Each chunk with its length once decompressed.
    chunks: Vec<(Chunk, usize)>,
    /// The data they carry, decompressed: the work the batch is.
    bytes: usize,
}

impl Batch {
    /// Checks `msg` against the session and adds it; chunks of a file this receiver already
    /// failed (still in flight) are dropped.
    fn add(&mut self, msg: Message, session: &Mutex<ServerSession>) -> Result<(), EngineError> {
        let Message::Chunk(chunk) = msg else {
            return Err(EngineError::Protocol(format!(
                "{} on a data stream (only chunks belong there)",
                msg.name()
            )));
        };
        let session = lock(session);
        if session.is_failed(chunk.id) {
            return Ok(());
        }
        let layout = session.check_chunk(&chunk)?;
        // The chunk's length once decompressed, checked by `check_chunk`.
        let len = layout.len(chunk.index).unwrap_or(0) as usize;
        self.bytes += if chunk.compressed {
            len
        } else {
            chunk.data.len()
        };
        self.chunks.push((chunk, len));
        Ok(())
    }

    fn full(&self) -> bool {
        self.bytes >= BATCH_BYTES || self.chunks.len() >= BATCH_CHUNKS
    }
}

/// The chunk as the sender read it: a compressed chunk is decompressed (to at most `len`
/// bytes, its length in the file) so that verification and writing see raw data.
fn decompressed(chunk: Chunk, len: usize) -> Result<Chunk, EngineError> {
    if !chunk.compressed {
        return Ok(chunk);
    }
    let data = compress::decompress(&chunk.data, len).map_err(|e| {
        EngineError::Protocol(format!(
            "compressed chunk {} of entry {} was refused: {e}; the sender is faulty or not a \
             compatible haul (try --compress off on the sending side)",
            chunk.index, chunk.id
        ))
    })?;
    Ok(Chunk {
        compressed: false,
        data: Bytes::from(data),
        ..chunk
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(compressed: bool, data: Vec<u8>) -> Chunk {
        Chunk {
            id: 3,
            index: 1,
            hash: [0; 32],
            zero: false,
            compressed,
            data: Bytes::from(data),
        }
    }

    #[test]
    fn compressed_chunks_become_raw_and_bad_ones_end_the_session() {
        let data = b"abc".repeat(50_000);
        let raw = decompressed(chunk(false, data.clone()), data.len()).unwrap();
        assert_eq!((raw.compressed, &raw.data[..]), (false, &data[..]));
        let packed = zstd::bulk::compress(&data, 1).unwrap();
        let back = decompressed(chunk(true, packed.clone()), data.len()).unwrap();
        assert_eq!((back.compressed, &back.data[..]), (false, &data[..]));
        assert_eq!((back.id, back.index), (3, 1));
        // One byte short of what the frame holds: refused, naming the chunk.
        let err = decompressed(chunk(true, packed), data.len() - 1).unwrap_err();
        let EngineError::Protocol(message) = err else {
            panic!("{err}")
        };
        assert!(message.contains("chunk 1 of entry 3"), "{message}");
        assert!(decompressed(chunk(true, vec![1, 2, 3]), 10).is_err());
    }
}
