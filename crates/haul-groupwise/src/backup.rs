//! Reload's dated backups of a post office: `<backups>/<TAG>/<po>/`, each with its backup
//! stats in `<TAG>/backup.json` when Reload (or the sample) recorded them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::GwError;
use crate::sample::BackupInfo;

/// The file beside a backup's post office that holds its stats.
pub const INFO_FILE: &str = "backup.json";

/// One backup of the post office.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Backup {
    /// Its tag (the directory name, `TUEMAY28`).
    pub tag: String,
    /// The post office directory in it.
    pub path: PathBuf,
    /// When it completed, unix seconds (from its stats, else the directory's mtime).
    pub completed: i64,
    /// How long the backup took, when recorded.
    pub duration_s: Option<f64>,
}

/// The backups in `dir` that hold the post office `po`, oldest first (by completion time).
pub fn list(dir: &Path, po: &str) -> Result<Vec<Backup>, GwError> {
    let entries = std::fs::read_dir(dir).map_err(|e| GwError::io(dir, "list the backups in", e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| GwError::io(dir, "list the backups in", e))?;
        let path = entry.path().join(po);
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        let tag = entry.file_name().to_string_lossy().into_owned();
        let info: Option<BackupInfo> = std::fs::read(entry.path().join(INFO_FILE))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        let mtime = {
            use std::os::unix::fs::MetadataExt;
            meta.mtime()
        };
        out.push(Backup {
            tag,
            path,
            completed: info.as_ref().map_or(mtime, |i| i.completed),
            duration_s: info.map(|i| i.duration_s),
        });
    }
    out.sort_by(|a, b| a.completed.cmp(&b.completed).then(a.tag.cmp(&b.tag)));
    Ok(out)
}

/// The backup `tag`, or without one the newest by completion time.
pub fn choose(dir: &Path, po: &str, tag: Option<&str>) -> Result<Backup, GwError> {
    let all = list(dir, po)?;
    let tags = || {
        all.iter()
            .map(|b| b.tag.clone())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match tag {
        Some(tag) => all.iter().find(|b| b.tag == tag).cloned().ok_or_else(|| {
            GwError::NoBackup(format!(
                "no backup {tag:?} of {po} in {}; the backups there are: {}",
                dir.display(),
                tags()
            ))
        }),
        None => all.last().cloned().ok_or_else(|| {
            GwError::NoBackup(format!(
                "no backup of {po} in {} (looked for {}/<TAG>/{po}/)",
                dir.display(),
                dir.display()
            ))
        }),
    }
}
