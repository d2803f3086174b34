//! The record tag: HMAC-SHA256 over a stored record's body, so the record
//! as a whole (its subject, key version and set of fields) cannot be edited
//! without detection, on top of each field's own AEAD tag.
//!
//! ```text
//! tag = HMAC-SHA256(record key, labels::RECORD ‖ lp(region) ‖ lp(collection)
//!                               ‖ lp(record id) ‖ lp(body))
//! ```
//! where the record key is `derive_record_key(subject key, region, version)`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{labels, CryptoError, Key256};

/// Where a record lives: the parts of its identity the tag binds.
#[derive(Debug, Clone, Copy)]
pub struct RecordContext<'a> {
    /// The vault's region.
    pub region: &'a str,
    /// The collection.
    pub collection: &'a str,
    /// The record id.
    pub record_id: &'a str,
}

fn mac(key: &Key256, ctx: &RecordContext<'_>, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length; 32 bytes is always accepted.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key.expose_secret())
        .expect("HMAC accepts any key length");
    m.update(labels::RECORD);
    // Each part length-prefixed (u32, big-endian), fed straight in: the same
    // bytes as `put_lp` would build, without a buffer on the hot path.
    for part in [
        ctx.region.as_bytes(),
        ctx.collection.as_bytes(),
        ctx.record_id.as_bytes(),
        body,
    ] {
        let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
        m.update(&len.to_be_bytes());
        m.update(part);
    }
    m
}

/// The tag of a record body.
pub fn record_tag(key: &Key256, ctx: &RecordContext<'_>, body: &[u8]) -> [u8; 32] {
    mac(key, ctx, body).finalize().into_bytes().into()
}

/// Checks a record tag in constant time.
pub fn verify_record_tag(
    key: &Key256,
    ctx: &RecordContext<'_>,
    body: &[u8],
    tag: &[u8],
) -> Result<(), CryptoError> {
    mac(key, ctx, body)
        .verify_slice(tag)
        .map_err(|_| CryptoError::Authentication)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CTX: RecordContext<'static> = RecordContext {
        region: "eu",
        collection: "users",
        record_id: "r1",
    };

    #[test]
    fn tag_is_hmac_over_the_length_prefixed_parts() {
        let key = Key256::random();
        let mut expected_input = labels::RECORD.to_vec();
        for part in [&b"eu"[..], b"users", b"r1", b"body"] {
            super::super::put_lp(&mut expected_input, part);
        }
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key.expose_secret()).unwrap();
        m.update(&expected_input);
        let expected: [u8; 32] = m.finalize().into_bytes().into();
        assert_eq!(record_tag(&key, &CTX, b"body"), expected);
    }

    #[test]
    fn tag_binds_key_context_and_body() {
        let key = Key256::random();
        let tag = record_tag(&key, &CTX, b"body");
        assert!(verify_record_tag(&key, &CTX, b"body", &tag).is_ok());
        let others = [
            RecordContext {
                region: "us",
                ..CTX
            },
            RecordContext {
                collection: "admins",
                ..CTX
            },
            RecordContext {
                record_id: "r2",
                ..CTX
            },
            RecordContext {
                collection: "user",
                record_id: "sr1",
                ..CTX
            },
        ];
        for other in &others {
            assert_eq!(
                verify_record_tag(&key, other, b"body", &tag),
                Err(CryptoError::Authentication)
            );
        }
        assert_eq!(
            verify_record_tag(&key, &CTX, b"bodx", &tag),
            Err(CryptoError::Authentication)
        );
        assert_eq!(
            verify_record_tag(&Key256::random(), &CTX, b"body", &tag),
            Err(CryptoError::Authentication)
        );
        assert_eq!(
            verify_record_tag(&key, &CTX, b"body", &tag[..31]),
            Err(CryptoError::Authentication)
        );
    }
}
