//! Typed async client of the regional data vault (gRPC `vault.v1`).
//!
//! [`VaultClient`] speaks the wire contract with this crate's own types:
//! [`Value`], [`Record`], [`Collection`], [`FieldSchema`] and friends, and
//! reports failures as [`Error`], classified by gRPC status code. The
//! [`json`] module types JSON input by a collection's schema, as the
//! `vaultctl` command does.
//!
//! Over TLS, give the builder an `https://` address and, as needed, the CA
//! of the vault's certificate ([`ClientBuilder::ca_certificate_file`]; the
//! system's roots otherwise) and a client certificate for mutual TLS
//! ([`ClientBuilder::client_identity_files`]), which names the caller, so
//! that the token becomes optional. Certificate and key files are checked
//! before connecting; errors name the file.
//!
//! Key custody (`OperatorService`, `SubjectService`) has its own calls:
//! [`VaultClient::init`], [`VaultClient::unseal`], [`VaultClient::seal`],
//! [`VaultClient::status`], root and subject key rotation and retirement,
//! and [`VaultClient::erase_subject`], whose [`ErasureReceipt`] the client
//! verifies itself ([`ErasureReceipt::verify`]). Unseal shares are
//! [`UnsealShare`]s: zeroized on drop, redacted in `Debug`.
//!
//! The vault enforces an access policy: a [`Record`] read back says which
//! of its fields the caller's policy withheld ([`Record::redacted`], not
//! decrypted) or masked ([`Record::masked`]). `AdminService` reloads the
//! policy ([`VaultClient::reload_policy`]) and shows what it grants a
//! principal ([`VaultClient::check_policy`], a [`PolicyCheck`]).
//!
//! The [`audit`] module verifies an exported audit log offline, with its
//! own RFC 6962 Merkle hashing and C2SP checkpoint signatures: an auditor
//! need not trust the vault's code. `AuditService` has its calls too:
//! [`VaultClient::audit_events`] (an [`AuditPage`]),
//! [`VaultClient::audit_checkpoints`], [`VaultClient::audit_inclusion_proof`],
//! [`VaultClient::audit_consistency_proof`] and
//! [`VaultClient::audit_public_key`]; proofs arrive as 32-byte hashes, for
//! [`audit::verify_inclusion`] and [`audit::verify_consistency`].
//!
//! # Region routing
//!
//! A deployment runs one vault per region, each perhaps served by several
//! stateless servers over one database. A [`RegionMap`] lists each
//! region's server addresses, in code or as text
//! (`eu=https://eu-1:8200,https://eu-2:8200;us=https://us-1:8200`). A
//! [`RegionalClient`] made from the map and a template [`ClientBuilder`]
//! (token, purpose, deadlines, TLS) gives, per region, a [`RegionHandle`]
//! (`client.region("eu")?`) whose data calls go to that region's servers
//! only: to the current one, and on to the next when a server is
//! unreachable, UNAVAILABLE or sealed; the server that answered stays
//! current ([`RegionHandle::current_endpoint`]). Answers such as NOT_FOUND
//! or PERMISSION_DENIED are never retried elsewhere. An unknown region is
//! [`Error::UnknownRegion`]; a region none of whose servers serves is
//! [`Error::AllEndpointsFailed`]. The [`routing`] module says which errors
//! fail over and why resending a write is safe.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use vault_client::{Record, Timestamp, VaultClient};
//!
//! let vault = VaultClient::connect("127.0.0.1:8200", "dev-token").await?;
//! let record = Record::new("users", "u-1", "subject-1")
//!     .with("email", "ada@example.eu")
//!     .with("birth_date", "1990-05-17T00:00:00Z".parse::<Timestamp>()?);
//! vault.put(&record).await?;
//! let back = vault.get_fields("users", "u-1", &["email"]).await?;
//! assert_eq!(back.get("email"), record.get("email"));
//! vault.delete("users", "u-1").await?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod audit;
mod client;
mod convert;
mod custody;
mod error;
pub mod export;
pub mod json;
mod policy;
mod receipt;
pub mod routing;
pub mod sealed_share;
mod tls;
mod types;

pub use crate::client::{
    Alert, AlertStream, AuditFollow, AuditPage, ClientBuilder, ExportPart, SubjectExportStream,
    VaultClient, DEFAULT_TIMEOUT, PURPOSE_METADATA_KEY,
};
pub use crate::custody::{
    Initialized, KeyState, ReindexProgress, RekeyProgress, RewrapProgress, RootKeyInfo, RootKeys,
    SealStatus, SubjectKeyRotation, UnsealProgress, UnsealShare,
};
pub use crate::error::{Error, Result};
pub use crate::policy::{FieldAccess, OperationAccess, PolicyCheck};
pub use crate::receipt::{ErasureReceipt, ReceiptBody, ReceiptError, RECEIPT_SIGNATURE_LABEL};
pub use crate::routing::{RegionHandle, RegionMap, RegionMapError, RegionalClient};
pub use crate::types::{
    is_valid_field_name, BatchGet, Collection, DataCategory, FieldSchema, FieldType, Mask,
    ParseError, Record, Retention, Timestamp, Value,
};
