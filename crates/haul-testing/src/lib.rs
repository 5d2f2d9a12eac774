//! Shared test helpers for haul.
//!
//! - [`cmd`]: run the real `haul` binary ([`Haul`]), start a real `haul serve` ([`Server`]) and
//!   read its `--json` summary.
//! - [`tree`]: build source trees with odd names, modes, mtimes, symlinks and sparse files
//!   ([`TreeBuilder`]), and compare two trees entry by entry ([`assert_same_tree`]).
//! - [`disk`]: a tmpfs to fill up for real and grow again ([`Tmpfs`]).
//! - [`xfs`]: an XFS file system with reflinks on a loop device ([`XfsLoop`]).
//! - [`powercut`]: a FUSE file system that cuts the power ([`PowerCut`]): it passes operations
//!   through to a backing directory and, on command, rolls it back to what was synced.
//! - [`sim`]: an in-memory [`Link`](haul_engine::Link) pair whose splits, delays, kill point
//!   and corruption are chosen by a seed, so protocol and failure cases replay exactly.
//! - [`linkemu`]: a user-space WAN link ([`LinkEmu`]) between a UDP client and a real
//!   `haul serve`: rate, drop-tail queue, delay, jitter, loss and MTU per direction
//!   ([`LinkSpec`]), since the test kernel has no netem. The `haul-linkemu` binary wraps it.
//!
//! # Must not depend on
//! Nothing in the product depends on this crate; it is a dev-dependency only.

pub mod cmd;
pub mod disk;
pub mod fidelity;
pub mod hostile;
pub mod linkemu;
pub mod powercut;
pub mod sim;
pub mod tree;
pub mod xfs;

pub use cmd::{Haul, Server, assert_success, summary_of};
pub use disk::Tmpfs;
pub use linkemu::{DirStats, LinkEmu, LinkSpec, LinkStats};
pub use powercut::PowerCut;
pub use tree::{TreeBuilder, assert_same_tree, kill_when, partial_bytes, sparse_blocks};
pub use xfs::XfsLoop;
