//! Dataset status, policy and settings comparison between two servers, and the preflight
//! checklist before migrating relationships from one server to another.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use serde::Serialize;

use crate::error::ProtectError;
use crate::hosts::{self, Check};
use crate::model::{Policy, Settings};
use crate::relationships::{self, Ownership};
use crate::server::Server;

/// A dataset and how it stands.
#[derive(Clone, Debug, Serialize)]
pub struct DatasetStatus {
    /// Its name.
    pub name: String,
    /// Its policy.
    pub policy: String,
    /// The relationships it owns.
    pub relationships: Vec<String>,
    /// The backups it made that have not expired.
    pub backups: usize,
    /// `ok`, `empty`, `warning: no backup history exists` (it owns relationships but has made
    /// no backup yet, as after an import), or `can be deleted` (it gave its relationships up
    /// and its last backup has expired).
    pub status: String,
}

/// The status of every dataset.
pub fn dataset_statuses(server: &Server) -> Result<Vec<DatasetStatus>, ProtectError> {
    let rels = server.relationships()?;
    let backups = server.backups()?;
    let mut out = Vec::new();
    for d in server.datasets()? {
        let relationships: Vec<String> = rels
            .iter()
            .filter(|r| r.dataset == d.name)
            .map(|r| r.name.clone())
            .collect();
        let count = backups.iter().filter(|b| b.dataset == d.name).count();
        let status = match (relationships.is_empty(), count) {
            (false, 0) => "warning: no backup history exists".to_string(),
            (false, _) => "ok".to_string(),
            (true, 0) if d.relinquished_any => "can be deleted".to_string(),
            (true, 0) => "empty".to_string(),
            (true, n) => format!("ok ({n} backups kept for restores and expiry; no relationships)"),
        };
        out.push(DatasetStatus {
            name: d.name,
            policy: d.policy,
            relationships,
            backups: count,
            status,
        });
    }
    Ok(out)
}

/// One difference between two servers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// The field.
    pub field: String,
    /// Its value on this server.
    pub here: String,
    /// Its value on the other.
    pub there: String,
}

fn show<T: std::fmt::Debug>(v: &Option<T>) -> String {
    match v {
        Some(v) => format!("{v:?}"),
        None => "none".into(),
    }
}

/// The differences between two versions of a policy (`None`: missing there).
pub fn policy_differences(here: Option<&Policy>, there: Option<&Policy>) -> Vec<Difference> {
    let d = |field: &str, a: String, b: String| Difference {
        field: field.into(),
        here: a,
        there: b,
    };
    match (here, there) {
        (None, None) => vec![],
        (Some(p), None) => vec![d("policy", p.name.clone(), "missing".into())],
        (None, Some(p)) => vec![d("policy", "missing".into(), p.name.clone())],
        (Some(a), Some(b)) => {
            let mut out = Vec::new();
            let mut cmp = |field: &str, x: String, y: String| {
                if x != y {
                    out.push(d(field, x, y));
                }
            };
            cmp(
                "schedule (every seconds)",
                a.every_s.to_string(),
                b.every_s.to_string(),
            );
            cmp(
                "retention period (seconds)",
                a.retention_period_s.to_string(),
                b.retention_period_s.to_string(),
            );
            cmp(
                "retention count",
                a.retention_count.to_string(),
                b.retention_count.to_string(),
            );
            cmp("throttle (bytes/s)", show(&a.throttle), show(&b.throttle));
            cmp("pre-script", show(&a.pre_script), show(&b.pre_script));
            cmp("post-script", show(&a.post_script), show(&b.post_script));
            out
        }
    }
}

/// The differences between two servers' settings.
pub fn settings_differences(here: &Settings, there: &Settings) -> Vec<Difference> {
    here.pairs()
        .into_iter()
        .zip(there.pairs())
        .filter(|(a, b)| a.1 != b.1)
        .map(|(a, b)| Difference {
            field: a.0.into(),
            here: a.1,
            there: b.1,
        })
        .collect()
}

/// `preflight --from OLD --to NEW [--window START..END]`: the article's checklist, each item
/// a [`Check`]. `relationships` limits it to those named (default: every one OLD owns).
pub async fn preflight(
    old: &Server,
    new: &Server,
    relationships: &[String],
    window: Option<(i64, i64)>,
    timeout: Duration,
) -> Result<Vec<Check>, ProtectError> {
    let mut checks = Vec::new();
    let owned = old.relationships()?;
    let to_move: Vec<_> = owned
        .iter()
        .filter(|r| relationships.is_empty() || relationships.contains(&r.name))
        .collect();
    for name in relationships {
        if !owned.iter().any(|r| &r.name == name) {
            checks.push(Check::new(
                format!("{name}: owned by the old server"),
                false,
                "the old server owns no such relationship; `haul protect discover` there",
            ));
        }
    }
    // Hosts: registered on the new server, resolvable, reachable, credentials and scope.
    let hosts_used: BTreeSet<&str> = to_move.iter().map(|r| r.host.as_str()).collect();
    for name in &hosts_used {
        match new.host(name) {
            Err(_) => checks.push(Check::new(
                format!("{name}: registered on the new server"),
                false,
                format!(
                    "add it there: `haul protect host add {name} ...` with the same address, \
                     fingerprint and a token"
                ),
            )),
            Ok(host) => {
                checks.push(Check::new(
                    format!("{name}: registered on the new server"),
                    true,
                    host.url.clone(),
                ));
                checks.extend(hosts::diagnose(&host, timeout).await);
            }
        }
    }
    // Policies and settings.
    let policies: BTreeSet<String> = to_move
        .iter()
        .filter_map(|r| old.dataset(&r.dataset).ok().map(|d| d.policy))
        .collect();
    for name in &policies {
        let here = old.find_policy(name)?;
        let there = new.find_policy(name)?;
        let diff = policy_differences(here.as_ref(), there.as_ref());
        checks.push(Check::new(
            format!("policy {name}: identical on both servers"),
            diff.is_empty(),
            if diff.is_empty() {
                "identical".to_string()
            } else {
                diff.iter()
                    .map(|d| format!("{}: {} here, {} there", d.field, d.here, d.there))
                    .collect::<Vec<_>>()
                    .join("; ")
            },
        ));
        // Scripts present on the new server.
        if let Some(p) = there.as_ref().or(here.as_ref()) {
            for script in [&p.pre_script, &p.post_script].into_iter().flatten() {
                let ok = std::fs::metadata(script)
                    .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                    .unwrap_or(false);
                checks.push(Check::new(
                    format!("policy {name}: script {} present", script.display()),
                    ok,
                    if ok {
                        "executable".to_string()
                    } else {
                        "missing or not executable: copy it to the new server".to_string()
                    },
                ));
            }
        }
    }
    let diff = settings_differences(&old.info().settings, &new.info().settings);
    checks.push(Check::new(
        "server settings identical",
        diff.is_empty(),
        if diff.is_empty() {
            "identical".to_string()
        } else {
            diff.iter()
                .map(|d| format!("{}: {} on the old, {} on the new", d.field, d.here, d.there))
                .collect::<Vec<_>>()
                .join("; ")
        },
    ));
    // Discovery: each relationship already seen as external on the new server.
    let seen = relationships::discover(new, timeout).await?;
    for rel in &to_move {
        let found = seen.find(&rel.name);
        let ok = found.is_some_and(|d| d.ownership == Ownership::External);
        checks.push(Check::new(
            format!("{}: discovered as external on the new server", rel.name),
            ok,
            match found {
                Some(d) if ok => format!(
                    "owned by {}",
                    d.owner.as_ref().map_or("nobody".into(), |o| o.to_string())
                ),
                Some(_) => "the new server already owns it".to_string(),
                None => "not seen: check the host's registration on the new server".to_string(),
            },
        ));
    }
    // The window: no update scheduled inside it (on either server).
    if let Some((start, end)) = window {
        for (side, server) in [("old", old), ("new", new)] {
            let mut inside = Vec::new();
            for d in server.datasets()? {
                let has_rel = server.relationships()?.iter().any(|r| r.dataset == d.name);
                if !has_rel {
                    continue;
                }
                let policy = server.policy(&d.policy)?;
                if let Some(t) = policy.scheduled_in(start, end).first() {
                    inside.push(format!("dataset {} at {t}", d.name));
                }
            }
            checks.push(Check::new(
                format!("no update scheduled on the {side} server in {start}..{end}"),
                inside.is_empty(),
                if inside.is_empty() {
                    "none".to_string()
                } else {
                    format!(
                        "scheduled: {}; move the window (do not suspend the dataset)",
                        inside.join(", ")
                    )
                },
            ));
        }
    }
    Ok(checks)
}
