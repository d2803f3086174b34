//! Witness cosignatures of checkpoints, in the C2SP tlog-cosignature v1
//! format (Ed25519), and the witness's own keys.
//!
//! A witness keeps the latest checkpoint it verified, checks each new one
//! for consistency with it, and only then cosigns it: it adds a note
//! signature line to the checkpoint,
//!
//! ```text
//! — <witness name> base64(key id (4 B) ‖ timestamp (u64, big-endian) ‖ Ed25519 signature (64 B))
//! ```
//!
//! where the signature is over
//!
//! ```text
//! cosignature/v1\n
//! time <timestamp, decimal>\n
//! <the checkpoint's note text, with its final newline>
//! ```
//!
//! and the key id is SHA-256(name ‖ "\n" ‖ 0x04 ‖ public key)[..4]. A
//! witness's verifier key is `<name>+<hex key id>+<base64(0x04 ‖ public
//! key)>` ([`WitnessKey`]); its private key file holds
//! `PRIVATE+KEY+<name>+<hex key id>+<base64(0x04 ‖ 32-byte seed)>`
//! ([`WitnessSigner`]).
//!
//! A witness that refuses a checkpoint (a fork, a rollback) tells the vault
//! in a [`Refusal`], signed by the same key over its own header
//! (`vault-witness-refusal/v1`), so that only a witness the vault knows can
//! raise that alert.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use super::note::{checked_key, split_vkey, KeyError, Note, NoteError};

/// The algorithm byte of an Ed25519 cosignature v1 key.
pub const ALG_COSIGNATURE_V1: u8 = 0x04;

/// The first line of a private key file.
const PRIVATE_PREFIX: &str = "PRIVATE+KEY+";

/// The first line of the message a refusal signs.
const REFUSAL_HEADER: &str = "vault-witness-refusal/v1\n";

/// The longest reason a refusal carries, in bytes.
pub const MAX_REFUSAL_REASON: usize = 512;

/// The key id of a cosigner key: SHA-256(name ‖ "\n" ‖ 0x04 ‖ public
/// key)[..4].
pub fn cosigner_key_id(name: &str, public_key: &[u8; 32]) -> [u8; 4] {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update(b"\n");
    hasher.update([ALG_COSIGNATURE_V1]);
    hasher.update(public_key);
    let digest = hasher.finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

/// The message a cosignature of `text` (a checkpoint note's text, with
/// its final newline) made at `timestamp` signs.
pub fn cosigned_message(text: &str, timestamp: u64) -> String {
    format!("cosignature/v1\ntime {timestamp}\n{text}")
}

/// A witness's verifier key: what an auditor pins to check its
/// cosignatures (`<name>+<hex key id>+<base64(0x04 ‖ key)>`).
#[derive(Clone, PartialEq, Eq)]
pub struct WitnessKey {
    name: String,
    id: [u8; 4],
    key: VerifyingKey,
}

impl fmt::Debug for WitnessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WitnessKey")
            .field("name", &self.name)
            .field("id", &hex::encode(self.id))
            .finish_non_exhaustive()
    }
}

impl WitnessKey {
    /// The witness key of an Ed25519 public key under `name`.
    pub fn new(name: &str, public_key: &[u8; 32]) -> Result<Self, KeyError> {
        let key = checked_key(name, public_key)?;
        Ok(Self {
            name: name.to_owned(),
            id: cosigner_key_id(name, public_key),
            key,
        })
    }

    /// The witness's name, as its signature lines give it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key id.
    pub fn id(&self) -> [u8; 4] {
        self.id
    }

    /// The Ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        Signature::from_slice(signature)
            .is_ok_and(|signature| self.key.verify_strict(message, &signature).is_ok())
    }

    /// The timestamp of this witness's cosignature on `note` (a signed
    /// checkpoint), if it has one that verifies. Its lines are the ones
    /// with its name and key id; if there are several, each must verify
    /// and the latest time is returned.
    pub fn cosignature_time(&self, note: &[u8]) -> Result<u64, NoteError> {
        let parsed = Note::parse(note)?;
        let mut latest = None;
        for (name, signature) in &parsed.signatures {
            if *name != self.name || signature[..4] != self.id {
                continue;
            }
            if signature.len() != 4 + 8 + 64 {
                return Err(NoteError::BadSignature(self.name.clone()));
            }
            let mut time = [0u8; 8];
            time.copy_from_slice(&signature[4..12]);
            let time = u64::from_be_bytes(time);
            if time > i64::MAX as u64
                || !self.verifies(
                    cosigned_message(parsed.text, time).as_bytes(),
                    &signature[12..],
                )
            {
                return Err(NoteError::BadSignature(self.name.clone()));
            }
            latest = latest.max(Some(time));
        }
        latest.ok_or_else(|| NoteError::NotSigned(self.name.clone()))
    }

    /// Whether `signature` is this witness's over `refusal`.
    pub fn verifies_refusal(&self, refusal: &Refusal, signature: &[u8]) -> bool {
        self.verifies(refusal.message().as_bytes(), signature)
    }
}

/// `<name>+<8 hex digits>+<base64(0x04 ‖ key)>`.
impl fmt::Display for WitnessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut encoded = vec![ALG_COSIGNATURE_V1];
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

impl FromStr for WitnessKey {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, KeyError> {
        let (name, id, public_key) =
            split_vkey(text, ALG_COSIGNATURE_V1, "a cosignature v1 (witness) key")?;
        let key = Self::new(&name, &public_key)?;
        if key.id != id {
            return Err(KeyError(format!(
                "the key id {} is not that of the key (it is {})",
                hex::encode(id),
                hex::encode(key.id)
            )));
        }
        Ok(key)
    }
}

/// A witness's signing key (its seed is zeroed on drop; `Debug` shows the
/// name only).
pub struct WitnessSigner {
    name: String,
    key: SigningKey,
}

impl fmt::Debug for WitnessSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WitnessSigner")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl WitnessSigner {
    /// A new key under `name`, from the operating system's generator.
    pub fn generate(name: &str) -> Result<Self, KeyError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, seed.as_mut());
        Self::from_seed(name, &seed)
    }

    fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Self, KeyError> {
        let key = SigningKey::from_bytes(seed);
        // Checks the name (and that the key is usable).
        WitnessKey::new(name, &key.verifying_key().to_bytes())?;
        Ok(Self {
            name: name.to_owned(),
            key,
        })
    }

    /// Parses a private key file's text:
    /// `PRIVATE+KEY+<name>+<hex key id>+<base64(0x04 ‖ seed)>`.
    pub fn from_text(text: &str) -> Result<Self, KeyError> {
        let rest = text
            .trim()
            .strip_prefix(PRIVATE_PREFIX)
            .ok_or_else(|| KeyError("a witness key file starts with PRIVATE+KEY+".into()))?;
        let (name, id, seed) = split_vkey(rest, ALG_COSIGNATURE_V1, "a witness private key")?;
        let seed = Zeroizing::new(seed);
        let signer = Self::from_seed(&name, &seed)?;
        if signer.verifier().id != id {
            return Err(KeyError(
                "the key id is not that of the key: the file is damaged".into(),
            ));
        }
        Ok(signer)
    }

    /// The private key file's text (one line), to keep secret.
    pub fn to_text(&self) -> Zeroizing<String> {
        let mut encoded = Zeroizing::new(vec![ALG_COSIGNATURE_V1]);
        encoded.extend_from_slice(self.key.as_bytes());
        Zeroizing::new(format!(
            "{PRIVATE_PREFIX}{}+{}+{}\n",
            self.name,
            hex::encode(self.verifier().id),
            BASE64.encode(encoded.as_slice())
        ))
    }

    /// The verifier key auditors pin.
    pub fn verifier(&self) -> WitnessKey {
        let public = self.key.verifying_key().to_bytes();
        WitnessKey {
            name: self.name.clone(),
            id: cosigner_key_id(&self.name, &public),
            key: self.key.verifying_key(),
        }
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cosignature line (with its newline) of a checkpoint whose note
    /// text (with its final newline, without signatures) is `text`, made at
    /// `timestamp` (seconds since the Unix epoch).
    pub fn cosign(&self, text: &str, timestamp: u64) -> String {
        let signature = self
            .key
            .sign(cosigned_message(text, timestamp).as_bytes())
            .to_bytes();
        let mut blob = Vec::with_capacity(76);
        blob.extend_from_slice(&self.verifier().id);
        blob.extend_from_slice(&timestamp.to_be_bytes());
        blob.extend_from_slice(&signature);
        format!("\u{2014} {} {}\n", self.name, BASE64.encode(blob))
    }

    /// The signature of a refusal.
    pub fn sign_refusal(&self, refusal: &Refusal) -> [u8; 64] {
        self.key.sign(refusal.message().as_bytes()).to_bytes()
    }
}

/// A witness's statement that it refused a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// When (seconds since the Unix epoch).
    pub timestamp: u64,
    /// Why, in one line of printable text (at most
    /// [`MAX_REFUSAL_REASON`] bytes).
    pub reason: String,
    /// The refused checkpoint's note text (origin, size, root, with its
    /// final newline).
    pub checkpoint: String,
}

impl Refusal {
    /// A refusal, its reason cut to one printable line of at most
    /// [`MAX_REFUSAL_REASON`] bytes.
    pub fn new(timestamp: u64, reason: &str, checkpoint: &str) -> Self {
        let mut line: String = reason
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        while line.len() > MAX_REFUSAL_REASON {
            line.pop();
        }
        Refusal {
            timestamp,
            reason: line,
            checkpoint: checkpoint.to_owned(),
        }
    }

    /// What the witness signs.
    pub fn message(&self) -> String {
        format!(
            "{REFUSAL_HEADER}time {}\nreason {}\n{}",
            self.timestamp, self.reason, self.checkpoint
        )
    }
}

/// The text of a signed note (everything before its signatures, with its
/// final newline).
pub fn note_text(note: &[u8]) -> Result<&str, NoteError> {
    Note::parse(note).map(|n| n.text)
}

#[cfg(test)]
mod tests {
    use super::super::note::tests::{signed, signing_key};
    use super::super::Checkpoint;
    use super::*;

    fn checkpoint_note() -> String {
        let checkpoint = Checkpoint {
            origin: "vault.example/eu/audit".into(),
            size: 77,
            root: [3; 32],
        };
        signed(&checkpoint, "vault.example/eu/audit", &signing_key())
    }

    #[test]
    fn keys_round_trip_and_refuse_damage() {
        let signer = WitnessSigner::generate("witness.example/w1").unwrap();
        let text = signer.to_text();
        assert!(text.starts_with("PRIVATE+KEY+witness.example/w1+"));
        let again = WitnessSigner::from_text(&text).unwrap();
        assert_eq!(again.verifier(), signer.verifier());
        let seed = text.splitn(5, '+').nth(4).unwrap().trim();
        assert!(!format!("{again:?}").contains(seed));

        let vkey = signer.verifier().to_string();
        assert_eq!(vkey.parse::<WitnessKey>().unwrap(), signer.verifier());
        // A vault (0x01) key is not a witness key, nor the reverse.
        let vault_key = super::super::note::tests::verifier("v", &signing_key()).to_string();
        assert!(vault_key
            .parse::<WitnessKey>()
            .unwrap_err()
            .0
            .contains("0x04"));
        assert!(vkey.parse::<super::super::VerifierKey>().is_err());
        // Another id; another name with the same id.
        let parts: Vec<&str> = vkey.splitn(3, '+').collect();
        assert!(format!("{}+00000000+{}", parts[0], parts[2])
            .parse::<WitnessKey>()
            .is_err());
        assert!(format!("other+{}+{}", parts[1], parts[2])
            .parse::<WitnessKey>()
            .is_err());
        for bad in ["", "PRIVATE+KEY+", "PRIVATE+KEY+w+00+AA", &vkey] {
            assert!(WitnessSigner::from_text(bad).is_err(), "{bad}");
        }
        let damaged = text.replacen("witness.example/w1", "witness.example/w2", 1);
        assert!(WitnessSigner::from_text(&damaged).is_err());
        assert!(WitnessSigner::generate("bad name").is_err());
    }

    #[test]
    fn a_cosignature_verifies_only_for_its_checkpoint_and_key() {
        let signer = WitnessSigner::generate("witness.example/w1").unwrap();
        let key = signer.verifier();
        let note = checkpoint_note();
        let text = note_text(note.as_bytes()).unwrap();
        let cosigned = format!("{note}{}", signer.cosign(text, 1_700_000_000));
        assert_eq!(key.cosignature_time(cosigned.as_bytes()), Ok(1_700_000_000));
        // The vault's own signature still opens the checkpoint around it.
        assert_eq!(Checkpoint::claimed_size(cosigned.as_bytes()), Some(77));

        // No line of this witness; another witness's line.
        assert_eq!(
            key.cosignature_time(note.as_bytes()),
            Err(NoteError::NotSigned("witness.example/w1".into()))
        );
        let other = WitnessSigner::generate("witness.example/w2").unwrap();
        assert!(other
            .verifier()
            .cosignature_time(cosigned.as_bytes())
            .is_err());

        // Moved to another checkpoint, or its time changed: refused.
        let line = signer.cosign(text, 1_700_000_000);
        let other_note = checkpoint_note().replace("\n77\n", "\n78\n");
        let moved = format!("{other_note}{line}");
        assert_eq!(
            key.cosignature_time(moved.as_bytes()),
            Err(NoteError::BadSignature("witness.example/w1".into()))
        );
        let blob = BASE64
            .decode(line.trim_end().rsplit(' ').next().unwrap())
            .unwrap();
        let mut later = blob.clone();
        later[11] ^= 1;
        let retimed = format!(
            "{note}\u{2014} witness.example/w1 {}\n",
            BASE64.encode(later)
        );
        assert!(key.cosignature_time(retimed.as_bytes()).is_err());
        let short = format!(
            "{note}\u{2014} witness.example/w1 {}\n",
            BASE64.encode(&blob[..40])
        );
        assert!(key.cosignature_time(short.as_bytes()).is_err());
    }

    #[test]
    fn the_signed_message_is_the_specs() {
        // tlog-cosignature v1: header, time line, then the note text.
        assert_eq!(
            cosigned_message("example.com/behind-the-sofa\n20852163\nCsUY=\n", 1679315147),
            "cosignature/v1\ntime 1679315147\nexample.com/behind-the-sofa\n20852163\nCsUY=\n"
        );
    }

    #[test]
    fn refusals_are_signed_and_bounded() {
        let signer = WitnessSigner::generate("w").unwrap();
        let refusal = Refusal::new(5, &format!("fork\n{}", "x".repeat(600)), "o\n3\nAA==\n");
        assert!(!refusal.reason.contains('\n'));
        assert!(refusal.reason.len() <= MAX_REFUSAL_REASON);
        let sig = signer.sign_refusal(&refusal);
        assert!(signer.verifier().verifies_refusal(&refusal, &sig));
        let mut changed = refusal.clone();
        changed.timestamp = 6;
        assert!(!signer.verifier().verifies_refusal(&changed, &sig));
    }
}
