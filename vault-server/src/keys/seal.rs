//! What the keyring file's clear header says about how the keyring is
//! sealed and to which builds its unseal key may be released.
//!
//! A version 3 keyring file carries, after the custody parameters, an
//! extension of sections `u8 tag ‖ u32 len ‖ value`:
//!
//! | tag | section | value | count |
//! |---|---|---|---|
//! | 1 | PKCS#11 seal | `lp(token label) ‖ lp(token serial) ‖ lp(key label) ‖ lp(key id) ‖ lp(wrapped unseal key) ‖ recovery check (32 B)` | ≤ 1 (absent: Shamir) |
//! | 2 | approved build | a 48-byte measurement (SHA-384 / Nitro PCR0) | ≥ 0, ascending |
//!
//! (`lp` is a u32 big-endian length and the bytes.) The whole header is
//! in the AAD of the keyring's contents: a byte changed here makes the
//! keyring fail to open. It is readable while sealed, so a server knows
//! whether to ask its HSM and whether its own build may have the key.
//!
//! Under a PKCS#11 seal the unseal key is wrapped (AES-256-GCM, inside
//! the HSM) by a non-extractable key of the named token; the shares the
//! custodians hold are of a separate recovery key, which opens nothing:
//! M of them authorise a rekey or a move to another seal, checked against
//! `recovery check` = SHA-256(`vault/v1/recovery-check` ‖ recovery key).

use std::collections::BTreeSet;

use sha2::{Digest, Sha256};

use super::KeyringError;
use crate::crypto::{put_lp, Key256};

/// A build's measurement: SHA-384 (a Nitro enclave's PCR0, or the
/// server's own executable when self-reported).
pub type Measurement = [u8; 48];

/// At most this many approved builds in one keyring.
pub const MAX_APPROVED_BUILDS: usize = 64;

const TAG_PKCS11: u8 = 1;
const TAG_APPROVED_BUILD: u8 = 2;

/// The label under which a recovery key is hashed for its check.
const RECOVERY_CHECK: &[u8] = b"vault/v1/recovery-check";

/// The bytes of an unseal key wrapped by the HSM: 12-byte IV, 32 bytes,
/// 16-byte tag.
pub const HSM_WRAPPED_LEN: usize = 12 + 32 + 16;

/// How a keyring's unseal key is kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Seal {
    /// Split M of N among custodians; their shares open the keyring.
    #[default]
    Shamir,
    /// Wrapped by a key held in an HSM; the vault unseals itself at start.
    Pkcs11(HsmSeal),
}

impl Seal {
    /// `shamir` or `pkcs11`.
    pub fn name(&self) -> &'static str {
        match self {
            Seal::Shamir => "shamir",
            Seal::Pkcs11(_) => "pkcs11",
        }
    }
}

/// Which HSM key wraps the unseal key, and the wrapped bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct HsmSeal {
    /// The token's label (PKCS#11 `CK_TOKEN_INFO.label`, trimmed).
    pub token_label: String,
    /// The token's serial number (trimmed).
    pub token_serial: String,
    /// The wrapping key's `CKA_LABEL`.
    pub key_label: String,
    /// The wrapping key's `CKA_ID`.
    pub key_id: Vec<u8>,
    /// The unseal key, AES-256-GCM-wrapped inside the HSM
    /// ([`HSM_WRAPPED_LEN`] bytes).
    pub wrapped_key: Vec<u8>,
    /// What the recovery shares must combine to (see the module docs).
    pub recovery_check: [u8; 32],
}

impl std::fmt::Debug for HsmSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.identity())
    }
}

impl HsmSeal {
    /// The key's identity in words: token, serial, key label and id.
    pub fn identity(&self) -> String {
        format!(
            "token \"{}\" (serial {}), key \"{}\" (id {})",
            self.token_label,
            self.token_serial,
            self.key_label,
            hex::encode(&self.key_id)
        )
    }
}

/// The recovery check of a recovery key.
pub fn recovery_check(recovery_key: &Key256) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(RECOVERY_CHECK);
    h.update(recovery_key.expose_secret());
    h.finalize().into()
}

/// The header extension: seal and approved builds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SealHeader {
    /// How the unseal key is kept.
    pub seal: Seal,
    /// Builds whose evidence may have the unseal key released to them;
    /// empty: the release gate is off.
    pub approved_builds: BTreeSet<Measurement>,
}

impl SealHeader {
    /// Appends the extension's sections.
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        if let Seal::Pkcs11(hsm) = &self.seal {
            let mut v = Vec::new();
            put_lp(&mut v, hsm.token_label.as_bytes());
            put_lp(&mut v, hsm.token_serial.as_bytes());
            put_lp(&mut v, hsm.key_label.as_bytes());
            put_lp(&mut v, &hsm.key_id);
            put_lp(&mut v, &hsm.wrapped_key);
            v.extend_from_slice(&hsm.recovery_check);
            out.push(TAG_PKCS11);
            put_lp(out, &v);
        }
        for m in &self.approved_builds {
            out.push(TAG_APPROVED_BUILD);
            put_lp(out, m);
        }
    }

    /// Reads the extension's sections; malformed bytes are an error.
    pub(super) fn decode(mut bytes: &[u8]) -> Result<SealHeader, KeyringError> {
        use KeyringError::Malformed;
        let mut out = SealHeader::default();
        let mut last_build: Option<Measurement> = None;
        while !bytes.is_empty() {
            let (tag, value) = take_section(&mut bytes)?;
            match tag {
                TAG_PKCS11 => {
                    if out.seal != Seal::Shamir {
                        return Err(Malformed("repeated seal section"));
                    }
                    out.seal = Seal::Pkcs11(decode_hsm(value)?);
                }
                TAG_APPROVED_BUILD => {
                    let m: Measurement = value
                        .try_into()
                        .map_err(|_| Malformed("an approved build is not 48 bytes"))?;
                    if last_build.is_some_and(|l| l >= m) {
                        return Err(Malformed("approved builds out of order or repeated"));
                    }
                    last_build = Some(m);
                    out.approved_builds.insert(m);
                    if out.approved_builds.len() > MAX_APPROVED_BUILDS {
                        return Err(Malformed("too many approved builds"));
                    }
                }
                _ => return Err(Malformed("unknown header section")),
            }
        }
        Ok(out)
    }
}

fn take_u32(bytes: &mut &[u8]) -> Result<usize, KeyringError> {
    let (len, rest) = bytes
        .split_first_chunk::<4>()
        .ok_or(KeyringError::Malformed("truncated length"))?;
    *bytes = rest;
    Ok(u32::from_be_bytes(*len) as usize)
}

fn take_lp<'a>(bytes: &mut &'a [u8]) -> Result<&'a [u8], KeyringError> {
    let len = take_u32(bytes)?;
    if bytes.len() < len {
        return Err(KeyringError::Malformed("truncated field"));
    }
    let (value, rest) = bytes.split_at(len);
    *bytes = rest;
    Ok(value)
}

fn take_section<'a>(bytes: &mut &'a [u8]) -> Result<(u8, &'a [u8]), KeyringError> {
    let (&tag, rest) = bytes
        .split_first()
        .ok_or(KeyringError::Malformed("truncated section"))?;
    *bytes = rest;
    Ok((tag, take_lp(bytes)?))
}

impl HsmSeal {
    /// Whether every field is within what the header can hold: a token
    /// label of 1 to 32 bytes, a serial of 1 to 16, a key label of 1 to
    /// 128, a key id of 1 to 64, and the wrapped key's length. Checked
    /// before a seal is written, so no keyring is saved that would not
    /// read back.
    pub fn check(&self) -> Result<(), KeyringError> {
        use KeyringError::Malformed;
        let within = |len: usize, max: usize| (1..=max).contains(&len);
        if !within(self.token_label.len(), 32) {
            return Err(Malformed("bad token label"));
        }
        if !within(self.token_serial.len(), 16) {
            return Err(Malformed("bad token serial"));
        }
        if !within(self.key_label.len(), 128) {
            return Err(Malformed("bad key label"));
        }
        if !within(self.key_id.len(), 64) {
            return Err(Malformed("bad key id"));
        }
        if self.wrapped_key.len() != HSM_WRAPPED_LEN {
            return Err(Malformed("bad wrapped unseal key"));
        }
        Ok(())
    }
}

fn decode_hsm(mut v: &[u8]) -> Result<HsmSeal, KeyringError> {
    use KeyringError::Malformed;
    let text = |b: &[u8], what: &'static str| -> Result<String, KeyringError> {
        String::from_utf8(b.to_vec()).map_err(|_| Malformed(what))
    };
    let token_label = text(take_lp(&mut v)?, "bad token label")?;
    let token_serial = text(take_lp(&mut v)?, "bad token serial")?;
    let key_label = text(take_lp(&mut v)?, "bad key label")?;
    let key_id = take_lp(&mut v)?.to_vec();
    let wrapped_key = take_lp(&mut v)?.to_vec();
    let recovery_check: [u8; 32] = v.try_into().map_err(|_| Malformed("bad recovery check"))?;
    let seal = HsmSeal {
        token_label,
        token_serial,
        key_label,
        key_id,
        wrapped_key,
        recovery_check,
    };
    seal.check()?;
    Ok(seal)
}

/// A measurement from its hex form (96 digits).
pub fn parse_measurement(text: &str) -> Result<Measurement, String> {
    let bytes = hex::decode(text.trim()).map_err(|_| {
        "a measurement is 96 hexadecimal digits (SHA-384, e.g. a Nitro enclave's PCR0)".to_owned()
    })?;
    bytes.try_into().map_err(|b: Vec<u8>| {
        format!(
            "a measurement is 48 bytes (96 hexadecimal digits, SHA-384); this one is {}",
            b.len()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hsm() -> HsmSeal {
        HsmSeal {
            token_label: "vault-eu".into(),
            token_serial: "1a2b3c".into(),
            key_label: "vault-unseal".into(),
            key_id: vec![7; 16],
            wrapped_key: vec![9; HSM_WRAPPED_LEN],
            recovery_check: [3; 32],
        }
    }

    #[test]
    fn the_extension_round_trips_and_refuses_what_does_not_add_up() {
        let h = SealHeader {
            seal: Seal::Pkcs11(hsm()),
            approved_builds: [[1u8; 48], [2u8; 48]].into(),
        };
        let mut bytes = Vec::new();
        h.encode(&mut bytes);
        assert_eq!(SealHeader::decode(&bytes).unwrap(), h);
        assert_eq!(SealHeader::decode(&[]).unwrap(), SealHeader::default());
        // A truncation is an error, or (cut between sections) a header
        // with less in it; never a panic. (The file's header carries the
        // extension's length, so a cut file is refused there.)
        for n in 0..bytes.len() {
            assert!(
                SealHeader::decode(&bytes[..n]).map_or(true, |d| d != h),
                "prefix {n}"
            );
        }
        // Two seals, builds out of order, an unknown tag.
        let mut twice = bytes.clone();
        let mut seal_only = Vec::new();
        SealHeader {
            seal: Seal::Pkcs11(hsm()),
            approved_builds: BTreeSet::new(),
        }
        .encode(&mut seal_only);
        twice.extend_from_slice(&seal_only);
        assert!(SealHeader::decode(&twice).is_err());
        let mut swapped = Vec::new();
        for m in [[2u8; 48], [1u8; 48]] {
            swapped.push(TAG_APPROVED_BUILD);
            put_lp(&mut swapped, &m);
        }
        assert!(SealHeader::decode(&swapped).is_err());
        assert!(SealHeader::decode(&[9, 0, 0, 0, 0]).is_err());
        // A wrapped key of the wrong length.
        let mut bad = hsm();
        bad.wrapped_key.pop();
        let mut b = Vec::new();
        SealHeader {
            seal: Seal::Pkcs11(bad),
            approved_builds: BTreeSet::new(),
        }
        .encode(&mut b);
        assert!(SealHeader::decode(&b).is_err());
    }

    #[test]
    fn measurements_parse_from_96_hex_digits_only() {
        let m = parse_measurement(&"ab".repeat(48)).unwrap();
        assert_eq!(m, [0xab; 48]);
        assert!(parse_measurement("abc").unwrap_err().contains("96"));
        assert!(parse_measurement(&"ab".repeat(32))
            .unwrap_err()
            .contains("this one is 32"));
    }
}
