//! The one error type of this crate.
//!
//! Every variant carries its context as fields (the address, the file, the operation) and its
//! message says what went wrong and what an administrator can do about it. [`NetError::is_retryable`]
//! tells the engine's resume logic whether trying again could help.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::Fingerprint;

/// Why setting up a QUIC endpoint or connection failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// No QUIC handshake completed with the server in time (nothing answered, or the path
    /// dropped the packets).
    #[error(
        "cannot reach {addr}: {details}; is `haul serve` running there? is UDP port {} open \
         in the firewalls between here and there?",
        .addr.port()
    )]
    Unreachable {
        /// The server address we tried.
        addr: SocketAddr,
        /// What was observed (timeout, refused, ...).
        details: String,
    },

    /// The server presented a certificate other than the one we trust for it.
    #[error("{}", mismatch_message(.host, .expected, .got, .known_hosts.as_deref()))]
    FingerprintMismatch {
        /// The `HOST:PORT` we connected to.
        host: String,
        /// The fingerprint we trust (pinned or recorded in known-hosts).
        expected: Fingerprint,
        /// The fingerprint the server presented.
        got: Fingerprint,
        /// The known-hosts file holding `expected`, if that is where it came from.
        known_hosts: Option<PathBuf>,
    },

    /// The QUIC/TLS handshake reached the server but failed for another reason.
    #[error(
        "QUIC handshake with {addr} failed: {source}; check that both sides run compatible \
         haul versions (ALPN `haul/1`) and see the server's log"
    )]
    Handshake {
        /// The server address.
        addr: SocketAddr,
        /// What quinn reported.
        source: quinn::ConnectionError,
    },

    /// Building the TLS configuration failed (bad key or certificate material, or a bug).
    #[error("TLS setup failed: {0}")]
    Tls(String),

    /// Generating a self-signed certificate failed.
    #[error("cannot generate a self-signed certificate: {0}")]
    Certificate(String),

    /// A file or directory operation failed.
    #[error("cannot {op} {}: {source}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What we were doing ("read", "create", ...).
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },

    /// A UDP socket could not be opened or bound.
    #[error(
        "cannot bind UDP socket on {addr}: {source}; is another process already using that \
         port, or is the address not configured on this host?"
    )]
    Bind {
        /// The local address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },

    /// A fingerprint given by the user (or found in a file) does not parse.
    #[error("{0}")]
    BadFingerprint(String),

    /// A token file exists but cannot be used.
    #[error("token file {}: {reason}", .path.display())]
    BadToken {
        /// The token file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        reason: String,
    },

    /// A line of the known-hosts file cannot be parsed. We refuse rather than skip it: a
    /// skipped line for this host would silently turn a pinned host back into trust on first use.
    #[error(
        "known-hosts file {}, line {line}: {reason}; fix or delete that line",
        .path.display()
    )]
    BadKnownHosts {
        /// The known-hosts file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },

    /// The identity directory holds only one of `cert.der` and `key.der`, or a pair that does
    /// not belong together.
    #[error(
        "server identity in {}: {reason}; remove both cert.der and key.der there to generate a \
         new identity (clients will then see a new fingerprint)",
        .dir.display()
    )]
    BadIdentity {
        /// The identity directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A secret file (token or private key) is readable or writable by group or others. Like
    /// ssh's "UNPROTECTED PRIVATE KEY FILE", it is refused rather than used: other users may
    /// already have copied it.
    #[error(
        "UNPROTECTED SECRET FILE: permissions {mode:04o} for {what} {} are too open; it must \
         not be accessible by other users. Run `chmod 600 {}` (and, if other users may have \
         read it, replace the secret)",
        .path.display(),
        shell_quote(.path)
    )]
    ExposedSecret {
        /// The secret file.
        path: PathBuf,
        /// Its permission bits (`mode & 0o7777`).
        mode: u32,
        /// What it holds ("token file", "private key").
        what: &'static str,
    },

    /// The `HOST:PORT` key for known-hosts cannot be stored in the file.
    #[error(
        "`{0}` cannot be used as a known-hosts key: it must be non-empty and contain no whitespace"
    )]
    BadHostKey(String),
}

impl NetError {
    /// Whether trying the same operation again later could succeed without anyone changing
    /// configuration: true for network trouble, false for trust, file and setup problems.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            NetError::Unreachable { .. } | NetError::Handshake { .. }
        )
    }

    pub(crate) fn io(path: &Path, op: &'static str, source: io::Error) -> NetError {
        NetError::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    }
}

/// `path` as one shell word, so the `chmod` in a message can be pasted as is (a leading `-`
/// gets `./` so that it is not taken for an option).
fn shell_quote(path: &Path) -> String {
    let mut text = path.display().to_string();
    if text.starts_with('-') {
        text.insert_str(0, "./");
    }
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+,:@%=".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        text
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

fn mismatch_message(
    host: &str,
    expected: &Fingerprint,
    got: &Fingerprint,
    known_hosts: Option<&Path>,
) -> String {
    let head = format!(
        "the server at {host} presented certificate {got}, but {expected} is trusted for it. \
         This is a possible man-in-the-middle attack; the connection was refused"
    );
    match known_hosts {
        Some(file) => format!(
            "{head}. If the server's certificate was legitimately regenerated, remove the line \
             for {host} from {}",
            file.display()
        ),
        None => format!(
            "{head}. If the server's certificate was legitimately regenerated, ask its \
             administrator for the new fingerprint (`haul serve` prints it) and pin that one"
        ),
    }
}
