//! [`SourceLock`]: one migration from a source at a time, on this host.
//!
//! The lock is an advisory `flock` on `<state dir>/locks/<blake3 of the canonical source
//! path>.lock`. The kernel drops a `flock` when its holder's last file descriptor closes, so a
//! killed holder never blocks the next run, and no stale-lock heuristics are needed. The file
//! holds who took the lock (pid, host, purpose, time) so a refusal can say who to wait for; it
//! is never removed, because removing a lock file lets two processes lock two different
//! files of the same name.

use std::fs::{DirBuilder, File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::FlockOperation;
use rustix::io::Errno;

use crate::db::now_ms;
use crate::error::StateError;

/// How long a held lock is retried before [`StateError::SourceLocked`]. Why not refuse at
/// once: a `flock` belongs to the open file, which a child process shares from `fork` until
/// its `exec` closes the CLOEXEC descriptor, so a lock just released can look held for that
/// instant whenever any thread of the holder's process starts a program. The same grace
/// lets a new holder finish writing its name into the file.
const GRACE: Duration = Duration::from_millis(500);

/// The exclusive lock on one source, held until dropped.
///
/// ```
/// use haul_state::SourceLock;
/// let state = tempfile::tempdir().unwrap();
/// let source = tempfile::tempdir().unwrap();
/// let lock = SourceLock::acquire(state.path(), source.path(), "push to target").unwrap();
/// // A second holder, even in this process, is refused (the lock is per open file).
/// let refused = SourceLock::acquire(state.path(), source.path(), "another push").unwrap_err();
/// assert!(refused.is_retryable());
/// drop(lock);
/// SourceLock::acquire(state.path(), source.path(), "another push").unwrap();
/// ```
#[derive(Debug)]
pub struct SourceLock {
    file: File,
    lock_file: PathBuf,
    source_path: PathBuf,
}

impl SourceLock {
    /// Takes the lock of `source` (which must exist; it is canonicalized, so two spellings
    /// of one directory share a lock) in `state_dir/locks/`, creating that directory (mode
    /// 0700). `purpose` says what the holder does ("push to quic://target/po1"); a refused
    /// caller sees it in [`StateError::SourceLocked`], with the holder's pid, host and start.
    pub fn acquire(
        state_dir: &Path,
        source: &Path,
        purpose: &str,
    ) -> Result<SourceLock, StateError> {
        let source_path = std::fs::canonicalize(source)
            .map_err(|e| StateError::io(source, "resolve the source path", e))?;
        let locks = state_dir.join("locks");
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&locks)
            .map_err(|e| StateError::io(&locks, "create the lock directory", e))?;
        let name = blake3::hash(source_path.as_os_str().as_bytes()).to_hex();
        let lock_file = locks.join(format!("{name}.lock"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_file)
            .map_err(|e| StateError::io(&lock_file, "open the source lock", e))?;

        let deadline = Instant::now() + GRACE;
        let mut pause = Duration::from_millis(2);
        loop {
            match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(Errno::WOULDBLOCK) => {
                    if Instant::now() >= deadline {
                        let holder = Holder::read(&lock_file).unwrap_or_default();
                        return Err(StateError::SourceLocked {
                            source_path,
                            pid: holder.pid,
                            host: holder.host,
                            purpose: holder.purpose,
                            since: holder.since,
                            lock_file,
                        });
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Err(e) => {
                    return Err(StateError::io(&lock_file, "lock the source lock", e.into()));
                }
            }
        }

        let holder = Holder {
            pid: std::process::id(),
            host: host_name(),
            purpose: purpose.to_owned(),
            since: now_ms(),
        };
        let text = holder.to_text(&source_path);
        file.set_len(0)
            .and_then(|()| file.write_all_at(text.as_bytes(), 0))
            .map_err(|e| StateError::io(&lock_file, "write the source lock", e))?;
        Ok(SourceLock {
            file,
            lock_file,
            source_path,
        })
    }

    /// The source this lock holds, canonicalized.
    pub fn source(&self) -> &Path {
        &self.source_path
    }

    /// The lock file.
    pub fn lock_file(&self) -> &Path {
        &self.lock_file
    }
}

impl Drop for SourceLock {
    fn drop(&mut self) {
        // Empty the file first so that nobody reads our name after we let go; then unlock
        // explicitly, which also frees the lock if a child forked right now still shares the
        // descriptor. Both best effort: closing the file releases the lock anyway.
        let _ = self.file.set_len(0);
        let _ = rustix::fs::flock(&self.file, FlockOperation::Unlock);
    }
}

/// Who holds a lock, as written in its file.
#[derive(Debug, Default, PartialEq, Eq)]
struct Holder {
    pid: u32,
    host: String,
    purpose: String,
    since: i64,
}

impl Holder {
    fn to_text(&self, source: &Path) -> String {
        // One field per line: a newline inside a value would start a bogus field.
        let flat = |s: &str| s.replace(['\n', '\r'], " ");
        format!(
            "pid={}\nhost={}\npurpose={}\nsince={}\nsource={}\n",
            self.pid,
            flat(&self.host),
            flat(&self.purpose),
            self.since,
            flat(&source.to_string_lossy())
        )
    }

    /// Reads the holder from the lock file; `None` if it is empty or unreadable (a holder
    /// that has not written yet, or one releasing it right now).
    fn read(lock_file: &Path) -> Option<Holder> {
        let text = std::fs::read_to_string(lock_file).ok()?;
        let mut holder = Holder::default();
        let mut seen_pid = false;
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            match key {
                "pid" => {
                    holder.pid = value.parse().ok()?;
                    seen_pid = true;
                }
                "host" => holder.host = value.to_owned(),
                "purpose" => holder.purpose = value.to_owned(),
                "since" => holder.since = value.parse().ok()?,
                _ => {}
            }
        }
        seen_pid.then_some(holder)
    }
}

/// This host's name (uname's nodename).
fn host_name() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// Unix milliseconds as "YYYY-MM-DD HH:MM:SS UTC" (proleptic Gregorian calendar).
pub(crate) fn format_utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(1_796_411_949_999), "2026-12-04 19:19:09 UTC");
    }

    #[test]
    fn holder_round_trips_through_text() {
        let holder = Holder {
            pid: 42,
            host: "src1".into(),
            purpose: "push\nto target".into(),
            since: 1_700_000_000_000,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        std::fs::write(&path, holder.to_text(Path::new("/srv/po1"))).unwrap();
        let read = Holder::read(&path).unwrap();
        assert_eq!(read.purpose, "push to target");
        assert_eq!(
            (read.pid, read.host.as_str(), read.since),
            (42, "src1", holder.since)
        );
        std::fs::write(&path, "").unwrap();
        assert_eq!(Holder::read(&path), None);
    }
}
