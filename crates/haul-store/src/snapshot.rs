//! Snapshots: immutable point-in-time copies of a destination subtree, kept in
//! `<top root>/.haul/snapshots/<id>/`, so a run that goes wrong (or a source that was wrong)
//! can be read back or restored from.
//!
//! # Layout
//! `<id>/tree/` is the copy of the subtree (its contents; `tree` itself gets the subtree's own
//! mode, owner and times), `<id>/info` a small `key=value` text file (see [`SnapshotInfo`]),
//! written atomically (temporary name, `fsync`, `rename`, `fsync` of the directory): once with
//! `complete=0` before anything is copied, and again with the counts and `complete=1` after
//! the copy is flushed (`syncfs`). A snapshot without `complete=1` is one whose creation died;
//! [`Root::list_snapshots`] lists it as incomplete and [`Root::delete_snapshot`] removes it.
//!
//! Ids are `YYYYMMDDTHHMMSSZ-xxxxxx`: the UTC creation time to the second (computed from
//! [`SystemTime`] by hand, no calendar crate), then six hex digits of a BLAKE3 of the time in
//! nanoseconds, the pid and a counter, made unique by `mkdirat` (a collision is retried).
//! They sort by time as text; within one second [`Root::list_snapshots`] orders by the
//! nanoseconds recorded in `info`.
//!
//! # Sharing data with the live tree
//! Regular files are not copied byte for byte. The first regular file decides, at run time,
//! for the whole snapshot: a `FICLONE` of it into a new file either works (reflink: the new
//! file is a separate inode sharing extents; the file system copies an extent when either side
//! writes it) or fails with `EOPNOTSUPP`, `EXDEV`, `EINVAL` or `ENOTTY` (hard links: the
//! snapshot's name is another link to the live inode). A file that cannot be shared either way
//! (another file system mounted inside the subtree, too many links, a hard link the kernel's
//! `protected_hardlinks` refuses) has its data copied (`copy_file_range` of its data segments,
//! so holes stay holes) and is counted in [`SnapshotInfo::copied`].
//!
//! A hard-link snapshot shares inodes with the live tree, so **nothing may change an
//! installed file's inode in place** while one exists. Installs rename a new file over the
//! old name already; [`Root::patch_in_place`] refuses a file with more than one link (the
//! caller then writes a new file), [`Root::set_file_meta`] first moves a linked file to a new
//! inode when [`Root::has_snapshots`], and [`Root::recover_patches`] restores into a new
//! inode too. A reflink snapshot's files are inodes of their own, so those in-place writes to
//! the live files are safe there.
//!
//! Directories are recreated (mode, owner where permitted, extended attributes where
//! permitted, access and modification times, the times set after their contents), symlinks
//! made anew with the same target, FIFOs and (where permitted) device nodes made with
//! `mknodat`; sockets, and devices the process may not make, are skipped and counted. In a
//! reflink or copied snapshot a hard-link group stays one group: its first name is cloned,
//! the later ones are linked to that.
//!
//! The walk is confined like everything in the store: from the root's fd, one
//! `openat(O_DIRECTORY | O_NOFOLLOW)` at a time, acting with `*at()` calls that do not follow
//! the final name, and never entering the top root's `.haul`. It does not stop a receiver
//! writing meanwhile, and the immutability above holds for installed files only: a file a
//! running receiver is still writing under its final name (a fresh copy's files are written
//! in place, see `staging`) would be linked half written and keep changing. So snapshots are
//! taken between runs, or by a caller holding a lease on the subtree (see `lease`) that
//! receivers check.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, SeekFrom, Stat, Timespec, Timestamps};
use rustix::io::Errno;

use crate::attrs::XattrTarget;
use crate::clock::{civil, days_from_civil};
use crate::error::StoreError;
use crate::fsutil::{Missing, not_found, open_child_dir, pwrite_all};
use crate::path::{RESERVED, RelPath};
use crate::root::Root;

/// The directory of snapshots in the top root's `.haul`.
const DIR: &[u8] = b"snapshots";
/// A snapshot's copy of the subtree, inside `<id>/`.
const TREE: &str = "tree";
/// A snapshot's description, inside `<id>/`.
const INFO: &str = "info";
/// The longest id accepted from a caller (ours are 23 characters).
const MAX_ID: usize = 64;
/// How directories are opened: never following a symlink.
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);
/// The largest `info` (or lease) file read back; anything longer is not ours.
pub(crate) const MAX_TEXT: usize = 64 << 10;

/// How a snapshot shares file data with the live tree (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotMethod {
    /// Files are `FICLONE`d: separate inodes sharing extents copy-on-write.
    Reflink,
    /// Files are hard links to the live inodes.
    Hardlink,
}

impl SnapshotMethod {
    /// `reflink` or `hardlink`, as in the `info` file.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotMethod::Reflink => "reflink",
            SnapshotMethod::Hardlink => "hardlink",
        }
    }
}

/// What a snapshot is, from its `info` file.
///
/// An incomplete snapshot (its creation died) has `complete == false`; when even its first
/// `info` was never written, only `id` and `created` (from the id) are known and the rest is
/// empty or zero.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The id: `YYYYMMDDTHHMMSSZ-xxxxxx` (see the module docs).
    pub id: String,
    /// Creation time, seconds since the Unix epoch.
    pub created: i64,
    /// Nanoseconds part of the creation time.
    pub created_nanos: u32,
    /// The caller's label, any UTF-8 (stored escaped, returned as given).
    pub label: String,
    /// The subtree copied, as a path from the top root (empty: the whole root).
    pub subtree: RelPath,
    /// How file data is shared; `None` while a creation has not reached a regular file. A
    /// complete snapshot without regular files says `Hardlink` (nothing is shared either way).
    pub method: Option<SnapshotMethod>,
    /// Regular files (names: each name of a hard-link group counts).
    pub files: u64,
    /// Sum of the regular files' sizes in bytes (each name counts).
    pub bytes: u64,
    /// Directories below the subtree.
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// FIFOs and device nodes made.
    pub specials: u64,
    /// Regular files whose data had to be copied instead of shared.
    pub copied: u64,
    /// Entries not in the snapshot: sockets, device nodes the process may not make.
    pub skipped: u64,
    /// The copy finished and was flushed (`complete=1` in `info`).
    pub complete: bool,
}

impl SnapshotInfo {
    fn new(id: String, created: i64, created_nanos: u32) -> SnapshotInfo {
        SnapshotInfo {
            id,
            created,
            created_nanos,
            label: String::new(),
            subtree: RelPath::root(),
            method: None,
            files: 0,
            bytes: 0,
            dirs: 0,
            symlinks: 0,
            specials: 0,
            copied: 0,
            skipped: 0,
            complete: false,
        }
    }

    fn to_text(&self) -> String {
        let mut out = String::new();
        let mut line = |k: &str, v: &str| {
            out.push_str(k);
            out.push('=');
            out.push_str(v);
            out.push('\n');
        };
        line("id", &self.id);
        line("created", &self.created.to_string());
        line("created_nanos", &self.created_nanos.to_string());
        line("label", &escape(self.label.as_bytes()));
        line("subtree", &escape(self.subtree.as_bytes()));
        if let Some(m) = self.method {
            line("method", m.as_str());
        }
        for (k, v) in [
            ("files", self.files),
            ("bytes", self.bytes),
            ("dirs", self.dirs),
            ("symlinks", self.symlinks),
            ("specials", self.specials),
            ("copied", self.copied),
            ("skipped", self.skipped),
        ] {
            line(k, &v.to_string());
        }
        line("complete", if self.complete { "1" } else { "0" });
        out
    }

    /// Parses an `info` file of the snapshot `id` (the directory's name wins over the file's
    /// `id` line). Unknown keys are ignored; a malformed value leaves its field empty.
    fn parse(id: &str, text: &str) -> SnapshotInfo {
        let (created, nanos) = created_of_id(id);
        let mut info = SnapshotInfo::new(id.to_owned(), created, nanos);
        for (key, value) in text.lines().filter_map(|l| l.split_once('=')) {
            let num = || value.parse::<u64>().unwrap_or(0);
            match key {
                "created" => info.created = value.parse().unwrap_or(created),
                "created_nanos" => info.created_nanos = value.parse().unwrap_or(0),
                "label" => {
                    let bytes = unescape(value).unwrap_or_default();
                    info.label = String::from_utf8_lossy(&bytes).into_owned();
                }
                "subtree" => {
                    info.subtree = unescape(value)
                        .and_then(|b| RelPath::parse(&b).ok())
                        .unwrap_or_default();
                }
                "method" => {
                    info.method = match value {
                        "reflink" => Some(SnapshotMethod::Reflink),
                        "hardlink" => Some(SnapshotMethod::Hardlink),
                        _ => None,
                    }
                }
                "files" => info.files = num(),
                "bytes" => info.bytes = num(),
                "dirs" => info.dirs = num(),
                "symlinks" => info.symlinks = num(),
                "specials" => info.specials = num(),
                "copied" => info.copied = num(),
                "skipped" => info.skipped = num(),
                "complete" => info.complete = value == "1",
                _ => {}
            }
        }
        info
    }
}

impl Root {
    /// Takes a snapshot of the directory `subtree` (relative to this root; the root itself
    /// for all of it) labelled `label` (any text), as the module docs describe, and returns
    /// its description. On an error the half-made snapshot is removed (best effort; what
    /// remains is listed as incomplete).
    pub fn create_snapshot(
        &self,
        subtree: &RelPath,
        label: &str,
    ) -> Result<SnapshotInfo, StoreError> {
        let src = self
            .resolve_dir(subtree, Missing::Absent)?
            .ok_or_else(|| not_found(self.display_path(subtree), "take a snapshot of"))?;
        let src_st =
            rustix::fs::fstat(&*src).map_err(|e| self.err(e, subtree, "take a snapshot of"))?;
        let dir = self
            .snapshots_dir(Missing::Create)?
            .ok_or_else(|| not_found(self.snapshots_path(), "create directory"))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let (id, created) = make_id(&dir, now).map_err(|e| {
            StoreError::from_errno(e, self.snapshots_path(), &self.staging.root_path, "create")
        })?;
        // From here on a snapshot (perhaps incomplete) exists and may share inodes.
        self.top.snapshots_seen.store(true, Ordering::Relaxed);
        let mut info = SnapshotInfo::new(id.clone(), created.0, created.1);
        info.label = label.to_owned();
        info.subtree = self.prefix.join(subtree);
        let made = self.fill_snapshot(&dir, &src, &src_st, subtree, &mut info);
        if let Err(e) = made {
            let _ = remove_snapshot_dir(&dir, &id);
            self.forget_snapshots_if_none(&dir);
            return Err(e);
        }
        Ok(info)
    }

    /// Everything [`Root::create_snapshot`] does once the id directory exists.
    fn fill_snapshot(
        &self,
        dir: &OwnedFd,
        src: &OwnedFd,
        src_st: &Stat,
        subtree: &RelPath,
        info: &mut SnapshotInfo,
    ) -> Result<(), StoreError> {
        let id_path = self.snapshots_path().join(&info.id);
        let space = &self.staging.root_path;
        let fail = |path: PathBuf, op: &'static str| {
            move |e: Errno| StoreError::from_errno(e, path, space, op)
        };
        let id_dir = rustix::fs::openat(dir, info.id.as_str(), DIR_FLAGS, Mode::empty())
            .map_err(fail(id_path.clone(), "open"))?;
        write_atomic(&id_dir, INFO, info.to_text().as_bytes())
            .map_err(fail(id_path.join(INFO), "write"))?;
        let tree_path = id_path.join(TREE);
        rustix::fs::mkdirat(&id_dir, TREE, Mode::from_raw_mode(0o700))
            .map_err(fail(tree_path.clone(), "create directory"))?;
        let tree = rustix::fs::openat(&id_dir, TREE, DIR_FLAGS, Mode::empty())
            .map_err(fail(tree_path.clone(), "open"))?;
        let mut copier = Copier {
            src_base: self.display_path(subtree),
            dst_base: tree_path.clone(),
            space: space.clone(),
            tree: &tree,
            groups: HashMap::new(),
            info,
        };
        // Only the top root's own `.haul` is the store's; one further down is user data.
        let skip_reserved = self.prefix.is_root() && subtree.is_root();
        copier.dir(src, &tree, &[], skip_reserved)?;
        copier.dir_meta(src, &tree, src_st, &[])?;
        let info = copier.info;
        if info.method.is_none() {
            info.method = Some(SnapshotMethod::Hardlink);
        }
        // Everything copied is on disk before `complete=1` says so.
        rustix::fs::syncfs(&tree).map_err(fail(tree_path, "flush (syncfs) the file system of"))?;
        info.complete = true;
        write_atomic(&id_dir, INFO, info.to_text().as_bytes())
            .map_err(fail(id_path.join(INFO), "write"))
    }

    /// Every snapshot in the top root, oldest first; incomplete ones (a creation that died)
    /// with `complete == false`. Entries of `.haul/snapshots` that are not snapshot
    /// directories are ignored.
    pub fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>, StoreError> {
        let Some(dir) = self.snapshots_dir(Missing::Absent)? else {
            return Ok(Vec::new());
        };
        let names = names(&dir).map_err(|e| {
            StoreError::from_errno(e, self.snapshots_path(), &self.staging.root_path, "list")
        })?;
        let mut out = Vec::new();
        for name in names {
            let Ok(id) = std::str::from_utf8(&name) else {
                continue;
            };
            if !valid_id(id) {
                continue;
            }
            let id_dir = match rustix::fs::openat(&dir, id, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => continue,
                Err(e) => {
                    let path = self.snapshots_path().join(id);
                    return Err(StoreError::from_errno(
                        e,
                        path,
                        &self.staging.root_path,
                        "open",
                    ));
                }
            };
            let info = match read_text(&id_dir, INFO) {
                Ok(Some(text)) => SnapshotInfo::parse(id, &text),
                Ok(None) => {
                    let (created, nanos) = created_of_id(id);
                    SnapshotInfo::new(id.to_owned(), created, nanos)
                }
                Err(e) => {
                    let path = self.snapshots_path().join(id).join(INFO);
                    return Err(StoreError::from_errno(
                        e,
                        path,
                        &self.staging.root_path,
                        "read",
                    ));
                }
            };
            out.push(info);
        }
        out.sort_by(|a, b| {
            (a.created, a.created_nanos, &a.id).cmp(&(b.created, b.created_nanos, &b.id))
        });
        Ok(out)
    }

    /// Removes the snapshot `id`, complete or not, and everything in it. The id is checked
    /// first ([`StoreError::InvalidSnapshotId`] for anything that is not one: no `/`, no
    /// `..`); the removal works through fds from the snapshots directory without following a
    /// symlink, so it cannot reach outside it. Its `info` goes first, so a removal that dies
    /// half way leaves an incomplete snapshot, not a complete-looking partial one.
    pub fn delete_snapshot(&self, id: &str) -> Result<(), StoreError> {
        let dir = self.existing_snapshot(id)?;
        let path = self.snapshots_path().join(id);
        remove_snapshot_dir(&dir, id)
            .map_err(|e| StoreError::from_errno(e, path, &self.staging.root_path, "remove"))?;
        self.forget_snapshots_if_none(&dir);
        Ok(())
    }

    /// The path of the complete snapshot `id`'s copy (its `tree/`), for reading it back or
    /// restoring from it. An incomplete one is [`StoreError::SnapshotIncomplete`].
    pub fn snapshot_dir(&self, id: &str) -> Result<PathBuf, StoreError> {
        let dir = self.existing_snapshot(id)?;
        let path = self.snapshots_path().join(id);
        let space = &self.staging.root_path;
        let id_dir = rustix::fs::openat(&dir, id, DIR_FLAGS, Mode::empty())
            .map_err(|e| StoreError::from_errno(e, path.clone(), space, "open"))?;
        let complete = read_text(&id_dir, INFO)
            .map_err(|e| StoreError::from_errno(e, path.join(INFO), space, "read"))?
            .is_some_and(|t| SnapshotInfo::parse(id, &t).complete);
        let tree_is_dir = rustix::fs::statat(&id_dir, TREE, AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory);
        if !complete || !tree_is_dir {
            return Err(StoreError::SnapshotIncomplete {
                id: id.to_owned(),
                path,
            });
        }
        Ok(path.join(TREE))
    }

    /// Whether any snapshot (complete or not) exists in the top root, so files may share
    /// inodes with one. Cheap: once one is known (made by this process, or seen), an atomic
    /// load; until then, a look at `.haul/snapshots` (another process may have made one), so
    /// a `true` is never missed. A stale `true` after every snapshot went is harmless (a
    /// linked file's metadata update then copies it first).
    pub fn has_snapshots(&self) -> bool {
        if self.top.snapshots_seen.load(Ordering::Relaxed) {
            return true;
        }
        let found = match rustix::fs::openat(&self.top.haul, "snapshots", DIR_FLAGS, Mode::empty())
        {
            Ok(dir) => names(&dir).map_or(true, |n| !n.is_empty()),
            Err(Errno::NOENT) => false,
            // Unsure: assume one exists, the safe side.
            Err(_) => true,
        };
        if found {
            self.top.snapshots_seen.store(true, Ordering::Relaxed);
        }
        found
    }

    /// Clears the cached "a snapshot exists" when `dir` holds none any more.
    fn forget_snapshots_if_none(&self, dir: &OwnedFd) {
        if names(dir).is_ok_and(|n| n.is_empty()) {
            self.top.snapshots_seen.store(false, Ordering::Relaxed);
        }
    }

    /// The snapshots directory, after checking that `id` is a valid id of a directory in it.
    fn existing_snapshot(&self, id: &str) -> Result<OwnedFd, StoreError> {
        if !valid_id(id) {
            return Err(StoreError::InvalidSnapshotId { id: id.to_owned() });
        }
        let missing = || StoreError::NoSuchSnapshot {
            id: id.to_owned(),
            path: self.snapshots_path(),
        };
        let dir = self.snapshots_dir(Missing::Absent)?.ok_or_else(missing)?;
        match rustix::fs::statat(&dir, id, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => Ok(dir),
            Ok(_) | Err(Errno::NOENT) => Err(missing()),
            Err(e) => Err(StoreError::from_errno(
                e,
                self.snapshots_path().join(id),
                &self.staging.root_path,
                "inspect",
            )),
        }
    }

    fn snapshots_path(&self) -> PathBuf {
        self.top.haul_path.join("snapshots")
    }

    fn snapshots_dir(&self, missing: Missing) -> Result<Option<OwnedFd>, StoreError> {
        let shown = || self.snapshots_path();
        open_child_dir(
            &self.top.haul,
            DIR,
            missing,
            &shown,
            &self.staging.root_path,
        )
    }
}

/// Copies the contents of directory `src` (shown as `src_base`) into the empty directory
/// `dst` (shown as `dst_base`) the way a snapshot is made (reflinks, else hard links, else
/// copies), then gives `dst` the mode, owner, attributes and times of `src`. For
/// [`Root::restore_snapshot`], which copies a snapshot's tree back beside the live one.
pub(crate) fn copy_tree(
    src: &OwnedFd,
    src_base: PathBuf,
    dst: &OwnedFd,
    dst_base: PathBuf,
    space: PathBuf,
) -> Result<u64, StoreError> {
    let mut info = SnapshotInfo::new(String::new(), 0, 0);
    let mut copier = Copier {
        src_base,
        dst_base,
        space,
        tree: dst,
        groups: HashMap::new(),
        info: &mut info,
    };
    copier.dir(src, dst, &[], false)?;
    let entries =
        copier.info.files + copier.info.dirs + copier.info.symlinks + copier.info.specials;
    Ok(entries)
}

/// Gives directory `dst` the mode, owner (best effort), attributes and times of `src`.
pub(crate) fn copy_dir_meta(
    src: &OwnedFd,
    dst: &OwnedFd,
    shown: PathBuf,
) -> Result<(), StoreError> {
    let st = rustix::fs::fstat(src)
        .map_err(|e| StoreError::from_errno(e, shown.clone(), &shown, "inspect"))?;
    owner_of(dst.as_fd(), &st);
    rustix::fs::fchmod(dst, Mode::from_raw_mode(st.st_mode & 0o7777))
        .map_err(|e| StoreError::from_errno(e, shown.clone(), &shown, "set the mode of"))?;
    copy_xattrs(src.as_fd(), dst.as_fd());
    rustix::fs::futimens(dst, &times_of(&st))
        .map_err(|e| StoreError::from_errno(e, shown.clone(), &shown, "set the times of"))
}

/// Removes `name` in `parent` and everything below it (for `restore`).
pub(crate) fn remove_tree(parent: &OwnedFd, name: &[u8]) -> Result<(), Errno> {
    remove_entry(parent, name)
}

/// The snapshot directory's tree of `id`, opened, with the subtree it is a copy of.
pub(crate) fn snapshot_tree(
    root: &Root,
    id: &str,
) -> Result<(OwnedFd, SnapshotInfo, PathBuf), StoreError> {
    let path = root.snapshot_dir(id)?;
    let info = root
        .list_snapshots()?
        .into_iter()
        .find(|s| s.id == id)
        .ok_or_else(|| StoreError::NoSuchSnapshot {
            id: id.to_owned(),
            path: path.clone(),
        })?;
    let dir = root.existing_snapshot(id)?;
    let space = &root.staging.root_path;
    let id_dir = rustix::fs::openat(&dir, id, DIR_FLAGS, Mode::empty())
        .map_err(|e| StoreError::from_errno(e, path.clone(), space, "open"))?;
    let tree = rustix::fs::openat(&id_dir, TREE, DIR_FLAGS, Mode::empty())
        .map_err(|e| StoreError::from_errno(e, path.clone(), space, "open"))?;
    Ok((tree, info, path))
}

/// Makes the directory of a new snapshot in `dir`; returns its id and creation time.
fn make_id(dir: &OwnedFd, now: std::time::Duration) -> Result<(String, (i64, u32)), Errno> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let pid = rustix::process::getpid().as_raw_nonzero().get();
    for _ in 0..1000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut seed = Vec::with_capacity(32);
        seed.extend_from_slice(&now.as_nanos().to_le_bytes());
        seed.extend_from_slice(&pid.to_le_bytes());
        seed.extend_from_slice(&n.to_le_bytes());
        let hex = blake3::hash(&seed).to_hex();
        let (y, mo, d, h, mi, s) = civil(secs);
        let id = format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z-{}", &hex[..6]);
        match rustix::fs::mkdirat(dir, id.as_str(), Mode::from_raw_mode(0o700)) {
            Ok(()) => return Ok((id, (secs, now.subsec_nanos()))),
            Err(Errno::EXIST) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Errno::EXIST)
}

/// Whether `id` may name a snapshot: 1 to 64 ASCII letters, digits, `-` or `_` (so never
/// `/`, `.`, `..` or NUL).
fn valid_id(id: &str) -> bool {
    (1..=MAX_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The creation time an id of ours carries (to the second); `(0, 0)` for another name.
fn created_of_id(id: &str) -> (i64, u32) {
    let num = |r: std::ops::Range<usize>| id.get(r).and_then(|s| s.parse::<i64>().ok());
    let parsed = (|| {
        if id.as_bytes().get(8) != Some(&b'T') || id.as_bytes().get(15) != Some(&b'Z') {
            return None;
        }
        let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
        let (h, mi, s) = (num(9..11)?, num(11..13)?, num(13..15)?);
        Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s)
    })();
    (parsed.unwrap_or(0), 0)
}

/// Escapes `bytes` for one `key=value` line: `\\`, `\n`, `\r`, and `\xNN` for other control
/// bytes and bytes that are not UTF-8. Everything else (any printable UTF-8) stays as it is.
pub(crate) fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                c if c.is_control() && (c as u32) < 0x100 => {
                    out.push_str(&format!("\\x{:02x}", c as u32));
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// The bytes [`escape`] made `text` from; `None` for a malformed escape.
pub(crate) fn unescape(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next()? {
            b'\\' => out.push(b'\\'),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b'x' => {
                let hex = [bytes.next()?, bytes.next()?];
                let hex = std::str::from_utf8(&hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Writes `data` as `dir/name` atomically: a temporary name in `dir`, `fsync`, `rename` over
/// `name`, `fsync` of `dir`. Readers see the old content or the new, never a mix.
pub(crate) fn write_atomic(dir: &OwnedFd, name: &str, data: &[u8]) -> Result<(), Errno> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let pid = rustix::process::getpid().as_raw_nonzero();
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let (temp, fd) = loop {
        let temp = format!(".{name}.tmp-{pid}-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        match rustix::fs::openat(dir, temp.as_str(), flags, Mode::from_raw_mode(0o600)) {
            Ok(fd) => break (temp, fd),
            Err(Errno::EXIST) => continue,
            Err(e) => return Err(e),
        }
    };
    let written = (|| {
        let mut file = std::fs::File::from(fd);
        file.write_all(data).map_err(errno_of)?;
        file.sync_all().map_err(errno_of)?;
        rustix::fs::renameat(dir, temp.as_str(), dir, name)
    })();
    if let Err(e) = written {
        let _ = rustix::fs::unlinkat(dir, temp.as_str(), AtFlags::empty());
        return Err(e);
    }
    rustix::fs::fsync(dir)
}

/// The UTF-8 text of `dir/name` (not followed if a symlink); `None` if it is missing, not a
/// regular file, longer than [`MAX_TEXT`] or not UTF-8.
pub(crate) fn read_text(dir: &OwnedFd, name: &str) -> Result<Option<String>, Errno> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT | Errno::LOOP) => return Ok(None),
        Err(e) => return Err(e),
    };
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Ok(None);
    }
    let mut data = Vec::new();
    std::fs::File::from(fd)
        .take(MAX_TEXT as u64 + 1)
        .read_to_end(&mut data)
        .map_err(errno_of)?;
    if data.len() > MAX_TEXT {
        return Ok(None);
    }
    Ok(String::from_utf8(data).ok())
}

pub(crate) fn errno_of(e: io::Error) -> Errno {
    e.raw_os_error().map_or(Errno::IO, Errno::from_raw_os_error)
}

/// The names in a directory, without `.` and `..`.
pub(crate) fn names(dir: &OwnedFd) -> Result<Vec<Vec<u8>>, Errno> {
    let mut out = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            out.push(name.to_vec());
        }
    }
    Ok(out)
}

/// Errors of `FICLONE` that mean "this file system (or pair of files) cannot share
/// extents": the caller uses another way.
fn clone_unsupported(e: Errno) -> bool {
    matches!(
        e,
        Errno::OPNOTSUPP | Errno::XDEV | Errno::INVAL | Errno::NOTTY
    )
}

/// Gives the new, empty file `dst` the data of `src` (`size` bytes): a `FICLONE` where the
/// file system shares extents, else [`copy_data`]. Returns whether it was cloned.
pub(crate) fn clone_or_copy(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    size: u64,
) -> Result<bool, Errno> {
    match rustix::fs::ioctl_ficlone(dst, src) {
        Ok(()) => Ok(true),
        Err(e) if clone_unsupported(e) || matches!(e, Errno::PERM | Errno::TXTBSY) => {
            copy_data(src, dst, size).map(|()| false)
        }
        Err(e) => Err(e),
    }
}

/// Copies the data of `src` (`size` bytes) into the empty file `dst`, keeping holes: only
/// the segments `SEEK_DATA`/`SEEK_HOLE` find are copied, each with `copy_file_range` (in the
/// kernel), falling back to reads and writes where the kernel or file system cannot. A
/// source that shrinks meanwhile leaves the rest of `dst` a hole.
pub(crate) fn copy_data(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, size: u64) -> Result<(), Errno> {
    rustix::fs::ftruncate(dst, size)?;
    let mut pos = 0;
    while pos < size {
        let start = match rustix::fs::seek(src, SeekFrom::Data(pos)) {
            Ok(start) => start,
            // Nothing but a hole from here on.
            Err(Errno::NXIO) => break,
            // No SEEK_DATA here: everything is data.
            Err(Errno::INVAL | Errno::OPNOTSUPP) => pos,
            Err(e) => return Err(e),
        };
        if start >= size {
            break;
        }
        let end = match rustix::fs::seek(src, SeekFrom::Hole(start)) {
            Ok(end) => end.min(size),
            Err(Errno::NXIO | Errno::INVAL | Errno::OPNOTSUPP) => size,
            Err(e) => return Err(e),
        };
        if !copy_segment(src, dst, start, end)? {
            break;
        }
        pos = end.max(start + 1);
    }
    Ok(())
}

/// Copies `[start, end)` of `src` to the same range of `dst`. False if `src` ended early.
fn copy_segment(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    start: u64,
    end: u64,
) -> Result<bool, Errno> {
    let (mut off_in, mut off_out) = (start, start);
    let mut fast = true;
    while off_out < end && fast {
        let want = usize::try_from(end - off_out)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        match rustix::fs::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), want) {
            Ok(0) => return Ok(false),
            Ok(_) | Err(Errno::INTR) => {}
            Err(Errno::XDEV | Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => fast = false,
            Err(e) => return Err(e),
        }
    }
    let mut buf = vec![0u8; (1 << 20).min(usize::try_from(end - off_out).unwrap_or(0))];
    while off_out < end {
        let n = usize::try_from(end - off_out).map_or(buf.len(), |n| n.min(buf.len()));
        let got = match rustix::io::pread(src, &mut buf[..n], off_in) {
            Ok(0) => return Ok(false),
            Ok(got) => got,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        };
        pwrite_all(dst, off_out, &buf[..got])?;
        off_in += got as u64;
        off_out += got as u64;
    }
    Ok(true)
}

/// Copies the extended attributes `src` has onto `dst`, best effort (a file system, namespace
/// or privilege that refuses one is skipped). One small `flistxattr` when there are none.
pub(crate) fn copy_xattrs(src: BorrowedFd<'_>, dst: BorrowedFd<'_>) {
    let mut probe = [0u8; 256];
    match rustix::fs::flistxattr(src, &mut probe[..]) {
        Ok(0) | Err(Errno::OPNOTSUPP) => return,
        Ok(_) | Err(Errno::RANGE) => {}
        Err(_) => return,
    }
    let Ok(all) = XattrTarget::Fd(src).read_all() else {
        return;
    };
    for x in all {
        let _ = rustix::fs::fsetxattr(
            dst,
            &x.name[..],
            &x.value[..],
            rustix::fs::XattrFlags::empty(),
        );
    }
}

/// Access and modification times of `st`, to set on a copy.
fn times_of(st: &Stat) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec as _,
        },
        last_modification: Timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec as _,
        },
    }
}

/// Which tree a failure was in, for its message.
#[derive(Clone, Copy)]
enum Side {
    Live,
    Snapshot,
}

/// The state of one snapshot's copy.
struct Copier<'a> {
    /// The subtree's path, for messages.
    src_base: PathBuf,
    /// `.../snapshots/<id>/tree`, for messages.
    dst_base: PathBuf,
    /// The top root, named by NoSpace messages.
    space: PathBuf,
    tree: &'a OwnedFd,
    /// First snapshot name (from `tree`) of each multiply linked source inode whose snapshot
    /// copy is an inode of its own (cloned or copied): later names are linked to it.
    groups: HashMap<(u64, u64), Vec<u8>>,
    info: &'a mut SnapshotInfo,
}

/// `rel` with `name` appended, as a path below the subtree.
fn child(rel: &[u8], name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rel.len() + 1 + name.len());
    out.extend_from_slice(rel);
    if !rel.is_empty() {
        out.push(b'/');
    }
    out.extend_from_slice(name);
    out
}

impl Copier<'_> {
    fn err(&self, e: Errno, side: Side, rel: &[u8], op: &'static str) -> StoreError {
        let base = match side {
            Side::Live => &self.src_base,
            Side::Snapshot => &self.dst_base,
        };
        let path = if rel.is_empty() {
            base.clone()
        } else {
            base.join(OsStr::from_bytes(rel))
        };
        StoreError::from_errno(e, path, &self.space, op)
    }

    /// Copies the contents of directory `src` (at `rel` below the subtree) into `dst`.
    fn dir(
        &mut self,
        src: &OwnedFd,
        dst: &OwnedFd,
        rel: &[u8],
        skip_reserved: bool,
    ) -> Result<(), StoreError> {
        let listing = names(src).map_err(|e| self.err(e, Side::Live, rel, "list directory"))?;
        for name in listing {
            if skip_reserved && name == RESERVED {
                continue;
            }
            let path = child(rel, &name);
            self.entry(src, dst, &name, &path)?;
        }
        Ok(())
    }

    fn entry(
        &mut self,
        src: &OwnedFd,
        dst: &OwnedFd,
        name: &[u8],
        rel: &[u8],
    ) -> Result<(), StoreError> {
        let st = match rustix::fs::statat(src, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            // Gone since the listing: not part of the snapshot.
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(self.err(e, Side::Live, rel, "inspect")),
        };
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => self.subdir(src, dst, name, rel),
            FileType::RegularFile => self.file(src, dst, name, rel, &st),
            FileType::Symlink => self.symlink(src, dst, name, rel, &st),
            t @ (FileType::Fifo | FileType::CharacterDevice | FileType::BlockDevice) => {
                self.node(dst, name, rel, &st, t)
            }
            _ => {
                self.info.skipped += 1;
                Ok(())
            }
        }
    }

    fn subdir(
        &mut self,
        src: &OwnedFd,
        dst: &OwnedFd,
        name: &[u8],
        rel: &[u8],
    ) -> Result<(), StoreError> {
        let sub = match rustix::fs::openat(src, name, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => fd,
            // Swapped for something else, or gone, since the stat: left out.
            Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => return Ok(()),
            Err(e) => return Err(self.err(e, Side::Live, rel, "open directory")),
        };
        let st = rustix::fs::fstat(&sub).map_err(|e| self.err(e, Side::Live, rel, "inspect"))?;
        rustix::fs::mkdirat(dst, name, Mode::from_raw_mode(0o700))
            .map_err(|e| self.err(e, Side::Snapshot, rel, "create directory"))?;
        let copy = rustix::fs::openat(dst, name, DIR_FLAGS, Mode::empty())
            .map_err(|e| self.err(e, Side::Snapshot, rel, "open directory"))?;
        self.info.dirs += 1;
        self.dir(&sub, &copy, rel, false)?;
        self.dir_meta(&sub, &copy, &st, rel)
    }

    /// Owner (best effort), mode, attributes (best effort) and times of a copied directory,
    /// once it is filled.
    fn dir_meta(
        &self,
        src: &OwnedFd,
        dst: &OwnedFd,
        st: &Stat,
        rel: &[u8],
    ) -> Result<(), StoreError> {
        owner_of(dst.as_fd(), st);
        rustix::fs::fchmod(dst, Mode::from_raw_mode(st.st_mode & 0o7777))
            .map_err(|e| self.err(e, Side::Snapshot, rel, "set the mode of"))?;
        copy_xattrs(src.as_fd(), dst.as_fd());
        rustix::fs::futimens(dst, &times_of(st))
            .map_err(|e| self.err(e, Side::Snapshot, rel, "set the times of"))
    }

    fn file(
        &mut self,
        src: &OwnedFd,
        dst: &OwnedFd,
        name: &[u8],
        rel: &[u8],
        st: &Stat,
    ) -> Result<(), StoreError> {
        let size = u64::try_from(st.st_size).unwrap_or(0);
        if st.st_nlink > 1
            && let Some(first) = self.groups.get(&(st.st_dev, st.st_ino)).cloned()
            && self.link_to(&first, dst, name, rel)?
        {
            self.count_file(size);
            return Ok(());
        }
        if self.info.method == Some(SnapshotMethod::Hardlink) && self.link(src, dst, name, rel)? {
            self.count_file(size);
            return Ok(());
        }
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let from = match rustix::fs::openat(src, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT | Errno::LOOP) => return Ok(()),
            Err(e) => return Err(self.err(e, Side::Live, rel, "open")),
        };
        let st = rustix::fs::fstat(&from).map_err(|e| self.err(e, Side::Live, rel, "inspect"))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Ok(()); // swapped since the stat
        }
        let size = u64::try_from(st.st_size).unwrap_or(0);
        let mut to = self.create(dst, name, rel)?;
        let shared = if self.info.method == Some(SnapshotMethod::Hardlink) {
            false
        } else {
            match rustix::fs::ioctl_ficlone(&to, &from) {
                Ok(()) => {
                    self.info.method.get_or_insert(SnapshotMethod::Reflink);
                    true
                }
                Err(e) if clone_unsupported(e) && self.info.method.is_none() => {
                    // The first regular file decides: no reflinks here, so hard links.
                    self.info.method = Some(SnapshotMethod::Hardlink);
                    drop(to);
                    rustix::fs::unlinkat(dst, name, AtFlags::empty())
                        .map_err(|e| self.err(e, Side::Snapshot, rel, "remove"))?;
                    if self.link(src, dst, name, rel)? {
                        self.count_file(size);
                        return Ok(());
                    }
                    to = self.create(dst, name, rel)?;
                    false
                }
                Err(e) if clone_unsupported(e) || matches!(e, Errno::PERM | Errno::TXTBSY) => false,
                Err(e) => return Err(self.err(e, Side::Snapshot, rel, "clone (FICLONE) into")),
            }
        };
        if !shared {
            copy_data(from.as_fd(), to.as_fd(), size)
                .map_err(|e| self.err(e, Side::Snapshot, rel, "copy into"))?;
            self.info.copied += 1;
        }
        owner_of(to.as_fd(), &st);
        rustix::fs::fchmod(&to, Mode::from_raw_mode(st.st_mode & 0o7777))
            .map_err(|e| self.err(e, Side::Snapshot, rel, "set the mode of"))?;
        copy_xattrs(from.as_fd(), to.as_fd());
        rustix::fs::futimens(&to, &times_of(&st))
            .map_err(|e| self.err(e, Side::Snapshot, rel, "set the times of"))?;
        if st.st_nlink > 1 {
            self.groups.insert((st.st_dev, st.st_ino), rel.to_vec());
        }
        self.count_file(size);
        Ok(())
    }

    fn count_file(&mut self, size: u64) {
        self.info.files += 1;
        self.info.bytes = self.info.bytes.saturating_add(size);
    }

    fn create(&self, dst: &OwnedFd, name: &[u8], rel: &[u8]) -> Result<OwnedFd, StoreError> {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        rustix::fs::openat(dst, name, flags, Mode::from_raw_mode(0o600))
            .map_err(|e| self.err(e, Side::Snapshot, rel, "create"))
    }

    /// Hard-links the live `src/name` as `dst/name`. False when this file cannot be linked
    /// (another file system, too many links, refused by `protected_hardlinks`): copy it.
    fn link(
        &self,
        src: &OwnedFd,
        dst: &OwnedFd,
        name: &[u8],
        rel: &[u8],
    ) -> Result<bool, StoreError> {
        match rustix::fs::linkat(src, name, dst, name, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(Errno::XDEV | Errno::PERM | Errno::MLINK | Errno::ACCESS) => Ok(false),
            Err(e) => Err(self.err(e, Side::Snapshot, rel, "make a hard link")),
        }
    }

    /// Links the snapshot file `first` (a path from the tree) as `dst/name`. False when that
    /// cannot be done (too many links): the caller makes a copy of its own.
    fn link_to(
        &self,
        first: &[u8],
        dst: &OwnedFd,
        name: &[u8],
        rel: &[u8],
    ) -> Result<bool, StoreError> {
        let (dir, last) = match first.iter().rposition(|&b| b == b'/') {
            Some(slash) => (&first[..slash], &first[slash + 1..]),
            None => (&[][..], first),
        };
        let mut parent: Option<OwnedFd> = None;
        if !dir.is_empty() {
            for component in dir.split(|&b| b == b'/') {
                let at = parent.as_ref().unwrap_or(self.tree);
                let next = rustix::fs::openat(at, component, DIR_FLAGS, Mode::empty())
                    .map_err(|e| self.err(e, Side::Snapshot, first, "open directory"))?;
                parent = Some(next);
            }
        }
        let at = parent.as_ref().unwrap_or(self.tree);
        match rustix::fs::linkat(at, last, dst, name, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(Errno::MLINK) => Ok(false),
            Err(e) => Err(self.err(e, Side::Snapshot, rel, "make a hard link")),
        }
    }

    fn symlink(
        &mut self,
        src: &OwnedFd,
        dst: &OwnedFd,
        name: &[u8],
        rel: &[u8],
        st: &Stat,
    ) -> Result<(), StoreError> {
        let target = match rustix::fs::readlinkat(src, name, Vec::new()) {
            Ok(t) => t,
            Err(Errno::NOENT | Errno::INVAL) => return Ok(()),
            Err(e) => return Err(self.err(e, Side::Live, rel, "read the symbolic link")),
        };
        rustix::fs::symlinkat(target.as_c_str(), dst, name)
            .map_err(|e| self.err(e, Side::Snapshot, rel, "create symbolic link"))?;
        let _ = rustix::fs::chownat(
            dst,
            name,
            Some(rustix::fs::Uid::from_raw(st.st_uid)),
            Some(rustix::fs::Gid::from_raw(st.st_gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        );
        rustix::fs::utimensat(dst, name, &times_of(st), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.err(e, Side::Snapshot, rel, "set the times of"))?;
        self.info.symlinks += 1;
        Ok(())
    }

    /// A FIFO or device node like `st`; a device the process may not make is skipped.
    fn node(
        &mut self,
        dst: &OwnedFd,
        name: &[u8],
        rel: &[u8],
        st: &Stat,
        kind: FileType,
    ) -> Result<(), StoreError> {
        let rdev = if kind == FileType::Fifo {
            0
        } else {
            st.st_rdev
        };
        match rustix::fs::mknodat(dst, name, kind, Mode::from_raw_mode(0o600), rdev) {
            Ok(()) => {}
            Err(Errno::PERM | Errno::ACCESS) if kind != FileType::Fifo => {
                self.info.skipped += 1;
                return Ok(());
            }
            Err(e) => return Err(self.err(e, Side::Snapshot, rel, "create a special file")),
        }
        let _ = rustix::fs::chownat(
            dst,
            name,
            Some(rustix::fs::Uid::from_raw(st.st_uid)),
            Some(rustix::fs::Gid::from_raw(st.st_gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        );
        rustix::fs::chmodat(
            dst,
            name,
            Mode::from_raw_mode(st.st_mode & 0o7777),
            AtFlags::empty(),
        )
        .map_err(|e| self.err(e, Side::Snapshot, rel, "set the mode of"))?;
        rustix::fs::utimensat(dst, name, &times_of(st), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.err(e, Side::Snapshot, rel, "set the times of"))?;
        self.info.specials += 1;
        Ok(())
    }
}

/// Gives `fd` the owner and group of `st`, best effort (only root may give a file away).
pub(crate) fn owner_of(fd: BorrowedFd<'_>, st: &Stat) -> bool {
    rustix::fs::fchown(
        fd,
        Some(rustix::fs::Uid::from_raw(st.st_uid)),
        Some(rustix::fs::Gid::from_raw(st.st_gid)),
    )
    .is_ok()
}

/// Removes the snapshot directory `id` in `dir` and all it holds, `info` first.
fn remove_snapshot_dir(dir: &OwnedFd, id: &str) -> Result<(), Errno> {
    let id_dir = open_for_removal(dir, id.as_bytes())?;
    match rustix::fs::unlinkat(&id_dir, INFO, AtFlags::empty()) {
        Ok(()) => rustix::fs::fsync(&id_dir)?,
        Err(Errno::NOENT) => {}
        Err(e) => return Err(e),
    }
    for name in names(&id_dir)? {
        remove_entry(&id_dir, &name)?;
    }
    match rustix::fs::unlinkat(dir, id, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes `name` in `parent`, and for a directory all it holds, never following a symlink.
fn remove_entry(parent: &OwnedFd, name: &[u8]) -> Result<(), Errno> {
    let st = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(e),
        };
    }
    let dir = match open_for_removal(parent, name) {
        Ok(fd) => fd,
        Err(Errno::NOTDIR | Errno::LOOP) => return remove_entry(parent, name),
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    for child in names(&dir)? {
        remove_entry(&dir, &child)?;
    }
    match rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Opens the directory `name` in `parent` (not following a symlink) and makes it
/// `rwx` for its owner, so that its entries can be listed and removed even when the snapshot
/// copied a read-only mode (`0555`, `0000`) onto it.
fn open_for_removal(parent: &OwnedFd, name: &[u8]) -> Result<OwnedFd, Errno> {
    let dir = match rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ACCESS) => {
            // Unreadable: change the mode through a path handle of that very directory.
            let handle = rustix::fs::openat(
                parent,
                name,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let proc = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&handle));
            rustix::fs::chmodat(
                rustix::fs::CWD,
                proc.as_str(),
                Mode::from_raw_mode(0o700),
                AtFlags::empty(),
            )?;
            rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty())?
        }
        Err(e) => return Err(e),
    };
    let st = rustix::fs::fstat(&dir)?;
    if st.st_mode & 0o700 != 0o700 {
        let _ = rustix::fs::fchmod(&dir, Mode::from_raw_mode(0o700));
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_give_back_their_creation_time() {
        assert_eq!(created_of_id("20231114T221320Z-abcdef"), (1_700_000_000, 0));
        assert_eq!(created_of_id("nonsense"), (0, 0));
    }

    #[test]
    fn escaping_round_trips_any_bytes() {
        let cases: [&[u8]; 5] = [
            b"plain label",
            "unicode \u{00e9}\u{1F600} label".as_bytes(),
            b"two\nlines\r\nand a \\ backslash\\n",
            b"\x00\x01\x7f tabs\tand bytes \xff\xfe",
            b"",
        ];
        for case in cases {
            let escaped = escape(case);
            assert!(!escaped.contains('\n') && !escaped.contains('\r'));
            assert_eq!(unescape(&escaped).unwrap(), case);
        }
        assert!(unescape("bad \\q escape").is_none());
        assert!(unescape("short \\x4").is_none());
    }

    #[test]
    fn ids_are_checked() {
        assert!(valid_id("20231114T221320Z-abcdef"));
        for bad in ["", ".", "..", "../x", "a/b", "a\0b", "x.y", &"a".repeat(65)] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }
}
