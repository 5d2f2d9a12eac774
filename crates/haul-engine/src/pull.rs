//! Pull: the serving host sends, the client receives.
//!
//! There is one sending pipeline and one receiving pipeline; a pull only swaps which end runs
//! which. The client opens the connection and the control stream as always and says hello
//! with [`Hello::PULL`], naming the path it wants (under its token's grant) and how it wants
//! it sent. The serving host checks the token's read scope, opens the path confined to the
//! grant, and answers with a hello of its own, as a sender ([`crate::sender::send_over`]);
//! from there the client is an ordinary receiver ([`crate::receiver::receive_session`]) of an
//! ordinary push: chunk verification, install after the whole file verifies, resume,
//! rename-aside and `--delete` all come with it.
//!
//! The sender's [`Summary`] (what the client's `--json` shows) lives on the serving host; once
//! the session is finished, the client asks for it on a second stream.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use haul_net::{Token, Trust};
use haul_proto::{Hello, Limits, Message, RefuseReason, Refused, Request, Response, ServerSession};
use haul_store::RelPath;

use crate::error::EngineError;
use crate::jobs::{open_receiver_root, split_destination};
use crate::progress::{Event, EventSink, Progress, Summary};
use crate::receiver::{
    Control, Grant, ReceiverConfig, Scope, SessionReport, check_token, receive_session, refuse,
};
use crate::sender::{SendRequest, TransferOptions, hello_for, options_from_hello, send_over};
use crate::transport::{Link, QuicLink};
use crate::wire::{FramedRecv, FramedSend};

/// The largest summary a client accepts (a mirror that deleted a million paths lists them).
const MAX_SUMMARY: usize = 1 << 30;

/// How long a serving host waits for the client to ask for the summary once a pull is done.
const SUMMARY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serving host: the client's hello asked to pull. Sends what it names, if the grant lets it.
pub(crate) async fn serve_pull(
    link: Arc<dyn Link>,
    control: Control,
    mut session: ServerSession,
    hello: Hello,
    config: Arc<ReceiverConfig>,
    peer: String,
    events: EventSink,
) -> Result<SessionReport, EngineError> {
    let decision = session.check_hello(&hello).and_then(|()| {
        let grant = check_token(&config, &hello, link.as_ref())?;
        grant.allow(Scope::Read, "pulling")?;
        let rel = RelPath::parse(&hello.dest).map_err(|e| Refused {
            reason: RefuseReason::BadPath,
            message: format!("source path refused: {e}"),
        })?;
        let options = options_from_hello(&hello).map_err(|message| Refused {
            reason: RefuseReason::Other,
            message,
        })?;
        Ok((grant.clone(), rel, options))
    });
    let (grant, rel, options) = match decision {
        Ok(decided) => decided,
        Err(refused) => return Err(refuse(control, &mut session, refused).await),
    };
    let (handle, shown) = match open_pull_source(&config, &grant, &rel, &hello.snapshot) {
        Ok(opened) => opened,
        Err(message) => {
            let refused = Refused {
                reason: RefuseReason::BadPath,
                message,
            };
            return Err(refuse(control, &mut session, refused).await);
        }
    };
    events(Event::SessionStarted {
        peer: peer.clone(),
        dest: format!("pull of {shown}"),
    });
    let inner = handle.path();
    let request = SendRequest {
        source: inner.clone(),
        dest: handle.file_name().map(<[u8]>::to_vec).unwrap_or_default(),
        // The raw token of the grant: the sending pipeline proves it on this link, as the
        // pulling client (receiving) expects.
        token: grant.token.as_bytes().to_vec(),
        options,
    };
    let progress = Arc::new(Progress::default());
    let result = send_over(
        link.clone(),
        control,
        request,
        progress,
        crate::progress::no_events(),
    )
    .await;
    drop(handle);
    let result = result.map(|mut summary| {
        // What the sender saw as `/proc/self/fd/N/...` is, for the client, the path it asked for.
        let inner = inner.display().to_string();
        for problem in &mut summary.errors {
            if let Some(rest) = problem.path.strip_prefix(&inner) {
                problem.path = format!("{shown}{rest}");
            }
        }
        summary
    });
    match &result {
        Ok(summary) => answer_summary(link.as_ref(), summary).await,
        // The sender told the client why it stopped (an `Abort`): let that arrive before the
        // connection goes, so a full disk there reads as a pause, not a lost connection.
        Err(_) => {
            let _ = tokio::time::timeout(SUMMARY_WAIT, link.closed()).await;
        }
    }
    events(Event::SessionEnded {
        peer,
        installed: result.as_ref().map_or(0, |s| s.files_transferred),
        failed: result.as_ref().map_or(0, |s| s.files_failed),
        error: result.as_ref().err().map(|e| e.to_string()),
    });
    result.map(|s| SessionReport {
        installed: s.files_transferred,
        failed: s.files_failed,
    })
}

/// Opens what a pull asked for: `rel` under the grant, in the live tree or in a snapshot.
/// Returns the handle and how to name it to the client.
fn open_pull_source(
    config: &ReceiverConfig,
    grant: &Grant,
    rel: &RelPath,
    snapshot: &[u8],
) -> Result<(haul_store::SourceHandle, String), String> {
    let root = config.root();
    root.forget_cached_dirs();
    let (opened, shown) = if snapshot.is_empty() {
        let full = grant.subdir.join(rel);
        (root.open_source(&full), format!("/{}", full.display()))
    } else {
        let id = String::from_utf8_lossy(snapshot).into_owned();
        crate::remote::snapshot_for_grant(root, grant, &id, true)?;
        // The snapshot's copy holds the tree it was made of; the client names paths in it
        // relative to its grant, like in the live tree.
        let within = snapshot_subtree(root, &id)
            .and_then(|subtree| grant.subdir.join(rel).strip_prefix(&subtree))
            .ok_or_else(|| format!("{} is not inside snapshot {id}", rel.display()))?;
        (
            root.open_snapshot_source(&id, &within),
            format!("snapshot {id}:/{}", rel.display()),
        )
    };
    match opened {
        Ok(Some(handle)) => Ok((handle, shown)),
        Ok(None) => Err(format!("nothing at {shown} on this host")),
        Err(e) => Err(format!("cannot read {shown}: {e}")),
    }
}

/// The tree the snapshot `id` is a copy of.
fn snapshot_subtree(root: &haul_store::Root, id: &str) -> Option<RelPath> {
    let list = root.list_snapshots().ok()?;
    list.into_iter().find(|s| s.id == id).map(|s| s.subtree)
}

/// Serving host: answers the client's request for the summary on a second stream.
async fn answer_summary(link: &dyn Link, summary: &Summary) {
    let answer = async {
        let (send, recv) = link.accept_control().await.ok()?;
        let (mut tx, mut rx) = (
            FramedSend::new(send),
            FramedRecv::new(recv, Limits::for_chunk_size(Request::MAX_BODY)),
        );
        let Ok(Some(Message::Request(request))) = rx.next().await else {
            return None;
        };
        // A summary can list many deleted paths: it goes in parts the client joins.
        let body = Bytes::from(serde_json::to_vec(summary).ok()?);
        let part = (Request::MAX_BODY / 2) as usize;
        let count = body.len().div_ceil(part).max(1);
        for i in 0..count {
            let piece = body.slice(i * part..((i + 1) * part).min(body.len()));
            tx.queue(&Message::Response(Response {
                id: request.id,
                ok: true,
                more: i + 1 < count,
                body: piece,
            }));
        }
        tx.flush().await.ok()?;
        let _ = tx.finish();
        // Wait for the client to close, so the answer is not cut off.
        let _ = rx.next().await;
        Some(())
    };
    let _ = tokio::time::timeout(SUMMARY_WAIT, answer).await;
}

/// Client: asks the serving host for the summary of the pull that just finished.
async fn fetch_summary(link: &dyn Link) -> Result<Summary, EngineError> {
    let (send, recv) = link
        .open_control()
        .await
        .map_err(|e| EngineError::connection("cannot ask for the pull's summary", e))?;
    let (mut tx, mut rx) = (
        FramedSend::new(send),
        FramedRecv::new(recv, Limits::for_chunk_size(Request::MAX_BODY)),
    );
    tx.send(&Message::Request(Request {
        id: 0,
        body: Bytes::from_static(b"summary"),
    }))
    .await
    .map_err(|e| EngineError::connection("cannot ask for the pull's summary", e))?;
    let missing = || EngineError::Protocol("the host did not send the pull's summary".into());
    let mut body = Vec::new();
    loop {
        let answer = tokio::time::timeout(SUMMARY_WAIT, rx.next())
            .await
            .map_err(|_| missing())??;
        match answer {
            Some(Message::Response(r)) if r.ok && body.len() < MAX_SUMMARY => {
                body.extend_from_slice(&r.body);
                if !r.more {
                    break;
                }
            }
            _ => return Err(missing()),
        }
    }
    let _ = tx.finish();
    serde_json::from_slice(&body)
        .map_err(|e| EngineError::Protocol(format!("the pull's summary is malformed: {e}")))
}

/// Where a pull comes from.
#[derive(Clone, Debug)]
pub struct PullSource {
    /// The serving host's address.
    pub addr: SocketAddr,
    /// "HOST:PORT" as the user wrote it (the known-hosts key).
    pub host_key: String,
    /// The path under the token's grant on the serving host (`/`-separated bytes; empty: all
    /// of it).
    pub path: Vec<u8>,
    /// Read from this snapshot of the serving host instead of its live tree (a restore).
    pub snapshot: Option<String>,
    /// How the serving host's certificate is trusted.
    pub trust: Trust,
    /// The congestion controller for what this client sends (acknowledgements, answers).
    pub congestion: haul_net::Congestion,
    /// The client's token (read scope).
    pub token: Token,
}

/// Receives `source` from a serving host into the local path `dest`: a directory becomes
/// `dest` (created if missing, merged if present); a file lands at `dest`, or in it when
/// `dest` is a directory. `options` say how the host is to send it.
pub async fn pull(
    source: PullSource,
    dest: PathBuf,
    options: TransferOptions,
    progress: Arc<Progress>,
    events: EventSink,
) -> Result<Summary, EngineError> {
    let connected = haul_net::connect_with(
        source.addr,
        &source.host_key,
        &source.trust,
        source.congestion,
    )
    .await?;
    if let (Some(fp), Trust::KnownHosts(file)) = (connected.first_use, &source.trust) {
        events(Event::TrustedOnFirstUse {
            host: source.host_key.clone(),
            fingerprint: fp.to_string(),
            known_hosts: file.display().to_string(),
        });
    }
    let link: Arc<dyn Link> = Arc::new(QuicLink::new(connected.connection.clone()));
    let result = pull_over(link.clone(), &source, dest, options, progress, events).await;
    link.close(
        0,
        if result.is_ok() {
            "done"
        } else {
            "client stopped"
        },
    );
    // Let the close reach the host before this process exits.
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        connected.endpoint.wait_idle(),
    )
    .await;
    result
}

async fn pull_over(
    link: Arc<dyn Link>,
    source: &PullSource,
    dest: PathBuf,
    options: TransferOptions,
    progress: Arc<Progress>,
    events: EventSink,
) -> Result<Summary, EngineError> {
    let (ctl_send, ctl_recv) = link
        .open_control()
        .await
        .map_err(|e| EngineError::connection("cannot open the control stream", e))?;
    let (mut ctl_tx, mut ctl_rx) = (
        FramedSend::new(ctl_send),
        FramedRecv::new(ctl_recv, Limits::default()),
    );
    let mut ask = hello_for(
        &options,
        source.token.as_bytes(),
        link.as_ref(),
        &source.path,
    );
    ask.flags |= Hello::PULL;
    ask.snapshot = Bytes::from(source.snapshot.clone().unwrap_or_default().into_bytes());
    ctl_tx
        .send(&Message::Hello(ask))
        .await
        .map_err(|e| EngineError::connection("cannot send the hello", e))?;
    let answer = ctl_rx.next().await?.ok_or_else(|| {
        EngineError::Protocol("the host closed the connection without answering".into())
    })?;
    let mut hello = match answer {
        Message::Hello(hello) => hello,
        Message::Refused(refused) => {
            return Err(EngineError::Refused {
                reason: refused.reason,
                message: refused.message,
            });
        }
        other => {
            return Err(EngineError::Protocol(format!(
                "the host answered a pull with {}",
                other.name()
            )));
        }
    };
    // The host names a file by its name and a directory by nothing: that decides where it
    // lands, as for `copy`.
    let is_dir = hello.dest.is_empty();
    let remote_name = PathBuf::from(String::from_utf8_lossy(&hello.dest).into_owned());
    let (root_dir, rel) = split_destination(&remote_name, &dest, is_dir)?;
    hello.dest = Bytes::from(rel);
    let had_state_dir = root_dir.join(".haul").exists();
    let root = open_receiver_root(&root_dir)?;
    // This end works for the user who runs the pull, like `copy`: as root it keeps owners,
    // setuid/setgid, devices and security attributes.
    let config = Arc::new(
        ReceiverConfig::with_grants(
            root,
            vec![Grant {
                token: source.token.clone(),
                subdir: RelPath::root(),
                scope: Scope::ReadWrite,
                privileged: true,
            }],
        )
        .with_progress(progress.clone()),
    );
    let mut session = ServerSession::new(Limits::default());
    // The session expects the hello it is about to accept.
    let _ = session.handle(Message::Hello(hello.clone()))?;
    // The receiver's own session events would only say that a session ran.
    let quiet: EventSink = {
        let events = events.clone();
        Arc::new(move |event| {
            if !matches!(
                event,
                Event::SessionStarted { .. } | Event::SessionEnded { .. }
            ) {
                events(event)
            }
        })
    };
    let received = receive_session(
        link.clone(),
        (ctl_tx, ctl_rx),
        session,
        hello,
        config.clone(),
        source.host_key.clone(),
        quiet,
    )
    .await;
    let summary = match received {
        Ok(_) => fetch_summary(link.as_ref()).await,
        Err(e) => Err(e),
    };
    let complete = matches!(&summary, Ok(s) if s.errors.is_empty() && s.files_failed == 0);
    if complete || !had_state_dir {
        // Like `copy`: the receiving state is only worth keeping to resume an unfinished pull.
        config.root().remove_state_dir();
    }
    summary
}
