//! The receiver's side on disk.
//!
//! This crate owns everything a haul receiver does to its file system: confining every path
//! to the root, staging incoming files under `<root>/.haul/staging/`, sparse-aware positional
//! writes, atomic install by rename, metadata (mode, nanosecond mtime), symlink creation,
//! `syncfs` and free space; resumable partial files and their journal; rename-aside of
//! previous copies; a small throughput history. It is synchronous; the engine calls it from several blocking
//! threads at once, so [`Root`] is `Send + Sync` and every method takes `&self`.
//!
//! # Main types
//! - [`RelPath`]: a path from the wire, validated once (no `..`, no absolute path, no empty,
//!   `.` or NUL component, never under the reserved `.haul`).
//! - [`Root`]: an open root directory. Every operation walks from the root's fd one component
//!   at a time with `openat(O_DIRECTORY | O_NOFOLLOW)` and acts with an `*at()` call on the
//!   final name, so a symlink on the target can never lead a write outside the root. A small
//!   LRU of directory fds keeps that walk cheap for large trees.
//! - [`StagingFile`]: a file being received; written with [`StagingFile::write_at`], then
//!   [`Root::install_file`] renames it into place. Dropped unfinished, it is removed.
//! - [`Partial`]: a file being received that survives the death of either process, in
//!   `<top root>/.haul/partial/` with a journal of verified chunks, opened by
//!   [`Root::open_partial`] (which reports the chunks an earlier run verified) and installed
//!   like a staging file. [`SourceIdentity`] ties it to one version of the source file.
//! - [`ExistingFile`]: a file already on the target, opened by [`Root::open_existing`] so a
//!   re-run can reuse its unchanged chunks ([`Partial::copy_from`]).
//! - [`StoreError`]: what went wrong, with the path and the operation; [`StoreError::is_no_space`]
//!   tells a full disk (pause and resume later) from a failure.
//!
//! Device nodes are made only when the caller says the session's grant allows it
//! ([`Root::install_special`]); FIFOs and sockets always.
//!
//! # Example
//! ```
//! use haul_store::{RelPath, Root};
//! let dir = tempfile::tempdir().unwrap();
//! let root = Root::open(dir.path()).unwrap();
//! let rel = RelPath::parse(b"docs/hello.txt").unwrap();
//! root.create_dir_all(&rel.parent_and_name().unwrap().0).unwrap();
//! let file = root.create_staging(5).unwrap();
//! file.write_at(0, b"hello").unwrap();
//! let meta = haul_proto::Meta { mode: 0o644, mtime_sec: 1_700_000_000, mtime_nsec: 5 };
//! root.install_file(file, &rel, &meta.into()).unwrap();
//! assert_eq!(std::fs::read(dir.path().join("docs/hello.txt")).unwrap(), b"hello");
//! ```
//!
//! # Durability: the order of operations
//! A file may look like the source's (its final name with the source's size *and* mtime)
//! only once its data is durable, because the next run's quick check trusts size and mtime:
//! - multi-chunk files ([`Partial`]): chunk data is `fdatasync`ed before the journal records
//!   it, and the whole file again before [`Partial::install`] sets its metadata and renames it;
//! - single-chunk files ([`StagingFile`]): installed with [`Attrs::keep_write_time`] (their
//!   mtime is the time they were written), and given the source's by [`Root::settle_times`]
//!   only after the caller's [`Root::sync`] succeeded (the engine answers for them then);
//! - the caller flushes every file system it wrote to ([`Root::sync`], [`Root::sync_dir`] for
//!   a destination mounted below the root) before calling a run complete, and treats any
//!   flush error as a failure of every file that waited on it.
//!
//! # Must not depend on
//! Networking, tokio or any async runtime, `haul-manifest` or `haul-engine`. Only
//! `haul-proto` (for [`haul_proto::Meta`]) sits below it; `blake3` names partials and checks
//! journal records.
//!
//! # Layout
//! Modules are layered: each depends only on modules listed above it (calling into another
//! module's `impl Root` block counts). Helpers that know nothing of a root come first, then
//! `root` (confinement, the directory walk), then the state kept under the top root's `.haul`,
//! then the operations built on all of these.
//! - `path`: [`RelPath`] and [`PathError`].
//! - `clock`: Unix time now and UTC dates, for snapshot ids and lease expiries.
//! - `error`: [`StoreError`] and the errno mapping.
//! - `fsutil`: the retrying positional write, the mode bits and mtime of a
//!   [`haul_proto::Meta`], and opening (or making) one directory below another without
//!   following a symlink.
//! - `direct`: `O_DIRECT` writes for large partials.
//! - `fileio`: the sparse-aware write, range copy and read shared by staging and partials.
//! - `dircache`: the bounded cache of open directory fds.
//! - `attrs`: [`Attrs`], [`NotAppliedCounter`]: owner, mode, extended attributes and mtime.
//! - `staging`: [`StagingFile`] and the shared staging directory.
//! - `partial_dir`: the top root's `.haul/partial` directory and its journal locks.
//! - `root`: [`Root`] and [`FileKind`]: confinement and every directory-level operation.
//! - `journal`: the format of a partial's journal, and [`SourceIdentity`].
//! - `partial`: [`Partial`]; `partial_open`: [`Root::open_partial`], [`OpenedPartial`].
//! - `chunk_cache`: [`Root::store_chunk_hashes`], [`Root::cached_chunk_hashes`]: the chunk
//!   hashes of installed files in `<top root>/.haul/chunks/`, trusted only while the file's
//!   device, inode, size, mtime and ctime are unchanged, so a re-run can skip re-hashing.
//! - `history`: [`Root::record_throughput`], [`Root::throughput_history`].
//! - `source`: [`Root::open_source`], [`SourceHandle`]: a subtree opened for reading, confined,
//!   for a host that sends (a pull).
//! - `snapshot`: [`Root::create_snapshot`], [`Root::list_snapshots`], [`Root::delete_snapshot`],
//!   [`Root::snapshot_dir`], [`Root::has_snapshots`], [`SnapshotInfo`], [`SnapshotMethod`]:
//!   immutable copies of a subtree in `<top root>/.haul/snapshots/`, sharing data with the
//!   live tree by reflink or hard link (so no installed inode is ever changed in place).
//! - `lease`: [`Root::take_lease`], [`Root::renew_lease`], [`Root::release_lease`],
//!   [`Root::leases`], [`Root::check_lease`], [`Lease`], [`LeaseInfo`]: a job's claim on a
//!   destination subtree, one file per lease in `<top root>/.haul/leases/`.
//! - `registry`: [`Root::registry_get`], [`Root::registry_put`], [`Root::registry_list`]: a
//!   small text record per destination subtree in `<top root>/.haul/registry/` (what a
//!   workflow says the tree is for: the protection relationships into it and their owner).
//! - `existing`: [`ExistingFile`], [`Root::open_existing`], [`Root::set_file_meta`].
//! - `entries`: [`Root::stat_entry`], [`Root::install_special`], [`Root::install_hard_link`],
//!   [`Root::remove_tree`], [`EntryStat`], [`LinkOutcome`], [`Listing`]: entries other than
//!   regular files, and the tree operations `--delete` needs.
//! - `aside`: [`Root::rename_aside`], [`Root::list_aside`].
//! - `patch`: [`Root::patch_in_place`], [`Root::recover_patches`], [`PatchRange`]: a file
//!   whose new version changed a few chunks is overwritten in place under an undo log in
//!   `<top root>/.haul/undo/`, so a crash mid-way puts the old version back.
//! - `ops`: [`Root::statfs`], [`Root::stat_path`], [`Root::list_dir`], [`Root::tree_size`],
//!   [`Root::visit_tree`], [`Root::rename_path`], [`Root::remove_path`],
//!   [`Root::read_control`], [`Root::write_control`]: what a remote client may ask of a
//!   receiver, each walking afresh from the root's fd (never through the directory cache).

mod aside;
mod attrs;
mod chunk_cache;
mod clock;
mod dircache;
mod direct;
mod entries;
mod error;
mod existing;
mod fileio;
mod fsutil;
mod history;
mod journal;
mod lease;
mod ops;
mod partial;
mod partial_dir;
mod partial_open;
mod patch;
mod path;
mod registry;
mod restore;
mod root;
mod snapshot;
mod source;
mod staging;

pub use attrs::{Attrs, NotAppliedCounter};
pub use entries::{EntryStat, LinkOutcome, Listing};
pub use error::StoreError;
pub use existing::{ExistingFile, FileStat};
pub use journal::SourceIdentity;
pub use lease::{Lease, LeaseInfo};
pub use ops::{DirItem, PathStat, SpaceInfo, TreeSize, TreeVisitor};
pub use partial::Partial;
pub use partial_open::OpenedPartial;
pub use patch::PatchRange;
pub use path::{MAX_NAME, MAX_PATH, PathError, RESERVED, RelPath};
pub use registry::MAX_RECORD;
pub use restore::RestoreReport;
pub use root::{FileKind, Root};
pub use snapshot::{SnapshotInfo, SnapshotMethod};
pub use source::SourceHandle;
pub use staging::StagingFile;
