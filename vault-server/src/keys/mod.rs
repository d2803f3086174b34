//! The key hierarchy (SECURITY.md, "Key hierarchy"): the keyring, wrapped
//! subject keys, and the bounded cache of unwrapped keys.

mod cache;
mod keyring;
mod receipt;
mod region;
mod shares;
mod subject;

pub use cache::{KeyCache, SubjectKeys};
pub use keyring::{
    write_secret_file, Custody, KeyState, Keyring, KeyringError, SubjectPseudonym, VersionedKey,
    KEYRING_FILE_V2,
};
pub use receipt::{signing_key, ErasureReceipt, ReceiptError, ERASURE_RECEIPT_V1};
pub use region::{InvalidRegion, Region};
pub use shares::{split, Progress, ShareCollector, ShareError, UnsealShare, SHARE_PREFIX};
pub use subject::{
    rewrap_subject_key, unwrap_subject_key, wrap_subject_key, wrapping_version, Rewrapper,
    WRAPPED_SUBJECT_KEY_V1,
};
