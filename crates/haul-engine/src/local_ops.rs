//! The remote operations of [`crate::remote`] on a local directory, and read-only looks at a
//! local tree.
//!
//! A workflow whose target may be a local path or a serving host wants one code path for
//! both: [`open_local`] gives a [`Remote`] whose operations (df, stat, ls, du, manifest, rm,
//! mv, put, leases, ...) run on a local receiver root through an in-process host, exactly as
//! `haul serve` would run them (the same confinement, the same lease checks, the same
//! `.haul` state). [`local_manifest`] and [`local_tree_size`] answer the manifest and du
//! questions for a *source* tree without opening it as a receiver root: they never write into
//! it (a backup area stays untouched).

use std::path::Path;
use std::sync::Arc;

use haul_manifest::ScanOptions;
use haul_net::Token;
use haul_proto::EntryKind;
use haul_store::RelPath;

use crate::error::EngineError;
use crate::receiver::{Grant, ReceiverConfig, Scope, receive};
use crate::remote::{ManifestEntry, Remote, TreeSize};
use crate::transport::Link;

/// Opens an operations session on the local directory `dir` (created if missing, as a
/// receiver root is), acting for `holder` (the holder of the leases it takes and the writer
/// leases are checked against). The in-process host ends when the handle is closed or dropped.
pub async fn open_local(dir: &Path, holder: Option<&str>) -> Result<Remote, EngineError> {
    std::fs::create_dir_all(dir).map_err(|e| {
        EngineError::Store(haul_store::StoreError::Io {
            path: dir.to_path_buf(),
            op: "create the directory",
            source: e,
        })
    })?;
    let root = crate::jobs::open_receiver_root(dir)?;
    let token = Token::from_bytes(crate::jobs::random_token().as_bytes());
    let config = Arc::new(ReceiverConfig::with_grants(
        root,
        vec![Grant {
            token: token.clone(),
            subdir: RelPath::root(),
            scope: Scope::ReadWrite,
            privileged: false,
        }],
    ));
    let (client, server) = crate::local_link::pair();
    tokio::spawn(async move {
        let link: Arc<dyn Link> = Arc::new(server);
        let _ = receive(link, config, "local".into(), crate::progress::no_events()).await;
    });
    Remote::over(Arc::new(client), token.as_bytes(), holder).await
}

fn kind_name(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::File => "file",
        EntryKind::Dir => "dir",
        EntryKind::Symlink => "symlink",
        EntryKind::Fifo => "fifo",
        EntryKind::Socket => "socket",
        EntryKind::CharDev => "char_device",
        EntryKind::BlockDev => "block_device",
        EntryKind::HardLink => "file",
    }
}

/// Every entry of the local tree `dir` except a top-level `.haul`, calling `f` for each with
/// the entry's relative path, kind and size.
fn walk(
    dir: &Path,
    mut f: impl FnMut(&haul_manifest::ScanEntry, String) -> Result<(), EngineError>,
) -> Result<(), EngineError> {
    let filter = haul_manifest::Filter::new()
        .exclude("/.haul")
        .map_err(|e| EngineError::Protocol(e.to_string()))?;
    let options = ScanOptions {
        filter: Some(Arc::new(filter)),
        ..ScanOptions::default()
    };
    for entry in haul_manifest::scan_with(dir, &options) {
        let entry = entry.map_err(|e| EngineError::Source {
            path: e.path().to_path_buf(),
            message: e.to_string(),
        })?;
        let rel = String::from_utf8_lossy(&entry.rel).into_owned();
        f(&entry, rel)?;
    }
    Ok(())
}

/// The manifest of the local tree `dir` (paths relative to it, `""` for `dir` itself), with
/// the BLAKE3 of every regular file, in the form [`Remote::manifest`] answers: what a
/// workflow compares a target against. Reads only; a top-level `.haul` is left out.
pub fn local_manifest(dir: &Path) -> Result<Vec<ManifestEntry>, EngineError> {
    let mut out = Vec::new();
    walk(dir, |entry, path| {
        let blake3 = if entry.kind == EntryKind::File {
            let hash =
                haul_manifest::hash_file(&entry.source).map_err(|e| EngineError::Source {
                    path: entry.source.clone(),
                    message: format!("cannot read it to hash it: {e}"),
                })?;
            Some(haul_manifest::to_hex(&hash))
        } else {
            None
        };
        out.push(ManifestEntry {
            path,
            kind: kind_name(entry.kind).into(),
            size: entry.size,
            blake3,
        });
        Ok(())
    })?;
    Ok(out)
}

/// The size of the local tree `dir` (a top-level `.haul` left out), as [`Remote::du`]
/// answers for a host's tree. `allocated_bytes` counts each inode once.
pub fn local_tree_size(dir: &Path) -> Result<TreeSize, EngineError> {
    use std::os::unix::fs::MetadataExt;
    let mut size = TreeSize::default();
    let mut seen = std::collections::HashSet::new();
    walk(dir, |entry, _| {
        match entry.kind {
            EntryKind::File => {
                size.files += 1;
                size.bytes += entry.size;
                if seen.insert((entry.dev, entry.ino)) {
                    let blocks = std::fs::symlink_metadata(&entry.source)
                        .map(|m| m.blocks() * 512)
                        .unwrap_or(entry.size);
                    size.allocated_bytes += blocks;
                }
            }
            EntryKind::Dir => size.dirs += 1,
            EntryKind::Symlink => size.symlinks += 1,
            _ => size.others += 1,
        }
        Ok(())
    })?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_operations_see_what_a_host_would() {
        let dir = tempfile::tempdir().unwrap();
        let po = dir.path().join("po1");
        std::fs::create_dir_all(po.join("ofuser")).unwrap();
        std::fs::write(po.join("ofuser/user1.db"), b"user one").unwrap();
        std::fs::write(po.join("wphost.db"), b"host").unwrap();

        let mut ops = open_local(&po, Some("job-1")).await.unwrap();
        let du = ops.du("").await.unwrap();
        assert_eq!((du.files, du.bytes), (2, 12));
        let remote: Vec<_> = ops.manifest("").await.unwrap();
        let local = local_manifest(&po).unwrap();
        let key = |m: &[ManifestEntry]| {
            let mut v: Vec<_> = m
                .iter()
                .filter(|e| e.kind == "file")
                .map(|e| (e.path.clone(), e.blake3.clone()))
                .collect();
            v.sort();
            v
        };
        assert_eq!(key(&remote), key(&local));
        assert_eq!(
            local
                .iter()
                .find(|e| e.path == "wphost.db")
                .unwrap()
                .blake3
                .as_deref(),
            Some(blake3::hash(b"host").to_hex().as_str())
        );
        ops.put("probe", b"x").await.unwrap();
        assert!(po.join("probe").exists());
        ops.rm("probe").await.unwrap();
        assert!(!po.join("probe").exists());
        let lease = ops
            .lease_take("", "job-1", "test", std::time::Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(lease.holder, "job-1");
        ops.close().await;

        // Another holder is refused while the lease lasts.
        let mut other = open_local(&po, Some("job-2")).await.unwrap();
        let refused = other.put("x", b"y").await.unwrap_err().to_string();
        assert!(refused.contains("job-1"), "{refused}");
        other.close().await;

        let size = local_tree_size(&po).unwrap();
        assert_eq!((size.files, size.bytes), (2, 12));
        // The manifest never shows the receiver's state.
        assert!(po.join(".haul").exists());
        assert!(local.iter().all(|e| !e.path.starts_with(".haul")));
    }
}
