//! Throughput history in `<top root>/.haul/history`: one text line per finished run,
//! `UNIX_SECS BYTES SECONDS`, so an ETA can start from what this target achieved before.
//! Text because an administrator may read it; append-only with one `write` per line, so
//! concurrent receivers interleave whole lines, and a torn last line is skipped when read.

use std::io;
use std::os::fd::OwnedFd;
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::error::StoreError;
use crate::root::Root;

const FILE: &str = "history";
/// Only the tail is read: a line is ~40 bytes, so this holds thousands of runs.
const READ_TAIL: u64 = 256 << 10;

impl Root {
    /// Appends a throughput record (`bytes` moved in `seconds`) to `<top root>/.haul/history`.
    /// `seconds` must be finite and not negative.
    pub fn record_throughput(&self, bytes: u64, seconds: f64) -> Result<(), StoreError> {
        let path = self.top.haul_path.join(FILE);
        if !seconds.is_finite() || seconds < 0.0 {
            return Err(StoreError::Io {
                path,
                op: "record throughput in",
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "the duration {seconds} is not a finite, non-negative number of seconds"
                    ),
                ),
            });
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let line = format!("{now} {bytes} {seconds}\n");
        let err = |e| StoreError::from_errno(e, path.clone(), self.path(), "append to");
        let fd = self
            .open_history(OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE)
            .map_err(err)?;
        // One write per line (a line is far below PIPE_BUF-like limits of regular files), so
        // concurrent appenders never interleave inside a line.
        let mut rest = line.as_bytes();
        while !rest.is_empty() {
            match rustix::io::write(&fd, rest) {
                Ok(0) => return Err(err(Errno::IO)),
                Ok(k) => rest = &rest[k..],
                Err(Errno::INTR) => {}
                Err(e) => return Err(err(e)),
            }
        }
        Ok(())
    }

    /// The last `n` throughput records, oldest first, as `(bytes, seconds)`. No history yet is
    /// an empty list; lines that do not parse are skipped.
    pub fn throughput_history(&self, n: usize) -> Result<Vec<(u64, f64)>, StoreError> {
        let path = self.top.haul_path.join(FILE);
        let err = |e| StoreError::from_errno(e, path.clone(), self.path(), "read");
        let fd = match self.open_history(OFlags::RDONLY) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(Vec::new()),
            Err(e) => return Err(err(e)),
        };
        let size = u64::try_from(rustix::fs::fstat(&fd).map_err(err)?.st_size).unwrap_or(0);
        let start = size.saturating_sub(READ_TAIL);
        let mut bytes = vec![0u8; usize::try_from(size - start).unwrap_or(0)];
        let mut filled = 0;
        while filled < bytes.len() {
            match rustix::io::pread(&fd, &mut bytes[filled..], start + filled as u64) {
                Ok(0) => break,
                Ok(k) => filled += k,
                Err(Errno::INTR) => {}
                Err(e) => return Err(err(e)),
            }
        }
        bytes.truncate(filled);
        let text = String::from_utf8_lossy(&bytes);
        let mut lines: Vec<&str> = text.lines().collect();
        if start > 0 {
            // The first line read from the middle of the file is a fragment.
            lines.remove(0);
        }
        let records: Vec<(u64, f64)> = lines.into_iter().filter_map(parse_line).collect();
        Ok(records[records.len().saturating_sub(n)..].to_vec())
    }

    fn open_history(&self, flags: OFlags) -> Result<OwnedFd, Errno> {
        let flags = flags | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        rustix::fs::openat(&self.top.haul, FILE, flags, Mode::from_raw_mode(0o600))
    }
}

fn parse_line(line: &str) -> Option<(u64, f64)> {
    let mut fields = line.split_ascii_whitespace();
    let _when: u64 = fields.next()?.parse().ok()?;
    let bytes = fields.next()?.parse().ok()?;
    let seconds: f64 = fields.next()?.parse().ok()?;
    (fields.next().is_none() && seconds.is_finite() && seconds >= 0.0).then_some((bytes, seconds))
}
