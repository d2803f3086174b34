//! Signed checkpoints: a C2SP tlog-checkpoint body signed as a C2SP signed
//! note with the vault's Ed25519 audit key.
//!
//! ```text
//! <origin>\n
//! <tree size>\n
//! <base64 root hash>\n
//! \n
//! — <origin> <base64(key id (4 B) ‖ Ed25519 signature (64 B))>\n
//! ```
//! The signature covers the body (the first three lines, with their
//! newlines). Key id = SHA-256(origin ‖ "\n" ‖ 0x01 ‖ public key)[..4]. The
//! verifier key auditors pin is `<origin>+<hex key id>+<base64(0x01 ‖ public key)>`.

use base64::Engine as _;
use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest, Sha256};

use super::merkle::Hash;

const ALG_ED25519: u8 = 0x01;

fn key_id(origin: &str, public: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(origin.as_bytes());
    h.update(b"\n");
    h.update([ALG_ED25519]);
    h.update(public);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// The checkpoint body.
pub fn body(origin: &str, size: u64, root: &Hash) -> String {
    format!(
        "{origin}\n{size}\n{}\n",
        base64::engine::general_purpose::STANDARD.encode(root)
    )
}

/// A signed checkpoint of a tree of `size` leaves with head `root`.
pub fn sign(origin: &str, size: u64, root: &Hash, key: &SigningKey) -> String {
    let body = body(origin, size, root);
    let public = key.verifying_key().to_bytes();
    let sig = key.sign(body.as_bytes()).to_bytes();
    let mut blob = Vec::with_capacity(68);
    blob.extend_from_slice(&key_id(origin, &public));
    blob.extend_from_slice(&sig);
    format!(
        "{body}\n\u{2014} {origin} {}\n",
        base64::engine::general_purpose::STANDARD.encode(blob)
    )
}

/// The verifier key of `key` under `origin`, as auditors pin it.
pub fn verifier_key(origin: &str, key: &SigningKey) -> String {
    let public = key.verifying_key().to_bytes();
    let mut blob = vec![ALG_ED25519];
    blob.extend_from_slice(&public);
    format!(
        "{origin}+{}+{}",
        hex::encode(key_id(origin, &public)),
        base64::engine::general_purpose::STANDARD.encode(blob)
    )
}

/// The tree size and root a stored checkpoint states, if it parses.
pub fn parse(note: &[u8]) -> Option<(u64, Hash)> {
    let text = std::str::from_utf8(note).ok()?;
    let mut lines = text.lines();
    let _origin = lines.next()?;
    let size = lines.next()?.parse().ok()?;
    let root = base64::engine::general_purpose::STANDARD
        .decode(lines.next()?)
        .ok()?
        .try_into()
        .ok()?;
    Some((size, root))
}

/// The tree size a checkpoint states, if it parses (tests read it).
#[cfg(test)]
pub fn size_of(note: &str) -> Option<u64> {
    note.lines().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signature, Verifier};

    use super::*;

    #[test]
    fn note_shape_and_signature() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let note = sign("vault.eu/test", 5, &[9u8; 32], &key);
        let (body_part, sig_part) = note.split_once("\n\n").unwrap();
        assert_eq!(
            format!("{body_part}\n"),
            body("vault.eu/test", 5, &[9u8; 32])
        );
        assert_eq!(size_of(&note), Some(5));
        assert_eq!(parse(note.as_bytes()), Some((5, [9u8; 32])));
        assert_eq!(parse(b"x\n5\n!!\n"), None);
        let line = sig_part
            .strip_prefix("\u{2014} vault.eu/test ")
            .unwrap()
            .trim_end();
        let blob = base64::engine::general_purpose::STANDARD
            .decode(line)
            .unwrap();
        let public = key.verifying_key();
        assert_eq!(blob[..4], key_id("vault.eu/test", &public.to_bytes()));
        let sig = Signature::from_slice(&blob[4..]).unwrap();
        public
            .verify(format!("{body_part}\n").as_bytes(), &sig)
            .unwrap();
        let vkey = verifier_key("vault.eu/test", &key);
        assert!(vkey.starts_with("vault.eu/test+"));
        assert_eq!(vkey.split('+').count(), 3);
    }
}
