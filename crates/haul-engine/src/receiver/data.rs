//! The receiver's data streams: each one is read on its own task, its chunks checked against
//! the session and handed in batches to blocking threads that verify and write them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use haul_proto::{Limits, Message, ServerSession};

use super::files::Files;
use super::{PROTOCOL_ERROR, lock};
use crate::error::EngineError;
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
    while let Ok(Some(recv)) = link.accept_data().await {
        // Reap finished stream tasks as we go: a client opening stream after stream must not
        // make the session hold one task per stream it ever opened.
        while tasks.try_join_next().is_some() {}
        let (link, session, files, limits) =
            (link.clone(), session.clone(), files.clone(), limits.clone());
        tasks.spawn(async move {
            if let Err(e) = data_stream(recv, &session, &files, limits).await {
                link.close(PROTOCOL_ERROR, &e.to_string());
            }
        });
    }
    tasks.shutdown().await;
}

/// Reads chunks from one data stream, checks each against the session, and verifies and writes
/// them on blocking threads, at most two batches in flight per stream.
async fn data_stream(
    recv: BoxRecv,
    session: &Mutex<ServerSession>,
    files: &Arc<Files>,
    limits: Limits,
) -> Result<(), EngineError> {
    let mut framed = FramedRecv::new(recv, limits);
    let mut inflight = VecDeque::new();
    while let Some(first) = framed.next().await? {
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        let mut next = Some(first);
        while let Some(msg) = next {
            let Message::Chunk(chunk) = msg else {
                return Err(EngineError::Protocol(format!(
                    "{} on a data stream (only chunks belong there)",
                    msg.name()
                )));
            };
            {
                let session = lock(session);
                // Chunks of a file this receiver already failed may still be in flight.
                if !session.is_failed(chunk.id) {
                    session.check_chunk(&chunk)?;
                    bytes += chunk.data.len();
                    batch.push(chunk);
                }
            }
            next = if bytes < (8 << 20) && batch.len() < 256 {
                framed.try_next()?
            } else {
                None
            };
        }
        let files = files.clone();
        let busy = files.busy();
        inflight.push_back(tokio::task::spawn_blocking(move || {
            let _busy = busy;
            for chunk in batch {
                files.receive(chunk);
            }
        }));
        if inflight.len() >= 2
            && let Some(oldest) = inflight.pop_front()
        {
            let _ = oldest.await;
        }
    }
    for task in inflight {
        let _ = task.await;
    }
    Ok(())
}
