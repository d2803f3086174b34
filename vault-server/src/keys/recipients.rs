//! Unseal shares sealed to their custodians: each share of an init or a
//! rekey encrypted to one custodian's age X25519 recipient (`age1…`), so
//! that the operator who runs the command sees only ciphertexts. The
//! shares are encrypted here, inside the vault process, before the keyring
//! changes: a response carries either every share in clear (no recipients
//! given) or only the age files (ASCII-armored), never both.
//!
//! Recipients are public keys; they are still not logged, and errors name
//! a recipient by its position, not its text.

use std::io::Write as _;
use std::str::FromStr as _;

use age::armor::{ArmoredWriter, Format};
use zeroize::Zeroizing;

use super::UnsealShare;

/// The longest recipient string accepted (an X25519 recipient is 62
/// characters).
const MAX_RECIPIENT_LEN: usize = 128;

/// Why a list of recipients was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecipientError {
    /// Not an age X25519 recipient.
    #[error(
        "recipient {0} is not an age X25519 recipient (`age1…`, as `age-keygen -y` prints it)"
    )]
    Malformed(usize),
    /// The same recipient twice: one custodian would hold two shares.
    #[error(
        "recipient {later} repeats recipient {first}: each share goes to a different custodian"
    )]
    Repeated {
        /// The first position (1-based).
        first: usize,
        /// The repeated one.
        later: usize,
    },
    /// Not one recipient per share.
    #[error("{given} recipients for {shares} shares: give exactly one recipient per share")]
    WrongCount {
        /// Recipients given.
        given: usize,
        /// Shares to make.
        shares: usize,
    },
    /// Encryption failed (an internal error; no share was issued).
    #[error("a share could not be encrypted to its recipient")]
    Encrypt,
}

/// The custodians' age recipients, one per share, in share order.
#[derive(Clone)]
pub struct ShareRecipients {
    recipients: Vec<age::x25519::Recipient>,
    /// Their canonical text, to compare two requests' lists.
    canonical: Vec<String>,
}

impl std::fmt::Debug for ShareRecipients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ShareRecipients({})", self.recipients.len())
    }
}

impl PartialEq for ShareRecipients {
    fn eq(&self, other: &Self) -> bool {
        self.canonical == other.canonical
    }
}

impl Eq for ShareRecipients {}

impl ShareRecipients {
    /// Parses recipients as a request gives them, one per share (surrounding
    /// white space ignored). Refuses a malformed or repeated recipient, and
    /// a count other than `shares`.
    pub fn parse<S: AsRef<str>>(list: &[S], shares: u8) -> Result<Self, RecipientError> {
        if list.len() != usize::from(shares) {
            return Err(RecipientError::WrongCount {
                given: list.len(),
                shares: usize::from(shares),
            });
        }
        let mut recipients = Vec::with_capacity(list.len());
        let mut canonical: Vec<String> = Vec::with_capacity(list.len());
        for (i, text) in list.iter().enumerate() {
            let text = text.as_ref().trim();
            if text.len() > MAX_RECIPIENT_LEN || !text.starts_with("age1") {
                return Err(RecipientError::Malformed(i + 1));
            }
            let r = age::x25519::Recipient::from_str(text)
                .map_err(|_| RecipientError::Malformed(i + 1))?;
            let c = r.to_string();
            if let Some(first) = canonical.iter().position(|o| *o == c) {
                return Err(RecipientError::Repeated {
                    first: first + 1,
                    later: i + 1,
                });
            }
            recipients.push(r);
            canonical.push(c);
        }
        Ok(ShareRecipients {
            recipients,
            canonical,
        })
    }

    /// How many recipients (= shares).
    pub fn len(&self) -> usize {
        self.recipients.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.recipients.is_empty()
    }

    /// Encrypts share i to recipient i: one ASCII-armored age file per
    /// share, holding the share's text form and a newline.
    pub fn seal(&self, shares: &[UnsealShare]) -> Result<Vec<String>, RecipientError> {
        if shares.len() != self.recipients.len() {
            return Err(RecipientError::WrongCount {
                given: self.recipients.len(),
                shares: shares.len(),
            });
        }
        shares
            .iter()
            .zip(&self.recipients)
            .map(|(share, recipient)| {
                let mut text = Zeroizing::new(share.encode().to_string());
                text.push('\n');
                encrypt_armored(recipient, text.as_bytes())
            })
            .collect()
    }
}

fn encrypt_armored(
    recipient: &age::x25519::Recipient,
    plaintext: &[u8],
) -> Result<String, RecipientError> {
    let encryptor =
        age::Encryptor::with_recipients(std::iter::once(recipient as &dyn age::Recipient))
            .map_err(|_| RecipientError::Encrypt)?;
    let mut out = Vec::with_capacity(512);
    let armor = ArmoredWriter::wrap_output(&mut out, Format::AsciiArmor)
        .map_err(|_| RecipientError::Encrypt)?;
    let mut writer = encryptor
        .wrap_output(armor)
        .map_err(|_| RecipientError::Encrypt)?;
    writer
        .write_all(plaintext)
        .map_err(|_| RecipientError::Encrypt)?;
    writer
        .finish()
        .and_then(|armor| armor.finish())
        .map_err(|_| RecipientError::Encrypt)?;
    String::from_utf8(out).map_err(|_| RecipientError::Encrypt)
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;
    use crate::crypto::Key256;
    use crate::keys::split;
    use age::secrecy::ExposeSecret as _;

    fn identities(n: usize) -> Vec<age::x25519::Identity> {
        (0..n).map(|_| age::x25519::Identity::generate()).collect()
    }

    fn decrypt(identity: &age::x25519::Identity, armored: &str) -> String {
        let d = age::Decryptor::new_buffered(age::armor::ArmoredReader::new(armored.as_bytes()))
            .unwrap();
        let mut out = String::new();
        d.decrypt(std::iter::once(identity as &dyn age::Identity))
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn each_share_opens_with_its_custodians_identity_only() {
        let ids = identities(3);
        let list: Vec<String> = ids.iter().map(|i| i.to_public().to_string()).collect();
        let recipients = ShareRecipients::parse(&list, 3).unwrap();
        let shares = split(&Key256::random(), 2, 3).unwrap();
        let sealed = recipients.seal(&shares).unwrap();
        assert_eq!(sealed.len(), 3);
        for (i, armored) in sealed.iter().enumerate() {
            assert!(armored.starts_with("-----BEGIN AGE ENCRYPTED FILE-----"));
            let clear = shares[i].encode();
            assert!(!armored.contains(clear.as_str()));
            assert!(!armored.contains(super::super::SHARE_PREFIX));
            let text = decrypt(&ids[i], armored);
            assert_eq!(text.trim(), clear.as_str());
            assert_eq!(
                UnsealShare::parse(&text).unwrap().index(),
                shares[i].index()
            );
            // Another custodian's identity does not open it.
            let other = &ids[(i + 1) % 3];
            let d =
                age::Decryptor::new_buffered(age::armor::ArmoredReader::new(armored.as_bytes()))
                    .unwrap();
            assert!(d
                .decrypt(std::iter::once(other as &dyn age::Identity))
                .is_err());
        }
        assert_eq!(format!("{recipients:?}"), "ShareRecipients(3)");
    }

    #[test]
    fn bad_lists_are_refused_with_their_position() {
        let ids = identities(2);
        let good: Vec<String> = ids.iter().map(|i| i.to_public().to_string()).collect();
        let secret = ids[0].to_string();
        for (list, want) in [
            (
                vec![good[0].clone(), "age1notakey".to_owned()],
                RecipientError::Malformed(2),
            ),
            (
                vec![secret.expose_secret().to_owned(), good[1].clone()],
                RecipientError::Malformed(1),
            ),
            (
                vec!["ssh-ed25519 AAAA".to_owned(), good[1].clone()],
                RecipientError::Malformed(1),
            ),
            (
                vec![String::new(), good[1].clone()],
                RecipientError::Malformed(1),
            ),
            (
                vec![good[0].clone(), format!("  {}\n", good[0])],
                RecipientError::Repeated { first: 1, later: 2 },
            ),
            (
                vec![good[0].clone()],
                RecipientError::WrongCount {
                    given: 1,
                    shares: 2,
                },
            ),
            (
                vec![good[0].clone(), "x".repeat(10_000)],
                RecipientError::Malformed(2),
            ),
        ] {
            let err = ShareRecipients::parse(&list, 2).unwrap_err();
            assert_eq!(err, want);
            // No message echoes the text given (a pasted secret key).
            assert!(!err.to_string().contains("AGE-SECRET-KEY"));
        }
        // Surrounding space does not matter to the comparison.
        let a = ShareRecipients::parse(&[format!(" {} ", good[0])], 1).unwrap();
        let b = ShareRecipients::parse(&[good[0].clone()], 1).unwrap();
        assert_eq!(a, b);
    }
}
