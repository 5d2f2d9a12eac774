//! The sending side of a transfer: scan, announce, read, hash, send.
//!
//! Pipeline (every arrow a bounded channel, except where noted):
//!
//! ```text
//! scan thread --entries--> control loop --Entry frames--> control stream
//!                               ^   |
//!      Need/Installed/Failed ---+   +--read jobs--> read/hash threads --frames--> N data streams
//! ```
//!
//! The control loop never waits for one file before announcing the next: up to `window`
//! entries are in flight, so small files cost no round trip each. The jobs channel and the
//! control-message channels are unbounded in type but bounded in practice by the window, which
//! keeps the two directions of the control stream from waiting on each other.
//!
//! # Layout
//! One module per stage, in the order a file goes through them; each uses only modules listed
//! before it (`read` uses its helpers `pool` and `uring`):
//! - `options`: what a transfer is asked to do ([`TransferOptions`], [`SendRequest`]) and the
//!   hello that carries it (`hello_for`, `options_from_hello`).
//! - `scan`: the scanner thread, and the runs of files it groups for one quick check each.
//! - `links`: hard-link groups: a multiply-linked file is sent once, its other names as links.
//! - `delete`: the `--delete` listing of the source, after every entry is resolved.
//! - `read` (with `pool`, `uring`): the read/hash workers; `streams` (with `bwlimit`): the
//!   workers and the data stream writers they feed, started together.
//! - `control`: the control loop that ties them together, and the control stream's writer and
//!   reader tasks.
//!
//! Here: [`send`] and `send_over`, which set the pipeline up, run the control loop and shut
//! the pipeline down in order.

mod bwlimit;
mod control;
mod delete;
mod links;
mod options;
mod pool;
mod read;
mod scan;
mod streams;
mod uring;

use std::sync::Arc;
use std::time::Instant;

use haul_proto::{ClientSession, Limits, Message};

use crate::error::EngineError;
use crate::progress::{EventSink, Progress, RenamedAside, Summary};
use crate::transport::Link;
use crate::wire::{FramedRecv, FramedSend};
use control::{ControlLoop, Wiring};
pub use options::{SendRequest, TransferOptions};
pub(crate) use options::{hello_for, options_from_hello};
use scan::RunBuilder;

/// Runs the sending side of one session over `link` and returns its summary. Per-file problems
/// (unreadable source files, files the receiver could not install) are listed in the summary;
/// the run goes on. Errors that end the run (refused, connection lost, out of space) are
/// returned as [`EngineError`].
pub async fn send(
    link: Arc<dyn Link>,
    request: SendRequest,
    progress: Arc<Progress>,
    events: EventSink,
) -> Result<Summary, EngineError> {
    let (ctl_send, ctl_recv) = link
        .open_control()
        .await
        .map_err(|e| EngineError::connection("cannot open the control stream", e))?;
    let control = (
        FramedSend::new(ctl_send),
        FramedRecv::new(ctl_recv, Limits::default()),
    );
    send_over(link, control, request, progress, events).await
}

/// The sending pipeline over a control stream already open: says hello, and on a welcome
/// sends the tree. A client pushing opens the stream ([`send`]); a host serving a pull runs
/// this on the stream its client opened.
pub(crate) async fn send_over(
    link: Arc<dyn Link>,
    (mut ctl_tx, mut ctl_rx): crate::receiver::Control,
    request: SendRequest,
    progress: Arc<Progress>,
    events: EventSink,
) -> Result<Summary, EngineError> {
    let started = Instant::now();
    let opts = request.options.clone();
    ctl_tx
        .send(&Message::Hello(hello_for(
            &opts,
            &request.token,
            link.as_ref(),
            &request.dest,
        )))
        .await
        .map_err(|e| EngineError::connection("cannot send the hello", e))?;
    let mut session = ClientSession::new();
    // A receiver of an older release cannot parse this hello and closes the connection
    // instead of refusing it: say what is most likely.
    let older = |what: String| {
        EngineError::Protocol(format!(
            "{what}; if the receiver runs an older haul release (this one speaks protocol \
             version {}), run the same release on both hosts",
            haul_proto::PROTOCOL_VERSION
        ))
    };
    let answer = match ctl_rx.next().await {
        Ok(Some(answer)) => answer,
        Ok(None) => {
            return Err(older(
                "the receiver closed the connection without answering the hello".into(),
            ));
        }
        Err(e) => return Err(older(format!("no answer to the hello: {e}"))),
    };
    let welcome = match session.handle_answer(answer)? {
        Ok(welcome) => welcome,
        Err(refused) => {
            return Err(EngineError::Refused {
                reason: refused.reason,
                message: refused.message,
            });
        }
    };

    // Scanner thread.
    let scan_options = scan::options(&opts);
    let walk_options = scan_options.clone();
    let runs = RunBuilder::new(
        opts.owners && welcome.privileged,
        welcome.privileged,
        opts.hard_links,
    );
    let (scanner, mut scan_rx) =
        scan::start(request.source.clone(), scan_options, runs, progress.clone())?;

    // The control stream: a writer and a reader task, so that neither direction waits on the
    // other.
    let (out_tx, ctl_writer) = control::start_writer(ctl_tx);
    let (mut in_rx, ctl_reader) = control::start_reader(ctl_rx);

    // Read/hash workers and data stream writers.
    let mut streams = streams::start(&link, &opts, &progress)?;

    let mut summary = Summary {
        dry_run: opts.dry_run,
        target_free_bytes: welcome.free_bytes,
        renamed_aside: welcome
            .renamed
            .iter()
            .map(|r| RenamedAside {
                from: String::from_utf8_lossy(&r.from).into_owned(),
                to: String::from_utf8_lossy(&r.to).into_owned(),
            })
            .collect(),
        ..Summary::default()
    };
    // The loop's state (entries in flight, held runs and names) lives to the end; its borrows
    // of the channels end with the loop, so the shutdown below can close them in order.
    let mut control = ControlLoop::new(Wiring {
        opts: &opts,
        source: &request.source,
        welcome: &welcome,
        progress: &progress,
        events: &events,
        walk_options: &walk_options,
        session: &mut session,
        summary: &mut summary,
        scan_rx: &mut scan_rx,
        in_rx: &mut in_rx,
        note_rx: &mut streams.note_rx,
        out_tx: &out_tx,
        job_tx: &streams.job_tx,
    });
    let result = control.run().await;

    // Shut the pipeline down in order: no more jobs, workers drain, writers finish.
    streams.job_tx.close();
    streams.held_buffers.close();
    drop(scan_rx);
    if let Err(e) = &result {
        let _ = out_tx.send(vec![Message::Abort(haul_proto::Abort {
            message: e.to_string(),
        })]);
    }
    drop(out_tx);
    // Once `Finished` has arrived every file is installed: a stream that fails while closing
    // afterwards changes nothing.
    for writer in streams.writers {
        let _ = writer.await;
    }
    let _ = ctl_writer.await;
    ctl_reader.abort();
    for worker in streams.workers {
        let _ = worker.join();
    }
    let _ = scanner.join();
    result?;
    summary.bytes_sent = Progress::get(&progress.bytes_sent);
    summary.chunks_sent = Progress::get(&progress.chunks_sent);
    summary.chunks_reused = Progress::get(&progress.chunks_reused);
    summary.bytes_reused = Progress::get(&progress.bytes_reused);
    summary.would_send_bytes = Progress::get(&progress.would_send_bytes);
    summary.would_send_chunks = Progress::get(&progress.would_send_chunks);
    if opts.dry_run && welcome.history_ms > 0 && welcome.history_bytes > 0 {
        let rate = welcome.history_bytes as f64 / (welcome.history_ms as f64 / 1000.0);
        summary.estimated_s = Some(summary.would_send_bytes as f64 / rate);
    }
    summary.elapsed_s = started.elapsed().as_secs_f64();
    Ok(summary)
}
