//! QUIC endpoints: the tuned transport, the server endpoint and the client `connect`.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use quinn::{ConnectionError, Endpoint, EndpointConfig, IdleTimeout, TransportConfig, VarInt};

use crate::tls::{Seen, client_crypto, server_crypto};
use crate::{Fingerprint, Identity, NetError, known_hosts};

const MIB: u32 = 1024 * 1024;
/// How long a client waits for the handshake before calling the server unreachable.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Requested kernel UDP buffer size: a 40 ms path at 1 Gbit/s holds 5 MB in flight, and bulk
/// QUIC at multi-gigabit rates drops packets with the default ~200 KiB buffers.
const SOCKET_BUFFER: usize = 32 * 1024 * 1024;
/// The name sent in SNI; the verifier ignores names, but rustls needs a syntactically valid one.
const SERVER_NAME: &str = "haul";

/// The congestion controller of a connection (what decides how fast the sender may go).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Congestion {
    /// CUBIC that backs off only for loss that looks like congestion (more than 1% of the
    /// last two round trips' packets), not for scattered random loss: see
    /// [`crate::congestion`]. Keeps a long path with a little loss (a WAN, a VPN) full.
    #[default]
    Tolerant,
    /// quinn's BBR (experimental there): ignores random loss, but overfills router queues.
    Bbr,
    /// CUBIC: loss-based, the kernel's TCP default. Halves its rate on every loss burst,
    /// so 0.1% random loss on a 40 ms path holds it to about 1% of a gigabit link; fair to
    /// TCP flows sharing a congested link.
    Cubic,
}

/// The transport tuned for bulk transfer on fast, long paths: stream receive window 8 MiB,
/// connection receive window 64 MiB, send window 64 MiB (four data streams keep a gigabit path
/// with up to 250 ms of round trip full), 256 concurrent uni streams (one per chunk in flight),
/// 16 bidi streams, keep-alive every 5 s, idle timeout 30 s, and the [`Congestion::Tolerant`]
/// controller.
///
/// Streams are sent one after another, not interleaved packet by packet (`send_fairness`
/// off). quinn drops a connection whose receive buffer for one stream holds more than 1024
/// separate pieces; with every packet carrying a slice of each of five streams, a receiver
/// that fell behind on loopback (its socket buffer overflowing, every other packet lost)
/// reached that on a push of a million small files. Whole packets per stream and an 8 MiB
/// stream window keep the worst case near 650 pieces.
pub fn transport_config() -> TransportConfig {
    transport_config_with(Congestion::default())
}

/// [`transport_config`] with a chosen congestion controller.
pub fn transport_config_with(congestion: Congestion) -> TransportConfig {
    let mut config = TransportConfig::default();
    match congestion {
        Congestion::Tolerant => {
            config.congestion_controller_factory(Arc::new(
                crate::congestion::LossTolerantConfig::default(),
            ));
        }
        Congestion::Bbr => {
            config.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
        }
        Congestion::Cubic => {
            config
                .congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default()));
        }
    }
    config
        .stream_receive_window(VarInt::from_u32(8 * MIB))
        .receive_window(VarInt::from_u32(64 * MIB))
        .send_window(64 * u64::from(MIB))
        .max_concurrent_uni_streams(VarInt::from_u32(256))
        .max_concurrent_bidi_streams(VarInt::from_u32(16))
        .keep_alive_interval(Some(Duration::from_secs(5)))
        .max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(30_000))))
        .send_fairness(false);
    config
}

/// The largest UDP payload every endpoint accepts.
const MAX_UDP_PAYLOAD: u16 = 65_000;
/// The largest UDP payload MTU discovery looks for: ten of them (one GSO batch, quinn's most)
/// stay under the 64 KiB the kernel takes in one send.
const MAX_DISCOVERED_PAYLOAD: u16 = 6_500;

/// MTU discovery up to [`MAX_DISCOVERED_PAYLOAD`] (quinn stops at Ethernet's 1452 by
/// default): loopback and jumbo-frame LANs carry big datagrams, and per-packet work
/// (encryption, acks) is what limits one QUIC connection, so 6.5 KB packets cut the sender's
/// CPU on a 2 GiB push by half. On an ordinary path the probes are lost and it settles at the
/// path's MTU; quinn reads some ordinary loss bursts as an MTU black hole (quinn issue #2791),
/// so discovery retries after a short cooldown.
fn mtu_discovery(config: &mut TransportConfig) {
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_DISCOVERED_PAYLOAD)
        .black_hole_cooldown(Duration::from_secs(5));
    config.mtu_discovery_config(Some(mtu));
}

/// Endpoints accept datagrams up to [`MAX_UDP_PAYLOAD`], whatever size a peer discovers.
fn endpoint_config() -> EndpointConfig {
    let mut config = EndpointConfig::default();
    // Cannot fail: the value is within QUIC's range.
    let _ = config.max_udp_payload_size(MAX_UDP_PAYLOAD);
    config
}

/// A server endpoint bound to `listen`: TLS 1.3 only, ALPN `haul/1`, the tuned transport,
/// presenting `identity`'s certificate. Must be called inside a tokio runtime.
pub fn server_endpoint(listen: SocketAddr, identity: &Identity) -> Result<Endpoint, NetError> {
    let crypto = server_crypto(identity)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config()));
    let socket = bind_udp(listen)?;
    let runtime = Arc::new(quinn::TokioRuntime);
    Endpoint::new(endpoint_config(), Some(config), socket, runtime).map_err(|source| {
        NetError::Bind {
            addr: listen,
            source,
        }
    })
}

/// How the client trusts the server.
#[derive(Clone, Debug)]
pub enum Trust {
    /// Only this exact certificate.
    Pinned(Fingerprint),
    /// A known-hosts file of `HOST:PORT sha256:HEX` lines. An unknown host is trusted on first
    /// use and recorded; a known host presenting a different certificate is refused.
    KnownHosts(PathBuf),
}

/// An established, verified connection.
#[derive(Debug)]
pub struct Connected {
    /// The QUIC connection.
    pub connection: quinn::Connection,
    /// `Some(fp)` when this connection trusted a new host on first use and recorded it.
    pub first_use: Option<Fingerprint>,
    /// The server's fingerprint as seen.
    pub fingerprint: Fingerprint,
    /// The client endpoint the connection runs on. Keep it to call
    /// [`Endpoint::wait_idle`] after closing, so the close reaches the server before exit.
    pub endpoint: Endpoint,
}

/// Connects to `server` from an ephemeral client endpoint bound to the wildcard address of the
/// same family, verifying the server by certificate fingerprint only (names are ignored; the
/// handshake signature is still checked). `host_key` is the `HOST:PORT` string used as the
/// known-hosts key. Gives up after about 10 s with [`NetError::Unreachable`].
pub async fn connect(
    server: SocketAddr,
    host_key: &str,
    trust: &Trust,
) -> Result<Connected, NetError> {
    connect_with(server, host_key, trust, Congestion::default()).await
}

/// [`connect`] with a chosen congestion controller for what this client sends.
pub async fn connect_with(
    server: SocketAddr,
    host_key: &str,
    trust: &Trust,
    congestion: Congestion,
) -> Result<Connected, NetError> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    connect_from(local, server, host_key, trust, congestion).await
}

/// [`connect_with`] from a client endpoint bound to `local` (a chosen source address on a
/// host with several, or in tests a second loopback address).
pub async fn connect_from(
    local: SocketAddr,
    server: SocketAddr,
    host_key: &str,
    trust: &Trust,
    congestion: Congestion,
) -> Result<Connected, NetError> {
    let expected = match trust {
        Trust::Pinned(fp) => Some(*fp),
        Trust::KnownHosts(path) => {
            known_hosts::check_host_key(host_key)?;
            known_hosts::lookup(path, host_key)?
        }
    };
    let known_hosts_file = match trust {
        Trust::Pinned(_) => None,
        Trust::KnownHosts(path) => Some(path.clone()),
    };
    let mismatch = |expected: Fingerprint, got: Fingerprint| NetError::FingerprintMismatch {
        host: host_key.to_owned(),
        expected,
        got,
        known_hosts: known_hosts_file.clone(),
    };

    let seen = Arc::new(Seen::default());
    let mut config = quinn::ClientConfig::new(Arc::new(client_crypto(expected, seen.clone())?));
    let mut transport = transport_config_with(congestion);
    // Only the sender probes: the receiver sends acks and a few control messages.
    mtu_discovery(&mut transport);
    config.transport_config(Arc::new(transport));
    let endpoint = Endpoint::new(
        endpoint_config(),
        None,
        bind_udp(local)?,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| NetError::Bind {
        addr: local,
        source,
    })?;
    let connecting = endpoint
        .connect_with(config, server, SERVER_NAME)
        .map_err(|e| NetError::Unreachable {
            addr: server,
            details: e.to_string(),
        })?;

    let connection = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => {
            // The verifier's refusal surfaces as a generic TLS alert; what it saw tells us why.
            if let (Some(expected), Some(got)) = (expected, seen.get())
                && expected != got
            {
                return Err(mismatch(expected, got));
            }
            return Err(match error {
                ConnectionError::TimedOut => NetError::Unreachable {
                    addr: server,
                    details: "the handshake timed out".to_owned(),
                },
                source => NetError::Handshake {
                    addr: server,
                    source,
                },
            });
        }
        Err(_elapsed) => {
            return Err(NetError::Unreachable {
                addr: server,
                details: format!("no answer within {} s", HANDSHAKE_TIMEOUT.as_secs()),
            });
        }
    };

    let Some(fingerprint) = seen.get() else {
        // Cannot happen: a completed handshake ran the verifier. Refuse rather than trust.
        connection.close(VarInt::from_u32(0), b"certificate not verified");
        return Err(NetError::Tls(
            "handshake completed without certificate verification".to_owned(),
        ));
    };
    let mut first_use = None;
    if let (Trust::KnownHosts(path), None) = (trust, expected) {
        // Re-read: another client may have recorded this host while we were handshaking.
        match known_hosts::lookup(path, host_key)? {
            Some(recorded) if recorded != fingerprint => {
                connection.close(VarInt::from_u32(0), b"certificate mismatch");
                return Err(mismatch(recorded, fingerprint));
            }
            Some(_) => {}
            None => {
                known_hosts::append(path, host_key, &fingerprint)?;
                tracing::info!(host = host_key, %fingerprint, file = %path.display(), "trusted new host on first use");
                first_use = Some(fingerprint);
            }
        }
    }
    Ok(Connected {
        connection,
        first_use,
        fingerprint,
        endpoint,
    })
}

/// Binds a UDP socket and asks for large kernel buffers.
///
/// Bulk QUIC drops packets when the receive buffer overflows while the process is busy, and
/// every drop halves the congestion window. The request is
/// capped by `net.core.rmem_max`/`wmem_max`; a privileged process overrides the cap (the
/// `*_FORCE` options), anyone else gets one warning naming the sysctl to raise.
fn bind_udp(addr: SocketAddr) -> Result<UdpSocket, NetError> {
    use rustix::net::sockopt;
    let socket = UdpSocket::bind(addr).map_err(|source| NetError::Bind { addr, source })?;
    let recv = sockopt::set_socket_recv_buffer_size_force(&socket, SOCKET_BUFFER)
        .or_else(|_| sockopt::set_socket_recv_buffer_size(&socket, SOCKET_BUFFER));
    let send = sockopt::set_socket_send_buffer_size_force(&socket, SOCKET_BUFFER)
        .or_else(|_| sockopt::set_socket_send_buffer_size(&socket, SOCKET_BUFFER));
    for (what, sysctl, result, got) in [
        (
            "receive",
            "net.core.rmem_max",
            recv,
            sockopt::socket_recv_buffer_size(&socket),
        ),
        (
            "send",
            "net.core.wmem_max",
            send,
            sockopt::socket_send_buffer_size(&socket),
        ),
    ] {
        // Linux reports twice the requested size (it counts its own bookkeeping).
        let short = got.map(|got| got < SOCKET_BUFFER).unwrap_or(true);
        if result.is_err() || short {
            warn_small_buffer(what, sysctl);
        }
    }
    Ok(socket)
}

/// Warns once per process that the kernel capped a UDP buffer.
fn warn_small_buffer(what: &str, sysctl: &str) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        tracing::warn!(
            "the kernel capped the UDP {what} buffer below {} MiB; fast or long links will lose \
             packets and slow down. Raise it with: sysctl -w {sysctl}={} (and the other of \
             net.core.rmem_max/wmem_max)",
            SOCKET_BUFFER >> 20,
            SOCKET_BUFFER
        );
    });
}
