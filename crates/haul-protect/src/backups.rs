//! Updates, backups, expiry, restores and the scheduler tick.
//!
//! An update pushes the relationship's source to its destination incrementally (a mirror
//! with `--delete`, a backup without), throttled by the policy, then takes a snapshot of the
//! destination on the host: the backup, labelled with the server and the dataset that made
//! it, and recorded by this server, which alone expires it.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use haul_engine::job::{Endpoint, Job, JobEvent};
use haul_engine::{Summary, TransferOptions};
use serde::Serialize;

use crate::error::ProtectError;
use crate::hosts;
use crate::model::{Backup, Kind, Policy, Relationship};
use crate::registry;
use crate::server::Server;

/// What a step of the workflow reports while it runs.
pub type Events = Arc<dyn Fn(JobEvent) + Send + Sync>;

/// What `update` did.
#[derive(Clone, Debug, Serialize)]
pub struct UpdateReport {
    /// The relationship.
    pub relationship: String,
    /// The dataset that owns it.
    pub dataset: String,
    /// The throttle applied (bytes per second).
    pub throttle: Option<u64>,
    /// The push's summary (`bytes_sent`: what crossed the network).
    pub summary: Summary,
    /// The backup taken after it.
    pub backup: Backup,
}

/// `update REL`: pushes the source, then takes the backup, at `now` (the server clock).
pub async fn update(
    server: &Server,
    name: &str,
    now: i64,
    timeout: Duration,
    events: Events,
) -> Result<UpdateReport, ProtectError> {
    let Some(mut rel) = server.find_relationship(name)? else {
        return Err(ProtectError::Refused(format!(
            "this server owns no relationship {name}; an external relationship is updated \
             by the server that owns it (`haul protect discover`), or imported first"
        )));
    };
    let dataset = server.dataset(&rel.dataset)?;
    let policy = server.policy(&dataset.policy)?;
    let host = server.host(&rel.host)?;
    // One update of a source at a time on this machine (a tick from a timer and an
    // on-demand update, or two servers' ticks during a migration).
    let _lock = haul_state::SourceLock::acquire(
        server.dir(),
        &rel.source,
        &format!("haul protect update {name}"),
    )?;
    run_script(policy.pre_script.as_deref(), "pre", &rel)?;
    let (mut remote, target) = hosts::open(&host, timeout).await?;
    // The host's registry is the truth about ownership: never update what another server
    // has taken over.
    let record = registry::read(&mut remote, rel.volume()).await?;
    let entry = record.relationships.iter().find(|r| r.path == rel.path);
    match entry.and_then(|r| r.owner.as_ref()) {
        Some(o) if o.server == server.id() && o.dataset == rel.dataset => {}
        other => {
            remote.close().await;
            let who = other.map_or("nobody".to_string(), |o| o.to_string());
            return Err(ProtectError::Refused(format!(
                "the host records {name} as owned by {who}, not by dataset {} on this server; \
                 not updating it (`haul protect discover` shows the state)",
                rel.dataset
            )));
        }
    }
    let options = TransferOptions {
        delete: rel.kind == Kind::Mirror,
        bwlimit: policy.throttle,
        holder: Some(format!("haul-protect {} {name}", server.id())),
        ..TransferOptions::default()
    };
    let job = Job::new(
        Endpoint::Local(rel.source.clone()),
        Endpoint::Remote(hosts::end(&target, &rel.path)),
    )
    .options(options);
    let sink = events.clone();
    let summary = job
        .run(move |e| sink(e))
        .await
        .map_err(ProtectError::engine(format!("update of {name}")))?;
    let label = format!(
        "haul-protect backup server={} dataset={} relationship={name} at={now}",
        server.id(),
        rel.dataset
    );
    let snap = remote
        .snapshot_create(&rel.path, &label)
        .await
        .map_err(ProtectError::engine(format!("backup of {name}")))?;
    remote.close().await;
    let backup = Backup {
        id: snap.id,
        dataset: rel.dataset.clone(),
        relationship: name.to_string(),
        host: rel.host.clone(),
        path: rel.path.clone(),
        created_at: now,
    };
    server.put_backup(&backup)?;
    rel.last_update = Some(now);
    server.put_relationship(&rel)?;
    server.audit(&format!(
        "updated {name}: {} bytes sent of {}; backup {} made by dataset {}",
        summary.bytes_sent, summary.bytes_total, backup.id, rel.dataset
    ))?;
    run_script(policy.post_script.as_deref(), "post", &rel)?;
    Ok(UpdateReport {
        relationship: name.to_string(),
        dataset: rel.dataset.clone(),
        throttle: policy.throttle,
        summary,
        backup,
    })
}

fn run_script(script: Option<&Path>, phase: &str, rel: &Relationship) -> Result<(), ProtectError> {
    let Some(script) = script else { return Ok(()) };
    let status = std::process::Command::new(script)
        .env("HAUL_PROTECT_PHASE", phase)
        .env("HAUL_PROTECT_RELATIONSHIP", &rel.name)
        .env("HAUL_PROTECT_DATASET", &rel.dataset)
        .env("HAUL_PROTECT_SOURCE", &rel.source)
        .status()
        .map_err(|e| {
            ProtectError::Local(format!(
                "cannot run the {phase}-script {}: {e}; copy it to this server and make it \
                 executable",
                script.display()
            ))
        })?;
    if !status.success() {
        return Err(ProtectError::Local(format!(
            "the {phase}-script {} failed ({status}) for {}",
            script.display(),
            rel.name
        )));
    }
    Ok(())
}

/// Whether a relationship's update is due at `now`: never updated, or its policy's next
/// scheduled time after the last update has come.
pub fn is_due(rel: &Relationship, policy: &Policy, now: i64) -> bool {
    rel.last_update
        .is_none_or(|last| policy.next_after(last) <= now)
}

/// A backup that expired (or could not be).
#[derive(Clone, Debug, Serialize)]
pub struct Expired {
    /// The backup.
    pub backup: Backup,
    /// `None` when deleted; else why it stays for now.
    pub error: Option<String>,
}

/// The backups the datasets' policies expire at `now`: for each relationship a dataset made
/// backups of, its own backups past the retention period, except the newest
/// `retention_count`. Another dataset's backups (or another server's) are never in it.
pub fn expiry_plan(server: &Server, now: i64) -> Result<Vec<Backup>, ProtectError> {
    let mut out = Vec::new();
    let backups = server.backups()?;
    for dataset in server.datasets()? {
        let policy = server.policy(&dataset.policy)?;
        let rels: BTreeSet<&str> = backups
            .iter()
            .filter(|b| b.dataset == dataset.name)
            .map(|b| b.relationship.as_str())
            .collect();
        for rel in rels {
            let mut own: Vec<&Backup> = backups
                .iter()
                .filter(|b| b.dataset == dataset.name && b.relationship == rel)
                .collect();
            own.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
            for b in own.into_iter().skip(policy.retention_count as usize) {
                if b.created_at
                    .saturating_add(policy.retention_period_s as i64)
                    <= now
                {
                    out.push(b.clone());
                }
            }
        }
    }
    Ok(out)
}

/// Deletes the backups of [`expiry_plan`] from their hosts, skipping hosts in `down`.
pub(crate) async fn expire(
    server: &Server,
    now: i64,
    timeout: Duration,
    down: &mut BTreeSet<String>,
) -> Result<Vec<Expired>, ProtectError> {
    let mut out = Vec::new();
    for backup in expiry_plan(server, now)? {
        if down.contains(&backup.host) {
            out.push(Expired {
                error: Some(format!(
                    "host {} is down; expires on a later tick",
                    backup.host
                )),
                backup,
            });
            continue;
        }
        let result = async {
            let host = server.host(&backup.host)?;
            let (mut remote, _) = hosts::open(&host, timeout).await?;
            let listed = remote
                .snapshot_list()
                .await
                .map_err(ProtectError::engine("cannot list the backups"))?;
            if listed.iter().any(|s| s.id == backup.id) {
                remote
                    .snapshot_delete(&backup.id)
                    .await
                    .map_err(ProtectError::engine(format!(
                        "cannot delete backup {}",
                        backup.id
                    )))?;
            }
            remote.close().await;
            Ok::<_, ProtectError>(())
        }
        .await;
        match result {
            Ok(()) => {
                server.delete_backup(&backup)?;
                server.audit(&format!(
                    "backup {} of {} expired by dataset {}",
                    backup.id, backup.relationship, backup.dataset
                ))?;
                out.push(Expired {
                    backup,
                    error: None,
                });
            }
            Err(e) => {
                if matches!(e, ProtectError::HostDown { .. }) {
                    down.insert(backup.host.clone());
                }
                out.push(Expired {
                    backup,
                    error: Some(e.to_string()),
                });
            }
        }
    }
    Ok(out)
}

/// One due update in a tick.
#[derive(Clone, Debug, Serialize)]
pub struct TickUpdate {
    /// The relationship.
    pub relationship: String,
    /// The update, when it ran.
    pub report: Option<UpdateReport>,
    /// Why it did not.
    pub error: Option<String>,
}

/// What a tick did.
#[derive(Clone, Debug, Serialize)]
pub struct TickReport {
    /// The server clock the tick ran at.
    pub now: i64,
    /// Every update that was due.
    pub updates: Vec<TickUpdate>,
    /// Every backup that was due to expire.
    pub expired: Vec<Expired>,
    /// Hosts found down (their work waits for a later tick).
    pub hosts_down: Vec<String>,
}

impl TickReport {
    /// True when something failed.
    pub fn has_errors(&self) -> bool {
        self.updates.iter().any(|u| u.error.is_some())
            || self.expired.iter().any(|e| e.error.is_some())
    }
}

/// `tick`: every due update, then every due expiry. A host that is down is reported and
/// skipped; the others go on.
pub async fn tick(
    server: &Server,
    now: i64,
    timeout: Duration,
    events: Events,
) -> Result<TickReport, ProtectError> {
    let mut down = BTreeSet::new();
    let mut updates = Vec::new();
    for rel in server.relationships()? {
        let dataset = server.dataset(&rel.dataset)?;
        let policy = server.policy(&dataset.policy)?;
        if !is_due(&rel, &policy, now) {
            continue;
        }
        if down.contains(&rel.host) {
            updates.push(TickUpdate {
                relationship: rel.name.clone(),
                report: None,
                error: Some(format!(
                    "host {} is down; updates on a later tick",
                    rel.host
                )),
            });
            continue;
        }
        match update(server, &rel.name, now, timeout, events.clone()).await {
            Ok(report) => updates.push(TickUpdate {
                relationship: rel.name.clone(),
                report: Some(report),
                error: None,
            }),
            Err(e) => {
                let host_down = match &e {
                    ProtectError::HostDown { .. } => true,
                    ProtectError::Engine { source, .. } => matches!(
                        **source,
                        haul_engine::EngineError::Connection { .. }
                            | haul_engine::EngineError::Net(_)
                    ),
                    _ => false,
                };
                if host_down {
                    down.insert(rel.host.clone());
                }
                server.audit(&format!("update of {} failed: {e}", rel.name))?;
                updates.push(TickUpdate {
                    relationship: rel.name.clone(),
                    report: None,
                    error: Some(e.to_string()),
                });
            }
        }
    }
    let expired = expire(server, now, timeout, &mut down).await?;
    Ok(TickReport {
        now,
        updates,
        expired,
        hosts_down: down.into_iter().collect(),
    })
}

/// A backup as the host lists it, with who made it.
#[derive(Clone, Debug, Serialize)]
pub struct BackupInfo {
    /// The snapshot id.
    pub id: String,
    /// The relationship's destination.
    pub relationship: String,
    /// The server that made it (from its label).
    pub server: Option<String>,
    /// The dataset that made it (from its label).
    pub dataset: Option<String>,
    /// When it was made (server clock, from its label).
    pub at: Option<i64>,
    /// Whether this server made it (and so expires it).
    pub ours: bool,
}

fn label_field<'a>(label: &'a str, key: &str) -> Option<&'a str> {
    label
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}

/// Where a relationship's backups are, for this server: one it owns, or one it made
/// backups of before relinquishing it.
fn locate(server: &Server, name: &str) -> Result<(String, String), ProtectError> {
    if let Some(rel) = server.find_relationship(name)? {
        return Ok((rel.host, rel.path));
    }
    if let Some(b) = server
        .backups()?
        .into_iter()
        .find(|b| b.relationship == name)
    {
        return Ok((b.host, b.path));
    }
    Err(ProtectError::NotFound(format!(
        "this server neither owns {name} nor keeps backups of it; restore from the server \
         that owns it"
    )))
}

/// Every backup of a relationship on its host, by whichever server made it.
pub async fn list_backups(
    server: &Server,
    name: &str,
    timeout: Duration,
) -> Result<Vec<BackupInfo>, ProtectError> {
    let (host_name, path) = locate(server, name)?;
    let host = server.host(&host_name)?;
    let (mut remote, _) = hosts::open(&host, timeout).await?;
    let listed = remote
        .snapshot_list()
        .await
        .map_err(ProtectError::engine("cannot list the backups"))?;
    remote.close().await;
    let ours: BTreeSet<String> = server.backups()?.into_iter().map(|b| b.id).collect();
    Ok(listed
        .into_iter()
        .filter(|s| s.path == path && s.complete)
        .map(|s| BackupInfo {
            relationship: name.to_string(),
            server: label_field(&s.label, "server").map(String::from),
            dataset: label_field(&s.label, "dataset").map(String::from),
            at: label_field(&s.label, "at").and_then(|v| v.parse().ok()),
            ours: ours.contains(&s.id),
            id: s.id,
        })
        .collect())
}

/// What a restore did.
#[derive(Clone, Debug, Serialize)]
pub struct RestoreReport {
    /// The relationship.
    pub relationship: String,
    /// The backup restored.
    pub backup: String,
    /// Where to.
    pub to: String,
    /// Files written, each verified by BLAKE3 chunk by chunk before it was installed.
    pub files_verified: u64,
    /// The pull's summary.
    pub summary: Summary,
}

/// `restore REL --backup ID --to DIR`: pulls the backup back into `to`, every chunk verified
/// by BLAKE3 against the host's copy before a file is installed.
pub async fn restore(
    server: &Server,
    name: &str,
    backup_id: &str,
    to: &Path,
    timeout: Duration,
    events: Events,
) -> Result<RestoreReport, ProtectError> {
    let backups = list_backups(server, name, timeout).await?;
    if !backups.iter().any(|b| b.id == backup_id) {
        return Err(ProtectError::NotFound(format!(
            "{name} has no backup {backup_id:?}; `haul protect backups {name}` lists them"
        )));
    }
    let (host_name, path) = locate(server, name)?;
    let host = server.host(&host_name)?;
    let target = hosts::target(&host).await?;
    let mut from = hosts::end(&target, &path);
    from.snapshot = Some(backup_id.to_string());
    let options = TransferOptions {
        list_files: true,
        ..TransferOptions::default()
    };
    let job = Job::new(Endpoint::Remote(from), Endpoint::Local(to.to_path_buf())).options(options);
    let sink = events.clone();
    let summary = job
        .run(move |e| sink(e))
        .await
        .map_err(ProtectError::engine(format!(
            "restore of {name} from backup {backup_id}"
        )))?;
    server.audit(&format!(
        "restored backup {backup_id} of {name} into {}",
        to.display()
    ))?;
    Ok(RestoreReport {
        relationship: name.to_string(),
        backup: backup_id.to_string(),
        to: to.display().to_string(),
        files_verified: summary.files_transferred,
        summary,
    })
}
