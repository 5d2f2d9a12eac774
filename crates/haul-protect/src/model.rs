//! The records a management server keeps, and the one a host keeps per destination volume.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The server's identity and its settings (the article's `dpMaxFanInRatio`,
/// `dpReaperCleanupMode`, `dpRebaselineMode`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Made once when the directory is first opened; written into every relationship this
    /// server owns and every backup it makes.
    pub id: String,
    /// The settings.
    pub settings: Settings,
}

/// Server settings that must be identical on two servers before a migration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// The most relationships one destination volume may take in (fan-in).
    pub max_fan_in: u32,
    /// What happens to a destination's backups when its relationship is deleted:
    /// `orphans` (kept), `automatic` (expired by the policy as usual) or `never`.
    pub reaper_cleanup_mode: String,
    /// Whether an update may start over from nothing (`allowed`) or must only ever send
    /// differences (`never`, the default: a relationship is never re-baselined).
    pub rebaseline_mode: String,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            max_fan_in: 8,
            reaper_cleanup_mode: "automatic".into(),
            rebaseline_mode: "never".into(),
        }
    }
}

impl Settings {
    /// The settings' names, as `server set` takes them.
    pub const NAMES: [&'static str; 3] = ["max-fan-in", "reaper-cleanup-mode", "rebaseline-mode"];

    /// Changes one setting; the error says what is accepted.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        let one_of = |allowed: &[&str]| -> Result<String, String> {
            if allowed.contains(&value) {
                Ok(value.to_string())
            } else {
                Err(format!("{name} must be one of {}", allowed.join(", ")))
            }
        };
        match name {
            "max-fan-in" => {
                self.max_fan_in =
                    value.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        format!("max-fan-in must be a number above 0, not {value:?}")
                    })?;
            }
            "reaper-cleanup-mode" => {
                self.reaper_cleanup_mode = one_of(&["automatic", "orphans", "never"])?
            }
            "rebaseline-mode" => self.rebaseline_mode = one_of(&["never", "allowed"])?,
            _ => {
                return Err(format!(
                    "no setting {name:?}; the settings are {}",
                    Self::NAMES.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// The settings as `(name, value)` pairs.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("max-fan-in", self.max_fan_in.to_string()),
            ("reaper-cleanup-mode", self.reaper_cleanup_mode.clone()),
            ("rebaseline-mode", self.rebaseline_mode.clone()),
        ]
    }
}

/// A serving host registered on this server (a storage controller, in the article).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    /// The name this server knows it by.
    pub name: String,
    /// `quic://HOST:PORT`.
    pub url: String,
    /// The certificate fingerprint to pin (`sha256:...`, as `haul serve` prints it).
    pub fingerprint: String,
    /// The file holding the token (kept as a path: no secret in the database).
    pub token_file: PathBuf,
}

/// A protection policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Its name.
    pub name: String,
    /// Updates run every this many seconds, at multiples of it since the epoch (UTC).
    pub every_s: u64,
    /// A backup older than this (seconds) may expire...
    pub retention_period_s: u64,
    /// ...but the newest this many of a dataset's backups are always kept.
    pub retention_count: u32,
    /// The throttle: the bandwidth limit of an update, bytes per second.
    pub throttle: Option<u64>,
    /// A script run before each update (a failure skips the update).
    pub pre_script: Option<PathBuf>,
    /// A script run after each backup.
    pub post_script: Option<PathBuf>,
}

impl Policy {
    /// The first scheduled time strictly after `t`.
    pub fn next_after(&self, t: i64) -> i64 {
        let every = self.every_s.max(1) as i64;
        (t.div_euclid(every) + 1) * every
    }

    /// The scheduled times in `[start, end)`.
    pub fn scheduled_in(&self, start: i64, end: i64) -> Vec<i64> {
        let mut out = Vec::new();
        let mut t = self.next_after(start - 1);
        while t < end && out.len() < 1000 {
            out.push(t);
            t = self.next_after(t);
        }
        out
    }
}

/// A dataset: a policy and the relationships (and backups) it owns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dataset {
    /// Its name.
    pub name: String,
    /// Its policy's name.
    pub policy: String,
    /// When it was created (the server clock).
    pub created_at: i64,
    /// True once it gave up a relationship (it stays, for restores and expiry).
    pub relinquished_any: bool,
}

/// How a relationship keeps its destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The destination is made identical to the source (what the source no longer has is
    /// removed).
    Mirror,
    /// The destination takes in what the source has; nothing is removed.
    Backup,
}

impl Kind {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Mirror => "mirror",
            Kind::Backup => "backup",
        }
    }
}

/// A relationship this server owns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relationship {
    /// `HOST:PATH`: the destination, which names it.
    pub name: String,
    /// The dataset that owns it.
    pub dataset: String,
    /// The source tree (a local path).
    pub source: PathBuf,
    /// The destination host's name.
    pub host: String,
    /// The destination path under the host's grant.
    pub path: String,
    /// Mirror or backup.
    pub kind: Kind,
    /// The last update this server made (server clock).
    pub last_update: Option<i64>,
}

impl Relationship {
    /// The destination volume: the first component of the path. Relationships sharing one
    /// volume fan in to it and share its registry record.
    pub fn volume(&self) -> &str {
        volume_of(&self.path)
    }
}

/// The destination volume of `path`.
pub fn volume_of(path: &str) -> &str {
    path.split('/').find(|c| !c.is_empty()).unwrap_or("")
}

/// A backup this server made: a snapshot on the destination host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backup {
    /// The snapshot id on the host.
    pub id: String,
    /// The dataset that made it (and expires it).
    pub dataset: String,
    /// The relationship it is a backup of.
    pub relationship: String,
    /// The host it lives on.
    pub host: String,
    /// The tree it is a copy of.
    pub path: String,
    /// When it was made (server clock).
    pub created_at: i64,
}

/// The record a host keeps for one destination volume (in its `.haul/registry/`, through the
/// engine's registry operations): every relationship into the volume and who owns it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    /// The relationships into this volume.
    pub relationships: Vec<HostRelationship>,
}

/// One relationship as the destination host records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRelationship {
    /// Where the source is: `MACHINE:PATH` of the server that pushes it.
    pub source: String,
    /// The source path on that machine.
    pub source_path: PathBuf,
    /// The destination path under the grant.
    pub path: String,
    /// Mirror or backup.
    pub kind: Kind,
    /// Who owns it; `None` once relinquished.
    pub owner: Option<Owner>,
}

/// The owner of a relationship: a dataset on a server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The server's id.
    pub server: String,
    /// The dataset's name on it.
    pub dataset: String,
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "dataset {} on server {}", self.dataset, self.server)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hourly() -> Policy {
        Policy {
            name: "hourly".into(),
            every_s: 3600,
            retention_period_s: 7200,
            retention_count: 1,
            throttle: None,
            pre_script: None,
            post_script: None,
        }
    }

    #[test]
    fn schedules_run_at_multiples_of_their_period() {
        let p = hourly();
        assert_eq!(p.next_after(0), 3600);
        assert_eq!(p.next_after(3599), 3600);
        assert_eq!(p.next_after(3600), 7200);
        assert_eq!(p.scheduled_in(3500, 7300), vec![3600, 7200]);
        assert!(p.scheduled_in(3700, 7100).is_empty());
        assert_eq!(p.scheduled_in(3600, 3601), vec![3600]);
    }

    #[test]
    fn settings_accept_only_known_values() {
        let mut s = Settings::default();
        s.set("max-fan-in", "4").unwrap();
        assert_eq!(s.max_fan_in, 4);
        assert!(s.set("max-fan-in", "0").is_err());
        assert!(s.set("rebaseline-mode", "sometimes").is_err());
        assert!(
            s.set("dpMaxFanInRatio", "2")
                .unwrap_err()
                .contains("max-fan-in")
        );
        assert_eq!(s.pairs()[0], ("max-fan-in", "4".to_string()));
    }

    #[test]
    fn the_volume_is_the_first_component() {
        assert_eq!(volume_of("vault/a/b"), "vault");
        assert_eq!(volume_of("/vol1"), "vol1");
    }
}
