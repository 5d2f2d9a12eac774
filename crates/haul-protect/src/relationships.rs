//! Relationships: creating one, discovering them on the hosts (owned or external), and
//! moving ownership between servers (relinquish on the old, import on the new), fan-in
//! groups together.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::error::ProtectError;
use crate::hosts;
use crate::model::{HostRelationship, Kind, Owner, Relationship, volume_of};
use crate::registry;
use crate::server::Server;

/// `HOST:PATH`, split.
pub fn parse_name(name: &str) -> Result<(String, String), ProtectError> {
    let (host, path) = name.split_once(':').ok_or_else(|| {
        ProtectError::Invalid(format!(
            "{name:?} is not a relationship; relationships are named HOST:PATH after their \
             destination (`haul protect discover` lists them)"
        ))
    })?;
    let path = path.trim_matches('/');
    if host.is_empty() || path.is_empty() {
        return Err(ProtectError::Invalid(format!(
            "{name:?}: write HOST:PATH, with the destination path under the host's grant"
        )));
    }
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == ".." || c == ".haul")
    {
        return Err(ProtectError::Invalid(format!(
            "{name:?}: the destination path may not hold empty, '.', '..' or '.haul' components"
        )));
    }
    Ok((host.to_string(), path.to_string()))
}

/// This machine's name, for the source side of a host's record.
fn machine() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// A relationship just created.
#[derive(Clone, Debug, Serialize)]
pub struct Created {
    /// The relationship.
    pub relationship: Relationship,
    /// The other relationships already fanning in to its destination volume.
    pub fan_in_with: Vec<String>,
}

/// `relationship create`: records a new relationship from the local `source` to
/// `dest` (`HOST:PATH`) in `dataset`, on the host's registry and on this server. Nothing is
/// copied until the first update.
pub async fn create(
    server: &Server,
    dataset: &str,
    source: &Path,
    dest: &str,
    kind: Kind,
    timeout: Duration,
) -> Result<Created, ProtectError> {
    server.dataset(dataset)?;
    let (host_name, path) = parse_name(dest)?;
    let host = server.host(&host_name)?;
    let source = std::fs::canonicalize(source).map_err(|e| {
        ProtectError::Local(format!(
            "the source {} cannot be used: {e}",
            source.display()
        ))
    })?;
    if !source.is_dir() {
        return Err(ProtectError::Invalid(format!(
            "the source {} is not a directory",
            source.display()
        )));
    }
    let (mut remote, _) = hosts::open(&host, timeout).await?;
    let volume = volume_of(&path).to_string();
    let mut record = registry::read(&mut remote, &volume).await?;
    let name = format!("{host_name}:{path}");
    if let Some(existing) = record.relationships.iter().find(|r| r.path == path) {
        let owner = existing
            .owner
            .as_ref()
            .map_or("nobody (relinquished; import it)".to_string(), |o| {
                o.to_string()
            });
        return Err(ProtectError::Refused(format!(
            "there is already a relationship into {name}, from {}, owned by {owner}",
            existing.source
        )));
    }
    if let Some(nested) = record
        .relationships
        .iter()
        .find(|r| inside(&r.path, &path) || inside(&path, &r.path))
    {
        return Err(ProtectError::Refused(format!(
            "{name} would hold, or lie inside, the destination of the relationship into \
             {host_name}:{}; give each relationship its own tree",
            nested.path
        )));
    }
    let max = server.info().settings.max_fan_in as usize;
    if record.relationships.len() >= max {
        return Err(ProtectError::Refused(format!(
            "volume {volume} on {host_name} already takes in {} relationships, the server's \
             max-fan-in; raise it (`haul protect server set max-fan-in N`) or use another volume",
            record.relationships.len()
        )));
    }
    let fan_in_with = record
        .relationships
        .iter()
        .map(|r| format!("{host_name}:{}", r.path))
        .collect();
    record.relationships.push(HostRelationship {
        source: format!("{}:{}", machine(), source.display()),
        source_path: source.clone(),
        path: path.clone(),
        kind,
        owner: Some(Owner {
            server: server.id().to_string(),
            dataset: dataset.to_string(),
        }),
    });
    registry::write(&mut remote, &volume, &record).await?;
    remote.close().await;
    let relationship = Relationship {
        name: name.clone(),
        dataset: dataset.to_string(),
        source,
        host: host_name,
        path,
        kind,
        last_update: None,
    };
    server.put_relationship(&relationship)?;
    server.audit(&format!(
        "relationship {name} ({}) created in dataset {dataset} from {}",
        kind.as_str(),
        relationship.source.display()
    ))?;
    Ok(Created {
        relationship,
        fan_in_with,
    })
}

fn inside(inner: &str, outer: &str) -> bool {
    inner.len() > outer.len()
        && inner.starts_with(outer)
        && inner.as_bytes().get(outer.len()) == Some(&b'/')
}

/// Whether this server owns a discovered relationship.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ownership {
    /// One of this server's datasets owns it.
    Owned,
    /// Another server owns it, or nobody does (relinquished, waiting for an import).
    External,
}

/// One relationship seen on a host.
#[derive(Clone, Debug, Serialize)]
pub struct Discovered {
    /// `HOST:PATH`, with this server's name for the host.
    pub name: String,
    /// The source, `MACHINE:PATH`.
    pub source: String,
    /// Mirror or backup.
    pub kind: Kind,
    /// Owned or external.
    pub ownership: Ownership,
    /// Its owner, if any.
    pub owner: Option<Owner>,
    /// The destination volume and the other relationships into it (fan-in).
    pub volume: String,
    /// The others in the volume.
    pub fan_in_with: Vec<String>,
}

/// A host that could not be asked.
#[derive(Clone, Debug, Serialize)]
pub struct Unreachable {
    /// The host's name.
    pub host: String,
    /// Why.
    pub error: String,
}

/// What `discover` found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Discovery {
    /// Every relationship on the reachable hosts.
    pub relationships: Vec<Discovered>,
    /// Hosts that could not be asked (the others were).
    pub unreachable: Vec<Unreachable>,
}

impl Discovery {
    /// The relationship named `name`, if seen.
    pub fn find(&self, name: &str) -> Option<&Discovered> {
        self.relationships.iter().find(|d| d.name == name)
    }
}

/// `discover`: every relationship recorded on every registered host, owned or external.
pub async fn discover(server: &Server, timeout: Duration) -> Result<Discovery, ProtectError> {
    let mut out = Discovery::default();
    for host in server.hosts()? {
        let records = async {
            let (mut remote, _) = hosts::open(&host, timeout).await?;
            let list = registry::list(&mut remote).await;
            remote.close().await;
            list
        }
        .await;
        let records = match records {
            Ok(r) => r,
            Err(e) => {
                out.unreachable.push(Unreachable {
                    host: host.name.clone(),
                    error: e.to_string(),
                });
                continue;
            }
        };
        for (volume, record) in records {
            let names: Vec<String> = record
                .relationships
                .iter()
                .map(|r| format!("{}:{}", host.name, r.path))
                .collect();
            for (r, name) in record.relationships.iter().zip(&names) {
                let owned = r.owner.as_ref().is_some_and(|o| o.server == server.id());
                out.relationships.push(Discovered {
                    name: name.clone(),
                    source: r.source.clone(),
                    kind: r.kind,
                    ownership: if owned {
                        Ownership::Owned
                    } else {
                        Ownership::External
                    },
                    owner: r.owner.clone(),
                    volume: format!("{}:{volume}", host.name),
                    fan_in_with: names.iter().filter(|n| *n != name).cloned().collect(),
                });
            }
        }
    }
    Ok(out)
}

/// The relationships named, grouped by host and destination volume, with a refusal when a
/// volume's group leaves out one that must move with it.
fn fan_in_groups(
    names: &[String],
) -> Result<BTreeMap<(String, String), Vec<String>>, ProtectError> {
    if names.is_empty() {
        return Err(ProtectError::Invalid(
            "name at least one relationship".into(),
        ));
    }
    let mut groups: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for name in names {
        let (host, path) = parse_name(name)?;
        let volume = volume_of(&path).to_string();
        let group = groups.entry((host, volume)).or_default();
        if !group.contains(&path) {
            group.push(path);
        }
    }
    Ok(groups)
}

fn fan_in_refusal(
    verb: &str,
    host: &str,
    volume: &str,
    missing: &[String],
    given: &[String],
) -> ProtectError {
    let all: Vec<String> = given
        .iter()
        .chain(missing)
        .map(|p| format!("{host}:{p}"))
        .collect();
    ProtectError::Refused(format!(
        "{} fan in to volume {volume} on {host} with {}: relationships sharing a destination \
         volume move together; {verb} them all at once: {}",
        given
            .iter()
            .map(|p| format!("{host}:{p}"))
            .collect::<Vec<_>>()
            .join(", "),
        missing
            .iter()
            .map(|p| format!("{host}:{p}"))
            .collect::<Vec<_>>()
            .join(", "),
        all.join(" ")
    ))
}

/// What a relinquish or an import did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Moved {
    /// The relationships.
    pub relationships: Vec<String>,
    /// The steps taken, in order.
    pub steps: Vec<String>,
}

/// `relinquish`: gives up this server's ownership of the relationships named (every one into
/// the same destination volume at once), in the article's order: relinquish each on the
/// host's registry, remove the primary (source) member and the secondary (destination)
/// member from the dataset, and check the host now shows them as external. The dataset is
/// neither deleted nor suspended: it keeps its backups, for restores and expiry.
pub async fn relinquish(
    server: &Server,
    names: &[String],
    timeout: Duration,
) -> Result<Moved, ProtectError> {
    let groups = fan_in_groups(names)?;
    let mut moved = Moved::default();
    for ((host_name, volume), paths) in &groups {
        let host = server.host(host_name)?;
        for path in paths {
            let name = format!("{host_name}:{path}");
            if server.find_relationship(&name)?.is_none() {
                return Err(ProtectError::Refused(format!(
                    "this server owns no relationship {name}; `haul protect discover` shows \
                     who does"
                )));
            }
        }
        let (mut remote, _) = hosts::open(&host, timeout).await?;
        let mut record = registry::read(&mut remote, volume).await?;
        let missing: Vec<String> = record
            .relationships
            .iter()
            .filter(|r| {
                r.owner.as_ref().is_some_and(|o| o.server == server.id())
                    && !paths.contains(&r.path)
            })
            .map(|r| r.path.clone())
            .collect();
        if !missing.is_empty() {
            return Err(fan_in_refusal(
                "relinquish",
                host_name,
                volume,
                &missing,
                paths,
            ));
        }
        // 1. Relinquish each relationship of the pair on the host.
        for r in record
            .relationships
            .iter_mut()
            .filter(|r| paths.contains(&r.path))
        {
            r.owner = None;
        }
        registry::write(&mut remote, volume, &record).await?;
        for path in paths {
            let name = format!("{host_name}:{path}");
            let rel = server.find_relationship(&name)?.expect("checked above");
            moved
                .steps
                .push(format!("relinquished {name} from dataset {}", rel.dataset));
            // 2. and 3. Remove the primary member (the source) and the secondary member
            // (the destination) from the dataset: the server forgets the relationship, the
            // dataset stays with its backups.
            server.delete_relationship(&name)?;
            moved.steps.push(format!(
                "removed primary member {} from dataset {}",
                rel.source.display(),
                rel.dataset
            ));
            moved.steps.push(format!(
                "removed secondary member {name} from dataset {}",
                rel.dataset
            ));
            let mut dataset = server.dataset(&rel.dataset)?;
            dataset.relinquished_any = true;
            server.put_dataset(&dataset)?;
            server.audit(&format!(
                "relationship {name} relinquished from dataset {} (the dataset keeps its \
                 backups for restores and expiry)",
                rel.dataset
            ))?;
            moved.relationships.push(name);
        }
        // 4. Check that the host now shows them as external.
        let after = registry::read(&mut remote, volume).await?;
        remote.close().await;
        for path in paths {
            let still_ours = after.relationships.iter().any(|r| {
                &r.path == path && r.owner.as_ref().is_some_and(|o| o.server == server.id())
            });
            if still_ours {
                return Err(ProtectError::Refused(format!(
                    "{host_name}:{path} still shows this server as its owner on the host; \
                     run relinquish again"
                )));
            }
            moved
                .steps
                .push(format!("verified {host_name}:{path} now shows as external"));
        }
    }
    Ok(moved)
}

/// `import`: takes ownership of external, relinquished relationships (every one into the
/// same destination volume at once) into `dataset`. Nothing is copied: the next update sends
/// only what changed since the old server's last one.
pub async fn import(
    server: &Server,
    names: &[String],
    dataset: &str,
    timeout: Duration,
) -> Result<Moved, ProtectError> {
    server.dataset(dataset)?;
    let groups = fan_in_groups(names)?;
    let mut moved = Moved::default();
    for ((host_name, volume), paths) in &groups {
        let host = server.host(host_name)?;
        let (mut remote, _) = hosts::open(&host, timeout).await?;
        let mut record = registry::read(&mut remote, volume).await?;
        for path in paths {
            let name = format!("{host_name}:{path}");
            let Some(r) = record.relationships.iter().find(|r| &r.path == path) else {
                return Err(ProtectError::NotFound(format!(
                    "host {host_name} records no relationship into {path}; `haul protect \
                     discover` lists what it has"
                )));
            };
            match &r.owner {
                Some(o) if o.server == server.id() => {
                    return Err(ProtectError::Refused(format!(
                        "{name} is already owned by this server ({o})"
                    )));
                }
                Some(o) => {
                    return Err(ProtectError::Refused(format!(
                        "{name} is still owned by {o}: relinquish it on that server first \
                         (`haul protect relinquish {name}`)"
                    )));
                }
                None => {}
            }
            if !r.source_path.is_dir() {
                return Err(ProtectError::Local(format!(
                    "{name}: its source {} is not a directory on this machine; this server \
                     pushes it from here",
                    r.source_path.display()
                )));
            }
        }
        let missing: Vec<String> = record
            .relationships
            .iter()
            .filter(|r| r.owner.is_none() && !paths.contains(&r.path))
            .map(|r| r.path.clone())
            .collect();
        if !missing.is_empty() {
            return Err(fan_in_refusal("import", host_name, volume, &missing, paths));
        }
        for r in record
            .relationships
            .iter_mut()
            .filter(|r| paths.contains(&r.path))
        {
            r.owner = Some(Owner {
                server: server.id().to_string(),
                dataset: dataset.to_string(),
            });
        }
        registry::write(&mut remote, volume, &record).await?;
        remote.close().await;
        for r in record
            .relationships
            .iter()
            .filter(|r| paths.contains(&r.path))
        {
            let name = format!("{host_name}:{}", r.path);
            server.put_relationship(&Relationship {
                name: name.clone(),
                dataset: dataset.to_string(),
                source: r.source_path.clone(),
                host: host_name.clone(),
                path: r.path.clone(),
                kind: r.kind,
                last_update: None,
            })?;
            server.audit(&format!(
                "relationship {name} imported into dataset {dataset} (no re-baseline: the \
                 next update sends only what changed)"
            ))?;
            moved
                .steps
                .push(format!("imported {name} into dataset {dataset}"));
            moved.relationships.push(name);
        }
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_host_and_a_confined_path() {
        assert_eq!(
            parse_name("nas1:vol1/po1/").unwrap(),
            ("nas1".to_string(), "vol1/po1".to_string())
        );
        for bad in [
            "nas1",
            ":vol",
            "nas1:",
            "nas1:a/../b",
            "nas1:.haul/x",
            "nas1:a//b",
        ] {
            assert!(parse_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fan_in_groups_are_by_host_and_volume() {
        let groups = fan_in_groups(&[
            "h:v/a".to_string(),
            "h:v/b".to_string(),
            "h:w/c".to_string(),
            "g:v/a".to_string(),
        ])
        .unwrap();
        assert_eq!(groups.len(), 3);
        assert_eq!(
            groups[&("h".to_string(), "v".to_string())],
            vec!["v/a", "v/b"]
        );
    }
}
