//! [`PartialDir`]: the top root's `.haul/partial` directory, where partials live (see
//! `partial`): naming its files in messages, taking a journal's lock, removing and syncing.
//! [`crate::Root`] holds one from [`crate::Root::open`] on, shared by every sub-root.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use crate::error::StoreError;

/// How long a held journal lock is retried before [`StoreError::Busy`]. Why not fail at once:
/// an `flock` belongs to the open file, which a child process shares from `fork` until its
/// `exec` closes the CLOEXEC fd; so a lock just released can look held for that instant
/// whenever any thread of the holder's process starts a program.
const BUSY_GRACE: Duration = Duration::from_millis(500);

/// The top root's `.haul/partial` directory.
pub(crate) struct PartialDir {
    pub(crate) dir: OwnedFd,
    pub(crate) path: PathBuf,
    /// The top root, named by NoSpace messages.
    pub(crate) root_path: PathBuf,
}

impl PartialDir {
    pub(crate) fn new(dir: OwnedFd, path: PathBuf, root_path: PathBuf) -> PartialDir {
        PartialDir {
            dir,
            path,
            root_path,
        }
    }

    pub(crate) fn err(&self, errno: Errno, name: &str, op: &'static str) -> StoreError {
        StoreError::from_errno(errno, self.path.join(name), &self.root_path, op)
    }

    /// Opens (creating) `name` and takes its exclusive lock without waiting.
    pub(crate) fn lock_journal(&self, name: &str, dest: &Path) -> Result<OwnedFd, StoreError> {
        let flags = OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        let deadline = Instant::now() + BUSY_GRACE;
        let mut pause = Duration::from_millis(2);
        // Several rounds: the previous holder may unlink the journal (install, discard)
        // between our open and our lock, leaving us a lock on a file nobody else will ever
        // look at; and a lock that looks held may be in its grace period (see BUSY_GRACE).
        for _ in 0..64 {
            let fd = rustix::fs::openat(&self.dir, name, flags, Mode::from_raw_mode(0o600))
                .map_err(|e| self.err(e, name, "open partial journal"))?;
            match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(Errno::WOULDBLOCK) if Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(50));
                    continue;
                }
                Err(Errno::WOULDBLOCK) => {
                    return Err(StoreError::Busy {
                        path: dest.to_path_buf(),
                    });
                }
                Err(e) => return Err(self.err(e, name, "lock partial journal")),
            }
            let ours = rustix::fs::fstat(&fd).map_err(|e| self.err(e, name, "inspect"))?;
            match rustix::fs::statat(&self.dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if st.st_ino == ours.st_ino && st.st_dev == ours.st_dev => return Ok(fd),
                Ok(_) | Err(Errno::NOENT) => continue,
                Err(e) => return Err(self.err(e, name, "inspect")),
            }
        }
        Err(StoreError::Busy {
            path: dest.to_path_buf(),
        })
    }

    pub(crate) fn remove(&self, name: &str) -> Result<(), StoreError> {
        match rustix::fs::unlinkat(&self.dir, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(self.err(e, name, "remove partial file")),
        }
    }

    pub(crate) fn sync(&self) -> Result<(), StoreError> {
        rustix::fs::fsync(&self.dir).map_err(|e| {
            StoreError::from_errno(e, self.path.clone(), &self.root_path, "flush directory")
        })
    }
}
