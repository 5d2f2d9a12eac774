//! QUIC endpoints for haul: certificates, trust, tokens and transport tuning.
//!
//! This crate owns everything about how two haul peers find and trust each other over QUIC
//! (quinn + rustls, TLS 1.3 only, ALPN [`ALPN`]). The engine opens streams on the
//! [`quinn::Connection`]s it hands out; what travels on them is `haul-proto`'s business.
//!
//! # Main types
//! - [`Identity`]: the server's self-signed certificate and key, stored in the config directory
//!   ([`default_config_dir`]) or held in memory for `haul copy`.
//! - [`Fingerprint`]: SHA-256 of a certificate, the only thing a client trusts. Certificate
//!   names, issuers and dates are ignored; the handshake signature is still verified.
//! - [`Trust`]: a pinned fingerprint, or a known-hosts file with trust on first use.
//! - [`Token`]: the client's shared secret, compared in constant time, never printed.
//! - [`server_endpoint`], [`connect`] and [`transport_config`]: endpoints with windows and
//!   stream limits tuned for bulk transfer, loss-tolerant congestion control ([`Congestion`],
//!   [`connect_with`]), 32 MiB socket buffers (with a warning naming the sysctl when the
//!   kernel caps them), and 9-64 KB datagrams when the peer is on this host.
//! - [`NetError`]: every failure, with its context and what to do about it.
//!
//! # Example
//! ```
//! use haul_net::{Identity, Trust, connect, server_endpoint};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # tokio::runtime::Runtime::new()?.block_on(async {
//! let identity = Identity::ephemeral()?;
//! let server = server_endpoint("127.0.0.1:0".parse()?, &identity)?;
//! let addr = server.local_addr()?;
//! tokio::spawn(async move {
//!     if let Some(incoming) = server.accept().await {
//!         let _connection = incoming.await;
//!     }
//! });
//! // The client trusts exactly the certificate the server was given.
//! let connected = connect(addr, &addr.to_string(), &Trust::Pinned(identity.fingerprint)).await?;
//! assert_eq!(connected.fingerprint, identity.fingerprint);
//! # Ok(())
//! # })
//! # }
//! ```
//!
//! # Layout
//! `fingerprint`, `identity`, `token`, `known_hosts` (file format), `tls` (rustls configs and
//! the fingerprint verifier), `endpoint` (transport, server and client), `files` (0600/0700
//! file helpers), `error`.
//!
//! # Must not depend on
//! Any other haul crate. Nothing here prints to the terminal: results and errors are returned,
//! and diagnostics go through `tracing`.

pub mod congestion;
mod endpoint;
mod error;
mod files;
mod fingerprint;
mod identity;
mod known_hosts;
mod tls;
mod token;

#[cfg(test)]
mod tests;

use std::env;
use std::path::PathBuf;

pub use endpoint::{
    Congestion, Connected, Trust, connect, connect_from, connect_with, server_endpoint,
    transport_config, transport_config_with,
};
pub use error::NetError;
pub use fingerprint::Fingerprint;
pub use identity::Identity;
pub use token::{BINDING_LEN, Token, channel_binding, present};

/// The ALPN protocol identifier of haul's wire protocol, version 1.
pub const ALPN: &[u8] = b"haul/1";

/// The configuration directory: `$HAUL_CONFIG_DIR`, else `$XDG_CONFIG_HOME/haul`, else
/// `$HOME/.config/haul` (empty variables count as unset; with no `HOME` at all, the relative
/// path `.config/haul`).
pub fn default_config_dir() -> PathBuf {
    let var = |name: &str| {
        env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("HAUL_CONFIG_DIR") {
        return dir;
    }
    if let Some(xdg) = var("XDG_CONFIG_HOME") {
        return xdg.join("haul");
    }
    var("HOME").unwrap_or_default().join(".config").join("haul")
}
