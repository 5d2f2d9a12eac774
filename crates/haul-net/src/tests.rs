//! Real loopback QUIC: a server endpoint and clients with each kind of trust.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use crate::{Connected, Fingerprint, Identity, NetError, Trust, connect, server_endpoint};

/// Starts a server that answers each bi stream with "echo:" + what it read.
fn echo_server(identity: &Identity) -> (quinn::Endpoint, SocketAddr) {
    let endpoint = server_endpoint((Ipv4Addr::LOCALHOST, 0).into(), identity).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let accepting = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            tokio::spawn(async move {
                // Refused handshakes end here; that is what some tests want.
                let Ok(connection) = incoming.await else {
                    return;
                };
                while let Ok((mut send, mut recv)) = connection.accept_bi().await {
                    let data = recv.read_to_end(1024).await.unwrap();
                    send.write_all(b"echo:").await.unwrap();
                    send.write_all(&data).await.unwrap();
                    send.finish().unwrap();
                    send.stopped().await.ok();
                }
            });
        }
    });
    (endpoint, addr)
}

async fn exchange(connected: &Connected, payload: &[u8]) -> Vec<u8> {
    let (mut send, mut recv) = connected.connection.open_bi().await.unwrap();
    send.write_all(payload).await.unwrap();
    send.finish().unwrap();
    recv.read_to_end(1024).await.unwrap()
}

fn known_hosts_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

#[tokio::test]
async fn pinned_correct_fingerprint_connects_and_exchanges_bytes() {
    let identity = Identity::ephemeral().unwrap();
    let (_server, addr) = echo_server(&identity);
    let connected = connect(
        addr,
        &addr.to_string(),
        &Trust::Pinned(identity.fingerprint),
    )
    .await
    .unwrap();
    assert_eq!(connected.fingerprint, identity.fingerprint);
    assert_eq!(connected.first_use, None);
    let handshake = connected.connection.handshake_data().unwrap();
    let handshake = handshake
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .unwrap();
    assert_eq!(handshake.protocol.as_deref(), Some(crate::ALPN));
    assert_eq!(exchange(&connected, b"hello").await, b"echo:hello");
    assert_eq!(exchange(&connected, b"again").await, b"echo:again");
    connected.connection.close(0u32.into(), b"done");
    connected.endpoint.wait_idle().await;
}

#[tokio::test]
async fn pinned_wrong_fingerprint_is_a_mismatch() {
    let identity = Identity::ephemeral().unwrap();
    let (_server, addr) = echo_server(&identity);
    let wrong = Fingerprint::of_der(b"not the server's certificate");
    let err = connect(addr, "srv:1", &Trust::Pinned(wrong))
        .await
        .unwrap_err();
    match &err {
        NetError::FingerprintMismatch {
            host,
            expected,
            got,
            known_hosts,
        } => {
            assert_eq!(host, "srv:1");
            assert_eq!(*expected, wrong);
            assert_eq!(*got, identity.fingerprint);
            assert_eq!(known_hosts, &None);
        }
        other => panic!("expected FingerprintMismatch, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("man-in-the-middle"), "{msg}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn known_hosts_trusts_on_first_use_then_refuses_a_changed_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("cfg/known_hosts");
    let trust = Trust::KnownHosts(file.clone());
    let host_key = "backup.example:4433";

    let identity = Identity::ephemeral().unwrap();
    let (_server, addr) = echo_server(&identity);
    let first = connect(addr, host_key, &trust).await.unwrap();
    assert_eq!(first.first_use, Some(identity.fingerprint));
    assert_eq!(exchange(&first, b"x").await, b"echo:x");
    assert_eq!(
        known_hosts_text(&file),
        format!("{host_key} {}\n", identity.fingerprint)
    );

    let second = connect(addr, host_key, &trust).await.unwrap();
    assert_eq!(second.first_use, None);
    assert_eq!(second.fingerprint, identity.fingerprint);
    assert_eq!(exchange(&second, b"y").await, b"echo:y");

    // The "same host" comes back with a regenerated certificate.
    let impostor = Identity::ephemeral().unwrap();
    let (_other, other_addr) = echo_server(&impostor);
    let err = connect(other_addr, host_key, &trust).await.unwrap_err();
    match &err {
        NetError::FingerprintMismatch {
            host,
            expected,
            got,
            known_hosts,
        } => {
            assert_eq!(host, host_key);
            assert_eq!(*expected, identity.fingerprint);
            assert_eq!(*got, impostor.fingerprint);
            assert_eq!(known_hosts.as_deref(), Some(file.as_path()));
        }
        other => panic!("expected FingerprintMismatch, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("man-in-the-middle"), "{msg}");
    assert!(
        msg.contains(&format!(
            "remove the line for {host_key} from {}",
            file.display()
        )),
        "{msg}"
    );
    // The refused certificate was not recorded.
    assert_eq!(known_hosts_text(&file).lines().count(), 1);

    // A different host key on the impostor's address is simply a new host.
    let third = connect(other_addr, "other.example:4433", &trust)
        .await
        .unwrap();
    assert_eq!(third.first_use, Some(impostor.fingerprint));
    assert_eq!(known_hosts_text(&file).lines().count(), 2);
}

#[tokio::test(start_paused = true)]
async fn silent_server_is_unreachable_after_the_handshake_timeout() {
    // A bound socket that never answers: packets vanish as they would behind a firewall.
    let silent = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = silent.local_addr().unwrap();
    let fp = Fingerprint::of_der(b"whatever");
    let err = connect(addr, "silent:1", &Trust::Pinned(fp))
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::Unreachable { .. }), "{err:?}");
    assert!(err.is_retryable());
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("UDP port {} open", addr.port())),
        "{msg}"
    );
}

#[tokio::test]
async fn server_endpoint_reports_a_busy_port() {
    let identity = Identity::ephemeral().unwrap();
    let (_server, addr) = echo_server(&identity);
    let err = server_endpoint(addr, &identity).unwrap_err();
    assert!(matches!(err, NetError::Bind { .. }), "{err:?}");
}

#[test]
fn transport_config_is_tuned() {
    // TransportConfig exposes no getters; its Debug output is the only window into it.
    let shown = format!("{:?}", crate::transport_config());
    for expected in [
        "stream_receive_window: 8388608",
        "receive_window: 67108864",
        "send_window: 67108864",
        "max_concurrent_uni_streams: 256",
        "max_concurrent_bidi_streams: 16",
        "keep_alive_interval: Some(5s)",
        "max_idle_timeout: Some(30000)",
        "send_fairness: false",
    ] {
        assert!(shown.contains(expected), "missing `{expected}` in {shown}");
    }
}

#[tokio::test]
async fn the_congestion_controller_is_the_one_asked_for() {
    let identity = Identity::ephemeral().unwrap();
    let (_server, addr) = echo_server(&identity);
    let trust = Trust::Pinned(identity.fingerprint);
    let key = addr.to_string();
    let default = connect(addr, &key, &trust).await.unwrap();
    let state = default.connection.congestion_state().into_any();
    assert!(
        state.is::<crate::congestion::LossTolerant>(),
        "the loss-tolerant controller is the default"
    );
    let bbr = crate::connect_with(addr, &key, &trust, crate::Congestion::Bbr)
        .await
        .unwrap();
    assert!(
        bbr.connection
            .congestion_state()
            .into_any()
            .is::<quinn::congestion::Bbr>()
    );
    let cubic = crate::connect_with(addr, &key, &trust, crate::Congestion::Cubic)
        .await
        .unwrap();
    let state = cubic.connection.congestion_state().into_any();
    assert!(state.is::<quinn::congestion::Cubic>());
}

#[test]
fn default_config_dir_prefers_haul_config_dir() {
    // Only read the environment: tests run in parallel, and changing it would race others.
    let dir = crate::default_config_dir();
    match std::env::var_os("HAUL_CONFIG_DIR").filter(|v| !v.is_empty()) {
        Some(explicit) => assert_eq!(dir, Path::new(&explicit)),
        None => assert!(dir.ends_with("haul"), "{}", dir.display()),
    }
}

/// Writes a token file with `mode` (set explicitly, so the umask does not matter).
fn token_file_with_mode(dir: &Path, name: &str, mode: u32) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, "sesame\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[test]
fn a_world_readable_token_is_refused_with_the_chmod_to_run() {
    let tmp = tempfile::tempdir().unwrap();
    let path = token_file_with_mode(tmp.path(), "token", 0o644);
    for err in [
        crate::Token::load(&path).unwrap_err(),
        crate::Token::load_or_generate(&path).unwrap_err(),
    ] {
        assert!(
            matches!(err, NetError::ExposedSecret { mode: 0o644, .. }),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(message.contains("0644"), "{message}");
        assert!(
            message.contains(&format!("chmod 600 {}", path.display())),
            "{message}"
        );
        assert!(!err.is_retryable());
    }
    // Refused, not replaced: the file and its mode are as they were.
    assert_eq!(std::fs::read(&path).unwrap(), b"sesame\n");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o644);
}

#[test]
fn a_group_readable_token_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = token_file_with_mode(tmp.path(), "token", 0o640);
    let err = crate::Token::load(&path).unwrap_err();
    assert!(
        matches!(err, NetError::ExposedSecret { mode: 0o640, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("chmod 600"), "{err}");
}

#[test]
fn a_private_token_is_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let path = token_file_with_mode(tmp.path(), "token", 0o600);
    let token = crate::Token::load(&path).unwrap();
    assert_eq!(token.as_bytes(), b"sesame");
    let (again, created) = crate::Token::load_or_generate(&path).unwrap();
    assert!(!created);
    assert_eq!(again, token);
}

#[test]
fn the_chmod_hint_quotes_awkward_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let path = token_file_with_mode(tmp.path(), "my token's", 0o604);
    let err = crate::Token::load(&path).unwrap_err();
    let quoted = format!("'{}/my token'\\''s'", tmp.path().display());
    assert!(
        err.to_string().contains(&format!("chmod 600 {quoted}")),
        "{err}"
    );
}

#[test]
fn an_exposed_private_key_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let (_, created) = Identity::load_or_create(tmp.path()).unwrap();
    assert!(created);
    let key = tmp.path().join("key.der");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = Identity::load_or_create(tmp.path()).unwrap_err();
    assert!(
        matches!(err, NetError::ExposedSecret { mode: 0o644, .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("private key"), "{message}");
    assert!(
        message.contains(&format!("chmod 600 {}", key.display())),
        "{message}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (_, created) = Identity::load_or_create(tmp.path()).unwrap();
    assert!(!created);
}
