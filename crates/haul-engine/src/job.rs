//! The library API the workflow crates (and the CLI) drive transfers through.
//!
//! A [`Job`] names a source and a destination, each local or on a serving host
//! ([`Endpoint`]), and the [`TransferOptions`]. [`Job::plan`] reports what would move without
//! moving anything; [`Job::run`] moves it, reporting typed [`JobEvent`]s, and returns the
//! [`Summary`] (serde-serializable, the CLI's `--json` summary). Local to local is `copy`,
//! local to remote `push`, remote to local `pull`. [`crate::remote::Remote`] is the handle for
//! everything else a workflow asks of a host (free space, listings, manifests, snapshots,
//! leases).
//!
//! ```
//! use std::sync::Arc;
//! use haul_engine::job::{Endpoint, Job, JobEvent, RemoteEnd};
//! use haul_engine::jobs::{ServeOptions, serve};
//! use haul_engine::remote::{Remote, RemoteTarget};
//! use haul_engine::{Grant, Scope, TransferOptions, no_events};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let runtime = tokio::runtime::Runtime::new()?;
//! # runtime.block_on(async {
//! // A serving host on loopback (what `haul serve` runs), with one read+write token.
//! let (root, src) = (tempfile::tempdir()?, tempfile::tempdir()?);
//! std::fs::write(src.path().join("wphost.db"), b"post office")?;
//! let identity = haul_net::Identity::ephemeral()?;
//! let trust = haul_net::Trust::Pinned(identity.fingerprint);
//! let token = haul_net::Token::from_bytes(b"a-token-for-the-docs");
//! let grants = vec![Grant {
//!     token: token.clone(),
//!     subdir: haul_store::RelPath::root(),
//!     scope: Scope::ReadWrite,
//!     privileged: false,
//! }];
//! let options = ServeOptions {
//!     root: root.path().into(),
//!     listen: "127.0.0.1:0".parse()?,
//!     grants,
//!     identity,
//! };
//! let (ready, bound) = tokio::sync::oneshot::channel();
//! tokio::spawn(serve(options, move |addr| { let _ = ready.send(addr); }, no_events()));
//! let addr = bound.await?;
//! let target = RemoteTarget { addr, host_key: addr.to_string(), trust, token, holder: None };
//!
//! // A query: is there room on the host for what the plan says must move?
//! let mut host = Remote::connect(&target).await?;
//! let free = host.df().await?.free_bytes;
//!
//! // A push of the post office into /po1 under the token's grant.
//! let job = Job::new(
//!     Endpoint::Local(src.path().into()),
//!     Endpoint::Remote(RemoteEnd::from_target(&target, "po1")),
//! )
//! .options(TransferOptions::default());
//! let plan = job.plan().await?;
//! assert!(plan.would_send_bytes <= free, "expand the target first");
//! let summary = job
//!     .run(|event| {
//!         if let JobEvent::PausedForSpace { bytes_needed, .. } = event {
//!             eprintln!("paused: {bytes_needed} bytes still to write");
//!         }
//!     })
//!     .await?;
//! assert_eq!(summary.files_transferred, 1);
//! let json = serde_json::to_string(&summary)?; // what `--json` prints
//! # let _ = json;
//!
//! // A snapshot of the result, labelled with who made it.
//! let snap = host.snapshot_create("po1", "after migration, by job 42").await?;
//! assert_eq!(host.snapshot_list().await?[0].id, snap.id);
//! assert_eq!(host.stat("po1/wphost.db").await?.unwrap().size, 11);
//! host.close().await;
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! # })
//! # }
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use haul_net::{Token, Trust};
use serde::Serialize;

use crate::error::EngineError;
use crate::jobs::{self, PushTarget};
use crate::progress::{Event, EventSink, Progress, RenamedAside, Summary};
use crate::pull::{self, PullSource};
use crate::remote::RemoteTarget;
use crate::sender::TransferOptions;

/// A path on a serving host.
#[derive(Clone, Debug)]
pub struct RemoteEnd {
    /// The host's address.
    pub addr: SocketAddr,
    /// "HOST:PORT" as the user wrote it (the known-hosts key).
    pub host_key: String,
    /// The path under the token's grant (`/`-separated bytes; empty: all of it).
    pub path: Vec<u8>,
    /// How the host's certificate is trusted.
    pub trust: Trust,
    /// The token.
    pub token: Token,
    /// The congestion controller for what this end sends.
    pub congestion: haul_net::Congestion,
    /// As a source only: read from this snapshot instead of the live tree (a restore).
    pub snapshot: Option<String>,
}

impl RemoteEnd {
    /// `path` on the host `target` names.
    pub fn from_target(target: &RemoteTarget, path: &str) -> RemoteEnd {
        RemoteEnd {
            addr: target.addr,
            host_key: target.host_key.clone(),
            path: path.trim_start_matches('/').as_bytes().to_vec(),
            trust: target.trust.clone(),
            token: target.token.clone(),
            congestion: haul_net::Congestion::default(),
            snapshot: None,
        }
    }
}

/// One side of a job.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// A local path.
    Local(PathBuf),
    /// A path on a serving host.
    Remote(RemoteEnd),
}

/// What a running job reports.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum JobEvent {
    /// A file was installed (with `TransferOptions::list_files`), with its verified hash.
    FileDone {
        /// The path, relative to the destination.
        path: String,
        /// Its size.
        bytes: u64,
        /// Its BLAKE3, as `b3sum` prints it.
        blake3: String,
    },
    /// A directory was renamed aside before its fresh copy was made.
    RenamedAside(RenamedAside),
    /// The target filled up: the job stopped, keeping every verified chunk; it continues
    /// once `bytes_needed` more can be written (run it again).
    PausedForSpace {
        /// Bytes of file data still to be installed.
        bytes_needed: u64,
        /// The engine's explanation.
        message: String,
    },
    /// The connection was lost; the job runs again from the verified chunks.
    Retrying {
        /// The attempt about to start (2 for the first retry).
        attempt: u32,
        /// What went wrong.
        error: String,
    },
    /// Anything else the engine reports (failed files, warnings, deletions, ...).
    Engine(Event),
    /// The job is done.
    Finished(Summary),
}

/// A transfer to run: source, destination, options.
#[derive(Clone, Debug)]
pub struct Job {
    source: Endpoint,
    dest: Endpoint,
    options: TransferOptions,
    retries: u32,
    retry_delay: Duration,
    progress: Arc<Progress>,
}

impl Job {
    /// A job from `source` to `dest` with default options and no retries.
    pub fn new(source: Endpoint, dest: Endpoint) -> Job {
        Job {
            source,
            dest,
            options: TransferOptions::default(),
            retries: 0,
            retry_delay: Duration::from_secs(2),
            progress: Arc::default(),
        }
    }

    /// Shapes the transfer.
    pub fn options(mut self, options: TransferOptions) -> Job {
        self.options = options;
        self
    }

    /// Runs again, from the verified chunks, up to `retries` times when the connection is
    /// lost, waiting `delay` before each attempt.
    pub fn retries(mut self, retries: u32, delay: Duration) -> Job {
        self.retries = retries;
        self.retry_delay = delay;
        self
    }

    /// The live counters of the run (shared by every attempt): sample them for progress.
    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    /// What a run would do, without moving or changing anything: the summary of a dry run
    /// (`would_send_bytes`, `target_free_bytes`, `estimated_s` from the target's history).
    pub async fn plan(&self) -> Result<Summary, EngineError> {
        let options = TransferOptions {
            dry_run: true,
            list_files: false,
            ..self.options.clone()
        };
        self.attempt(options, Arc::default(), crate::progress::no_events())
            .await
    }

    /// Runs the job, reporting to `on_event`.
    pub async fn run(
        &self,
        on_event: impl Fn(JobEvent) + Send + Sync + 'static,
    ) -> Result<Summary, EngineError> {
        let on_event = Arc::new(on_event);
        let sink: EventSink = {
            let on_event = on_event.clone();
            Arc::new(move |event| {
                on_event(match event {
                    Event::FileInstalled {
                        path,
                        bytes,
                        blake3,
                    } => JobEvent::FileDone {
                        path,
                        bytes,
                        blake3,
                    },
                    other => JobEvent::Engine(other),
                })
            })
        };
        let mut attempt = 1;
        loop {
            let result = self
                .attempt(self.options.clone(), self.progress.clone(), sink.clone())
                .await;
            match result {
                Ok(summary) => {
                    for aside in &summary.renamed_aside {
                        on_event(JobEvent::RenamedAside(aside.clone()));
                    }
                    on_event(JobEvent::Finished(summary.clone()));
                    return Ok(summary);
                }
                Err(e) if e.exit_code() == 3 => {
                    let bytes_needed = match &e {
                        EngineError::NoSpace {
                            bytes_remaining, ..
                        } => *bytes_remaining,
                        _ => 0,
                    };
                    on_event(JobEvent::PausedForSpace {
                        bytes_needed,
                        message: e.to_string(),
                    });
                    return Err(e);
                }
                Err(e @ EngineError::Connection { .. }) if attempt <= self.retries => {
                    attempt += 1;
                    on_event(JobEvent::Retrying {
                        attempt,
                        error: e.to_string(),
                    });
                    tokio::time::sleep(self.retry_delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn attempt(
        &self,
        options: TransferOptions,
        progress: Arc<Progress>,
        events: EventSink,
    ) -> Result<Summary, EngineError> {
        match (&self.source, &self.dest) {
            (Endpoint::Local(src), Endpoint::Local(dst)) => {
                jobs::copy(src.clone(), dst.clone(), options, progress, events).await
            }
            (Endpoint::Local(src), Endpoint::Remote(to)) => {
                let target = PushTarget {
                    addr: to.addr,
                    host_key: to.host_key.clone(),
                    dest: to.path.clone(),
                    trust: to.trust.clone(),
                    congestion: to.congestion,
                    token: to.token.clone(),
                };
                jobs::push(src.clone(), target, options, progress, events).await
            }
            (Endpoint::Remote(from), Endpoint::Local(dst)) => {
                let source = PullSource {
                    addr: from.addr,
                    host_key: from.host_key.clone(),
                    path: from.path.clone(),
                    snapshot: from.snapshot.clone(),
                    trust: from.trust.clone(),
                    congestion: from.congestion,
                    token: from.token.clone(),
                };
                pull::pull(source, dst.clone(), options, progress, events).await
            }
            (Endpoint::Remote(_), Endpoint::Remote(_)) => Err(EngineError::Protocol(
                "a job between two serving hosts is not supported: pull to this host, then \
                 push"
                    .into(),
            )),
        }
    }
}
