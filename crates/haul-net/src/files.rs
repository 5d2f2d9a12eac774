//! Small file helpers shared by identity, token and known-hosts code.
//!
//! Secrets (private key, token) are created with mode 0600 inside directories created 0700,
//! and always with `create_new`, so an existing file is never truncated or overwritten. Secrets
//! found accessible by group or others are refused when loaded ([`read_secret_if_exists`]).

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
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

/// Reads a whole secret file (token, private key), or `Ok(None)` if it does not exist.
///
/// Like ssh with an unprotected private key, a file that group or others may read or write is
/// refused with [`NetError::ExposedSecret`], which names the `chmod` to run. The mode is taken
/// from the opened file (`fstat`), so it is the file actually read that was checked.
pub(crate) fn read_secret_if_exists(
    path: &Path,
    what: &'static str,
) -> Result<Option<Vec<u8>>, NetError> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(NetError::io(path, "open", e)),
    };
    let meta = file.metadata().map_err(|e| NetError::io(path, "stat", e))?;
    if meta.mode() & 0o077 != 0 {
        return Err(NetError::ExposedSecret {
            path: path.to_path_buf(),
            mode: meta.mode() & 0o7777,
            what,
        });
    }
    let mut data = Vec::new();
    file.read_to_end(&mut data)
        .map_err(|e| NetError::io(path, "read", e))?;
    Ok(Some(data))
}
