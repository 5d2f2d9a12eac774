//! Protection relationships and their migration between management servers (Protection
//! Manager, workflow 3 of `WORKFLOWS.md`).
//!
//! A management server ([`Server`]) is a state directory: haul-state's SQLite database
//! holding its id and [`Settings`], the [`Host`]s it reaches (`haul serve` receivers, with
//! the fingerprint to pin and a token file), protection [`Policy`]s (schedule, retention
//! period and count, throttle, scripts), [`Dataset`]s, the [`Relationship`]s it owns and
//! the [`Backup`]s it made; and an audit log. Two servers on one machine are two directories.
//!
//! A relationship replicates a local source tree to `HOST:PATH`, as a mirror or a backup.
//! Relationships are recorded on the destination host too, one [`VolumeRecord`] per
//! destination volume (the first component of the path), through the engine's registry
//! operations: so any server that reaches the host discovers them, and shows those it does
//! not own as external ([`discover`]). Relationships into one volume fan in: they are
//! relinquished and imported together.
//!
//! - [`update`]: an incremental push of the source, then a snapshot of the destination on
//!   the host (the backup), labelled with the server and the dataset that made it.
//! - [`tick`]: every due update and every expiry at a given time (the server clock is a
//!   parameter everywhere, so a test or an operator can set it); a host that is down is
//!   reported and the others go on.
//! - [`relinquish`] on the old server and [`import`] on the new move ownership without a
//!   re-baseline: the next update sends only what changed.
//! - [`expiry_plan`]: a dataset expires only backups it made, past the retention period,
//!   always keeping the newest `retention_count`.
//! - [`restore`]: a pull from a backup, verified by BLAKE3.
//! - [`preflight`], [`policy_differences`], [`settings_differences`], [`diagnose`]: the
//!   checks before a migration; [`dataset_statuses`]: ok, the "no backup history exists"
//!   warning, "can be deleted".
//!
//! Every function returns a serde-serializable value; long steps report
//! [`haul_engine::job::JobEvent`]s to a callback ([`Events`]).
//!
//! # Layout
//! - `model`: the records. `server`: [`Server`] (storage, audit log). `error`:
//!   [`ProtectError`].
//! - `hosts`: reaching a host, [`diagnose`]. `registry`: the hosts' volume records.
//! - `relationships`: create, discover, relinquish, import.
//! - `backups`: update, expiry, tick, restore. `checks`: status, diffs, preflight.
//!
//! # Must not depend on
//! clap, indicatif or anything that prints: the CLI (`haul-cli`'s `protect_cmd`) renders.
//! It moves data only through `haul_engine::job::Job` and asks hosts things only through
//! `haul_engine::remote::Remote`; it never opens a stream or writes a chunk itself.

mod backups;
mod checks;
mod error;
mod hosts;
mod model;
mod registry;
mod relationships;
mod server;

pub use backups::{
    BackupInfo, Events, Expired, RestoreReport, TickReport, TickUpdate, UpdateReport, expiry_plan,
    is_due, list_backups, restore, tick, update,
};
pub use checks::{
    DatasetStatus, Difference, dataset_statuses, policy_differences, preflight,
    settings_differences,
};
pub use error::ProtectError;
pub use hosts::{Check, DEFAULT_CONNECT_TIMEOUT, diagnose, host_key};
pub use model::{
    Backup, Dataset, Host, HostRelationship, Kind, Owner, Policy, Relationship, ServerInfo,
    Settings, VolumeRecord, volume_of,
};
pub use relationships::{
    Created, Discovered, Discovery, Moved, Ownership, Unreachable, create, discover, import,
    parse_name, relinquish,
};
pub use server::{AUDIT, AuditLine, Server};
