//! rustls configurations: TLS 1.3 only, ring provider, ALPN `haul/1`, and a server-certificate
//! verifier that trusts a fingerprint instead of a CA and a name.

use std::sync::{Arc, Mutex, PoisonError};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

use crate::{ALPN, Fingerprint, Identity, NetError};

/// ring's provider with AES-128-GCM preferred over AES-256-GCM (ring's default order): every
/// byte of a transfer is sealed and opened once, and the 10-round cipher costs about a fifth
/// less CPU than the 14-round one on a link the CPU limits. Both are TLS 1.3's standard
/// suites; a peer that prefers another still gets it, as the client's order decides.
fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

/// The QUIC server crypto for `identity`.
pub(crate) fn server_crypto(identity: &Identity) -> Result<QuicServerConfig, NetError> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.key_der().to_vec()));
    let cert = CertificateDer::from(identity.cert_der().to_vec());
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(|e| NetError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    QuicServerConfig::try_from(config).map_err(|e| NetError::Tls(e.to_string()))
}

/// What the verifier saw during the handshake; read by `connect` to turn a TLS failure into a
/// clear [`NetError::FingerprintMismatch`] and to learn the fingerprint for first use.
#[derive(Default)]
pub(crate) struct Seen(Mutex<Option<Fingerprint>>);

impl Seen {
    pub(crate) fn get(&self) -> Option<Fingerprint> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, fp: Fingerprint) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(fp);
    }
}

/// The QUIC client crypto trusting only `expected` (or, with `None`, any certificate whose
/// holder proves possession of its key: trust on first use). The fingerprint seen is recorded
/// in `seen` either way.
pub(crate) fn client_crypto(
    expected: Option<Fingerprint>,
    seen: Arc<Seen>,
) -> Result<QuicClientConfig, NetError> {
    let provider = provider();
    let verifier = FingerprintVerifier {
        expected,
        seen,
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    QuicClientConfig::try_from(config).map_err(|e| NetError::Tls(e.to_string()))
}

/// Trusts a server certificate by its SHA-256 alone. Names, issuers and validity dates are
/// ignored: the fingerprint was exchanged out of band, which is stronger than any of them.
/// The handshake signature is still verified, so the peer must hold the certificate's key.
#[derive(Debug)]
struct FingerprintVerifier {
    expected: Option<Fingerprint>,
    seen: Arc<Seen>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl std::fmt::Debug for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Seen").field(&self.get()).finish()
    }
}

impl ServerCertVerifier for FingerprintVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = Fingerprint::of_der(end_entity);
        self.seen.set(got);
        match self.expected {
            Some(expected) if expected != got => Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            )),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Unreachable with TLS 1.3 only configured; refuse rather than trust blindly.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_128_gcm_is_offered_first_and_the_others_stay() {
        let suites: Vec<_> = provider().cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(suites[0], rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        assert!(suites.contains(&rustls::CipherSuite::TLS13_AES_256_GCM_SHA384));
        assert!(suites.contains(&rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256));
    }
}
