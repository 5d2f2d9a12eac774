//! The sender's read/hash workers: blocking threads that read the chunks the receiver asked
//! for, hash them, and hand encoded frames to the stream writers. Hashing and disk reads never
//! run on the async threads that drive QUIC.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use haul_manifest::SparseMap;
use haul_proto::{Chunk, ChunkLayout, FileDone, Hash, Message};

use crate::progress::Progress;

/// A file the receiver asked for, shared by the jobs that cover its chunk ranges.
pub(crate) struct FileJob {
    pub(crate) id: u64,
    pub(crate) source: PathBuf,
    pub(crate) layout: ChunkLayout,
    hashes: Mutex<Vec<Hash>>,
    remaining: AtomicU64,
    failed: AtomicBool,
}

impl FileJob {
    pub(crate) fn new(id: u64, source: PathBuf, layout: ChunkLayout) -> Self {
        let count = layout.count();
        FileJob {
            id,
            source,
            layout,
            hashes: Mutex::new(vec![[0; 32]; count as usize]),
            remaining: AtomicU64::new(count),
            failed: AtomicBool::new(false),
        }
    }
}

/// A run of chunks of one file for one worker.
pub(crate) struct ReadJob {
    pub(crate) file: Arc<FileJob>,
    pub(crate) start: u64,
    pub(crate) end: u64,
}

/// Chunks per job: big files are split so that both cores read and hash one file.
pub(crate) const CHUNKS_PER_JOB: u64 = 8;

/// Messages the workers send back to the control loop.
pub(crate) enum WorkerNote {
    /// A control message to send (FileDone).
    Control(Message),
    /// A file could not be read; the control loop reports it and tells the receiver.
    SourceFailed {
        id: u64,
        path: String,
        message: String,
    },
    /// A data stream failed: the session cannot complete.
    StreamFailed(io::Error),
}

pub(crate) struct Worker {
    pub(crate) jobs: async_channel::Receiver<ReadJob>,
    pub(crate) frames: async_channel::Sender<(Bytes, Bytes)>,
    pub(crate) notes: tokio::sync::mpsc::UnboundedSender<WorkerNote>,
    pub(crate) progress: Arc<Progress>,
}

impl Worker {
    pub(crate) fn run(self) {
        while let Ok(job) = self.jobs.recv_blocking() {
            if job.file.failed.load(Ordering::Relaxed) {
                continue;
            }
            if let Err(e) = self.read_job(&job) {
                if e.kind() == io::ErrorKind::BrokenPipe {
                    return; // the writers are gone: the session is over
                }
                self.fail(&job.file, e);
            }
        }
    }

    fn fail(&self, file: &FileJob, e: io::Error) {
        if file.failed.swap(true, Ordering::Relaxed) {
            return;
        }
        let _ = self.notes.send(WorkerNote::SourceFailed {
            id: file.id,
            path: file.source.display().to_string(),
            message: format!("cannot read {}: {e}", file.source.display()),
        });
    }

    fn read_job(&self, job: &ReadJob) -> io::Result<()> {
        let file = &job.file;
        // O_NOFOLLOW: if the file was swapped for a symlink since the scan, refuse rather than
        // send whatever the link points at.
        let handle = File::options()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&file.source)?;
        let size = handle.metadata()?.len();
        if size != file.layout.size() {
            return Err(io::Error::other(format!(
                "it changed while being copied (size was {}, now {size}); run the copy again",
                file.layout.size()
            )));
        }
        let sparse = SparseMap::probe(&handle, size)?;
        for index in job.start..job.end {
            let Some(len) = file.layout.len(index) else {
                break;
            };
            let offset = file.layout.offset(index);
            let (hash, data, zero) = if sparse.is_hole(offset, offset + u64::from(len)) {
                (
                    haul_manifest::zero_chunk_hash(&file.layout, index),
                    Bytes::new(),
                    true,
                )
            } else {
                let mut buf = vec![0u8; len as usize];
                handle.read_exact_at(&mut buf, offset)?;
                let hash = haul_manifest::chunk_hash(&file.layout, index, &buf);
                (hash, Bytes::from(buf), false)
            };
            let payload = data.len() as u64;
            let (head, body) = Message::Chunk(Chunk {
                id: file.id,
                index,
                hash,
                zero,
                data,
            })
            .encode_parts();
            self.frames
                .send_blocking((head, body))
                .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
            Progress::add(&self.progress.bytes_sent, payload);
            Progress::add(&self.progress.chunks_sent, 1);
            self.record(file, index, hash);
        }
        Ok(())
    }

    /// Stores a chunk hash; the worker that stores the last one sends the whole-file hash.
    fn record(&self, file: &FileJob, index: u64, hash: Hash) {
        let mut hashes = file.hashes.lock().unwrap_or_else(|p| p.into_inner());
        hashes[index as usize] = hash;
        if file.remaining.fetch_sub(1, Ordering::AcqRel) == 1
            && file.layout.count() > 1
            && let Some(hash) = haul_manifest::file_hash(&file.layout, &hashes)
        {
            let _ = self
                .notes
                .send(WorkerNote::Control(Message::FileDone(FileDone {
                    id: file.id,
                    hash,
                })));
        }
    }
}
