//! Post-migration step 1: compare the new post office with the backup it was migrated from.
//! `ofuser/` and `ofmsg/` must exist and hold something ("if those directories are empty,
//! you do NOT want to proceed"), every file must match by hash, nothing may be missing or
//! extra. Renamed-aside copies (`ofuser.1`, ...) and the receiver's `.haul` are not part of
//! the post office. The target's side is the engine's manifest (hashed where the data is, on
//! the host for a remote target), never a second copy.

use std::collections::BTreeMap;

use haul_engine::remote::ManifestEntry;
use haul_state::{Level, StateDb};
use serde::Serialize;

use crate::backup;
use crate::migrate::aside_of;
use crate::profile::Profile;
use crate::target::Target;
use crate::{GwError, REQUIRED_DIRS};

/// One way the target differs from the backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "difference", rename_all = "snake_case")]
pub enum Difference {
    /// In the backup, not on the target.
    Missing {
        /// Path in the post office.
        path: String,
    },
    /// On the target, not in the backup.
    Extra {
        /// Path in the post office.
        path: String,
    },
    /// A file whose contents differ.
    Different {
        /// Path in the post office.
        path: String,
        /// The backup's BLAKE3.
        expected: String,
        /// The target's BLAKE3.
        found: String,
    },
    /// Not the same kind of entry (a directory where a file should be, ...).
    KindDiffers {
        /// Path in the post office.
        path: String,
        /// In the backup.
        expected: String,
        /// On the target.
        found: String,
    },
    /// `ofuser/` or `ofmsg/` is missing or empty on the target.
    EmptyRequired {
        /// The directory.
        path: String,
    },
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Difference::Missing { path } => write!(f, "missing: {path}"),
            Difference::Extra { path } => write!(f, "extra: {path}"),
            Difference::Different {
                path,
                expected,
                found,
            } => write!(
                f,
                "different: {path} (backup {}, target {})",
                &expected[..expected.len().min(16)],
                &found[..found.len().min(16)]
            ),
            Difference::KindDiffers {
                path,
                expected,
                found,
            } => write!(
                f,
                "kind differs: {path} (backup {expected}, target {found})"
            ),
            Difference::EmptyRequired { path } => write!(
                f,
                "empty required directory: {path} (missing or empty on the target: do not \
                 load the POA)"
            ),
        }
    }
}

/// What [`verify`] found.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    /// The backup compared against.
    pub backup: String,
    /// The target.
    pub target: String,
    /// Files compared by hash.
    pub files_checked: u64,
    /// Bytes in them.
    pub bytes_checked: u64,
    /// Every difference.
    pub differences: Vec<Difference>,
}

impl VerifyReport {
    /// True when the target is the backup.
    pub fn ok(&self) -> bool {
        self.differences.is_empty()
    }
}

/// Compares the target post office with the backup the last full migration copied (or
/// `tag`), and writes the outcome to the migration log.
pub async fn verify(
    db: &StateDb,
    profile: &Profile,
    target: &Target,
    tag: Option<&str>,
) -> Result<VerifyReport, GwError> {
    let tag = match tag {
        Some(tag) => tag.to_string(),
        None => profile
            .state
            .last_migrate
            .as_ref()
            .map(|m| m.backup.clone())
            .ok_or_else(|| {
                GwError::Invalid(format!(
                    "profile {} has no finished full migration to verify; run `haul groupwise \
                     migrate {}` first (or name the backup with --backup)",
                    profile.name, profile.name
                ))
            })?,
    };
    let backup = backup::choose(&profile.backups, &profile.po, Some(&tag))?;
    let dir = backup.path.clone();
    let source = tokio::task::spawn_blocking(move || haul_engine::local_ops::local_manifest(&dir))
        .await
        .map_err(|e| GwError::Failed(format!("hashing the backup failed: {e}")))??;
    let mut ops = target.ops(None).await?;
    let found = ops.manifest(target.po_path()).await;
    ops.close().await;
    let found = found?;
    let report = compare(&backup.tag, &target.describe(), &source, &found);
    let message = if report.ok() {
        format!(
            "verify passed: {} files ({}) match backup {} by hash; ofuser and ofmsg hold data",
            report.files_checked,
            crate::clock::format_bytes(report.bytes_checked),
            report.backup
        )
    } else {
        let listed: Vec<String> = report
            .differences
            .iter()
            .take(50)
            .map(|d| d.to_string())
            .collect();
        format!(
            "verify FAILED against backup {}: {} differences: {}",
            report.backup,
            report.differences.len(),
            listed.join("; ")
        )
    };
    let level = if report.ok() {
        Level::Info
    } else {
        Level::Error
    };
    db.log(None, Some(&profile.name), level, &message)?;
    Ok(report)
}

/// The comparison itself, on two manifests (paths relative to the post office).
pub fn compare(
    backup: &str,
    target: &str,
    source: &[ManifestEntry],
    found: &[ManifestEntry],
) -> VerifyReport {
    let top_dirs: Vec<&str> = source
        .iter()
        .filter(|e| e.kind == "dir" && !e.path.is_empty() && !e.path.contains('/'))
        .map(|e| e.path.as_str())
        .collect();
    let counts = |path: &str| {
        let top = path.split('/').next().unwrap_or(path);
        !path.is_empty() && top != ".haul" && aside_of(top, top_dirs.iter().copied()).is_none()
    };
    let want: BTreeMap<&str, &ManifestEntry> = source
        .iter()
        .filter(|e| !e.path.is_empty())
        .map(|e| (e.path.as_str(), e))
        .collect();
    let have: BTreeMap<&str, &ManifestEntry> = found
        .iter()
        .filter(|e| counts(&e.path))
        .map(|e| (e.path.as_str(), e))
        .collect();
    let mut report = VerifyReport {
        backup: backup.to_string(),
        target: target.to_string(),
        files_checked: 0,
        bytes_checked: 0,
        differences: Vec::new(),
    };
    for dir in REQUIRED_DIRS {
        let prefix = format!("{dir}/");
        let present = have.get(dir).is_some_and(|e| e.kind == "dir");
        let holds = have.keys().any(|p| p.starts_with(&prefix));
        if !present || !holds {
            report.differences.push(Difference::EmptyRequired {
                path: dir.to_string(),
            });
        }
    }
    // Inside a missing directory only the directory is named, not all it should hold.
    let mut missing_dirs: Vec<String> = Vec::new();
    for (path, entry) in &want {
        if missing_dirs.iter().any(|d| path.starts_with(d.as_str())) {
            continue;
        }
        match have.get(path) {
            None => {
                if entry.kind == "dir" {
                    missing_dirs.push(format!("{path}/"));
                }
                report.differences.push(Difference::Missing {
                    path: path.to_string(),
                });
            }
            Some(got) if got.kind != entry.kind => {
                report.differences.push(Difference::KindDiffers {
                    path: path.to_string(),
                    expected: entry.kind.clone(),
                    found: got.kind.clone(),
                })
            }
            Some(got) if entry.kind == "file" => {
                report.files_checked += 1;
                report.bytes_checked += entry.size;
                if got.blake3 != entry.blake3 {
                    report.differences.push(Difference::Different {
                        path: path.to_string(),
                        expected: entry.blake3.clone().unwrap_or_default(),
                        found: got.blake3.clone().unwrap_or_default(),
                    });
                }
            }
            Some(_) => {}
        }
    }
    let mut extra_dirs: Vec<String> = Vec::new();
    for path in have.keys() {
        if want.contains_key(path) || extra_dirs.iter().any(|d| path.starts_with(d.as_str())) {
            continue;
        }
        if have[path].kind == "dir" {
            extra_dirs.push(format!("{path}/"));
        }
        report.differences.push(Difference::Extra {
            path: path.to_string(),
        });
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: &str, hash: Option<&str>) -> ManifestEntry {
        ManifestEntry {
            path: path.into(),
            kind: kind.into(),
            size: 1,
            blake3: hash.map(str::to_string),
        }
    }

    fn po() -> Vec<ManifestEntry> {
        vec![
            entry("", "dir", None),
            entry("ofuser", "dir", None),
            entry("ofuser/u1.db", "file", Some("aa")),
            entry("ofmsg", "dir", None),
            entry("ofmsg/m0.db", "file", Some("bb")),
            entry("offiles", "dir", None),
            entry("offiles/fd0", "dir", None),
            entry("offiles/fd0/1.000", "file", Some("cc")),
        ]
    }

    #[test]
    fn asides_and_state_are_not_the_post_office() {
        let mut found = po();
        found.push(entry("ofuser.1", "dir", None));
        found.push(entry("ofuser.1/u1.db", "file", Some("00")));
        found.push(entry(".haul", "dir", None));
        let report = compare("T", "t", &po(), &found);
        assert!(report.ok(), "{:?}", report.differences);
        assert_eq!(report.files_checked, 3);
    }

    #[test]
    fn every_difference_is_named() {
        let mut found = po();
        found.retain(|e| e.path != "ofmsg/m0.db");
        found[2].blake3 = Some("zz".into());
        found.push(entry("offiles/fd0/2.000", "file", Some("dd")));
        let report = compare("T", "t", &po(), &found);
        let text: Vec<String> = report.differences.iter().map(|d| d.to_string()).collect();
        assert!(
            text.iter()
                .any(|t| t.starts_with("empty required directory: ofmsg")),
            "{text:?}"
        );
        assert!(text.iter().any(|t| t == "missing: ofmsg/m0.db"), "{text:?}");
        assert!(
            text.iter()
                .any(|t| t.starts_with("different: ofuser/u1.db")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|t| t == "extra: offiles/fd0/2.000"),
            "{text:?}"
        );
        assert_eq!(report.differences.len(), 4);
    }
}
