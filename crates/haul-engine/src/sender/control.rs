//! The control loop and the two halves of the control stream it talks through.
//!
//! The loop announces scanned entries while the window has room (a run of files as one quick
//! check where that pays), turns each `Need` into read jobs for the workers, passes the
//! workers' notes on, and counts every answer into the summary. It never waits for one file
//! before announcing the next. Once the scan is over and every entry resolved, `--delete`
//! lists the source (see `delete`), and the receiver's `Finished` ends the loop.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use haul_manifest::{ScanEntry, ScanError, ScanOptions};
use haul_proto::{
    ChunkLayout, ClientSession, Deleted, Entry, EntryKind, Failed, Have, Installed, Message, Need,
    QuickCheck, QuickChecked, Welcome,
};
use tokio::sync::{mpsc, oneshot};

use super::delete;
use super::links::HardLinks;
use super::options::TransferOptions;
use super::read::{self, CHUNKS_PER_JOB, FileJob, ReadJob, WorkerNote};
use super::scan::{MIN_QUICK_RUN, QuickPolicy, QuickRun, ScanItem, dir_and_name};
use crate::error::EngineError;
use crate::idmap::{IdMap, IdSet};
use crate::progress::{Event, EventSink, FileProblem, Progress, Summary};
use crate::wire::{FramedRecv, FramedSend, WireError};

/// What the control reader passes on: each message read, or how reading ended.
type Received = Result<Option<Message>, WireError>;

/// Starts the control writer: it coalesces small messages into few writes. Messages travel in
/// batches (the entries of one scan batch, the notes of one worker flush): one channel send
/// and one wake-up per message cost more than encoding it on a no-change re-run.
pub(super) fn start_writer(
    mut ctl_tx: FramedSend,
) -> (
    mpsc::UnboundedSender<Vec<Message>>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Vec<Message>>();
    let ctl_writer = tokio::spawn(async move {
        while let Some(msgs) = out_rx.recv().await {
            msgs.iter().for_each(|msg| ctl_tx.queue(msg));
            while ctl_tx.queued() < (256 << 10) {
                match out_rx.try_recv() {
                    Ok(msgs) => msgs.iter().for_each(|msg| ctl_tx.queue(msg)),
                    Err(_) => break,
                }
            }
            ctl_tx.flush().await?;
        }
        let _ = ctl_tx.finish();
        Ok::<_, std::io::Error>(())
    });
    (out_tx, ctl_writer)
}

/// Starts the control reader: its own task so that reading never waits on writing.
/// Messages are passed on in batches of what has arrived, so a burst of answers about
/// small files wakes the control loop once.
pub(super) fn start_reader(
    mut ctl_rx: FramedRecv,
) -> (
    mpsc::UnboundedReceiver<Vec<Received>>,
    tokio::task::JoinHandle<()>,
) {
    let (in_tx, in_rx) = mpsc::unbounded_channel::<Vec<_>>();
    let ctl_reader = tokio::spawn(async move {
        loop {
            let mut batch = Vec::new();
            let mut next = ctl_rx.next().await;
            let end = loop {
                let end = !matches!(next, Ok(Some(_)));
                batch.push(next);
                if end || batch.len() >= 1024 {
                    break end;
                }
                next = match ctl_rx.next_ready() {
                    Ok(Some(msg)) => Ok(Some(msg)),
                    Ok(None) => break false,
                    Err(e) => Err(e),
                };
            };
            if in_tx.send(batch).is_err() || end {
                break;
            }
        }
    });
    (in_rx, ctl_reader)
}

/// What the control loop works with, owned by the session (`send_over`): the run's settings,
/// the summary it fills in, and its ends of the pipeline's channels.
pub(super) struct Wiring<'a> {
    pub(super) opts: &'a TransferOptions,
    /// The source, as the user named it (for messages about the whole run).
    pub(super) source: &'a Path,
    pub(super) welcome: &'a Welcome,
    pub(super) progress: &'a Progress,
    pub(super) events: &'a EventSink,
    /// What the `--delete` listing walks with (the scan's options).
    pub(super) walk_options: &'a ScanOptions,
    pub(super) session: &'a mut ClientSession,
    pub(super) summary: &'a mut Summary,
    /// Batches of scanned items, from the scanner thread.
    pub(super) scan_rx: &'a mut mpsc::Receiver<Vec<ScanItem>>,
    /// Batches of what the control reader read.
    pub(super) in_rx: &'a mut mpsc::UnboundedReceiver<Vec<Received>>,
    /// Notes from the read/hash workers and the stream writers.
    pub(super) note_rx: &'a mut mpsc::UnboundedReceiver<WorkerNote>,
    /// To the control writer.
    pub(super) out_tx: &'a mpsc::UnboundedSender<Vec<Message>>,
    /// Read jobs for the workers.
    pub(super) job_tx: &'a async_channel::Sender<ReadJob>,
}

/// An entry announced and not yet resolved.
struct Pending {
    /// Where to read it (a directory handle only for files: see [`ScanEntry::dir`]).
    source: read::SourceFile,
    rel: Vec<u8>,
    kind: EntryKind,
    size: u64,
    /// The mtime announced (what the receiver's journal of this file is keyed on).
    mtime: (i64, u32),
}

/// The control loop of one session.
pub(super) struct ControlLoop<'a> {
    opts: &'a TransferOptions,
    source: &'a Path,
    welcome: &'a Welcome,
    progress: &'a Progress,
    events: &'a EventSink,
    walk_options: &'a ScanOptions,
    session: &'a mut ClientSession,
    summary: &'a mut Summary,
    scan_rx: &'a mut mpsc::Receiver<Vec<ScanItem>>,
    in_rx: &'a mut mpsc::UnboundedReceiver<Vec<Received>>,
    note_rx: &'a mut mpsc::UnboundedReceiver<WorkerNote>,
    out_tx: &'a mpsc::UnboundedSender<Vec<Message>>,
    job_tx: &'a async_channel::Sender<ReadJob>,
    /// Answers read and not yet handled (the rest of the control reader's last batch).
    inbox: VecDeque<Received>,
    /// Scanned items not yet announced (the rest of the scanner's last batch, and items put
    /// back in front of it: files of a run announced singly, names of a link group).
    scanned: VecDeque<ScanItem>,
    /// Hashes the receiver holds per file, collected until its `Need` arrives.
    haves: IdMap<read::Held>,
    needed_bytes: u64,
    warned_space: bool,
    pending: IdMap<Pending>,
    source_failed: IdSet,
    scan_done: bool,
    /// Runs being quick-checked, by check id, and how many files they hold.
    checking: IdMap<QuickRun>,
    held: usize,
    quick: QuickPolicy,
    /// Hard links: groups of multiply-linked files, and names waiting for their first.
    links: HardLinks,
    name_table: crate::owners::NameTable,
    /// --delete: the scan is done and the deletion waits for every entry to be resolved; then
    /// the listing walk runs (and reports here when it is done).
    source_incomplete: bool,
    prune_waiting: bool,
    prune_walk: Option<oneshot::Receiver<Option<String>>>,
    /// The scanner has ended but runs are still being checked: their files may yet have to be
    /// announced, so the end of the entries waits for their answers.
    scan_exhausted: bool,
    window: usize,
}

impl<'a> ControlLoop<'a> {
    pub(super) fn new(wiring: Wiring<'a>) -> ControlLoop<'a> {
        let Wiring {
            opts,
            source,
            welcome,
            progress,
            events,
            walk_options,
            session,
            summary,
            scan_rx,
            in_rx,
            note_rx,
            out_tx,
            job_tx,
        } = wiring;
        ControlLoop {
            opts,
            source,
            welcome,
            progress,
            events,
            walk_options,
            session,
            summary,
            scan_rx,
            in_rx,
            note_rx,
            out_tx,
            job_tx,
            inbox: VecDeque::new(),
            scanned: VecDeque::new(),
            haves: IdMap::default(),
            needed_bytes: 0,
            warned_space: false,
            pending: IdMap::default(),
            source_failed: IdSet::default(),
            scan_done: false,
            checking: IdMap::default(),
            held: 0,
            quick: QuickPolicy::new(opts),
            links: HardLinks::new(opts.hard_links),
            name_table: crate::owners::NameTable::default(),
            source_incomplete: false,
            prune_waiting: false,
            prune_walk: None,
            scan_exhausted: false,
            window: opts.window.max(1),
        }
    }

    /// Runs the session until the receiver's `Finished`, or the first error that ends it.
    pub(super) async fn run(&mut self) -> Result<(), EngineError> {
        loop {
            if self.prune_waiting
                && self.session.outstanding() == 0
                && self.held == 0
                && self.links.waiting() == 0
            {
                self.prune_waiting = false;
                self.start_delete()?;
            }
            let walking = self.prune_walk.is_some();
            let announcing = !self.scan_done
                && (!self.scan_exhausted
                    || !self.scanned.is_empty()
                    || (self.checking.is_empty() && self.links.waiting() == 0))
                && self.session.outstanding() + self.held < self.window;
            let prune_walk = &mut self.prune_walk;
            let (scanned, scan_rx) = (&mut self.scanned, &mut *self.scan_rx);
            let (inbox, in_rx) = (&mut self.inbox, &mut *self.in_rx);
            let note_rx = &mut *self.note_rx;
            tokio::select! {
                walked = async { prune_walk.as_mut().expect("guarded").await }, if walking => {
                    self.walked(walked);
                }
                item = next_of(scanned, || scan_rx.recv()), if announcing => {
                    self.announce(item)?;
                }
                note = note_rx.recv() => match note {
                    Some(WorkerNote::StreamFailed(e)) => return Err(self.stream_failed(e).await),
                    note => self.note(note),
                },
                msg = next_of(inbox, || in_rx.recv()) => {
                    if self.answers(msg)?.is_break() {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Every entry is resolved and `--delete` is on: the listing walk starts, unless part of
    /// the source could not be read.
    fn start_delete(&mut self) -> Result<(), EngineError> {
        if self.source_incomplete {
            self.problem(
                self.source.display().to_string(),
                "--delete skipped: part of the source could not be read (see above), so \
                 nothing was deleted; fix the source and run again"
                    .into(),
            );
            self.session.end_of_entries();
            let _ = self.out_tx.send(vec![Message::EndOfEntries]);
        } else {
            let (source, walk_options, out) = (
                self.source.to_path_buf(),
                self.walk_options.clone(),
                self.out_tx.clone(),
            );
            self.prune_walk = Some(delete::start(source, walk_options, out)?);
        }
        Ok(())
    }

    /// The `--delete` listing is over: on a problem no `PruneEnd` was sent and the receiver
    /// deletes nothing; else its `Deleted` answer ends the entries.
    fn walked(&mut self, walked: Result<Option<String>, oneshot::error::RecvError>) {
        self.prune_walk = None;
        let problem_text = match walked {
            Ok(None) => None,
            Ok(Some(e)) => Some(e),
            Err(_) => Some("the --delete listing stopped".into()),
        };
        if let Some(e) = problem_text {
            // No PruneEnd was sent: the receiver deletes nothing.
            self.problem(
                self.source.display().to_string(),
                format!("--delete skipped, nothing was deleted: {e}"),
            );
            self.session.end_of_entries();
            let _ = self.out_tx.send(vec![Message::EndOfEntries]);
        }
    }

    /// Announces `item` and every scanned item after it the window has room for, before
    /// looking at anything else, and sends their messages as one batch.
    fn announce(&mut self, item: Option<ScanItem>) -> Result<(), EngineError> {
        let mut entries = Vec::new();
        let mut item = item;
        loop {
            match item {
                Some(ScanItem::Entry(entry)) => self.announce_entry(entry, &mut entries),
                Some(ScanItem::Run(run)) if self.quick.check_next() => {
                    self.check_run(run, &mut entries)
                }
                // Not checked: its files go one by one, next.
                Some(ScanItem::Run(run)) => run.announce_singly(&mut self.scanned),
                Some(ScanItem::Problem(e)) => self.scan_problem(e),
                None if !self.checking.is_empty() || self.links.waiting() > 0 => {
                    self.scan_exhausted = true;
                    break;
                }
                None => self.scan_ended(&mut entries)?,
            }
            if self.scan_done || self.session.outstanding() + self.held >= self.window {
                break;
            }
            match self.scanned.pop_front() {
                Some(next) => item = Some(next),
                None => break,
            }
        }
        if !entries.is_empty() {
            let _ = self.out_tx.send(entries);
        }
        Ok(())
    }

    /// Announces one entry (unless it is another name of a multiply-linked file whose first
    /// name is still in flight: it then waits in `links`).
    fn announce_entry(&mut self, entry: ScanEntry, entries: &mut Vec<Message>) {
        let Some((entry, first_of)) = self.links.admit(entry) else {
            return;
        };
        let id = self.session.announce(entry.kind);
        if let Some(key) = first_of {
            self.links.announced(id, key, &entry);
        }
        let summary = &mut *self.summary;
        match entry.kind {
            EntryKind::File => {
                summary.files_total += 1;
                summary.bytes_total += entry.size;
            }
            EntryKind::Dir => summary.dirs += 1,
            EntryKind::Symlink => summary.symlinks += 1,
            EntryKind::HardLink => summary.hard_links += 1,
            _ => summary.specials += 1,
        }
        if self.opts.owners
            && let Some(names) = self
                .name_table
                .names_for(entry.uid, entry.gid, &entry.xattrs)
        {
            entries.push(Message::Names(names));
        }
        self.pending.insert(
            id,
            Pending {
                source: read::SourceFile {
                    path: entry.source,
                    // Only a file is opened again; a directory's handle is not
                    // held for nothing while the entry is in flight.
                    dir: if entry.kind == EntryKind::File {
                        entry.dir
                    } else {
                        None
                    },
                },
                rel: if self.opts.list_files {
                    entry.rel.clone()
                } else {
                    Vec::new()
                },
                kind: entry.kind,
                size: entry.size,
                mtime: (entry.meta.mtime_sec, entry.meta.mtime_nsec),
            },
        );
        entries.push(Message::Entry(Entry {
            id,
            kind: entry.kind,
            path: Bytes::from(entry.rel),
            size: entry.size,
            meta: entry.meta,
            link_target: Bytes::from(entry.link_target),
            uid: entry.uid,
            gid: entry.gid,
            rdev: entry.rdev,
            source_stamp: entry.stamp,
            xattrs: entry.xattrs,
        }));
    }

    /// Asks the receiver whether it holds a run of files exactly as they are; they are held
    /// until it answers.
    fn check_run(&mut self, run: QuickRun, entries: &mut Vec<Message>) {
        // The receiver compares owners by the sender's numbers: it
        // needs their names first.
        if self.opts.owners {
            for file in &run.files {
                if let Some(names) = self.name_table.names_for(file.uid, file.gid, &[]) {
                    entries.push(Message::Names(names));
                }
            }
        }
        let id = self.session.announce(EntryKind::Dir);
        let name = |e: &ScanEntry| Bytes::copy_from_slice(dir_and_name(&e.rel).1);
        let (first, last) = match (run.files.first(), run.files.last()) {
            (Some(first), Some(last)) => (name(first), name(last)),
            _ => unreachable!("a run holds at least {MIN_QUICK_RUN} files"),
        };
        entries.push(Message::QuickCheck(QuickCheck {
            id,
            dir: Bytes::copy_from_slice(&run.dir),
            first,
            last,
            files: run.files.len() as u64,
            digest: run.digest.digest(),
        }));
        self.held += run.files.len();
        self.checking.insert(id, run);
    }

    /// Something of the source the scan could not read or take.
    fn scan_problem(&mut self, e: ScanError) {
        if matches!(e, ScanError::Io { .. }) {
            self.summary.files_failed += 1;
            // Something of the source could not be read: a mirror must
            // not delete on the strength of an incomplete listing.
            self.source_incomplete = true;
        }
        self.problem(e.path().display().to_string(), e.to_string());
    }

    /// The scan is over and nothing it found waits any more: the entries end (after the
    /// `--delete` listing, if asked for).
    fn scan_ended(&mut self, entries: &mut Vec<Message>) -> Result<(), EngineError> {
        self.scan_done = true;
        let summary = &*self.summary;
        if summary.files_total + summary.dirs + summary.symlinks == 0 {
            return Err(EngineError::Source {
                path: self.source.to_path_buf(),
                message: summary
                    .errors
                    .first()
                    .map_or_else(|| "nothing to copy".to_string(), |p| p.message.clone()),
            });
        }
        if self.opts.delete {
            // The deletion runs once every entry is resolved.
            self.prune_waiting = true;
        } else {
            self.session.end_of_entries();
            entries.push(Message::EndOfEntries);
        }
        Ok(())
    }

    /// A note from a worker (a data stream's failure is [`Self::stream_failed`]).
    fn note(&mut self, note: Option<WorkerNote>) {
        match note {
            Some(WorkerNote::Control(msgs)) => {
                let _ = self.out_tx.send(msgs);
            }
            Some(WorkerNote::SourceFailed { id, path, message }) => {
                self.source_failed.insert(id);
                let _ = self
                    .out_tx
                    .send(vec![Message::SourceFailed(haul_proto::SourceFailed {
                        id,
                        message: message.clone(),
                    })]);
                self.problem(path, message);
            }
            // A failed stream ends the session: see `stream_failed`.
            Some(WorkerNote::StreamFailed(_)) | None => {}
        }
    }

    /// A data stream failed: the session cannot complete. A receiver that stopped for a full
    /// disk closes the link right after saying so; when the data stream notices first, that
    /// message (exit 3, resumable) is what the operator needs, not the closed stream.
    async fn stream_failed(&mut self, e: std::io::Error) -> EngineError {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        while let Ok(Some(Ok(Some(msg)))) =
            tokio::time::timeout_at(deadline, next_of(&mut self.inbox, || self.in_rx.recv())).await
        {
            if let Message::Failed(failed) = msg
                && failed.no_space
            {
                let done = Progress::get(&self.progress.bytes_done);
                return EngineError::NoSpace {
                    path: failed.message,
                    bytes_remaining: self.summary.bytes_total.saturating_sub(done),
                };
            }
        }
        EngineError::connection("a data stream failed", e)
    }

    /// Handles `first` and every answer that has arrived after it before anything else: one
    /// turn of the loop per answer cost more than handling it on a re-run. Breaks when the
    /// receiver has finished.
    fn answers(&mut self, first: Option<Received>) -> Result<ControlFlow<()>, EngineError> {
        let mut next = Some(first);
        while let Some(msg) = next {
            let msg = match msg {
                Some(Ok(Some(msg))) => msg,
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(None)) | None => {
                    return Err(EngineError::Protocol(
                        "the receiver ended the session before every file was resolved".into(),
                    ));
                }
            };
            if self.answer(msg)?.is_break() {
                return Ok(ControlFlow::Break(()));
            }
            next = self.inbox.pop_front().map(Some);
        }
        Ok(ControlFlow::Continue(()))
    }

    /// One answer from the receiver.
    fn answer(&mut self, msg: Message) -> Result<ControlFlow<()>, EngineError> {
        self.session.handle(&msg)?;
        match msg {
            Message::Have(have) => self.have(have),
            Message::Need(need) => self.need(need),
            Message::Installed(done) => self.installed(done),
            Message::QuickChecked(answer) => self.quick_checked(answer),
            Message::Failed(failed) => self.failed(failed)?,
            Message::Deleted(deleted) => self.deleted(deleted),
            Message::Finished(finished) => {
                self.summary.not_applied = finished.not_applied.into();
                return Ok(ControlFlow::Break(()));
            }
            Message::Abort(abort) => return Err(EngineError::PeerAborted(abort.message)),
            other => {
                return Err(EngineError::Protocol(format!(
                    "unexpected {} on the control stream",
                    other.name()
                )));
            }
        }
        Ok(ControlFlow::Continue(()))
    }

    /// Chunk hashes the receiver holds of a file, kept until its `Need`.
    fn have(&mut self, have: Have) {
        let Some(p) = self.pending.get(&have.id) else {
            return;
        };
        let count = ChunkLayout::new(p.size, self.opts.chunk_size).count();
        // Under --checksum nothing is taken on trust: every chunk is read.
        let trusted = have.journaled && !self.opts.checksum;
        self.haves
            .entry(have.id)
            .or_default()
            .add(have.start, &have.hashes, trusted, count);
    }

    /// The chunks the receiver lacks of a file: the file goes to the workers.
    fn need(&mut self, need: Need) {
        let Some(p) = self.pending.get(&need.id) else {
            return;
        };
        let layout = ChunkLayout::new(p.size, self.opts.chunk_size);
        for &(start, n) in &need.ranges {
            let end = start.saturating_add(n).min(layout.count());
            for index in start..end {
                self.needed_bytes += layout.len(index).map_or(0, u64::from);
            }
        }
        let (needed_bytes, welcome) = (self.needed_bytes, self.welcome);
        if !self.warned_space && !self.opts.dry_run && needed_bytes > welcome.free_bytes {
            self.warned_space = true;
            (self.events)(Event::Warning {
                message: format!(
                    "the target has {} bytes free but at least {needed_bytes} must be \
                     written: it will run out of space. The run continues and pauses \
                     (exit 3) when the disk is full; expand the storage first to avoid it",
                    welcome.free_bytes
                ),
            });
        }
        let have = self.haves.remove(&need.id).unwrap_or_default();
        let file = Arc::new(FileJob::new(
            need.id,
            p.source.clone(),
            layout,
            have,
            p.mtime,
            &need.ranges,
            self.opts.dry_run,
        ));
        // Every chunk is read and hashed (the whole-file hash needs them
        // all); only those the receiver lacks are sent.
        let count = layout.count();
        let mut at = 0;
        while at < count {
            let stop = (at + CHUNKS_PER_JOB).min(count);
            let _ = self.job_tx.try_send(ReadJob {
                file: file.clone(),
                start: at,
                end: stop,
            });
            at = stop;
        }
    }

    /// An entry is in place.
    fn installed(&mut self, done: Installed) {
        if done.meta_only {
            self.summary.meta_only_changes += 1;
        }
        self.links.installed(done.id, &mut self.scanned);
        if let Some(p) = self.pending.remove(&done.id)
            && p.kind == EntryKind::File
        {
            if done.unchanged {
                self.summary.files_unchanged += 1;
            }
            self.summary.files_transferred += 1;
            Progress::add(&self.progress.files_done, 1);
            Progress::add(&self.progress.bytes_done, p.size);
            if self.opts.list_files {
                (self.events)(Event::FileInstalled {
                    path: String::from_utf8_lossy(&p.rel).into_owned(),
                    bytes: p.size,
                    blake3: haul_manifest::to_hex(&done.hash),
                });
            }
        }
    }

    /// The answer to a quick check: the run is done, or its files go one by one.
    fn quick_checked(&mut self, answer: QuickChecked) {
        let Some(run) = self.checking.remove(&answer.id) else {
            return;
        };
        self.held -= run.files.len();
        self.quick.answered(answer.unchanged);
        if answer.unchanged {
            let files = run.files.len() as u64;
            let bytes: u64 = run.files.iter().map(|f| f.size).sum();
            let summary = &mut *self.summary;
            summary.files_total += files;
            summary.bytes_total += bytes;
            summary.files_unchanged += files;
            summary.files_unchanged_by_run += files;
            summary.files_transferred += files;
            Progress::add(&self.progress.files_done, files);
            Progress::add(&self.progress.bytes_done, bytes);
        } else {
            // The target differs somewhere in the run: its files are
            // announced one by one, next, and each is checked on its own.
            run.announce_singly(&mut self.scanned);
        }
    }

    /// An entry the receiver could not install; out of space ends the run.
    fn failed(&mut self, failed: Failed) -> Result<(), EngineError> {
        let p = self.pending.remove(&failed.id);
        // The group's next name becomes its first: sent as a file.
        self.links.failed(failed.id, &mut self.scanned);
        if failed.no_space {
            let path = failed.message.clone();
            let done = Progress::get(&self.progress.bytes_done);
            return Err(EngineError::NoSpace {
                path,
                bytes_remaining: self.summary.bytes_total.saturating_sub(done),
            });
        }
        self.summary.files_failed += 1;
        // A file whose source could not be read was reported already.
        if !self.source_failed.remove(&failed.id) {
            let path = p
                .map(|p| p.source.path.display().to_string())
                .unwrap_or_default();
            self.problem(path, failed.message);
        }
        Ok(())
    }

    /// What `--delete` removed (or, in a dry run, would remove); the last ends the entries.
    fn deleted(&mut self, deleted: Deleted) {
        for path in &deleted.paths {
            let path = String::from_utf8_lossy(path).into_owned();
            if self.opts.list_files || self.opts.dry_run {
                (self.events)(Event::Deleted {
                    path: path.clone(),
                    dry_run: self.opts.dry_run,
                });
            }
            self.summary.deleted.push(path);
        }
        if deleted.done {
            self.summary.deleted_total = deleted.total;
            if !deleted.refused.is_empty() {
                self.problem(self.source.display().to_string(), deleted.refused);
            }
            self.session.end_of_entries();
            let _ = self.out_tx.send(vec![Message::EndOfEntries]);
        }
    }

    /// Reports a problem with one path, and lists it in the summary.
    fn problem(&mut self, path: String, message: String) {
        (self.events)(Event::FileFailed {
            path: path.clone(),
            message: message.clone(),
        });
        self.summary.errors.push(FileProblem { path, message });
    }
}

/// The next item of a channel of batches: from the batch taken last, else from the next one
/// `recv` yields. Cancel safe when `recv` is (a batch is moved into `buf` in the same poll
/// that receives it).
async fn next_of<T, F>(buf: &mut VecDeque<T>, recv: impl FnOnce() -> F) -> Option<T>
where
    F: Future<Output = Option<Vec<T>>>,
{
    if let Some(item) = buf.pop_front() {
        return Some(item);
    }
    buf.extend(recv().await?);
    buf.pop_front()
}
