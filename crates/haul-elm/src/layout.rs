//! What an appliance directory holds, as this workflow reads it, and the local scans of it.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::ElmError;

/// The layer repository.
pub const LAYERS: &str = "layers";
/// Image templates.
pub const TEMPLATES: &str = "templates";
/// Connectors, each with a `cache/` directory that is not migrated.
pub const CONNECTORS: &str = "connectors";
/// Agent registrations.
pub const AGENTS: &str = "agents";
/// The database (Phase Two).
pub const DATABASE: &str = "database";
/// Configuration.
pub const CONFIG: &str = "config";
/// The network file share setting (one line).
pub const SHARE: &str = "config/share";
/// A custom certificate, which is not migrated.
pub const CERTS: &str = "config/certs";
/// The name of each connector's cache directory.
pub const CACHE: &str = "cache";
/// The marker a cancelled or failed Phase Two leaves at the top of the target.
pub const NON_RECOVERABLE: &str = "HAUL-ELM-NON-RECOVERABLE";

/// The parts Phase One copies, in order, each with the filter rules that shape it.
pub const PHASE_ONE: [(&str, &[&str]); 4] = [
    (LAYERS, &[]),
    (TEMPLATES, &[]),
    (CONNECTORS, &["/*/cache/"]),
    (AGENTS, &[]),
];

/// One layer as a scan sees it: what tells a changed layer from an unchanged one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerStamp {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
}

/// The layers of a source, by file name.
pub type Inventory = BTreeMap<String, LayerStamp>;

/// Scans `source/layers` (missing: no layers).
pub fn layers(source: &Path) -> Result<Inventory, ElmError> {
    let dir = source.join(LAYERS);
    let mut out = Inventory::new();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(ElmError::local(&dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| ElmError::local(&dir, e))?;
        let meta = entry
            .metadata()
            .map_err(|e| ElmError::local(entry.path(), e))?;
        if !meta.is_file() {
            continue;
        }
        out.insert(
            entry.file_name().to_string_lossy().into_owned(),
            LayerStamp {
                size: meta.len(),
                mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            },
        );
    }
    Ok(out)
}

/// Sizes of a local tree.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    /// Apparent bytes of regular files.
    pub bytes: u64,
    /// Bytes allocated on disk.
    pub allocated: u64,
}

/// Walks `path` (missing: zero), skipping directories named by `skip` (relative paths).
pub fn usage(path: &Path, skip_cache_dirs: bool) -> Result<Usage, ElmError> {
    let mut u = Usage::default();
    walk(path, skip_cache_dirs, 0, &mut u)?;
    Ok(u)
}

fn walk(path: &Path, skip_cache: bool, depth: u32, u: &mut Usage) -> Result<(), ElmError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ElmError::local(path, e)),
    };
    if meta.is_file() {
        u.bytes += meta.len();
        u.allocated += meta.blocks() * 512;
    } else if meta.is_dir() {
        for entry in fs::read_dir(path).map_err(|e| ElmError::local(path, e))? {
            let entry = entry.map_err(|e| ElmError::local(path, e))?;
            // A connector's cache sits at connectors/<name>/cache: depth 1 below the part.
            if skip_cache && depth == 1 && entry.file_name() == CACHE {
                continue;
            }
            walk(&entry.path(), skip_cache, depth + 1, u)?;
        }
    }
    Ok(())
}

/// The share a config names (first line, trimmed), if the file exists.
pub fn read_share(source: &Path) -> Result<Option<String>, ElmError> {
    let path = source.join(SHARE);
    match fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text.lines().next().unwrap_or("").trim().to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ElmError::local(&path, e)),
    }
}
