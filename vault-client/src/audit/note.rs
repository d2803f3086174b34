//! C2SP signed notes (Ed25519 signatures only) and the tlog-checkpoint
//! body they carry.
//!
//! A signed note is a text, a blank line, and signature lines:
//!
//! ```text
//! vault.example/eu/audit          <- the checkpoint body: origin,
//! 1234                               tree size (decimal),
//! 2mbCkQe…=                          base64 of the 32-byte root hash
//!
//! — vault-eu 3q2+7wAAAAB…           <- U+2014, space, key name, space,
//!                                      base64(key id ‖ Ed25519 signature)
//! ```
//!
//! The signature is over the text up to and including its final newline.
//! A verifier key is `<name>+<key id, 8 hex digits>+<base64(0x01 ‖ 32-byte
//! public key)>`, its key id the first four bytes of SHA-256(name ‖ "\n" ‖
//! 0x01 ‖ public key).

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest as _, Sha256};

use super::merkle::Hash;

/// The algorithm byte of an Ed25519 key in a signed-note key.
const ALG_ED25519: u8 = 0x01;

/// What starts a signature line: an em dash and a space.
const SIGNATURE_PREFIX: &str = "\u{2014} ";

/// The most signature lines a note may have (as the C2SP reference
/// implementation allows).
const MAX_SIGNATURES: usize = 100;

/// The key id of an Ed25519 signed-note key: the first four bytes of
/// SHA-256(name ‖ "\n" ‖ 0x01 ‖ public key).
pub fn key_id(name: &str, public_key: &[u8; 32]) -> [u8; 4] {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update(b"\n");
    hasher.update([ALG_ED25519]);
    hasher.update(public_key);
    let digest = hasher.finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

/// Whether `name` can name a signed-note key: not empty, and no Unicode
/// space, `+` or control character.
pub(super) fn is_valid_key_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| c == '+' || c.is_whitespace() || c.is_control())
}

/// A C2SP signed-note verifier key for Ed25519: the key that must have
/// signed the checkpoints.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifierKey {
    name: String,
    id: [u8; 4],
    key: VerifyingKey,
}

impl fmt::Debug for VerifierKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifierKey")
            .field("name", &self.name)
            .field("id", &hex::encode(self.id))
            .finish_non_exhaustive()
    }
}

/// Why a verifier key does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a signed-note verifier key (name+hex id+base64 key): {0}")]
pub struct KeyError(pub(super) String);

/// Checks a key's name and its Ed25519 public key (valid, not weak).
pub(super) fn checked_key(name: &str, public_key: &[u8; 32]) -> Result<VerifyingKey, KeyError> {
    if !is_valid_key_name(name) {
        return Err(KeyError(
            "the key name must be non-empty, without spaces or `+`".into(),
        ));
    }
    let key = VerifyingKey::from_bytes(public_key)
        .map_err(|_| KeyError("the public key is not a valid Ed25519 key".into()))?;
    if key.is_weak() {
        return Err(KeyError("the public key is a weak Ed25519 key".into()));
    }
    Ok(key)
}

impl VerifierKey {
    /// The verifier key of an Ed25519 public key under `name`.
    pub fn new(name: &str, public_key: &[u8; 32]) -> Result<Self, KeyError> {
        let key = checked_key(name, public_key)?;
        Ok(Self {
            name: name.to_owned(),
            id: key_id(name, public_key),
            key,
        })
    }

    /// The key's name, as signature lines give it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key id (the first four bytes of the key hash).
    pub fn id(&self) -> [u8; 4] {
        self.id
    }

    /// The Ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// Whether `signature` (64 bytes) is this key's over `message`
    /// (`verify_strict`: no malleable signatures, no small-order points).
    fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        Signature::from_slice(signature)
            .is_ok_and(|signature| self.key.verify_strict(message, &signature).is_ok())
    }
}

/// `<name>+<8 hex digits>+<base64(0x01 ‖ key)>`.
impl fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut encoded = vec![ALG_ED25519];
        encoded.extend_from_slice(self.key.as_bytes());
        write!(
            f,
            "{}+{}+{}",
            self.name,
            hex::encode(self.id),
            BASE64.encode(encoded)
        )
    }
}

/// Splits `<name>+<8 hex digits>+<base64(alg ‖ 32-byte key)>` (surrounding
/// whitespace ignored) into name, key id and public key, checking the
/// algorithm byte is `alg` (`what` names it in errors).
pub(super) fn split_vkey(
    text: &str,
    alg: u8,
    what: &str,
) -> Result<(String, [u8; 4], [u8; 32]), KeyError> {
    let text = text.trim();
    let mut parts = text.splitn(3, '+');
    let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(KeyError("expected three parts separated by `+`".into()));
    };
    if id.len() != 8 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(KeyError("the key id is not 8 hex digits".into()));
    }
    let id: [u8; 4] = hex::decode(id)
        .ok()
        .and_then(|id| id.try_into().ok())
        .ok_or_else(|| KeyError("the key id is not 8 hex digits".into()))?;
    let key = BASE64
        .decode(key)
        .map_err(|_| KeyError("the key is not standard base64".into()))?;
    match key.split_first() {
        Some((&first, public_key)) if first == alg => {
            let public_key: [u8; 32] = public_key
                .try_into()
                .map_err(|_| KeyError("the Ed25519 key is not 32 bytes".into()))?;
            Ok((name.to_owned(), id, public_key))
        }
        _ => Err(KeyError(format!("not {what} (algorithm byte 0x{alg:02x})"))),
    }
}

/// Parses `<name>+<8 hex digits>+<base64(0x01 ‖ 32-byte key)>`
/// (surrounding whitespace ignored), and checks that the key id is the
/// key's.
impl FromStr for VerifierKey {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, KeyError> {
        let (name, id, public_key) = split_vkey(text, ALG_ED25519, "an Ed25519 key")?;
        let verifier = Self::new(&name, &public_key)?;
        if verifier.id != id {
            return Err(KeyError(format!(
                "the key id {} is not that of the key (it is {})",
                hex::encode(id),
                hex::encode(verifier.id)
            )));
        }
        Ok(verifier)
    }
}

/// A checkpoint: the signed state of the log at one size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's origin line (its name).
    pub origin: String,
    /// The number of leaves.
    pub size: u64,
    /// The RFC 6962 root of the first `size` leaves.
    pub root: Hash,
}

/// Why a checkpoint note is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoteError {
    /// Not a signed note: not UTF-8, no blank line before the signatures,
    /// a malformed signature line, …
    #[error("not a signed note: {0}")]
    Malformed(&'static str),
    /// No signature line by the verifier key (name and key id).
    #[error("no signature by key {0}")]
    NotSigned(String),
    /// A signature line by the verifier key that does not verify.
    #[error("the signature by key {0} does not verify")]
    BadSignature(String),
    /// Signed, but the text is not a tlog checkpoint.
    #[error("not a checkpoint: {0}")]
    NotACheckpoint(&'static str),
}

/// A signed note split into its text and signatures, not yet verified.
#[derive(Debug)]
pub(super) struct Note<'a> {
    /// The signed text, with its final newline.
    pub(super) text: &'a str,
    /// (key name, key id ‖ signature bytes) of each signature line.
    pub(super) signatures: Vec<(&'a str, Vec<u8>)>,
}

impl<'a> Note<'a> {
    pub(super) fn parse(note: &'a [u8]) -> Result<Self, NoteError> {
        let note = std::str::from_utf8(note).map_err(|_| NoteError::Malformed("not UTF-8"))?;
        if note.chars().any(|c| c.is_ascii_control() && c != '\n') {
            return Err(NoteError::Malformed("a control character"));
        }
        // The signatures follow the last blank line.
        let split = note
            .rfind("\n\n")
            .ok_or(NoteError::Malformed("no blank line before the signatures"))?;
        let (text, signatures) = (&note[..=split], &note[split + 2..]);
        if signatures.is_empty() {
            return Err(NoteError::Malformed("no signature line"));
        }
        let Some(signatures) = signatures.strip_suffix('\n') else {
            return Err(NoteError::Malformed("the last line has no newline"));
        };
        let mut parsed = Vec::new();
        for line in signatures.split('\n') {
            if parsed.len() == MAX_SIGNATURES {
                return Err(NoteError::Malformed("too many signature lines"));
            }
            let rest = line
                .strip_prefix(SIGNATURE_PREFIX)
                .ok_or(NoteError::Malformed("a signature line without `— `"))?;
            let (name, signature) = rest
                .split_once(' ')
                .ok_or(NoteError::Malformed("a signature line without a signature"))?;
            if !is_valid_key_name(name) {
                return Err(NoteError::Malformed("a signature line with a bad key name"));
            }
            let signature = BASE64
                .decode(signature)
                .map_err(|_| NoteError::Malformed("a signature that is not base64"))?;
            if signature.len() < 5 {
                return Err(NoteError::Malformed("a signature shorter than 5 bytes"));
            }
            parsed.push((name, signature));
        }
        Ok(Self {
            text,
            signatures: parsed,
        })
    }

    /// The text, if one of the signatures is `key`'s and every signature
    /// line of `key` (name and key id) verifies; other keys' lines are
    /// ignored.
    fn verify(&self, key: &VerifierKey) -> Result<&'a str, NoteError> {
        let mut signed = false;
        for (name, signature) in &self.signatures {
            if *name != key.name || signature[..4] != key.id {
                continue;
            }
            if !key.verifies(self.text.as_bytes(), &signature[4..]) {
                return Err(NoteError::BadSignature(key.name.clone()));
            }
            signed = true;
        }
        if signed {
            Ok(self.text)
        } else {
            Err(NoteError::NotSigned(key.name.clone()))
        }
    }
}

/// The first three lines of a checkpoint body (`origin`, size, base64
/// root), read without verifying anything: extension lines may follow.
fn parse_body(text: &str) -> Result<Checkpoint, NoteError> {
    let mut lines = text.split('\n');
    let origin = lines.next().unwrap_or_default();
    if origin.is_empty() {
        return Err(NoteError::NotACheckpoint("the origin line is empty"));
    }
    let size = lines
        .next()
        .filter(|s| {
            !s.is_empty()
                && s.bytes().all(|b| b.is_ascii_digit())
                && (*s == "0" || !s.starts_with('0'))
        })
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or(NoteError::NotACheckpoint(
            "the second line is not a tree size",
        ))?;
    let root = lines
        .next()
        .and_then(|r| BASE64.decode(r).ok())
        .and_then(|r| Hash::try_from(r).ok())
        .ok_or(NoteError::NotACheckpoint(
            "the third line is not the base64 of a 32-byte root",
        ))?;
    // The text ends with a newline, so split's last piece is empty.
    if lines.next().is_none() {
        return Err(NoteError::NotACheckpoint("the body is truncated"));
    }
    Ok(Checkpoint {
        origin: origin.to_owned(),
        size,
        root,
    })
}

/// The text of a signed note that carries a valid signature by `key`
/// (lines of other keys are ignored; a line of `key` that does not verify
/// refuses the note), with its final newline.
pub fn open_note<'a>(note: &'a [u8], key: &VerifierKey) -> Result<&'a str, NoteError> {
    Note::parse(note)?.verify(key)
}

impl Checkpoint {
    /// Opens a signed checkpoint: the note must carry a valid signature by
    /// `key` (lines of other keys are ignored; a line of `key` that does
    /// not verify refuses the note), and its text must be a checkpoint.
    pub fn open(note: &[u8], key: &VerifierKey) -> Result<Self, NoteError> {
        let text = Note::parse(note)?.verify(key)?;
        parse_body(text)
    }

    /// The tree size a note states, read without checking any signature
    /// (to order checkpoint files); `None` if it states none.
    pub fn claimed_size(note: &[u8]) -> Option<u64> {
        let note = Note::parse(note).ok()?;
        parse_body(note.text).ok().map(|c| c.size)
    }

    /// The checkpoint body: origin, size and base64 root, one a line.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            BASE64.encode(self.root)
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use ed25519_dalek::{Signer as _, SigningKey};
    use rand::RngCore as _;

    use super::*;

    pub(crate) fn signing_key() -> SigningKey {
        let mut seed = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut seed);
        SigningKey::from_bytes(&seed)
    }

    /// The signature line of `text` by `key` under `name`.
    pub(crate) fn signature_line(name: &str, key: &SigningKey, text: &str) -> String {
        let public = key.verifying_key().to_bytes();
        let mut bytes = key_id(name, &public).to_vec();
        bytes.extend_from_slice(&key.sign(text.as_bytes()).to_bytes());
        format!("\u{2014} {name} {}\n", BASE64.encode(bytes))
    }

    /// A checkpoint note signed by `key` under `name`.
    pub(crate) fn signed(checkpoint: &Checkpoint, name: &str, key: &SigningKey) -> String {
        let body = checkpoint.body();
        format!("{body}\n{}", signature_line(name, key, &body))
    }

    pub(crate) fn verifier(name: &str, key: &SigningKey) -> VerifierKey {
        VerifierKey::new(name, &key.verifying_key().to_bytes()).unwrap()
    }

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            origin: "vault.example/eu/audit".into(),
            size: 1234,
            root: [0x5a; 32],
        }
    }

    #[test]
    fn verifier_key_text() {
        let key = signing_key();
        let verifier = verifier("vault-eu", &key);
        let text = verifier.to_string();
        assert!(text.starts_with("vault-eu+"), "{text}");
        assert_eq!(text.split('+').nth(1).unwrap().len(), 8);
        assert_eq!(
            format!("  {text}\n").parse::<VerifierKey>(),
            Ok(verifier.clone())
        );
        assert!(!format!("{verifier:?}").contains(&BASE64.encode(verifier.public_key())));

        // The Go reference (golang.org/x/mod/sumdb/note) example key.
        let go: VerifierKey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
            .parse()
            .unwrap();
        assert_eq!(go.name(), "PeterNeumann");
        assert_eq!(go.id(), [0xc7, 0x4f, 0x20, 0xa3]);

        let wrong_id = format!("vault-eu+00000000+{}", text.splitn(3, '+').nth(2).unwrap());
        assert!(wrong_id
            .parse::<VerifierKey>()
            .unwrap_err()
            .0
            .contains("key id"));
        for bad in [
            "",
            "vault-eu",
            "vault-eu+0000",
            "vault eu+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "x+c74f20a3+ApqcQcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "x+c74f20a3+AQ==",
            "x+c74f20a3+!!!",
            "x+zzzzzzzz+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        ] {
            assert!(bad.parse::<VerifierKey>().is_err(), "{bad}");
        }
    }

    #[test]
    fn go_reference_note_verifies() {
        // From golang.org/x/mod/sumdb/note's documentation.
        let key: VerifierKey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
            .parse()
            .unwrap();
        let note = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n\
                    \n\
                    \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
        let parsed = Note::parse(note.as_bytes()).unwrap();
        assert_eq!(
            parsed.verify(&key),
            Ok("If you think cryptography is the answer to your problem,\n\
                then you don't know what your problem is.\n")
        );
        // Not a checkpoint, though.
        assert!(matches!(
            Checkpoint::open(note.as_bytes(), &key),
            Err(NoteError::NotACheckpoint(_))
        ));
    }

    #[test]
    fn a_signed_checkpoint_opens() {
        let key = signing_key();
        let note = signed(&checkpoint(), "vault-eu", &key);
        let verifier = verifier("vault-eu", &key);
        assert_eq!(
            Checkpoint::open(note.as_bytes(), &verifier),
            Ok(checkpoint())
        );
        assert_eq!(Checkpoint::claimed_size(note.as_bytes()), Some(1234));

        // Another key's line, before or after, is ignored.
        let other = signing_key();
        let body = checkpoint().body();
        let both = format!(
            "{body}\n{}{}",
            signature_line("witness", &other, &body),
            signature_line("vault-eu", &key, &body)
        );
        assert_eq!(
            Checkpoint::open(both.as_bytes(), &verifier),
            Ok(checkpoint())
        );

        // Extension lines after the root are allowed.
        let extended = format!("{body}extension\n");
        let note = format!(
            "{extended}\n{}",
            signature_line("vault-eu", &key, &extended)
        );
        assert_eq!(
            Checkpoint::open(note.as_bytes(), &verifier),
            Ok(checkpoint())
        );
    }

    #[test]
    fn a_foreign_or_broken_signature_is_refused() {
        let key = signing_key();
        let verifier = verifier("vault-eu", &key);
        let other = signing_key();
        // Same name, another key: its key id differs, so it is not ours.
        let forged = signed(&checkpoint(), "vault-eu", &other);
        assert_eq!(
            Checkpoint::open(forged.as_bytes(), &verifier),
            Err(NoteError::NotSigned("vault-eu".into()))
        );
        // Our name and key id, another key's signature.
        let body = checkpoint().body();
        let mut bytes = verifier.id().to_vec();
        bytes.extend_from_slice(&other.sign(body.as_bytes()).to_bytes());
        let lying = format!("{body}\n\u{2014} vault-eu {}\n", BASE64.encode(bytes));
        assert_eq!(
            Checkpoint::open(lying.as_bytes(), &verifier),
            Err(NoteError::BadSignature("vault-eu".into()))
        );
        // A changed body.
        let good = signed(&checkpoint(), "vault-eu", &key);
        let changed = good.replacen("1234", "1235", 1);
        assert_eq!(
            Checkpoint::open(changed.as_bytes(), &verifier),
            Err(NoteError::BadSignature("vault-eu".into()))
        );
        // Every flipped byte is refused, none panics.
        for i in 0..good.len() {
            let mut bytes = good.clone().into_bytes();
            bytes[i] ^= 0x01;
            assert!(Checkpoint::open(&bytes, &verifier).is_err(), "byte {i}");
            let _ = Checkpoint::claimed_size(&bytes);
        }
        for len in 0..good.len() {
            assert!(
                Checkpoint::open(&good.as_bytes()[..len], &verifier).is_err(),
                "{len}"
            );
        }
    }

    #[test]
    fn malformed_notes_and_bodies() {
        let key = signing_key();
        let verifier = verifier("vault-eu", &key);
        let sign = |body: &str| format!("{body}\n{}", signature_line("vault-eu", &key, body));
        let root = BASE64.encode([1u8; 32]);
        for (body, why) in [
            (format!("\n5\n{root}\n"), "origin"),
            (format!("o\n05\n{root}\n"), "tree size"),
            (format!("o\n+5\n{root}\n"), "tree size"),
            (format!("o\n18446744073709551616\n{root}\n"), "tree size"),
            ("o\n5\nAAAA\n".to_owned(), "32-byte root"),
            ("o\n5\n".to_owned(), "32-byte root"),
        ] {
            let result = Checkpoint::open(sign(&body).as_bytes(), &verifier);
            assert!(
                matches!(&result, Err(NoteError::NotACheckpoint(m)) if m.contains(why)),
                "{body:?}: {result:?}"
            );
        }
        assert_eq!(
            Checkpoint::open(sign(&format!("o\n0\n{root}\n")).as_bytes(), &verifier)
                .map(|c| c.size),
            Ok(0)
        );
        let body = checkpoint().body();
        for note in [
            body.clone(),
            format!("{body}\n"),
            format!("{body}\n\u{2014} vault-eu\n"),
            format!("{body}\n- vault-eu AAAAAAAA\n"),
            format!("{body}\n\u{2014} vault-eu AAAA\n"),
            sign(&body).trim_end().to_owned(),
            sign(&body).replace('\n', "\r\n"),
        ] {
            assert!(
                matches!(
                    Checkpoint::open(note.as_bytes(), &verifier),
                    Err(NoteError::Malformed(_))
                ),
                "{note:?}"
            );
        }
        assert!(Checkpoint::open(&[0xff, 0xfe], &verifier).is_err());
    }
}
