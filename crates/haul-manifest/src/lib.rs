//! The source side's view of a tree: what is there, and what its bytes hash to.
//!
//! This crate owns:
//! - [`scan()`](fn@scan) and [`scan_with`]: streaming a directory tree into [`ScanEntry`]
//!   values (kind, including FIFOs, sockets and device nodes; relative path as raw bytes;
//!   size, mode, nanosecond mtime, owner, group, link count, device number, symlink target,
//!   device and inode; with [`ScanOptions::xattrs`], the extended attributes and ACLs), depth
//!   first in name order, in memory bounded by depth times directory width. Problems with
//!   single paths come out as [`ScanError`] items and do not stop the walk. [`ScanOptions`]
//!   also applies a [`Filter`] and can keep the walk on the root's file system.
//! - [`filter`]: which entries a transfer includes ([`Filter`]): ordered include and exclude
//!   glob rules (the first match decides), rule files, `--files-from` lists, and the rules'
//!   wire form for the receiver ([`Filter::to_rules`], [`Filter::from_rules`]). Its module
//!   documentation is the reference for the pattern syntax.
//! - [`names`]: [`walk_names`], every source directory's names ([`DirNames`]) without a
//!   `stat` per file: what `--delete` compares the target against.
//! - [`hash`]: BLAKE3 chunk hashes ([`chunk_hash`], [`zero_chunk_hash`]) and the file hash
//!   assembled from them ([`file_hash`]), which equals what `b3sum` prints; [`hash_file`] hashes
//!   a file on disk the same way.
//! - [`sparse`]: the data extents of a sparse file ([`SparseMap`]), so holes are sent as zero
//!   chunks without being read.
//! - [`quick`]: the quick-check digest of a run of files ([`QuickDigest`]), which lets a
//!   re-run answer a whole directory of unchanged files with one message each way.
//! - [`zeros`]: the hashes of hole chunks, computed once per machine ([`zeros::persist_in`],
//!   [`zeros::save`]) instead of hashing gigabytes of zeros on every copy.
//!
//! Chunk geometry ([`haul_proto::ChunkLayout`]) and the entry types ([`haul_proto::Meta`],
//! [`haul_proto::EntryKind`]) come from `haul-proto`.
//!
//! # Example
//! ```
//! use haul_manifest::{chunk_hash, file_hash};
//! use haul_proto::ChunkLayout;
//! let data = vec![7u8; 200 << 10];
//! let layout = ChunkLayout::new(data.len() as u64, 64 << 10);
//! let chunks: Vec<_> = (0..layout.count())
//!     .map(|i| {
//!         let start = layout.offset(i) as usize;
//!         let len = layout.len(i).unwrap() as usize;
//!         chunk_hash(&layout, i, &data[start..start + len])
//!     })
//!     .collect();
//! assert_eq!(file_hash(&layout, &chunks), Some(*blake3::hash(&data).as_bytes()));
//! ```
//!
//! # Must not depend on
//! Networking, tokio or any async runtime, `haul-store`, `haul-engine`, `haul-cli`. It never
//! prints: it returns values and typed errors. (The one file it writes, the hole-hash cache,
//! is where its caller says.) It only reads the source: it never writes into a tree, so the
//! receiving side's writing, ownership and `--delete` removals are not here (the receiver
//! uses only [`Filter::from_rules`] and the hashes).

pub mod filter;
pub mod hash;
pub mod names;
pub mod quick;
pub mod scan;
pub mod sparse;
pub mod zeros;

pub use filter::{Filter, FilterError};
pub use hash::{chunk_hash, file_hash, hash_file, to_hex, zero_chunk_hash};
pub use names::{DirNames, NameWalker, walk_names};
pub use quick::QuickDigest;
pub use scan::{
    MAX_SHARED_DIRS, ScanEntry, ScanError, ScanOptions, Scanner, SourceDir, open_source, scan,
    scan_with,
};
pub use sparse::SparseMap;
