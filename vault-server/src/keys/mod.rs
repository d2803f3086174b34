//! The key hierarchy (DESIGN.md §3): the keyring, wrapped subject keys, and
//! the bounded cache of unwrapped keys.

mod cache;
mod keyring;
mod region;
mod shares;
mod subject;

pub use cache::{KeyCache, SubjectKeys};
pub use keyring::{
    format_unseal_key, parse_unseal_key, write_secret_file, KeyState, Keyring, KeyringError,
    VersionedKey, KEYRING_FILE_V1,
};
pub use region::{InvalidRegion, Region};
pub use shares::{split, Progress, ShareCollector, ShareError, UnsealShare, SHARE_PREFIX};
pub use subject::{unwrap_subject_key, wrap_subject_key, WRAPPED_SUBJECT_KEY_V1};
