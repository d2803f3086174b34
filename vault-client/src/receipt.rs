//! Erasure receipts: what the vault signs when it crypto-shreds a data
//! subject, and their verification. The signed body's layout is drawn on
//! [`ReceiptBody`].

use ed25519_dalek::{Signature, VerifyingKey};

use crate::error::Error;
use crate::types::Timestamp;

/// The domain label signed in front of every receipt body.
pub const RECEIPT_SIGNATURE_LABEL: &[u8] = b"vault/v1/erasure-receipt";

/// The receipt body version this client reads (version 1, without the
/// shredded bucket key, is refused).
const RECEIPT_V2: u8 = 2;

/// Why an erasure receipt does not verify. The messages name the failing
/// part, never the subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiptError {
    /// The public key is not 32 bytes or not a valid Ed25519 point.
    #[error("the public key is not a valid Ed25519 key")]
    BadPublicKey,
    /// The receipt is signed with another key than the one trusted.
    #[error("the receipt is signed with another key than the trusted one")]
    UntrustedKey,
    /// The signature is not 64 bytes.
    #[error("the signature is not 64 bytes long")]
    MalformedSignature,
    /// The signature does not verify over the body with the public key.
    #[error("the signature does not match the body and public key")]
    BadSignature,
    /// A body version this client does not know.
    #[error("receipt body version {0} is not supported")]
    UnknownVersion(u8),
    /// The body ends inside the named field.
    #[error("the receipt body is truncated (it ends inside the {0})")]
    Truncated(&'static str),
    /// Bytes after the body's last field.
    #[error("the receipt body has {0} unexpected bytes after its last field")]
    TrailingBytes(usize),
    /// The region in the body is not UTF-8.
    #[error("the region in the receipt body is not UTF-8")]
    RegionNotUtf8,
    /// A convenience field of the receipt says something else than the
    /// signed body (named: `receipt id`, `erased_at`, ...).
    #[error("the receipt's {0} does not match its signed body")]
    Mismatch(&'static str),
}

/// The fields of a receipt's signed body, decoded.
///
/// The body, version 2 (integers big-endian, no trailing bytes):
///
/// ```text
///  offset  size  field
///       0     1  version = 2
///       1    16  receipt id (random)
///      17     8  erased_at, Unix seconds (u64)
///      25     2  region length L (u16)
///      27     L  region (UTF-8)
///    27+L    16  keyring id
///    43+L    32  subject pseudonym (HMAC-SHA256 of the subject id)
///    75+L     4  key versions destroyed (u32)
///    79+L     8  records deleted (u64)
///    87+L     2  shred bucket (u16)
///    89+L     4  bucket key epoch destroyed (u32)
///    93+L     8  other subjects' keys re-wrapped (u64)
///   101+L        end
/// ```
///
/// Erasure crypto-shreds: every subject key is wrapped under a key derived
/// from the root key and one of the keyring's shred-bucket keys. Erasing a
/// subject re-wraps the other subjects of its bucket under the bucket key's
/// next epoch and destroys the old epoch, so no copy of the data folder
/// made before the erasure opens a key of that bucket wrapped under it.
/// Any other version (1 had no shred fields) is refused.
///
/// The signature is Ed25519 over [`RECEIPT_SIGNATURE_LABEL`] ‖ body,
/// checked with `verify_strict` (no malleable signatures, no weak keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptBody {
    /// 16 random bytes naming the receipt.
    pub receipt_id: [u8; 16],
    /// When the subject was erased, in Unix seconds.
    pub erased_at: u64,
    /// The vault's region.
    pub region: String,
    /// The keyring the erased keys belonged to.
    pub keyring_id: [u8; 16],
    /// HMAC-SHA256 pseudonym of the subject id under the vault's pseudonym
    /// key: the receipt names no personal data.
    pub subject_pseudonym: [u8; 32],
    /// Key versions destroyed (1 through this; 0 if the subject had no key).
    pub key_versions_destroyed: u32,
    /// Records deleted.
    pub records_deleted: u64,
    /// The subject's shred bucket.
    pub shred_bucket: u16,
    /// The epoch of the bucket's key destroyed by the erasure.
    pub shred_epoch_destroyed: u32,
    /// Keys of the bucket's other subjects re-wrapped under its next epoch.
    pub keys_rewrapped: u64,
}

impl ReceiptBody {
    /// Decodes a version 2 body (layout above). Every
    /// malformation is an error, never a panic.
    pub fn decode(body: &[u8]) -> Result<Self, ReceiptError> {
        let mut reader = Reader(body);
        let [version] = reader.array::<1>("version")?;
        if version != RECEIPT_V2 {
            return Err(ReceiptError::UnknownVersion(version));
        }
        let receipt_id = reader.array("receipt id")?;
        let erased_at = u64::from_be_bytes(reader.array("erased_at")?);
        let region_len = u16::from_be_bytes(reader.array("region length")?);
        let region = reader.take(usize::from(region_len), "region")?;
        let region = std::str::from_utf8(region)
            .map_err(|_| ReceiptError::RegionNotUtf8)?
            .to_owned();
        let keyring_id = reader.array("keyring id")?;
        let subject_pseudonym = reader.array("subject pseudonym")?;
        let key_versions_destroyed = u32::from_be_bytes(reader.array("key version count")?);
        let records_deleted = u64::from_be_bytes(reader.array("record count")?);
        let shred_bucket = u16::from_be_bytes(reader.array("shred bucket")?);
        let shred_epoch_destroyed = u32::from_be_bytes(reader.array("shred epoch")?);
        let keys_rewrapped = u64::from_be_bytes(reader.array("re-wrapped key count")?);
        if !reader.0.is_empty() {
            return Err(ReceiptError::TrailingBytes(reader.0.len()));
        }
        Ok(Self {
            receipt_id,
            erased_at,
            region,
            keyring_id,
            subject_pseudonym,
            key_versions_destroyed,
            records_deleted,
            shred_bucket,
            shred_epoch_destroyed,
            keys_rewrapped,
        })
    }

    /// Encodes the body (the inverse of [`ReceiptBody::decode`]), as the
    /// vault does; `None` if the region is longer than 65535 bytes.
    #[cfg(test)]
    fn encode(&self) -> Option<Vec<u8>> {
        let region_len = u16::try_from(self.region.len()).ok()?;
        let mut body = Vec::with_capacity(101 + self.region.len());
        body.push(RECEIPT_V2);
        body.extend_from_slice(&self.receipt_id);
        body.extend_from_slice(&self.erased_at.to_be_bytes());
        body.extend_from_slice(&region_len.to_be_bytes());
        body.extend_from_slice(self.region.as_bytes());
        body.extend_from_slice(&self.keyring_id);
        body.extend_from_slice(&self.subject_pseudonym);
        body.extend_from_slice(&self.key_versions_destroyed.to_be_bytes());
        body.extend_from_slice(&self.records_deleted.to_be_bytes());
        body.extend_from_slice(&self.shred_bucket.to_be_bytes());
        body.extend_from_slice(&self.shred_epoch_destroyed.to_be_bytes());
        body.extend_from_slice(&self.keys_rewrapped.to_be_bytes());
        Some(body)
    }
}

/// Reads fields off the front of a byte string.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], ReceiptError> {
        if self.0.len() < n {
            return Err(ReceiptError::Truncated(field));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], ReceiptError> {
        let bytes = self.take(N, field)?;
        // take() returned exactly N bytes.
        bytes.try_into().map_err(|_| ReceiptError::Truncated(field))
    }
}

/// A receipt of one erasure, signed by the vault's Ed25519 key
/// ([`VaultClient::erase_subject`](crate::VaultClient::erase_subject)).
///
/// `body` is what is signed; the other fields repeat it for convenience and
/// are trustworthy only after [`ErasureReceipt::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErasureReceipt {
    /// The signed body (layout on [`ReceiptBody`]).
    pub body: Vec<u8>,
    /// Ed25519 signature over [`RECEIPT_SIGNATURE_LABEL`] ‖ `body`.
    pub signature: Vec<u8>,
    /// The vault's Ed25519 public key (32 bytes).
    pub public_key: Vec<u8>,
    /// The receipt id, hex.
    pub receipt_id: String,
    /// When the subject was erased.
    pub erased_at: Timestamp,
    /// The vault's region.
    pub region: String,
    /// The subject's pseudonym, hex.
    pub subject_pseudonym: String,
    /// Key versions destroyed (1 through this; 0 if the subject had no key).
    pub key_versions_destroyed: u32,
    /// Records deleted.
    pub records_deleted: u64,
    /// The subject's shred bucket (its keys were wrapped under that
    /// bucket's key).
    pub shred_bucket: u32,
    /// The epoch of the bucket key destroyed: no copy of the data folder
    /// made before the erasure opens a key of the bucket wrapped under it.
    pub shred_epoch_destroyed: u32,
    /// Keys of the bucket's other subjects re-wrapped under its next epoch.
    pub keys_rewrapped: u64,
}

impl ErasureReceipt {
    /// Checks the signature (Ed25519 `verify_strict` with `public_key` over
    /// [`RECEIPT_SIGNATURE_LABEL`] ‖ `body`), decodes the body, and checks
    /// that every convenience field says what the body says. The decoded
    /// body (with the keyring id, which has no convenience field) is
    /// [`ReceiptBody::decode`]`(&receipt.body)`.
    ///
    /// This proves that the holder of `public_key` signed this receipt. To
    /// know that the holder is your vault, compare the key with one you
    /// trust ([`ErasureReceipt::verify_with_key`]).
    pub fn verify(&self) -> Result<(), Error> {
        self.check().map_err(Error::Receipt)
    }

    /// [`ErasureReceipt::verify`], and also that the receipt was signed
    /// with `trusted_key` (for example the vault's
    /// [`SealStatus::signing_public_key`](crate::SealStatus::signing_public_key)
    /// recorded earlier).
    pub fn verify_with_key(&self, trusted_key: &[u8; 32]) -> Result<(), Error> {
        if self.public_key.as_slice() != trusted_key.as_slice() {
            return Err(Error::Receipt(ReceiptError::UntrustedKey));
        }
        self.verify()
    }

    fn check(&self) -> Result<(), ReceiptError> {
        let public_key: [u8; 32] = self
            .public_key
            .as_slice()
            .try_into()
            .map_err(|_| ReceiptError::BadPublicKey)?;
        let public_key =
            VerifyingKey::from_bytes(&public_key).map_err(|_| ReceiptError::BadPublicKey)?;
        let signature =
            Signature::from_slice(&self.signature).map_err(|_| ReceiptError::MalformedSignature)?;
        let mut message = Vec::with_capacity(RECEIPT_SIGNATURE_LABEL.len() + self.body.len());
        message.extend_from_slice(RECEIPT_SIGNATURE_LABEL);
        message.extend_from_slice(&self.body);
        public_key
            .verify_strict(&message, &signature)
            .map_err(|_| ReceiptError::BadSignature)?;

        let body = ReceiptBody::decode(&self.body)?;
        if !hex_eq(&self.receipt_id, &body.receipt_id) {
            return Err(ReceiptError::Mismatch("receipt id"));
        }
        // The body has whole seconds; the timestamp must be that instant.
        if i64::try_from(body.erased_at).ok() != Some(self.erased_at.seconds)
            || self.erased_at.nanos != 0
        {
            return Err(ReceiptError::Mismatch("erased_at"));
        }
        if self.region != body.region {
            return Err(ReceiptError::Mismatch("region"));
        }
        if !hex_eq(&self.subject_pseudonym, &body.subject_pseudonym) {
            return Err(ReceiptError::Mismatch("subject pseudonym"));
        }
        if self.key_versions_destroyed != body.key_versions_destroyed {
            return Err(ReceiptError::Mismatch("key versions destroyed"));
        }
        if self.records_deleted != body.records_deleted {
            return Err(ReceiptError::Mismatch("records deleted"));
        }
        if self.shred_bucket != u32::from(body.shred_bucket) {
            return Err(ReceiptError::Mismatch("shred bucket"));
        }
        if self.shred_epoch_destroyed != body.shred_epoch_destroyed {
            return Err(ReceiptError::Mismatch("shred epoch destroyed"));
        }
        if self.keys_rewrapped != body.keys_rewrapped {
            return Err(ReceiptError::Mismatch("keys re-wrapped"));
        }
        Ok(())
    }
}

/// Whether `text` is the hex (either case) of `bytes`.
fn hex_eq(text: &str, bytes: &[u8]) -> bool {
    hex::decode(text).is_ok_and(|decoded| decoded == bytes)
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer as _, SigningKey};
    use rand::RngCore as _;

    use super::*;

    fn signing_key() -> SigningKey {
        let mut seed = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut seed);
        SigningKey::from_bytes(&seed)
    }

    fn body() -> ReceiptBody {
        ReceiptBody {
            receipt_id: [0x11; 16],
            erased_at: 1_700_000_000,
            region: "eu".into(),
            keyring_id: [0x22; 16],
            subject_pseudonym: [0xab; 32],
            key_versions_destroyed: 2,
            records_deleted: 12,
            shred_bucket: 517,
            shred_epoch_destroyed: 3,
            keys_rewrapped: 0x0102_0304_0506,
        }
    }

    fn sign(key: &SigningKey, body: &[u8]) -> Vec<u8> {
        let message = [RECEIPT_SIGNATURE_LABEL, body].concat();
        key.sign(&message).to_bytes().to_vec()
    }

    /// A receipt as the vault makes it, signed with `key`.
    fn receipt(key: &SigningKey) -> ErasureReceipt {
        let fields = body();
        let body = fields.encode().unwrap();
        ErasureReceipt {
            signature: sign(key, &body),
            body,
            public_key: key.verifying_key().to_bytes().to_vec(),
            receipt_id: hex::encode(fields.receipt_id),
            erased_at: Timestamp::from_unix_seconds(1_700_000_000),
            region: "eu".into(),
            subject_pseudonym: hex::encode(fields.subject_pseudonym),
            key_versions_destroyed: 2,
            records_deleted: 12,
            shred_bucket: 517,
            shred_epoch_destroyed: 3,
            keys_rewrapped: 0x0102_0304_0506,
        }
    }

    fn failure(receipt: &ErasureReceipt) -> ReceiptError {
        match receipt.verify() {
            Err(Error::Receipt(e)) => e,
            other => panic!("expected a receipt error, got {other:?}"),
        }
    }

    #[test]
    fn layout() {
        let encoded = body().encode().unwrap();
        assert_eq!(encoded.len(), 101 + 2);
        assert_eq!(encoded[0], 2);
        assert_eq!(&encoded[1..17], &[0x11; 16]);
        assert_eq!(&encoded[17..25], &1_700_000_000u64.to_be_bytes());
        assert_eq!(&encoded[25..27], &[0, 2]);
        assert_eq!(&encoded[27..29], b"eu");
        assert_eq!(&encoded[29..45], &[0x22; 16]);
        assert_eq!(&encoded[45..77], &[0xab; 32]);
        assert_eq!(&encoded[77..81], &[0, 0, 0, 2]);
        assert_eq!(&encoded[81..89], &[0, 0, 0, 0, 0, 0, 0, 12]);
        assert_eq!(&encoded[89..91], &517u16.to_be_bytes());
        assert_eq!(&encoded[91..95], &[0, 0, 0, 3]);
        assert_eq!(&encoded[95..103], &[0, 0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(ReceiptBody::decode(&encoded), Ok(body()));
        // What decodes encodes back to the same bytes.
        assert_eq!(
            ReceiptBody::decode(&encoded).unwrap().encode(),
            Some(encoded)
        );
    }

    #[test]
    fn a_good_receipt_verifies() {
        let key = signing_key();
        let receipt = receipt(&key);
        receipt.verify().unwrap();
        receipt
            .verify_with_key(&key.verifying_key().to_bytes())
            .unwrap();
        assert_eq!(ReceiptBody::decode(&receipt.body), Ok(body()));
        // Upper-case hex in the convenience fields is the same bytes.
        let upper = ErasureReceipt {
            receipt_id: receipt.receipt_id.to_uppercase(),
            ..receipt.clone()
        };
        assert!(upper.verify().is_ok());
    }

    #[test]
    fn every_flipped_body_byte_fails() {
        let key = signing_key();
        let good = receipt(&key);
        for i in 0..good.body.len() {
            let mut bad = good.clone();
            bad.body[i] ^= 0x01;
            assert_eq!(failure(&bad), ReceiptError::BadSignature, "byte {i}");
        }
    }

    #[test]
    fn a_flipped_signature_fails() {
        let key = signing_key();
        let good = receipt(&key);
        for i in [0, 31, 32, 63] {
            let mut bad = good.clone();
            bad.signature[i] ^= 0x80;
            assert_eq!(failure(&bad), ReceiptError::BadSignature, "byte {i}");
        }
        let mut short = good.clone();
        short.signature.pop();
        assert_eq!(failure(&short), ReceiptError::MalformedSignature);
        let mut empty = good;
        empty.signature.clear();
        assert_eq!(failure(&empty), ReceiptError::MalformedSignature);
    }

    #[test]
    fn a_wrong_key_fails() {
        let key = signing_key();
        let other = signing_key();
        let mut bad = receipt(&key);
        bad.public_key = other.verifying_key().to_bytes().to_vec();
        assert_eq!(failure(&bad), ReceiptError::BadSignature);

        // Signed and presented with another key, it verifies on its own,
        // but not against the key the caller trusts.
        let foreign = receipt(&other);
        assert!(foreign.verify().is_ok());
        assert!(matches!(
            foreign.verify_with_key(&key.verifying_key().to_bytes()),
            Err(Error::Receipt(ReceiptError::UntrustedKey))
        ));

        let mut short_key = receipt(&key);
        short_key.public_key.pop();
        assert_eq!(failure(&short_key), ReceiptError::BadPublicKey);
        let mut no_key = receipt(&key);
        no_key.public_key.clear();
        assert_eq!(failure(&no_key), ReceiptError::BadPublicKey);
    }

    #[test]
    fn a_truncated_body_fails() {
        let key = signing_key();
        let good = receipt(&key);

        // Cut after signing: the signature no longer covers it.
        let mut cut = good.clone();
        cut.body.truncate(cut.body.len() - 1);
        assert_eq!(failure(&cut), ReceiptError::BadSignature);

        // Cut before signing (a vault that signs a short body): the body
        // itself is refused, at every length.
        for len in 0..good.body.len() {
            let mut short = good.clone();
            short.body.truncate(len);
            short.signature = sign(&key, &short.body);
            assert!(
                matches!(failure(&short), ReceiptError::Truncated(_)),
                "length {len}: {:?}",
                failure(&short)
            );
        }
        assert_eq!(
            ReceiptBody::decode(&[]),
            Err(ReceiptError::Truncated("version"))
        );
        assert_eq!(
            ReceiptBody::decode(&good.body[..30]),
            Err(ReceiptError::Truncated("keyring id"))
        );
        // Ends inside each of the version 2 fields.
        for (len, field) in [
            (88, "record count"),
            (90, "shred bucket"),
            (94, "shred epoch"),
            (102, "re-wrapped key count"),
        ] {
            assert_eq!(
                ReceiptBody::decode(&good.body[..len]),
                Err(ReceiptError::Truncated(field)),
                "length {len}"
            );
        }
    }

    #[test]
    fn a_version_1_receipt_is_refused() {
        // A well-formed, validly signed version 1 body: the version 2 body
        // without its last three fields.
        let key = signing_key();
        let mut v1 = receipt(&key);
        v1.body.truncate(87 + 2);
        v1.body[0] = 1;
        v1.signature = sign(&key, &v1.body);
        assert_eq!(failure(&v1), ReceiptError::UnknownVersion(1));
        assert_eq!(
            failure(&v1).to_string(),
            "receipt body version 1 is not supported"
        );
        // Also with the version 2 length.
        let mut long_v1 = receipt(&key);
        long_v1.body[0] = 1;
        long_v1.signature = sign(&key, &long_v1.body);
        assert_eq!(failure(&long_v1), ReceiptError::UnknownVersion(1));
    }

    #[test]
    fn malformed_bodies_are_refused() {
        let good = body().encode().unwrap();

        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(
            ReceiptBody::decode(&trailing),
            Err(ReceiptError::TrailingBytes(1))
        );

        for v in [0, 1, 3, 0xff] {
            let mut version = good.clone();
            version[0] = v;
            assert_eq!(
                ReceiptBody::decode(&version),
                Err(ReceiptError::UnknownVersion(v))
            );
        }

        let mut region = good.clone();
        region[27] = 0xff;
        assert_eq!(
            ReceiptBody::decode(&region),
            Err(ReceiptError::RegionNotUtf8)
        );

        // A region length past the end.
        let mut long_region = good.clone();
        long_region[25..27].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(
            ReceiptBody::decode(&long_region),
            Err(ReceiptError::Truncated("region"))
        );

        // No input panics.
        for len in 0..=good.len() {
            for flip in 0..len {
                let mut bytes = good[..len].to_vec();
                bytes[flip] ^= 0xff;
                let _ = ReceiptBody::decode(&bytes);
            }
        }

        // An empty region is allowed by the layout.
        let empty_region = ReceiptBody {
            region: String::new(),
            ..body()
        };
        let encoded = empty_region.encode().unwrap();
        assert_eq!(ReceiptBody::decode(&encoded), Ok(empty_region));
    }

    #[test]
    fn a_mismatched_convenience_field_fails() {
        let key = signing_key();
        let good = receipt(&key);
        let cases: [(&str, ErasureReceipt); 11] = [
            (
                "receipt id",
                ErasureReceipt {
                    receipt_id: hex::encode([0x12; 16]),
                    ..good.clone()
                },
            ),
            (
                "receipt id",
                ErasureReceipt {
                    receipt_id: "not hex".into(),
                    ..good.clone()
                },
            ),
            (
                "erased_at",
                ErasureReceipt {
                    erased_at: Timestamp::from_unix_seconds(1_700_000_001),
                    ..good.clone()
                },
            ),
            (
                "erased_at",
                ErasureReceipt {
                    erased_at: Timestamp {
                        seconds: 1_700_000_000,
                        nanos: 5,
                    },
                    ..good.clone()
                },
            ),
            (
                "region",
                ErasureReceipt {
                    region: "us".into(),
                    ..good.clone()
                },
            ),
            (
                "subject pseudonym",
                ErasureReceipt {
                    subject_pseudonym: hex::encode([0xac; 32]),
                    ..good.clone()
                },
            ),
            (
                "key versions destroyed",
                ErasureReceipt {
                    key_versions_destroyed: 3,
                    ..good.clone()
                },
            ),
            (
                "records deleted",
                ErasureReceipt {
                    records_deleted: 0,
                    ..good.clone()
                },
            ),
            (
                "shred bucket",
                ErasureReceipt {
                    shred_bucket: 517 + 65536,
                    ..good.clone()
                },
            ),
            (
                "shred epoch destroyed",
                ErasureReceipt {
                    shred_epoch_destroyed: 4,
                    ..good.clone()
                },
            ),
            (
                "keys re-wrapped",
                ErasureReceipt {
                    keys_rewrapped: 0,
                    ..good.clone()
                },
            ),
        ];
        for (field, bad) in cases {
            assert_eq!(failure(&bad), ReceiptError::Mismatch(field), "{field}");
        }
    }

    #[test]
    fn error_texts() {
        let error = Error::Receipt(ReceiptError::Mismatch("region"));
        assert_eq!(error.kind(), "invalid_receipt");
        assert_eq!(
            error.to_string(),
            "erasure receipt does not verify: the receipt's region does not match its signed body"
        );
        assert_eq!(
            Error::Receipt(ReceiptError::BadSignature).to_string(),
            "erasure receipt does not verify: the signature does not match the body and public key"
        );
    }
}
