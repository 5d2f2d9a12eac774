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

mod bwlimit;
mod pool;
mod read;
mod uring;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use haul_manifest::{QuickDigest, ScanEntry, ScanError};
use haul_proto::{
    ChunkLayout, ClientSession, Entry, EntryKind, Hello, Limits, Message, PROTOCOL_VERSION,
    QuickCheck,
};
use tokio::sync::mpsc;

use crate::compress::Compression;
use crate::error::EngineError;
use crate::idmap::{IdMap, IdSet};
use crate::progress::{Event, EventSink, FileProblem, Progress, RenamedAside, Summary};
use crate::transport::Link;
use crate::wire::{FramedRecv, FramedSend};
use read::{CHUNKS_PER_JOB, FileJob, ReadJob, Worker, WorkerNote};

/// How a transfer is shaped. Defaults win without tuning.
#[derive(Clone, Debug)]
pub struct TransferOptions {
    /// Chunk size in bytes, a power of two (default 4 MiB).
    pub chunk_size: u32,
    /// Parallel data streams (default 4).
    pub streams: usize,
    /// Read/hash threads (default: the number of cores, at least 2).
    pub readers: usize,
    /// Entries announced and not yet resolved, at most.
    pub window: usize,
    /// Emit an [`Event::FileInstalled`] for every file, with its verified hash.
    pub list_files: bool,
    /// Compare files by hash even when size and mtime match (adopts a copy made by another
    /// tool without sending what it already holds).
    pub checksum: bool,
    /// Plan only: report what would be sent, change nothing.
    pub dry_run: bool,
    /// Directories under the destination to rename aside and copy anew.
    pub rename_aside: Vec<Vec<u8>>,
    /// `copy` only: run the embedded receiver over loopback QUIC (with TLS) instead of in
    /// this process, to measure or test the network path without a server.
    pub via_quic: bool,
    /// zstd-compress chunk data on the wire (default [`Compression::Auto`]). Chunk hashes
    /// always cover the uncompressed data.
    pub compress: Compression,
    /// Most bytes per second of chunk data put on the wire, over all streams (`None`: as fast
    /// as the link allows).
    pub bwlimit: Option<u64>,
    /// Send owners and groups and ask the receiver to keep them (default on; applied where
    /// the receiver's grant allows it).
    pub owners: bool,
    /// Owners as numbers only, not mapped through user and group names.
    pub numeric_ids: bool,
    /// Send extended attributes and POSIX ACLs (default on).
    pub xattrs: bool,
    /// Copy hard links as links (default on): each multiply-linked file is sent once.
    pub hard_links: bool,
    /// Mirror: remove what the destination holds beyond the source, after the copy.
    pub delete: bool,
    /// With `delete`, also remove what the filter excludes.
    pub delete_excluded: bool,
    /// With `delete`, refuse to remove more than this many entries (nothing is removed then).
    pub max_delete: Option<u64>,
    /// Which entries of the source to copy.
    pub filter: Option<Arc<haul_manifest::Filter>>,
    /// Do not cross into other file systems below the source.
    pub one_file_system: bool,
    /// The job this transfer works for, as named when it took a lease on the destination: a
    /// receiver refuses writes into a leased subtree from anyone but its holder.
    pub holder: Option<String>,
}

impl Default for TransferOptions {
    fn default() -> Self {
        TransferOptions {
            chunk_size: haul_proto::DEFAULT_CHUNK_SIZE,
            streams: 4,
            readers: crate::cores().max(2),
            window: 8192,
            list_files: false,
            checksum: false,
            dry_run: false,
            rename_aside: Vec::new(),
            via_quic: false,
            compress: Compression::Auto,
            bwlimit: None,
            owners: true,
            numeric_ids: false,
            xattrs: true,
            hard_links: true,
            delete: false,
            delete_excluded: false,
            max_delete: None,
            filter: None,
            one_file_system: false,
            holder: None,
        }
    }
}

/// What to send and where.
#[derive(Clone, Debug)]
pub struct SendRequest {
    /// The file or tree to send.
    pub source: PathBuf,
    /// The destination path under the receiver's root (`/`-separated bytes).
    pub dest: Vec<u8>,
    /// The token proving we may write there.
    pub token: Vec<u8>,
    /// Shape of the transfer.
    pub options: TransferOptions,
}

/// Scan items per batch handed from the scanner thread to the control loop.
const SCAN_BATCH: usize = 256;

/// Files in one directory run (see [`QuickRun`]) at least this many to be checked as one.
const MIN_QUICK_RUN: usize = 16;
/// At most this many files are checked as one run: they are held meanwhile, and count
/// against the window as entries.
const MAX_QUICK_RUN: usize = 1024;

enum ScanItem {
    Entry(ScanEntry),
    Problem(ScanError),
    /// Files of one directory to be quick-checked as one before being announced.
    Run(QuickRun),
}

impl ScanItem {
    /// Entries the item stands for.
    fn entries(&self) -> usize {
        match self {
            ScanItem::Run(run) => run.files.len(),
            ScanItem::Entry(_) | ScanItem::Problem(_) => 1,
        }
    }
}

/// A run of regular files of one directory, consecutive in the scan's name order with nothing
/// else of that directory between them but subdirectories (every non-directory name between
/// the first and the last is in it), with their quick-check digest.
struct QuickRun {
    /// The directory, relative to the source root.
    dir: Vec<u8>,
    files: Vec<ScanEntry>,
    digest: QuickDigest,
}

/// Groups the scan's files into [`QuickRun`]s on the scanner thread.
#[derive(Default)]
struct RunBuilder {
    dir: Vec<u8>,
    files: Vec<ScanEntry>,
    digest: QuickDigest,
    /// The digest covers owners (the receiver applies them).
    owners: bool,
    /// The permission bits the receiver compares.
    mode_mask: u32,
    /// Multiply-linked files go one by one (they may become links).
    hard_links: bool,
}

impl RunBuilder {
    fn new(owners: bool, privileged: bool, hard_links: bool) -> RunBuilder {
        RunBuilder {
            owners,
            mode_mask: if privileged { 0o7777 } else { 0o1777 },
            hard_links,
            ..RunBuilder::default()
        }
    }

    /// Takes a scanned item; pushes what is complete to `out`.
    fn push(&mut self, item: Result<ScanEntry, ScanError>, out: &mut Vec<ScanItem>) {
        let entry = match item {
            // A file with attributes, or another name of a multiply-linked file, is checked on
            // its own: a run's digest covers neither.
            Ok(entry)
                if entry.kind == EntryKind::File
                    && !entry.rel.is_empty()
                    && entry.xattrs.is_empty()
                    && !(self.hard_links && entry.nlink > 1) =>
            {
                entry
            }
            Ok(entry) => {
                self.flush(out);
                return out.push(ScanItem::Entry(entry));
            }
            Err(e) => {
                // A problem breaks the run: its name lies between the runs around it.
                self.flush(out);
                return out.push(ScanItem::Problem(e));
            }
        };
        let (dir, name) = dir_and_name(&entry.rel);
        if self.files.len() >= MAX_QUICK_RUN || (!self.files.is_empty() && self.dir != dir) {
            self.flush(out);
        }
        if self.files.is_empty() {
            self.dir.clear();
            self.dir.extend_from_slice(dir);
        }
        let meta = &entry.meta;
        // The mode as the receiver's per-file check compares it.
        self.digest.add_owned(
            name,
            entry.size,
            meta.mtime_sec,
            meta.mtime_nsec,
            meta.mode & self.mode_mask,
            self.owners.then_some((entry.uid, entry.gid)),
        );
        self.files.push(entry);
    }

    /// Ends the run being built: as a run if it is long enough, else as single entries.
    fn flush(&mut self, out: &mut Vec<ScanItem>) {
        let digest = std::mem::take(&mut self.digest);
        if self.files.len() >= MIN_QUICK_RUN {
            out.push(ScanItem::Run(QuickRun {
                dir: self.dir.clone(),
                files: std::mem::take(&mut self.files),
                digest,
            }));
        } else {
            out.extend(self.files.drain(..).map(ScanItem::Entry));
        }
    }
}

/// A relative path's directory (empty at the top) and last name.
fn dir_and_name(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(at) => (&rel[..at], &rel[at + 1..]),
        None => (&[], rel),
    }
}

impl QuickRun {
    /// Puts the run's files at the front of `scanned`, in order, to be announced one by one
    /// next.
    fn announce_singly(self, scanned: &mut VecDeque<ScanItem>) {
        for file in self.files.into_iter().rev() {
            scanned.push_front(ScanItem::Entry(file));
        }
    }
}

/// When quick checks pay: on a re-run most runs are unchanged and one message stands for a
/// run of files; on a fresh copy every check fails and costs a round trip before the files
/// go. After a streak of failed checks, runs are announced file by file for a while (longer
/// each time), then tried again.
struct QuickPolicy {
    enabled: bool,
    misses_in_row: u32,
    skip: u64,
    backoff: u64,
}

impl QuickPolicy {
    const STREAK: u32 = 8;
    const FIRST_BACKOFF: u64 = 8;
    const MAX_BACKOFF: u64 = 1024;

    fn new(opts: &TransferOptions) -> QuickPolicy {
        QuickPolicy {
            // --checksum trusts no size and mtime; a dry run, --list-files (which prints every
            // file's hash) and renamed-aside directories need each file's own answer.
            enabled: !opts.checksum
                && !opts.dry_run
                && !opts.list_files
                && opts.rename_aside.is_empty(),
            misses_in_row: 0,
            skip: 0,
            backoff: Self::FIRST_BACKOFF,
        }
    }

    /// Whether to check the next run as one.
    fn check_next(&mut self) -> bool {
        if !self.enabled {
            return false;
        }
        if self.skip > 0 {
            self.skip -= 1;
            return false;
        }
        true
    }

    fn answered(&mut self, unchanged: bool) {
        if unchanged {
            self.misses_in_row = 0;
            self.backoff = Self::FIRST_BACKOFF;
            return;
        }
        self.misses_in_row += 1;
        if self.misses_in_row >= Self::STREAK {
            self.misses_in_row = 0;
            self.skip = self.backoff;
            self.backoff = (self.backoff * 2).min(Self::MAX_BACKOFF);
        }
    }
}

/// The names of one multiply-linked file met so far.
struct LinkGroup {
    /// The first name (sent as a file), relative to the source root; taken into `installed`
    /// once it is.
    rel: Vec<u8>,
    /// The first name, once the receiver has installed it: later names link to it.
    installed: Option<Vec<u8>>,
    /// Names met while the first was still in flight.
    waiting: Vec<ScanEntry>,
    /// Names announced so far; at `nlink` the group is complete and forgotten.
    seen: u64,
    nlink: u64,
}

fn flag(on: bool, bit: u32) -> u32 {
    if on { bit } else { 0 }
}

/// The `--delete` listing: every source directory's names, sent as `Prune` lists, then
/// `PruneEnd`. Returns the first problem instead, having sent no `PruneEnd` (the receiver then
/// deletes nothing).
fn walk_for_delete(
    source: &std::path::Path,
    options: &haul_manifest::ScanOptions,
    out: &mpsc::UnboundedSender<Vec<Message>>,
) -> Option<String> {
    for dir in haul_manifest::walk_names(source, options) {
        let dir = match dir {
            Ok(dir) => dir,
            Err(e) => return Some(e.to_string()),
        };
        let mut msgs = Vec::new();
        let mut names = dir.names.into_iter().map(Bytes::from).peekable();
        loop {
            let part: Vec<Bytes> = names
                .by_ref()
                .take(haul_proto::Prune::MAX_NAMES as usize)
                .collect();
            let last = names.peek().is_none();
            msgs.push(Message::Prune(haul_proto::Prune {
                dir: Bytes::copy_from_slice(&dir.rel),
                names: part,
                last,
            }));
            if last {
                break;
            }
        }
        if out.send(msgs).is_err() {
            return Some("the session ended during the --delete listing".into());
        }
    }
    let _ = out.send(vec![Message::PruneEnd]);
    None
}

struct Pending {
    /// Where to read it (a directory handle only for files: see [`ScanEntry::dir`]).
    source: read::SourceFile,
    rel: Vec<u8>,
    kind: EntryKind,
    size: u64,
    /// The mtime announced (what the receiver's journal of this file is keyed on).
    mtime: (i64, u32),
}

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

/// The hello that asks a receiver for a session shaped by `opts`. A pulling client sends the
/// same hello with [`Hello::PULL`] and the serving host turns it back into options
/// ([`options_from_hello`]), so both directions agree on every option.
pub(crate) fn hello_for(opts: &TransferOptions, token: &[u8], dest: &[u8]) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        token: Bytes::copy_from_slice(token),
        dest: Bytes::copy_from_slice(dest),
        chunk_size: opts.chunk_size,
        flags: flag(opts.checksum, Hello::CHECKSUM)
            | flag(opts.dry_run, Hello::DRY_RUN)
            | flag(opts.compress != Compression::Off, Hello::COMPRESS)
            | flag(opts.owners, Hello::OWNERS)
            | flag(opts.numeric_ids, Hello::NUMERIC_IDS)
            | flag(opts.xattrs, Hello::XATTRS)
            | flag(opts.delete, Hello::DELETE)
            | flag(opts.delete && opts.delete_excluded, Hello::DELETE_EXCLUDED)
            | flag(!opts.hard_links, Hello::NO_HARD_LINKS)
            | flag(opts.one_file_system, Hello::ONE_FILE_SYSTEM),
        rename_aside: opts
            .rename_aside
            .iter()
            .map(|d| Bytes::from(d.clone()))
            .collect(),
        filters: opts
            .filter
            .as_ref()
            .map(|f| f.to_rules().into_iter().map(Bytes::from).collect())
            .unwrap_or_default(),
        max_delete: opts.max_delete.unwrap_or(u64::MAX),
        holder: Bytes::copy_from_slice(opts.holder.as_deref().unwrap_or_default().as_bytes()),
        snapshot: Bytes::new(),
    }
}

/// The options a pulling client asked for in its hello, for the serving host's sender. What
/// only the sending host can choose (streams, readers, window) keeps its default.
pub(crate) fn options_from_hello(hello: &Hello) -> Result<TransferOptions, String> {
    let filter = if hello.filters.is_empty() {
        None
    } else {
        let rules = hello.filters.iter().map(|r| r.to_vec()).collect::<Vec<_>>();
        Some(Arc::new(
            haul_manifest::Filter::from_rules(&rules)
                .map_err(|e| format!("filter rules refused: {e}"))?,
        ))
    };
    Ok(TransferOptions {
        chunk_size: hello.chunk_size,
        checksum: hello.has(Hello::CHECKSUM),
        dry_run: hello.has(Hello::DRY_RUN),
        compress: if hello.has(Hello::COMPRESS) {
            Compression::Auto
        } else {
            Compression::Off
        },
        owners: hello.has(Hello::OWNERS),
        numeric_ids: hello.has(Hello::NUMERIC_IDS),
        xattrs: hello.has(Hello::XATTRS),
        delete: hello.has(Hello::DELETE),
        delete_excluded: hello.has(Hello::DELETE_EXCLUDED),
        hard_links: !hello.has(Hello::NO_HARD_LINKS),
        one_file_system: hello.has(Hello::ONE_FILE_SYSTEM),
        rename_aside: hello.rename_aside.iter().map(|d| d.to_vec()).collect(),
        max_delete: (hello.max_delete != u64::MAX).then_some(hello.max_delete),
        filter,
        ..TransferOptions::default()
    })
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
            &request.dest,
        )))
        .await
        .map_err(|e| EngineError::connection("cannot send the hello", e))?;
    let mut session = ClientSession::new();
    let answer = ctl_rx.next().await?.ok_or_else(|| {
        EngineError::Protocol("the receiver closed the connection without answering".into())
    })?;
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
    // Entries travel in batches: one item at a time through a full channel woke this thread
    // and the control loop once per file.
    let (scan_tx, mut scan_rx) = mpsc::channel::<Vec<ScanItem>>(8);
    let source = request.source.clone();
    let scan_progress = progress.clone();
    let scan_options = haul_manifest::ScanOptions {
        xattrs: opts.xattrs,
        filter: opts.filter.clone(),
        one_file_system: opts.one_file_system,
    };
    let mut runs = RunBuilder::new(
        opts.owners && welcome.privileged,
        welcome.privileged,
        opts.hard_links,
    );
    let walk_options = scan_options.clone();
    let scanner = std::thread::Builder::new()
        .name("haul-scan".into())
        .spawn(move || {
            let mut batch = Vec::with_capacity(SCAN_BATCH);
            let mut weight = 0;
            for item in haul_manifest::scan_with(&source, &scan_options) {
                if let Ok(entry) = &item
                    && entry.kind == EntryKind::File
                {
                    Progress::add(&scan_progress.files_scanned, 1);
                    Progress::add(&scan_progress.bytes_scanned, entry.size);
                }
                let before = batch.len();
                runs.push(item, &mut batch);
                // A batch is full by the entries it holds, runs counted by their files: the
                // channel's few batches must not hold a million entries.
                weight += batch[before..].iter().map(ScanItem::entries).sum::<usize>();
                if weight >= SCAN_BATCH {
                    weight = 0;
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(SCAN_BATCH));
                    if scan_tx.blocking_send(full).is_err() {
                        return;
                    }
                }
            }
            runs.flush(&mut batch);
            if !batch.is_empty() && scan_tx.blocking_send(batch).is_err() {
                return;
            }
            scan_progress
                .scan_done
                .store(true, std::sync::atomic::Ordering::Relaxed);
        })
        .map_err(|e| EngineError::connection("cannot start the scanner thread", e))?;

    // Control writer: coalesces small messages into few writes. Messages travel in batches
    // (the entries of one scan batch, the notes of one worker flush): one channel send and
    // one wake-up per message cost more than encoding it on a no-change re-run.
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

    // Control reader: its own task so that reading never waits on writing.
    // Messages are passed on in batches of what has arrived, so a burst of answers about
    // small files wakes the control loop once.
    let (in_tx, mut in_rx) = mpsc::unbounded_channel::<Vec<_>>();
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
    let mut inbox = VecDeque::new();
    let mut scanned = VecDeque::new();

    // Read/hash workers and data stream writers.
    let (job_tx, job_rx) = async_channel::unbounded::<ReadJob>();
    let (frame_tx, frame_rx) = async_channel::bounded::<(Bytes, Bytes)>(opts.streams * 2);
    let (note_tx, mut note_rx) = mpsc::unbounded_channel::<WorkerNote>();
    // Enough free buffers for what QUIC holds unacknowledged plus the frames queued for it.
    let buffers = pool::BufferPool::new(32);
    let held_buffers = pool::BufferPool::limited(read::MAX_HELD_BUFFERS);
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
    // Hashes the receiver holds per file, collected until its `Need` arrives.
    let mut haves: IdMap<read::Held> = IdMap::default();
    let mut needed_bytes = 0u64;
    let mut warned_space = false;
    let mut pending: IdMap<Pending> = IdMap::default();
    let mut source_failed = IdSet::default();
    let mut scan_done = false;
    // Runs being quick-checked, by check id, and how many files they hold.
    let mut checking: IdMap<QuickRun> = IdMap::default();
    let mut held = 0usize;
    let mut quick = QuickPolicy::new(&opts);
    // Hard links: groups by (dev, ino) of multiply-linked files, and the first name's id.
    let mut links: HashMap<(u64, u64), LinkGroup> = HashMap::new();
    let mut link_of: IdMap<(u64, u64)> = IdMap::default();
    // Names waiting for their group's first file to be installed.
    let mut links_waiting = 0usize;
    let mut name_table = crate::owners::NameTable::default();
    // --delete: the scan is done and the deletion waits for every entry to be resolved; then
    // the listing walk runs (and reports here when it is done).
    let mut source_incomplete = false;
    let mut prune_waiting = false;
    let mut prune_walk: Option<tokio::sync::oneshot::Receiver<Option<String>>> = None;
    // The scanner has ended but runs are still being checked: their files may yet have to be
    // announced, so the end of the entries waits for their answers.
    let mut scan_exhausted = false;
    let window = opts.window.max(1);
    let result: Result<(), EngineError> = async {
        loop {
            if prune_waiting && session.outstanding() == 0 && held == 0 && links_waiting == 0 {
                prune_waiting = false;
                if source_incomplete {
                    problem(&mut summary, &events, request.source.display().to_string(),
                        "--delete skipped: part of the source could not be read (see above), so \
                         nothing was deleted; fix the source and run again".into());
                    session.end_of_entries();
                    let _ = out_tx.send(vec![Message::EndOfEntries]);
                } else {
                    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
                    let (source, walk_options, out) = (request.source.clone(), walk_options.clone(), out_tx.clone());
                    std::thread::Builder::new()
                        .name("haul-delete-walk".into())
                        .spawn(move || {
                            let _ = done_tx.send(walk_for_delete(&source, &walk_options, &out));
                        })
                        .map_err(|e| EngineError::connection("cannot start the --delete listing", e))?;
                    prune_walk = Some(done_rx);
                }
            }
            tokio::select! {
                walked = async { prune_walk.as_mut().expect("guarded").await }, if prune_walk.is_some() => {
                    prune_walk = None;
                    let problem_text = match walked {
                        Ok(None) => None,
                        Ok(Some(e)) => Some(e),
                        Err(_) => Some("the --delete listing stopped".into()),
                    };
                    if let Some(e) = problem_text {
                        // No PruneEnd was sent: the receiver deletes nothing.
                        problem(&mut summary, &events, request.source.display().to_string(),
                            format!("--delete skipped, nothing was deleted: {e}"));
                        session.end_of_entries();
                        let _ = out_tx.send(vec![Message::EndOfEntries]);
                    }
                }
                item = next_of(&mut scanned, || scan_rx.recv()),
                    if !scan_done
                        && (!scan_exhausted
                            || !scanned.is_empty()
                            || (checking.is_empty() && links_waiting == 0))
                        && session.outstanding() + held < window => {
                    // Announce every scanned entry the window has room for before looking at
                    // anything else, and send their Entry messages as one batch.
                    let mut entries = Vec::new();
                    let mut item = item;
                    loop {
                        match item {
                            Some(ScanItem::Entry(mut entry)) => 'entry: {
                                // A multiply-linked file: its first name is sent as a file, the
                                // others as links to it once it is installed.
                                let mut first_of = None;
                                if opts.hard_links && entry.kind == EntryKind::File && entry.nlink > 1 {
                                    let key = (entry.dev, entry.ino);
                                    match links.get_mut(&key) {
                                        None => first_of = Some(key),
                                        Some(group) => match &group.installed {
                                            Some(first) => {
                                                entry.link_target = first.clone();
                                                entry.kind = EntryKind::HardLink;
                                                entry.size = 0;
                                                entry.xattrs.clear();
                                                group.seen += 1;
                                                if group.seen >= group.nlink {
                                                    links.remove(&key);
                                                }
                                            }
                                            None => {
                                                group.waiting.push(entry);
                                                links_waiting += 1;
                                                break 'entry;
                                            }
                                        },
                                    }
                                }
                                let id = session.announce(entry.kind);
                                if let Some(key) = first_of {
                                    links.insert(key, LinkGroup {
                                        rel: entry.rel.clone(),
                                        installed: None,
                                        waiting: Vec::new(),
                                        seen: 1,
                                        nlink: entry.nlink,
                                    });
                                    link_of.insert(id, key);
                                }
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
                                if opts.owners
                                    && let Some(names) = name_table.names_for(entry.uid, entry.gid, &entry.xattrs)
                                {
                                    entries.push(Message::Names(names));
                                }
                                pending.insert(id, Pending {
                                    source: read::SourceFile {
                                        path: entry.source,
                                        // Only a file is opened again; a directory's handle is not
                                        // held for nothing while the entry is in flight.
                                        dir: if entry.kind == EntryKind::File { entry.dir } else { None },
                                    },
                                    rel: if opts.list_files { entry.rel.clone() } else { Vec::new() },
                                    kind: entry.kind,
                                    size: entry.size,
                                    mtime: (entry.meta.mtime_sec, entry.meta.mtime_nsec),
                                });
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
                                    xattrs: entry.xattrs,
                                }));
                            }
                            Some(ScanItem::Run(run)) if quick.check_next() => {
                                // The receiver compares owners by the sender's numbers: it
                                // needs their names first.
                                if opts.owners {
                                    for file in &run.files {
                                        if let Some(names) = name_table.names_for(file.uid, file.gid, &[]) {
                                            entries.push(Message::Names(names));
                                        }
                                    }
                                }
                                let id = session.announce(EntryKind::Dir);
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
                                held += run.files.len();
                                checking.insert(id, run);
                            }
                            // Not checked: its files go one by one, next.
                            Some(ScanItem::Run(run)) => run.announce_singly(&mut scanned),
                            Some(ScanItem::Problem(e)) => {
                                if matches!(e, ScanError::Io { .. }) {
                                    summary.files_failed += 1;
                                    // Something of the source could not be read: a mirror must
                                    // not delete on the strength of an incomplete listing.
                                    source_incomplete = true;
                                }
                                problem(&mut summary, &events, e.path().display().to_string(), e.to_string());
                            }
                            None if !checking.is_empty() || links_waiting > 0 => {
                                scan_exhausted = true;
                                break;
                            }
                            None => {
                                scan_done = true;
                                if summary.files_total + summary.dirs + summary.symlinks == 0 {
                                    return Err(EngineError::Source {
                                        path: request.source.clone(),
                                        message: summary.errors.first().map_or_else(
                                            || "nothing to copy".to_string(),
                                            |p| p.message.clone(),
                                        ),
                                    });
                                }
                                if opts.delete {
                                    // The deletion runs once every entry is resolved.
                                    prune_waiting = true;
                                } else {
                                    session.end_of_entries();
                                    entries.push(Message::EndOfEntries);
                                }
                            }
                        }
                        if scan_done || session.outstanding() + held >= window {
                            break;
                        }
                        match scanned.pop_front() {
                            Some(next) => item = Some(next),
                            None => break,
                        }
                    }
                    if !entries.is_empty() {
                        let _ = out_tx.send(entries);
                    }
                }
                note = note_rx.recv() => match note {
                    Some(WorkerNote::Control(msgs)) => {
                        let _ = out_tx.send(msgs);
                    }
                    Some(WorkerNote::StreamFailed(e)) => {
                        // A receiver that stopped for a full disk closes the link right after
                        // saying so; when the data stream notices first, that message (exit 3,
                        // resumable) is what the operator needs, not the closed stream.
                        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
                        while let Ok(Some(Ok(Some(msg)))) = tokio::time::timeout_at(deadline, next_of(&mut inbox, || in_rx.recv())).await {
                            if let Message::Failed(failed) = msg && failed.no_space {
                                let done = Progress::get(&progress.bytes_done);
                                return Err(EngineError::NoSpace {
                                    path: failed.message,
                                    bytes_remaining: summary.bytes_total.saturating_sub(done),
                                });
                            }
                        }
                        return Err(EngineError::connection("a data stream failed", e));
                    }
                    Some(WorkerNote::SourceFailed { id, path, message }) => {
                        source_failed.insert(id);
                        let _ = out_tx.send(vec![Message::SourceFailed(haul_proto::SourceFailed {
                            id,
                            message: message.clone(),
                        })]);
                        problem(&mut summary, &events, path, message);
                    }
                    None => {}
                },
                msg = next_of(&mut inbox, || in_rx.recv()) => {
                    // Every answer that has arrived is handled before anything else: one turn
                    // of this loop per answer cost more than handling it on a re-run.
                    let more = std::iter::from_fn(|| inbox.pop_front().map(Some));
                    for msg in std::iter::once(msg).chain(more) {
                        let msg = match msg {
                            Some(Ok(Some(msg))) => msg,
                            Some(Err(e)) => return Err(e.into()),
                            Some(Ok(None)) | None => return Err(EngineError::Protocol(
                                "the receiver ended the session before every file was resolved".into(),
                            )),
                        };
                        session.handle(&msg)?;
                        match msg {
                            Message::Have(have) => {
                                let Some(p) = pending.get(&have.id) else { continue };
                                let count = ChunkLayout::new(p.size, opts.chunk_size).count();
                                // Under --checksum nothing is taken on trust: every chunk is read.
                                let trusted = have.journaled && !opts.checksum;
                                haves.entry(have.id).or_default().add(have.start, &have.hashes, trusted, count);
                            }
                            Message::Need(need) => {
                                let Some(p) = pending.get(&need.id) else { continue };
                                let layout = ChunkLayout::new(p.size, opts.chunk_size);
                                for &(start, n) in &need.ranges {
                                    let end = start.saturating_add(n).min(layout.count());
                                    for index in start..end {
                                        needed_bytes += layout.len(index).map_or(0, u64::from);
                                    }
                                }
                                if !warned_space && !opts.dry_run && needed_bytes > welcome.free_bytes {
                                    warned_space = true;
                                    events(Event::Warning { message: format!(
                                        "the target has {} bytes free but at least {needed_bytes} must be \
                                         written: it will run out of space. The run continues and pauses \
                                         (exit 3) when the disk is full; expand the storage first to avoid it",
                                        welcome.free_bytes
                                    )});
                                }
                                let have = haves.remove(&need.id).unwrap_or_default();
                                let file = Arc::new(FileJob::new(
                                    need.id,
                                    p.source.clone(),
                                    layout,
                                    have,
                                    p.mtime,
                                    &need.ranges,
                                    opts.dry_run,
                                ));
                                // Every chunk is read and hashed (the whole-file hash needs them
                                // all); only those the receiver lacks are sent.
                                let count = layout.count();
                                let mut at = 0;
                                while at < count {
                                    let stop = (at + CHUNKS_PER_JOB).min(count);
                                    let _ = job_tx.try_send(ReadJob { file: file.clone(), start: at, end: stop });
                                    at = stop;
                                }
                            }
                            Message::Installed(done) => {
                                if done.meta_only {
                                    summary.meta_only_changes += 1;
                                }
                                if let Some(key) = link_of.remove(&done.id)
                                    && let Some(group) = links.get_mut(&key)
                                {
                                    group.installed = Some(std::mem::take(&mut group.rel));
                                    links_waiting -= group.waiting.len();
                                    for entry in group.waiting.drain(..).rev() {
                                        scanned.push_front(ScanItem::Entry(entry));
                                    }
                                }
                                if let Some(p) = pending.remove(&done.id)
                                    && p.kind == EntryKind::File
                                {
                                    if done.unchanged {
                                        summary.files_unchanged += 1;
                                    }
                                    summary.files_transferred += 1;
                                    Progress::add(&progress.files_done, 1);
                                    Progress::add(&progress.bytes_done, p.size);
                                    if opts.list_files {
                                        events(Event::FileInstalled {
                                            path: String::from_utf8_lossy(&p.rel).into_owned(),
                                            bytes: p.size,
                                            blake3: haul_manifest::to_hex(&done.hash),
                                        });
                                    }
                                }
                            }
                            Message::QuickChecked(answer) => {
                                let Some(run) = checking.remove(&answer.id) else { continue };
                                held -= run.files.len();
                                quick.answered(answer.unchanged);
                                if answer.unchanged {
                                    let files = run.files.len() as u64;
                                    let bytes: u64 = run.files.iter().map(|f| f.size).sum();
                                    summary.files_total += files;
                                    summary.bytes_total += bytes;
                                    summary.files_unchanged += files;
                                    summary.files_unchanged_by_run += files;
                                    summary.files_transferred += files;
                                    Progress::add(&progress.files_done, files);
                                    Progress::add(&progress.bytes_done, bytes);
                                } else {
                                    // The target differs somewhere in the run: its files are
                                    // announced one by one, next, and each is checked on its own.
                                    run.announce_singly(&mut scanned);
                                }
                            }
                            Message::Failed(failed) => {
                                let p = pending.remove(&failed.id);
                                // The group's next name becomes its first: sent as a file.
                                if let Some(key) = link_of.remove(&failed.id)
                                    && let Some(group) = links.remove(&key)
                                {
                                    links_waiting -= group.waiting.len();
                                    for entry in group.waiting.into_iter().rev() {
                                        scanned.push_front(ScanItem::Entry(entry));
                                    }
                                }
                                if failed.no_space {
                                    let path = failed.message.clone();
                                    let done = Progress::get(&progress.bytes_done);
                                    return Err(EngineError::NoSpace {
                                        path,
                                        bytes_remaining: summary.bytes_total.saturating_sub(done),
                                    });
                                }
                                summary.files_failed += 1;
                                // A file whose source could not be read was reported already.
                                if !source_failed.remove(&failed.id) {
                                    let path = p.map(|p| p.source.path.display().to_string()).unwrap_or_default();
                                    problem(&mut summary, &events, path, failed.message);
                                }
                            }
                            Message::Deleted(deleted) => {
                                for path in &deleted.paths {
                                    let path = String::from_utf8_lossy(path).into_owned();
                                    if opts.list_files || opts.dry_run {
                                        events(Event::Deleted { path: path.clone(), dry_run: opts.dry_run });
                                    }
                                    summary.deleted.push(path);
                                }
                                if deleted.done {
                                    summary.deleted_total = deleted.total;
                                    if !deleted.refused.is_empty() {
                                        problem(&mut summary, &events, request.source.display().to_string(), deleted.refused);
                                    }
                                    session.end_of_entries();
                                    let _ = out_tx.send(vec![Message::EndOfEntries]);
                                }
                            }
                            Message::Finished(finished) => {
                                summary.not_applied = finished.not_applied.into();
                                return Ok(());
                            }
                            Message::Abort(abort) => return Err(EngineError::PeerAborted(abort.message)),
                            other => return Err(EngineError::Protocol(format!(
                                "unexpected {} on the control stream", other.name()
                            ))),
                        }
                    }
                }
            }
        }
    }
    .await;

    // Shut the pipeline down in order: no more jobs, workers drain, writers finish.
    job_tx.close();
    held_buffers.close();
    drop(scan_rx);
    if let Err(e) = &result {
        let _ = out_tx.send(vec![Message::Abort(haul_proto::Abort {
            message: e.to_string(),
        })]);
    }
    drop(out_tx);
    // Once `Finished` has arrived every file is installed: a stream that fails while closing
    // afterwards changes nothing.
    for writer in writers {
        let _ = writer.await;
    }
    let _ = ctl_writer.await;
    ctl_reader.abort();
    for worker in workers {
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

fn problem(summary: &mut Summary, events: &EventSink, path: String, message: String) {
    events(Event::FileFailed {
        path: path.clone(),
        message: message.clone(),
    });
    summary.errors.push(FileProblem { path, message });
}
