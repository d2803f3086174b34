//! The one error type of the vault, and its one mapping to a gRPC status.
//!
//! Messages never carry a field value or key byte: they name fields, types,
//! collections and limits only. Integrity failures are opaque on purpose.

use std::fmt;

/// Everything that can go wrong in the vault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A malformed request: a bad name or id, an unknown field, a value of
    /// the wrong type. The message names the culprit, never a value.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A record or batch over a configured limit.
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    /// A read that would take its caller over a read budget of the
    /// policy (see `crate::monitor`); refused, not served.
    #[error("budget exceeded: {0}")]
    BudgetExceeded(String),
    /// An unknown collection or record.
    #[error("not found: {0}")]
    NotFound(String),
    /// A collection name already taken.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The collection resides in another region than this vault.
    #[error("collection {collection} resides in region {collection_region}, this vault serves region {vault_region}")]
    WrongRegion {
        /// The collection.
        collection: String,
        /// Where its data must reside.
        collection_region: String,
        /// The region of this vault.
        vault_region: String,
    },
    /// The request is well formed but the vault's state does not allow it
    /// now (for example: retiring the current root key).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// The key version needed belongs to an erased subject. Reads treat the
    /// record as absent; it is never decrypted.
    #[error("the data subject was erased")]
    SubjectErased,
    /// Stored ciphertext or a stored structure failed its integrity check.
    /// Deliberately without detail: the caller learns nothing about why.
    #[error("integrity check failed")]
    Integrity,
    /// No valid credential.
    #[error("unauthenticated: {0}")]
    Unauthenticated(&'static str),
    /// An authenticated caller without the role for this operation.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The vault holds no keys.
    #[error("vault is sealed")]
    Sealed,
    /// Try again shortly (for example: an unseal while the previous
    /// session's requests are still finishing).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The keyring could not be loaded, created or used.
    #[error("keyring: {0}")]
    Keyring(#[from] crate::keys::KeyringError),
    /// A configuration problem found at start.
    #[error("configuration: {0}")]
    Config(String),
    /// The storage engine failed. The detail is logged, not sent.
    #[error("storage: {0}")]
    Storage(String),
    /// A conditional write found its condition unmet (another server of
    /// the same database wrote first); the caller re-reads and retries.
    /// Reaches a client only as `ABORTED` when retrying cannot help.
    #[error("another server of this vault changed the same state first; try again")]
    Conflict,
    /// The gRPC server could not run (for example, the listener failed).
    #[error("gRPC server: {0}")]
    Serve(String),
    /// A file-system error outside the storage engine (keyring, key files).
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// The vault's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error with what was being done.
    pub fn io(context: impl fmt::Display, source: std::io::Error) -> Self {
        Error::Io {
            context: context.to_string(),
            source,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        use tonic::Status;
        match err {
            Error::InvalidArgument(m) => Status::invalid_argument(m),
            Error::LimitExceeded(m) => Status::resource_exhausted(m),
            Error::BudgetExceeded(m) => Status::resource_exhausted(m),
            Error::NotFound(m) => Status::not_found(m),
            Error::AlreadyExists(m) => Status::already_exists(m),
            e @ Error::WrongRegion { .. } => Status::failed_precondition(e.to_string()),
            Error::FailedPrecondition(m) => Status::failed_precondition(m),
            Error::SubjectErased => Status::not_found("the data subject was erased"),
            Error::Integrity => Status::data_loss("integrity check failed"),
            Error::Unauthenticated(m) => Status::unauthenticated(m),
            Error::PermissionDenied(m) => Status::permission_denied(m),
            Error::Sealed => Status::unavailable("vault is sealed"),
            Error::Unavailable(m) => Status::unavailable(m),
            e @ Error::Conflict => Status::aborted(e.to_string()),
            e @ (Error::Keyring(_)
            | Error::Config(_)
            | Error::Storage(_)
            | Error::Serve(_)
            | Error::Io { .. }) => {
                // The detail stays in the server's log; it may name paths.
                tracing::error!(error = %e, "internal error");
                Status::internal("internal error")
            }
        }
    }
}
