//! In-place patches: when the new version of a file differs from the copy already at its
//! destination in a few chunks, those chunks are overwritten in the destination itself instead
//! of writing a whole new file (3 MiB changed in a 50 GiB disk must not rewrite 50 GiB).
//!
//! Overwriting in place is only safe with an undo log. Before the first byte is overwritten,
//! the bytes about to be replaced, the file's identity (device, inode, size), its old mtime and
//! mode and the new mtime go into `<top root>/.haul/undo/<key>.undo` (`key`: BLAKE3 of the
//! destination's path from the top root), which is synced together with its directory. The
//! log is removed only once the patched file, data and metadata, is synced. A log found later
//! means a receiver died mid-patch: [`Root::recover_patches`] puts the old bytes, mtime and
//! mode back, so the file is again exactly its old version, which the next run patches again.
//! A log whose checksum does not verify was never complete, so nothing was overwritten under
//! it, and it is simply removed.
//!
//! Log format (little-endian): `MAGIC`, then device, inode and size (u64 each), old mtime
//! (i64 seconds, u32 nanoseconds), old mode (u32), new mtime (i64, u32), the path length (u32)
//! and path, the range count (u32), each range's offset and length (u64 each) and the BLAKE3
//! of its new bytes, then the old bytes of every range in order, and last the BLAKE3 of all
//! that came before.
//!
//! Exclusion: the log is `flock`ed while a patch or a recovery works on it. The destination
//! itself is excluded by the partial the new chunks come from (see `partial`).
//!
//! Snapshots: a file with more than one link is never patched. Its inode may be shared with a
//! hard-link snapshot (see `snapshot`), which must keep the old version; and other live names
//! would change with it. Such a patch is refused like any other unpatchable file, with
//! `Ok(false)`, and the caller writes a new file and renames it into place. The link count is
//! checked when the file is opened and again once the undo log is written, just before the
//! first byte is overwritten. A recovery that finds the file linked since (a snapshot taken
//! after a receiver died mid-patch) restores the old version into a new inode renamed over
//! the name, leaving the snapshot's copy as it was taken.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;

use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use crate::attrs::Attrs;
use crate::error::StoreError;
use crate::fsutil::{Missing, mode_bits, mtime, not_found, open_child_dir};
use crate::partial::Partial;
use crate::path::RelPath;
use crate::root::Root;

const MAGIC: &[u8; 8] = b"HAULUND1";
const DIR: &[u8] = b"undo";
const SUFFIX: &str = ".undo";
/// Old bytes are copied into the log, and back, this much at a time.
const BUF_LEN: usize = 1 << 20;
/// A log's fixed-size part before the path: magic, dev, ino, size, old mtime, old mode, new
/// mtime, path length.
const FIXED_LEN: usize = 8 + 8 + 8 + 8 + 12 + 4 + 12 + 4;
/// One range's record: offset, length, hash of the new bytes.
const RANGE_LEN: usize = 8 + 8 + 32;

/// One byte range of a file to overwrite in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PatchRange {
    /// Where the range starts in the file.
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
}

/// What a log says about the patch it undoes.
struct Header {
    dev: u64,
    ino: u64,
    size: u64,
    old_mtime: (i64, u32),
    old_mode: u32,
    new_mtime: (i64, u32),
    rel: Vec<u8>,
    ranges: Vec<(PatchRange, [u8; 32])>,
}

impl Header {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED_LEN + self.rel.len() + 4 + self.ranges.len() * 48);
        out.extend_from_slice(MAGIC);
        for v in [self.dev, self.ino, self.size] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.old_mtime.0.to_le_bytes());
        out.extend_from_slice(&self.old_mtime.1.to_le_bytes());
        out.extend_from_slice(&self.old_mode.to_le_bytes());
        out.extend_from_slice(&self.new_mtime.0.to_le_bytes());
        out.extend_from_slice(&self.new_mtime.1.to_le_bytes());
        out.extend_from_slice(&(self.rel.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.rel);
        out.extend_from_slice(&(self.ranges.len() as u32).to_le_bytes());
        for (range, hash) in &self.ranges {
            out.extend_from_slice(&range.offset.to_le_bytes());
            out.extend_from_slice(&range.len.to_le_bytes());
            out.extend_from_slice(hash);
        }
        out
    }

    /// Parses the header at the start of `bytes`; returns it and its length.
    fn decode(bytes: &[u8]) -> Option<(Header, usize)> {
        let mut r = Reader(bytes);
        if r.take(8)? != MAGIC {
            return None;
        }
        let (dev, ino, size) = (r.u64()?, r.u64()?, r.u64()?);
        let old_mtime = (r.u64()? as i64, r.u32()?);
        let old_mode = r.u32()?;
        let new_mtime = (r.u64()? as i64, r.u32()?);
        let rel_len = r.u32()? as usize;
        let rel = r.take(rel_len)?.to_vec();
        let count = r.u32()? as usize;
        let mut ranges = Vec::with_capacity(count.min(bytes.len() / RANGE_LEN));
        for _ in 0..count {
            let range = PatchRange {
                offset: r.u64()?,
                len: r.u64()?,
            };
            ranges.push((range, r.take(32)?.try_into().ok()?));
        }
        let used = bytes.len() - r.0.len();
        Some((
            Header {
                dev,
                ino,
                size,
                old_mtime,
                old_mode,
                new_mtime,
                rel,
                ranges,
            },
            used,
        ))
    }

    fn old_bytes(&self) -> u64 {
        self.ranges.iter().map(|(r, _)| r.len).sum()
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
}

fn log_name(top_rel: &RelPath) -> String {
    format!("{}{SUFFIX}", blake3::hash(top_rel.as_bytes()).to_hex())
}

fn io_err(root: &Root, rel: &RelPath, op: &'static str) -> impl Fn(io::Error) -> StoreError {
    let path = root.display_path(rel);
    let space = root.path().to_path_buf();
    move |e: io::Error| match e.raw_os_error() {
        Some(code) => {
            StoreError::from_errno(Errno::from_raw_os_error(code), path.clone(), &space, op)
        }
        None => StoreError::Io {
            path: path.clone(),
            op,
            source: e,
        },
    }
}

impl Root {
    /// Overwrites `ranges` of the regular file at `rel` with the same ranges of `source` (the
    /// partial holding the verified new chunks), then sets `meta`, all under an undo log (see
    /// the module docs): whatever happens, the file ends up either fully patched or exactly as
    /// it was. Returns `Ok(false)`, having changed nothing, when the file there cannot be
    /// patched: it is no longer the file `expect` is open on, has a size other than `size`,
    /// has other hard links (overwriting would change them too, and one may be a hard-link
    /// snapshot's copy, which must never change; a new file leaves them be), or cannot be
    /// opened for writing (read-only to us, or a running executable). `Ok(false)` is the
    /// caller's cue to write a whole new file and install it by rename, as for a file not
    /// worth patching.
    ///
    /// On an error the ranges already written are restored from the log before returning.
    pub fn patch_in_place(
        &self,
        rel: &RelPath,
        expect: &File,
        size: u64,
        ranges: &[PatchRange],
        source: &Partial,
        attrs: &Attrs,
    ) -> Result<bool, StoreError> {
        let meta = &attrs.meta;
        let op = "update in place";
        let opened = match self.open_regular(rel, OFlags::RDWR, op) {
            // Not writable by us (a read-only file, a running executable): a new file
            // replacing it by rename needs only the directory.
            Err(StoreError::PermissionDenied { .. }) => return Ok(false),
            Err(StoreError::Io { source, .. })
                if source.raw_os_error() == Some(Errno::TXTBSY.raw_os_error()) =>
            {
                return Ok(false);
            }
            opened => opened?,
        };
        let Some((fd, st)) = opened else {
            return Ok(false);
        };
        let expected = rustix::fs::fstat(expect).map_err(|e| self.err(e, rel, op))?;
        if (st.st_dev, st.st_ino) != (expected.st_dev, expected.st_ino)
            || st.st_nlink != 1
            || u64::try_from(st.st_size).ok() != Some(size)
            || ranges
                .iter()
                .any(|r| r.offset.checked_add(r.len).is_none_or(|end| end > size))
        {
            return Ok(false);
        }
        let file = File::from(fd);
        let top_rel = self.prefix.join(rel);
        let dir = self.undo_dir()?;
        let name = log_name(&top_rel);
        let log = match rustix::fs::openat(
            &dir,
            name.as_str(),
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(fd) => fd,
            Err(Errno::EXIST) => {
                // An interrupted patch of this very file that nobody recovered yet: put the
                // old version back first, and let the caller take the ordinary path.
                self.recover_log(&dir, &name)?;
                return Ok(false);
            }
            Err(e) => return Err(self.err(e, rel, "create the undo log for")),
        };
        rustix::fs::flock(&log, FlockOperation::LockExclusive)
            .map_err(|e| self.err(e, rel, "lock the undo log for"))?;
        let mut log = File::from(log);

        let mut hashes = Vec::with_capacity(ranges.len());
        let mut buf = vec![0u8; BUF_LEN];
        for range in ranges {
            let mut hasher = blake3::Hasher::new();
            in_pieces(range, &mut buf, |at, piece| {
                source.read_at(at, piece)?;
                hasher.update(piece);
                Ok(())
            })?;
            hashes.push((*range, *hasher.finalize().as_bytes()));
        }
        let header = Header {
            dev: st.st_dev,
            ino: st.st_ino,
            size,
            old_mtime: (st.st_mtime, u32::try_from(st.st_mtime_nsec).unwrap_or(0)),
            old_mode: st.st_mode & 0o7777,
            new_mtime: (meta.mtime_sec, meta.mtime_nsec),
            rel: top_rel.as_bytes().to_vec(),
            ranges: hashes,
        };
        let written = self.write_log(&mut log, &header, &file, &mut buf);
        let written = written.and_then(|()| {
            rustix::fs::fsync(&dir).map_err(|e| self.err(e, rel, "sync the undo log of"))
        });
        if let Err(e) = written {
            let _ = rustix::fs::unlinkat(&dir, name.as_str(), AtFlags::empty());
            return Err(e);
        }

        // Linked since it was opened (a snapshot taken meanwhile): the other name must keep
        // the old bytes, so no patch after all.
        let linked = rustix::fs::fstat(&file).map_or(true, |now| now.st_nlink != 1);
        if linked {
            let _ = rustix::fs::unlinkat(&dir, name.as_str(), AtFlags::empty());
            return Ok(false);
        }

        // From here on the log can put the old version back.
        let applied = self.apply(rel, &file, ranges, source, attrs, &mut buf);
        if let Err(e) = applied {
            return match self.undo(&file, &header, &mut log, &mut buf) {
                Ok(()) => {
                    let _ = rustix::fs::unlinkat(&dir, name.as_str(), AtFlags::empty());
                    Err(e)
                }
                // The log stays for the next run's recovery.
                Err(_) => Err(e),
            };
        }
        rustix::fs::unlinkat(&dir, name.as_str(), AtFlags::empty())
            .map_err(|e| self.err(e, rel, "remove the undo log of"))?;
        Ok(true)
    }

    /// Writes the header, the old bytes of every range (read from `file`) and the checksum,
    /// and syncs the log.
    fn write_log(
        &self,
        log: &mut File,
        header: &Header,
        file: &File,
        buf: &mut [u8],
    ) -> Result<(), StoreError> {
        let rel = RelPath::parse(&header.rel).unwrap_or_else(|_| RelPath::root());
        let failed = io_err(self, &rel, "write the undo log for");
        let head = header.encode();
        let mut sum = blake3::Hasher::new();
        sum.update(&head);
        let mut out = io::BufWriter::with_capacity(BUF_LEN, &mut *log);
        out.write_all(&head).map_err(&failed)?;
        for (range, _) in &header.ranges {
            in_pieces(range, buf, |at, piece| {
                file.read_exact_at(piece, at).map_err(io_err(
                    self,
                    &rel,
                    "read the old bytes of",
                ))?;
                sum.update(piece);
                out.write_all(piece).map_err(&failed)
            })?;
        }
        out.write_all(sum.finalize().as_bytes()).map_err(&failed)?;
        out.flush().map_err(&failed)?;
        drop(out);
        log.sync_data().map_err(&failed)
    }

    /// Writes the new bytes and the metadata, and syncs the file.
    fn apply(
        &self,
        rel: &RelPath,
        file: &File,
        ranges: &[PatchRange],
        source: &Partial,
        attrs: &Attrs,
        buf: &mut [u8],
    ) -> Result<(), StoreError> {
        let failed = io_err(self, rel, "update in place");
        for range in ranges {
            in_pieces(range, buf, |at, piece| {
                source.read_at(at, piece)?;
                file.write_all_at(piece, at).map_err(&failed)
            })?;
        }
        attrs.apply_fd(std::os::fd::AsFd::as_fd(file), &|| self.display_path(rel))?;
        file.sync_all().map_err(&failed)
    }

    /// Puts back the old bytes, mtime and mode recorded in `log` (whose header is `header`
    /// and whose checksum has been verified) and syncs the file.
    fn undo(
        &self,
        file: &File,
        header: &Header,
        log: &mut File,
        buf: &mut [u8],
    ) -> Result<(), StoreError> {
        let rel = RelPath::parse(&header.rel).unwrap_or_else(|_| RelPath::root());
        let failed = io_err(self, &rel, "restore the old version of");
        let head_len = header.encode().len() as u64;
        log.seek(SeekFrom::Start(head_len)).map_err(&failed)?;
        let mut reader = io::BufReader::with_capacity(BUF_LEN, &mut *log);
        for (range, _) in &header.ranges {
            in_pieces(range, buf, |at, piece| {
                reader.read_exact(piece).map_err(&failed)?;
                file.write_all_at(piece, at).map_err(&failed)
            })?;
        }
        let old = haul_proto::Meta {
            mode: header.old_mode,
            mtime_sec: header.old_mtime.0,
            mtime_nsec: header.old_mtime.1,
        };
        // The old mode as it was, special bits included: it is the file's own, not a peer's.
        rustix::fs::fchmod(file, mode_bits(old.mode, true))
            .map_err(|e| self.err(e, &rel, "restore the mode of"))?;
        rustix::fs::futimens(file, &mtime(&old))
            .map_err(|e| self.err(e, &rel, "restore the modification time of"))?;
        file.sync_all().map_err(&failed)
    }

    /// Undoes every patch a dead receiver left half done (see the module docs). Run it on the
    /// top root before receiving into it. Returns how many files were put back; a log another
    /// live receiver holds is left alone.
    pub fn recover_patches(&self) -> Result<u64, StoreError> {
        if !self.prefix.is_root() {
            return Ok(0);
        }
        let shown = || self.top.haul_path.join("undo");
        let Some(dir) = open_child_dir(&self.top.haul, DIR, Missing::Absent, &shown, self.path())?
        else {
            return Ok(0);
        };
        let names: Vec<String> = {
            let listing = rustix::fs::Dir::read_from(&dir)
                .map_err(|e| StoreError::from_errno(e, shown(), self.path(), "list"))?;
            listing
                .filter_map(Result::ok)
                .filter_map(|entry| entry.file_name().to_str().ok().map(str::to_owned))
                .filter(|name| name.ends_with(SUFFIX))
                .collect()
        };
        let mut restored = 0;
        for name in names {
            if self.recover_log(&dir, &name)? {
                restored += 1;
            }
        }
        Ok(restored)
    }

    /// Undoes the patch logged in `dir/name` and removes the log. Returns whether a file was
    /// put back (false: the log was incomplete, or the file is gone or another one now, or a
    /// live receiver holds the log).
    fn recover_log(&self, dir: &OwnedFd, name: &str) -> Result<bool, StoreError> {
        let shown = || self.top.haul_path.join("undo").join(name);
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(false),
            Err(e) => return Err(StoreError::from_errno(e, shown(), self.path(), "open")),
        };
        if rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive).is_err() {
            return Ok(false);
        }
        let mut log = File::from(fd);
        let restored = self.recover_from(&mut log)?;
        let _ = rustix::fs::unlinkat(dir, name, AtFlags::empty());
        Ok(restored)
    }

    fn recover_from(&self, log: &mut File) -> Result<bool, StoreError> {
        let read_failed = |e: io::Error| StoreError::Io {
            path: self.top.haul_path.join("undo"),
            op: "read an undo log in",
            source: e,
        };
        let len = log.metadata().map_err(read_failed)?.len();
        // The header is small; read a generous prefix and parse it.
        let mut head = vec![0u8; (len.min(16 << 20)) as usize];
        log.read_exact_at(&mut head, 0).map_err(read_failed)?;
        let Some((header, head_len)) = Header::decode(&head) else {
            return Ok(false); // torn before the header was complete: nothing was overwritten
        };
        if len != head_len as u64 + header.old_bytes() + 32 || !checksum_ok(log, len)? {
            return Ok(false); // never completed, so never acted on
        }
        let Ok(rel) = RelPath::parse(&header.rel) else {
            return Ok(false);
        };
        let Some((fd, st)) = self.open_regular(&rel, OFlags::RDWR, "restore the old version of")?
        else {
            return Ok(false);
        };
        if (st.st_dev, st.st_ino) != (header.dev, header.ino)
            || u64::try_from(st.st_size).ok() != Some(header.size)
        {
            return Ok(false); // replaced since: the log is about a file that is not there
        }
        let file = File::from(fd);
        let mut buf = vec![0u8; BUF_LEN];
        if (st.st_mtime, u32::try_from(st.st_mtime_nsec).unwrap_or(0)) == header.new_mtime
            && self.holds_new_bytes(&file, &header, &mut buf)?
        {
            // The patch completed; only removing the log was lost.
            return Ok(false);
        }
        if st.st_nlink > 1 {
            // Linked since the patch began (a snapshot taken after the receiver died): the
            // other names keep what they have, and the old version goes into a new inode.
            let (name, copy) = self.private_copy(&rel, std::os::fd::AsFd::as_fd(&file), &st)?;
            let copy = File::from(copy);
            if let Err(e) = self.undo(&copy, &header, log, &mut buf) {
                let _ = self.staging.remove(&name);
                return Err(e);
            }
            self.replace_from_staging(&rel, &name)?;
            return Ok(true);
        }
        self.undo(&file, &header, log, &mut buf)?;
        Ok(true)
    }

    /// Whether every range of `file` holds the bytes the patch wrote.
    fn holds_new_bytes(
        &self,
        file: &File,
        header: &Header,
        buf: &mut [u8],
    ) -> Result<bool, StoreError> {
        let rel = RelPath::parse(&header.rel).unwrap_or_else(|_| RelPath::root());
        for (range, want) in &header.ranges {
            let mut hasher = blake3::Hasher::new();
            in_pieces(range, buf, |at, piece| {
                file.read_exact_at(piece, at)
                    .map_err(io_err(self, &rel, "read"))?;
                hasher.update(piece);
                Ok(())
            })?;
            if hasher.finalize().as_bytes() != want {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn undo_dir(&self) -> Result<OwnedFd, StoreError> {
        let shown = || self.top.haul_path.join("undo");
        open_child_dir(&self.top.haul, DIR, Missing::Create, &shown, self.path())?
            .ok_or_else(|| not_found(shown(), "create directory"))
    }
}

/// Runs `f(offset, piece)` over `range` in pieces of at most `buf.len()` bytes; `piece` is
/// the front of `buf`, for `f` to fill or read.
fn in_pieces(
    range: &PatchRange,
    buf: &mut [u8],
    mut f: impl FnMut(u64, &mut [u8]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut done = 0;
    while done < range.len {
        let n = (range.len - done).min(buf.len() as u64) as usize;
        f(range.offset + done, &mut buf[..n])?;
        done += n as u64;
    }
    Ok(())
}

/// Whether the last 32 bytes of the log are the BLAKE3 of everything before them.
fn checksum_ok(log: &File, len: u64) -> Result<bool, StoreError> {
    if len < 32 {
        return Ok(false);
    }
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; BUF_LEN];
    let body = len - 32;
    let failed = |e: io::Error| StoreError::Io {
        path: std::path::PathBuf::from(".haul/undo"),
        op: "read an undo log in",
        source: e,
    };
    let whole = PatchRange {
        offset: 0,
        len: body,
    };
    in_pieces(&whole, &mut buf, |at, piece| {
        log.read_exact_at(piece, at).map_err(failed)?;
        hasher.update(piece);
        Ok(())
    })?;
    let mut sum = [0u8; 32];
    log.read_exact_at(&mut sum, body).map_err(failed)?;
    Ok(*hasher.finalize().as_bytes() == sum)
}

#[cfg(test)]
mod tests {
    //! The states a receiver killed mid-patch leaves on disk, built directly (a kill cannot be
    //! timed to land between two particular writes), and what recovery makes of each.

    use std::os::unix::fs::MetadataExt;
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    const LEN: usize = 3 << 20;
    const RANGES: [PatchRange; 2] = [
        PatchRange {
            offset: 1 << 20,
            len: 4096,
        },
        PatchRange {
            offset: 2 << 20,
            len: 100_000,
        },
    ];
    const OLD_MTIME: i64 = 1_600_000_000;
    const NEW_MTIME: i64 = 1_700_000_000;

    fn old_bytes() -> Vec<u8> {
        (0..LEN).map(|i| (i % 251) as u8).collect()
    }

    /// The old version with every range holding its new bytes (0xAB).
    fn new_bytes() -> Vec<u8> {
        let mut bytes = old_bytes();
        for r in RANGES {
            bytes[r.offset as usize..(r.offset + r.len) as usize].fill(0xAB);
        }
        bytes
    }

    struct Setup {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
        root: Root,
    }

    /// A root holding `f` (the old version, mode 0640, OLD_MTIME) and a complete undo log
    /// for patching RANGES of it.
    fn logged() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, old_bytes()).unwrap();
        let file = File::options().read(true).write(true).open(&path).unwrap();
        file.set_times(
            std::fs::FileTimes::new()
                .set_modified(UNIX_EPOCH + Duration::from_secs(OLD_MTIME as u64)),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o640))
            .unwrap();
        let root = Root::open(dir.path()).unwrap();
        let st = std::fs::metadata(&path).unwrap();
        let new = new_bytes();
        let header = Header {
            dev: st.dev(),
            ino: st.ino(),
            size: LEN as u64,
            old_mtime: (OLD_MTIME, 0),
            old_mode: 0o640,
            new_mtime: (NEW_MTIME, 0),
            rel: b"f".to_vec(),
            ranges: RANGES
                .iter()
                .map(|r| {
                    let bytes = &new[r.offset as usize..(r.offset + r.len) as usize];
                    (*r, *blake3::hash(bytes).as_bytes())
                })
                .collect(),
        };
        let undo = root.undo_dir().unwrap();
        let name = log_name(&RelPath::parse(b"f").unwrap());
        let fd = rustix::fs::openat(
            &undo,
            name.as_str(),
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL,
            Mode::from_raw_mode(0o600),
        )
        .unwrap();
        let mut buf = vec![0u8; BUF_LEN];
        root.write_log(&mut File::from(fd), &header, &file, &mut buf)
            .unwrap();
        Setup {
            _dir: dir,
            path,
            root,
        }
    }

    fn logs_left(s: &Setup) -> usize {
        std::fs::read_dir(s.path.with_file_name(".haul/undo"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    fn mtime_of(path: &std::path::Path) -> i64 {
        std::fs::metadata(path).unwrap().mtime()
    }

    #[test]
    fn a_patch_torn_mid_range_is_undone_to_the_old_version() {
        let s = logged();
        // The first range fully written, the second half written, the mode changed: the
        // receiver died inside the second write.
        let f = File::options().write(true).open(&s.path).unwrap();
        f.write_all_at(&[0xAB; 4096], RANGES[0].offset).unwrap();
        f.write_all_at(&[0xAB; 50_000], RANGES[1].offset).unwrap();
        std::fs::set_permissions(&s.path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        drop(f);
        assert_eq!(s.root.recover_patches().unwrap(), 1);
        assert!(
            std::fs::read(&s.path).unwrap() == old_bytes(),
            "old bytes back"
        );
        assert_eq!(mtime_of(&s.path), OLD_MTIME, "old mtime back");
        assert_eq!(std::fs::metadata(&s.path).unwrap().mode() & 0o7777, 0o640);
        assert_eq!(logs_left(&s), 0);
        assert_eq!(s.root.recover_patches().unwrap(), 0, "nothing left to do");
    }

    #[test]
    fn a_torn_patch_linked_since_is_undone_into_a_new_inode_leaving_the_link_alone() {
        let s = logged();
        let f = File::options().write(true).open(&s.path).unwrap();
        f.write_all_at(&[0xAB; 4096], RANGES[0].offset).unwrap();
        drop(f);
        let torn = std::fs::read(&s.path).unwrap();
        // A hard-link snapshot taken after the receiver died shares the torn inode.
        let snap = s.path.with_file_name("snapshot-copy");
        std::fs::hard_link(&s.path, &snap).unwrap();
        let shared = std::fs::metadata(&snap).unwrap().ino();
        assert_eq!(s.root.recover_patches().unwrap(), 1);
        let live = std::fs::metadata(&s.path).unwrap();
        assert_ne!(live.ino(), shared, "restored into a new inode");
        assert!(std::fs::read(&s.path).unwrap() == old_bytes());
        assert_eq!((live.mtime(), live.mode() & 0o7777), (OLD_MTIME, 0o640));
        assert!(
            std::fs::read(&snap).unwrap() == torn,
            "the snapshot's copy is untouched"
        );
        assert_eq!(logs_left(&s), 0);
        assert_eq!(
            std::fs::read_dir(s.path.with_file_name(".haul/staging"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn a_patch_that_completed_but_kept_its_log_is_left_patched() {
        let s = logged();
        std::fs::write(&s.path, new_bytes()).unwrap();
        File::options()
            .write(true)
            .open(&s.path)
            .unwrap()
            .set_times(
                std::fs::FileTimes::new()
                    .set_modified(UNIX_EPOCH + Duration::from_secs(NEW_MTIME as u64)),
            )
            .unwrap();
        assert_eq!(s.root.recover_patches().unwrap(), 0);
        assert!(std::fs::read(&s.path).unwrap() == new_bytes());
        assert_eq!(logs_left(&s), 0);
    }

    #[test]
    fn a_log_torn_before_it_was_complete_is_dropped_and_the_file_untouched() {
        let s = logged();
        let undo = s.path.with_file_name(".haul/undo");
        let log = std::fs::read_dir(&undo).unwrap().next().unwrap().unwrap();
        let len = log.metadata().unwrap().len();
        File::options()
            .write(true)
            .open(log.path())
            .unwrap()
            .set_len(len - 10)
            .unwrap();
        // Nothing is overwritten before the log is complete, so the file is the old version;
        // make it look different anyway to prove recovery does not touch it.
        let f = File::options().write(true).open(&s.path).unwrap();
        f.write_all_at(b"later write", 0).unwrap();
        assert_eq!(s.root.recover_patches().unwrap(), 0);
        assert_eq!(&std::fs::read(&s.path).unwrap()[..11], b"later write");
        assert_eq!(logs_left(&s), 0);
    }

    #[test]
    fn a_log_for_a_file_replaced_since_is_dropped_without_touching_the_new_file() {
        let s = logged();
        // Renamed away (not removed, so its inode number cannot be handed to the new file).
        std::fs::rename(&s.path, s.path.with_file_name("f.old")).unwrap();
        std::fs::write(&s.path, vec![7u8; LEN]).unwrap();
        assert_eq!(s.root.recover_patches().unwrap(), 0);
        assert!(std::fs::read(&s.path).unwrap().iter().all(|&b| b == 7));
        assert_eq!(logs_left(&s), 0);
    }
}
