//! The server's certificate and private key, self-signed and identified by fingerprint.

use std::fmt;
use std::io;
use std::path::Path;

use crate::files::{create_private_dir, read_if_exists, read_secret_if_exists, write_new};
use crate::{Fingerprint, NetError};

const CERT_FILE: &str = "cert.der";
const KEY_FILE: &str = "key.der";

/// The server's certificate and private key (both DER; the key is PKCS#8).
///
/// Clients never check names or issuers, only [`Identity::fingerprint`], so a self-signed
/// certificate is all a server needs.
#[derive(Clone)]
pub struct Identity {
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
    /// SHA-256 of the certificate; what clients pin.
    pub fingerprint: Fingerprint,
}

impl Identity {
    /// Loads `dir/cert.der` and `dir/key.der`, or, when neither exists, creates a self-signed
    /// certificate (subject "haul") and stores it (key mode 0600, `dir` created 0700).
    /// Returns the identity and whether it was created now. A key that group or others may
    /// access is refused ([`NetError::ExposedSecret`]).
    pub fn load_or_create(dir: &Path) -> Result<(Identity, bool), NetError> {
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        let cert = read_if_exists(&cert_path)?;
        let key = read_secret_if_exists(&key_path, "private key")?;
        match (cert, key) {
            (Some(cert_der), Some(key_der)) => {
                let identity = Identity::from_der(cert_der, key_der);
                identity.check(dir)?;
                Ok((identity, false))
            }
            (None, None) => {
                let identity = Identity::ephemeral()?;
                create_private_dir(dir)?;
                // Key first: a crash in between leaves a key without a certificate, which the
                // next start reports instead of silently pairing a new cert with an old key.
                write_new(&key_path, &identity.key_der, 0o600)
                    .map_err(|e| creation_error(dir, &key_path, e))?;
                write_new(&cert_path, &identity.cert_der, 0o644)
                    .map_err(|e| creation_error(dir, &cert_path, e))?;
                tracing::info!(dir = %dir.display(), fingerprint = %identity.fingerprint, "created server identity");
                Ok((identity, true))
            }
            (Some(_), None) => Err(NetError::BadIdentity {
                dir: dir.to_path_buf(),
                reason: format!("{CERT_FILE} exists but {KEY_FILE} is missing"),
            }),
            (None, Some(_)) => Err(NetError::BadIdentity {
                dir: dir.to_path_buf(),
                reason: format!("{KEY_FILE} exists but {CERT_FILE} is missing"),
            }),
        }
    }

    /// A fresh identity held only in memory (for `haul copy`'s embedded receiver).
    pub fn ephemeral() -> Result<Identity, NetError> {
        let generated = rcgen::generate_simple_self_signed(vec!["haul".to_owned()])
            .map_err(|e| NetError::Certificate(e.to_string()))?;
        Ok(Identity::from_der(
            generated.cert.der().to_vec(),
            generated.signing_key.serialize_der(),
        ))
    }

    /// The certificate, DER-encoded.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    pub(crate) fn key_der(&self) -> &[u8] {
        &self.key_der
    }

    fn from_der(cert_der: Vec<u8>, key_der: Vec<u8>) -> Identity {
        let fingerprint = Fingerprint::of_der(&cert_der);
        Identity {
            cert_der,
            key_der,
            fingerprint,
        }
    }

    /// Catches a corrupt or mismatched pair at load time, where the error can name the
    /// directory, rather than later as an opaque TLS failure.
    fn check(&self, dir: &Path) -> Result<(), NetError> {
        crate::tls::server_crypto(self)
            .map(drop)
            .map_err(|e| NetError::BadIdentity {
                dir: dir.to_path_buf(),
                reason: format!("the certificate and key cannot be used together ({e})"),
            })
    }
}

fn creation_error(dir: &Path, path: &Path, e: io::Error) -> NetError {
    if e.kind() == io::ErrorKind::AlreadyExists {
        NetError::BadIdentity {
            dir: dir.to_path_buf(),
            reason: format!(
                "{} appeared while a new identity was being created (two servers starting at once?)",
                path.display()
            ),
        }
    } else {
        NetError::io(path, "create", e)
    }
}

impl fmt::Debug for Identity {
    // The key stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn load_or_create_persists_and_reloads() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("conf/haul");
        let (first, created) = Identity::load_or_create(&dir).unwrap();
        assert!(created);
        assert_eq!(first.fingerprint, Fingerprint::of_der(first.cert_der()));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
        assert_eq!(mode(&dir), 0o700);

        let (second, created) = Identity::load_or_create(&dir).unwrap();
        assert!(!created);
        assert_eq!(second.fingerprint, first.fingerprint);
        assert_eq!(second.key_der(), first.key_der());
    }

    #[test]
    fn ephemeral_identities_differ_and_hide_the_key_in_debug() {
        let a = Identity::ephemeral().unwrap();
        let b = Identity::ephemeral().unwrap();
        assert_ne!(a.fingerprint, b.fingerprint);
        let shown = format!("{a:?}");
        assert!(shown.contains(&a.fingerprint.to_string()));
        assert!(!shown.contains("key_der"));
    }

    #[test]
    fn half_or_mismatched_identity_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (_, _) = Identity::load_or_create(dir).unwrap();
        // Replace the key with another identity's key: the pair no longer matches.
        let other = Identity::ephemeral().unwrap();
        std::fs::write(dir.join(KEY_FILE), other.key_der()).unwrap();
        let err = Identity::load_or_create(dir).unwrap_err();
        assert!(matches!(err, NetError::BadIdentity { .. }), "{err:?}");

        std::fs::remove_file(dir.join(KEY_FILE)).unwrap();
        let err = Identity::load_or_create(dir).unwrap_err();
        assert!(err.to_string().contains("key.der is missing"), "{err}");
    }
}
