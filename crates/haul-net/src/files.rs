//! Small file helpers shared by identity, token and known-hosts code.
//!
//! Secrets (private key, token) are created with mode 0600 inside directories created 0700,
//! and always with `create_new`, so an existing file is never truncated or overwritten.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::NetError;

/// Creates `dir` and any missing parents with mode 0700 (existing ones are left as they are).
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), NetError> {
    if dir.as_os_str().is_empty() {
        return Ok(());
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| NetError::io(dir, "create directory", e))
}

/// Writes `data` to a new file at `path` with `mode`; fails with `AlreadyExists` if it exists.
/// On a failed write the partial file is removed so a later run does not load half a secret.
pub(crate) fn write_new(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    let written = file.write_all(data).and_then(|()| file.sync_all());
    if written.is_err() {
        let _ = fs::remove_file(path);
    }
    written
}

/// Reads a whole file, or `Ok(None)` if it does not exist.
pub(crate) fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>, NetError> {
    match fs::read(path) {
        Ok(data) => Ok(Some(data)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(NetError::io(path, "read", e)),
    }
}

/// Logs a warning when a secret file is readable by group or others. Not an error: the
/// administrator may have reasons, but they should hear about it.
pub(crate) fn warn_if_exposed(path: &Path) {
    if let Ok(meta) = fs::metadata(path)
        && meta.mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            mode = format_args!("{:o}", meta.mode() & 0o777),
            "secret file is accessible by other users; run `chmod 600` on it"
        );
    }
}
