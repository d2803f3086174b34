//! Key derivation (HKDF-SHA256) and the labels that separate its uses.
//!
//! ```text
//! field key = HKDF-SHA256(ikm  = subject key,
//!                         salt = labels::FIELD ‖ lp(region),
//!                         info = lp(collection) ‖ lp(field) ‖ u32be(subject key version))
//! record key = HKDF-SHA256(ikm  = subject key,
//!                          salt = labels::RECORD ‖ lp(region),
//!                          info = u32be(subject key version))
//! keyring key = HKDF-SHA256(ikm  = unseal key,
//!                           salt = labels::KEYRING ‖ lp(region),
//!                           info = "")
//! subject-key wrapping key = HKDF-SHA256(ikm  = root key ‖ shred-bucket key,
//!                                        salt = labels::SUBJECT_WRAP ‖ lp(region),
//!                                        info = u32be(root version) ‖ u16be(bucket) ‖ u32be(bucket epoch))
//! storage-name key = HKDF-SHA256(ikm  = pseudonym key,
//!                                salt = labels::STORAGE_NAMES ‖ lp(region),
//!                                info = "")
//! ```
//! `lp(x)` is `x` prefixed with its length as a big-endian u32, so no two
//! different tuples give the same bytes.

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::{put_lp, Key256};

/// Every label the vault feeds to a KDF or into an AAD. Each is versioned;
/// a new meaning gets a new label, never a reused one.
pub mod labels {
    /// Salt prefix of field-key derivation.
    pub const FIELD: &[u8] = b"vault/v1/field";
    /// AAD prefix of a wrapped subject key.
    pub const SUBJECT_KEY: &[u8] = b"vault/v1/subject-key";
    /// Salt prefix of the keyring-encryption key, and AAD prefix of the keyring file.
    pub const KEYRING: &[u8] = b"vault/v1/keyring";
    /// Salt prefix of the record-tag key, and prefix of the tagged bytes.
    pub const RECORD: &[u8] = b"vault/v1/record";
    /// Prefix of the keyed hash that names a subject without its id
    /// (erasure records in the keyring, erasure receipts).
    pub const SUBJECT_PSEUDONYM: &[u8] = b"vault/v1/subject-pseudonym";
    /// Prefix of the keyed hash that names a record in audit events.
    pub const RECORD_PSEUDONYM: &[u8] = b"vault/v1/record-pseudonym";
    /// Prefix of the bytes an erasure receipt's Ed25519 signature covers.
    pub const ERASURE_RECEIPT: &[u8] = b"vault/v1/erasure-receipt";
    /// Salt prefix of the key that wraps subject keys (a root key and a
    /// shred-bucket key together).
    pub const SUBJECT_WRAP: &[u8] = b"vault/v2/subject-wrap";
    /// AAD prefix of a wrapped subject key, format 2 (bound to the
    /// subject's storage name, not its id).
    pub const SUBJECT_KEY_V2: &[u8] = b"vault/v2/subject-key";
    /// Salt prefix of the key of the names rows are stored under.
    pub const STORAGE_NAMES: &[u8] = b"vault/v2/storage-names";
    /// Prefix of a subject's storage name.
    pub const SUBJECT_NAME: &[u8] = b"vault/v2/subject-name";
    /// Prefix of a record's storage name.
    pub const RECORD_NAME: &[u8] = b"vault/v2/record-name";
    /// Salt label of the blind-index keys (one per collection and field).
    pub const BLIND_INDEX: &[u8] = b"vault/v1/blind-index";
    /// The reserved field under which a stored record keeps its record and
    /// subject ids, encrypted (schema field names never start with `$`).
    pub const IDS_FIELD: &str = "$ids";
}

/// Where a field key is used: the inputs of its derivation besides the subject key.
#[derive(Debug, Clone, Copy)]
pub struct FieldKeyContext<'a> {
    /// The vault's region.
    pub region: &'a str,
    /// The collection.
    pub collection: &'a str,
    /// The field name.
    pub field: &'a str,
    /// The subject key's version.
    pub key_version: u32,
}

/// Derives the key of one field of one subject.
pub fn derive_field_key(subject_key: &Key256, ctx: &FieldKeyContext<'_>) -> Key256 {
    let mut salt = Vec::with_capacity(labels::FIELD.len() + 4 + ctx.region.len());
    salt.extend_from_slice(labels::FIELD);
    put_lp(&mut salt, ctx.region.as_bytes());
    let mut info = Vec::with_capacity(12 + ctx.collection.len() + ctx.field.len());
    put_lp(&mut info, ctx.collection.as_bytes());
    put_lp(&mut info, ctx.field.as_bytes());
    info.extend_from_slice(&ctx.key_version.to_be_bytes());
    expand(&salt, subject_key.expose_secret(), &info)
}

/// Derives the key of the record tags of one subject key version.
pub fn derive_record_key(subject_key: &Key256, region: &str, key_version: u32) -> Key256 {
    let mut salt = Vec::with_capacity(labels::RECORD.len() + 4 + region.len());
    salt.extend_from_slice(labels::RECORD);
    put_lp(&mut salt, region.as_bytes());
    expand(
        &salt,
        subject_key.expose_secret(),
        &key_version.to_be_bytes(),
    )
}

/// Derives the key that encrypts the keyring file from the unseal key.
pub fn derive_keyring_key(unseal_key: &Key256, region: &str) -> Key256 {
    let mut salt = Vec::with_capacity(labels::KEYRING.len() + 4 + region.len());
    salt.extend_from_slice(labels::KEYRING);
    put_lp(&mut salt, region.as_bytes());
    expand(&salt, unseal_key.expose_secret(), &[])
}

/// Where a subject-key wrapping key is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WrapKeyContext {
    /// The root key version.
    pub root_version: u32,
    /// The shred bucket.
    pub bucket: u16,
    /// The bucket key's epoch.
    pub epoch: u32,
}

/// Derives the key that wraps the subject keys of one shred bucket under
/// one root key version: destroying either key makes the wrapped keys
/// unopenable.
pub fn derive_wrap_key(
    root: &Key256,
    bucket_key: &Key256,
    region: &str,
    ctx: WrapKeyContext,
) -> Key256 {
    let mut salt = Vec::with_capacity(labels::SUBJECT_WRAP.len() + 4 + region.len());
    salt.extend_from_slice(labels::SUBJECT_WRAP);
    put_lp(&mut salt, region.as_bytes());
    let mut ikm = Zeroizing::new([0u8; 64]);
    ikm[..32].copy_from_slice(root.expose_secret());
    ikm[32..].copy_from_slice(bucket_key.expose_secret());
    let mut info = [0u8; 10];
    info[..4].copy_from_slice(&ctx.root_version.to_be_bytes());
    info[4..6].copy_from_slice(&ctx.bucket.to_be_bytes());
    info[6..].copy_from_slice(&ctx.epoch.to_be_bytes());
    expand(&salt, ikm.as_ref(), &info)
}

/// Derives the key of the names rows are stored under (HMAC-SHA256).
pub fn derive_storage_names_key(pseudonym_key: &Key256, region: &str) -> Key256 {
    let mut salt = Vec::with_capacity(labels::STORAGE_NAMES.len() + 4 + region.len());
    salt.extend_from_slice(labels::STORAGE_NAMES);
    put_lp(&mut salt, region.as_bytes());
    expand(&salt, pseudonym_key.expose_secret(), &[])
}

/// Derives the HMAC key of the blind index of one field of one
/// collection, from index key version `version`.
pub fn derive_blind_index_key(
    index_key: &Key256,
    region: &str,
    collection: &str,
    field: &str,
    version: u32,
) -> Key256 {
    let mut salt = Vec::with_capacity(labels::BLIND_INDEX.len() + 4 + region.len());
    salt.extend_from_slice(labels::BLIND_INDEX);
    put_lp(&mut salt, region.as_bytes());
    let mut info = Vec::with_capacity(12 + collection.len() + field.len());
    put_lp(&mut info, collection.as_bytes());
    put_lp(&mut info, field.as_bytes());
    info.extend_from_slice(&version.to_be_bytes());
    expand(&salt, index_key.expose_secret(), &info)
}

fn expand(salt: &[u8], ikm: &[u8], info: &[u8]) -> Key256 {
    let mut okm = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's limit of 255 * 32 bytes.
    hkdf_sha256(salt, ikm, info, okm.as_mut()).expect("32-byte HKDF output is valid");
    Key256::take(&mut okm)
}

/// HKDF-SHA256 extract-and-expand into `out` (at most 8160 bytes).
pub(crate) fn hkdf_sha256(
    salt: &[u8],
    ikm: &[u8],
    info: &[u8],
    out: &mut [u8],
) -> Result<(), hkdf::InvalidLength> {
    Hkdf::<Sha256>::new(Some(salt), ikm).expand(info, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx<'a>(
        region: &'a str,
        collection: &'a str,
        field: &'a str,
        v: u32,
    ) -> FieldKeyContext<'a> {
        FieldKeyContext {
            region,
            collection,
            field,
            key_version: v,
        }
    }

    #[test]
    fn every_input_changes_the_key() {
        let sk = Key256::from_slice(&[7; 32]).unwrap();
        let base = derive_field_key(&sk, &ctx("eu", "users", "email", 1));
        let variants = [
            derive_field_key(&sk, &ctx("us", "users", "email", 1)),
            derive_field_key(&sk, &ctx("eu", "user", "email", 1)),
            derive_field_key(&sk, &ctx("eu", "users", "name", 1)),
            derive_field_key(&sk, &ctx("eu", "users", "email", 2)),
            derive_field_key(
                &Key256::from_slice(&[8; 32]).unwrap(),
                &ctx("eu", "users", "email", 1),
            ),
            // Length prefixes keep "ab"+"c" apart from "a"+"bc".
            derive_field_key(&sk, &ctx("eu", "usersemail", "", 1)),
        ];
        for v in &variants {
            assert_ne!(v.expose_secret(), base.expose_secret());
        }
        let again = derive_field_key(&sk, &ctx("eu", "users", "email", 1));
        assert_eq!(again.expose_secret(), base.expose_secret());
    }

    #[test]
    fn keyring_key_depends_on_region() {
        let uk = Key256::from_slice(&[1; 32]).unwrap();
        assert_ne!(
            derive_keyring_key(&uk, "eu").expose_secret(),
            derive_keyring_key(&uk, "us").expose_secret()
        );
    }
}
