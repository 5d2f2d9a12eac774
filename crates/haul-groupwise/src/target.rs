//! Where a post office goes: a local directory or a path on a serving host. Both are reached
//! through the same engine calls (a [`Remote`] for questions and changes, a job
//! [`Endpoint`] for transfers), so every step has one code path.

use std::path::PathBuf;

use haul_engine::job::{Endpoint, RemoteEnd};
use haul_engine::remote::{Remote, RemoteTarget};

use crate::GwError;

/// A resolved target post office.
#[derive(Clone, Debug)]
pub enum Target {
    /// A local directory: the post office itself (`/groupwise/po1`).
    Local(PathBuf),
    /// A path on a serving host, relative to the token's grant.
    Remote {
        /// The host, its trust and the token.
        host: RemoteTarget,
        /// The post office's path on it (`po1`).
        path: String,
    },
}

impl Target {
    /// True if `dest` (as a profile stores it) names a serving host.
    pub fn is_remote(dest: &str) -> bool {
        dest.starts_with("quic://")
    }

    /// The target as a person reads it.
    pub fn describe(&self) -> String {
        match self {
            Target::Local(dir) => dir.display().to_string(),
            Target::Remote { host, path } => format!("quic://{}/{path}", host.host_key),
        }
    }

    /// The post office's path in the operations' namespace (`""`: the local directory's top).
    pub fn po_path(&self) -> &str {
        match self {
            Target::Local(_) => "",
            Target::Remote { path, .. } => path,
        }
    }

    /// `rel` (a path inside the post office) in the operations' namespace.
    pub fn join(&self, rel: &str) -> String {
        match self.po_path() {
            "" => rel.to_string(),
            po => format!("{po}/{rel}"),
        }
    }

    /// The parent of the post office in the operations' namespace (where a probe file can go
    /// before the post office exists).
    pub fn parent_path(&self) -> &str {
        match self.po_path().rsplit_once('/') {
            Some((parent, _)) => parent,
            None => "",
        }
    }

    /// An operations session on the target, acting for `holder`.
    pub async fn ops(&self, holder: Option<&str>) -> Result<Remote, GwError> {
        Ok(match self {
            Target::Local(dir) => haul_engine::local_ops::open_local(dir, holder).await?,
            Target::Remote { host, .. } => {
                let host = RemoteTarget {
                    holder: holder.map(str::to_string),
                    ..host.clone()
                };
                Remote::connect(&host).await?
            }
        })
    }

    /// The destination of a transfer into the post office.
    pub fn endpoint(&self) -> Endpoint {
        match self {
            Target::Local(dir) => Endpoint::Local(dir.clone()),
            Target::Remote { host, path } => Endpoint::Remote(RemoteEnd::from_target(host, path)),
        }
    }
}
