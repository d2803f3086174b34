//! Unseal shares sealed to their custodians with age: the vault encrypts
//! each share of an init or a rekey to one custodian's X25519 recipient
//! (`age1…`); the custodian opens it here, with an age identity file
//! (`AGE-SECRET-KEY-1…`), just before handing the share in.
//!
//! Every function here reads outside bytes (share files, identity files,
//! recipient files) and returns an error, never panics; no message repeats
//! a line of an identity file (it is a secret key) or a share.

use std::io::Read as _;
use std::str::FromStr as _;

use zeroize::Zeroizing;

use crate::UnsealShare;

/// The first line of an ASCII-armored age file.
pub const AGE_ARMOR_BEGIN: &str = "-----BEGIN AGE ENCRYPTED FILE-----";
/// The first line of a binary age file.
const AGE_BINARY_BEGIN: &str = "age-encryption.org/v1";
/// The most an encrypted share file may hold (one is about 600 bytes).
pub const MAX_SEALED_SHARE: u64 = 16 * 1024;
/// The most a decrypted share may hold (a share is about 130 characters).
const MAX_SHARE_TEXT: u64 = 4096;
/// The most an identity or recipients file may hold.
pub const MAX_KEY_FILE: u64 = 64 * 1024;

/// Why a sealed share, an identity file or a recipients file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealedShareError {
    /// Too large to be what it should be.
    #[error("too large to be {0}")]
    TooLarge(&'static str),
    /// Not an age file.
    #[error("not an age-encrypted share")]
    NotAgeFile,
    /// An identity file line that is not an X25519 identity.
    #[error("line {0} of the identity file is not an age X25519 identity (AGE-SECRET-KEY-1…)")]
    BadIdentity(usize),
    /// An identity file without identities.
    #[error("the identity file holds no age identity (AGE-SECRET-KEY-1…)")]
    NoIdentity,
    /// No identity opens the file.
    #[error(
        "the identity does not open this share (it was encrypted to another custodian's \
         recipient)"
    )]
    WrongIdentity,
    /// A damaged, truncated or otherwise unreadable age file.
    #[error("the encrypted share is damaged or truncated")]
    Damaged,
    /// The file decrypted, but to something else than an unseal share.
    #[error("the decrypted file is not an unseal share")]
    NotAShare,
    /// A recipients-file line that is not an X25519 recipient.
    #[error("line {0} is not an age X25519 recipient (age1…)")]
    BadRecipient(usize),
    /// A recipients file without recipients.
    #[error("no age recipient in the file")]
    NoRecipients,
}

/// A custodian's age identities (X25519 secret keys). `Debug` shows only
/// how many; the keys are wiped on drop (by the `age` crate).
pub struct Identities(Vec<age::x25519::Identity>);

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identities({})", self.0.len())
    }
}

impl Identities {
    /// Parses an age identity file: one `AGE-SECRET-KEY-1…` per line;
    /// blank lines and `#` comments (as `age-keygen` writes) are skipped.
    pub fn parse(text: &str) -> Result<Self, SealedShareError> {
        if text.len() as u64 > MAX_KEY_FILE {
            return Err(SealedShareError::TooLarge("an age identity file"));
        }
        let mut ids = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let id = age::x25519::Identity::from_str(line)
                .map_err(|_| SealedShareError::BadIdentity(i + 1))?;
            ids.push(id);
        }
        if ids.is_empty() {
            return Err(SealedShareError::NoIdentity);
        }
        Ok(Identities(ids))
    }
}

/// Whether `bytes` look like an age file (armored or binary), rather than
/// a share in clear.
pub fn is_sealed(bytes: &[u8]) -> bool {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let rest = &bytes[start..];
    rest.starts_with(AGE_ARMOR_BEGIN.as_bytes()) || rest.starts_with(AGE_BINARY_BEGIN.as_bytes())
}

/// Opens a sealed share with the custodian's identities.
pub fn open(sealed: &[u8], identities: &Identities) -> Result<UnsealShare, SealedShareError> {
    if sealed.len() as u64 > MAX_SEALED_SHARE {
        return Err(SealedShareError::TooLarge("an encrypted unseal share"));
    }
    if !is_sealed(sealed) {
        return Err(SealedShareError::NotAgeFile);
    }
    // The armor reader wants the file to start at its first line.
    let start = sealed
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(sealed.len());
    let decryptor = age::Decryptor::new_buffered(age::armor::ArmoredReader::new(&sealed[start..]))
        .map_err(|_| SealedShareError::Damaged)?;
    let reader = decryptor
        .decrypt(identities.0.iter().map(|i| i as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => SealedShareError::WrongIdentity,
            _ => SealedShareError::Damaged,
        })?;
    let mut clear = Zeroizing::new(Vec::with_capacity(256));
    reader
        .take(MAX_SHARE_TEXT + 1)
        .read_to_end(&mut clear)
        .map_err(|_| SealedShareError::Damaged)?;
    if clear.len() as u64 > MAX_SHARE_TEXT {
        return Err(SealedShareError::NotAShare);
    }
    let text = std::str::from_utf8(&clear).map_err(|_| SealedShareError::NotAShare)?;
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let share = lines.next().ok_or(SealedShareError::NotAShare)?;
    if lines.next().is_some() || !share.starts_with("vault-share-") {
        return Err(SealedShareError::NotAShare);
    }
    Ok(UnsealShare::new(share))
}

/// Checks one age X25519 recipient (`age1…`) and returns its canonical
/// form.
pub fn check_recipient(text: &str) -> Result<String, SealedShareError> {
    let text = text.trim();
    if text.len() > 128 || !text.starts_with("age1") {
        return Err(SealedShareError::BadRecipient(1));
    }
    age::x25519::Recipient::from_str(text)
        .map(|r| r.to_string())
        .map_err(|_| SealedShareError::BadRecipient(1))
}

/// Parses a recipients file: one `age1…` per line, blank lines and `#`
/// comments skipped. The order of the lines is the order of the shares.
pub fn parse_recipients(text: &str) -> Result<Vec<String>, SealedShareError> {
    if text.len() as u64 > MAX_KEY_FILE {
        return Err(SealedShareError::TooLarge("an age recipients file"));
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(check_recipient(line).map_err(|_| SealedShareError::BadRecipient(i + 1))?);
    }
    if out.is_empty() {
        return Err(SealedShareError::NoRecipients);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use age::secrecy::ExposeSecret as _;

    use super::*;

    const SHARE: &str = "vault-share-v1:0102";

    fn seal(recipient: &age::x25519::Recipient, text: &str) -> String {
        let e = age::Encryptor::with_recipients(std::iter::once(recipient as &dyn age::Recipient))
            .unwrap();
        let mut out = Vec::new();
        let armor =
            age::armor::ArmoredWriter::wrap_output(&mut out, age::armor::Format::AsciiArmor)
                .unwrap();
        let mut w = e.wrap_output(armor).unwrap();
        w.write_all(text.as_bytes()).unwrap();
        w.finish().unwrap().finish().unwrap();
        String::from_utf8(out).unwrap()
    }

    fn identity_file(id: &age::x25519::Identity) -> String {
        format!(
            "# created: 2026-12-01\n# public key: {}\n{}\n",
            id.to_public(),
            id.to_string().expose_secret()
        )
    }

    #[test]
    fn a_sealed_share_opens_with_its_identity_only() {
        let id = age::x25519::Identity::generate();
        let other = age::x25519::Identity::generate();
        let sealed = seal(&id.to_public(), &format!("{SHARE}\n"));
        assert!(is_sealed(sealed.as_bytes()));
        assert!(!is_sealed(SHARE.as_bytes()));
        let ids = Identities::parse(&identity_file(&id)).unwrap();
        assert_eq!(format!("{ids:?}"), "Identities(1)");
        let share = open(format!("\n{sealed}").as_bytes(), &ids).unwrap();
        assert_eq!(share.expose_secret(), SHARE);
        let wrong = Identities::parse(&identity_file(&other)).unwrap();
        assert_eq!(
            open(sealed.as_bytes(), &wrong).unwrap_err(),
            SealedShareError::WrongIdentity
        );
        // Several identities: the right one is found.
        let both = Identities::parse(&(identity_file(&other) + &identity_file(&id))).unwrap();
        assert!(open(sealed.as_bytes(), &both).is_ok());
        // Something else than a share inside.
        let not_a_share = seal(&id.to_public(), "hello\nworld\n");
        assert_eq!(
            open(not_a_share.as_bytes(), &ids).unwrap_err(),
            SealedShareError::NotAShare
        );
        assert_eq!(
            open(SHARE.as_bytes(), &ids).unwrap_err(),
            SealedShareError::NotAgeFile
        );
    }

    /// Every truncation and every single-byte change of a sealed share is
    /// an error, never a panic nor a wrong share.
    #[test]
    fn damaged_sealed_shares_are_errors_not_panics() {
        let id = age::x25519::Identity::generate();
        let ids = Identities::parse(&identity_file(&id)).unwrap();
        let sealed = seal(&id.to_public(), SHARE).into_bytes();
        // Only the final newline may go.
        let end = sealed.trim_ascii_end().len();
        for n in 0..sealed.len() {
            assert_eq!(
                open(&sealed[..n], &ids).is_ok(),
                n >= end,
                "truncated at {n}"
            );
        }
        for i in 0..sealed.len() {
            for flip in [0x01u8, 0x20, 0x80] {
                let mut m = sealed.clone();
                m[i] ^= flip;
                if let Ok(share) = open(&m, &ids) {
                    // Armor tolerates some changes (line endings, padding);
                    // what opens is the very share.
                    assert_eq!(share.expose_secret(), SHARE, "byte {i}");
                }
            }
        }
        let huge = vec![b'a'; MAX_SEALED_SHARE as usize + 1];
        assert!(matches!(
            open(&huge, &ids),
            Err(SealedShareError::TooLarge(_))
        ));
    }

    #[test]
    fn identity_files_are_checked_without_echoing_them() {
        let id = age::x25519::Identity::generate();
        let secret = id.to_string().expose_secret().to_owned();
        let damaged = format!("# comment\n\n{}x\n", secret);
        let err = Identities::parse(&damaged).unwrap_err();
        assert_eq!(err, SealedShareError::BadIdentity(3));
        assert!(!err.to_string().contains(&secret[..20]));
        assert_eq!(
            Identities::parse("# nothing\n").unwrap_err(),
            SealedShareError::NoIdentity
        );
        // A recipient is not an identity.
        assert_eq!(
            Identities::parse(&id.to_public().to_string()).unwrap_err(),
            SealedShareError::BadIdentity(1)
        );
    }

    #[test]
    fn recipients_files_take_comments_and_refuse_bad_lines() {
        let a = age::x25519::Identity::generate().to_public().to_string();
        let b = age::x25519::Identity::generate().to_public().to_string();
        let file = format!("# custodians\n{a}\n\n  {b}  \n# end\n");
        assert_eq!(parse_recipients(&file).unwrap(), vec![a.clone(), b]);
        assert_eq!(
            parse_recipients(&format!("{a}\nage1oops\n")).unwrap_err(),
            SealedShareError::BadRecipient(2)
        );
        assert_eq!(
            parse_recipients("# none\n").unwrap_err(),
            SealedShareError::NoRecipients
        );
        assert_eq!(check_recipient(&format!(" {a}\n")).unwrap(), a);
        assert!(check_recipient("ssh-ed25519 AAAA").is_err());
    }
}
