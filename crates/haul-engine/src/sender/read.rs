//! The sender's read/hash workers: blocking threads that read every chunk of the files the
//! receiver asked about, hash them, and hand the chunks the receiver lacks to the stream
//! writers. A chunk the receiver already holds with the same hash is not sent (it reuses its
//! copy); the whole-file hash is computed from all chunks either way. Chunks to send are
//! zstd-compressed here when that pays (see [`crate::compress`]); the hash is always of the
//! uncompressed bytes. Hashing, compression and disk reads never run on the async threads that
//! drive QUIC.

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};

use bytes::Bytes;
use haul_manifest::SparseMap;
use haul_proto::{Chunk, ChunkLayout, FileDone, Hash, Message};

use super::pool::{BufferPool, PooledBuf};
use super::uring::ChunkReader;
use crate::compress::{ChunkCompressor, Compression};
use crate::progress::Progress;

/// What the receiver said it holds of one file (its `Have` messages), per chunk.
#[derive(Default)]
pub(crate) struct Held {
    /// The receiver's hash per chunk; all zeros: not held.
    hashes: Vec<Hash>,
    /// Chunks verified against our hashes in an interrupted run for this same version of the
    /// file (the receiver's journal): taken as they are, without reading them again.
    trusted: Vec<bool>,
}

impl Held {
    /// Adds one `Have` message: `hashes` from chunk `start` on, of a file of `count` chunks.
    /// A zero hash says nothing (another message may hold that chunk).
    pub(crate) fn add(&mut self, start: u64, hashes: &[Hash], trusted: bool, count: u64) {
        for (i, hash) in hashes.iter().enumerate() {
            let index = start.saturating_add(i as u64);
            if index >= count {
                break;
            }
            if *hash == [0; 32] {
                continue;
            }
            let at = index as usize;
            if self.hashes.len() <= at {
                self.hashes.resize(at + 1, [0; 32]);
                self.trusted.resize(at + 1, false);
            }
            self.hashes[at] = *hash;
            self.trusted[at] = trusted;
        }
    }
}

/// Where a file to read is: its path (for messages) and the directory the scan found it in,
/// which it is opened relative to (see [`haul_manifest::ScanEntry::dir`]).
#[derive(Clone)]
pub(crate) struct SourceFile {
    pub(crate) path: PathBuf,
    pub(crate) dir: Option<Arc<haul_manifest::SourceDir>>,
}

/// A file the receiver asked about, shared by the jobs that cover its chunk ranges.
pub(crate) struct FileJob {
    pub(crate) id: u64,
    pub(crate) source: SourceFile,
    pub(crate) layout: ChunkLayout,
    /// What the receiver holds, per chunk (all zeros: nothing).
    have: Vec<Hash>,
    /// Held chunks whose hashes are taken without reading them (see [`Held::trusted`]), as long
    /// as the file still has the mtime it was announced with.
    trusted: Vec<bool>,
    /// The mtime the file was announced with.
    mtime: (i64, u32),
    /// Chunks the receiver asked for outright.
    needed: Vec<bool>,
    /// Plan only: hash what must be compared, send nothing.
    dry_run: bool,
    hashes: Mutex<Vec<Hash>>,
    remaining: AtomicU64,
    sent: AtomicU64,
    failed: AtomicBool,
}

impl FileJob {
    /// A job for a file whose receiver holds `have` (may be short or empty) and asked for the
    /// chunk `ranges`.
    pub(crate) fn new(
        id: u64,
        source: SourceFile,
        layout: ChunkLayout,
        held: Held,
        mtime: (i64, u32),
        ranges: &[(u64, u64)],
        dry_run: bool,
    ) -> Self {
        let count = layout.count() as usize;
        let Held {
            hashes: mut have,
            mut trusted,
        } = held;
        have.resize(count, [0; 32]);
        trusted.resize(count, false);
        let mut needed = vec![false; count];
        for &(start, n) in ranges {
            let end = start.saturating_add(n).min(count as u64) as usize;
            for slot in needed.iter_mut().take(end).skip(start as usize) {
                *slot = true;
            }
        }
        FileJob {
            id,
            source,
            layout,
            have,
            trusted,
            mtime,
            needed,
            dry_run,
            hashes: Mutex::new(vec![[0; 32]; count]),
            remaining: AtomicU64::new(count as u64),
            sent: AtomicU64::new(0),
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
    /// Control messages to send (FileDone), in order.
    Control(Vec<Message>),
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
    pub(crate) buffers: Arc<BufferPool>,
    /// Where the held frame buffers come from (see [`HeldOutput`]): a pool with a limit.
    pub(crate) held_buffers: Arc<BufferPool>,
    pub(crate) compress: Compression,
    /// Small frames and control messages held back to go out together (see [`HeldOutput`]).
    pub(crate) held: RefCell<HeldOutput>,
}

/// Frames of small chunks, one after another in one buffer (each chunk read straight into its
/// place, after room for its head), and the `FileDone` messages that go with them. A post
/// office of a million 4 KiB files must not cost a hand-off to a stream writer and a wake-up
/// of the control loop per file: on two cores those wake-ups took a third of the sender's
/// time. What is held goes out once the buffer reaches [`FLUSH_AT`], and always before the
/// worker waits for more work, so nothing is held while the pipeline is idle.
#[derive(Default)]
pub(crate) struct HeldOutput {
    /// A pooled buffer of [`HELD_CAPACITY`] bytes (fresh 576 KiB allocations cost a page fault
    /// per 4 KiB) and how much of it holds frames.
    frames: Option<PooledBuf>,
    used: usize,
    notes: Vec<Message>,
}

/// Room for [`FLUSH_AT`] bytes of frames plus one more small frame.
const HELD_CAPACITY: usize = FLUSH_AT + SMALL_FRAME;

/// Most held frame buffers out at once, over all workers: about 9 MiB of small files between
/// the disk and the peer's acknowledgement, 30 ms and more of a small-file push on loopback
/// and more than a 1 Gbit/s, 40 ms path holds.
pub(crate) const MAX_HELD_BUFFERS: usize = 16;

/// A frame at most this long (header and payload) is copied into the held buffer.
const SMALL_FRAME: usize = 64 << 10;
/// Held frames go to a stream writer once they add up to this much.
const FLUSH_AT: usize = 512 << 10;
/// Held messages go to the control loop once there are this many.
const MAX_HELD_NOTES: usize = 256;

/// Where a chunk's bytes were read to.
enum Payload {
    /// A buffer of their own (empty for a hole).
    Bytes(Bytes),
    /// The held frame buffer, past what it holds, after room for the frame's head.
    InFrame,
}

/// Reads the chunk at `offset` into `out`: only the data extents are read; a hole inside the
/// chunk (a sparse disk's data rarely lines up with chunks) is zero-filled instead of copied.
fn read_chunk(
    reader: &mut ChunkReader,
    file: &File,
    sparse: &SparseMap,
    offset: u64,
    out: &mut [u8],
) -> io::Result<()> {
    let end = offset + out.len() as u64;
    let mut at = offset;
    for data in sparse.data_in(offset, end) {
        out[(at - offset) as usize..(data.start - offset) as usize].fill(0);
        let range = (data.start - offset) as usize..(data.end - offset) as usize;
        reader.read_exact_at(file, &mut out[range], data.start)?;
        at = data.end;
    }
    out[(at - offset) as usize..].fill(0);
    Ok(())
}

enum Decision {
    Send,
    Reuse,
}

impl Worker {
    pub(crate) fn run(self) {
        // One reader (and so at most one io_uring) per worker thread, for all its chunks.
        let mut reader = ChunkReader::new();
        static CHOSEN: Once = Once::new();
        CHOSEN.call_once(|| tracing::debug!(backend = reader.kind(), "sender chunk reads"));
        // One zstd context per worker thread too (None: compression is off).
        let mut compressor = ChunkCompressor::new(self.compress);
        loop {
            let job = match self.jobs.try_recv() {
                Ok(job) => job,
                Err(async_channel::TryRecvError::Closed) => break,
                Err(async_channel::TryRecvError::Empty) => {
                    // About to wait: send what is held first.
                    if self.flush().is_err() {
                        return;
                    }
                    match self.jobs.recv_blocking() {
                        Ok(job) => job,
                        Err(_) => break,
                    }
                }
            };
            if job.file.failed.load(Ordering::Relaxed) {
                continue;
            }
            if let Err(e) = self.read_job(&mut reader, compressor.as_mut(), &job) {
                if e.kind() == io::ErrorKind::BrokenPipe {
                    return; // the writers are gone: the session is over
                }
                self.fail(&job.file, e);
            }
        }
        let _ = self.flush();
    }

    /// Sends the held frames to a stream writer and the held messages to the control loop.
    fn flush(&self) -> io::Result<()> {
        let (frames, notes) = {
            let mut held = self.held.borrow_mut();
            let used = std::mem::take(&mut held.used);
            let frames = match held.frames.take() {
                Some(buf) if used > 0 => buf.into_bytes().slice(..used),
                // Nothing in it: keep it for the next frames.
                other => {
                    held.frames = other;
                    Bytes::new()
                }
            };
            (frames, std::mem::take(&mut held.notes))
        };
        let sent = if frames.is_empty() {
            Ok(())
        } else {
            self.frames
                .send_blocking((frames, Bytes::new()))
                .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
        };
        // FileDone only after its chunk is on its way (the receiver accepts either order, but
        // the frames may fail to go and then the note is moot).
        if !notes.is_empty() {
            let _ = self.notes.send(WorkerNote::Control(notes));
        }
        sent
    }

    /// Sends one chunk frame: a small one is held with others (see [`HeldOutput`]), a large
    /// one goes as it is, without copying its payload, after what is held.
    fn send_frame(&self, head: Bytes, body: Bytes) -> io::Result<()> {
        if head.len() + body.len() <= SMALL_FRAME {
            let full = {
                let mut held = self.held.borrow_mut();
                let HeldOutput { frames, used, .. } = &mut *held;
                let buf = frames.get_or_insert_with(|| self.held_buffers.take(HELD_CAPACITY));
                let at = *used;
                let out = buf.as_mut_slice();
                out[at..at + head.len()].copy_from_slice(&head);
                out[at + head.len()..at + head.len() + body.len()].copy_from_slice(&body);
                *used += head.len() + body.len();
                *used >= FLUSH_AT
            };
            // `body` is dropped here: a pooled read buffer goes back to the pool at once.
            drop(body);
            return if full { self.flush() } else { Ok(()) };
        }
        self.flush()?;
        self.frames
            .send_blocking((head, body))
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    }

    /// Sends a chunk whose `len` bytes were read into the held buffer just past the frames
    /// it holds (room left for the head): writes its head there, or first compresses the
    /// bytes in place when that is worth it. Returns the bytes of data the frame carries.
    fn send_in_frame(
        &self,
        mut chunk: Chunk,
        len: usize,
        compressor: Option<&mut ChunkCompressor>,
    ) -> io::Result<usize> {
        let (full, sent) = {
            let mut held = self.held.borrow_mut();
            let HeldOutput { frames, used, .. } = &mut *held;
            // Nothing flushes between the read and this: the chunk is still there.
            let Some(buf) = frames.as_mut() else {
                return Err(io::Error::other("the held frame buffer went missing"));
            };
            let (head, body) = buf.as_mut_slice()[*used..].split_at_mut(Chunk::HEAD_LEN);
            let raw = &mut body[..len];
            let sent = match compressor.and_then(|c| c.compress(raw)) {
                // Only ever shorter than the raw bytes it replaces.
                Some(packed) => {
                    raw[..packed.len()].copy_from_slice(&packed);
                    chunk.compressed = true;
                    packed.len()
                }
                None => len,
            };
            chunk.write_head(head, sent);
            *used += Chunk::HEAD_LEN + sent;
            (*used >= FLUSH_AT, sent)
        };
        if full {
            self.flush()?;
        }
        Ok(sent)
    }

    fn fail(&self, file: &FileJob, e: io::Error) {
        if file.failed.swap(true, Ordering::Relaxed) {
            return;
        }
        let _ = self.notes.send(WorkerNote::SourceFailed {
            id: file.id,
            path: file.source.path.display().to_string(),
            message: format!("cannot read {}: {e}", file.source.path.display()),
        });
    }

    fn read_job(
        &self,
        reader: &mut ChunkReader,
        mut compressor: Option<&mut ChunkCompressor>,
        job: &ReadJob,
    ) -> io::Result<()> {
        let file = &job.file;
        // Relative to its directory as the scan opened it, O_NOFOLLOW: if the file was swapped
        // for a symlink since the scan, refuse rather than send whatever the link points at.
        let handle = haul_manifest::open_source(file.source.dir.as_deref(), &file.source.path)?;
        let meta = handle.metadata()?;
        let size = meta.len();
        // A journal vouches for chunks of the version it was written for; if the mtime moved
        // since the scan, every chunk is read and compared instead.
        let trust = {
            use std::os::unix::fs::MetadataExt;
            (meta.mtime(), meta.mtime_nsec() as u32) == file.mtime
        };
        if size != file.layout.size() {
            return Err(io::Error::other(format!(
                "it changed while being copied (size was {}, now {size}); run the copy again",
                file.layout.size()
            )));
        }
        let sparse = {
            use std::os::unix::fs::MetadataExt;
            if meta.blocks().saturating_mul(512) >= size {
                SparseMap::dense(size)
            } else {
                SparseMap::probe(&handle, size)?
            }
        };
        for index in job.start..job.end {
            let Some(len) = file.layout.len(index) else {
                break;
            };
            let offset = file.layout.offset(index);
            let held = file
                .have
                .get(index as usize)
                .filter(|h| **h != [0; 32])
                .copied();
            let needed = held.is_none() || file.needed.get(index as usize).copied().unwrap_or(true);
            if let Some(hash) = held.filter(|_| {
                trust && !needed && file.trusted.get(index as usize).copied().unwrap_or(false)
            }) {
                // Verified against our own hash by the run that was interrupted, for this
                // same version of the file: reading it again would only produce that hash.
                Progress::add(&self.progress.chunks_reused, 1);
                Progress::add(&self.progress.bytes_reused, u64::from(len));
                self.record(file, index, hash);
                continue;
            }
            if file.dry_run && needed {
                // A plan does not read what would be sent anyway.
                self.would_send(file, len);
                self.record(file, index, [0; 32]);
                continue;
            }
            let hole = sparse.is_hole(offset, offset + u64::from(len));
            // A small chunk is read straight into its place in the held frames, after room for
            // its head: no pooled buffer, no copy (see `send_in_frame`).
            let in_frame = !hole && Chunk::HEAD_LEN + len as usize <= SMALL_FRAME;
            let (hash, data) = if hole {
                (
                    haul_manifest::zero_chunk_hash(&file.layout, index),
                    Payload::Bytes(Bytes::new()),
                )
            } else if in_frame {
                let mut held = self.held.borrow_mut();
                let HeldOutput { frames, used, .. } = &mut *held;
                let buf = frames.get_or_insert_with(|| self.held_buffers.take(HELD_CAPACITY));
                let at = *used + Chunk::HEAD_LEN;
                let body = &mut buf.as_mut_slice()[at..at + len as usize];
                read_chunk(reader, &handle, &sparse, offset, body)?;
                (
                    haul_manifest::chunk_hash(&file.layout, index, body),
                    Payload::InFrame,
                )
            } else {
                let mut buf = self.buffers.take(len as usize);
                read_chunk(reader, &handle, &sparse, offset, buf.as_mut_slice())?;
                (
                    haul_manifest::chunk_hash(&file.layout, index, buf.as_ref()),
                    Payload::Bytes(buf.into_bytes()),
                )
            };
            let decision = if !needed && held == Some(hash) {
                Decision::Reuse
            } else {
                Decision::Send
            };
            match decision {
                Decision::Reuse => {
                    Progress::add(&self.progress.chunks_reused, 1);
                    Progress::add(&self.progress.bytes_reused, u64::from(len));
                }
                Decision::Send if file.dry_run => self.would_send(file, len),
                Decision::Send => {
                    let chunk = Chunk {
                        id: file.id,
                        index,
                        hash,
                        zero: hole,
                        compressed: false,
                        data: Bytes::new(),
                    };
                    // What crosses the network: compressed bytes when compressed.
                    let payload = match data {
                        Payload::InFrame => {
                            self.send_in_frame(chunk, len as usize, compressor.as_deref_mut())?
                        }
                        Payload::Bytes(data) => {
                            // A hole is sent as no data at all; other chunks go compressed
                            // when the compressed form is worth it (the raw buffer then
                            // returns to the pool).
                            let packed = compressor
                                .as_deref_mut()
                                .filter(|_| !hole)
                                .and_then(|c| c.compress(&data));
                            let compressed = packed.is_some();
                            let data = packed.map_or(data, Bytes::from);
                            let payload = data.len();
                            let (head, body) = Message::Chunk(Chunk {
                                compressed,
                                data,
                                ..chunk
                            })
                            .encode_parts();
                            self.send_frame(head, body)?;
                            payload
                        }
                    };
                    file.sent.fetch_add(1, Ordering::Relaxed);
                    Progress::add(&self.progress.bytes_sent, payload as u64);
                    Progress::add(&self.progress.chunks_sent, 1);
                }
            }
            self.record(file, index, hash);
        }
        Ok(())
    }

    /// Counts a chunk a plan would send (as sent, so the receiver's plan sees the file as
    /// changed).
    fn would_send(&self, file: &FileJob, len: u32) {
        file.sent.fetch_add(1, Ordering::Relaxed);
        Progress::add(&self.progress.would_send_bytes, u64::from(len));
        Progress::add(&self.progress.would_send_chunks, 1);
    }

    /// Stores a chunk hash; the worker that stores the last one sends the whole-file hash and
    /// how many chunks crossed the network.
    fn record(&self, file: &FileJob, index: u64, hash: Hash) {
        let mut hashes = crate::lock(&file.hashes);
        hashes[index as usize] = hash;
        if file.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let hash = haul_manifest::file_hash(&file.layout, &hashes).unwrap_or([0; 32]);
            let chunks_sent = file.sent.load(Ordering::Relaxed);
            let many = {
                let mut held = self.held.borrow_mut();
                held.notes.push(Message::FileDone(FileDone {
                    id: file.id,
                    hash,
                    chunks_sent,
                }));
                held.notes.len() >= MAX_HELD_NOTES
            };
            // Files the receiver already holds send no frames: their notes must not wait
            // for the worker to run out of work.
            if many {
                let _ = self.flush();
            }
        }
    }
}
