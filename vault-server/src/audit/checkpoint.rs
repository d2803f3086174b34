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
    sign_note(origin, &body(origin, size, root), key)
}

/// `body` (lines, each ending in a newline) as a C2SP signed note with one
/// signature by `key` under the name `origin`: checkpoints, and the
/// statements of subject exports (whose first line is never a log origin
/// followed by a tree size, so neither passes for the other).
pub fn sign_note(origin: &str, body: &str, key: &SigningKey) -> String {
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

/// The algorithm byte of a C2SP tlog-cosignature v1 (Ed25519) key.
const ALG_COSIGNATURE_V1: u8 = 0x04;

/// How far in the future a cosignature's time may be.
const MAX_FUTURE_SECS: u64 = 600;

/// A witness this vault takes cosignatures from (`[audit] witnesses`): a
/// C2SP verifier key `<name>+<hex key id>+<base64(0x04 ‖ Ed25519 key)>`.
#[derive(Clone, PartialEq, Eq)]
pub struct WitnessKey {
    name: String,
    id: [u8; 4],
    key: ed25519_dalek::VerifyingKey,
}

impl std::fmt::Debug for WitnessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WitnessKey({}+{})", self.name, hex::encode(self.id))
    }
}

impl std::str::FromStr for WitnessKey {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut parts = text.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err("a witness key is <name>+<hex key id>+<base64 key>".into());
        };
        if name.is_empty()
            || name
                .chars()
                .any(|c| c == '+' || c.is_whitespace() || c.is_control())
        {
            return Err("a witness key's name must be non-empty, without spaces or `+`".into());
        }
        let id: [u8; 4] = hex::decode(id)
            .ok()
            .and_then(|id| id.try_into().ok())
            .ok_or("a witness key's id is not 8 hex digits")?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(key)
            .map_err(|_| "a witness key is not standard base64")?;
        let public: [u8; 32] = match key.split_first() {
            Some((&ALG_COSIGNATURE_V1, public)) => public
                .try_into()
                .map_err(|_| "a witness key's Ed25519 key is not 32 bytes")?,
            _ => return Err("not a cosignature v1 key (algorithm byte 0x04)".into()),
        };
        let verifying = ed25519_dalek::VerifyingKey::from_bytes(&public)
            .ok()
            .filter(|k| !k.is_weak())
            .ok_or("a witness key is not a valid Ed25519 key")?;
        if cosigner_key_id(name, &public) != id {
            return Err(format!(
                "the key id of witness key {name} is not that of its key"
            ));
        }
        Ok(WitnessKey {
            name: name.to_owned(),
            id,
            key: verifying,
        })
    }
}

/// The key id of a cosigner key: SHA-256(name ‖ "\n" ‖ 0x04 ‖ key)[..4].
pub fn cosigner_key_id(name: &str, public: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ALG_COSIGNATURE_V1]);
    h.update(public);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

impl WitnessKey {
    /// The witness's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `signature` is this witness's over `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        ed25519_dalek::Signature::from_slice(signature)
            .is_ok_and(|sig| self.key.verify_strict(message, &sig).is_ok())
    }
}

/// A note's text (up to and including the newline before the blank line)
/// and its signature lines.
fn split_note(note: &str) -> Option<(&str, Vec<&str>)> {
    let at = note.find("\n\n")?;
    let lines = note[at + 2..].strip_suffix('\n')?;
    Some((&note[..=at], lines.split('\n').collect()))
}

/// The name and decoded blob of a signature line.
fn signature_of(line: &str) -> Option<(&str, Vec<u8>)> {
    let (name, blob) = line.strip_prefix("\u{2014} ")?.split_once(' ')?;
    let blob = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .ok()?;
    Some((name, blob))
}

/// The witness (of `witnesses`) that made signature `line`, and the time
/// of its cosignature, if the line is a witness's.
fn witness_of<'a>(line: &str, witnesses: &'a [WitnessKey]) -> Option<(&'a WitnessKey, Vec<u8>)> {
    let (name, blob) = signature_of(line)?;
    let witness = witnesses
        .iter()
        .find(|w| w.name == name && blob.get(..4) == Some(&w.id[..]))?;
    Some((witness, blob))
}

/// The stored note `stored` with the cosignatures of `submitted` (the same
/// checkpoint, with the cosignature lines of one or more of `witnesses`)
/// added: each replaces an older one by the same witness (one no newer
/// than the stored one changes nothing). Returns the new note and the
/// (witness name, time) of each cosignature taken (none: the note is as
/// stored). `now` is seconds since the Unix epoch.
pub fn merge_cosignatures(
    stored: &str,
    submitted: &str,
    witnesses: &[WitnessKey],
    now: u64,
) -> crate::Result<(String, Vec<(String, u64)>)> {
    use crate::Error;
    let bad = |why: &str| Error::InvalidArgument(format!("the cosigned checkpoint {why}"));
    let (text, kept) = split_note(stored).ok_or(Error::Integrity)?;
    let (submitted_text, lines) =
        split_note(submitted).ok_or_else(|| bad("is not a signed note"))?;
    if submitted_text != text {
        return Err(bad("is not the checkpoint this vault signed at that size"));
    }
    // A witness named like the log could make a line that clients take for
    // the vault's own (same name, a key id ground to match).
    let origin = text.split('\n').next().unwrap_or_default();
    let mut taken: Vec<(&WitnessKey, u64, &str)> = Vec::new();
    for line in lines {
        let Some((witness, blob)) = witness_of(line, witnesses) else {
            continue;
        };
        if witness.name == origin {
            return Err(bad(&format!(
                "has a cosignature of witness {origin}, the log's own name"
            )));
        }
        if blob.len() != 4 + 8 + 64 {
            return Err(bad(&format!(
                "has a cosignature line of witness {} that is not 76 bytes",
                witness.name
            )));
        }
        let mut time = [0u8; 8];
        time.copy_from_slice(&blob[4..12]);
        let time = u64::from_be_bytes(time);
        let message = format!("cosignature/v1\ntime {time}\n{text}");
        if !witness.verifies(message.as_bytes(), &blob[12..]) {
            return Err(bad(&format!(
                "has a cosignature of witness {} that does not verify",
                witness.name
            )));
        }
        if time > now.saturating_add(MAX_FUTURE_SECS) {
            return Err(bad(&format!(
                "has a cosignature of witness {} dated more than ten minutes ahead of this \
                 server's clock",
                witness.name
            )));
        }
        // Of two lines by one witness, the later counts.
        match taken.iter_mut().find(|(w, _, _)| *w == witness) {
            Some(entry) if entry.1 < time => *entry = (witness, time, line),
            Some(_) => {}
            None => taken.push((witness, time, line)),
        }
    }
    if taken.is_empty() {
        return Err(Error::PermissionDenied(
            "no cosignature by a witness this vault takes ([audit] witnesses)".into(),
        ));
    }
    // A stored line gives way only to a newer one by the same witness: a
    // cosignature replayed from an older note changes nothing.
    let stored_time = |w: &WitnessKey| {
        kept.iter()
            .filter_map(|line| witness_of(line, witnesses))
            .filter(|(k, _)| *k == w)
            .filter_map(|(_, blob)| blob.get(4..12).and_then(|t| t.try_into().ok()))
            .map(u64::from_be_bytes)
            .max()
    };
    taken.retain(|(w, time, _)| stored_time(w).is_none_or(|t| t < *time));
    let mut out: Vec<&str> = Vec::new();
    for line in &kept {
        match witness_of(line, witnesses) {
            // An older cosignature by a witness that cosigned again goes.
            Some((w, _)) if taken.iter().any(|(t, _, _)| *t == w) => {}
            _ => out.push(line),
        }
    }
    out.extend(taken.iter().map(|(_, _, line)| *line));
    let mut note = format!("{text}\n");
    for line in out {
        note.push_str(line);
        note.push('\n');
    }
    Ok((
        note,
        taken
            .into_iter()
            .map(|(w, t, _)| (w.name.clone(), t))
            .collect(),
    ))
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

    /// A witness key and its verifier text.
    fn witness(name: &str, seed: u8) -> (SigningKey, WitnessKey) {
        let key = SigningKey::from_bytes(&[seed; 32]);
        let public = key.verifying_key().to_bytes();
        let mut blob = vec![ALG_COSIGNATURE_V1];
        blob.extend_from_slice(&public);
        let text = format!(
            "{name}+{}+{}",
            hex::encode(cosigner_key_id(name, &public)),
            base64::engine::general_purpose::STANDARD.encode(blob)
        );
        (key, text.parse().unwrap())
    }

    fn cosign(name: &str, key: &SigningKey, text: &str, time: u64) -> String {
        let public = key.verifying_key().to_bytes();
        let message = format!("cosignature/v1\ntime {time}\n{text}");
        let mut blob = cosigner_key_id(name, &public).to_vec();
        blob.extend_from_slice(&time.to_be_bytes());
        blob.extend_from_slice(&key.sign(message.as_bytes()).to_bytes());
        format!(
            "\u{2014} {name} {}\n",
            base64::engine::general_purpose::STANDARD.encode(blob)
        )
    }

    #[test]
    fn witness_keys_parse_strictly() {
        let (_, key) = witness("w.example/1", 4);
        assert_eq!(key.name(), "w.example/1");
        let vault = verifier_key("o", &SigningKey::from_bytes(&[7u8; 32]));
        assert!(vault.parse::<WitnessKey>().unwrap_err().contains("0x04"));
        for bad in ["", "a+b", "a+zzzzzzzz+AAAA", "a b+00000000+BA=="] {
            assert!(bad.parse::<WitnessKey>().is_err(), "{bad}");
        }
        let text = format!("{key:?}");
        assert!(text.starts_with("WitnessKey(w.example/1+"), "{text}");
    }

    #[test]
    fn cosignatures_are_verified_merged_and_replaced() {
        let vault = SigningKey::from_bytes(&[7u8; 32]);
        let stored = sign("o", 5, &[9u8; 32], &vault);
        let text = body("o", 5, &[9u8; 32]);
        let (k1, w1) = witness("w.example/1", 4);
        let (k2, w2) = witness("w.example/2", 5);
        let (k3, _) = witness("w.example/3", 6);
        let witnesses = [w1, w2];
        let now = 1_000_000;

        let submitted = format!("{stored}{}", cosign("w.example/1", &k1, &text, now));
        let (note, taken) = merge_cosignatures(&stored, &submitted, &witnesses, now).unwrap();
        assert_eq!(taken, vec![("w.example/1".to_owned(), now)]);
        assert_eq!(note, submitted);
        assert_eq!(parse(note.as_bytes()), Some((5, [9u8; 32])));

        // A second witness adds its line; the first one's newer line
        // replaces its older one.
        let second = format!("{stored}{}", cosign("w.example/2", &k2, &text, now));
        let (note, _) = merge_cosignatures(&note, &second, &witnesses, now).unwrap();
        let newer = format!("{stored}{}", cosign("w.example/1", &k1, &text, now + 60));
        let (note, taken) = merge_cosignatures(&note, &newer, &witnesses, now + 60).unwrap();
        assert_eq!(taken, vec![("w.example/1".to_owned(), now + 60)]);
        // The older one again (replayed from an earlier note): nothing
        // taken, nothing changed.
        assert_eq!(
            merge_cosignatures(&note, &submitted, &witnesses, now + 60).unwrap(),
            (note.clone(), Vec::new())
        );
        assert_eq!(note.matches("\u{2014} w.example/1 ").count(), 1);
        assert_eq!(note.matches("\u{2014} w.example/2 ").count(), 1);
        assert!(note.starts_with(&stored));

        // Refused: an unknown witness only; a bad signature; another
        // checkpoint; a time far ahead.
        let unknown = format!("{stored}{}", cosign("w.example/3", &k3, &text, now));
        assert!(matches!(
            merge_cosignatures(&stored, &unknown, &witnesses, now),
            Err(crate::Error::PermissionDenied(_))
        ));
        let other_text = body("o", 5, &[8u8; 32]);
        let wrong_sig = format!("{stored}{}", cosign("w.example/1", &k1, &other_text, now));
        assert!(matches!(
            merge_cosignatures(&stored, &wrong_sig, &witnesses, now),
            Err(crate::Error::InvalidArgument(m)) if m.contains("does not verify")
        ));
        let other = sign("o", 5, &[8u8; 32], &vault);
        let moved = format!("{other}{}", cosign("w.example/1", &k1, &other_text, now));
        assert!(matches!(
            merge_cosignatures(&stored, &moved, &witnesses, now),
            Err(crate::Error::InvalidArgument(m)) if m.contains("not the checkpoint")
        ));
        let ahead = format!("{stored}{}", cosign("w.example/1", &k1, &text, now + 3600));
        assert!(matches!(
            merge_cosignatures(&stored, &ahead, &witnesses, now),
            Err(crate::Error::InvalidArgument(m)) if m.contains("ahead")
        ));
        assert!(merge_cosignatures(&stored, "junk", &witnesses, now).is_err());
        // A witness named like the log is refused.
        let (k0, w0) = witness("o", 7);
        let named_like_log = format!("{stored}{}", cosign("o", &k0, &text, now));
        assert!(matches!(
            merge_cosignatures(&stored, &named_like_log, &[w0], now),
            Err(crate::Error::InvalidArgument(m)) if m.contains("the log's own name")
        ));
    }
}
