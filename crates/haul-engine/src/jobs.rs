//! The user-facing operations: `serve`, `push` and `copy`.
//!
//! `copy` is a `push` to an embedded receiver on loopback QUIC with an ephemeral certificate
//! and token: the same code path as a remote transfer, so what the quick start shows is what
//! runs between hosts.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use haul_net::{Identity, Token, Trust};
use haul_store::{RelPath, Root};

use crate::admission::{self, Admission};
use crate::compress::Compression;
use crate::error::EngineError;
use crate::local_link;
use crate::progress::{Event, EventSink, Progress, Summary};
use crate::receiver::{Grant, ReceiverConfig, SessionReport, receive, receive_admitted};
use crate::sender::{SendRequest, TransferOptions, send};
use crate::transport::{Link, QuicLink};

/// A receiver to run.
pub struct ServeOptions {
    /// Everything received lands under this directory.
    pub root: PathBuf,
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Tokens a client may present, each with the part of the root it may write to.
    pub grants: Vec<Grant>,
    /// The certificate the server presents.
    pub identity: Identity,
}

/// Runs a receiver until the process is stopped. `ready` is called once with the bound
/// address, so the caller can print it. Admits connections within the default
/// [`admission::Limits`].
pub async fn serve(
    options: ServeOptions,
    ready: impl FnOnce(SocketAddr),
    events: EventSink,
) -> Result<(), EngineError> {
    serve_with_limits(options, admission::Limits::default(), ready, events).await
}

/// [`serve`] admitting connections within `limits`: a flood of connections that never prove
/// a token cannot exhaust memory or file descriptors, nor keep token holders out.
pub async fn serve_with_limits(
    options: ServeOptions,
    limits: admission::Limits,
    ready: impl FnOnce(SocketAddr),
    events: EventSink,
) -> Result<(), EngineError> {
    let root = open_receiver_root(&options.root)?;
    let config = Arc::new(ReceiverConfig::with_grants(root, options.grants));
    let admission = Admission::new(limits);
    let endpoint = haul_net::server_endpoint(options.listen, &options.identity)?;
    let local = endpoint
        .local_addr()
        .map_err(|e| EngineError::connection("cannot read the listening address", e))?;
    ready(local);
    loop {
        // Ctrl-C stops accepting; dropping the sessions removes their staging files.
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            _ = tokio::signal::ctrl_c() => None,
        };
        let Some(incoming) = incoming else { break };
        if admission.wants_retry() && !incoming.remote_address_validated() {
            // Stateless: one packet back, nothing kept. A spoofed source never answers it.
            if let Err(e) = incoming.retry() {
                e.into_incoming().ignore();
            }
            continue;
        }
        let peer = incoming.remote_address();
        let pending = match admission.admit(peer.ip()) {
            Ok(pending) => pending,
            Err(why) => {
                events(Event::SessionEnded {
                    peer: peer.to_string(),
                    installed: 0,
                    failed: 0,
                    error: Some(format!("refused: {why}")),
                });
                incoming.refuse();
                continue;
            }
        };
        let config = config.clone();
        let events = events.clone();
        tokio::spawn(async move {
            let peer = peer.to_string();
            let conn = match incoming.await {
                Ok(conn) => conn,
                Err(e) => {
                    events(Event::SessionEnded {
                        peer,
                        installed: 0,
                        failed: 0,
                        error: Some(format!("handshake failed: {e}")),
                    });
                    return;
                }
            };
            let link: Arc<dyn Link> = Arc::new(QuicLink::new(conn.clone()));
            if receive_admitted(link, config, peer, events, Some(pending))
                .await
                .is_ok()
            {
                linger(&conn).await;
            }
            // A long-running receiver keeps the hole hashes it computed for the next start.
            let _ = tokio::task::spawn_blocking(haul_manifest::zeros::save).await;
        });
    }
    Ok(())
}

/// Opens the root a receiver writes into and cleans up after receivers that died in it:
/// their staging files go, and files they were patching in place get their old version back.
pub(crate) fn open_receiver_root(path: &Path) -> Result<Root, EngineError> {
    let root = Root::open(path)?;
    root.sweep_staging()?;
    let restored = root.recover_patches()?;
    if restored > 0 {
        tracing::warn!(
            files = restored,
            "put back the old version of files a killed receiver was updating in place"
        );
    }
    Ok(root)
}

/// After `Finished`, waits for the client to close the connection. Dropping it at once would
/// close it from our side and could discard the `Finished` still in flight, making a
/// complete transfer look failed to the client.
async fn linger(conn: &quinn::Connection) {
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), conn.closed()).await;
}

/// Where a push goes.
#[derive(Clone, Debug)]
pub struct PushTarget {
    /// The receiver's address.
    pub addr: SocketAddr,
    /// "HOST:PORT" as the user wrote it (the known-hosts key).
    pub host_key: String,
    /// Destination path under the receiver's root.
    pub dest: Vec<u8>,
    /// How the server's certificate is trusted.
    pub trust: Trust,
    /// The congestion controller for what the sender sends.
    pub congestion: haul_net::Congestion,
    /// The client's token.
    pub token: Token,
}

/// Sends `source` to a running receiver.
pub async fn push(
    source: PathBuf,
    target: PushTarget,
    options: TransferOptions,
    progress: Arc<Progress>,
    events: EventSink,
) -> Result<Summary, EngineError> {
    let connected = haul_net::connect_with(
        target.addr,
        &target.host_key,
        &target.trust,
        target.congestion,
    )
    .await?;
    if let (Some(fp), Trust::KnownHosts(file)) = (connected.first_use, &target.trust) {
        events(Event::TrustedOnFirstUse {
            host: target.host_key.clone(),
            fingerprint: fp.to_string(),
            known_hosts: file.display().to_string(),
        });
    }
    let link = Arc::new(QuicLink::new(connected.connection.clone()));
    let request = SendRequest {
        source,
        dest: target.dest,
        token: target.token.as_bytes().to_vec(),
        options,
    };
    let result = send(link.clone(), request, progress, events).await;
    let stats = connected.connection.stats();
    // What an expert tuning a link wants to see first (HAUL_LOG=haul_engine=debug).
    tracing::debug!(
        mtu = stats.path.current_mtu,
        rtt_us = stats.path.rtt.as_micros() as u64,
        datagrams = stats.udp_tx.datagrams,
        transmits = stats.udp_tx.ios,
        lost = stats.path.lost_packets,
        cwnd = stats.path.cwnd,
        probes = stats.path.sent_plpmtud_probes,
        lost_probes = stats.path.lost_plpmtud_probes,
        black_holes = stats.path.black_holes_detected,
        "connection statistics"
    );
    link.close(
        0,
        if result.is_ok() {
            "done"
        } else {
            "sender stopped"
        },
    );
    result
}

/// Copies `source` to the local path `dest` through an embedded receiver in this process
/// ([`local_link`]: no network, no encryption; `--via-quic` uses loopback QUIC instead).
///
/// A directory source makes `dest` a copy of it (created if missing, merged if present). A
/// file source is copied to `dest`, or into it when `dest` is an existing directory.
pub async fn copy(
    source: PathBuf,
    dest: PathBuf,
    options: TransferOptions,
    progress: Arc<Progress>,
    events: EventSink,
) -> Result<Summary, EngineError> {
    let meta = std::fs::symlink_metadata(&source).map_err(|e| EngineError::Source {
        path: source.clone(),
        message: e.to_string(),
    })?;
    // A plan of a copy into a path that does not exist yet must not create it: plan against
    // an empty scratch directory instead (everything would be sent).
    let scratch = (options.dry_run && !dest.exists())
        .then(|| std::env::temp_dir().join(format!("haul-plan-{}", random_token())));
    let (root_dir, rel) = match &scratch {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| {
                EngineError::Store(haul_store::StoreError::Io {
                    path: dir.clone(),
                    op: "create a scratch directory for the plan",
                    source: e,
                })
            })?;
            let name = dest
                .file_name()
                .map(|n| n.as_bytes().to_vec())
                .unwrap_or_default();
            (dir.clone(), if meta.is_dir() { Vec::new() } else { name })
        }
        None => split_destination(&source, &dest, meta.is_dir())?,
    };
    let had_state_dir = root_dir.join(".haul").exists();
    let root = open_receiver_root(&root_dir)?;

    let token = Token::from_bytes(random_token().as_bytes());
    // The embedded receiver works for the user who runs the copy, on both sides: as root it
    // keeps what `cp -a` keeps (owners, setuid/setgid, devices, security attributes).
    let config = Arc::new(ReceiverConfig::with_grants(
        root,
        vec![Grant {
            token: token.clone(),
            subdir: RelPath::root(),
            scope: crate::receiver::Scope::ReadWrite,
            privileged: true,
        }],
    ));
    let state = config.clone();
    let (sent, received) = if options.via_quic {
        copy_over_quic(source, rel, token, config, options, progress, events).await?
    } else {
        // Nothing crosses a network in-process: compressing would only cost CPU (an explicit
        // `--compress on` is still honoured).
        let options = TransferOptions {
            compress: match options.compress {
                Compression::Auto => Compression::Off,
                other => other,
            },
            ..options
        };
        // The embedded receiver's session events would only repeat the sender's; its
        // failures come back as its result.
        let (client, server) = local_link::pair();
        let receiver = tokio::spawn(async move {
            let link: Arc<dyn Link> = Arc::new(server);
            let report = receive(
                link.clone(),
                config,
                "embedded sender".into(),
                crate::progress::no_events(),
            )
            .await;
            // A QUIC connection closes when its receiver lets go of it; an in-process link
            // must be closed, or a sender blocked on a stream nobody reads waits forever (a
            // full disk ends the receiver early). What the receiver sent is still read first.
            match &report {
                Ok(_) => link.close(0, "done"),
                Err(e) => link.close(1, &e.to_string()),
            }
            report
        });
        let link = Arc::new(client);
        let request = SendRequest {
            source,
            dest: rel,
            token: token.as_bytes().to_vec(),
            options,
        };
        let sent = send(link.clone(), request, progress, events).await;
        link.close(
            0,
            if sent.is_ok() {
                "done"
            } else {
                "sender stopped"
            },
        );
        (sent, receiver.await)
    };
    let complete = matches!(&sent, Ok(s) if s.errors.is_empty() && s.files_failed == 0);
    if let Some(dir) = &scratch {
        let _ = std::fs::remove_dir_all(dir);
    } else if complete || !had_state_dir {
        // The embedded receiver's state is only worth keeping to resume an unfinished copy.
        state.root().remove_state_dir();
    }
    let summary = sent?;
    if let Ok(Err(e @ EngineError::Store(_))) = received {
        return Err(e);
    }
    Ok(summary)
}

/// `copy --via-quic`: the embedded receiver listens on loopback QUIC with an ephemeral
/// certificate, and the sender pushes to it as to a remote `haul serve`.
async fn copy_over_quic(
    source: PathBuf,
    rel: Vec<u8>,
    token: Token,
    config: Arc<ReceiverConfig>,
    options: TransferOptions,
    progress: Arc<Progress>,
    events: EventSink,
) -> Result<CopyOutcome, EngineError> {
    let identity = Identity::ephemeral()?;
    let fingerprint = identity.fingerprint;
    let endpoint =
        haul_net::server_endpoint(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), &identity)?;
    let addr = endpoint
        .local_addr()
        .map_err(|e| EngineError::connection("cannot read the embedded receiver's address", e))?;
    let server = tokio::spawn(async move {
        let incoming = endpoint.accept().await.ok_or_else(|| {
            EngineError::Protocol("the embedded receiver closed before the transfer".into())
        })?;
        let conn = incoming
            .await
            .map_err(|e| EngineError::connection("embedded receiver handshake failed", e.into()))?;
        let link: Arc<dyn Link> = Arc::new(QuicLink::new(conn.clone()));
        let report = receive(
            link,
            config,
            "embedded sender".into(),
            crate::progress::no_events(),
        )
        .await;
        if report.is_ok() {
            linger(&conn).await;
        }
        endpoint.wait_idle().await;
        report
    });
    let target = PushTarget {
        addr,
        host_key: addr.to_string(),
        dest: rel,
        trust: Trust::Pinned(fingerprint),
        token,
        congestion: haul_net::Congestion::default(),
    };
    let sent = push(source, target, options, progress, events).await;
    Ok((sent, server.await))
}

/// What the sender reported, and how the embedded receiver's task ended.
type CopyOutcome = (
    Result<Summary, EngineError>,
    Result<Result<SessionReport, EngineError>, tokio::task::JoinError>,
);

/// Works out the embedded receiver's root and the destination path under it.
pub(crate) fn split_destination(
    source: &Path,
    dest: &Path,
    source_is_dir: bool,
) -> Result<(PathBuf, Vec<u8>), EngineError> {
    let store_err = |e: std::io::Error, op: &'static str| {
        EngineError::Store(haul_store::StoreError::Io {
            path: dest.to_path_buf(),
            op,
            source: e,
        })
    };
    if source_is_dir {
        std::fs::create_dir_all(dest).map_err(|e| store_err(e, "create the destination"))?;
        return Ok((dest.to_path_buf(), Vec::new()));
    }
    if dest.is_dir() {
        let name = source.file_name().ok_or_else(|| EngineError::Source {
            path: source.to_path_buf(),
            message: "the source has no file name".into(),
        })?;
        return Ok((dest.to_path_buf(), name.as_bytes().to_vec()));
    }
    let name = dest.file_name().ok_or_else(|| EngineError::Source {
        path: dest.to_path_buf(),
        message: "the destination has no file name".into(),
    })?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .map_err(|e| store_err(e, "create the destination's parent"))?;
    Ok((parent, name.as_bytes().to_vec()))
}

pub(crate) fn random_token() -> String {
    use rand::Rng;
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
