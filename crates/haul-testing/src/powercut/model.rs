//! What would survive a power cut: the durable state of every inode and directory, kept
//! beside the live tree (the backing directory), and the rollback that rewrites the backing
//! directory to it.
//!
//! Inodes are named by their inode number on the backing file system. Every inode the
//! durable namespace names stays alive: an unlink, rmdir or rename-over of a durably named
//! inode first links it (a directory: moves it) into the graveyard, so the cut can put it back.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode as RMode, OFlags, Timespec, Timestamps};

use super::{DataLoss, DataRollback, Mode, NamespaceLoss, Report};

/// An inode number on the backing file system.
pub(crate) type Ino = u64;

/// An inode's metadata as far as a copy cares: owner, mode, times, extended attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Meta {
    /// `st_mode` including the file type bits.
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) atime: (i64, i64),
    pub(crate) mtime: (i64, i64),
    pub(crate) xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Meta {
    pub(crate) fn is_dir(&self) -> bool {
        self.mode & libc_s::IFMT == libc_s::IFDIR
    }

    pub(crate) fn is_symlink(&self) -> bool {
        self.mode & libc_s::IFMT == libc_s::IFLNK
    }

    pub(crate) fn is_file(&self) -> bool {
        self.mode & libc_s::IFMT == libc_s::IFREG
    }
}

/// File type bits of `st_mode`.
pub(crate) mod libc_s {
    pub(crate) const IFMT: u32 = 0o170000;
    pub(crate) const IFDIR: u32 = 0o040000;
    pub(crate) const IFLNK: u32 = 0o120000;
    pub(crate) const IFREG: u32 = 0o100000;
}

/// The durable state of a non-directory inode.
#[derive(Clone, Debug)]
pub(crate) struct FileState {
    /// The size its last fsync/fdatasync (or the mount, or a syncfs) made durable.
    pub(crate) durable_size: u64,
    /// Bytes below `durable_size` overwritten since then, as they were: (offset, old bytes),
    /// oldest first. Restored newest first, so the oldest (the durable) bytes win.
    pub(crate) undo: Vec<(u64, Vec<u8>)>,
    /// Metadata as of its last fsync (or creation, mount, syncfs).
    pub(crate) meta: Meta,
}

/// The durable state of a directory.
#[derive(Clone, Debug)]
pub(crate) struct DirState {
    pub(crate) entries: BTreeMap<OsString, Ino>,
    pub(crate) meta: Meta,
}

/// One name moved by a rename: (from dir, from name, to dir, to name, inode).
#[derive(Clone, Debug)]
pub(crate) struct Move {
    pub(crate) from_dir: Ino,
    pub(crate) from_name: OsString,
    pub(crate) to_dir: Ino,
    pub(crate) to_name: OsString,
    pub(crate) ino: Ino,
}

/// A rename not yet durable: one move, or two for `RENAME_EXCHANGE`.
#[derive(Clone, Debug)]
pub(crate) struct PendingRename {
    pub(crate) moves: Vec<Move>,
}

impl PendingRename {
    fn moves_into(&self, dir: Ino) -> bool {
        self.moves.iter().any(|m| m.to_dir == dir)
    }

    fn moves_any(&self, inos: &HashSet<Ino>) -> bool {
        self.moves.iter().any(|m| inos.contains(&m.ino))
    }
}

/// The durable state of the whole tree.
#[derive(Debug)]
pub(crate) struct Model {
    pub(crate) root: Ino,
    pub(crate) dirs: HashMap<Ino, DirState>,
    pub(crate) files: HashMap<Ino, FileState>,
    /// How many durable directory entries name each inode.
    refs: HashMap<Ino, usize>,
    pub(crate) renames: Vec<PendingRename>,
    /// Inodes kept alive in the graveyard, by their name there.
    pub(crate) grave: HashMap<Ino, OsString>,
}

impl Model {
    /// The model of a tree whose whole current state is durable (a fresh mount).
    pub(crate) fn scan(backing: &Path) -> io::Result<Model> {
        let root = fs::symlink_metadata(backing)?.ino();
        let mut model = Model {
            root,
            dirs: HashMap::new(),
            files: HashMap::new(),
            refs: HashMap::new(),
            renames: Vec::new(),
            grave: HashMap::new(),
        };
        model.sync_all(backing)?;
        Ok(model)
    }

    /// `syncfs`/`sync`: everything live becomes durable.
    pub(crate) fn sync_all(&mut self, backing: &Path) -> io::Result<()> {
        let mut dirs = HashMap::new();
        let mut files = HashMap::new();
        walk_live(backing, &mut dirs, &mut files)?;
        self.root = fs::symlink_metadata(backing)?.ino();
        self.dirs = dirs;
        // Inodes alive but unreachable (open, unlinked) keep their state: harmless.
        for (ino, state) in files {
            self.files.insert(ino, state);
        }
        self.renames.clear();
        self.recount();
        Ok(())
    }

    fn recount(&mut self) {
        self.refs.clear();
        for dir in self.dirs.values() {
            for ino in dir.entries.values() {
                *self.refs.entry(*ino).or_default() += 1;
            }
        }
    }

    /// Whether a durable directory entry names `ino`.
    pub(crate) fn is_referenced(&self, ino: Ino) -> bool {
        self.refs.get(&ino).copied().unwrap_or(0) > 0
    }

    fn set_entry(&mut self, dir: Ino, name: OsString, ino: Ino) {
        let Some(d) = self.dirs.get_mut(&dir) else {
            return;
        };
        if let Some(old) = d.entries.insert(name, ino) {
            unref(&mut self.refs, old);
        }
        *self.refs.entry(ino).or_default() += 1;
    }

    fn remove_entry_if(&mut self, dir: Ino, name: &OsStr, ino: Ino) {
        let Some(d) = self.dirs.get_mut(&dir) else {
            return;
        };
        if d.entries.get(name) == Some(&ino) {
            d.entries.remove(name);
            unref(&mut self.refs, ino);
        }
    }

    /// A new inode (create, mkdir, mknod, symlink): nothing about it is durable, and any
    /// state left from an earlier inode with the same number is dropped.
    pub(crate) fn created(&mut self, ino: Ino, meta: Meta) {
        if meta.is_dir() {
            self.files.remove(&ino);
            self.dirs.insert(
                ino,
                DirState {
                    entries: BTreeMap::new(),
                    meta,
                },
            );
        } else {
            self.dirs.remove(&ino);
            self.files.insert(
                ino,
                FileState {
                    durable_size: 0,
                    undo: Vec::new(),
                    meta,
                },
            );
        }
    }

    /// Before bytes `[offset, offset + len)` of `file` change (a write, a punched hole):
    /// keeps the durable bytes they replace.
    pub(crate) fn before_write(&mut self, ino: Ino, file: &fs::File, offset: u64, len: u64) {
        let Some(state) = self.files.get_mut(&ino) else {
            return;
        };
        let end = offset.saturating_add(len).min(state.durable_size);
        if offset < end {
            save(state, file, offset, end - offset);
        }
    }

    /// Before `file` is truncated to `new_size`.
    pub(crate) fn before_truncate(&mut self, ino: Ino, file: &fs::File, new_size: u64) {
        let Some(state) = self.files.get_mut(&ino) else {
            return;
        };
        let live = file.metadata().map(|m| m.len()).unwrap_or(0);
        let end = live.min(state.durable_size);
        if new_size < end {
            save(state, file, new_size, end - new_size);
        }
    }

    /// fsync (`datasync` false) or fdatasync of a non-directory inode.
    pub(crate) fn fsync_file(&mut self, ino: Ino, fd: BorrowedFd<'_>, datasync: bool) {
        let Ok(meta) = meta_of_fd(fd) else {
            return;
        };
        let size = rustix::fs::fstat(fd).map(|s| s.st_size as u64).unwrap_or(0);
        let state = self.files.entry(ino).or_insert_with(|| FileState {
            durable_size: size,
            undo: Vec::new(),
            meta: meta.clone(),
        });
        state.durable_size = size;
        state.undo.clear();
        if !datasync {
            state.meta = meta;
        }
    }

    /// fsync of a directory: its entries become what they are live, and its metadata unless
    /// `datasync`. A rename into it becomes durable on both sides at once (the old name goes
    /// with it); a rename out of it that is still pending keeps its old name durable here, so
    /// the inode is never lost between two directories.
    pub(crate) fn fsync_dir(&mut self, ino: Ino, fd: BorrowedFd<'_>, datasync: bool) {
        self.finalize_renames(ino);
        let Ok(mut live) = live_entries(fd) else {
            return;
        };
        for m in self.renames.iter().flat_map(|r| &r.moves) {
            if m.from_dir == ino && !live.contains_key(&m.from_name) {
                live.insert(m.from_name.clone(), m.ino);
            }
        }
        let meta = meta_of_fd(fd).ok();
        let Some(dir) = self.dirs.get_mut(&ino) else {
            return;
        };
        let old = std::mem::replace(&mut dir.entries, live);
        if let (false, Some(meta)) = (datasync, meta) {
            dir.meta = meta;
        }
        let new: Vec<Ino> = dir.entries.values().copied().collect();
        for old in old.into_values() {
            unref(&mut self.refs, old);
        }
        for ino in new {
            *self.refs.entry(ino).or_default() += 1;
        }
    }

    /// Makes durable the pending renames into `dir`, and every earlier pending rename of the
    /// inodes they move (so a chain a→b→c lands at c, not at both a and c).
    fn finalize_renames(&mut self, dir: Ino) {
        let Some(last) = self.renames.iter().rposition(|r| r.moves_into(dir)) else {
            return;
        };
        let mut chosen = vec![false; self.renames.len()];
        let mut inos = HashSet::new();
        for (i, r) in self.renames.iter().enumerate() {
            if r.moves_into(dir) {
                chosen[i] = true;
                inos.extend(r.moves.iter().map(|m| m.ino));
            }
        }
        for i in (0..last).rev() {
            if !chosen[i] && self.renames[i].moves_any(&inos) {
                chosen[i] = true;
            }
        }
        let renames = std::mem::take(&mut self.renames);
        for (rename, chosen) in renames.into_iter().zip(chosen) {
            if !chosen {
                self.renames.push(rename);
                continue;
            }
            // Both halves of an exchange first leave, then arrive.
            for m in &rename.moves {
                self.remove_entry_if(m.from_dir, &m.from_name, m.ino);
            }
            for m in rename.moves {
                self.set_entry(m.to_dir, m.to_name, m.ino);
            }
        }
    }

    /// Rebuilds the backing tree as the durable state has it. The live tree is first moved
    /// into `hold` (under `state_dir`, on the same file system), then every durable name is
    /// made again under `backing`: directories anew, other inodes hard-linked from where they
    /// live (the old tree or the graveyard), each then given its durable data and metadata.
    pub(crate) fn rollback(
        &self,
        backing: &Path,
        state_dir: &Path,
        grave: &Path,
        mode: Mode,
        report: &mut Report,
    ) -> io::Result<()> {
        match mode.namespace {
            NamespaceLoss::Strict => self.rollback_strict(backing, state_dir, grave, mode, report),
            NamespaceLoss::Journaled => self.rollback_journaled(backing, mode, report),
        }
    }

    fn rollback_strict(
        &self,
        backing: &Path,
        state_dir: &Path,
        grave: &Path,
        mode: Mode,
        report: &mut Report,
    ) -> io::Result<()> {
        let root_before = meta_of_path(backing)?;
        let hold = state_dir.join("hold");
        if hold.exists() {
            fs::remove_dir_all(&hold)?;
        }
        fs::create_dir(&hold)?;
        for entry in fs::read_dir(backing)? {
            let entry = entry?;
            fs::rename(entry.path(), hold.join(entry.file_name()))?;
        }
        // Where each inode lives now, and the live tree's names (for the report).
        let mut live_names = BTreeMap::new();
        let mut location: HashMap<Ino, PathBuf> = HashMap::new();
        index_tree(&hold, Path::new(""), &mut live_names, &mut location)?;
        for entry in fs::read_dir(grave)? {
            let entry = entry?;
            let md = entry.metadata()?;
            location.entry(md.ino()).or_insert_with(|| entry.path());
        }

        let mut durable_names = BTreeMap::new();
        let mut files: BTreeMap<Ino, PathBuf> = BTreeMap::new();
        let mut dirs: Vec<(PathBuf, Ino)> = Vec::new();
        let mut visited = HashSet::new();
        visited.insert(self.root);
        let mut stack = vec![(self.root, PathBuf::new())];
        while let Some((dir_ino, rel)) = stack.pop() {
            let Some(dir) = self.dirs.get(&dir_ino) else {
                continue;
            };
            for (name, &ino) in &dir.entries {
                let child_rel = rel.join(name);
                let dest = backing.join(&child_rel);
                if let Some(child) = self.dirs.get(&ino) {
                    if !visited.insert(ino) {
                        report.missing.push(child_rel);
                        continue;
                    }
                    let perm = child.meta.mode & 0o7777;
                    fs::create_dir(&dest)?;
                    rustix::fs::chmod(&dest, RMode::from_raw_mode(perm | 0o700))?;
                    durable_names.insert(child_rel.clone(), ino);
                    dirs.push((child_rel.clone(), ino));
                    stack.push((ino, child_rel));
                } else {
                    let Some(src) = location.get(&ino) else {
                        report.missing.push(child_rel);
                        continue;
                    };
                    rustix::fs::linkat(
                        rustix::fs::CWD,
                        src,
                        rustix::fs::CWD,
                        &dest,
                        AtFlags::empty(),
                    )?;
                    durable_names.insert(child_rel.clone(), ino);
                    files.entry(ino).or_insert(child_rel);
                }
            }
        }
        for (ino, rel) in &files {
            self.restore_file(&backing.join(rel), rel, *ino, mode, None, report)?;
        }
        // Directory metadata last, deepest first: creating entries changed their mtimes.
        dirs.sort_by_key(|(rel, _)| std::cmp::Reverse(rel.components().count()));
        dirs.push((PathBuf::new(), self.root));
        for (rel, ino) in &dirs {
            let path = backing.join(rel);
            let want = &self.dirs[ino].meta;
            apply_meta(&path, want)?;
            // Reported when the directory was there, as the same inode, with other metadata.
            let before = match rel.as_os_str().is_empty() {
                true => Some(root_before.clone()),
                false => location.get(ino).and_then(|p| meta_of_path(p).ok()),
            };
            if before.is_some_and(|b| differs(&b, want)) {
                report.meta.push(rel.clone());
            }
        }
        for (rel, ino) in &live_names {
            if durable_names.get(rel) != Some(ino) {
                report.removed.push(rel.clone());
            }
        }
        for (rel, ino) in &durable_names {
            if live_names.get(rel) != Some(ino) {
                report.restored.push(rel.clone());
            }
        }
        fs::remove_dir_all(&hold)?;
        clear_dir(grave)
    }

    fn rollback_journaled(
        &self,
        backing: &Path,
        mode: Mode,
        report: &mut Report,
    ) -> io::Result<()> {
        let mut names = BTreeMap::new();
        let mut location = HashMap::new();
        index_tree(backing, Path::new(""), &mut names, &mut location)?;
        let mut done = HashSet::new();
        for (rel, ino) in names {
            let path = backing.join(&rel);
            if !done.insert(ino) || self.dirs.contains_key(&ino) {
                continue;
            }
            let live = meta_of_path(&path)?;
            if live.is_dir() {
                continue;
            }
            self.restore_file(&path, &rel, ino, mode, Some(live), report)?;
        }
        Ok(())
    }

    /// Gives the inode at `path` its durable data, then `meta` (the journaled mode keeps the
    /// live metadata) or its durable metadata.
    fn restore_file(
        &self,
        path: &Path,
        rel: &Path,
        ino: Ino,
        mode: Mode,
        keep_meta: Option<Meta>,
        report: &mut Report,
    ) -> io::Result<()> {
        let Some(state) = self.files.get(&ino) else {
            return Ok(());
        };
        let before = meta_of_path(path)?;
        let want = keep_meta.unwrap_or_else(|| state.meta.clone());
        if before.is_file() {
            let file = fs::OpenOptions::new().write(true).open(path)?;
            let live_size = file.metadata()?.len();
            if live_size != state.durable_size || !state.undo.is_empty() {
                let final_size = match mode.data {
                    DataLoss::Drop => state.durable_size,
                    DataLoss::ZeroFill => live_size.max(state.durable_size),
                };
                file.set_len(state.durable_size)?;
                let mut restored = 0u64;
                for (offset, bytes) in state.undo.iter().rev() {
                    file.write_all_at(bytes, *offset)?;
                    restored += bytes.len() as u64;
                }
                if final_size > state.durable_size {
                    file.set_len(final_size)?;
                }
                report.data.push(DataRollback {
                    path: rel.to_path_buf(),
                    live_size,
                    durable_size: state.durable_size,
                    final_size,
                    restored_bytes: restored,
                });
            }
        }
        apply_meta(path, &want)?;
        if differs(&before, &want) {
            report.meta.push(rel.to_path_buf());
        }
        Ok(())
    }
}

fn unref(refs: &mut HashMap<Ino, usize>, ino: Ino) {
    if let Some(n) = refs.get_mut(&ino) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            refs.remove(&ino);
        }
    }
}

fn save(state: &mut FileState, file: &fs::File, offset: u64, len: u64) {
    let mut buf = vec![0u8; len as usize];
    let mut got = 0usize;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    // Bytes past the live end were truncated away earlier, and saved then.
    buf.truncate(got);
    if !buf.is_empty() {
        state.undo.push((offset, buf));
    }
}

/// Whether metadata differs in what a rollback restores (atime is not compared).
fn differs(a: &Meta, b: &Meta) -> bool {
    a.mode != b.mode
        || a.uid != b.uid
        || a.gid != b.gid
        || a.mtime != b.mtime
        || a.xattrs != b.xattrs
}

/// Every directory and inode under `dir` as durable state (the mount-time or syncfs view).
fn walk_live(
    dir: &Path,
    dirs: &mut HashMap<Ino, DirState>,
    files: &mut HashMap<Ino, FileState>,
) -> io::Result<()> {
    let meta = meta_of_path(dir)?;
    let ino = fs::symlink_metadata(dir)?.ino();
    let mut entries = BTreeMap::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let md = entry.metadata()?;
        entries.insert(entry.file_name(), md.ino());
        if md.is_dir() {
            walk_live(&entry.path(), dirs, files)?;
        } else if let std::collections::hash_map::Entry::Vacant(slot) = files.entry(md.ino()) {
            slot.insert(FileState {
                durable_size: md.len(),
                undo: Vec::new(),
                meta: meta_of_path(&entry.path())?,
            });
        }
    }
    dirs.insert(ino, DirState { entries, meta });
    Ok(())
}

/// Names (relative to `top`) and where each inode lives, for the whole tree under `dir`.
fn index_tree(
    dir: &Path,
    rel: &Path,
    names: &mut BTreeMap<PathBuf, Ino>,
    location: &mut HashMap<Ino, PathBuf>,
) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let md = entry.metadata()?;
        let child = rel.join(entry.file_name());
        names.insert(child.clone(), md.ino());
        location.entry(md.ino()).or_insert_with(|| entry.path());
        if md.is_dir() {
            index_tree(&entry.path(), &child, names, location)?;
        }
    }
    Ok(())
}

/// Removes everything in `dir`, keeping it.
pub(crate) fn clear_dir(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(entry.path())?;
        } else {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// The names in a directory and their inode numbers, read through an fd (an `O_PATH` one
/// will do: it is reopened).
pub(crate) fn live_entries(fd: BorrowedFd<'_>) -> io::Result<BTreeMap<OsString, Ino>> {
    let dir = rustix::fs::openat(
        fd,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        RMode::empty(),
    )?;
    let mut out = BTreeMap::new();
    for entry in rustix::fs::Dir::read_from(&dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        out.insert(OsStr::from_bytes(name).to_os_string(), entry.ino());
    }
    Ok(out)
}

/// `/proc/self/fd/N`: a path that reaches exactly the inode an fd refers to.
pub(crate) fn proc_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn meta_from_stat(st: &rustix::fs::Stat, xattrs: BTreeMap<Vec<u8>, Vec<u8>>) -> Meta {
    Meta {
        mode: st.st_mode,
        uid: st.st_uid,
        gid: st.st_gid,
        atime: (st.st_atime, st.st_atime_nsec as i64),
        mtime: (st.st_mtime, st.st_mtime_nsec as i64),
        xattrs,
    }
}

/// Metadata of the inode an `O_PATH` fd refers to.
pub(crate) fn meta_of_fd(fd: BorrowedFd<'_>) -> io::Result<Meta> {
    let st = rustix::fs::statat(fd, "", AtFlags::EMPTY_PATH)?;
    let xattrs = if st.st_mode & libc_s::IFMT == libc_s::IFLNK {
        BTreeMap::new()
    } else {
        read_xattrs(&proc_path(fd), false)?
    };
    Ok(meta_from_stat(&st, xattrs))
}

/// Metadata of `path` (not following a symlink).
pub(crate) fn meta_of_path(path: &Path) -> io::Result<Meta> {
    let st = rustix::fs::lstat(path)?;
    let xattrs = read_xattrs(path, true)?;
    Ok(meta_from_stat(&st, xattrs))
}

fn read_xattrs(path: &Path, nofollow: bool) -> io::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let list = |buf: &mut [u8]| {
        if nofollow {
            rustix::fs::llistxattr(path, buf)
        } else {
            rustix::fs::listxattr(path, buf)
        }
    };
    let mut names = vec![0u8; 4096];
    let n = loop {
        match list(&mut names) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => names.resize(names.len() * 4, 0),
            Err(rustix::io::Errno::NOTSUP) => return Ok(out),
            Err(e) => return Err(e.into()),
        }
    };
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name_os = OsStr::from_bytes(name);
        let mut value = vec![0u8; 1024];
        loop {
            let got = if nofollow {
                rustix::fs::lgetxattr(path, name_os, &mut value[..])
            } else {
                rustix::fs::getxattr(path, name_os, &mut value[..])
            };
            match got {
                Ok(len) => {
                    value.truncate(len);
                    out.insert(name.to_vec(), value);
                    break;
                }
                Err(rustix::io::Errno::RANGE) => value.resize(value.len() * 4, 0),
                Err(rustix::io::Errno::NODATA) => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(out)
}

fn ts((sec, nsec): (i64, i64)) -> Timespec {
    Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    }
}

/// Sets owner, mode, extended attributes and times (in that order: a chown clears setuid
/// bits, and every change moves ctime but only these set mtime) of `path`, not following it.
pub(crate) fn apply_meta(path: &Path, meta: &Meta) -> io::Result<()> {
    let symlink = meta.is_symlink();
    let st = rustix::fs::lstat(path)?;
    if (st.st_uid, st.st_gid) != (meta.uid, meta.gid) {
        rustix::fs::chownat(
            rustix::fs::CWD,
            path,
            Some(rustix::fs::Uid::from_raw(meta.uid)),
            Some(rustix::fs::Gid::from_raw(meta.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
    }
    if !symlink {
        rustix::fs::chmod(path, RMode::from_raw_mode(meta.mode & 0o7777))?;
        let have = read_xattrs(path, true)?;
        for name in have.keys() {
            if !meta.xattrs.contains_key(name) {
                let _ = rustix::fs::lremovexattr(path, OsStr::from_bytes(name));
            }
        }
        for (name, value) in &meta.xattrs {
            if have.get(name) != Some(value) {
                rustix::fs::lsetxattr(
                    path,
                    OsStr::from_bytes(name),
                    value,
                    rustix::fs::XattrFlags::empty(),
                )?;
            }
        }
        // Setting an ACL can move the group bits: the mode wins, as it was durable with it.
        rustix::fs::chmod(path, RMode::from_raw_mode(meta.mode & 0o7777))?;
    }
    let times = Timestamps {
        last_access: ts(meta.atime),
        last_modification: ts(meta.mtime),
    };
    rustix::fs::utimensat(rustix::fs::CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

/// For an fd: the backing inode number.
pub(crate) fn ino_of(fd: impl AsFd) -> io::Result<Ino> {
    Ok(rustix::fs::statat(fd.as_fd(), "", AtFlags::EMPTY_PATH)?.st_ino)
}
