//! The target appliance: a path on a serving host, or a local directory served in this
//! process (the same code path as a remote one: `haul copy` does the same).

use std::path::PathBuf;
use std::sync::Arc;

use haul_engine::job::RemoteEnd;
use haul_engine::jobs::{ServeOptions, serve};
use haul_engine::remote::{Remote, RemoteTarget};
use haul_engine::{Grant, Scope, no_events};

use crate::error::ElmError;

/// Where the target is.
#[derive(Clone, Debug)]
pub enum TargetSpec {
    /// `path` under the token's grant on a serving host.
    Remote {
        /// The host, trust and token.
        target: RemoteTarget,
        /// The appliance directory under the grant (`""`: all of it).
        path: String,
    },
    /// A local directory.
    Local(PathBuf),
}

/// A reachable target: operations and jobs go to `target`, under `path`.
#[derive(Debug)]
pub(crate) struct Connected {
    pub(crate) target: RemoteTarget,
    pub(crate) path: String,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Connected {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

impl Connected {
    /// Resolves `spec`, acting as `holder` (the task's lease holder).
    pub(crate) async fn open(spec: &TargetSpec, holder: &str) -> Result<Connected, ElmError> {
        match spec {
            TargetSpec::Remote { target, path } => Ok(Connected {
                target: RemoteTarget {
                    holder: Some(holder.to_owned()),
                    ..target.clone()
                },
                path: path.trim_matches('/').to_owned(),
                server: None,
            }),
            TargetSpec::Local(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| ElmError::local(dir, e))?;
                let identity =
                    haul_net::Identity::ephemeral().map_err(haul_engine::EngineError::from)?;
                let trust = haul_net::Trust::Pinned(identity.fingerprint);
                let mut secret = [0u8; 32];
                rand::RngCore::fill_bytes(&mut rand::rng(), &mut secret);
                let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
                let token = haul_net::Token::from_bytes(hex.as_bytes());
                let options = ServeOptions {
                    root: dir.clone(),
                    listen: "127.0.0.1:0".parse().expect("a loopback address"),
                    grants: vec![Grant {
                        token: token.clone(),
                        subdir: haul_store::RelPath::root(),
                        scope: Scope::ReadWrite,
                        privileged: rustix::process::geteuid().is_root(),
                    }],
                    identity,
                };
                let (ready, bound) = tokio::sync::oneshot::channel();
                let server = tokio::spawn(async move {
                    let _ = serve(
                        options,
                        move |addr| {
                            let _ = ready.send(addr);
                        },
                        no_events(),
                    )
                    .await;
                });
                let addr = bound.await.map_err(|_| {
                    ElmError::Invalid(format!(
                        "cannot serve the local target {}: is it a directory this user may \
                         write?",
                        dir.display()
                    ))
                })?;
                Ok(Connected {
                    target: RemoteTarget {
                        addr,
                        host_key: addr.to_string(),
                        trust,
                        token,
                        holder: Some(holder.to_owned()),
                    },
                    path: String::new(),
                    server: Some(server),
                })
            }
        }
    }

    /// `sub` below the appliance directory, as the host names it.
    pub(crate) fn at(&self, sub: &str) -> String {
        match (self.path.is_empty(), sub.is_empty()) {
            (true, _) => sub.to_owned(),
            (false, true) => self.path.clone(),
            (false, false) => format!("{}/{sub}", self.path),
        }
    }

    /// A job destination: `sub` below the appliance directory.
    pub(crate) fn end(&self, sub: &str) -> RemoteEnd {
        RemoteEnd::from_target(&self.target, &self.at(sub))
    }

    /// A connection for operations.
    pub(crate) async fn remote(&self) -> Result<Remote, ElmError> {
        Ok(Remote::connect(&self.target).await?)
    }
}

/// A shared handle on a connected target.
pub(crate) type Shared = Arc<Connected>;
