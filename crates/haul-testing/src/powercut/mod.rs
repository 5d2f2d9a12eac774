//! A FUSE file system that can lose power.
//!
//! [`PowerCut::mount`] serves a backing directory on a mount point, passing every operation
//! through, and keeps beside it what a real disk would have kept if the power went off now:
//!
//! - **File data and size** are durable after an `fsync` or `fdatasync` of that file; the
//!   metadata (mode, owner, times, extended attributes) after an `fsync`.
//! - **Directory entries** (creates, links, unlinks) are durable after an `fsync` of that
//!   directory, and its own metadata with them. A rename is durable once its *destination*
//!   directory is synced, and then on both sides at once (the old name goes with it); until
//!   then it is undone, even if the source directory was synced: the inode is never lost
//!   between two directories, nor doubled.
//! - **`syncfs`** (of a file on the mount) and **`sync`** make everything durable. FUSE never
//!   hears of them, so they are seen only for a process started with [`PowerCut::spawn`],
//!   which runs it under `ptrace` (see the `trace` module). A `syncfs` of a process started
//!   otherwise makes nothing durable here.
//! - `close` (FUSE `flush`/`release`) makes nothing durable. What existed at mount time is
//!   durable.
//!
//! [`PowerCut::cut`] cuts the power: the processes started with [`PowerCut::spawn`] are
//! killed, the file system stops serving and is unmounted, and the backing directory is
//! rewritten to its durable state: files whose creation (or rename, or link) never became
//! durable disappear, unlinks and renames that never did are undone, and each file's
//! unsynced data is dropped ([`DataLoss::Drop`]: back to the synced size and bytes) or
//! read back as zeros ([`DataLoss::ZeroFill`]: the size stays, as ext4's delayed allocation
//! or XFS can show). [`NamespaceLoss::Journaled`] keeps the whole namespace and every inode's
//! metadata as they are (a file system that committed its metadata journal just before the
//! cut) and loses only unsynced data: the case where a file has its final name, size and
//! mtime but not its bytes. The [`Report`] says what was rolled back.
//!
//! [`PowerCut::cut_after`] sets a [`Trigger`]: after that many durability operations (or
//! changes) everything on the mount, including a traced `syncfs`, waits forever, as the
//! writer of a disk that lost power would; the test then cuts the power.
//!
//! Needs root and `/dev/fuse`; fuser's own mount code is used, so no libfuse or
//! `fusermount3` is needed. The backing directory's parent must be on the same file system
//! (a sibling `.NAME.powercut` directory keeps the graveyard of inodes the durable state
//! still names).

mod fs;
mod model;
mod trace;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use trace::{Exit, Traced};

/// What happens to data that was never synced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataLoss {
    /// Cut back to the size and bytes of the last fsync/fdatasync.
    Drop,
    /// The size stays; bytes written since the last sync read back as zeros.
    ZeroFill,
}

/// What happens to namespace and metadata changes that were never synced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamespaceLoss {
    /// Undone unless synced (POSIX: the entry by its directory's fsync, the metadata by the
    /// file's).
    Strict,
    /// Kept: the metadata journal was committed just before the cut; only data is lost.
    Journaled,
}

/// How the power cut loses what was not synced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mode {
    /// Names and metadata.
    pub namespace: NamespaceLoss,
    /// File data.
    pub data: DataLoss,
}

impl Mode {
    /// POSIX at its strictest: only what was synced survives.
    pub fn strict() -> Mode {
        Mode {
            namespace: NamespaceLoss::Strict,
            data: DataLoss::Drop,
        }
    }

    /// Like [`Mode::strict`], but a file whose name survived keeps its size, with the
    /// unsynced bytes zeroed.
    pub fn zero_fill() -> Mode {
        Mode {
            namespace: NamespaceLoss::Strict,
            data: DataLoss::ZeroFill,
        }
    }

    /// Names, sizes, modes and mtimes all kept; unsynced bytes zeroed (a metadata journal
    /// committed ahead of the data).
    pub fn journaled() -> Mode {
        Mode {
            namespace: NamespaceLoss::Journaled,
            data: DataLoss::ZeroFill,
        }
    }
}

/// When the file system stops answering.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Trigger {
    /// Never (until [`PowerCut::cut`]).
    #[default]
    Never,
    /// After this many durability operations (fsync, fdatasync, fsync of a directory,
    /// traced syncfs/sync): the next operation of any kind waits.
    AfterDurableOps(u64),
    /// After this many changes (every operation that modifies something, durability
    /// operations included).
    AfterMutations(u64),
}

/// Operations seen since the mount.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Every operation let through.
    pub ops: u64,
    /// Operations that change something (writes, creates, renames, setattr, ...) or sync.
    pub mutations: u64,
    /// `fsync` of a file or directory through FUSE's FSYNC.
    pub fsync: u64,
    /// `fdatasync`.
    pub fdatasync: u64,
    /// `fsync` of a directory (FSYNCDIR).
    pub fsyncdir: u64,
    /// Traced `syncfs` on the mount and `sync`.
    pub syncfs: u64,
}

impl Counters {
    /// The durability operations.
    pub fn durable(&self) -> u64 {
        self.fsync + self.fdatasync + self.fsyncdir + self.syncfs
    }
}

/// A file whose data the cut rolled back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataRollback {
    /// Relative to the backing directory.
    pub path: PathBuf,
    /// Its size before the cut.
    pub live_size: u64,
    /// The size its last sync made durable.
    pub durable_size: u64,
    /// Its size after the cut.
    pub final_size: u64,
    /// Bytes overwritten since the last sync that were put back.
    pub restored_bytes: u64,
}

/// What a cut rolled back. Paths are relative to the backing directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The mode of the cut.
    pub mode: Mode,
    /// Operations seen before the cut.
    pub counters: Counters,
    /// The first operation the trigger held back, if it fired.
    pub blocked: Option<String>,
    /// The last changes before the cut, oldest first (`#N op path`).
    pub last_ops: Vec<String>,
    /// Names that existed but were not durable (creates, links, renames into them undone).
    pub removed: Vec<PathBuf>,
    /// Durable names that were gone or named another inode (unlinks, renames undone).
    pub restored: Vec<PathBuf>,
    /// Files whose data was rolled back.
    pub data: Vec<DataRollback>,
    /// Entries whose metadata was put back to its durable state.
    pub meta: Vec<PathBuf>,
    /// Durable names whose inode could not be found (a bug of this file system).
    pub missing: Vec<PathBuf>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counters;
        writeln!(
            f,
            "power cut ({:?}/{:?}) after {} ops, {} changes, {} durability ops \
             (fsync {}, fdatasync {}, fsyncdir {}, syncfs {})",
            self.mode.namespace,
            self.mode.data,
            c.ops,
            c.mutations,
            c.durable(),
            c.fsync,
            c.fdatasync,
            c.fsyncdir,
            c.syncfs
        )?;
        if let Some(b) = &self.blocked {
            writeln!(f, "  held back: {b}")?;
        }
        for op in self.last_ops.iter().rev().take(8).rev() {
            writeln!(f, "  before: {op}")?;
        }
        let list = |f: &mut fmt::Formatter<'_>, what: &str, v: &[PathBuf]| -> fmt::Result {
            if !v.is_empty() {
                let shown: Vec<String> =
                    v.iter().take(12).map(|p| p.display().to_string()).collect();
                let more = v.len().saturating_sub(12);
                let tail = if more > 0 {
                    format!(" (+{more} more)")
                } else {
                    String::new()
                };
                writeln!(f, "  {what} ({}): {}{tail}", v.len(), shown.join(", "))?;
            }
            Ok(())
        };
        list(f, "removed", &self.removed)?;
        list(f, "restored", &self.restored)?;
        list(f, "metadata reverted", &self.meta)?;
        list(f, "MISSING", &self.missing)?;
        for d in self.data.iter().take(12) {
            writeln!(
                f,
                "  data: {} {} -> {} bytes (synced {}, {} bytes put back)",
                d.path.display(),
                d.live_size,
                d.final_size,
                d.durable_size,
                d.restored_bytes
            )?;
        }
        if self.data.len() > 12 {
            writeln!(f, "  data: +{} more files", self.data.len() - 12)?;
        }
        Ok(())
    }
}

/// A mounted power-cut file system (see the module docs).
pub struct PowerCut {
    shared: Arc<fs::Shared>,
    session: Option<fuser::BackgroundSession>,
    mode: Mode,
    backing: PathBuf,
    mountpoint: PathBuf,
    state_dir: PathBuf,
    traced: Mutex<Vec<(i32, Arc<Traced>)>>,
}

impl fmt::Debug for PowerCut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PowerCut")
            .field("backing", &self.backing)
            .field("mountpoint", &self.mountpoint)
            .field("mode", &self.mode)
            .finish()
    }
}

impl PowerCut {
    /// Serves `backing` (a directory) on `mountpoint` (an empty directory). Everything in
    /// `backing` now is durable.
    pub fn mount(backing: &Path, mountpoint: &Path, mode: Mode) -> io::Result<PowerCut> {
        let backing = backing.canonicalize()?;
        let mountpoint = mountpoint.canonicalize()?;
        let (Some(parent), Some(name)) = (backing.parent(), backing.file_name()) else {
            return Err(io::Error::other("the backing directory needs a parent"));
        };
        let state_dir = parent.join(format!(".{}.powercut", name.to_string_lossy()));
        if state_dir.exists() {
            std::fs::remove_dir_all(&state_dir)?;
        }
        let grave = state_dir.join("grave");
        std::fs::create_dir_all(&grave)?;
        let dev = |p: &Path| rustix::fs::stat(p).map(|s| s.st_dev);
        if dev(&grave)? != dev(&backing)? {
            return Err(io::Error::other(format!(
                "{} must be on the same file system as {} (it keeps the graveyard)",
                state_dir.display(),
                backing.display()
            )));
        }
        let model = model::Model::scan(&backing)?;
        let shared = Arc::new(fs::Shared::new(&backing, &grave, model)?);
        let mut config = fuser::Config::default();
        // Any user may use it (a test may run haul as nobody); every operation is done as
        // root on the backing directory, without permission checks.
        config.acl = fuser::SessionACL::All;
        config.mount_options = vec![
            fuser::MountOption::FSName("haul-powercut".into()),
            fuser::MountOption::Subtype("powercut".into()),
        ];
        let session = fuser::spawn_mount(
            fs::PowerFs {
                shared: shared.clone(),
            },
            &mountpoint,
            &config,
        )?;
        Ok(PowerCut {
            shared,
            session: Some(session),
            mode,
            backing,
            mountpoint,
            state_dir,
            traced: Mutex::new(Vec::new()),
        })
    }

    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The directory it serves.
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// Sets when it stops answering (counted from the mount).
    pub fn cut_after(&self, trigger: Trigger) {
        self.shared.lock().gate.trigger = trigger;
    }

    /// Makes every fsync, fdatasync, fsync of a directory and traced syncfs/sync fail with
    /// EIO from now on (they make nothing durable).
    pub fn fail_syncs(&self, fail: bool) {
        self.shared.lock().gate.faults.fail_syncs = fail;
    }

    /// Makes writes fail with ENOSPC once `bytes` were written since the mount (None: no
    /// limit). The free space `statfs` reports is the backing file system's.
    pub fn space_limit(&self, bytes: Option<u64>) {
        self.shared.lock().gate.faults.space = bytes;
    }

    /// Makes creating an entry named `name` (in any directory: create, mkdir, mknod,
    /// symlink, link, rename onto it) fail with EIO.
    pub fn fail_name(&self, name: Option<&std::ffi::OsStr>) {
        self.shared.lock().gate.faults.fail_name = name.map(|n| n.to_os_string());
    }

    /// Operations seen so far.
    pub fn counters(&self) -> Counters {
        self.shared.lock().gate.counters
    }

    /// Durability operations seen so far.
    pub fn durable_ops(&self) -> u64 {
        self.counters().durable()
    }

    /// Whether the trigger's count has been reached.
    pub fn triggered(&self) -> bool {
        self.shared.lock().gate.reached()
    }

    /// The first operation the trigger held back, once one was.
    pub fn blocked(&self) -> Option<String> {
        self.shared.lock().gate.blocked.clone()
    }

    /// The last changes, oldest first.
    pub fn last_ops(&self) -> Vec<String> {
        self.shared.lock().log.iter().cloned().collect()
    }

    /// Starts `cmd` traced, so its `syncfs` on this mount and `sync` count (see the module
    /// docs). Its stdin is null; its stdout and stderr are collected. [`PowerCut::cut`]
    /// kills it.
    pub fn spawn(&self, cmd: &Command) -> io::Result<Arc<Traced>> {
        let shared = self.shared.clone();
        let mountpoint = self.mountpoint.clone();
        let hook: trace::Hook = Arc::new(move |tid, fd| {
            let what = match fd {
                None => "sync".to_string(),
                Some(fd) => {
                    let link = std::fs::read_link(format!("/proc/{tid}/fd/{fd}"));
                    match link {
                        Ok(path) if path.starts_with(&mountpoint) => {
                            let rel = path.strip_prefix(&mountpoint).unwrap_or(&path);
                            format!("syncfs /{}", rel.display())
                        }
                        _ => return trace::Decision::Proceed,
                    }
                }
            };
            shared.syncfs(what)
        });
        let traced = Arc::new(trace::spawn(cmd, hook)?);
        self.traced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((traced.pid() as i32, traced.clone()));
        Ok(traced)
    }

    /// Waits until the trigger holds an operation back, the trigger is reached and nothing
    /// came for `quiet`, or `child` ends; true when the trigger fired.
    pub fn wait_for_trigger(&self, child: &Traced, quiet: Duration, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut reached_at = None;
        while Instant::now() < deadline {
            if self.blocked().is_some() {
                return true;
            }
            if self.triggered() {
                let at = *reached_at.get_or_insert_with(Instant::now);
                if at.elapsed() >= quiet {
                    return true;
                }
            }
            if child.try_wait().is_some() {
                return self.triggered();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.triggered()
    }

    fn kill_traced(&self) {
        let traced: Vec<_> = self
            .traced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for (_, t) in &traced {
            t.kill();
        }
        // Released from the gate, their held-back requests fail and they die.
        self.shared.set_cut();
        for (_, t) in &traced {
            let _ = t.wait_timeout(Duration::from_secs(60));
        }
    }

    fn stop_serving(&mut self) -> io::Result<()> {
        self.shared.set_cut();
        if let Some(session) = self.session.take()
            && let Err(e) = session.umount_and_join()
        {
            match rustix::mount::unmount(&self.mountpoint, rustix::mount::UnmountFlags::DETACH) {
                Ok(()) => {}
                // Not a mount point any more: the session already ended (a killed process
                // can abort the FUSE connection, and the kernel then drops the mount).
                Err(rustix::io::Errno::INVAL) if !is_mount_point(&self.mountpoint) => {}
                Err(d) => {
                    return Err(io::Error::other(format!(
                        "cannot unmount {} ({e}), not even lazily ({d})",
                        self.mountpoint.display()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Cuts the power: kills the traced processes (kill any others using the mount first),
    /// unmounts, and rewrites the backing directory to its durable state.
    pub fn cut(mut self) -> io::Result<Report> {
        self.kill_traced();
        self.stop_serving()?;
        let st = self.shared.lock();
        let mut report = Report {
            mode: self.mode,
            counters: st.gate.counters,
            blocked: st.gate.blocked.clone(),
            last_ops: st.log.iter().cloned().collect(),
            removed: Vec::new(),
            restored: Vec::new(),
            data: Vec::new(),
            meta: Vec::new(),
            missing: Vec::new(),
        };
        st.model.rollback(
            &self.backing,
            &self.state_dir,
            &self.shared.grave,
            self.mode,
            &mut report,
        )?;
        drop(st);
        std::fs::remove_dir_all(&self.state_dir)?;
        Ok(report)
    }

    /// Unmounts cleanly (as a shutdown would: everything stays as it is). Kill the
    /// processes using the mount first.
    pub fn unmount(mut self) -> io::Result<()> {
        self.kill_traced();
        self.stop_serving()?;
        std::fs::remove_dir_all(&self.state_dir)
    }
}

impl Drop for PowerCut {
    fn drop(&mut self) {
        if self.session.is_some() {
            self.kill_traced();
            let _ = self.stop_serving();
            let _ = std::fs::remove_dir_all(&self.state_dir);
        }
    }
}

/// True when `dir` is on another device than its parent (something is mounted on it).
fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(me), Some(Ok(parent))) = (
        std::fs::symlink_metadata(dir),
        dir.parent().map(std::fs::symlink_metadata),
    ) else {
        return false;
    };
    me.dev() != parent.dev()
}
