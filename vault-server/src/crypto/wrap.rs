//! AES-256-GCM for key material: wrapped subject keys and the keyring file.
//!
//! ```text
//!  0                     12                  len-16      len
//!  +---------------------+-------------------+-----------+
//!  | nonce (12 random B) | ciphertext        | tag (16 B)|
//!  +---------------------+-------------------+-----------+
//! ```
//! The caller frames this with its own version bytes and binds its context
//! through the AAD.

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use rand::RngCore;
use zeroize::Zeroizing;

use super::{CryptoError, Key256};

/// Bytes a wrap adds to its plaintext: nonce and tag.
pub const WRAP_OVERHEAD: usize = 12 + 16;

/// AES-256-GCM under one wrapping key, with its key schedule built once:
/// for many wraps under the same key (the re-wrap job). `Aes256Gcm` is built
/// with the `zeroize` feature, so the schedule is wiped on drop.
pub struct WrapCipher(Aes256Gcm);

impl std::fmt::Debug for WrapCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WrapCipher(<redacted>)")
    }
}

impl WrapCipher {
    /// The cipher of `key`.
    pub fn new(key: &Key256) -> Self {
        WrapCipher(Aes256Gcm::new(key.expose_secret().into()))
    }

    /// Encrypts `plaintext`, bound to `aad`, with a fresh random nonce.
    ///
    /// The nonce comes from the operating system's generator. Random
    /// 96-bit nonces are bounded at 2^32 encryptions per key (NIST SP
    /// 800-38D): the engine counts wraps per root key version and asks for
    /// a rotation before that.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        self.seal_with_nonce(&nonce, aad, plaintext)
    }

    fn seal_with_nonce(&self, nonce: &[u8; 12], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plaintext.len() + WRAP_OVERHEAD);
        out.extend_from_slice(nonce);
        out.extend_from_slice(plaintext);
        // AES-GCM in place fails only for plaintexts over 64 GiB; key material is tiny.
        let tag = self
            .0
            .encrypt_in_place_detached(Nonce::from_slice(nonce), aad, &mut out[12..])
            .expect("plaintext within AES-GCM limits");
        out.extend_from_slice(&tag);
        out
    }

    /// Decrypts what [`WrapCipher::seal`] made.
    pub fn open(&self, aad: &[u8], wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if wrapped.len() < WRAP_OVERHEAD {
            return Err(CryptoError::Malformed);
        }
        let (nonce, rest) = wrapped.split_at(12);
        let (body, tag) = rest.split_at(rest.len() - 16);
        let mut plaintext = Zeroizing::new(body.to_vec());
        self.0
            .decrypt_in_place_detached(
                Nonce::from_slice(nonce),
                aad,
                plaintext.as_mut_slice(),
                Tag::from_slice(tag),
            )
            .map_err(|_| CryptoError::Authentication)?;
        Ok(plaintext)
    }
}

/// Encrypts `plaintext` under `key`, bound to `aad`.
pub fn seal_wrapped(key: &Key256, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    WrapCipher::new(key).seal(aad, plaintext)
}

/// [`seal_wrapped`] with a given nonce: for known-answer tests only; a
/// nonce must never repeat under one key.
#[cfg(test)]
pub(crate) fn seal_with_nonce(
    key: &Key256,
    nonce: &[u8; 12],
    aad: &[u8],
    plaintext: &[u8],
) -> Vec<u8> {
    WrapCipher::new(key).seal_with_nonce(nonce, aad, plaintext)
}

/// Decrypts what [`seal_wrapped`] made.
pub fn open_wrapped(
    key: &Key256,
    aad: &[u8],
    wrapped: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    WrapCipher::new(key).open(aad, wrapped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let key = Key256::random();
        let w = seal_wrapped(&key, b"ctx", b"secret key bytes");
        assert_eq!(
            open_wrapped(&key, b"ctx", &w).unwrap().as_slice(),
            b"secret key bytes"
        );
        assert_eq!(
            open_wrapped(&key, b"other", &w),
            Err(CryptoError::Authentication)
        );
        assert_eq!(
            open_wrapped(&Key256::random(), b"ctx", &w),
            Err(CryptoError::Authentication)
        );
        for i in 0..w.len() {
            let mut t = w.clone();
            t[i] ^= 1;
            assert_eq!(
                open_wrapped(&key, b"ctx", &t),
                Err(CryptoError::Authentication)
            );
        }
        assert_eq!(
            open_wrapped(&key, b"ctx", &w[..27]),
            Err(CryptoError::Malformed)
        );
    }
}
