//! Secret key material.

use std::fmt;

use rand::RngCore;
use secrecy::{ExposeSecret, SecretBox};
use zeroize::Zeroize;

/// A 256-bit secret key. Its bytes live in a zeroizing box, never show in
/// `Debug`, and are reached only through [`Key256::expose_secret`], so every
/// use of key bytes can be found with grep.
pub struct Key256(SecretBox<[u8; 32]>);

impl Key256 {
    /// A fresh key from the operating system's CSPRNG.
    pub fn random() -> Self {
        Key256(SecretBox::init_with_mut(|k: &mut [u8; 32]| {
            rand::rngs::OsRng.fill_bytes(k)
        }))
    }

    /// Takes the key out of `bytes`, zeroizing the source.
    pub fn take(bytes: &mut [u8; 32]) -> Self {
        let key = Key256(SecretBox::init_with_mut(|k: &mut [u8; 32]| {
            k.copy_from_slice(bytes)
        }));
        bytes.zeroize();
        key
    }

    /// Copies the key out of a slice of exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; 32] = bytes.try_into().ok()?;
        Some(Key256(SecretBox::init_with_mut(|k: &mut [u8; 32]| {
            k.copy_from_slice(bytes)
        })))
    }

    /// The key bytes. Every caller is a place where key material is used.
    pub fn expose_secret(&self) -> &[u8; 32] {
        self.0.expose_secret()
    }
}

impl Clone for Key256 {
    fn clone(&self) -> Self {
        Key256(SecretBox::init_with_mut(|k: &mut [u8; 32]| {
            k.copy_from_slice(self.expose_secret())
        }))
    }
}

impl fmt::Debug for Key256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key256(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_bytes() {
        let mut raw = [0xAB; 32];
        let key = Key256::take(&mut raw);
        assert_eq!(raw, [0; 32], "source is zeroized");
        let shown = format!("{key:?}");
        assert!(!shown.to_lowercase().contains("ab"), "{shown}");
        assert_eq!(key.expose_secret(), &[0xAB; 32]);
    }

    #[test]
    fn random_keys_differ() {
        assert_ne!(
            Key256::random().expose_secret(),
            Key256::random().expose_secret()
        );
    }

    #[test]
    fn from_slice_checks_length() {
        assert!(Key256::from_slice(&[0; 31]).is_none());
        assert!(Key256::from_slice(&[0; 33]).is_none());
        assert!(Key256::from_slice(&[0; 32]).is_some());
    }
}
