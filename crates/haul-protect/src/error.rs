//! What can go wrong. Every message says what to do; [`ProtectError::is_retryable`] tells a
//! host that may come back (try again later) from a request that will never work.

use haul_engine::EngineError;
use haul_state::StateError;

/// An error of the protection workflow.
#[derive(Debug, thiserror::Error)]
pub enum ProtectError {
    /// Something given is not valid (a setting, a path, a duration).
    #[error("{0}")]
    Invalid(String),
    /// A named host, policy, dataset, relationship or backup does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request breaks a rule of the workflow (fan-in, ownership, a dataset in use).
    #[error("{0}")]
    Refused(String),
    /// The server's state database.
    #[error(transparent)]
    State(#[from] StateError),
    /// A host could not be reached or did not accept this server.
    #[error("host {host} is unreachable: {message}")]
    HostDown {
        /// The host's name.
        host: String,
        /// Why.
        message: String,
    },
    /// The engine failed while working on a host.
    #[error("{context}: {source}")]
    Engine {
        /// What was being done.
        context: String,
        /// The engine's error (boxed: it is large, and errors travel in every `Result`).
        #[source]
        source: Box<EngineError>,
    },
    /// A local file or script.
    #[error("{0}")]
    Local(String),
}

impl ProtectError {
    /// True when trying again later may succeed (a host down, a lost connection).
    pub fn is_retryable(&self) -> bool {
        match self {
            ProtectError::HostDown { .. } => true,
            ProtectError::Engine { source, .. } => {
                matches!(**source, EngineError::Connection { .. }) || source.exit_code() == 3
            }
            ProtectError::State(e) => e.is_retryable(),
            _ => false,
        }
    }

    /// The process exit code: 3 when a host ran out of space (resumable), else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            ProtectError::Engine { source, .. } => source.exit_code(),
            _ => 1,
        }
    }

    pub(crate) fn engine(context: impl Into<String>) -> impl FnOnce(EngineError) -> ProtectError {
        let context = context.into();
        move |source| ProtectError::Engine {
            context,
            source: Box::new(source),
        }
    }
}
