//! What the receiver does with each announced entry: create directories and links at once,
//! skip files the target already has, and plan the rest (which chunks it holds, which it
//! needs).
//!
//! This is where a file starts: a planned file is handed to the file stages ([`Files::open`],
//! see `files` for the way from there to its final name) and everything else is resolved here.
//! Entry handling uses the file stages, never the other way round; both answer through
//! `outcome`.

use std::sync::{Arc, Mutex, RwLock};

use haul_manifest::QuickDigest;
use haul_proto::{ChunkLayout, Entry, EntryKind, Have, Message, Need, QuickCheck};
use haul_store::{
    Attrs, ExistingFile, FileKind, FileStat, LinkOutcome, NotAppliedCounter, RelPath, Root,
    SourceIdentity,
};

use super::files::{Files, MAX_CHUNKS_IN_FLIGHT, MAX_CHUNKS_PER_FILE, Plan, Reuse};
use super::outcome::{Outcome, failed, kept};
use super::prune::Pruner;
use super::target::Target;
use crate::owners::IdMapper;

/// Directories whose metadata is set once their contents are in place.
pub(crate) type DirList = Mutex<Vec<(RelPath, Attrs)>>;

/// How this session treats entries.
pub(crate) struct EntryRules {
    pub(crate) dest: RelPath,
    pub(crate) chunk_size: u32,
    /// Compare by hash even when size and mtime match.
    pub(crate) checksum: bool,
    /// Plan only: create nothing.
    pub(crate) dry_run: bool,
    /// Directories renamed aside this session: (where the copy goes, where the old one went).
    pub(crate) aside: Vec<(RelPath, RelPath)>,
    /// What of the entries' metadata this session applies.
    pub(crate) policy: Policy,
    /// The sender's owner and group numbers to ours.
    pub(crate) ids: RwLock<IdMapper>,
    /// What could not be applied, for the session's `Finished`.
    pub(crate) report: Arc<NotAppliedCounter>,
    /// `--delete`: the target's extras, found directory by directory.
    pub(crate) pruner: Mutex<Pruner>,
    /// The first failure for lack of space this session reported: a receiver that is also
    /// the client (a pull) ends with it, to pause (exit 3) rather than fail.
    pub(crate) no_space: Mutex<Option<String>>,
}

/// `attrs` for a file installed before it is durable: its time is set once it is.
fn unsettled(attrs: &Attrs) -> Attrs {
    Attrs {
        keep_write_time: true,
        ..attrs.clone()
    }
}

/// What of an entry's metadata a session applies: what the client asked for, within what the
/// grant allows.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Policy {
    /// The client sends owners and wants them kept.
    pub(crate) owners_requested: bool,
    /// ... and this session sets them (a privileged grant on a receiver running as root).
    pub(crate) owners: bool,
    /// The client sends extended attributes and ACLs.
    pub(crate) xattrs: bool,
    /// The grant allows setuid/setgid bits, device nodes and `security.*`/`trusted.*`.
    pub(crate) privileged: bool,
    /// Who this receiver creates files as: an owner that is ours anyway is not "not applied".
    pub(crate) me: (u32, u32),
}

impl Policy {
    /// The permission bits the quick check compares (setuid/setgid only where applied).
    pub(crate) fn mode_mask(&self) -> u32 {
        if self.privileged { 0o7777 } else { 0o1777 }
    }
}

impl EntryRules {
    /// Where an older copy of `rel` may be found: in the renamed-aside directory if `rel` lies
    /// under one, else at `rel` itself.
    fn old_copy_of(&self, rel: &RelPath) -> (RelPath, bool) {
        for (fresh, old) in &self.aside {
            let fresh_parts: Vec<&[u8]> = fresh.components().collect();
            let parts: Vec<&[u8]> = rel.components().collect();
            if parts.len() >= fresh_parts.len() && parts[..fresh_parts.len()] == fresh_parts[..] {
                let mut moved = old.clone();
                for part in &parts[fresh_parts.len()..] {
                    if moved.push(part).is_err() {
                        break;
                    }
                }
                return (moved, false);
            }
        }
        (rel.clone(), true)
    }

    /// The metadata to install `entry` with: its mode and mtime, and, as the policy allows,
    /// its owner (mapped to our numbers) and its attributes (ACL entries mapped likewise).
    /// An owner that cannot be applied is counted here.
    pub(crate) fn attrs_for(&self, entry: &Entry) -> Attrs {
        let ids = self.ids.read().unwrap_or_else(|p| p.into_inner());
        let mut owner = None;
        if self.policy.owners_requested {
            let local = (ids.uid(entry.uid), ids.gid(entry.gid));
            if self.policy.owners {
                owner = Some(local);
            } else if local != self.policy.me {
                self.report.add_owners(1);
            }
        }
        Attrs {
            meta: entry.meta,
            owner,
            special_bits: self.policy.privileged,
            xattrs: self
                .policy
                .xattrs
                .then(|| entry.xattrs.iter().map(|x| ids.map_xattr(x)).collect()),
            privileged_xattrs: self.policy.privileged,
            keep_write_time: false,
            report: Some(self.report.clone()),
        }
    }

    /// The owner a quick-check digest covers for a target file owned by (`uid`, `gid`): the
    /// sender's numbers, when this session applies owners.
    fn digest_owner(&self, uid: u32, gid: u32) -> Option<(u32, u32)> {
        (self.policy.owners_requested && self.policy.owners).then(|| {
            self.ids
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .back(uid, gid)
        })
    }
}

/// An entry that needed no data: installed with nothing written.
fn done(id: u64, hash: [u8; 32], unchanged: bool) -> Outcome {
    kept(id, hash, unchanged, false)
}

/// Handles one entry. Directories are recorded in `dirs` so their metadata can be set last.
pub(crate) fn handle_entry(files: &Files, rules: &EntryRules, dirs: &DirList, entry: Entry) {
    let id = entry.id;
    let rel = match RelPath::parse(&entry.path) {
        Ok(rel) => rules.dest.join(&rel),
        Err(e) => {
            let message = format!(
                "refused path {:?}: {e}",
                String::from_utf8_lossy(&entry.path)
            );
            return files.send(failed(id, message, false));
        }
    };
    let root = files.root();
    if rules.dry_run {
        let unchanged = entry.kind == EntryKind::File
            && entry.size > 0
            && !rules.checksum
            && quick_match(root.stat_existing(&rel).ok().flatten().as_ref(), &entry);
        if entry.kind == EntryKind::File && entry.size > 0 && !unchanged {
            return plan_file(files, rules, entry, rel, false);
        }
        return files.send(done(id, [0; 32], unchanged));
    }
    // The destination itself may need its parents (a single file pushed to a/b/c).
    if entry.path.is_empty()
        && let Some((parent, _)) = rel.parent_and_name()
        && let Err(e) = root.create_dir_all(&parent)
    {
        return files.send(failed(id, e.to_string(), e.is_no_space()));
    }
    let result = match entry.kind {
        EntryKind::Dir => root.create_dir_all(&rel).map(|()| {
            crate::lock(dirs).push((rel.clone(), rules.attrs_for(&entry)));
            files.send(done(id, [0; 32], false));
        }),
        EntryKind::Symlink => {
            let attrs = rules.attrs_for(&entry);
            match root.stat_entry(&rel) {
                // The quick check for links: same length and mtime (and owner) is unchanged.
                Ok(Some(st))
                    if st.kind == FileKind::Symlink
                        && st.size == entry.link_target.len() as u64
                        && same_time(st.mtime_sec, st.mtime_nsec, &entry)
                        && attrs.owner.is_none_or(|o| o == (st.uid, st.gid)) =>
                {
                    files.send(done(id, [0; 32], true));
                    Ok(())
                }
                _ => root
                    .install_symlink(&rel, &entry.link_target, &attrs)
                    .map(|()| files.send(done(id, [0; 32], false))),
            }
        }
        EntryKind::HardLink => hard_link(files, rules, &entry, &rel),
        EntryKind::Fifo | EntryKind::Socket | EntryKind::CharDev | EntryKind::BlockDev => {
            special(files, rules, &entry, &rel)
        }
        EntryKind::File if entry.size == 0 => {
            // An empty file that is already there with its mtime (and the quick check is on)
            // is left alone like any other unchanged file, not created again on every run.
            let existing = if rules.checksum {
                None
            } else {
                root.stat_existing(&rel).ok().flatten()
            };
            let attrs = rules.attrs_for(&entry);
            let empty = *blake3::hash(b"").as_bytes();
            match existing {
                Some(e) if quick_match(Some(&e), &entry) => {
                    keep_unchanged(root, rules, &rel, &e, &attrs)
                        .map(|fixed| files.send(kept(id, empty, true, fixed)))
                }
                // Nothing there: made in place, as for any fresh file (unless it carries
                // attributes, which must be on it before it appears under its name).
                // Answered, and given its time, once its name is durable (see `files::flush`).
                None if !rules.checksum && !has_xattrs(&attrs) => root
                    .create_fresh_for(&rel, 0, entry.meta.mode)
                    .and_then(|file| root.install_file(file, &rel, &unsettled(&attrs)))
                    .map(|()| files.unsettled(rel, Some(attrs.meta), id, done(id, empty, false))),
                _ => root
                    .create_staging(0)
                    .and_then(|staging| root.install_file(staging, &rel, &unsettled(&attrs)))
                    .map(|()| files.unsettled(rel, Some(attrs.meta), id, done(id, empty, false))),
            }
        }
        EntryKind::File => {
            // Nothing at the destination (what a fresh copy finds for every file): there is no
            // old copy there to look for again.
            let mut absent = false;
            if !rules.checksum {
                match root.stat_existing(&rel) {
                    Ok(Some(existing)) if quick_match(Some(&existing), &entry) => {
                        let attrs = rules.attrs_for(&entry);
                        return match keep_unchanged(root, rules, &rel, &existing, &attrs) {
                            Ok(fixed) => files.send(kept(id, [0; 32], true, fixed)),
                            Err(e) => files.send(failed(id, e.to_string(), e.is_no_space())),
                        };
                    }
                    Ok(None) => absent = true,
                    _ => {}
                }
            }
            plan_file(files, rules, entry, rel, absent);
            Ok(())
        }
    };
    if let Err(e) = result {
        files.send(failed(id, e.to_string(), e.is_no_space()));
    }
}

fn has_xattrs(attrs: &Attrs) -> bool {
    attrs.xattrs.as_ref().is_some_and(|x| !x.is_empty())
}

fn same_time(sec: i64, nsec: u32, entry: &Entry) -> bool {
    sec == entry.meta.mtime_sec && nsec == entry.meta.mtime_nsec
}

/// Another name for a file installed earlier in this session (or by an earlier run): linked,
/// or left alone when it already is that file.
fn hard_link(
    files: &Files,
    rules: &EntryRules,
    entry: &Entry,
    rel: &RelPath,
) -> Result<(), haul_store::StoreError> {
    let target = match RelPath::parse(&entry.link_target) {
        Ok(target) if !target.is_root() => rules.dest.join(&target),
        _ => {
            let message = format!(
                "{}: refused hard link target {:?}",
                files.root().display_path(rel).display(),
                String::from_utf8_lossy(&entry.link_target)
            );
            files.send(failed(entry.id, message, false));
            return Ok(());
        }
    };
    let outcome = files.root().install_hard_link(rel, &target)?;
    files.send(done(
        entry.id,
        [0; 32],
        matches!(outcome, LinkOutcome::Unchanged),
    ));
    Ok(())
}

/// A FIFO, socket or device node: made, or left alone when an identical one is there. A
/// device the grant does not allow is counted as not applied, and the entry still resolves
/// as done: the run goes on and says so in its summary.
fn special(
    files: &Files,
    rules: &EntryRules,
    entry: &Entry,
    rel: &RelPath,
) -> Result<(), haul_store::StoreError> {
    let root = files.root();
    let attrs = rules.attrs_for(entry);
    let want = match entry.kind {
        EntryKind::Fifo => FileKind::Fifo,
        EntryKind::Socket => FileKind::Socket,
        EntryKind::CharDev => FileKind::CharDev,
        _ => FileKind::BlockDev,
    };
    if let Ok(Some(st)) = root.stat_entry(rel)
        && st.kind == want
        && (!matches!(want, FileKind::CharDev | FileKind::BlockDev) || st.rdev == entry.rdev)
        && same_time(st.mtime_sec, st.mtime_nsec, entry)
        && st.mode & 0o7777 == entry.meta.mode & rules.policy.mode_mask()
        && attrs.owner.is_none_or(|o| o == (st.uid, st.gid))
    {
        files.send(done(entry.id, [0; 32], true));
        return Ok(());
    }
    root.install_special(rel, entry.kind, entry.rdev, rules.policy.privileged, &attrs)?;
    files.send(done(entry.id, [0; 32], false));
    Ok(())
}

/// Answers a quick check: does the target hold this run of files exactly as the sender has
/// them (the per-file quick check, for all of them at once)? One listing of the directory and
/// a `statat` per file; nothing is changed. Whatever stands in the way (the directory is
/// missing, a name is a symlink, a file differs, the directory cannot be read) makes the
/// answer "not unchanged", and the sender then announces the files one by one, so every
/// problem is found and reported per file, as without the check.
pub(crate) fn quick_check(files: &Files, rules: &EntryRules, check: &QuickCheck) {
    // Under --checksum nothing is taken on size and mtime; a dry run and renamed-aside
    // directories go file by file too. A sender does not ask then; a peer that does is told no.
    let unchanged = !rules.checksum
        && !rules.dry_run
        && rules.aside.is_empty()
        && run_unchanged(files.root(), rules, check);
    files.send(Outcome::Checked {
        id: check.id,
        files: check.files,
        unchanged,
    });
}

fn run_unchanged(root: &Root, rules: &EntryRules, check: &QuickCheck) -> bool {
    let Ok(dir) = RelPath::parse(&check.dir) else {
        return false;
    };
    let dir = rules.dest.join(&dir);
    let mut digest = QuickDigest::default();
    let mut other = false;
    let listed = root.stat_range(&dir, &check.first, &check.last, |name, stat| match stat {
        Some(st) => digest.add_owned(
            name,
            st.size,
            st.mtime_sec,
            st.mtime_nsec,
            st.mode,
            rules.digest_owner(st.uid, st.gid),
        ),
        None => other = true,
    });
    matches!(listed, Ok(true))
        && !other
        && digest.files() == check.files
        && digest.digest() == check.digest
}

/// Opens the partial for `rel`, waiting a while if another session still holds it: a session
/// superseded by this one lets go as soon as it notices it was closed.
fn open_partial_waiting(
    root: &Root,
    rel: &RelPath,
    identity: SourceIdentity,
) -> Result<haul_store::OpenedPartial, haul_store::StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        match root.open_partial(rel, identity) {
            Err(haul_store::StoreError::Busy { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

/// A file that passed the quick check (rsync's: same size and mtime) stays as it is; only its
/// metadata is fixed where it differs: mode, owner, and the attributes the source has.
/// Returns whether anything was fixed (a metadata-only change: no data is sent).
fn keep_unchanged(
    root: &Root,
    rules: &EntryRules,
    rel: &RelPath,
    existing: &FileStat,
    attrs: &Attrs,
) -> Result<bool, haul_store::StoreError> {
    let mode_differs = existing.mode & 0o7777 != attrs.meta.mode & rules.policy.mode_mask();
    let owner_differs = attrs
        .owner
        .is_some_and(|o| o != (existing.uid, existing.gid));
    // Attributes are compared only where the source has some: reading every unchanged file's
    // list would double the cost of a re-run of a tree that has none.
    let xattrs_differ = match &attrs.xattrs {
        Some(want) if !want.is_empty() => root.read_xattrs(rel)? != *want,
        _ => false,
    };
    if mode_differs || owner_differs || xattrs_differ {
        root.set_file_meta(rel, attrs)?;
        return Ok(true);
    }
    Ok(false)
}

fn quick_match(existing: Option<&FileStat>, entry: &Entry) -> bool {
    existing.is_some_and(|e| {
        e.size == entry.size
            && e.mtime_sec == entry.meta.mtime_sec
            && e.mtime_nsec == entry.meta.mtime_nsec
    })
}

/// Works out which chunks of a file the receiver holds and asks for the rest.
/// `absent`: the destination was just found to hold nothing at `rel`.
fn plan_file(files: &Files, rules: &EntryRules, entry: Entry, rel: RelPath, absent: bool) {
    let id = entry.id;
    let root = files.root();
    let layout = ChunkLayout::new(entry.size, rules.chunk_size);
    // The receiver keeps a hash per chunk of every file in flight: a size a peer declares must
    // not make it allocate without bound.
    if layout.count() > MAX_CHUNKS_PER_FILE {
        let message = format!(
            "{} is {} bytes: {} chunks of {} bytes, more than the {MAX_CHUNKS_PER_FILE} chunks a \
             file may have; copy it with a larger --chunk-size",
            root.display_path(&rel).display(),
            entry.size,
            layout.count(),
            rules.chunk_size
        );
        return files.send(failed(id, message, false));
    }
    // A journaled partial for multi-chunk files, so a kill loses only unjournaled chunks.
    // Its chunks count as verified for the sender only when journaled under this very version
    // of the source (the stamp); otherwise the sender compares them before reuse.
    let mut trusted = false;
    let (target, verified) = if layout.count() > 1 && !rules.dry_run {
        let identity = SourceIdentity {
            size: entry.size,
            mtime_sec: entry.meta.mtime_sec,
            mtime_nsec: entry.meta.mtime_nsec,
            chunk_size: rules.chunk_size,
            stamp: entry.source_stamp,
        };
        match open_partial_waiting(root, &rel, identity) {
            Ok(opened) => {
                trusted = opened.stamp_matches;
                (Some(Target::Partial(opened.partial)), opened.verified)
            }
            Err(e) => return files.send(failed(id, e.to_string(), e.is_no_space())),
        }
    } else {
        (None, Vec::new())
    };
    let (old, in_place) = rules.old_copy_of(&rel);
    let reuse = if absent && in_place {
        None
    } else {
        match root.open_existing(&old) {
            Ok(Some(existing)) => Some(hash_old_copy(
                root, &old, existing, &layout, &verified, in_place,
            )),
            _ => None,
        }
    };
    if !files.reserve_chunks(layout.count()) {
        let message = format!(
            "{}: too many chunks in flight in this session (at most {MAX_CHUNKS_IN_FLIGHT}); \
             run the copy again to finish it",
            root.display_path(&rel).display()
        );
        return files.send(failed(id, message, false));
    }
    let mut journaled = vec![false; layout.count() as usize];
    for (index, _) in verified.iter().filter(|_| trusted) {
        if let Some(j) = journaled.get_mut(*index as usize) {
            *j = true;
        }
    }
    let attrs = rules.attrs_for(&entry);
    let held = files.open(Plan {
        id,
        rel,
        layout,
        fresh: absent && in_place && reuse.is_none() && !has_xattrs(&attrs),
        attrs,
        dry_run: rules.dry_run,
        target,
        replaceable: !trusted && !verified.is_empty(),
        verified,
        reuse,
    });
    send_have_and_need(files, id, &held, &journaled);
}

/// Hashes the chunks of an old copy that the file may reuse (those not already journaled),
/// or takes them from the chunk-hash cache when it still describes exactly this file (same
/// inode, size, mtime and ctime): re-hashing an unchanged 50 GiB disk image on every run is
/// what the cache is for.
fn hash_old_copy(
    root: &Root,
    old: &RelPath,
    existing: ExistingFile,
    layout: &ChunkLayout,
    verified: &[(u64, [u8; 32])],
    in_place: bool,
) -> Reuse {
    use std::os::unix::fs::FileExt;
    let in_place = in_place && existing.size == layout.size();
    if existing.size == layout.size()
        && let Some(cached) = root.cached_chunk_hashes(old, &existing.file, layout.chunk_size())
    {
        return Reuse {
            file: existing.file,
            hashes: cached.into_iter().map(Some).collect(),
            in_place,
            cached: Some(old.clone()),
        };
    }
    let count = layout.count() as usize;
    let mut hashes = vec![None; count];
    let mut skip = vec![false; count];
    for (index, _) in verified {
        if let Some(s) = skip.get_mut(*index as usize) {
            *s = true;
        }
    }
    let mut buf = Vec::new();
    for (index, slot) in hashes.iter_mut().enumerate() {
        let index = index as u64;
        let Some(len) = layout.len(index) else { break };
        let offset = layout.offset(index);
        if skip[index as usize] || offset + u64::from(len) > existing.size {
            continue;
        }
        buf.resize(len as usize, 0);
        if existing.file.read_exact_at(&mut buf, offset).is_ok() {
            *slot = Some(haul_manifest::chunk_hash(layout, index, &buf));
        }
    }
    Reuse {
        file: existing.file,
        hashes,
        in_place,
        cached: None,
    }
}

/// Tells the sender what the receiver holds (`Have`) and then what it needs (`Need`).
/// Chunks from this source version's journal and chunks of an old copy go in separate `Have`
/// messages, since the sender may trust only the first kind without reading them again.
fn send_have_and_need(files: &Files, id: u64, held: &[Option<[u8; 32]>], journaled: &[bool]) {
    for kind in [true, false] {
        for (n, window) in held.chunks(Have::MAX_HASHES).enumerate() {
            let base = n * Have::MAX_HASHES;
            let of_kind = |i: usize| journaled.get(base + i).copied().unwrap_or(false) == kind;
            if !window
                .iter()
                .enumerate()
                .any(|(i, h)| h.is_some() && of_kind(i))
            {
                continue;
            }
            let hashes = window
                .iter()
                .enumerate()
                .map(|(i, h)| h.filter(|_| of_kind(i)).unwrap_or([0; 32]))
                .collect();
            files.send(Outcome::Plain(Message::Have(Have {
                id,
                start: base as u64,
                journaled: kind,
                hashes,
            })));
        }
    }
    let mut ranges = Vec::new();
    let mut index = 0u64;
    while (index as usize) < held.len() {
        if held[index as usize].is_some() {
            index += 1;
            continue;
        }
        let start = index;
        while (index as usize) < held.len() && held[index as usize].is_none() {
            index += 1;
        }
        ranges.push((start, index - start));
    }
    files.send(Outcome::Plain(Message::Need(Need { id, ranges })));
}

/// Renames each named directory under the destination aside (`DIR` to the first free
/// `DIR.N`) so it can be copied anew; in a dry run, only works out the names.
pub(super) fn rename_aside(
    root: &Root,
    dest: &RelPath,
    dirs: &[bytes::Bytes],
    dry_run: bool,
) -> Result<Vec<(RelPath, RelPath)>, String> {
    let mut renamed = Vec::new();
    for dir in dirs {
        let rel = RelPath::parse(dir).map_err(|e| {
            format!(
                "--rename-aside {:?} refused: {e}",
                String::from_utf8_lossy(dir)
            )
        })?;
        if rel.is_root() {
            return Err("--rename-aside needs directories under the destination, not the destination itself".into());
        }
        let rel = dest.join(&rel);
        let moved = if dry_run {
            match root.kind_of(&rel) {
                Ok(Some(_)) => {
                    let taken = root.list_aside(&rel).map_err(|e| e.to_string())?.len();
                    let (parent, name) = rel.parent_and_name().ok_or("no name")?;
                    let mut next = parent;
                    let mut name = name.to_vec();
                    name.extend_from_slice(format!(".{}", taken + 1).as_bytes());
                    next.push(&name).map_err(|e| e.to_string())?;
                    Some(next)
                }
                Ok(None) => None,
                Err(e) => return Err(e.to_string()),
            }
        } else {
            root.rename_aside(&rel).map_err(|e| e.to_string())?
        };
        if let Some(moved) = moved {
            renamed.push((rel, moved));
        }
    }
    Ok(renamed)
}
