//! Client tokens: the shared secret a client proves it holds after the TLS handshake.
//!
//! Over QUIC the token itself never travels: the client sends a proof, a BLAKE3 keyed hash
//! (a MAC) of the connection's TLS exporter value under a key derived from the token
//! ([`Token::presented`]). The exporter is different for every TLS session, so a proof seen by
//! a relay (or a man in the middle holding a certificate the client wrongly trusted) is
//! worthless on any other connection, and the token cannot be recovered from it. Links
//! without a TLS session (an in-process copy) present the token as it is.

use std::fmt;
use std::io;
use std::path::Path;

use subtle::ConstantTimeEq;

use crate::NetError;
use crate::files::{create_private_dir, read_secret_if_exists, write_new};

/// The length of a channel binding ([`channel_binding`]) and of a token proof.
pub const BINDING_LEN: usize = 32;

/// The exporter label of the channel binding (RFC 5705 / RFC 8446 section 7.5).
const EXPORTER_LABEL: &[u8] = b"EXPORTER-haul-token-proof";

/// The context string the proof key is derived under.
const PROOF_CONTEXT: &str = "haul 2026-12 token proof v1";

/// What identifies one TLS session on both of its ends and nowhere else: keying material
/// exported from it. `None` if the connection cannot export (it always can once the
/// handshake is done).
pub fn channel_binding(conn: &quinn::Connection) -> Option<[u8; BINDING_LEN]> {
    let mut out = [0u8; BINDING_LEN];
    conn.export_keying_material(&mut out, EXPORTER_LABEL, b"")
        .ok()
        .map(|()| out)
}

/// What a client with `token` presents on a link with `binding`: the proof bound to that
/// TLS session, or, with no binding (an in-process link), the token itself.
pub fn present(token: &[u8], binding: Option<&[u8; BINDING_LEN]>) -> Vec<u8> {
    match binding {
        Some(binding) => {
            let key = blake3::derive_key(PROOF_CONTEXT, token);
            blake3::keyed_hash(&key, binding).as_bytes().to_vec()
        }
        None => token.to_vec(),
    }
}

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

    /// What a client holding this token presents on a link with `binding` ([`present`]).
    pub fn presented(&self, binding: Option<&[u8; BINDING_LEN]>) -> Vec<u8> {
        present(&self.0, binding)
    }

    /// Whether `presented`, received on a link with `binding`, proves this token, in constant
    /// time. With a binding only a proof for that very session matches: the bare token (an
    /// older client, or a replay) and a proof made for another connection do not.
    pub fn proven_by(&self, presented: &[u8], binding: Option<&[u8; BINDING_LEN]>) -> bool {
        self.presented(binding).as_slice().ct_eq(presented).into()
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
    }

    #[test]
    fn a_proof_holds_for_its_own_session_only() {
        let token = Token::from_bytes(b"secret");
        let (one, two) = ([1u8; BINDING_LEN], [2u8; BINDING_LEN]);
        let proof = token.presented(Some(&one));
        assert_eq!(proof.len(), BINDING_LEN);
        assert!(token.proven_by(&proof, Some(&one)));
        assert!(
            !token.proven_by(&proof, Some(&two)),
            "replayed on another session"
        );
        assert!(
            !token.proven_by(b"secret", Some(&one)),
            "the bare token over TLS"
        );
        assert!(!Token::from_bytes(b"other").proven_by(&proof, Some(&one)));
        assert!(!proof.windows(6).any(|w| w == b"secret"));
        // Without a session (in-process), the token itself.
        assert!(token.proven_by(b"secret", None));
        assert!(!token.proven_by(&proof, None));
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
