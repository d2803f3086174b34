//! Cryptographic building blocks: secret key types, HKDF labels and
//! derivations, and the AEAD envelopes for fields and wrapped keys.
//!
//! Everything here is pure computation: no I/O, no storage, no gRPC.

mod envelope;
mod kdf;
mod record;
mod secret;
#[cfg(test)]
mod vectors;
mod wrap;

pub use envelope::{open_field, seal_field, EnvelopeHeader, FieldAad, ENVELOPE_V1};
pub use kdf::{
    derive_blind_index_key, derive_field_key, derive_keyring_key, derive_record_key,
    derive_storage_names_key, derive_wrap_key, labels, FieldKeyContext, WrapKeyContext,
};
pub use record::{record_tag, verify_record_tag, RecordContext};
pub use secret::Key256;
pub use wrap::{open_wrapped, seal_wrapped, WrapCipher, WRAP_OVERHEAD};

/// Why a ciphertext was refused. Callers map every kind to the one opaque
/// [`crate::Error::Integrity`]; the kinds exist so tests can assert the
/// exact failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// Too short, or a length that does not add up.
    #[error("malformed ciphertext")]
    Malformed,
    /// A version byte this build does not know.
    #[error("unknown ciphertext version")]
    UnknownVersion,
    /// The tag did not verify: wrong key, wrong AAD, or altered bytes.
    #[error("authentication failed")]
    Authentication,
}

impl From<CryptoError> for crate::Error {
    fn from(_: CryptoError) -> Self {
        crate::Error::Integrity
    }
}

/// Appends `bytes` prefixed with their length (u32, big-endian).
pub(crate) fn put_lp(buf: &mut Vec<u8>, bytes: &[u8]) {
    // Every input here is bounded far below 4 GiB by request limits.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(bytes);
}
