//! Client tokens: the shared secret a client presents after the TLS handshake.

use std::fmt;
use std::io;
use std::path::Path;

use subtle::ConstantTimeEq;

use crate::NetError;
use crate::files::{create_private_dir, read_secret_if_exists, write_new};

/// What a token file is called in [`NetError::ExposedSecret`].
const TOKEN_FILE: &str = "token file";

/// A client token.
///
/// Comparison is constant time (a timing side channel must not reveal how many leading bytes
/// of a guess were right), and `Debug` never prints the secret.
#[derive(Clone)]
pub struct Token(Vec<u8>);

impl Token {
    /// A token from raw bytes, with trailing whitespace and newlines removed (token files are
    /// usually written by editors and `echo`, which add a newline).
    pub fn from_bytes(b: &[u8]) -> Token {
        let end = b
            .iter()
            .rposition(|c| !c.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        Token(b[..end].to_vec())
    }

    /// The secret bytes, to send on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Constant-time comparison with bytes received from a peer. Only the length can leak.
    pub fn ct_eq(&self, other: &[u8]) -> bool {
        self.0.as_slice().ct_eq(other).into()
    }

    /// Reads a token file. An empty file (or one holding only whitespace) is an error, and so
    /// is a file that group or others may access ([`NetError::ExposedSecret`]).
    pub fn load(path: &Path) -> Result<Token, NetError> {
        match read_secret_if_exists(path, TOKEN_FILE)? {
            Some(data) => Token::from_file_data(path, &data),
            None => Err(NetError::io(
                path,
                "read token file",
                io::Error::new(io::ErrorKind::NotFound, "no such file; check --token-file"),
            )),
        }
    }

    /// Returns the token stored at `path` with `false`, or generates 32 random bytes,
    /// hex-encoded, writes them to a new file with mode 0600 (the parent directory is created
    /// 0700) and returns the token with `true`. An existing file that group or others may
    /// access is refused, not replaced ([`NetError::ExposedSecret`]).
    pub fn load_or_generate(path: &Path) -> Result<(Token, bool), NetError> {
        if let Some(data) = read_secret_if_exists(path, TOKEN_FILE)? {
            return Ok((Token::from_file_data(path, &data)?, false));
        }
        let secret: [u8; 32] = rand::random();
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        if let Some(parent) = path.parent() {
            create_private_dir(parent)?;
        }
        match write_new(path, format!("{hex}\n").as_bytes(), 0o600) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "generated a new client token");
                Ok((Token(hex.into_bytes()), true))
            }
            // Someone else created it between our read and our write: theirs wins.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok((Token::load(path)?, false)),
            Err(e) => Err(NetError::io(path, "create token file", e)),
        }
    }

    fn from_file_data(path: &Path, data: &[u8]) -> Result<Token, NetError> {
        let token = Token::from_bytes(data);
        if token.0.is_empty() {
            return Err(NetError::BadToken {
                path: path.to_path_buf(),
                reason: "the file is empty; put the token the server printed in it, or delete \
                         the file on the server to generate a new one"
                    .to_owned(),
            });
        }
        Ok(token)
    }
}

impl PartialEq for Token {
    fn eq(&self, other: &Token) -> bool {
        self.ct_eq(&other.0)
    }
}

impl Eq for Token {}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token(<{} bytes redacted>)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn from_bytes_trims_trailing_whitespace_only() {
        assert_eq!(Token::from_bytes(b" abc \r\n\t\n").as_bytes(), b" abc");
        assert_eq!(Token::from_bytes(b"\n\n").as_bytes(), b"");
    }

    #[test]
    fn ct_eq_and_partial_eq() {
        let t = Token::from_bytes(b"secret\n");
        assert!(t.ct_eq(b"secret"));
        assert!(!t.ct_eq(b"secreT"));
        assert!(!t.ct_eq(b"secret2"));
        assert!(!t.ct_eq(b"secre"));
        assert!(!t.ct_eq(b""));
        assert_eq!(t, Token::from_bytes(b"secret"));
        assert_ne!(t, Token::from_bytes(b"other"));
    }

    #[test]
    fn debug_hides_the_secret() {
        let shown = format!("{:?}", Token::from_bytes(b"hunter2hunter2"));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn load_or_generate_creates_0600_then_reuses() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("new-dir/token");
        let (first, created) = Token::load_or_generate(&path).unwrap();
        assert!(created);
        assert_eq!(first.as_bytes().len(), 64);
        assert!(first.as_bytes().iter().all(|c| c.is_ascii_hexdigit()));
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let parent = std::fs::metadata(path.parent().unwrap()).unwrap();
        assert_eq!(parent.permissions().mode() & 0o777, 0o700);

        let (second, created) = Token::load_or_generate(&path).unwrap();
        assert!(!created);
        assert_eq!(second, first);
        assert_eq!(Token::load(&path).unwrap(), first);
    }

    #[test]
    fn load_errors_name_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let empty = tmp.path().join("empty-token");
        std::fs::write(&empty, "\n").unwrap();
        std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = Token::load(&empty).unwrap_err();
        assert!(matches!(err, NetError::BadToken { .. }));
        assert!(err.to_string().contains("empty-token"), "{err}");
        // An empty file is not silently replaced by load_or_generate either.
        assert!(Token::load_or_generate(&empty).is_err());

        let missing = tmp.path().join("missing-token");
        let err = Token::load(&missing).unwrap_err();
        assert!(err.to_string().contains("missing-token"), "{err}");
    }
}
