//! The known-hosts file: one `HOST:PORT sha256:HEX` line per server trusted on first use.
//!
//! Blank lines and lines starting with `#` are ignored. A malformed line is an error, not
//! skipped, because skipping the line for the host being contacted would quietly downgrade a
//! pinned host to trust on first use.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use crate::files::{create_private_dir, read_if_exists};
use crate::{Fingerprint, NetError};

/// Rejects keys that would corrupt the file's line format.
pub(crate) fn check_host_key(host_key: &str) -> Result<(), NetError> {
    if host_key.is_empty() || host_key.chars().any(char::is_whitespace) {
        return Err(NetError::BadHostKey(host_key.to_owned()));
    }
    Ok(())
}

/// The fingerprint recorded for `host_key`, if any (the first matching line wins).
pub(crate) fn lookup(path: &Path, host_key: &str) -> Result<Option<Fingerprint>, NetError> {
    let Some(data) = read_if_exists(path)? else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&data);
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason: String| NetError::BadKnownHosts {
            path: path.to_path_buf(),
            line: index + 1,
            reason,
        };
        let mut fields = line.split_whitespace();
        let (Some(host), Some(fp), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(bad("expected `HOST:PORT sha256:HEX`".to_owned()));
        };
        let fp: Fingerprint = fp.parse().map_err(|e: NetError| bad(e.to_string()))?;
        if host == host_key {
            return Ok(Some(fp));
        }
    }
    Ok(None)
}

/// Appends `host_key fingerprint` to the file, creating it (and its directory, 0700).
pub(crate) fn append(path: &Path, host_key: &str, fp: &Fingerprint) -> Result<(), NetError> {
    check_host_key(host_key)?;
    if let Some(parent) = path.parent() {
        create_private_dir(parent)?;
    }
    // A file whose last line lacks its newline (hand-edited) would otherwise get our entry
    // glued onto that line.
    let needs_newline =
        read_if_exists(path)?.is_some_and(|d| d.last().is_some_and(|&c| c != b'\n'));
    let line = format!("{}{host_key} {fp}\n", if needs_newline { "\n" } else { "" });
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| NetError::io(path, "open known-hosts file", e))?;
    // One write call with O_APPEND: concurrent appenders do not interleave within a line.
    file.write_all(line.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| NetError::io(path, "append to known-hosts file", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_then_lookup() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("d/known_hosts");
        let a = Fingerprint::of_der(b"a");
        let b = Fingerprint::of_der(b"b");
        assert_eq!(lookup(&path, "h:1").unwrap(), None);
        append(&path, "h:1", &a).unwrap();
        append(&path, "[::1]:2", &b).unwrap();
        assert_eq!(lookup(&path, "h:1").unwrap(), Some(a));
        assert_eq!(lookup(&path, "[::1]:2").unwrap(), Some(b));
        assert_eq!(lookup(&path, "h:2").unwrap(), None);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("h:1 {a}\n[::1]:2 {b}\n"));
    }

    #[test]
    fn comments_missing_newline_and_bad_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("known_hosts");
        let a = Fingerprint::of_der(b"a");
        std::fs::write(&path, format!("# comment\n\nx:1 {a}")).unwrap();
        append(&path, "y:2", &a).unwrap();
        assert_eq!(lookup(&path, "y:2").unwrap(), Some(a));
        assert_eq!(lookup(&path, "x:1").unwrap(), Some(a));

        std::fs::write(&path, format!("x:1 {a}\nz:3 sha256:nothex\n")).unwrap();
        let err = lookup(&path, "q:1").unwrap_err();
        assert!(
            matches!(err, NetError::BadKnownHosts { line: 2, .. }),
            "{err:?}"
        );
        assert!(append(&path, "bad key", &a).is_err());
    }
}
