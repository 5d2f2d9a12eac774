//! A full file system must surface as StoreError::NoSpace, which the engine turns into a pause.

use std::path::{Path, PathBuf};
use std::process::Command;

use haul_store::{Root, StoreError};

/// Unmounts on drop, so a failing assertion does not leave a mount behind.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn mount_tiny_tmpfs(dir: &Path) -> Option<Mount> {
    if !rustix::process::geteuid().is_root() {
        eprintln!("full_disk: not root, cannot mount a tmpfs; skipping");
        return None;
    }
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(dir)
        .status();
    match status {
        Ok(s) if s.success() => Some(Mount(dir.to_path_buf())),
        other => {
            eprintln!("full_disk: mount -t tmpfs failed ({other:?}); skipping");
            None
        }
    }
}

#[test]
fn full_disk_is_no_space() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_mount) = mount_tiny_tmpfs(dir.path()) else {
        return;
    };
    let root = Root::open(dir.path()).unwrap();
    let free = root.available_bytes().unwrap();
    assert!(free <= 1 << 20, "tmpfs reports {free} bytes free");

    let file = root.create_staging(2 << 20).unwrap();
    let data = vec![0xA5u8; 2 << 20];
    let err = file.write_at(0, &data).unwrap_err();
    assert!(err.is_no_space(), "{err:?}");
    assert!(matches!(&err, StoreError::NoSpace { path } if path == dir.path()));
    let msg = err.to_string();
    assert!(
        msg.contains("expand the storage") && msg.contains("verified data is kept"),
        "{msg}"
    );
    // Dropping the failed file frees its space again.
    drop(file);
    assert!(root.available_bytes().unwrap() >= free);
    drop(root);
}
