//! `--delete` on the receiving side: after every entry is in place, the sender lists each
//! source directory's names (`Prune`), and the receiver removes what its own directory holds
//! beyond them.
//!
//! Nothing is removed until the sender says every list has been sent (`PruneEnd`): a sender
//! that fails half-way through its listing (an unreadable source directory) sends no
//! `PruneEnd`, and nothing is deleted. Until then the extras are only collected, with the count
//! of entries each holds, so `--max-delete` can refuse the whole deletion before it starts and
//! a dry run can list it. Never removed: the root's `.haul` (never listed), renamed-aside
//! copies (the store's registry), and, unless `--delete-excluded`, what the sender's filter
//! rules exclude.

use std::collections::HashSet;
use std::sync::Mutex;

use bytes::Bytes;
use haul_manifest::Filter;
use haul_proto::{Deleted, Message, Prune};
use haul_store::{FileKind, RelPath};

use super::files::Files;
use super::outcome::Outcome;

/// The deletion the sender's lists call for, collected until `PruneEnd`.
#[derive(Default)]
pub(crate) struct Pruner {
    /// The filter rules the sender used (what they exclude is kept).
    pub(crate) filter: Option<Filter>,
    /// Remove excluded entries too.
    pub(crate) delete_excluded: bool,
    /// Most entries to remove; over it, nothing is.
    pub(crate) max_delete: u64,
    /// The directory whose names are arriving (a long list comes in several messages).
    current: Option<(Bytes, HashSet<Bytes>)>,
    /// Extras found so far: (path from the destination, path from the root).
    extras: Vec<(Vec<u8>, RelPath)>,
    /// Entries the extras hold in all.
    total: u64,
    /// The first problem met (a directory that could not be listed, ...): nothing is deleted.
    problem: Option<String>,
}

impl Pruner {
    /// A pruner for a session with these rules.
    pub(crate) fn new(filter: Option<Filter>, delete_excluded: bool, max_delete: u64) -> Pruner {
        Pruner {
            filter,
            delete_excluded,
            max_delete,
            ..Pruner::default()
        }
    }
}

/// Takes one `Prune` message: once a directory's list is complete, finds its extras.
pub(crate) fn prune(files: &Files, pruner: &Mutex<Pruner>, dest: &RelPath, msg: Prune) {
    let mut pruner = crate::lock(pruner);
    let (dir, names) = match pruner.current.take() {
        Some((dir, mut names)) if dir == msg.dir => {
            names.extend(msg.names);
            (dir, names)
        }
        _ => (msg.dir, msg.names.into_iter().collect()),
    };
    if !msg.last {
        pruner.current = Some((dir, names));
        return;
    }
    if pruner.problem.is_some() || pruner.total > pruner.max_delete {
        return;
    }
    let root = files.root();
    let Ok(dir_rel) = RelPath::parse(&dir) else {
        pruner.problem = Some(format!(
            "refused directory {:?} in a --delete list",
            String::from_utf8_lossy(&dir)
        ));
        return;
    };
    let full = dest.join(&dir_rel);
    let listed = match root.list_names(&full) {
        Ok(Some(listed)) => listed,
        // Nothing there (the directory failed to copy, or it is not a directory here).
        Ok(None) => return,
        Err(e) => {
            pruner.problem = Some(e.to_string());
            return;
        }
    };
    for (name, kind) in listed {
        if names.contains(name.as_slice()) {
            continue;
        }
        let mut rel = dir_rel.clone();
        if rel.push(&name).is_err() {
            continue;
        }
        let mut target = full.clone();
        if target.push(&name).is_err() || root.is_aside(&target) {
            continue;
        }
        let excluded = pruner
            .filter
            .as_ref()
            .is_some_and(|f| f.excludes(&rel.to_bytes(), kind == FileKind::Dir));
        if excluded && !pruner.delete_excluded {
            continue;
        }
        match root.count_tree(&target) {
            Ok(n) => pruner.total += n,
            Err(e) => {
                pruner.problem = Some(e.to_string());
                return;
            }
        }
        pruner.extras.push((rel.to_bytes(), target));
        if pruner.total > pruner.max_delete {
            // Refused at the end whatever else is found: stop collecting.
            pruner.extras.clear();
            return;
        }
    }
}

/// `PruneEnd`: removes the extras (a dry run only reports them) and reports what went, or
/// why nothing did.
pub(crate) fn prune_end(files: &Files, pruner: &Mutex<Pruner>, dry_run: bool) {
    let mut pruner = crate::lock(pruner);
    let extras = std::mem::take(&mut pruner.extras);
    let refused = if let Some(problem) = pruner.problem.take() {
        format!("--delete removed nothing: {problem}")
    } else if pruner.total > pruner.max_delete {
        format!(
            "--delete removed nothing: it would remove more than --max-delete {} entries (at \
             least {}); check that the source is complete (mounted, the right directory), then \
             run again with a larger --max-delete",
            pruner.max_delete, pruner.total
        )
    } else {
        String::new()
    };
    if !refused.is_empty() {
        return report(files, Vec::new(), true, 0, refused);
    }
    let mut removed = 0u64;
    let mut batch = Vec::new();
    let mut error = String::new();
    for (shown, target) in extras {
        if !dry_run {
            match files.root().remove_tree(&target) {
                Ok(n) => removed += n,
                Err(e) => {
                    error = format!("--delete stopped: {e}");
                    break;
                }
            }
        }
        batch.push(Bytes::from(shown));
        if batch.len() >= Deleted::MAX_PATHS as usize {
            report(files, std::mem::take(&mut batch), false, 0, String::new());
        }
    }
    let total = if dry_run { pruner.total } else { removed };
    report(files, batch, true, total, error);
}

fn report(files: &Files, paths: Vec<Bytes>, done: bool, total: u64, mut refused: String) {
    // Within the protocol's text limit, cut at a character boundary.
    if refused.len() > 4000 {
        let mut end = 4000;
        while !refused.is_char_boundary(end) {
            end -= 1;
        }
        refused.truncate(end);
    }
    files.send(Outcome::Plain(Message::Deleted(Deleted {
        paths,
        done,
        total,
        refused,
    })));
}
