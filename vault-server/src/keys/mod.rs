//! The key hierarchy (SECURITY.md, "Key hierarchy"): the keyring, wrapped
//! subject keys, and the bounded cache of unwrapped keys.

mod cache;
mod keyring;
mod names;
mod receipt;
mod recipients;
mod region;
pub mod seal;
mod shares;
mod subject;

pub use cache::{KeyCache, SubjectKeys};
pub use keyring::{
    write_secret_file, Custody, KeyState, Keyring, KeyringError, SubjectPseudonym, VersionedKey,
    KEYRING_FILE_V2, KEYRING_FILE_V3, SHRED_BUCKETS,
};
pub use names::{bucket_of, RecordName, StorageNames, SubjectName};
pub use receipt::{signing_key, ErasureReceipt, ReceiptError, Shredded, ERASURE_RECEIPT_V2};
pub use recipients::{RecipientError, ShareRecipients};
pub use region::{InvalidRegion, Region};
pub use shares::{
    check_split, split, Progress, ShareCollector, ShareError, UnsealShare, SHARE_PREFIX,
};
pub use subject::{
    rewrap_subject_key, unwrap_subject_key, wrap_subject_key, wrapping, wrapping_version,
    Rewrapper, WRAPPED_SUBJECT_KEY_V2,
};
