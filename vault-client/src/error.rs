//! The client's error type and the classification of gRPC statuses.

use std::error::Error as StdError;

use tonic::Code;

use crate::receipt::ReceiptError;

/// The result of a vault call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How the vault's refusal of a read over a budget begins.
const BUDGET_MESSAGE: &str = "over the read budget";

/// Why a vault call failed.
///
/// Server statuses are classified by their gRPC code (see
/// `From<tonic::Status>`); failures to reach the server are
/// [`Error::Connect`], and answers that break the wire contract are
/// [`Error::Protocol`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// NOT_FOUND: an unknown collection or record.
    #[error("{}", detail("not found", .0))]
    NotFound(String),
    /// PERMISSION_DENIED: the caller is authenticated but may not do this.
    #[error("{}", detail("permission denied", .0))]
    PermissionDenied(String),
    /// UNAUTHENTICATED: a missing, malformed or unknown token.
    #[error("{}", detail("unauthenticated", .0))]
    Unauthenticated(String),
    /// INVALID_ARGUMENT: a malformed request (bad name or id, unknown field,
    /// a value of the wrong type, ...); also a bad address, token or purpose
    /// given to the client builder; a malformed, foreign or repeated unseal
    /// share, or shares that do not open the keyring.
    #[error("{}", detail("invalid input", .0))]
    InvalidInput(String),
    /// RESOURCE_EXHAUSTED: a record or batch over the server's size limits.
    #[error("{}", detail("too large", .0))]
    TooLarge(String),
    /// RESOURCE_EXHAUSTED for a read over a budget of the vault's policy
    /// (records or bytes per window): nothing was returned; try later.
    #[error("{}", detail("over budget", .0))]
    OverBudget(String),
    /// ALREADY_EXISTS: a collection name that is taken.
    #[error("{}", detail("already exists", .0))]
    AlreadyExists(String),
    /// FAILED_PRECONDITION: the collection resides in another region than
    /// this vault; or a custody step out of order (init of an initialised
    /// vault, unseal of an unsealed one, retiring the current root key or
    /// one that still wraps subject keys, destroying a key not retired).
    #[error("{}", detail("failed precondition", .0))]
    FailedPrecondition(String),
    /// UNAVAILABLE from the server: the vault is sealed (see
    /// [`Error::is_sealed`]) or shutting down.
    #[error("{}", detail("vault unavailable", .0))]
    Unavailable(String),
    /// DATA_LOSS: stored ciphertext failed its integrity check (tampered,
    /// moved, or from another region). The server gives no detail.
    #[error("integrity check failed: stored data was tampered with or moved")]
    Integrity,
    /// DEADLINE_EXCEEDED, or the client's own deadline passed.
    #[error("deadline exceeded: the vault did not answer in time")]
    Timeout,
    /// The server could not be reached or the connection failed.
    #[error("{}", detail("cannot reach the vault", .0))]
    Connect(String),
    /// The server's answer broke the wire contract (a value without a
    /// variant, an unspecified enum, a missing message, ...).
    #[error("{}", detail("protocol error", .0))]
    Protocol(String),
    /// An erasure receipt that does not verify (see
    /// [`ErasureReceipt::verify`](crate::ErasureReceipt::verify)).
    #[error("erasure receipt does not verify: {0}")]
    Receipt(ReceiptError),
    /// Any other gRPC status (INTERNAL, UNKNOWN, UNIMPLEMENTED, ...).
    #[error("{}", detail(&format!("vault error {}", code_name(*.code)), .message))]
    Other {
        /// The gRPC status code.
        code: Code,
        /// The status message.
        message: String,
    },
    /// A [`RegionalClient`](crate::RegionalClient) was asked for a region
    /// its [`RegionMap`](crate::RegionMap) does not list. No request was
    /// sent.
    #[error("unknown region `{region}`: {}", known_regions(.known))]
    UnknownRegion {
        /// The region asked for.
        region: String,
        /// The regions the map lists, in order of name.
        known: Vec<String>,
    },
    /// Every endpoint of a region failed with an error that means it is not
    /// serving (unreachable, UNAVAILABLE, sealed); see
    /// [`RegionHandle`](crate::RegionHandle).
    #[error(
        "every endpoint of region {region} failed ({}); the last one said: {last}",
        .tried.join(", ")
    )]
    AllEndpointsFailed {
        /// The region.
        region: String,
        /// The endpoints tried, in the order they were tried.
        tried: Vec<String>,
        /// The error of the last endpoint tried.
        last: Box<Error>,
    },
}

fn known_regions(known: &[String]) -> String {
    if known.is_empty() {
        "the region map lists no region".to_owned()
    } else {
        format!("the known regions are {}", known.join(", "))
    }
}

fn detail(what: &str, message: &str) -> String {
    if message.is_empty() {
        what.to_owned()
    } else {
        format!("{what}: {message}")
    }
}

impl Error {
    /// A stable snake_case name of the variant, for machine-readable output:
    /// `not_found`, `permission_denied`, `unauthenticated`, `invalid_input`,
    /// `too_large`, `over_budget`, `already_exists`, `failed_precondition`, `unavailable`,
    /// `integrity`, `timeout`, `connect`, `protocol`, `invalid_receipt`,
    /// `other`, `unknown_region` or `all_endpoints_failed`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::NotFound(_) => "not_found",
            Error::PermissionDenied(_) => "permission_denied",
            Error::Unauthenticated(_) => "unauthenticated",
            Error::InvalidInput(_) => "invalid_input",
            Error::TooLarge(_) => "too_large",
            Error::OverBudget(_) => "over_budget",
            Error::AlreadyExists(_) => "already_exists",
            Error::FailedPrecondition(_) => "failed_precondition",
            Error::Unavailable(_) => "unavailable",
            Error::Integrity => "integrity",
            Error::Timeout => "timeout",
            Error::Connect(_) => "connect",
            Error::Protocol(_) => "protocol",
            Error::Receipt(_) => "invalid_receipt",
            Error::Other { .. } => "other",
            Error::UnknownRegion { .. } => "unknown_region",
            Error::AllEndpointsFailed { .. } => "all_endpoints_failed",
        }
    }

    /// Whether trying the same call again later may succeed (the vault was
    /// unreachable, unavailable or slow; for
    /// [`Error::AllEndpointsFailed`], whether the last endpoint's error is).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unavailable(_) | Error::Timeout | Error::Connect(_) => true,
            Error::AllEndpointsFailed { last, .. } => last.is_transient(),
            _ => false,
        }
    }

    /// Whether the vault answered that it is sealed (UNAVAILABLE
    /// `vault is sealed`): it serves no data until custodians unseal it.
    pub fn is_sealed(&self) -> bool {
        matches!(self, Error::Unavailable(message) if message.contains(SEALED_MESSAGE))
    }
}

/// The status message of a sealed vault, as the custody contract states it.
const SEALED_MESSAGE: &str = "vault is sealed";

/// The canonical upper-case name of a gRPC code, as in the gRPC spec.
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The messages of an error and its sources, joined by `: `, skipping a
/// source whose message the previous one already contains.
pub(crate) fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(err) = source {
        let message = err.to_string();
        if !message.is_empty() && !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = err.source();
    }
    text
}

/// Classifies a status by where it came from and its code.
///
/// A status made by the client's own transport (it carries a source error)
/// is [`Error::Timeout`] for the channel's deadline and [`Error::Connect`]
/// for a failed or broken connection. A status from the server maps by code:
/// NOT_FOUND, PERMISSION_DENIED, UNAUTHENTICATED, INVALID_ARGUMENT
/// ([`Error::InvalidInput`]), RESOURCE_EXHAUSTED ([`Error::TooLarge`]),
/// ALREADY_EXISTS, FAILED_PRECONDITION, UNAVAILABLE, DATA_LOSS
/// ([`Error::Integrity`]) and DEADLINE_EXCEEDED ([`Error::Timeout`]); every
/// other code is [`Error::Other`].
impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        if let Some(source) = status.source() {
            let mut cause: Option<&(dyn StdError + 'static)> = Some(source);
            while let Some(err) = cause {
                if err.is::<tonic::TimeoutExpired>() {
                    return Error::Timeout;
                }
                if err.is::<tonic::ConnectError>() || err.is::<tonic::transport::Error>() {
                    return Error::Connect(error_chain(source));
                }
                cause = err.source();
            }
            if matches!(
                status.code(),
                Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal
            ) {
                return Error::Connect(error_chain(&status));
            }
        }

        let message = status.message().to_owned();
        match status.code() {
            Code::NotFound => Error::NotFound(message),
            Code::PermissionDenied => Error::PermissionDenied(message),
            Code::Unauthenticated => Error::Unauthenticated(message),
            Code::InvalidArgument => Error::InvalidInput(message),
            // The vault words a budget's refusal so (see its monitor).
            Code::ResourceExhausted if message.starts_with(BUDGET_MESSAGE) => {
                Error::OverBudget(message)
            }
            Code::ResourceExhausted => Error::TooLarge(message),
            Code::AlreadyExists => Error::AlreadyExists(message),
            Code::FailedPrecondition => Error::FailedPrecondition(message),
            Code::Unavailable => Error::Unavailable(message),
            Code::DataLoss => Error::Integrity,
            Code::DeadlineExceeded => Error::Timeout,
            code => Error::Other { code, message },
        }
    }
}

impl From<tonic::transport::Error> for Error {
    fn from(error: tonic::transport::Error) -> Self {
        Error::Connect(error_chain(&error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(code: Code) -> Error {
        Error::from(tonic::Status::new(code, "detail"))
    }

    #[test]
    fn every_code_is_classified() {
        let expectations: [(Code, &str); 17] = [
            (Code::Ok, "other"),
            (Code::Cancelled, "other"),
            (Code::Unknown, "other"),
            (Code::InvalidArgument, "invalid_input"),
            (Code::DeadlineExceeded, "timeout"),
            (Code::NotFound, "not_found"),
            (Code::AlreadyExists, "already_exists"),
            (Code::PermissionDenied, "permission_denied"),
            (Code::ResourceExhausted, "too_large"),
            (Code::FailedPrecondition, "failed_precondition"),
            (Code::Aborted, "other"),
            (Code::OutOfRange, "other"),
            (Code::Unimplemented, "other"),
            (Code::Internal, "other"),
            (Code::Unavailable, "unavailable"),
            (Code::DataLoss, "integrity"),
            (Code::Unauthenticated, "unauthenticated"),
        ];
        for (code, kind) in expectations {
            assert_eq!(classify(code).kind(), kind, "{code:?}");
        }
    }

    #[test]
    fn messages_are_kept() {
        assert!(matches!(classify(Code::NotFound), Error::NotFound(m) if m == "detail"));
        assert!(
            matches!(classify(Code::PermissionDenied), Error::PermissionDenied(m) if m == "detail")
        );
        assert!(
            matches!(classify(Code::Unauthenticated), Error::Unauthenticated(m) if m == "detail")
        );
        assert!(matches!(classify(Code::InvalidArgument), Error::InvalidInput(m) if m == "detail"));
        assert!(matches!(classify(Code::ResourceExhausted), Error::TooLarge(m) if m == "detail"));
        let budget = Error::from(tonic::Status::resource_exhausted(
            "over the read budget of principal svc for purpose support (…); try again later",
        ));
        assert!(
            matches!(&budget, Error::OverBudget(m) if m.starts_with("over the read budget")),
            "{budget}"
        );
        assert_eq!(budget.kind(), "over_budget");
        assert!(matches!(classify(Code::AlreadyExists), Error::AlreadyExists(m) if m == "detail"));
        assert!(
            matches!(classify(Code::FailedPrecondition), Error::FailedPrecondition(m) if m == "detail")
        );
        assert!(matches!(classify(Code::Unavailable), Error::Unavailable(m) if m == "detail"));
        assert!(matches!(classify(Code::DataLoss), Error::Integrity));
        assert!(matches!(classify(Code::DeadlineExceeded), Error::Timeout));
        assert!(matches!(
            classify(Code::Internal),
            Error::Other { code: Code::Internal, message } if message == "detail"
        ));
    }

    #[test]
    fn display_texts() {
        assert_eq!(
            classify(Code::DataLoss).to_string(),
            "integrity check failed: stored data was tampered with or moved"
        );
        assert_eq!(classify(Code::NotFound).to_string(), "not found: detail");
        assert_eq!(Error::NotFound(String::new()).to_string(), "not found");
        assert_eq!(
            classify(Code::Internal).to_string(),
            "vault error INTERNAL: detail"
        );
        assert_eq!(
            classify(Code::DeadlineExceeded).to_string(),
            "deadline exceeded: the vault did not answer in time"
        );
    }

    #[test]
    fn local_transport_statuses() {
        let status = tonic::Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(status.code(), Code::Cancelled);
        assert!(matches!(Error::from(status), Error::Timeout));

        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let status = tonic::Status::from_error(Box::new(tonic::ConnectError(Box::new(io))));
        assert_eq!(status.code(), Code::Unavailable);
        match Error::from(status) {
            Error::Connect(message) => assert!(message.contains("refused"), "{message}"),
            other => panic!("{other:?}"),
        }

        // A server's UNAVAILABLE (no source) is the vault being sealed.
        assert!(matches!(
            Error::from(tonic::Status::unavailable("sealed")),
            Error::Unavailable(_)
        ));
    }

    #[test]
    fn sealed() {
        assert!(Error::from(tonic::Status::unavailable("vault is sealed")).is_sealed());
        assert!(!Error::from(tonic::Status::unavailable("shutting down")).is_sealed());
        assert!(!Error::from(tonic::Status::failed_precondition("vault is sealed")).is_sealed());
    }

    #[test]
    fn transient() {
        assert!(Error::Timeout.is_transient());
        assert!(Error::Connect("x".into()).is_transient());
        assert!(!Error::Integrity.is_transient());
        let all_failed = |last| Error::AllEndpointsFailed {
            region: "eu".into(),
            tried: vec!["http://a:1".into()],
            last: Box::new(last),
        };
        assert!(all_failed(Error::Connect("refused".into())).is_transient());
        assert!(!all_failed(Error::Integrity).is_transient());
        assert!(!Error::UnknownRegion {
            region: "ap".into(),
            known: Vec::new()
        }
        .is_transient());
    }

    #[test]
    fn routing_errors_say_what_failed() {
        let unknown = Error::UnknownRegion {
            region: "ap".into(),
            known: vec!["eu".into(), "us".into()],
        };
        assert_eq!(
            unknown.to_string(),
            "unknown region `ap`: the known regions are eu, us"
        );
        assert_eq!(unknown.kind(), "unknown_region");
        let none = Error::UnknownRegion {
            region: "ap".into(),
            known: Vec::new(),
        };
        assert_eq!(
            none.to_string(),
            "unknown region `ap`: the region map lists no region"
        );
        let all = Error::AllEndpointsFailed {
            region: "eu".into(),
            tried: vec!["http://a:1".into(), "http://b:2".into()],
            last: Box::new(Error::Unavailable("vault is sealed".into())),
        };
        assert_eq!(
            all.to_string(),
            "every endpoint of region eu failed (http://a:1, http://b:2); the last one said: \
             vault unavailable: vault is sealed"
        );
        assert_eq!(all.kind(), "all_endpoints_failed");
    }
}
