//! The receiving side of a transfer: authenticate, confine, verify, write, install.
//!
//! One session is three kinds of task: the control reader (hello, entries, file hashes), the
//! control writer (answers, coalesced), and one reader per data stream. Chunk verification,
//! writes and installs run on blocking threads; the async threads only move bytes.

mod data;
mod entry;
mod files;
mod outcome;
mod prune;
mod target;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use haul_net::Token;
use haul_proto::{
    Hello, Limits, Message, RefuseReason, Refused, Renamed, ServerSession, Welcome,
    session::ServerEvent,
};
use haul_store::{RelPath, Root};
use tokio::sync::mpsc;

use crate::error::EngineError;
use crate::lock;
use crate::progress::{Event, EventSink, Progress};
use crate::transport::Link;
use crate::wire::{FramedRecv, FramedSend};
use data::accept_data;
use entry::{DirList, EntryRules, Policy, handle_entry, quick_check, rename_aside};
use files::Files;
use outcome::Outcome;

/// Running sessions by destination path: (session id, its connection).
type ActiveSessions = HashMap<Vec<u8>, (u64, Arc<dyn Link>)>;

/// What a token may do in its subtree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Scope {
    /// Pull, read files (`cat`, manifests) and look (`ls`, `stat`, `du`, `df`); no change.
    Read,
    /// Push, remove, rename, write control files, snapshots and leases, and look; never read
    /// file data.
    Write,
    /// Both.
    #[default]
    ReadWrite,
}

impl Scope {
    /// May read file data (pull, `cat`, manifests with hashes).
    pub fn can_read(self) -> bool {
        matches!(self, Scope::Read | Scope::ReadWrite)
    }

    /// May change the tree (push, delete, rename, put, snapshots, leases).
    pub fn can_write(self) -> bool {
        matches!(self, Scope::Write | Scope::ReadWrite)
    }

    /// `read`, `write` or `read+write`.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::ReadWrite => "read+write",
        }
    }
}

/// A token and the part of the root it may use.
#[derive(Clone, Debug)]
pub struct Grant {
    /// The secret a client presents.
    pub token: Token,
    /// Where under the root this token's transfers land (the root itself when empty). A client
    /// names its destination relative to this and can never leave it.
    pub subdir: RelPath,
    /// Read, write or both.
    pub scope: Scope,
    /// Sessions with this token may set owners, setuid/setgid bits, device nodes and
    /// `security.*`/`trusted.*` attributes (on a receiver running as root). Off by default: a
    /// client must not be able to plant a setuid-root binary or a device on this host.
    pub privileged: bool,
}

impl Grant {
    /// "read+write on /sub, privileged": what the grant allows, for messages and `serve`.
    pub fn describe(&self) -> String {
        let place = if self.subdir.is_root() {
            "the whole root".to_string()
        } else {
            format!("/{}", self.subdir.display())
        };
        let privileged = if self.privileged { ", privileged" } else { "" };
        format!("{} on {place}{privileged}", self.scope.name())
    }
}

impl Grant {
    /// Refuses a session that needs `need` (`Read` or `Write`) for `doing` ("pushing") when
    /// this grant lacks it, saying which scope to ask for.
    pub(crate) fn allow(&self, need: Scope, doing: &str) -> Result<(), Refused> {
        let (ok, has, wants) = match need {
            Scope::Write => (self.scope.can_write(), "read", "write"),
            _ => (self.scope.can_read(), "write", "read"),
        };
        if ok {
            return Ok(());
        }
        Err(Refused {
            reason: RefuseReason::Scope,
            message: format!(
                "this token may only {has} ({}); {doing} needs a token with {wants} scope \
                 (haul serve --grant SUBDIR=FILE,{wants})",
                self.describe()
            ),
        })
    }
}

/// What a receiver serves: one root and the tokens allowed to write under it.
pub struct ReceiverConfig {
    root: Arc<Root>,
    grants: Vec<Grant>,
    next_session: AtomicU64,
    /// Sessions running now, by destination: a newer push to the same destination takes over
    /// from an older one (whose sender was most likely killed and has not timed out yet), so
    /// an operator who stops a push and starts it again is not locked out of its partial files.
    active: Mutex<ActiveSessions>,
    /// Counters to keep up to date, for a receiver someone watches (a pulling client).
    progress: Option<Arc<Progress>>,
}

impl ReceiverConfig {
    /// A receiver writing under `root`, accepting any of `tokens` for the whole root.
    pub fn new(root: Root, tokens: Vec<Token>) -> Self {
        let grants = tokens.into_iter().map(|token| Grant {
            token,
            subdir: RelPath::root(),
            scope: Scope::ReadWrite,
            privileged: false,
        });
        Self::with_grants(root, grants.collect())
    }

    /// A receiver writing under `root`, each token confined to its own part of it, so one
    /// receiver can serve several migrations without one writing into another's tree.
    pub fn with_grants(root: Root, grants: Vec<Grant>) -> Self {
        ReceiverConfig {
            root: Arc::new(root),
            grants,
            next_session: AtomicU64::new(1),
            active: Mutex::default(),
            progress: None,
        }
    }

    /// Keeps `progress` up to date as entries arrive and install (the files and bytes
    /// announced count as scanned, the installed ones as done).
    pub fn with_progress(mut self, progress: Arc<Progress>) -> Self {
        self.progress = Some(progress);
        self
    }

    /// The root.
    pub fn root(&self) -> &Root {
        &self.root
    }

    /// The grant whose token `presented` proves on a link with `binding`, if any. Every
    /// token is checked (in constant time), so timing does not say which one nearly matched.
    fn grant_for(
        &self,
        presented: &[u8],
        binding: Option<&[u8; haul_net::BINDING_LEN]>,
    ) -> Option<&Grant> {
        self.grants.iter().fold(None, |found, g| {
            let hit = g.token.proven_by(presented, binding);
            found.or(hit.then_some(g))
        })
    }
}

/// What one receiver session did.
#[derive(Debug, Default)]
pub struct SessionReport {
    /// Entries installed.
    pub installed: u64,
    /// Entries that failed.
    pub failed: u64,
}

pub(super) const PROTOCOL_ERROR: u32 = 2;
/// The largest hello: a token, a destination path and 256 rename-aside paths, with headers.
const HELLO_FRAME_LIMIT: u32 = (1 << 20) + (64 << 10);
/// A client that connects and says nothing is dropped after this long.
const HELLO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
const SUPERSEDED: u32 = 3;

/// Serves one connection: runs until the client's session finishes or fails. Whatever happens,
/// nothing partial is left under a final name.
///
/// The client's hello says what it wants: to push (this end receives), to pull (this end
/// sends, see [`crate::pull`]) or remote operations ([`crate::remote`]).
pub async fn receive(
    link: Arc<dyn Link>,
    config: Arc<ReceiverConfig>,
    peer: String,
    events: EventSink,
) -> Result<SessionReport, EngineError> {
    receive_admitted(link, config, peer, events, None).await
}

/// [`receive`] for a connection a serving host admitted as `pending`: once its hello proves
/// a token, the unauthenticated slot is traded for a session slot, held to the end, or the
/// session is refused as busy.
pub(crate) async fn receive_admitted(
    link: Arc<dyn Link>,
    config: Arc<ReceiverConfig>,
    peer: String,
    events: EventSink,
    pending: Option<crate::admission::Pending>,
) -> Result<SessionReport, EngineError> {
    let (ctl_send, ctl_recv) = link
        .accept_control()
        .await
        .map_err(|e| EngineError::connection("the client opened no control stream", e))?;
    let ctl_tx = FramedSend::new(ctl_send);
    // Until the token is checked, frames can be no larger than the largest possible hello: an
    // unauthenticated peer must not make the receiver buffer a chunk's worth per connection.
    let mut ctl_rx = FramedRecv::new(
        ctl_recv,
        Limits {
            max_frame: HELLO_FRAME_LIMIT,
            ..Limits::default()
        },
    );
    let mut session = ServerSession::new(Limits::default());
    let hello = read_hello(&mut ctl_rx, &mut session).await?;
    let control = (ctl_tx, ctl_rx);
    // A hello with a wrong token keeps its unauthenticated slot until the handler below has
    // refused it.
    let _slot = match pending {
        Some(pending) if check_token(&config, &hello, link.as_ref()).is_ok() => {
            match pending.authenticated() {
                Ok(slot) => Some(slot),
                Err(message) => {
                    let refused = Refused {
                        reason: RefuseReason::Other,
                        message,
                    };
                    return Err(refuse(control, &mut session, refused).await);
                }
            }
        }
        _ => None,
    };
    if hello.has(Hello::PULL) {
        return crate::pull::serve_pull(link, control, session, hello, config, peer, events).await;
    }
    if hello.has(Hello::OPS) {
        return crate::remote::serve_ops(link, control, session, hello, config, peer, events).await;
    }
    receive_session(link, control, session, hello, config, peer, events).await
}

/// Reads the first message of a session, which must be a hello, within [`HELLO_TIMEOUT`].
async fn read_hello(
    ctl_rx: &mut FramedRecv,
    session: &mut ServerSession,
) -> Result<Hello, EngineError> {
    let first = tokio::time::timeout(HELLO_TIMEOUT, ctl_rx.next())
        .await
        .map_err(|_| EngineError::Protocol("no hello within 10 s".into()))??
        .ok_or_else(|| {
            EngineError::Protocol("the client closed the connection before saying hello".into())
        })?;
    match session.handle(first)? {
        ServerEvent::Hello(hello) => Ok(hello),
        _ => Err(EngineError::Protocol("expected a hello".into())),
    }
}

/// The control stream of a session: its sending and receiving halves.
pub(crate) type Control = (FramedSend, FramedRecv);

/// Sends `refused` and ends the session: the client reads the refusal and closes first.
pub(crate) async fn refuse(
    (mut ctl_tx, mut ctl_rx): Control,
    session: &mut ServerSession,
    refused: Refused,
) -> EngineError {
    let (reason, message) = (refused.reason, refused.message.clone());
    if let Err(e) = ctl_tx.send(&session.refuse(refused)).await {
        return EngineError::connection("cannot send the refusal", e);
    }
    let _ = ctl_tx.finish();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), ctl_rx.next()).await;
    EngineError::Refused { reason, message }
}

/// The grant of the token the hello proves on `link`, if the receiver accepts it, or the
/// refusal to send. Over QUIC only a proof bound to this very TLS session counts.
pub(crate) fn check_token<'a>(
    config: &'a ReceiverConfig,
    hello: &Hello,
    link: &dyn Link,
) -> Result<&'a Grant, Refused> {
    let binding = link.channel_binding();
    config
        .grant_for(&hello.token, binding.as_ref())
        .ok_or_else(|| Refused {
            reason: RefuseReason::BadToken,
            message: "the token is not accepted by this receiver; pass the token printed by \
                      `haul serve` with --token-file FILE or the HAUL_TOKEN variable"
                .into(),
        })
}

/// A push into this receiver (or, on a pulling client, what the serving host sends): checks
/// the grant, renames aside, welcomes, and runs the receiving pipeline to its end.
pub(crate) async fn receive_session(
    link: Arc<dyn Link>,
    (mut ctl_tx, mut ctl_rx): Control,
    mut session: ServerSession,
    hello: Hello,
    config: Arc<ReceiverConfig>,
    peer: String,
    events: EventSink,
) -> Result<SessionReport, EngineError> {
    let mut privileged = false;
    let decision = session.check_hello(&hello).and_then(|()| {
        let grant = check_token(&config, &hello, link.as_ref())?;
        grant.allow(Scope::Write, "pushing")?;
        privileged = grant.privileged;
        let dest = RelPath::parse(&hello.dest)
            .map(|dest| grant.subdir.join(&dest))
            .map_err(|e| Refused {
                reason: RefuseReason::BadPath,
                message: format!("destination path refused: {e}"),
            })?;
        // A tree another job holds a lease on is its alone until the lease ends.
        let holder = std::str::from_utf8(&hello.holder)
            .ok()
            .filter(|h| !h.is_empty());
        config
            .root
            .check_lease(&dest, holder)
            .map_err(|e| Refused {
                reason: RefuseReason::Leased,
                message: e.to_string(),
            })?;
        Ok(dest)
    });
    let dest = match decision {
        Ok(dest) => dest,
        Err(refused) => return Err(refuse((ctl_tx, ctl_rx), &mut session, refused).await),
    };
    let session_id = config.next_session.fetch_add(1, Ordering::Relaxed);
    // Directories may have been renamed or removed since the last session.
    config.root.forget_cached_dirs();
    let dry_run = hello.has(Hello::DRY_RUN);
    let aside = match rename_aside(&config.root, &dest, &hello.rename_aside, dry_run) {
        Ok(aside) => aside,
        Err(message) => {
            let refused = Refused {
                reason: RefuseReason::BadPath,
                message: message.clone(),
            };
            let _ = ctl_tx.send(&session.refuse(refused)).await;
            let _ = ctl_tx.finish();
            return Err(EngineError::Refused {
                reason: RefuseReason::BadPath,
                message,
            });
        }
    };
    let filter = if hello.filters.is_empty() {
        Ok(None)
    } else {
        haul_manifest::Filter::from_rules(&hello.filters).map(Some)
    };
    let filter = match filter {
        Ok(filter) => filter,
        Err(e) => {
            let message = format!("filter rules refused: {e}");
            let refused = Refused {
                reason: RefuseReason::Other,
                message: message.clone(),
            };
            let _ = ctl_tx.send(&session.refuse(refused)).await;
            let _ = ctl_tx.finish();
            return Err(EngineError::Refused {
                reason: RefuseReason::Other,
                message,
            });
        }
    };
    // Owners, special bits and devices need both the grant and the privilege to apply them.
    let me = (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    );
    let privileged = privileged && me.0 == 0;
    let history = config.root.throughput_history(10).unwrap_or_default();
    let welcome = Welcome {
        version: haul_proto::PROTOCOL_VERSION,
        session: session_id,
        free_bytes: config.root.available_bytes().unwrap_or(0),
        history_bytes: history.iter().map(|h| h.0).sum(),
        history_ms: history.iter().map(|h| (h.1 * 1000.0) as u64).sum(),
        renamed: aside
            .iter()
            .map(|(from, to)| Renamed {
                from: from.to_bytes().into(),
                to: to.to_bytes().into(),
            })
            .collect(),
        privileged,
    };
    let welcome = match session.accept(&hello, welcome) {
        Ok(welcome) => welcome,
        Err(refused) => {
            return Err(EngineError::Refused {
                reason: refused.reason,
                message: refused.message,
            });
        }
    };
    ctl_tx
        .send(&welcome)
        .await
        .map_err(|e| EngineError::connection("cannot send the welcome", e))?;
    ctl_rx.set_limits(session.limits().clone());
    let previous = lock(&config.active).insert(dest.to_bytes(), (session_id, link.clone()));
    if let Some((_, older)) = previous {
        older.close(
            SUPERSEDED,
            "a newer transfer to the same destination took over",
        );
    }
    events(Event::SessionStarted {
        peer: peer.clone(),
        dest: dest.display(),
    });

    let limits = session.limits().clone();
    let rules = Arc::new(EntryRules {
        dest: dest.clone(),
        chunk_size: session.chunk_size(),
        checksum: hello.has(Hello::CHECKSUM),
        dry_run,
        aside,
        policy: Policy {
            owners_requested: hello.has(Hello::OWNERS),
            owners: privileged,
            xattrs: hello.has(Hello::XATTRS),
            privileged,
            me,
        },
        ids: std::sync::RwLock::new(crate::owners::IdMapper::new(hello.has(Hello::NUMERIC_IDS))),
        report: Arc::default(),
        pruner: Mutex::new(prune::Pruner::new(
            filter,
            hello.has(Hello::DELETE_EXCLUDED),
            hello.max_delete,
        )),
        no_space: Mutex::new(None),
    });
    let started = std::time::Instant::now();
    let session = Arc::new(Mutex::new(session));
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let files = Arc::new(Files::new(
        config.root.clone(),
        out_tx,
        link.shares_buffers(),
    ));
    let dirs: Arc<DirList> = Arc::default();

    let writer = tokio::spawn(control_writer(
        ctl_tx,
        out_rx,
        session.clone(),
        files.clone(),
        (dirs.clone(), rules.clone()),
        (started, config.progress.clone()),
    ));
    let data = tokio::spawn(accept_data(
        link.clone(),
        session.clone(),
        files.clone(),
        limits,
    ));

    // One blocking thread handles the batches in the order they were read, while the reader
    // goes on reading: handing each batch to a fresh blocking task and waiting for it cost a
    // thread hand-off per batch and stopped reading meanwhile, which made a no-change re-run
    // of 100k files over QUIC four times slower than in-process. The channel is short so a
    // slow disk holds the sender back through QUIC flow control, not through our memory.
    let (batch_tx, mut batch_rx) = mpsc::channel::<Vec<ServerEvent>>(4);
    {
        let (files, dirs, rules) = (files.clone(), dirs.clone(), rules.clone());
        std::thread::Builder::new()
            .name("haul-entries".into())
            .spawn(move || {
                while let Some(batch) = batch_rx.blocking_recv() {
                    // Busy before looking at `closed` (in `run_event`), and the session's end
                    // sets `closed` before waiting for idle: either the end waits for this
                    // batch, or the batch sees the session closed and does nothing.
                    let _busy = files.busy();
                    files.batched(|| handle_batch(&files, &rules, &dirs, batch));
                }
            })
            .map_err(|e| EngineError::connection("cannot start the entry handler", e))?;
    }
    let reader = async {
        while let Some(msg) = ctl_rx.next().await? {
            // Take every message that has arrived and handle them as one batch: a million
            // small files must not cost a thread hand-off each.
            let mut batch = Vec::new();
            let mut next = Some(msg);
            while let Some(msg) = next {
                let mut session = lock(&session);
                // The sender may still finish a file this receiver already failed.
                let late = match &msg {
                    Message::FileDone(m) => session.is_failed(m.id),
                    Message::SourceFailed(m) => session.is_failed(m.id),
                    _ => false,
                };
                if !late {
                    batch.push(session.handle(msg)?);
                }
                drop(session);
                next = if batch.len() < 4096 {
                    ctl_rx.next_ready()?
                } else {
                    None
                };
            }
            for event in &batch {
                if let (Some(p), ServerEvent::Entry(e)) = (&config.progress, event)
                    && e.kind == haul_proto::EntryKind::File
                {
                    Progress::add(&p.files_scanned, 1);
                    Progress::add(&p.bytes_scanned, e.size);
                }
                match event {
                    ServerEvent::Abort(message) => {
                        return Err(EngineError::PeerAborted(message.clone()));
                    }
                    ServerEvent::Hello(_) => {
                        return Err(EngineError::Protocol("a second hello".into()));
                    }
                    _ => {}
                }
            }
            if batch_tx.send(batch).await.is_err() {
                return Err(EngineError::Protocol("the entry handler stopped".into()));
            }
        }
        Ok::<_, EngineError>(())
    };
    tokio::pin!(reader);
    let mut writer = writer;
    let result = tokio::select! {
        biased;
        // The writer sends `Finished` once every entry is resolved: the session is complete
        // whatever the client does with the connection afterwards.
        joined = &mut writer => joined
            .map_err(|e| EngineError::Protocol(format!("control writer failed: {e}")))
            .and_then(|r| r),
        read = &mut reader => match read {
            // A client ends its control stream only after reading `Finished`, so the writer is
            // about to be done; one that ends it early has broken the protocol.
            Ok(()) => match tokio::time::timeout(std::time::Duration::from_secs(30), &mut writer).await {
                Ok(joined) => joined
                    .map_err(|e| EngineError::Protocol(format!("control writer failed: {e}")))
                    .and_then(|r| r),
                Err(_) => Err(EngineError::Protocol(
                    "the client ended the control stream before the session finished".into(),
                )),
            },
            Err(e) => {
                if matches!(e, EngineError::Protocol(_)) {
                    link.close(PROTOCOL_ERROR, &e.to_string());
                }
                writer.abort();
                Err(e)
            }
        },
    };
    data.abort();
    // Entries still queued for the handler thread are dropped; blocking work already under
    // way runs to its end: let it finish before abandoning files, so nothing is created
    // after the session has cleaned up.
    files.close();
    files.wait_idle().await;
    files.abandon_all();
    // A session that ends early (an error, a full disk, a lost sender) still makes what it
    // installed durable with its final times; a complete one already did (no-op then).
    let settled = {
        let files = files.clone();
        tokio::task::spawn_blocking(move || files.settle()).await
    };
    let result = match (result, settled) {
        (Ok(_), Ok(Err(e))) => Err(EngineError::Store(e)),
        (result, _) => result,
    };
    {
        let mut active = lock(&config.active);
        if active
            .get(&dest.to_bytes())
            .is_some_and(|(id, _)| *id == session_id)
        {
            active.remove(&dest.to_bytes());
        }
    }
    // The disk filled: whatever the connection did afterwards, that is what ended the session
    // (the sender stops at the first file that did not fit).
    let result = match (result, lock(&rules.no_space).take()) {
        (_, Some(path)) => Err(EngineError::NoSpace {
            path,
            bytes_remaining: config.progress.as_ref().map_or(0, |p| {
                Progress::get(&p.bytes_scanned).saturating_sub(Progress::get(&p.bytes_done))
            }),
        }),
        (result, _) => result,
    };
    let (installed, failed) = result.as_ref().map_or((0, 0), |r| *r);
    events(Event::SessionEnded {
        peer,
        installed,
        failed,
        error: result.as_ref().err().map(|e| e.to_string()),
    });
    result.map(|(installed, failed)| SessionReport { installed, failed })
}

/// Writes answers to the client, coalesced; finishes the session once every entry is resolved
/// after the end of entries. Returns (installed, failed).
async fn control_writer(
    mut ctl_tx: FramedSend,
    mut out_rx: mpsc::UnboundedReceiver<Vec<Outcome>>,
    session: Arc<Mutex<ServerSession>>,
    files: Arc<Files>,
    (dirs, rules): (Arc<DirList>, Arc<EntryRules>),
    (started, progress): (std::time::Instant, Option<Arc<Progress>>),
) -> Result<(u64, u64), EngineError> {
    let (mut installed, mut failed, mut written) = (0u64, 0u64, 0u64);
    let mut end_seen = false;
    let io = |e| EngineError::connection("cannot answer the client", e);
    while let Some(mut batch) = out_rx.recv().await {
        let mut finished = false;
        while batch.len() < 4096 {
            match out_rx.try_recv() {
                Ok(more) => batch.extend(more),
                Err(_) => break,
            }
        }
        for outcome in batch {
            match outcome {
                Outcome::Plain(msg) => ctl_tx.queue(&msg),
                Outcome::Resolved(id, msg) => {
                    let mut session = lock(&session);
                    finished |= match &msg {
                        Message::Installed(i) => {
                            installed += 1;
                            written += i.bytes_written;
                            if let Some(p) = &progress {
                                Progress::add(&p.files_done, 1);
                                Progress::add(&p.bytes_done, i.bytes_written);
                                Progress::add(&p.bytes_sent, i.bytes_written);
                            }
                            session.resolve(id)
                        }
                        other => {
                            if let Message::Failed(f) = other
                                && f.no_space
                            {
                                lock(&rules.no_space).get_or_insert_with(|| f.message.clone());
                            }
                            failed += 1;
                            session.resolve_failed(id)
                        }
                    };
                    drop(session);
                    ctl_tx.queue(&msg);
                }
                Outcome::Checked {
                    id,
                    files,
                    unchanged,
                } => {
                    if unchanged {
                        installed += files;
                        if let Some(p) = &progress {
                            Progress::add(&p.files_done, files);
                        }
                    }
                    finished |= lock(&session).resolve(id);
                    ctl_tx.queue(&Message::QuickChecked(haul_proto::QuickChecked {
                        id,
                        unchanged,
                    }));
                }
                Outcome::EndOfEntries => {
                    end_seen = true;
                    finished |= lock(&session).outstanding() == 0;
                }
            }
        }
        ctl_tx.flush().await.map_err(io)?;
        if finished && end_seen {
            // Directories get their mode and mtime last, deepest first, because installing
            // their contents changed their mtime.
            let root_files = files.clone();
            let dirs = std::mem::take(&mut *lock(&dirs));
            let policy = rules.policy;
            let dest = rules.dest.clone();
            let sync = tokio::task::spawn_blocking(move || {
                // Every file's data durable and its time set, before the directories get
                // theirs (settling a file's time does not touch its directory's).
                root_files.settle()?;
                for (rel, attrs) in dirs.iter().rev() {
                    let root = root_files.root();
                    // A directory already as the source has it is left alone (its ctime too).
                    if !dir_meta_differs(root, rel, attrs, &policy) {
                        continue;
                    }
                    root.set_dir_meta(rel, attrs)?;
                }
                root_files.root().sync()?;
                // A destination on another file system below the root is flushed too.
                root_files.root().sync_dir(&dest)?;
                // Sessions that moved enough data to time it feed the estimates of dry runs.
                if written >= 16 << 20 {
                    let _ = root_files
                        .root()
                        .record_throughput(written, started.elapsed().as_secs_f64());
                }
                Ok::<_, haul_store::StoreError>(())
            })
            .await
            .map_err(|e| EngineError::Protocol(format!("finishing task failed: {e}")))?;
            if let Err(e) = sync {
                ctl_tx.queue(&Message::Abort(haul_proto::Abort {
                    message: e.to_string(),
                }));
                ctl_tx.flush().await.map_err(io)?;
                return Err(e.into());
            }
            ctl_tx
                .send(&Message::Finished(haul_proto::Finished {
                    installed,
                    failed,
                    not_applied: rules.report.snapshot(),
                }))
                .await
                .map_err(io)?;
            let _ = ctl_tx.finish();
            return Ok((installed, failed));
        }
    }
    Err(EngineError::Protocol(
        "the session ended before every entry was resolved".into(),
    ))
}

/// Whether a directory's mode, mtime, owner or attributes differ from what the source has
/// (true when unsure).
fn dir_meta_differs(
    root: &Root,
    rel: &RelPath,
    attrs: &haul_store::Attrs,
    policy: &Policy,
) -> bool {
    let Ok(Some(st)) = root.stat_entry(rel) else {
        return true;
    };
    st.mode & 0o7777 != attrs.meta.mode & policy.mode_mask()
        || st.mtime_sec != attrs.meta.mtime_sec
        || st.mtime_nsec != attrs.meta.mtime_nsec
        || attrs.owner.is_some_and(|o| o != (st.uid, st.gid))
        || match &attrs.xattrs {
            Some(want) => root.read_xattrs(rel).map_or(true, |have| have != *want),
            None => false,
        }
}

/// Handles a batch of control events on several threads: a receiver doing one `stat` or
/// `create` at a time cannot keep up with a sender announcing a million small files.
///
/// Order matters only per entry and for directories: directories are created first, in
/// order (a directory's parent comes before it), then the other events are split by entry id,
/// so an entry's `FileDone` runs on the same thread after the entry itself; quick checks,
/// which nothing follows, are dealt out in turn. The end of the entries is passed on last.
fn handle_batch(files: &Files, rules: &EntryRules, dirs: &DirList, batch: Vec<ServerEvent>) {
    let threads = crate::cores().clamp(1, 4);
    let mut lanes: Vec<Vec<ServerEvent>> = (0..threads).map(|_| Vec::new()).collect();
    let mut end = false;
    let mut quick_checks = 0u64;
    for event in batch {
        let id = match &event {
            ServerEvent::Entry(entry) if entry.kind == haul_proto::EntryKind::Dir => {
                // At once, before any file of this batch that may live in it.
                run_event(files, rules, dirs, event);
                continue;
            }
            // Names come before the entries that use them; the deletion lists come after
            // every entry is resolved, and in order.
            ServerEvent::Names(names) => {
                lock_write(&rules.ids).learn(names);
                continue;
            }
            ServerEvent::Prune(msg) => {
                if !files.is_closed() {
                    prune::prune(files, &rules.pruner, &rules.dest, msg.clone());
                }
                continue;
            }
            ServerEvent::PruneEnd => {
                if !files.is_closed() {
                    prune::prune_end(files, &rules.pruner, rules.dry_run);
                }
                continue;
            }
            ServerEvent::Entry(entry) => entry.id,
            ServerEvent::QuickCheck(_) => {
                // No later event names a check: spread them evenly (by id they could all
                // land in one lane, their ids alternating with their directories').
                quick_checks += 1;
                quick_checks
            }
            ServerEvent::FileDone { id, .. } | ServerEvent::SourceFailed { id, .. } => *id,
            ServerEvent::EndOfEntries => {
                end = true;
                continue;
            }
            ServerEvent::Abort(_) | ServerEvent::Hello(_) => continue,
        };
        lanes[(id % threads as u64) as usize].push(event);
    }
    let busy_lanes = lanes.iter().filter(|l| !l.is_empty()).count();
    // A quick check stands for up to a thousand files' `statat`s: weigh it so.
    let weight = |event: &ServerEvent| match event {
        ServerEvent::QuickCheck(check) => usize::try_from(check.files).unwrap_or(usize::MAX),
        _ => 1,
    };
    let work = lanes
        .iter()
        .flatten()
        .map(weight)
        .fold(0, usize::saturating_add);
    if busy_lanes <= 1 || work < 32 {
        // Not worth a thread.
        for event in lanes.into_iter().flatten() {
            run_event(files, rules, dirs, event);
        }
    } else {
        std::thread::scope(|scope| {
            let mut lanes = lanes.into_iter();
            let mine = lanes.next().unwrap_or_default();
            for lane in lanes.filter(|l| !l.is_empty()) {
                scope.spawn(move || {
                    files.batched(|| {
                        for event in lane {
                            run_event(files, rules, dirs, event);
                        }
                    })
                });
            }
            for event in mine {
                run_event(files, rules, dirs, event);
            }
        });
    }
    if end {
        files.send(Outcome::EndOfEntries);
    }
}

fn lock_write<T>(l: &std::sync::RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

fn run_event(files: &Files, rules: &EntryRules, dirs: &DirList, event: ServerEvent) {
    if files.is_closed() {
        return;
    }
    match event {
        ServerEvent::Entry(entry) => handle_entry(files, rules, dirs, entry),
        ServerEvent::QuickCheck(check) => quick_check(files, rules, &check),
        ServerEvent::FileDone {
            id,
            hash,
            chunks_sent,
        } => files.file_done(id, hash, chunks_sent),
        ServerEvent::SourceFailed { id, message } => files.source_failed(id, message),
        ServerEvent::EndOfEntries
        | ServerEvent::Abort(_)
        | ServerEvent::Hello(_)
        | ServerEvent::Names(_)
        | ServerEvent::Prune(_)
        | ServerEvent::PruneEnd => {}
    }
}
