//! Restoring a snapshot onto the live tree it was taken of ([`Root::restore_snapshot`]), in
//! place on the host, crash-safe.
//!
//! # How
//! Everything happens in a work directory `<top root>/.haul/restores/<name>/`, on the same
//! file system as the live tree, so each step is a rename:
//!
//! 1. **copying**: the snapshot's tree is copied into `new/` the way a snapshot is made
//!    (reflinks, else hard links to the snapshot's inodes, which nothing rewrites in place),
//!    then flushed (`syncfs`). The live tree is untouched: a crash here costs only the work
//!    directory, which the next restore removes.
//! 2. **clearing**: every entry of the live subtree (never the top root's `.haul`) is renamed
//!    into `old/`.
//! 3. **filling**: every entry of `new/` is renamed into the live subtree, which then gets the
//!    snapshot's directory mode, owner, attributes and times.
//! 4. **done**: the work directory (with `old/`) is removed.
//!
//! The step reached is written to `state` (atomically, flushed) before it starts, and each
//! step only moves what is still on its side, so it can be run again from any instant: an
//! interrupted restore is finished by the next [`Root::restore_snapshot`] (or
//! [`Root::finish_restores`]) before anything else. In the middle of steps 2 and 3 the live
//! subtree holds part of its old and part of its restored contents; callers hold a lease on
//! it (receivers refuse other writers) until the restore has been finished.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use crate::error::StoreError;
use crate::fsutil::{Missing, not_found, open_child_dir};
use crate::path::{RESERVED, RelPath};
use crate::root::Root;
use crate::snapshot::{
    copy_dir_meta, copy_tree, escape, names, read_text, remove_tree, snapshot_tree, unescape,
    write_atomic,
};

const DIR: &[u8] = b"restores";
const STATE: &str = "state";
const NEW: &str = "new";
const OLD: &str = "old";
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// What a restore did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// The snapshot restored.
    pub id: String,
    /// Entries (files, directories, links, specials) of the snapshot now in the live tree.
    pub restored: u64,
    /// Top-level entries of the live tree moved away (and removed).
    pub removed: u64,
    /// Interrupted restores finished first.
    pub finished_earlier: u64,
}

/// The step a restore is at (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Copying,
    Clearing,
    Filling,
    Done,
}

impl Step {
    fn as_str(self) -> &'static str {
        match self {
            Step::Copying => "copying",
            Step::Clearing => "clearing",
            Step::Filling => "filling",
            Step::Done => "done",
        }
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl Root {
    /// Restores the complete snapshot `id` onto the subtree it was taken of, which must lie
    /// in this root: afterwards the subtree holds exactly what the snapshot holds (what was
    /// added since is removed, what was changed or removed is back). Finishes interrupted
    /// restores first. See the module docs for the steps and why a crash at any instant
    /// leaves either the old tree or a restore the next call finishes. Callers check leases.
    pub fn restore_snapshot(&self, id: &str) -> Result<RestoreReport, StoreError> {
        let finished_earlier = self.finish_restores()?;
        let (tree, info, snap_path) = snapshot_tree(self, id)?;
        let rel =
            info.subtree
                .strip_prefix(&self.prefix)
                .ok_or_else(|| StoreError::NoSuchSnapshot {
                    id: id.to_owned(),
                    path: snap_path.clone(),
                })?;
        let live = self
            .resolve_dir(&rel, Missing::Create)?
            .ok_or_else(|| not_found(self.display_path(&rel), "restore into"))?;
        let restores = self
            .restores_dir(Missing::Create)?
            .ok_or_else(|| not_found(self.restores_path(), "create directory"))?;
        let name = format!(
            "{id}.{}.{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let work_path = self.restores_path().join(&name);
        let fail = |op: &'static str| {
            let path = work_path.clone();
            let space = self.staging.root_path.clone();
            move |e: Errno| StoreError::from_errno(e, path, &space, op)
        };
        rustix::fs::mkdirat(&restores, name.as_str(), Mode::from_raw_mode(0o700))
            .map_err(fail("create directory"))?;
        let work = rustix::fs::openat(&restores, name.as_str(), DIR_FLAGS, Mode::empty())
            .map_err(fail("open"))?;
        write_state(&work, Step::Copying, &info.subtree).map_err(fail("write the state of"))?;
        rustix::fs::mkdirat(&work, NEW, Mode::from_raw_mode(0o700)).map_err(fail("create"))?;
        let new = rustix::fs::openat(&work, NEW, DIR_FLAGS, Mode::empty()).map_err(fail("open"))?;
        let restored = copy_tree(
            &tree,
            snap_path,
            &new,
            work_path.join(NEW),
            self.staging.root_path.clone(),
        );
        let restored = match restored {
            Ok(n) => n,
            Err(e) => {
                // Nothing live was touched: drop the work directory.
                drop(new);
                let _ = remove_tree(&restores, name.as_bytes());
                return Err(e);
            }
        };
        rustix::fs::syncfs(&new).map_err(fail("flush (syncfs) the file system of"))?;
        let removed = self.finish_one(&restores, &name, &live, Some(&tree), &rel)?;
        self.forget_cached_dirs();
        Ok(RestoreReport {
            id: id.to_owned(),
            restored,
            removed,
            finished_earlier,
        })
    }

    /// Finishes every interrupted restore of a subtree in this root (see the module docs);
    /// returns how many. One that never got past copying is discarded (the live tree was
    /// not touched).
    pub fn finish_restores(&self) -> Result<u64, StoreError> {
        let Some(restores) = self.restores_dir(Missing::Absent)? else {
            return Ok(0);
        };
        let listing = names(&restores).map_err(|e| {
            StoreError::from_errno(e, self.restores_path(), &self.staging.root_path, "list")
        })?;
        let mut finished = 0;
        for name in listing {
            let Ok(name) = String::from_utf8(name) else {
                continue;
            };
            let Ok(work) = rustix::fs::openat(&restores, name.as_str(), DIR_FLAGS, Mode::empty())
            else {
                continue;
            };
            let state = read_text(&work, STATE).ok().flatten().unwrap_or_default();
            let (step, subtree) = parse_state(&state);
            let Some(rel) = subtree.as_ref().and_then(|s| s.strip_prefix(&self.prefix)) else {
                if subtree.is_none() {
                    // Not even its state was written: nothing live was touched.
                    let _ = remove_tree(&restores, name.as_bytes());
                }
                continue; // a restore of another sub-root's tree: not ours to finish
            };
            match step {
                None | Some(Step::Copying) => {
                    remove_tree(&restores, name.as_bytes()).map_err(|e| {
                        StoreError::from_errno(
                            e,
                            self.restores_path().join(&name),
                            &self.staging.root_path,
                            "remove",
                        )
                    })?;
                }
                Some(_) => {
                    let live = self
                        .resolve_dir(&rel, Missing::Create)?
                        .ok_or_else(|| not_found(self.display_path(&rel), "restore into"))?;
                    self.finish_one(&restores, &name, &live, None, &rel)?;
                    finished += 1;
                }
            }
        }
        self.forget_cached_dirs();
        Ok(finished)
    }

    /// Steps 2 to 4 for the work directory `name` (from wherever it stopped). `tree` is the
    /// snapshot's tree when known (for the top directory's metadata).
    fn finish_one(
        &self,
        restores: &OwnedFd,
        name: &str,
        live: &OwnedFd,
        tree: Option<&OwnedFd>,
        rel: &RelPath,
    ) -> Result<u64, StoreError> {
        let work_path = self.restores_path().join(name);
        let space = self.staging.root_path.clone();
        let fail = |op: &'static str, path: PathBuf| {
            let space = space.clone();
            move |e: Errno| StoreError::from_errno(e, path, &space, op)
        };
        let work = rustix::fs::openat(restores, name, DIR_FLAGS, Mode::empty())
            .map_err(fail("open", work_path.clone()))?;
        let state = read_text(&work, STATE)
            .map_err(fail("read", work_path.join(STATE)))?
            .unwrap_or_default();
        let (step, subtree) = parse_state(&state);
        let subtree = subtree.unwrap_or_else(|| self.prefix.join(rel));
        let skip_reserved = subtree.is_root();
        let mut step = step.unwrap_or(Step::Copying);
        let mut removed = 0;
        if step == Step::Copying {
            write_state(&work, Step::Clearing, &subtree)
                .map_err(fail("write the state of", work_path.clone()))?;
            step = Step::Clearing;
        }
        if step == Step::Clearing {
            match rustix::fs::mkdirat(&work, OLD, Mode::from_raw_mode(0o700)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(fail("create", work_path.join(OLD))(e)),
            }
            let old = rustix::fs::openat(&work, OLD, DIR_FLAGS, Mode::empty())
                .map_err(fail("open", work_path.join(OLD)))?;
            let live_path = self.display_path(rel);
            for entry in names(live).map_err(fail("list", live_path.clone()))? {
                if skip_reserved && entry == RESERVED {
                    continue;
                }
                move_aside(live, &entry, &old).map_err(fail("move aside", live_path.clone()))?;
                removed += 1;
            }
            rustix::fs::fsync(live).map_err(fail("flush", live_path))?;
            write_state(&work, Step::Filling, &subtree)
                .map_err(fail("write the state of", work_path.clone()))?;
            step = Step::Filling;
        }
        if step == Step::Filling {
            let new = rustix::fs::openat(&work, NEW, DIR_FLAGS, Mode::empty())
                .map_err(fail("open", work_path.join(NEW)))?;
            let old = rustix::fs::openat(&work, OLD, DIR_FLAGS, Mode::empty())
                .map_err(fail("open", work_path.join(OLD)))?;
            let live_path = self.display_path(rel);
            for entry in names(&new).map_err(fail("list", work_path.join(NEW)))? {
                loop {
                    match rustix::fs::renameat_with(
                        &new,
                        &*entry,
                        live,
                        &*entry,
                        RenameFlags::NOREPLACE,
                    ) {
                        Ok(()) | Err(Errno::NOENT) => break,
                        // Something appeared in the live tree meanwhile: it goes aside too.
                        Err(Errno::EXIST) => move_aside(live, &entry, &old)
                            .map_err(fail("move aside", live_path.clone()))?,
                        Err(e) => {
                            return Err(
                                fail("restore", live_path.join(OsStr::from_bytes(&entry)))(e),
                            );
                        }
                    }
                }
            }
            if let Some(tree) = tree {
                copy_dir_meta(tree, live, live_path.clone())?;
            }
            rustix::fs::fsync(live).map_err(fail("flush", live_path))?;
            write_state(&work, Step::Done, &subtree)
                .map_err(fail("write the state of", work_path.clone()))?;
        }
        drop(work);
        remove_tree(restores, name.as_bytes()).map_err(fail("remove", work_path))?;
        Ok(removed)
    }

    fn restores_path(&self) -> PathBuf {
        self.top.haul_path.join("restores")
    }

    fn restores_dir(&self, missing: Missing) -> Result<Option<OwnedFd>, StoreError> {
        let shown = || self.restores_path();
        open_child_dir(
            &self.top.haul,
            DIR,
            missing,
            &shown,
            &self.staging.root_path,
        )
    }
}

/// Renames `name` from `live` into `old`, under a fresh name if `old` has one already.
fn move_aside(live: &OwnedFd, name: &[u8], old: &OwnedFd) -> Result<(), Errno> {
    let mut target = name.to_vec();
    for n in 1u32.. {
        match rustix::fs::renameat_with(live, name, old, &*target, RenameFlags::NOREPLACE) {
            Ok(()) | Err(Errno::NOENT) => return Ok(()),
            Err(Errno::EXIST) => {
                target = name.to_vec();
                target.extend_from_slice(format!(".{n}").as_bytes());
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn write_state(work: &OwnedFd, step: Step, subtree: &RelPath) -> Result<(), Errno> {
    let text = format!(
        "step={}\nsubtree={}\n",
        step.as_str(),
        escape(subtree.as_bytes())
    );
    write_atomic(work, STATE, text.as_bytes())
}

fn parse_state(text: &str) -> (Option<Step>, Option<RelPath>) {
    let (mut step, mut subtree) = (None, None);
    for (k, v) in text.lines().filter_map(|l| l.split_once('=')) {
        match k {
            "step" => {
                step = match v {
                    "copying" => Some(Step::Copying),
                    "clearing" => Some(Step::Clearing),
                    "filling" => Some(Step::Filling),
                    "done" => Some(Step::Done),
                    _ => None,
                }
            }
            "subtree" => subtree = unescape(v).and_then(|b| RelPath::parse(&b).ok()),
            _ => {}
        }
    }
    (step, subtree)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &std::path::Path, data: &[u8]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }

    #[test]
    fn restore_puts_the_snapshot_back_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path();
        write(&top.join("app/layers/a.vhdx"), b"layer a");
        write(&top.join("app/keep.txt"), b"kept");
        write(&top.join("other/x"), b"not in the snapshot's tree");
        let root = Root::open(top).unwrap();
        let app = RelPath::parse(b"app").unwrap();
        let snap = root.create_snapshot(&app, "before").unwrap();
        // After the snapshot: a change (a new file renamed over the old name, as receivers
        // install; a hard-link snapshot shares the old inode), an addition, a removal.
        write(&top.join("app/layers/a.tmp"), b"changed");
        std::fs::rename(top.join("app/layers/a.tmp"), top.join("app/layers/a.vhdx")).unwrap();
        write(&top.join("app/layers/b.vhdx"), b"new layer");
        std::fs::remove_file(top.join("app/keep.txt")).unwrap();
        let report = root.restore_snapshot(&snap.id).unwrap();
        assert_eq!(report.removed, 1, "{report:?}");
        assert_eq!(
            std::fs::read(top.join("app/layers/a.vhdx")).unwrap(),
            b"layer a"
        );
        assert_eq!(std::fs::read(top.join("app/keep.txt")).unwrap(), b"kept");
        assert!(!top.join("app/layers/b.vhdx").exists());
        assert_eq!(
            std::fs::read(top.join("other/x")).unwrap(),
            b"not in the snapshot's tree"
        );
        // The snapshot itself is intact and no work directory is left.
        assert!(root.list_snapshots().unwrap()[0].complete);
        assert_eq!(
            std::fs::read_dir(top.join(".haul/restores"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn restore_of_the_whole_root_keeps_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path();
        write(&top.join("a"), b"a");
        let root = Root::open(top).unwrap();
        let snap = root.create_snapshot(&RelPath::root(), "all").unwrap();
        write(&top.join("b"), b"b");
        root.restore_snapshot(&snap.id).unwrap();
        assert!(top.join("a").exists() && !top.join("b").exists());
        assert!(top.join(".haul/snapshots").join(&snap.id).exists());
    }

    #[test]
    fn an_interrupted_restore_is_finished_by_the_next_call() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path();
        write(&top.join("app/one"), b"1");
        write(&top.join("app/two"), b"2");
        let root = Root::open(top).unwrap();
        let app = RelPath::parse(b"app").unwrap();
        let snap = root.create_snapshot(&app, "before").unwrap();
        write(&top.join("app/three"), b"3");
        // A restore that died in the middle of filling: the live tree was cleared and only
        // "one" was moved back.
        let work = top.join(".haul/restores/dead.1.0");
        write(&work.join("new/two"), b"2");
        write(&work.join("old/three"), b"3");
        write(&work.join("old/one"), b"1");
        std::fs::remove_file(top.join("app/two")).unwrap();
        std::fs::remove_file(top.join("app/three")).unwrap();
        write(&work.join("state"), b"step=filling\nsubtree=app\n");
        let root = Root::open(top).unwrap();
        assert_eq!(root.finish_restores().unwrap(), 1);
        assert_eq!(std::fs::read(top.join("app/two")).unwrap(), b"2");
        assert!(top.join("app/one").exists() && !top.join("app/three").exists());
        assert!(!work.exists());
        // A restore that died while copying never touched the live tree: discarded.
        write(&top.join(".haul/restores/dead.2.0/new/junk"), b"j");
        write(
            &top.join(".haul/restores/dead.2.0/state"),
            b"step=copying\nsubtree=app\n",
        );
        let report = root.restore_snapshot(&snap.id).unwrap();
        assert_eq!(report.finished_earlier, 0);
        assert!(!top.join("app/junk").exists());
        assert_eq!(std::fs::read(top.join("app/one")).unwrap(), b"1");
    }
}
