//! Opening a [`Partial`]: the lock, the journal's verdict (resume, stale, fresh), and
//! creating a fresh one so that a crash at any step leaves nothing that claims too much.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::direct::DirectWriter;
use crate::error::StoreError;
use crate::fsutil::pwrite_all;
use crate::journal::{self, SourceIdentity};
use crate::partial::{Journal, Partial, Pending};
use crate::partial_dir::PartialDir;
use crate::path::RelPath;
use crate::root::Root;

/// What [`Root::open_partial`] found.
#[derive(Debug)]
pub struct OpenedPartial {
    /// The partial, locked for this receiver.
    pub partial: Partial,
    /// Chunks recorded durably by an earlier run (index, hash), in any order. Empty for a
    /// fresh partial.
    pub verified: Vec<(u64, [u8; 32])>,
    /// True when an earlier run's partial with the same identity was found and reused.
    pub resumed: bool,
    /// True when a partial existed but its identity differed (the source changed): it was
    /// discarded.
    pub discarded_stale: bool,
    /// True when the `verified` chunks were journaled under the same source stamp as the one
    /// asked for (and it is known): the sender may take them as they are. False: they are of
    /// the same size and mtime but maybe another version; compare before reuse.
    pub stamp_matches: bool,
}

/// Reads the whole journal.
fn read_all(fd: &OwnedFd) -> Result<Vec<u8>, Errno> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match rustix::io::pread(fd, &mut buf[..], out.len() as u64) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
}

impl Root {
    /// Opens (or creates) the partial for `rel`. Takes an exclusive non-blocking `flock` on the
    /// journal; if another live receiver holds it, returns [`StoreError::Busy`]. A fresh
    /// partial's data file is created with the identity's size (all holes), mode 0600.
    pub fn open_partial(
        &self,
        rel: &RelPath,
        identity: SourceIdentity,
    ) -> Result<OpenedPartial, StoreError> {
        let dest = self.display_path(rel);
        if identity.chunk_size == 0 || rel.is_root() {
            return Err(StoreError::Io {
                path: dest,
                op: "open a partial file for",
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a partial needs a file path and a non-zero chunk size",
                ),
            });
        }
        let top_rel = self.prefix.join(rel);
        let key = blake3::hash(top_rel.as_bytes()).to_hex().to_string();
        let dir = Arc::clone(&self.top.partial);
        let journal_name = format!("{key}.journal");
        let data_name = format!("{key}.data");
        let journal_fd = dir.lock_journal(&journal_name, &dest)?;
        let jerr = |e, op| dir.err(e, &journal_name, op);
        let bytes = read_all(&journal_fd).map_err(|e| jerr(e, "read partial journal"))?;

        let header = journal::decode_header(&bytes)
            .filter(|h| h.identity.same_layout(&identity) && h.rel == top_rel.as_bytes());
        let stamp_matches = header
            .as_ref()
            .is_some_and(|h| h.identity.stamp == identity.stamp && identity.stamp != 0);
        let mut discarded_stale = !bytes.is_empty() && header.is_none();
        let mut resumed = None;
        if let Some(header) = header {
            let flags = OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW;
            match rustix::fs::openat(&dir.dir, data_name.as_str(), flags, Mode::empty()) {
                Ok(fd) => {
                    let st = rustix::fs::fstat(&fd)
                        .map_err(|e| dir.err(e, &data_name, "inspect partial file"))?;
                    let is_file = FileType::from_raw_mode(st.st_mode) == FileType::RegularFile;
                    if is_file && u64::try_from(st.st_size) == Ok(identity.size) {
                        resumed = Some((fd, header.len));
                    } else {
                        discarded_stale = true;
                    }
                }
                // The journal outlived its data: an install that died before removing it.
                Err(Errno::NOENT | Errno::LOOP) => {}
                Err(e) => return Err(dir.err(e, &data_name, "open partial file")),
            }
        }

        let was_resumed = resumed.is_some();
        let (data, journal_len, verified) = match resumed {
            Some((data, header_len)) => {
                let (records, good) =
                    journal::decode_records(&bytes[header_len..], journal::current_boot());
                let journal_len = (header_len + good) as u64;
                if journal_len < bytes.len() as u64 {
                    // A torn or garbage tail (power cut mid-append), or light batches from
                    // before a reboot: cut it off now, so the next append does not land behind
                    // bytes that end every future read.
                    rustix::fs::ftruncate(&journal_fd, journal_len)
                        .and_then(|()| rustix::fs::fdatasync(&journal_fd))
                        .map_err(|e| jerr(e, "truncate partial journal"))?;
                }
                let count = identity.chunk_count();
                // Last record for an index wins; indexes past the end cannot be this file's.
                let mut latest = std::collections::HashMap::with_capacity(records.len());
                for (index, hash) in records.into_iter().filter(|(i, _)| *i < count) {
                    latest.insert(index, hash);
                }
                (data, journal_len, latest.into_iter().collect())
            }
            None => {
                let fresh = Fresh {
                    dir: &dir,
                    journal: &journal_fd,
                    journal_name: &journal_name,
                    data_name: &data_name,
                };
                let had_journal = !bytes.is_empty();
                let (data, len) = fresh.create(had_journal, &identity, top_rel.as_bytes())?;
                (data, len, Vec::new())
            }
        };
        let direct = DirectWriter::open(dir.dir.as_fd(), &data_name, data.as_fd());
        Ok(OpenedPartial {
            partial: Partial {
                data,
                direct,
                journal: Mutex::new(Journal {
                    fd: journal_fd,
                    len: journal_len,
                }),
                pending: Mutex::new(Pending {
                    records: Vec::new(),
                    bytes: 0,
                    since: Instant::now(),
                    durable_since: Instant::now(),
                    light_unsynced: false,
                }),
                dir,
                key,
                identity,
                dirty: AtomicBool::new(was_resumed),
                finished: false,
            },
            verified,
            resumed: was_resumed,
            discarded_stale,
            stamp_matches,
        })
    }
}

/// Creating a fresh partial in place of whatever was there.
struct Fresh<'a> {
    dir: &'a PartialDir,
    journal: &'a OwnedFd,
    journal_name: &'a str,
    data_name: &'a str,
}

impl Fresh<'_> {
    /// Makes a new all-holes data file and writes the journal header; returns the data fd and
    /// the journal's length. Order matters for a crash at any step: the old journal is emptied
    /// (durably) first, so no header ever describes a data file it was not written for.
    fn create(
        &self,
        had_journal: bool,
        identity: &SourceIdentity,
        rel: &[u8],
    ) -> Result<(OwnedFd, u64), StoreError> {
        let (dir, jname, dname) = (self.dir, self.journal_name, self.data_name);
        if had_journal {
            rustix::fs::ftruncate(self.journal, 0)
                .and_then(|()| rustix::fs::fdatasync(self.journal))
                .map_err(|e| dir.err(e, jname, "empty stale partial journal"))?;
        }
        // A new inode (not O_TRUNC of the old one) guarantees holes and mode 0600.
        dir.remove(dname)?;
        let flags =
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        let data = rustix::fs::openat(&dir.dir, dname, flags, Mode::from_raw_mode(0o600))
            .map_err(|e| dir.err(e, dname, "create partial file"))?;
        rustix::fs::ftruncate(&data, identity.size)
            .map_err(|e| dir.err(e, dname, "set the size of partial file"))?;
        let header = journal::encode_header(identity, rel);
        pwrite_all(self.journal.as_fd(), 0, &header)
            .and_then(|()| rustix::fs::fdatasync(self.journal))
            .map_err(|e| dir.err(e, jname, "write partial journal"))?;
        dir.sync()?;
        Ok((data, header.len() as u64))
    }
}
