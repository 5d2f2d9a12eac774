//! The scan, on its own thread: walks the source in name order and hands the control loop
//! batches of [`ScanItem`]s. Regular files of one directory are grouped on the way into
//! [`QuickRun`]s that the receiver can check as one (one message for a run of unchanged files
//! on a re-run); [`QuickPolicy`] decides, on the control loop's side, when checking runs pays.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

use haul_manifest::{QuickDigest, ScanEntry, ScanError, ScanOptions};
use haul_proto::EntryKind;
use tokio::sync::mpsc;

use super::options::TransferOptions;
use crate::error::EngineError;
use crate::progress::Progress;

/// Scan items per batch handed from the scanner thread to the control loop.
const SCAN_BATCH: usize = 256;

/// Files in one directory run (see [`QuickRun`]) at least this many to be checked as one.
pub(super) const MIN_QUICK_RUN: usize = 16;
/// At most this many files are checked as one run: they are held meanwhile, and count
/// against the window as entries.
const MAX_QUICK_RUN: usize = 1024;

pub(super) enum ScanItem {
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
pub(super) struct QuickRun {
    /// The directory, relative to the source root.
    pub(super) dir: Vec<u8>,
    pub(super) files: Vec<ScanEntry>,
    pub(super) digest: QuickDigest,
}

/// Groups the scan's files into [`QuickRun`]s on the scanner thread.
#[derive(Default)]
pub(super) struct RunBuilder {
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
    pub(super) fn new(owners: bool, privileged: bool, hard_links: bool) -> RunBuilder {
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
pub(super) fn dir_and_name(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(at) => (&rel[..at], &rel[at + 1..]),
        None => (&[], rel),
    }
}

impl QuickRun {
    /// Puts the run's files at the front of `scanned`, in order, to be announced one by one
    /// next.
    pub(super) fn announce_singly(self, scanned: &mut VecDeque<ScanItem>) {
        for file in self.files.into_iter().rev() {
            scanned.push_front(ScanItem::Entry(file));
        }
    }
}

/// When quick checks pay: on a re-run most runs are unchanged and one message stands for a
/// run of files; on a fresh copy every check fails and costs a round trip before the files
/// go. After a streak of failed checks, runs are announced file by file for a while (longer
/// each time), then tried again.
pub(super) struct QuickPolicy {
    enabled: bool,
    misses_in_row: u32,
    skip: u64,
    backoff: u64,
}

impl QuickPolicy {
    const STREAK: u32 = 8;
    const FIRST_BACKOFF: u64 = 8;
    const MAX_BACKOFF: u64 = 1024;

    pub(super) fn new(opts: &TransferOptions) -> QuickPolicy {
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
    pub(super) fn check_next(&mut self) -> bool {
        if !self.enabled {
            return false;
        }
        if self.skip > 0 {
            self.skip -= 1;
            return false;
        }
        true
    }

    pub(super) fn answered(&mut self, unchanged: bool) {
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

/// What the scan reads of the source for a transfer shaped by `opts` (the `--delete` listing
/// walks with the same).
pub(super) fn options(opts: &TransferOptions) -> ScanOptions {
    ScanOptions {
        xattrs: opts.xattrs,
        filter: opts.filter.clone(),
        one_file_system: opts.one_file_system,
    }
}

/// Starts the scanner thread. Entries travel in batches: one item at a time through a full
/// channel woke this thread and the control loop once per file.
pub(super) fn start(
    source: PathBuf,
    scan_options: ScanOptions,
    mut runs: RunBuilder,
    scan_progress: Arc<Progress>,
) -> Result<(std::thread::JoinHandle<()>, mpsc::Receiver<Vec<ScanItem>>), EngineError> {
    let (scan_tx, scan_rx) = mpsc::channel::<Vec<ScanItem>>(8);
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
    Ok((scanner, scan_rx))
}
