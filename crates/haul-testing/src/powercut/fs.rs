//! The FUSE side: every operation passed through to the backing directory, with the
//! durability model told what changed and the gate that freezes everything after the trigger.

use std::collections::{HashMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use nix::libc;
use rustix::fs::{AtFlags, Mode as RMode, OFlags, Stat, Timespec, Timestamps};

use super::model::{self, Ino, Model, PendingRename, libc_s};
use super::trace::Decision;
use super::{Counters, Trigger};

/// Operations that make a new name (the name they are given is the new one).
const CREATES: [&str; 5] = ["create", "mkdir", "mknod", "symlink", "link"];

/// How long the kernel may cache names and attributes: every change goes through us.
const TTL: Duration = Duration::from_secs(1);

/// Operations remembered for the report.
const LOG_LEN: usize = 32;

/// What kind of operation enters the gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Read,
    Mutate,
    Fsync,
    Fdatasync,
    Fsyncdir,
    Syncfs,
}

/// The trigger and what it counts.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    pub(crate) trigger: Trigger,
    pub(crate) counters: Counters,
    /// Set once an operation arrived after the trigger was reached: everything waits.
    pub(crate) frozen: bool,
    /// The power is off: everything fails with EIO.
    pub(crate) cut: bool,
    /// The first operation held back.
    pub(crate) blocked: Option<String>,
    /// Faults to inject.
    pub(crate) faults: Faults,
    /// Bytes written (and allocated) since the mount, for `Faults::space`.
    pub(crate) written: u64,
}

/// Faults a test can ask for.
#[derive(Clone, Debug, Default)]
pub(crate) struct Faults {
    /// fsync, fdatasync, fsync of a directory and traced syncfs/sync fail with EIO (and make
    /// nothing durable).
    pub(crate) fail_syncs: bool,
    /// Writes fail with ENOSPC once this many bytes were written since the mount.
    pub(crate) space: Option<u64>,
    /// Creating an entry of this name (create, mkdir, mknod, symlink, link, rename onto it)
    /// fails with EIO.
    pub(crate) fail_name: Option<OsString>,
}

impl Gate {
    pub(crate) fn reached(&self) -> bool {
        match self.trigger {
            Trigger::Never => false,
            Trigger::AfterDurableOps(n) => self.counters.durable() >= n,
            Trigger::AfterMutations(n) => self.counters.mutations >= n,
        }
    }

    fn count(&mut self, kind: Kind) {
        let c = &mut self.counters;
        c.ops += 1;
        match kind {
            Kind::Read => return,
            Kind::Mutate => {}
            Kind::Fsync => c.fsync += 1,
            Kind::Fdatasync => c.fdatasync += 1,
            Kind::Fsyncdir => c.fsyncdir += 1,
            Kind::Syncfs => c.syncfs += 1,
        }
        c.mutations += 1;
    }
}

struct Node {
    /// `O_PATH | O_NOFOLLOW` on the backing inode.
    fd: OwnedFd,
    nlookup: u64,
    /// A name it was last seen under (relative to the root), for messages.
    hint: PathBuf,
}

/// Everything behind the one lock.
pub(crate) struct State {
    pub(crate) model: Model,
    nodes: HashMap<u64, Node>,
    files: HashMap<u64, (Ino, Arc<File>)>,
    dirs: HashMap<u64, Vec<(u64, FileType, OsString)>>,
    next_fh: u64,
    pub(crate) gate: Gate,
    pub(crate) log: VecDeque<String>,
}

impl State {
    fn describe(&self, op: &str, ino: u64, name: Option<&OsStr>) -> String {
        let hint = self
            .nodes
            .get(&ino)
            .map(|n| n.hint.clone())
            .unwrap_or_else(|| PathBuf::from(format!("<ino {ino}>")));
        match name {
            Some(name) => format!("{op} {}", hint.join(name).display()),
            None if hint.as_os_str().is_empty() => format!("{op} /"),
            None => format!("{op} {}", hint.display()),
        }
    }

    fn note(&mut self, what: String) {
        if self.log.len() == LOG_LEN {
            self.log.pop_front();
        }
        let n = self.gate.counters.mutations;
        self.log.push_back(format!("#{n} {what}"));
    }

    fn node(&self, ino: u64) -> Result<&Node, Errno> {
        self.nodes.get(&ino).ok_or(Errno::ESTALE)
    }

    fn fd(&self, ino: u64) -> Result<BorrowedFd<'_>, Errno> {
        Ok(self.node(ino)?.fd.as_fd())
    }

    fn add_file(&mut self, ino: Ino, file: File) -> u64 {
        self.next_fh += 1;
        self.files.insert(self.next_fh, (ino, Arc::new(file)));
        self.next_fh
    }
}

/// State shared by the FUSE thread, the tracer and the [`PowerCut`](super::PowerCut) handle.
pub(crate) struct Shared {
    state: Mutex<State>,
    cv: Condvar,
    pub(crate) backing: PathBuf,
    pub(crate) grave: PathBuf,
    grave_fd: OwnedFd,
    /// The backing root's inode number (FUSE calls it 1).
    root: Ino,
}

impl Shared {
    pub(crate) fn new(backing: &Path, grave: &Path, model: Model) -> io::Result<Shared> {
        let root_fd = rustix::fs::open(
            backing,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            RMode::empty(),
        )?;
        let grave_fd = rustix::fs::open(
            grave,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            RMode::empty(),
        )?;
        let root = model.root;
        let mut nodes = HashMap::new();
        nodes.insert(
            1,
            Node {
                fd: root_fd,
                nlookup: 1,
                hint: PathBuf::new(),
            },
        );
        Ok(Shared {
            state: Mutex::new(State {
                model,
                nodes,
                files: HashMap::new(),
                dirs: HashMap::new(),
                next_fh: 0,
                gate: Gate::default(),
                log: VecDeque::new(),
            }),
            cv: Condvar::new(),
            backing: backing.to_path_buf(),
            grave: grave.to_path_buf(),
            grave_fd,
            root,
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Turns the power off: every operation from now on fails, and those held back by the
    /// trigger are released to fail too.
    pub(crate) fn set_cut(&self) {
        self.lock().gate.cut = true;
        self.cv.notify_all();
    }

    /// Lets an operation in: counts it, or holds it until the cut (then EIO) once the
    /// trigger is reached.
    fn enter(
        &self,
        kind: Kind,
        op: &str,
        ino: u64,
        name: Option<&OsStr>,
    ) -> Result<MutexGuard<'_, State>, Errno> {
        let mut st = self.lock();
        loop {
            if st.gate.cut {
                return Err(Errno::EIO);
            }
            if st.gate.frozen || st.gate.reached() {
                if !st.gate.frozen {
                    st.gate.frozen = true;
                    st.gate.blocked = Some(st.describe(op, ino, name));
                }
                st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            break;
        }
        st.gate.count(kind);
        if kind != Kind::Read {
            let what = st.describe(op, ino, name);
            st.note(what);
        }
        let f = &st.gate.faults;
        if (f.fail_syncs && matches!(kind, Kind::Fsync | Kind::Fdatasync | Kind::Fsyncdir))
            || (kind == Kind::Mutate
                && CREATES.contains(&op)
                && name.is_some()
                && f.fail_name.as_deref() == name)
        {
            return Err(Errno::EIO);
        }
        Ok(st)
    }

    /// Counts `len` more bytes written; ENOSPC past `Faults::space`.
    fn charge(&self, st: &mut State, len: u64) -> Result<(), Errno> {
        if let Some(space) = st.gate.faults.space
            && st.gate.written + len > space
        {
            return Err(Errno::ENOSPC);
        }
        st.gate.written += len;
        Ok(())
    }

    /// A `syncfs` (or `sync`) the tracer caught at its entry: everything so far becomes
    /// durable. False when the power is off or the trigger holds it back (the tracer then
    /// leaves the thread stopped).
    pub(crate) fn syncfs(&self, what: String) -> Decision {
        let mut st = self.lock();
        if st.gate.cut {
            return Decision::Freeze;
        }
        if st.gate.frozen || st.gate.reached() {
            if !st.gate.frozen {
                st.gate.frozen = true;
                st.gate.blocked = Some(what);
            }
            return Decision::Freeze;
        }
        st.gate.count(Kind::Syncfs);
        if st.gate.faults.fail_syncs {
            st.note(format!("{what} (failed: EIO)"));
            return Decision::Fail(libc::EIO);
        }
        st.note(what);
        if let Err(e) = st.model.sync_all(&self.backing) {
            st.note(format!("(syncfs could not snapshot the tree: {e})"));
        }
        st.model.grave.clear();
        let _ = model::clear_dir(&self.grave);
        Decision::Proceed
    }

    fn fuse_ino(&self, ino: Ino) -> u64 {
        if ino == self.root {
            1
        } else if ino == 1 {
            self.root
        } else {
            ino
        }
    }

    fn backing_ino(&self, ino: u64) -> Ino {
        if ino == 1 {
            self.root
        } else if ino == self.root {
            1
        } else {
            ino
        }
    }

    fn attr(&self, st: &State, stat: &Stat) -> FileAttr {
        let mut nlink = stat.st_nlink as u32;
        if st.model.grave.contains_key(&stat.st_ino) && stat.st_mode & libc_s::IFMT != libc_s::IFDIR
        {
            nlink = nlink.saturating_sub(1);
        }
        FileAttr {
            ino: INodeNo(self.fuse_ino(stat.st_ino)),
            size: stat.st_size as u64,
            blocks: stat.st_blocks as u64,
            atime: time(stat.st_atime, stat.st_atime_nsec as i64),
            mtime: time(stat.st_mtime, stat.st_mtime_nsec as i64),
            ctime: time(stat.st_ctime, stat.st_ctime_nsec as i64),
            crtime: UNIX_EPOCH,
            kind: kind_of(stat.st_mode),
            perm: (stat.st_mode & 0o7777) as u16,
            nlink,
            uid: stat.st_uid,
            gid: stat.st_gid,
            rdev: stat.st_rdev as u32,
            blksize: stat.st_blksize as u32,
            flags: 0,
        }
    }

    /// Looks `name` up in `parent` and remembers the inode (one more lookup reference).
    fn remember(&self, st: &mut State, parent: u64, name: &OsStr) -> Result<FileAttr, Errno> {
        let pfd = st.fd(parent)?;
        let stat = rustix::fs::statat(pfd, name, AtFlags::SYMLINK_NOFOLLOW).map_err(errno)?;
        let ino = self.fuse_ino(stat.st_ino);
        let hint = st.node(parent)?.hint.join(name);
        let opened = match st.nodes.get(&ino) {
            Some(_) => None,
            None => Some(
                rustix::fs::openat(
                    pfd,
                    name,
                    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    RMode::empty(),
                )
                .map_err(errno)?,
            ),
        };
        match opened {
            Some(fd) => {
                if model::ino_of(&fd).map_err(io_errno)? != stat.st_ino {
                    return Err(Errno::ESTALE);
                }
                st.nodes.insert(
                    ino,
                    Node {
                        fd,
                        nlookup: 1,
                        hint,
                    },
                );
            }
            None => {
                if let Some(node) = st.nodes.get_mut(&ino) {
                    node.nlookup += 1;
                    node.hint = hint;
                }
            }
        }
        Ok(self.attr(st, &stat))
    }

    /// A new inode just made under `parent`/`name`: remembered, and its durable state reset.
    fn made(&self, st: &mut State, parent: u64, name: &OsStr) -> Result<FileAttr, Errno> {
        let attr = self.remember(st, parent, name)?;
        let ino = attr.ino.0;
        let meta = model::meta_of_fd(st.fd(ino)?).map_err(io_errno)?;
        st.model.created(self.backing_ino(ino), meta);
        Ok(attr)
    }

    /// Keeps `name` in `parent` alive in the graveyard before it loses that name, when the
    /// durable state still needs it. A directory is moved there instead (`moved` true).
    fn keep(&self, st: &mut State, parent: u64, name: &OsStr) -> Result<Option<Ino>, Errno> {
        let pfd = st.fd(parent)?;
        let stat = rustix::fs::statat(pfd, name, AtFlags::SYMLINK_NOFOLLOW).map_err(errno)?;
        let ino = stat.st_ino;
        if st.model.grave.contains_key(&ino) || !needs_keeping(&st.model, ino) {
            return Ok(None);
        }
        let grave_name = OsString::from(format!("{ino}"));
        if stat.st_mode & libc_s::IFMT == libc_s::IFDIR {
            return Ok(Some(ino));
        }
        rustix::fs::linkat(pfd, name, &self.grave_fd, &grave_name, AtFlags::empty())
            .map_err(errno)?;
        st.model.grave.insert(ino, grave_name);
        Ok(None)
    }

    /// Moves the (empty) directory `parent`/`name` into the graveyard instead of removing it.
    fn bury_dir(&self, st: &mut State, parent: u64, name: &OsStr, ino: Ino) -> Result<(), Errno> {
        let pfd = st.fd(parent)?;
        let dir = rustix::fs::openat(
            pfd,
            name,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            RMode::empty(),
        )
        .map_err(errno)?;
        if !model::live_entries(dir.as_fd())
            .map_err(io_errno)?
            .is_empty()
        {
            return Err(Errno::ENOTEMPTY);
        }
        let grave_name = OsString::from(format!("{ino}"));
        rustix::fs::renameat(pfd, name, &self.grave_fd, &grave_name).map_err(errno)?;
        st.model.grave.insert(ino, grave_name);
        Ok(())
    }

    fn open_io(&self, st: &State, ino: u64, flags: i32) -> Result<File, Errno> {
        let fd = st.fd(ino)?;
        let acc = flags & libc::O_ACCMODE;
        let mut opts = std::fs::OpenOptions::new();
        opts.read(acc != libc::O_WRONLY)
            .write(acc != libc::O_RDONLY);
        opts.open(model::proc_path(fd)).map_err(io_errno)
    }
}

/// Whether the durable state (a durable name, or a pending rename that may yet land)
/// still needs inode `ino`.
fn needs_keeping(model: &Model, ino: Ino) -> bool {
    model.is_referenced(ino)
        || model
            .renames
            .iter()
            .any(|r| r.moves.iter().any(|m| m.ino == ino))
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec as u64)
    }
}

fn timespec(t: Option<TimeOrNow>) -> Timespec {
    match t {
        None => Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(t)) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: d.subsec_nanos() as _,
            },
            Err(e) => {
                let d = e.duration();
                let mut sec = -(d.as_secs() as i64);
                let mut nsec = d.subsec_nanos() as i64;
                if nsec > 0 {
                    sec -= 1;
                    nsec = 1_000_000_000 - nsec;
                }
                Timespec {
                    tv_sec: sec,
                    tv_nsec: nsec as _,
                }
            }
        },
    }
}

fn kind_of(mode: u32) -> FileType {
    match mode & libc_s::IFMT {
        libc_s::IFDIR => FileType::Directory,
        libc_s::IFLNK => FileType::Symlink,
        0o060000 => FileType::BlockDevice,
        0o020000 => FileType::CharDevice,
        0o010000 => FileType::NamedPipe,
        0o140000 => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn errno(e: rustix::io::Errno) -> Errno {
    Errno::from_i32(e.raw_os_error())
}

fn io_errno(e: io::Error) -> Errno {
    Errno::from(e)
}

/// The file system handed to fuser.
pub(crate) struct PowerFs {
    pub(crate) shared: Arc<Shared>,
}

macro_rules! tri {
    ($reply:expr, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return $reply.error(e),
        }
    };
}

impl PowerFs {
    fn entry_op(
        &self,
        req: &Request,
        op: &str,
        parent: u64,
        name: &OsStr,
        reply: ReplyEntry,
        make: impl FnOnce(BorrowedFd<'_>) -> rustix::io::Result<()>,
    ) {
        let s = &self.shared;
        let mut st = tri!(reply, s.enter(Kind::Mutate, op, parent, Some(name)));
        let pfd = tri!(reply, st.fd(parent));
        tri!(reply, make(pfd).map_err(errno));
        if req.uid() != 0 {
            // Made as root: give it to the caller, as the kernel would have.
            let _ = rustix::fs::chownat(
                pfd,
                name,
                Some(rustix::fs::Uid::from_raw(req.uid())),
                Some(rustix::fs::Gid::from_raw(req.gid())),
                AtFlags::SYMLINK_NOFOLLOW,
            );
        }
        let attr = tri!(reply, s.made(&mut st, parent, name));
        reply.entry(&TTL, &attr, Generation(0));
    }
}

impl Filesystem for PowerFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let s = &self.shared;
        let mut st = tri!(reply, s.enter(Kind::Read, "lookup", parent.0, Some(name)));
        let attr = tri!(reply, s.remember(&mut st, parent.0, name));
        reply.entry(&TTL, &attr, Generation(0));
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let mut st = self.shared.lock();
        if ino.0 == 1 {
            return;
        }
        if let Some(node) = st.nodes.get_mut(&ino.0) {
            node.nlookup = node.nlookup.saturating_sub(nlookup);
            if node.nlookup == 0 {
                st.nodes.remove(&ino.0);
            }
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let s = &self.shared;
        let st = tri!(reply, s.enter(Kind::Read, "getattr", ino.0, None));
        let fd = tri!(reply, st.fd(ino.0));
        let stat = tri!(
            reply,
            rustix::fs::statat(fd, "", AtFlags::EMPTY_PATH).map_err(errno)
        );
        reply.attr(&TTL, &s.attr(&st, &stat));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let s = &self.shared;
        let mut st = tri!(reply, s.enter(Kind::Mutate, "setattr", ino.0, None));
        if let Some(size) = size {
            let open = fh.and_then(|fh| st.files.get(&fh.0).map(|(_, f)| f.clone()));
            let file = match open {
                Some(f) => f,
                None => Arc::new(tri!(reply, s.open_io(&st, ino.0, libc::O_RDWR))),
            };
            st.model.before_truncate(s.backing_ino(ino.0), &file, size);
            tri!(reply, file.set_len(size).map_err(io_errno));
        }
        let fd = tri!(reply, st.fd(ino.0));
        if let Some(mode) = mode {
            tri!(
                reply,
                rustix::fs::chmod(model::proc_path(fd), RMode::from_raw_mode(mode & 0o7777))
                    .map_err(errno)
            );
        }
        if uid.is_some() || gid.is_some() {
            tri!(
                reply,
                rustix::fs::chownat(
                    fd,
                    "",
                    uid.map(rustix::fs::Uid::from_raw),
                    gid.map(rustix::fs::Gid::from_raw),
                    AtFlags::EMPTY_PATH,
                )
                .map_err(errno)
            );
        }
        if atime.is_some() || mtime.is_some() {
            let times = Timestamps {
                last_access: timespec(atime),
                last_modification: timespec(mtime),
            };
            tri!(
                reply,
                rustix::fs::utimensat(fd, "", &times, AtFlags::EMPTY_PATH).map_err(errno)
            );
        }
        let stat = tri!(
            reply,
            rustix::fs::statat(fd, "", AtFlags::EMPTY_PATH).map_err(errno)
        );
        reply.attr(&TTL, &s.attr(&st, &stat));
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let s = &self.shared;
        let st = tri!(reply, s.enter(Kind::Read, "readlink", ino.0, None));
        let fd = tri!(reply, st.fd(ino.0));
        let target = tri!(
            reply,
            rustix::fs::readlinkat(fd, "", Vec::new()).map_err(errno)
        );
        reply.data(target.as_bytes());
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.entry_op(req, "mknod", parent.0, name, reply, |pfd| {
            rustix::fs::mknodat(
                pfd,
                name,
                rustix::fs::FileType::from_raw_mode(mode),
                RMode::from_raw_mode(mode & !umask & 0o7777),
                rdev.into(),
            )
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.entry_op(req, "mkdir", parent.0, name, reply, |pfd| {
            rustix::fs::mkdirat(pfd, name, RMode::from_raw_mode(mode & !umask & 0o7777))
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let s = &self.shared;
        let mut st = tri!(reply, s.enter(Kind::Mutate, "unlink", parent.0, Some(name)));
        tri!(reply, s.keep(&mut st, parent.0, name));
        let pfd = tri!(reply, st.fd(parent.0));
        tri!(
            reply,
            rustix::fs::unlinkat(pfd, name, AtFlags::empty()).map_err(errno)
        );
        reply.ok();
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let s = &self.shared;
        let mut st = tri!(reply, s.enter(Kind::Mutate, "rmdir", parent.0, Some(name)));
        if let Some(ino) = tri!(reply, s.keep(&mut st, parent.0, name)) {
            tri!(reply, s.bury_dir(&mut st, parent.0, name, ino));
        } else {
            let pfd = tri!(reply, st.fd(parent.0));
            tri!(
                reply,
                rustix::fs::unlinkat(pfd, name, AtFlags::REMOVEDIR).map_err(errno)
            );
        }
        reply.ok();
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.entry_op(req, "symlink", parent.0, link_name, reply, |pfd| {
            rustix::fs::symlinkat(target, pfd, link_name)
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let s = &self.shared;
        let mut st = tri!(reply, s.enter(Kind::Mutate, "rename", parent.0, Some(name)));
        if st.gate.faults.fail_name.as_deref() == Some(newname) {
            return reply.error(Errno::EIO);
        }
        let (p, np) = (parent.0, newparent.0);
        let pfd = tri!(reply, st.fd(p));
        let src = tri!(
            reply,
            rustix::fs::statat(pfd, name, AtFlags::SYMLINK_NOFOLLOW).map_err(errno)
        );
        let npfd = tri!(reply, st.fd(np));
        let victim = rustix::fs::statat(npfd, newname, AtFlags::SYMLINK_NOFOLLOW).ok();
        let exchange = flags.contains(RenameFlags::RENAME_EXCHANGE);
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let mut buried = None;
        if let Some(v) = victim.as_ref().filter(|v| v.st_ino != src.st_ino)
            && !exchange
            && !noreplace
            && let Some(dir_ino) = tri!(reply, s.keep(&mut st, np, newname))
        {
            if src.st_mode & libc_s::IFMT != libc_s::IFDIR {
                return reply.error(Errno::EISDIR);
            }
            tri!(reply, s.bury_dir(&mut st, np, newname, dir_ino));
            buried = Some(v.st_ino);
        }
        let (pfd, npfd) = (tri!(reply, st.fd(p)), tri!(reply, st.fd(np)));
        let done = rustix::fs::renameat_with(
            pfd,
            name,
            npfd,
            newname,
            rustix::fs::RenameFlags::from_bits_retain(flags.bits()),
        );
        if let Err(e) = done {
            if let Some(ino) = buried {
                let grave = OsString::from(format!("{ino}"));
                let _ = rustix::fs::renameat(&s.grave_fd, &grave, npfd, newname);
                st.model.grave.remove(&ino);
            }
            return reply.error(errno(e));
        }
        if victim.as_ref().map(|v| v.st_ino) == Some(src.st_ino) {
            // Two names of one inode: nothing happened.
            return reply.ok();
        }
        let (bp, bnp) = (s.backing_ino(p), s.backing_ino(np));
        let mut moves = vec![model::Move {
            from_dir: bp,
            from_name: name.to_os_string(),
            to_dir: bnp,
            to_name: newname.to_os_string(),
            ino: src.st_ino,
        }];
        if let (true, Some(v)) = (exchange, victim.as_ref()) {
            moves.push(model::Move {
                from_dir: bnp,
                from_name: newname.to_os_string(),
                to_dir: bp,
                to_name: name.to_os_string(),
                ino: v.st_ino,
            });
        }
        st.model.renames.push(PendingRename { moves });
        let new_hint = st.nodes.get(&np).map(|n| n.hint.join(newname));
        if let (Some(node), Some(hint)) = (st.nodes.get_mut(&s.fuse_ino(src.st_ino)), new_hint) {
            node.hint = hint;
        }
        reply.ok();
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let s = &self.shared;
        let mut st = tri!(
            reply,
            s.enter(Kind::Mutate, "link", newparent.0, Some(newname))
        );
        let fd = tri!(reply, st.fd(ino.0));
        let npfd = tri!(reply, st.fd(newparent.0));
        tri!(
            reply,
            rustix::fs::linkat(fd, "", npfd, newname, AtFlags::EMPTY_PATH).map_err(errno)
        );
        let attr = tri!(reply, s.remember(&mut st, newparent.0, newname));
        reply.entry(&TTL, &attr, Generation(0));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let s = &self.shared;
        let mut st = tri!(reply, s.enter(Kind::Read, "open", ino.0, None));
        let file = tri!(reply, s.open_io(&st, ino.0, flags.0));
        let fh = st.add_file(s.backing_ino(ino.0), file);
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let s = &self.shared;
        let st = tri!(reply, s.enter(Kind::Read, "read", ino.0, None));
        let Some((_, file)) = st.files.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let mut buf = vec![0u8; size as usize];
        let mut got = 0;
        while got < buf.len() {
            match file.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return reply.error(io_errno(e)),
            }
        }
        reply.data(&buf[..got]);
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let s = &self.shared;
        let mut st = tri!(reply, s.enter(Kind::Mutate, "write", ino.0, None));
        let Some((bino, file)) = st.files.get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        tri!(reply, s.charge(&mut st, data.len() as u64));
        st.model
            .before_write(bino, &file, offset, data.len() as u64);
        tri!(reply, file.write_all_at(data, offset).map_err(io_errno));
        reply.written(data.len() as u32);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() makes nothing durable.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.shared.lock().files.remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let s = &self.shared;
        let (kind, op) = match datasync {
            true => (Kind::Fdatasync, "fdatasync"),
            false => (Kind::Fsync, "fsync"),
        };
        let mut st = tri!(reply, s.enter(kind, op, ino.0, None));
        let st = &mut *st;
        let fd = tri!(
            reply,
            st.nodes
                .get(&ino.0)
                .map(|n| n.fd.as_fd())
                .ok_or(Errno::ESTALE)
        );
        let bino = s.backing_ino(ino.0);
        if st.model.dirs.contains_key(&bino) {
            st.model.fsync_dir(bino, fd, datasync);
        } else {
            st.model.fsync_file(bino, fd, datasync);
        }
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let s = &self.shared;
        let mut st = tri!(reply, s.enter(Kind::Read, "opendir", ino.0, None));
        let fd = tri!(reply, st.fd(ino.0));
        let dir = tri!(
            reply,
            rustix::fs::openat(
                fd,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                RMode::empty()
            )
            .map_err(errno)
        );
        let mut list = Vec::new();
        for entry in tri!(reply, rustix::fs::Dir::read_from(&dir).map_err(errno)) {
            let entry = tri!(reply, entry.map_err(errno));
            let name = entry.file_name().to_bytes();
            let kind = match entry.file_type() {
                rustix::fs::FileType::Directory => FileType::Directory,
                rustix::fs::FileType::Symlink => FileType::Symlink,
                rustix::fs::FileType::Fifo => FileType::NamedPipe,
                rustix::fs::FileType::Socket => FileType::Socket,
                rustix::fs::FileType::CharacterDevice => FileType::CharDevice,
                rustix::fs::FileType::BlockDevice => FileType::BlockDevice,
                _ => FileType::RegularFile,
            };
            let fino = match name {
                b"." => ino.0,
                b".." => 1,
                _ => s.fuse_ino(entry.ino()),
            };
            list.push((fino, kind, OsStr::from_bytes(name).to_os_string()));
        }
        st.next_fh += 1;
        let fh = st.next_fh;
        st.dirs.insert(fh, list);
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let s = &self.shared;
        let st = tri!(reply, s.enter(Kind::Read, "readdir", ino.0, None));
        let Some(list) = st.dirs.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        for (i, (fino, kind, name)) in list.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*fino), (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.shared.lock().dirs.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let s = &self.shared;
        let mut st = tri!(reply, s.enter(Kind::Fsyncdir, "fsyncdir", ino.0, None));
        let st = &mut *st;
        let fd = tri!(
            reply,
            st.nodes
                .get(&ino.0)
                .map(|n| n.fd.as_fd())
                .ok_or(Errno::ESTALE)
        );
        st.model.fsync_dir(s.backing_ino(ino.0), fd, datasync);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let s = &self.shared;
        let _st = tri!(reply, s.enter(Kind::Read, "statfs", ino.0, None));
        let v = tri!(reply, rustix::fs::statvfs(&s.backing).map_err(errno));
        reply.statfs(
            v.f_blocks,
            v.f_bfree,
            v.f_bavail,
            v.f_files,
            v.f_ffree,
            v.f_bsize as u32,
            v.f_namemax as u32,
            v.f_frsize as u32,
        );
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let s = &self.shared;
        let st = tri!(reply, s.enter(Kind::Mutate, "setxattr", ino.0, Some(name)));
        let fd = tri!(reply, st.fd(ino.0));
        if is_symlink(fd) {
            return reply.error(Errno::EPERM);
        }
        tri!(
            reply,
            rustix::fs::setxattr(
                model::proc_path(fd),
                name,
                value,
                rustix::fs::XattrFlags::from_bits_retain(flags as u32),
            )
            .map_err(errno)
        );
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let s = &self.shared;
        let st = tri!(reply, s.enter(Kind::Read, "getxattr", ino.0, Some(name)));
        let fd = tri!(reply, st.fd(ino.0));
        if is_symlink(fd) {
            return reply.error(Errno::NO_XATTR);
        }
        let path = model::proc_path(fd);
        if size == 0 {
            let n = tri!(
                reply,
                rustix::fs::getxattr_query(&path, name).map_err(errno)
            );
            return reply.size(n as u32);
        }
        let mut buf = vec![0u8; size as usize];
        let n = tri!(
            reply,
            rustix::fs::getxattr(&path, name, &mut buf[..]).map_err(errno)
        );
        reply.data(&buf[..n]);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let s = &self.shared;
        let st = tri!(reply, s.enter(Kind::Read, "listxattr", ino.0, None));
        let fd = tri!(reply, st.fd(ino.0));
        if is_symlink(fd) {
            return if size == 0 {
                reply.size(0)
            } else {
                reply.data(&[])
            };
        }
        let path = model::proc_path(fd);
        if size == 0 {
            let n = tri!(reply, rustix::fs::listxattr_query(&path).map_err(errno));
            return reply.size(n as u32);
        }
        let mut buf = vec![0u8; size as usize];
        let n = tri!(
            reply,
            rustix::fs::listxattr(&path, &mut buf[..]).map_err(errno)
        );
        reply.data(&buf[..n]);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let s = &self.shared;
        let st = tri!(
            reply,
            s.enter(Kind::Mutate, "removexattr", ino.0, Some(name))
        );
        let fd = tri!(reply, st.fd(ino.0));
        if is_symlink(fd) {
            return reply.error(Errno::NO_XATTR);
        }
        tri!(
            reply,
            rustix::fs::removexattr(model::proc_path(fd), name).map_err(errno)
        );
        reply.ok();
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let s = &self.shared;
        let mut st = tri!(reply, s.enter(Kind::Mutate, "create", parent.0, Some(name)));
        let pfd = tri!(reply, st.fd(parent.0));
        let existed = rustix::fs::statat(pfd, name, AtFlags::SYMLINK_NOFOLLOW).is_ok();
        let acc = match flags & libc::O_ACCMODE {
            libc::O_WRONLY => OFlags::WRONLY,
            libc::O_RDWR => OFlags::RDWR,
            _ => OFlags::RDONLY,
        };
        let mut oflags = acc | OFlags::CREATE | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        if flags & libc::O_EXCL != 0 {
            oflags |= OFlags::EXCL;
        }
        let fd = tri!(
            reply,
            rustix::fs::openat(
                pfd,
                name,
                oflags,
                RMode::from_raw_mode(mode & !umask & 0o7777)
            )
            .map_err(errno)
        );
        if !existed && req.uid() != 0 {
            let _ = rustix::fs::fchown(
                &fd,
                Some(rustix::fs::Uid::from_raw(req.uid())),
                Some(rustix::fs::Gid::from_raw(req.gid())),
            );
        }
        let attr = match existed {
            true => tri!(reply, s.remember(&mut st, parent.0, name)),
            false => tri!(reply, s.made(&mut st, parent.0, name)),
        };
        let fh = st.add_file(s.backing_ino(attr.ino.0), File::from(fd));
        reply.created(
            &TTL,
            &attr,
            Generation(0),
            FileHandle(fh),
            FopenFlags::empty(),
        );
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let s = &self.shared;
        let mut st = tri!(reply, s.enter(Kind::Mutate, "fallocate", ino.0, None));
        let Some((bino, file)) = st.files.get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        let flags = rustix::fs::FallocateFlags::from_bits_retain(mode as u32);
        if flags.intersects(
            rustix::fs::FallocateFlags::COLLAPSE_RANGE | rustix::fs::FallocateFlags::INSERT_RANGE,
        ) {
            return reply.error(Errno::EOPNOTSUPP);
        }
        if flags.intersects(
            rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::ZERO_RANGE,
        ) {
            st.model.before_write(bino, &file, offset, length);
        } else {
            tri!(reply, s.charge(&mut st, length));
        }
        tri!(
            reply,
            rustix::fs::fallocate(&*file, flags, offset, length).map_err(errno)
        );
        reply.ok();
    }
}

fn is_symlink(fd: BorrowedFd<'_>) -> bool {
    rustix::fs::statat(fd, "", AtFlags::EMPTY_PATH)
        .map(|st| st.st_mode & libc_s::IFMT == libc_s::IFLNK)
        .unwrap_or(false)
}
