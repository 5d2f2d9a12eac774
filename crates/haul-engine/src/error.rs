//! The engine's error type.
//!
//! Policy: one rich error at the public boundary. Each variant carries its context as data (the
//! path, the peer's message), its text says what to do, and [`EngineError::exit_code`] tells
//! the CLI how the run ended (1 error, 3 paused for lack of space). Per-file problems that do
//! not end the run are not errors here: they are [`FileProblem`](crate::FileProblem)s in the
//! summary.

use std::io;
use std::path::PathBuf;

use haul_proto::{ProtocolError, RefuseReason};

/// Why a transfer or a receiver session ended early.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The receiver refused the hello (token, version, path).
    #[error("the receiver refused the transfer: {message}")]
    Refused {
        /// The category.
        reason: RefuseReason,
        /// The receiver's explanation.
        message: String,
    },
    /// Setting up or keeping the connection failed.
    #[error("{context}: {source}")]
    Connection {
        /// What we were doing.
        context: String,
        /// The cause.
        source: io::Error,
    },
    /// The peer broke the protocol; the connection was closed.
    #[error("the peer broke the protocol: {0}")]
    Protocol(String),
    /// The peer aborted the session.
    #[error("the peer aborted: {0}")]
    PeerAborted(String),
    /// The source cannot be read at all.
    #[error("cannot read the source {path}: {message}")]
    Source {
        /// The source path.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The target ran out of space. Everything verified so far is kept.
    #[error(
        "the target ran out of space while writing {path}; {bytes_remaining} bytes were still to \
         be transferred. Expand the storage (or free space) on the receiver and run the same \
         command again: it continues from the verified data"
    )]
    NoSpace {
        /// The path that could not be written.
        path: String,
        /// Bytes of file data not yet installed.
        bytes_remaining: u64,
    },
    /// The local side of the target failed (the embedded receiver of `copy`, or `serve`).
    #[error("{0}")]
    Store(#[from] haul_store::StoreError),
    /// A remote operation failed on the serving host.
    #[error("remote {op} failed: {message}")]
    Remote {
        /// The operation.
        op: String,
        /// The host's explanation.
        message: String,
    },
    /// Setting up QUIC or TLS failed.
    #[error("{0}")]
    Net(#[from] haul_net::NetError),
}

impl EngineError {
    /// The process exit status this error calls for: 3 when the run paused for lack of space
    /// (resumable), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            EngineError::NoSpace { .. } => 3,
            EngineError::Store(e) if e.is_no_space() => 3,
            _ => 1,
        }
    }

    pub(crate) fn connection(context: impl Into<String>, source: io::Error) -> Self {
        EngineError::Connection {
            context: context.into(),
            source,
        }
    }
}

impl From<ProtocolError> for EngineError {
    fn from(e: ProtocolError) -> Self {
        EngineError::Protocol(e.to_string())
    }
}

impl From<crate::wire::WireError> for EngineError {
    fn from(e: crate::wire::WireError) -> Self {
        match e {
            crate::wire::WireError::Io(io) => EngineError::connection("the connection failed", io),
            other => EngineError::Protocol(other.to_string()),
        }
    }
}
