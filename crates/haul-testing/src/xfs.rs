//! An XFS file system with reflinks, on a loop device, for tests of copy-on-write sharing.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A sparse image file formatted `mkfs.xfs -m reflink=1` and mounted with `-o loop` (needs
/// root, as CI has); unmounted and its loop device detached on drop.
#[derive(Debug)]
pub struct XfsLoop {
    mount: PathBuf,
    image: PathBuf,
}

impl XfsLoop {
    /// For a test that needs XFS reflinks: `None` (after printing a note saying the test is
    /// skipped) when not running as root; a panic saying to install xfsprogs when running as
    /// root without `mkfs.xfs`; otherwise a file system of `size` bytes mounted on `dir`
    /// (created), its image at `image` (created sparse).
    ///
    /// # Panics
    /// As root: when `mkfs.xfs` is missing, or making or mounting the file system fails.
    pub fn for_test(image: &Path, dir: &Path, size: u64) -> Option<XfsLoop> {
        if !rustix::process::geteuid().is_root() {
            eprintln!(
                "note: not running as root, so no XFS image can be mounted: the reflink \
                 snapshot test is skipped (CI runs it as root)"
            );
            return None;
        }
        let mkfs = mkfs_xfs().unwrap_or_else(|| {
            panic!(
                "mkfs.xfs is missing: install xfsprogs (`apt-get install -y xfsprogs`) to run \
                 the XFS reflink tests (CI installs it)"
            )
        });
        Some(XfsLoop::mount(&mkfs, image, dir, size))
    }

    /// Makes the image with `mkfs` and mounts it on `dir`.
    ///
    /// # Panics
    /// When any step fails.
    fn mount(mkfs: &Path, image: &Path, dir: &Path, size: u64) -> XfsLoop {
        std::fs::File::create(image)
            .and_then(|f| f.set_len(size))
            .unwrap_or_else(|e| panic!("cannot make the image {}: {e}", image.display()));
        run(Command::new(mkfs)
            .args(["-q", "-m", "reflink=1"])
            .arg(image));
        std::fs::create_dir_all(dir).expect("create the mount point");
        run(Command::new("mount")
            .args(["-t", "xfs", "-o", "loop"])
            .arg(image)
            .arg(dir));
        XfsLoop {
            mount: dir.to_path_buf(),
            image: image.to_path_buf(),
        }
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.mount
    }
}

impl Drop for XfsLoop {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.mount)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Still busy (a process of a failed test): detach it from the tree now, the
            // kernel lets it go when the last user does.
            let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        }
        // `mount -o loop` sets autoclear, so the device is usually gone already; detach only
        // devices still backed by this very image (never a number another test reuses).
        if let Ok(out) = Command::new("losetup").arg("-j").arg(&self.image).output() {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some((dev, _)) = line.split_once(':') {
                    let _ = Command::new("losetup").args(["-d", dev]).status();
                }
            }
        }
        let _ = std::fs::remove_file(&self.image);
    }
}

/// `mkfs.xfs` on the PATH or in an sbin directory (not always on a root PATH in containers).
fn mkfs_xfs() -> Option<PathBuf> {
    ["mkfs.xfs", "/usr/sbin/mkfs.xfs", "/sbin/mkfs.xfs"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| match Command::new(p).arg("-V").output() {
            Ok(_) => true,
            Err(e) => e.kind() != ErrorKind::NotFound,
        })
}

/// Runs `cmd`, panicking with its output when it fails.
fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
