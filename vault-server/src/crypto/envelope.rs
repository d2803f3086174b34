//! The field ciphertext envelope, version 1.
//!
//! ```text
//!  0        1                 5                     17                  len-16      len
//!  +--------+-----------------+---------------------+-------------------+-----------+
//!  | ver=1  | key version     | nonce               | ciphertext        | tag       |
//!  | u8     | u32 big-endian  | 12 random bytes     | len(plaintext)    | 16 bytes  |
//!  +--------+-----------------+---------------------+-------------------+-----------+
//! ```
//!
//! AES-256-GCM under the field key (see [`super::derive_field_key`]), with
//!
//! ```text
//! AAD = lp([ver]) ‖ lp(region) ‖ lp(collection) ‖ lp(record id) ‖ lp(field) ‖ lp(u32be(key version))
//! ```
//!
//! so a ciphertext moved to another record, field, collection or region, or
//! relabelled with another key version, fails to decrypt. The version byte
//! is checked first; unknown versions are refused.

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use rand::RngCore;
use zeroize::Zeroizing;

use super::{put_lp, CryptoError};

/// The only envelope version this build writes and reads.
pub const ENVELOPE_V1: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + 4 + NONCE_LEN;

/// What a field's ciphertext is bound to.
#[derive(Debug, Clone, Copy)]
pub struct FieldAad<'a> {
    /// The vault's region.
    pub region: &'a str,
    /// The collection.
    pub collection: &'a str,
    /// The record id.
    pub record_id: &'a str,
    /// The field name.
    pub field: &'a str,
}

/// Largest AAD built on the stack: names, ids and regions are bounded by
/// request validation (region 16, names 64, record id 128 bytes) to 301 bytes.
const STACK_AAD: usize = 320;

impl FieldAad<'_> {
    /// Calls `f` with the encoded AAD, built on the stack when it fits (it
    /// always does for validated requests), so the hot path does not allocate.
    fn with_encoded<R>(&self, version: u8, key_version: u32, f: impl FnOnce(&[u8]) -> R) -> R {
        let parts: [&[u8]; 6] = [
            &[version],
            self.region.as_bytes(),
            self.collection.as_bytes(),
            self.record_id.as_bytes(),
            self.field.as_bytes(),
            &key_version.to_be_bytes(),
        ];
        let len: usize = parts.iter().map(|p| 4 + p.len()).sum();
        if len <= STACK_AAD {
            let mut buf = [0u8; STACK_AAD];
            let mut at = 0;
            for p in parts {
                // Each part is at most STACK_AAD bytes here, so it fits a u32.
                buf[at..at + 4].copy_from_slice(&(p.len() as u32).to_be_bytes());
                buf[at + 4..at + 4 + p.len()].copy_from_slice(p);
                at += 4 + p.len();
            }
            f(&buf[..at])
        } else {
            let mut aad = Vec::with_capacity(len);
            for p in parts {
                put_lp(&mut aad, p);
            }
            f(&aad)
        }
    }
}

/// The clear part of an envelope: enough to pick the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvelopeHeader {
    /// The subject-key version the field key was derived from.
    pub key_version: u32,
}

impl EnvelopeHeader {
    /// Reads the header, refusing unknown versions and impossible lengths.
    pub fn parse(envelope: &[u8]) -> Result<Self, CryptoError> {
        let version = *envelope.first().ok_or(CryptoError::Malformed)?;
        if version != ENVELOPE_V1 {
            return Err(CryptoError::UnknownVersion);
        }
        if envelope.len() < HEADER_LEN + TAG_LEN {
            return Err(CryptoError::Malformed);
        }
        let mut kv = [0u8; 4];
        kv.copy_from_slice(&envelope[1..5]);
        Ok(EnvelopeHeader {
            key_version: u32::from_be_bytes(kv),
        })
    }
}

/// Encrypts one field value under `cipher` (the field key) into a v1 envelope.
pub fn seal_field(
    cipher: &Aes256Gcm,
    key_version: u32,
    aad: &FieldAad<'_>,
    plaintext: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
    out.push(ENVELOPE_V1);
    out.extend_from_slice(&key_version.to_be_bytes());
    let mut nonce = [0u8; NONCE_LEN];
    // From the operating system's generator. NIST SP 800-38D bounds random
    // 96-bit nonces at 2^32 encryptions per key; a field key is one
    // subject key version's key for one field of one collection, so it
    // seals one value per write of that field for that person, far below.
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    // AES-GCM in place fails only for plaintexts over 64 GiB, far beyond the record limit.
    let tag = aad
        .with_encoded(ENVELOPE_V1, key_version, |aad| {
            cipher.encrypt_in_place_detached(Nonce::from_slice(&nonce), aad, &mut out[HEADER_LEN..])
        })
        .expect("plaintext within AES-GCM limits");
    out.extend_from_slice(&tag);
    out
}

/// Decrypts a v1 envelope. Any change to any byte, or to any part of the
/// AAD, gives [`CryptoError::Authentication`].
pub fn open_field(
    cipher: &Aes256Gcm,
    aad: &FieldAad<'_>,
    envelope: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let header = EnvelopeHeader::parse(envelope)?;
    aad.with_encoded(ENVELOPE_V1, header.key_version, |aad| {
        open_with_encoded_aad(cipher, aad, envelope)
    })
}

/// [`open_field`] once its AAD is encoded: the header check, the split
/// into nonce, ciphertext and tag, and the AEAD open. Published vectors
/// (whose AAD is not one a [`FieldAad`] encodes to) run through here.
pub(super) fn open_with_encoded_aad(
    cipher: &Aes256Gcm,
    aad: &[u8],
    envelope: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    EnvelopeHeader::parse(envelope)?;
    let body = &envelope[HEADER_LEN..envelope.len() - TAG_LEN];
    let tag = Tag::from_slice(&envelope[envelope.len() - TAG_LEN..]);
    let nonce = Nonce::from_slice(&envelope[5..HEADER_LEN]);
    let mut plaintext = Zeroizing::new(body.to_vec());
    cipher
        .decrypt_in_place_detached(nonce, aad, plaintext.as_mut_slice(), tag)
        .map_err(|_| CryptoError::Authentication)?;
    Ok(plaintext)
}

/// The AAD bytes [`open_field`] and [`seal_field`] use for `aad` and
/// `key_version`, for the published vectors' cross-check.
#[cfg(test)]
pub(super) fn encoded_aad(aad: &FieldAad<'_>, key_version: u32) -> Vec<u8> {
    aad.with_encoded(ENVELOPE_V1, key_version, <[u8]>::to_vec)
}

#[cfg(test)]
mod tests {
    use aes_gcm::KeyInit;
    use proptest::prelude::*;

    use super::*;

    fn cipher(byte: u8) -> Aes256Gcm {
        Aes256Gcm::new_from_slice(&[byte; 32]).unwrap()
    }

    const AAD: FieldAad<'static> = FieldAad {
        region: "eu",
        collection: "users",
        record_id: "r1",
        field: "email",
    };

    #[test]
    fn round_trip_and_layout() {
        let env = seal_field(&cipher(1), 7, &AAD, b"ada@example.eu");
        assert_eq!(env.len(), HEADER_LEN + 14 + TAG_LEN);
        assert_eq!(env[0], ENVELOPE_V1);
        assert_eq!(&env[1..5], &7u32.to_be_bytes());
        assert_eq!(EnvelopeHeader::parse(&env).unwrap().key_version, 7);
        assert_eq!(
            open_field(&cipher(1), &AAD, &env).unwrap().as_slice(),
            b"ada@example.eu"
        );
        // Fresh nonce each time.
        assert_ne!(
            seal_field(&cipher(1), 7, &AAD, b"x"),
            seal_field(&cipher(1), 7, &AAD, b"x")
        );
    }

    #[test]
    fn long_aad_takes_the_heap_path_and_still_binds() {
        let long = "x".repeat(400);
        let aad = FieldAad {
            record_id: &long,
            ..AAD
        };
        let env = seal_field(&cipher(1), 1, &aad, b"v");
        assert_eq!(open_field(&cipher(1), &aad, &env).unwrap().as_slice(), b"v");
        let shorter = "x".repeat(399);
        let other = FieldAad {
            record_id: &shorter,
            ..AAD
        };
        assert_eq!(
            open_field(&cipher(1), &other, &env),
            Err(CryptoError::Authentication)
        );
    }

    #[test]
    fn empty_plaintext_round_trips() {
        let env = seal_field(&cipher(1), 1, &AAD, b"");
        assert_eq!(open_field(&cipher(1), &AAD, &env).unwrap().as_slice(), b"");
    }

    #[test]
    fn tamper_version() {
        let mut env = seal_field(&cipher(1), 1, &AAD, b"v");
        env[0] = 2;
        assert_eq!(
            open_field(&cipher(1), &AAD, &env),
            Err(CryptoError::UnknownVersion)
        );
        env[0] = 0;
        assert_eq!(
            open_field(&cipher(1), &AAD, &env),
            Err(CryptoError::UnknownVersion)
        );
    }

    #[test]
    fn tamper_key_version() {
        let mut env = seal_field(&cipher(1), 1, &AAD, b"v");
        env[4] ^= 1;
        assert_eq!(
            open_field(&cipher(1), &AAD, &env),
            Err(CryptoError::Authentication)
        );
    }

    #[test]
    fn tamper_nonce_tag_and_body() {
        let env = seal_field(&cipher(1), 1, &AAD, b"value");
        for i in 5..env.len() {
            let mut t = env.clone();
            t[i] ^= 0x80;
            assert_eq!(
                open_field(&cipher(1), &AAD, &t),
                Err(CryptoError::Authentication),
                "byte {i}"
            );
        }
    }

    #[test]
    fn truncated_or_empty_is_malformed() {
        let env = seal_field(&cipher(1), 1, &AAD, b"");
        assert_eq!(
            open_field(&cipher(1), &AAD, &[]),
            Err(CryptoError::Malformed)
        );
        assert_eq!(
            open_field(&cipher(1), &AAD, &env[..env.len() - 1]),
            Err(CryptoError::Malformed)
        );
        assert_eq!(
            open_field(&cipher(1), &AAD, &env[..HEADER_LEN]),
            Err(CryptoError::Malformed)
        );
    }

    #[test]
    fn wrong_key_fails() {
        let env = seal_field(&cipher(1), 1, &AAD, b"v");
        assert_eq!(
            open_field(&cipher(2), &AAD, &env),
            Err(CryptoError::Authentication)
        );
    }

    #[test]
    fn every_aad_part_binds() {
        let env = seal_field(&cipher(1), 1, &AAD, b"v");
        let others = [
            FieldAad {
                region: "us",
                ..AAD
            },
            FieldAad {
                collection: "admins",
                ..AAD
            },
            FieldAad {
                record_id: "r2",
                ..AAD
            },
            FieldAad {
                field: "name",
                ..AAD
            },
            // Length prefixes: moving bytes between parts is a different AAD.
            FieldAad {
                collection: "user",
                record_id: "sr1",
                ..AAD
            },
        ];
        for other in &others {
            assert_eq!(
                open_field(&cipher(1), other, &env),
                Err(CryptoError::Authentication),
                "{other:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn prop_round_trip(pt in proptest::collection::vec(any::<u8>(), 0..512), kv in any::<u32>()) {
            let env = seal_field(&cipher(3), kv, &AAD, &pt);
            let opened = open_field(&cipher(3), &AAD, &env).unwrap();
            prop_assert_eq!(opened.as_slice(), pt.as_slice());
        }

        #[test]
        fn prop_any_bit_flip_is_refused(pt in proptest::collection::vec(any::<u8>(), 0..64), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let env = seal_field(&cipher(3), 1, &AAD, &pt);
            let mut t = env.clone();
            let i = pos.index(t.len());
            t[i] ^= 1 << bit;
            prop_assert!(open_field(&cipher(3), &AAD, &t).is_err());
        }

        #[test]
        fn prop_any_aad_change_is_refused(region in "[a-z]{1,4}", collection in "[a-z]{1,8}", id in "[a-z0-9]{1,8}", field in "[a-z]{1,8}") {
            let env = seal_field(&cipher(3), 1, &AAD, b"secret");
            let other = FieldAad { region: &region, collection: &collection, record_id: &id, field: &field };
            prop_assume!(region != AAD.region || collection != AAD.collection || id != AAD.record_id || field != AAD.field);
            prop_assert_eq!(open_field(&cipher(3), &other, &env), Err(CryptoError::Authentication));
        }

        #[test]
        fn prop_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = open_field(&cipher(3), &AAD, &bytes);
        }

        /// Each named part of the envelope, replaced by other bytes of the
        /// same length, is refused: version, key version, nonce,
        /// ciphertext, tag.
        #[test]
        fn prop_each_part_replaced_is_refused(
            pt in proptest::collection::vec(any::<u8>(), 1..64),
            part in 0usize..5,
            fill in proptest::collection::vec(any::<u8>(), 64),
        ) {
            let env = seal_field(&cipher(3), 9, &AAD, &pt);
            let (from, to) = match part {
                0 => (0, 1),
                1 => (1, 5),
                2 => (5, HEADER_LEN),
                3 => (HEADER_LEN, env.len() - TAG_LEN),
                _ => (env.len() - TAG_LEN, env.len()),
            };
            let mut t = env.clone();
            t[from..to].copy_from_slice(&fill[..to - from]);
            prop_assume!(t != env);
            prop_assert!(open_field(&cipher(3), &AAD, &t).is_err());
        }

        /// Each AAD part (region, collection, record id, field) changed
        /// alone is refused. (The key version, also in the AAD, is
        /// covered by `prop_each_part_replaced_is_refused`.)
        #[test]
        fn prop_each_aad_part_alone_is_refused(part in 0usize..4, other in "[a-z0-9]{1,12}") {
            let env = seal_field(&cipher(3), 1, &AAD, b"secret");
            let mut aad: FieldAad<'_> = AAD;
            let slot = match part {
                0 => &mut aad.region,
                1 => &mut aad.collection,
                2 => &mut aad.record_id,
                _ => &mut aad.field,
            };
            prop_assume!(*slot != other.as_str());
            *slot = &other;
            prop_assert_eq!(open_field(&cipher(3), &aad, &env), Err(CryptoError::Authentication));
        }

        /// Cut short or extended, an envelope is refused; so is one made of
        /// the header of one envelope and the body of another.
        #[test]
        fn prop_truncated_extended_or_spliced_is_refused(
            a in proptest::collection::vec(any::<u8>(), 0..64),
            b in proptest::collection::vec(any::<u8>(), 0..64),
            cut in any::<prop::sample::Index>(),
            extra in proptest::collection::vec(any::<u8>(), 1..16),
        ) {
            let ea = seal_field(&cipher(3), 1, &AAD, &a);
            let eb = seal_field(&cipher(3), 1, &AAD, &b);
            let short = &ea[..cut.index(ea.len())];
            prop_assert!(open_field(&cipher(3), &AAD, short).is_err());
            let mut long = ea.clone();
            long.extend_from_slice(&extra);
            prop_assert!(open_field(&cipher(3), &AAD, &long).is_err());
            let mut spliced = ea[..HEADER_LEN].to_vec();
            spliced.extend_from_slice(&eb[HEADER_LEN..]);
            prop_assert!(open_field(&cipher(3), &AAD, &spliced).is_err());
        }

        /// Under another key, nothing opens.
        #[test]
        fn prop_another_key_is_refused(pt in proptest::collection::vec(any::<u8>(), 0..64), k in 4u8..=255) {
            let env = seal_field(&cipher(3), 1, &AAD, &pt);
            prop_assert_eq!(open_field(&cipher(k), &AAD, &env), Err(CryptoError::Authentication));
        }
    }
}
