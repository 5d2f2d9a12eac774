//! Remote operations: what a job asks of a serving host besides moving data.
//!
//! A client opens a connection, says hello with [`Hello::OPS`] and its token, and then sends
//! [`Request`]s, one at a time, each answered by one or more [`Response`]s. Every operation is
//! confined exactly like a push: paths are relative to the token's grant, parsed as
//! [`RelPath`] (no `..`, no absolute path, never `.haul`), and reached on the host by walking
//! from the root with `O_NOFOLLOW` (see `haul_store`'s `ops`). Looking (`df`, `stat`, `ls`,
//! `du`, snapshot and lease lists) needs any scope; reading file data (`cat`, manifests with
//! hashes) needs read scope; every change (`rm`, `mv`, `put`, snapshots, leases, registry records) needs write
//! scope, respects leases held by other jobs, and is logged by the host.
//!
//! The operations travel as JSON ([`Op`]); a `put`'s bytes and a `cat`'s answer follow as raw
//! bytes. [`Remote`] is the client's handle; the host side is [`serve_ops`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use haul_net::{Token, Trust};
use haul_proto::{Hello, Limits, Message, Request, Response, ServerSession};
use haul_store::{RelPath, Root};
use serde::{Deserialize, Serialize};

use crate::error::EngineError;
use crate::progress::{Event, EventSink};
use crate::receiver::{Control, Grant, ReceiverConfig, SessionReport, check_token, refuse};
use crate::transport::{Link, QuicLink};
use crate::wire::{FramedRecv, FramedSend};

/// The largest control file `cat` and `put` move.
pub const MAX_CONTROL_FILE: usize = 512 << 10;

/// One remote operation. Paths are relative to the token's grant; `""` or `"/"` is all of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Free and total bytes and inodes of the host's file system.
    Df,
    /// What is at a path (None: nothing).
    Stat {
        /// The path.
        path: String,
    },
    /// A directory's entries.
    Ls {
        /// The directory.
        path: String,
    },
    /// The size of a tree.
    Du {
        /// The tree.
        path: String,
    },
    /// Every entry of a tree with its size and, for files, its BLAKE3 hash.
    Manifest {
        /// The tree.
        path: String,
    },
    /// Removes a file, link or whole tree.
    Rm {
        /// The path.
        path: String,
    },
    /// Renames within the grant; the target must not exist.
    Mv {
        /// From.
        from: String,
        /// To.
        to: String,
    },
    /// Reads a small control file.
    Cat {
        /// The file.
        path: String,
    },
    /// Replaces a small control file atomically (its bytes follow the request).
    Put {
        /// The file.
        path: String,
    },
    /// Makes a snapshot of a tree.
    SnapshotCreate {
        /// The tree.
        path: String,
        /// Free-form: who made it and why.
        label: String,
    },
    /// The snapshots under the grant.
    SnapshotList,
    /// Deletes a snapshot.
    SnapshotDelete {
        /// Its id.
        id: String,
    },
    /// Restores a snapshot onto the live tree it was taken of, in place on the host (what
    /// was added since is removed, what changed is put back); crash-safe, see
    /// `haul_store::Root::restore_snapshot`. Refused while another holder leases that tree.
    SnapshotRestore {
        /// Its id.
        id: String,
    },
    /// Takes (or renews, for the same holder) a lease on a tree.
    LeaseTake {
        /// The tree.
        path: String,
        /// Who holds it (a job id).
        holder: String,
        /// What for, shown to whoever is refused.
        purpose: String,
        /// How long it lasts unless renewed, in milliseconds.
        ttl_ms: u64,
    },
    /// Gives a lease up.
    LeaseRelease {
        /// The tree.
        path: String,
        /// Its holder.
        holder: String,
    },
    /// The leases under the grant.
    Leases,
    /// The registry record of a tree (a workflow's note of what the tree is for, kept in the
    /// host's `.haul/registry/`, never among the tree's files).
    RegistryGet {
        /// The tree.
        path: String,
    },
    /// Replaces the registry record of a tree (its UTF-8 text follows the request; empty
    /// removes it).
    RegistryPut {
        /// The tree.
        path: String,
    },
    /// Every registry record under the grant.
    RegistryList,
}

impl Op {
    /// The operation's name, as the CLI spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Df => "df",
            Op::Stat { .. } => "stat",
            Op::Ls { .. } => "ls",
            Op::Du { .. } => "du",
            Op::Manifest { .. } => "manifest",
            Op::Rm { .. } => "rm",
            Op::Mv { .. } => "mv",
            Op::Cat { .. } => "cat",
            Op::Put { .. } => "put",
            Op::SnapshotCreate { .. } => "snapshot create",
            Op::SnapshotList => "snapshot list",
            Op::SnapshotDelete { .. } => "snapshot delete",
            Op::SnapshotRestore { .. } => "snapshot restore",
            Op::LeaseTake { .. } => "lease take",
            Op::LeaseRelease { .. } => "lease release",
            Op::Leases => "leases",
            Op::RegistryGet { .. } => "registry get",
            Op::RegistryPut { .. } => "registry put",
            Op::RegistryList => "registry list",
        }
    }

    /// True for operations that change the host's tree.
    pub fn mutates(&self) -> bool {
        matches!(
            self,
            Op::Rm { .. }
                | Op::Mv { .. }
                | Op::Put { .. }
                | Op::SnapshotCreate { .. }
                | Op::SnapshotDelete { .. }
                | Op::SnapshotRestore { .. }
                | Op::LeaseTake { .. }
                | Op::LeaseRelease { .. }
                | Op::RegistryPut { .. }
        )
    }

    /// True for operations that read file data.
    pub fn reads_data(&self) -> bool {
        matches!(self, Op::Manifest { .. } | Op::Cat { .. })
    }

    /// The paths the operation names, for the host's log and lease checks.
    fn paths(&self) -> Vec<&str> {
        match self {
            Op::Stat { path }
            | Op::Ls { path }
            | Op::Du { path }
            | Op::Manifest { path }
            | Op::Rm { path }
            | Op::Cat { path }
            | Op::Put { path }
            | Op::SnapshotCreate { path, .. }
            | Op::LeaseTake { path, .. }
            | Op::LeaseRelease { path, .. }
            | Op::RegistryGet { path }
            | Op::RegistryPut { path } => vec![path],
            Op::Mv { from, to } => vec![from, to],
            Op::SnapshotDelete { id } | Op::SnapshotRestore { id } => vec![id],
            Op::Df | Op::SnapshotList | Op::Leases | Op::RegistryList => Vec::new(),
        }
    }
}

/// Free space on the host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceInfo {
    /// Bytes an unprivileged writer may still use.
    pub free_bytes: u64,
    /// Size of the file system.
    pub total_bytes: u64,
    /// Inodes free.
    pub free_inodes: u64,
    /// Inodes in all.
    pub total_inodes: u64,
}

/// What is at a path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathInfo {
    /// `file`, `dir`, `symlink`, `fifo`, `socket`, `char_device` or `block_device`.
    pub kind: String,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits and type.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime_sec: i64,
    /// Nanoseconds.
    pub mtime_nsec: u32,
    /// Links to the inode.
    pub nlink: u64,
    /// For a directory: true when it holds nothing (at the grant's top, `.haul` does not
    /// count).
    pub empty: Option<bool>,
}

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirItem {
    /// The name (names that are not UTF-8 are shown with U+FFFD).
    pub name: String,
    /// See [`PathInfo::kind`].
    pub kind: String,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime_sec: i64,
}

/// The size of a tree.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeSize {
    /// Bytes in regular files (apparent size).
    pub bytes: u64,
    /// Bytes the file system allocated (each inode counted once).
    pub allocated_bytes: u64,
    /// Regular files.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Anything else.
    pub others: u64,
}

/// One entry of a manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Relative to the tree asked for (`""` for the tree itself).
    pub path: String,
    /// See [`PathInfo::kind`].
    pub kind: String,
    /// Size in bytes.
    pub size: u64,
    /// For regular files: the BLAKE3 of the contents, as `b3sum` prints it.
    pub blake3: Option<String>,
}

/// A snapshot on the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// Its id (sortable by creation time).
    pub id: String,
    /// Creation time, seconds since the epoch.
    pub created: u64,
    /// Free-form label.
    pub label: String,
    /// The tree it is a copy of, relative to the grant.
    pub path: String,
    /// `reflink` or `hardlink`.
    pub method: String,
    /// Regular files in it.
    pub files: u64,
    /// Bytes in them.
    pub bytes: u64,
    /// False when its making was interrupted (it can only be deleted).
    pub complete: bool,
}

/// One registry record on the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryRecord {
    /// The tree it is about, relative to the grant.
    pub path: String,
    /// The record, as its writer put it.
    pub record: String,
}

/// What restoring a snapshot in place did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreInfo {
    /// The snapshot restored.
    pub id: String,
    /// The tree it was restored onto, relative to the grant.
    pub path: String,
    /// Entries of the snapshot now in the live tree.
    pub restored: u64,
    /// Top-level entries of the live tree that were replaced or removed.
    pub removed: u64,
}

/// A lease on the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    /// The tree, relative to the grant.
    pub path: String,
    /// Who holds it.
    pub holder: String,
    /// What for.
    pub purpose: String,
    /// When it ends unless renewed, milliseconds since the epoch.
    pub expires_ms: u64,
    /// The holder whose expired lease this one took over, if any.
    pub took_over: Option<String>,
}

/// Where remote operations go.
#[derive(Clone, Debug)]
pub struct RemoteTarget {
    /// The serving host's address.
    pub addr: SocketAddr,
    /// "HOST:PORT" as the user wrote it (the known-hosts key).
    pub host_key: String,
    /// How the host's certificate is trusted.
    pub trust: Trust,
    /// The token.
    pub token: Token,
    /// The job this handle works for (the holder of its leases).
    pub holder: Option<String>,
}

/// A connection for remote operations on one serving host.
pub struct Remote {
    link: Arc<dyn Link>,
    tx: FramedSend,
    rx: FramedRecv,
    next_id: u64,
    endpoint: Option<quinn::Endpoint>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("next_id", &self.next_id)
            .finish()
    }
}

impl Drop for Remote {
    /// A handle dropped without [`Remote::close`] still closes its connection, so the host
    /// does not keep a slot for it until the idle timeout.
    fn drop(&mut self) {
        self.link.close(0, "done");
    }
}

impl Remote {
    /// Connects and authenticates. Fails with [`EngineError::Refused`] for a token the host
    /// does not accept.
    pub async fn connect(target: &RemoteTarget) -> Result<Remote, EngineError> {
        let connected = haul_net::connect(target.addr, &target.host_key, &target.trust).await?;
        let link: Arc<dyn Link> = Arc::new(QuicLink::new(connected.connection.clone()));
        let mut remote =
            Remote::over(link, target.token.as_bytes(), target.holder.as_deref()).await?;
        remote.endpoint = Some(connected.endpoint);
        Ok(remote)
    }

    /// Opens an operations session over an established link.
    pub async fn over(
        link: Arc<dyn Link>,
        token: &[u8],
        holder: Option<&str>,
    ) -> Result<Remote, EngineError> {
        let (send, recv) = link
            .open_control()
            .await
            .map_err(|e| EngineError::connection("cannot open the control stream", e))?;
        let (mut tx, mut rx) = (
            FramedSend::new(send),
            FramedRecv::new(recv, Limits::for_chunk_size(Request::MAX_BODY)),
        );
        let mut hello = crate::sender::hello_for(&Default::default(), token, link.as_ref(), b"");
        hello.flags = Hello::OPS;
        hello.holder = Bytes::copy_from_slice(holder.unwrap_or_default().as_bytes());
        tx.send(&Message::Hello(hello))
            .await
            .map_err(|e| EngineError::connection("cannot send the hello", e))?;
        match rx.next().await? {
            Some(Message::Welcome(_)) => Ok(Remote {
                link,
                tx,
                rx,
                next_id: 1,
                endpoint: None,
            }),
            Some(Message::Refused(r)) => Err(EngineError::Refused {
                reason: r.reason,
                message: r.message,
            }),
            Some(other) => Err(EngineError::Protocol(format!(
                "the host answered with {} instead of a welcome",
                other.name()
            ))),
            None => Err(EngineError::Protocol(
                "the host closed the connection without answering".into(),
            )),
        }
    }

    /// Sends one operation (with `payload` after it, for `put`) and collects every part of
    /// the answer.
    pub async fn call(&mut self, op: &Op, payload: &[u8]) -> Result<Vec<Bytes>, EngineError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut body = serde_json::to_vec(op).expect("operations serialize");
        if matches!(op, Op::Put { .. } | Op::RegistryPut { .. }) {
            body.push(0);
            body.extend_from_slice(payload);
        }
        if body.len() > Request::MAX_BODY as usize {
            return Err(EngineError::Remote {
                op: op.name().into(),
                message: format!(
                    "the request is {} bytes, more than the {} a request may carry",
                    body.len(),
                    Request::MAX_BODY
                ),
            });
        }
        self.tx
            .send(&Message::Request(Request {
                id,
                body: Bytes::from(body),
            }))
            .await
            .map_err(|e| EngineError::connection("cannot send the request", e))?;
        let mut parts = Vec::new();
        loop {
            match self.rx.next().await? {
                Some(Message::Response(r)) if r.id == id => {
                    if !r.ok {
                        return Err(EngineError::Remote {
                            op: op.name().into(),
                            message: String::from_utf8_lossy(&r.body).into_owned(),
                        });
                    }
                    parts.push(r.body);
                    if !r.more {
                        return Ok(parts);
                    }
                }
                Some(other) => {
                    return Err(EngineError::Protocol(format!(
                        "unexpected {} answering a request",
                        other.name()
                    )));
                }
                None => {
                    return Err(EngineError::Protocol(
                        "the host closed the connection during a request".into(),
                    ));
                }
            }
        }
    }

    async fn call_json<T: serde::de::DeserializeOwned>(
        &mut self,
        op: &Op,
    ) -> Result<T, EngineError> {
        let name = op.name();
        let parts = self.call(op, &[]).await?;
        let body = parts.concat();
        serde_json::from_slice(&body)
            .map_err(|e| EngineError::Protocol(format!("malformed answer to {name}: {e}")))
    }

    /// Free space of the host's file system.
    pub async fn df(&mut self) -> Result<SpaceInfo, EngineError> {
        self.call_json(&Op::Df).await
    }

    /// What is at `path` (None: nothing).
    pub async fn stat(&mut self, path: &str) -> Result<Option<PathInfo>, EngineError> {
        self.call_json(&Op::Stat { path: path.into() }).await
    }

    /// The entries of the directory `path`.
    pub async fn ls(&mut self, path: &str) -> Result<Vec<DirItem>, EngineError> {
        self.call_list(&Op::Ls { path: path.into() }).await
    }

    /// The size of the tree `path`.
    pub async fn du(&mut self, path: &str) -> Result<TreeSize, EngineError> {
        self.call_json(&Op::Du { path: path.into() }).await
    }

    /// Every entry of the tree `path` with its size and hash (read scope).
    pub async fn manifest(&mut self, path: &str) -> Result<Vec<ManifestEntry>, EngineError> {
        self.call_list(&Op::Manifest { path: path.into() }).await
    }

    /// A list answer, which comes in parts of whole JSON arrays.
    async fn call_list<T: serde::de::DeserializeOwned>(
        &mut self,
        op: &Op,
    ) -> Result<Vec<T>, EngineError> {
        let mut all = Vec::new();
        for part in self.call(op, &[]).await? {
            let items: Vec<T> = serde_json::from_slice(&part).map_err(|e| {
                EngineError::Protocol(format!("malformed answer to {}: {e}", op.name()))
            })?;
            all.extend(items);
        }
        Ok(all)
    }

    /// Removes `path` (a file, link or tree); returns the entries removed.
    pub async fn rm(&mut self, path: &str) -> Result<u64, EngineError> {
        self.call_json(&Op::Rm { path: path.into() }).await
    }

    /// Renames `from` to `to`, which must not exist.
    pub async fn mv(&mut self, from: &str, to: &str) -> Result<(), EngineError> {
        self.call_json(&Op::Mv {
            from: from.into(),
            to: to.into(),
        })
        .await
    }

    /// Reads the small file `path` (read scope).
    pub async fn cat(&mut self, path: &str) -> Result<Vec<u8>, EngineError> {
        Ok(self
            .call(&Op::Cat { path: path.into() }, &[])
            .await?
            .concat())
    }

    /// Replaces the small file `path` with `bytes`, atomically.
    pub async fn put(&mut self, path: &str, bytes: &[u8]) -> Result<(), EngineError> {
        if bytes.len() > MAX_CONTROL_FILE {
            return Err(EngineError::Remote {
                op: "put".into(),
                message: format!(
                    "{} bytes is more than a control file may hold ({MAX_CONTROL_FILE}); move \
                     data with push",
                    bytes.len()
                ),
            });
        }
        self.call(&Op::Put { path: path.into() }, bytes).await?;
        Ok(())
    }

    /// Makes a snapshot of the tree `path`.
    pub async fn snapshot_create(
        &mut self,
        path: &str,
        label: &str,
    ) -> Result<SnapshotInfo, EngineError> {
        self.call_json(&Op::SnapshotCreate {
            path: path.into(),
            label: label.into(),
        })
        .await
    }

    /// The snapshots under the grant, oldest first.
    pub async fn snapshot_list(&mut self) -> Result<Vec<SnapshotInfo>, EngineError> {
        self.call_list(&Op::SnapshotList).await
    }

    /// Deletes the snapshot `id`.
    pub async fn snapshot_delete(&mut self, id: &str) -> Result<(), EngineError> {
        self.call_json(&Op::SnapshotDelete { id: id.into() }).await
    }

    /// Restores the snapshot `id` onto the tree it was taken of, in place (see
    /// [`Op::SnapshotRestore`]).
    pub async fn snapshot_restore(&mut self, id: &str) -> Result<RestoreInfo, EngineError> {
        self.call_json(&Op::SnapshotRestore { id: id.into() }).await
    }

    /// Takes or renews a lease on `path` for `holder`.
    pub async fn lease_take(
        &mut self,
        path: &str,
        holder: &str,
        purpose: &str,
        ttl: Duration,
    ) -> Result<LeaseInfo, EngineError> {
        self.call_json(&Op::LeaseTake {
            path: path.into(),
            holder: holder.into(),
            purpose: purpose.into(),
            ttl_ms: ttl.as_millis() as u64,
        })
        .await
    }

    /// Gives up `holder`'s lease on `path`.
    pub async fn lease_release(&mut self, path: &str, holder: &str) -> Result<(), EngineError> {
        self.call_json(&Op::LeaseRelease {
            path: path.into(),
            holder: holder.into(),
        })
        .await
    }

    /// The leases under the grant.
    pub async fn leases(&mut self) -> Result<Vec<LeaseInfo>, EngineError> {
        self.call_list(&Op::Leases).await
    }

    /// The registry record of the tree `path` (None: none was written). Any scope may read
    /// it: it says what the tree is for, not what it holds.
    pub async fn registry_get(&mut self, path: &str) -> Result<Option<String>, EngineError> {
        self.call_json(&Op::RegistryGet { path: path.into() }).await
    }

    /// Replaces the registry record of the tree `path` (write scope; respects leases); an
    /// empty `record` removes it. At most [`haul_store::MAX_RECORD`] bytes.
    pub async fn registry_put(&mut self, path: &str, record: &str) -> Result<(), EngineError> {
        if record.len() > haul_store::MAX_RECORD {
            return Err(EngineError::Remote {
                op: "registry put".into(),
                message: format!(
                    "{} bytes is more than a registry record may hold ({})",
                    record.len(),
                    haul_store::MAX_RECORD
                ),
            });
        }
        self.call(&Op::RegistryPut { path: path.into() }, record.as_bytes())
            .await?;
        Ok(())
    }

    /// Every registry record under the grant, by path.
    pub async fn registry_list(&mut self) -> Result<Vec<RegistryRecord>, EngineError> {
        self.call_list(&Op::RegistryList).await
    }

    /// Ends the session cleanly.
    pub async fn close(mut self) {
        let _ = self.tx.finish();
        self.link.close(0, "done");
        if let Some(endpoint) = self.endpoint.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        }
    }
}

/// A lease held on a host while a job runs: renewed in the background every third of its
/// time to live, released by [`LeaseGuard::release`] (or, if the job dies, taken over by
/// another once it expires).
pub struct LeaseGuard {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), EngineError>>,
    /// The lease as first taken.
    pub info: LeaseInfo,
}

impl std::fmt::Debug for LeaseGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseGuard")
            .field("info", &self.info)
            .finish()
    }
}

impl LeaseGuard {
    /// Takes a lease on `path` for `holder` on its own connection and keeps renewing it.
    pub async fn hold(
        target: &RemoteTarget,
        path: &str,
        holder: &str,
        purpose: &str,
        ttl: Duration,
    ) -> Result<LeaseGuard, EngineError> {
        LeaseGuard::hold_on(Remote::connect(target).await?, path, holder, purpose, ttl).await
    }

    /// [`LeaseGuard::hold`] on a session already open (a host's, or a local directory's from
    /// [`crate::local_ops::open_local`]), which the guard then owns and closes on release.
    pub async fn hold_on(
        mut remote: Remote,
        path: &str,
        holder: &str,
        purpose: &str,
        ttl: Duration,
    ) -> Result<LeaseGuard, EngineError> {
        let info = remote.lease_take(path, holder, purpose, ttl).await?;
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let (path, holder, purpose) = (path.to_string(), holder.to_string(), purpose.to_string());
        let task = tokio::spawn(async move {
            let every = (ttl / 3).max(Duration::from_millis(50));
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {
                        remote.lease_take(&path, &holder, &purpose, ttl).await?;
                    }
                    _ = stopped.changed() => break,
                }
            }
            let released = remote.lease_release(&path, &holder).await;
            remote.close().await;
            released
        });
        Ok(LeaseGuard { stop, task, info })
    }

    /// Stops renewing and releases the lease.
    pub async fn release(self) -> Result<(), EngineError> {
        let _ = self.stop.send(true);
        self.task
            .await
            .map_err(|e| EngineError::Protocol(format!("the lease renewal task failed: {e}")))?
    }
}

/// Host: serves an operations session until the client closes it.
pub(crate) async fn serve_ops(
    link: Arc<dyn Link>,
    control: Control,
    mut session: ServerSession,
    hello: Hello,
    config: Arc<ReceiverConfig>,
    peer: String,
    events: EventSink,
) -> Result<SessionReport, EngineError> {
    let grant = match session
        .check_hello(&hello)
        .and_then(|()| check_token(&config, &hello, link.as_ref()).cloned())
    {
        Ok(grant) => grant,
        Err(refused) => return Err(refuse(control, &mut session, refused).await),
    };
    let holder = String::from_utf8_lossy(&hello.holder).into_owned();
    let (mut tx, mut rx) = control;
    let welcome = haul_proto::Welcome {
        version: haul_proto::PROTOCOL_VERSION,
        session: 0,
        free_bytes: config.root().available_bytes().unwrap_or(0),
        history_bytes: 0,
        history_ms: 0,
        renamed: Vec::new(),
        privileged: false,
    };
    tx.send(&Message::Welcome(welcome))
        .await
        .map_err(|e| EngineError::connection("cannot send the welcome", e))?;
    rx.set_limits(Limits::for_chunk_size(Request::MAX_BODY));
    let mut done = 0u64;
    while let Some(msg) = rx.next().await? {
        let Message::Request(request) = msg else {
            return Err(EngineError::Protocol(format!(
                "expected a request, got {}",
                msg.name()
            )));
        };
        let (json, payload) = match request.body.iter().position(|b| *b == 0) {
            Some(at) => (request.body.slice(..at), request.body.slice(at + 1..)),
            None => (request.body.clone(), Bytes::new()),
        };
        let answer = match serde_json::from_slice::<Op>(&json) {
            Err(e) => Err(format!("not an operation this host knows: {e}")),
            Ok(op) => {
                let (config, grant, holder) = (config.clone(), grant.clone(), holder.clone());
                let logged = op.clone();
                let result = tokio::task::spawn_blocking(move || {
                    run_op(config.root(), &grant, &holder, &op, &payload)
                })
                .await
                .unwrap_or_else(|e| Err(format!("the operation failed: {e}")));
                if logged.mutates() {
                    let error = result.as_ref().err().cloned();
                    tracing::info!(
                        peer = %peer,
                        op = logged.name(),
                        paths = ?logged.paths(),
                        error = ?error,
                        "remote operation"
                    );
                    events(Event::RemoteOperation {
                        peer: peer.clone(),
                        op: logged.name().into(),
                        paths: logged.paths().iter().map(|p| p.to_string()).collect(),
                        error,
                    });
                }
                result
            }
        };
        match answer {
            Ok(parts) => {
                let last = parts.len().saturating_sub(1);
                for (i, body) in parts.into_iter().enumerate() {
                    tx.queue(&Message::Response(Response {
                        id: request.id,
                        ok: true,
                        more: i < last,
                        body,
                    }));
                }
            }
            Err(message) => tx.queue(&Message::Response(Response {
                id: request.id,
                ok: false,
                more: false,
                body: Bytes::from(message.into_bytes()),
            })),
        }
        tx.flush()
            .await
            .map_err(|e| EngineError::connection("cannot answer the client", e))?;
        done += 1;
    }
    let _ = tx.finish();
    Ok(SessionReport {
        installed: done,
        failed: 0,
    })
}

/// A path from a request, under the grant.
fn grant_path(grant: &Grant, path: &str) -> Result<RelPath, String> {
    let trimmed = path.trim_matches('/');
    let rel = RelPath::parse(trimmed.as_bytes()).map_err(|e| format!("path {path:?}: {e}"))?;
    Ok(grant.subdir.join(&rel))
}

/// A path on the host, as the client names it (relative to its grant).
fn client_path(grant: &Grant, rel: &RelPath) -> String {
    rel.strip_prefix(&grant.subdir)
        .map(|r| r.display())
        .unwrap_or_else(|| rel.display())
}

/// A list answer in parts: each a JSON array well within [`Request::MAX_BODY`].
fn json_list<T: Serialize>(items: &[T]) -> Result<Vec<Bytes>, String> {
    let budget = (Request::MAX_BODY as usize) / 2;
    let mut parts = Vec::new();
    let mut part: Vec<u8> = b"[".to_vec();
    for item in items {
        let encoded = serde_json::to_vec(item).map_err(|e| e.to_string())?;
        if part.len() > 1 && part.len() + encoded.len() + 2 > budget {
            part.push(b']');
            parts.push(Bytes::from(std::mem::replace(&mut part, b"[".to_vec())));
        }
        if part.len() > 1 {
            part.push(b',');
        }
        part.extend_from_slice(&encoded);
    }
    part.push(b']');
    parts.push(Bytes::from(part));
    Ok(parts)
}

fn json<T: Serialize>(value: &T) -> Result<Vec<Bytes>, String> {
    serde_json::to_vec(value)
        .map(|v| vec![Bytes::from(v)])
        .map_err(|e| e.to_string())
}

fn kind_name(kind: haul_store::FileKind) -> &'static str {
    use haul_store::FileKind;
    match kind {
        FileKind::File => "file",
        FileKind::Dir => "dir",
        FileKind::Symlink => "symlink",
        FileKind::Fifo => "fifo",
        FileKind::Socket => "socket",
        FileKind::CharDev => "char_device",
        FileKind::BlockDev => "block_device",
        _ => "other",
    }
}

/// Runs one operation on the host's root, confined to the grant.
fn run_op(
    root: &Root,
    grant: &Grant,
    holder: &str,
    op: &Op,
    payload: &[u8],
) -> Result<Vec<Bytes>, String> {
    if op.mutates() && !grant.scope.can_write() {
        return Err(format!(
            "{} needs a token with write scope; this one may only read ({})",
            op.name(),
            grant.describe()
        ));
    }
    if op.reads_data() && !grant.scope.can_read() {
        return Err(format!(
            "{} reads file data and needs a token with read scope; this one may only write ({})",
            op.name(),
            grant.describe()
        ));
    }
    let holder = (!holder.is_empty()).then_some(holder);
    let store = |e: haul_store::StoreError| e.to_string();
    root.forget_cached_dirs();
    match op {
        Op::Df => {
            let s = root.statfs().map_err(store)?;
            json(&SpaceInfo {
                free_bytes: s.free_bytes,
                total_bytes: s.total_bytes,
                free_inodes: s.free_inodes,
                total_inodes: s.total_inodes,
            })
        }
        Op::Stat { path } => {
            let rel = grant_path(grant, path)?;
            let info = match root.stat_path(&rel).map_err(store)? {
                None => None,
                Some(st) => {
                    let empty = if st.kind == haul_store::FileKind::Dir {
                        root.is_empty_dir(&rel).map_err(store)?
                    } else {
                        None
                    };
                    Some(PathInfo {
                        kind: kind_name(st.kind).into(),
                        size: st.size,
                        mode: st.mode,
                        uid: st.uid,
                        gid: st.gid,
                        mtime_sec: st.mtime_sec,
                        mtime_nsec: st.mtime_nsec,
                        nlink: st.nlink,
                        empty,
                    })
                }
            };
            json(&info)
        }
        Op::Ls { path } => {
            let rel = grant_path(grant, path)?;
            let items: Vec<DirItem> = root
                .list_dir(&rel)
                .map_err(store)?
                .into_iter()
                .map(|item| DirItem {
                    name: String::from_utf8_lossy(&item.name).into_owned(),
                    kind: kind_name(item.kind).into(),
                    size: item.size,
                    mtime_sec: item.mtime_sec,
                })
                .collect();
            json_list(&items)
        }
        Op::Du { path } => {
            let rel = grant_path(grant, path)?;
            let t = root.tree_size(&rel).map_err(store)?;
            json(&TreeSize {
                bytes: t.bytes,
                allocated_bytes: t.allocated_bytes,
                files: t.files,
                dirs: t.dirs,
                symlinks: t.symlinks,
                others: t.others,
            })
        }
        Op::Manifest { path } => {
            let rel = grant_path(grant, path)?;
            manifest(root, &rel)
        }
        Op::Rm { path } => {
            let rel = grant_path(grant, path)?;
            if rel == grant.subdir {
                return Err(format!(
                    "refusing to remove the whole grant ({}); remove what is in it",
                    grant.describe()
                ));
            }
            root.check_lease(&rel, holder).map_err(store)?;
            json(&root.remove_path(&rel).map_err(store)?)
        }
        Op::Mv { from, to } => {
            let (from, to) = (grant_path(grant, from)?, grant_path(grant, to)?);
            if from == grant.subdir {
                return Err("refusing to rename the top of the grant".into());
            }
            root.check_lease(&from, holder).map_err(store)?;
            root.check_lease(&to, holder).map_err(store)?;
            root.rename_path(&from, &to).map_err(store)?;
            json(&())
        }
        Op::Cat { path } => {
            let rel = grant_path(grant, path)?;
            let bytes = root.read_control(&rel, MAX_CONTROL_FILE).map_err(store)?;
            Ok(vec![Bytes::from(bytes)])
        }
        Op::Put { path } => {
            let rel = grant_path(grant, path)?;
            if payload.len() > MAX_CONTROL_FILE {
                return Err(format!(
                    "{} bytes is more than a control file may hold ({MAX_CONTROL_FILE})",
                    payload.len()
                ));
            }
            root.check_lease(&rel, holder).map_err(store)?;
            root.write_control(&rel, payload).map_err(store)?;
            json(&())
        }
        Op::SnapshotCreate { path, label } => {
            let rel = grant_path(grant, path)?;
            let info = root.create_snapshot(&rel, label).map_err(store)?;
            json(&snapshot_info(grant, &info))
        }
        Op::SnapshotList => {
            let list: Vec<SnapshotInfo> = root
                .list_snapshots()
                .map_err(store)?
                .iter()
                .filter(|s| s.subtree.starts_with(&grant.subdir))
                .map(|s| snapshot_info(grant, s))
                .collect();
            json_list(&list)
        }
        Op::SnapshotDelete { id } => {
            // An interrupted snapshot can only be deleted: do not require it complete.
            snapshot_for_grant(root, grant, id, false)?;
            root.delete_snapshot(id).map_err(store)?;
            json(&())
        }
        Op::SnapshotRestore { id } => {
            snapshot_for_grant(root, grant, id, true)?;
            let subtree = root
                .list_snapshots()
                .map_err(store)?
                .into_iter()
                .find(|s| &s.id == id)
                .map(|s| s.subtree)
                .ok_or_else(|| format!("no snapshot {id:?} on this host"))?;
            root.check_lease(&subtree, holder).map_err(store)?;
            let report = root.restore_snapshot(id).map_err(store)?;
            json(&RestoreInfo {
                id: report.id,
                path: client_path(grant, &subtree),
                restored: report.restored,
                removed: report.removed,
            })
        }
        Op::LeaseTake {
            path,
            holder,
            purpose,
            ttl_ms,
        } => {
            let rel = grant_path(grant, path)?;
            let lease = root
                .take_lease(&rel, holder, purpose, Duration::from_millis(*ttl_ms))
                .map_err(store)?;
            json(&LeaseInfo {
                path: client_path(grant, &rel),
                holder: lease.info.holder.clone(),
                purpose: lease.info.purpose.clone(),
                expires_ms: lease.info.expires_unix_ms,
                took_over: lease.took_over.clone(),
            })
        }
        Op::LeaseRelease { path, holder } => {
            let rel = grant_path(grant, path)?;
            root.release_lease(&rel, holder).map_err(store)?;
            json(&())
        }
        Op::Leases => {
            let list: Vec<LeaseInfo> = root
                .leases()
                .iter()
                .filter(|l| l.subtree.starts_with(&grant.subdir))
                .map(|l| LeaseInfo {
                    path: client_path(grant, &l.subtree),
                    holder: l.holder.clone(),
                    purpose: l.purpose.clone(),
                    expires_ms: l.expires_unix_ms,
                    took_over: None,
                })
                .collect();
            json_list(&list)
        }
        Op::RegistryGet { path } => {
            let rel = grant_path(grant, path)?;
            json(&root.registry_get(&rel).map_err(store)?)
        }
        Op::RegistryPut { path } => {
            let rel = grant_path(grant, path)?;
            let record = std::str::from_utf8(payload)
                .map_err(|_| "a registry record must be UTF-8 text".to_string())?;
            root.check_lease(&rel, holder).map_err(store)?;
            root.registry_put(&rel, record).map_err(store)?;
            json(&())
        }
        Op::RegistryList => {
            let list: Vec<RegistryRecord> = root
                .registry_list()
                .map_err(store)?
                .into_iter()
                .filter(|(rel, _)| rel.starts_with(&grant.subdir))
                .map(|(rel, record)| RegistryRecord {
                    path: client_path(grant, &rel),
                    record,
                })
                .collect();
            json_list(&list)
        }
    }
}

fn snapshot_info(grant: &Grant, s: &haul_store::SnapshotInfo) -> SnapshotInfo {
    SnapshotInfo {
        id: s.id.clone(),
        created: s.created.max(0) as u64,
        label: s.label.clone(),
        path: client_path(grant, &s.subtree),
        method: s.method.map_or("unknown", |m| m.as_str()).into(),
        files: s.files,
        bytes: s.bytes,
        complete: s.complete,
    }
}

/// Checks that the snapshot `id` exists, is of a tree inside `grant` and, with `complete`,
/// was completed (what a restore needs).
pub(crate) fn snapshot_for_grant(
    root: &Root,
    grant: &Grant,
    id: &str,
    complete: bool,
) -> Result<(), String> {
    let list = root.list_snapshots().map_err(|e| e.to_string())?;
    let Some(snap) = list.iter().find(|s| s.id == id) else {
        return Err(format!(
            "no snapshot {id:?} on this host; `haul snapshot list` shows them"
        ));
    };
    if !snap.subtree.starts_with(&grant.subdir) {
        return Err(format!(
            "snapshot {id} is of a tree outside this token's grant ({})",
            grant.describe()
        ));
    }
    if complete && !snap.complete {
        return Err(format!(
            "snapshot {id} was never completed (its making was interrupted); delete it"
        ));
    }
    Ok(())
}

/// A manifest of `rel`, in parts that each fit a response.
fn manifest(root: &Root, rel: &RelPath) -> Result<Vec<Bytes>, String> {
    let mut entries: Vec<ManifestEntry> = Vec::new();
    root.visit_tree(rel, &mut |path, stat, file| {
        let blake3 = match file {
            Some(file) => {
                let mut hasher = blake3::Hasher::new();
                hasher
                    .update_reader(file)
                    .map_err(|e| haul_store::StoreError::Io {
                        path: root.display_path(&rel.join(path)),
                        op: "read for the manifest",
                        source: e,
                    })?;
                Some(hasher.finalize().to_hex().to_string())
            }
            None => None,
        };
        entries.push(ManifestEntry {
            path: path.display(),
            kind: kind_name(stat.kind).into(),
            size: stat.size,
            blake3,
        });
        Ok(())
    })
    .map_err(|e| e.to_string())?;
    json_list(&entries)
}
