//! Unseal-key shares for M-of-N custody (Shamir's secret sharing over
//! GF(256), from the `blahaj` crate).
//!
//! A share as custodians handle it is one line of text,
//! `vault-share-v1:` followed by the hex of:
//!
//! ```text
//!  0      1                17          18      19   20              52        56
//!  +------+----------------+-----------+-------+----+---------------+---------+
//!  | ver  | share-set id   | threshold | total | x  | y (32 bytes)  | check   |
//!  | =1   | (16 random B)  | M         | N     |    |               | 4 bytes |
//!  +------+----------------+-----------+-------+----+---------------+---------+
//! ```
//!
//! `check` is the first four bytes of SHA-256(`labels::SHARE` ‖ bytes 0..52):
//! it catches a mistyped or truncated share at once. It is not a MAC: a
//! deliberately forged share passes it, and is caught only when the combined
//! key fails to open the keyring. The share-set id ties the shares of one
//! split together, so a share from another vault or another split is refused
//! before it is used.

use std::fmt;

use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::crypto::Key256;

/// Prefix of a share's text form.
pub const SHARE_PREFIX: &str = "vault-share-v1:";
const SHARE_V1: u8 = 1;
const LEN: usize = 1 + 16 + 1 + 1 + 1 + 32 + 4;
const CHECKED: usize = LEN - 4;
/// Domain label of the share checksum.
const SHARE_LABEL: &[u8] = b"vault/v1/share";

/// Why a share or a set of shares was refused. Messages say nothing about
/// the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShareError {
    /// Not a share: wrong prefix, not hex, wrong length.
    #[error("not an unseal share")]
    Malformed,
    /// A share format version this build does not know.
    #[error("unseal share version {0} is not supported")]
    UnknownVersion(u8),
    /// The checksum does not match: a typo or a truncated copy.
    #[error("the unseal share is corrupted (checksum mismatch)")]
    Corrupted,
    /// The share belongs to another split (another vault, or an older init).
    #[error("the unseal share belongs to another set of shares")]
    Foreign,
    /// This share (the same index) was already given.
    #[error("this unseal share was already given")]
    Duplicate,
    /// Two different shares with the same index: one of them is forged.
    /// The progress is reset.
    #[error("two different shares with the same index were given (one is forged); unseal progress was reset")]
    Conflicting,
    /// Threshold and share count out of range.
    #[error("invalid split: need 1 <= threshold <= shares <= 255")]
    BadParameters,
    /// Threshold 1 with more than one share: every share would be the
    /// whole unseal key.
    #[error(
        "threshold 1 with {0} shares would make every share the whole unseal key; \
         use a threshold of 2 or more (or a single share)"
    )]
    EveryShareIsTheKey(u8),
    /// Fewer shares than the threshold.
    #[error("not enough unseal shares")]
    NotEnough,
}

/// One custodian's share of the unseal key. `Debug` shows only its position.
#[derive(Clone)]
pub struct UnsealShare {
    set_id: [u8; 16],
    threshold: u8,
    total: u8,
    x: u8,
    y: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for UnsealShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "UnsealShare({} of {}, threshold {})",
            self.x, self.total, self.threshold
        )
    }
}

impl UnsealShare {
    /// The share-set id common to every share of one split.
    pub fn set_id(&self) -> [u8; 16] {
        self.set_id
    }

    /// How many shares open the key.
    pub fn threshold(&self) -> u8 {
        self.threshold
    }

    /// How many shares the split made.
    pub fn total(&self) -> u8 {
        self.total
    }

    /// Whether this share belongs to the share set `custody` names (its
    /// id, M and N), as a keyring's clear header gives it.
    pub fn is_of(&self, custody: &super::Custody) -> bool {
        self.set_id == custody.set_id
            && self.threshold == custody.threshold
            && self.total == custody.shares
    }

    /// This share's index, 1 to total.
    pub fn index(&self) -> u8 {
        self.x
    }

    fn bytes(&self) -> Zeroizing<[u8; LEN]> {
        let mut b = Zeroizing::new([0u8; LEN]);
        b[0] = SHARE_V1;
        b[1..17].copy_from_slice(&self.set_id);
        b[17] = self.threshold;
        b[18] = self.total;
        b[19] = self.x;
        b[20..52].copy_from_slice(self.y.as_ref());
        let check = checksum(&b[..CHECKED]);
        b[CHECKED..].copy_from_slice(&check);
        b
    }

    /// The share's text form, shown once to its custodian.
    pub fn encode(&self) -> Zeroizing<String> {
        let mut s = Zeroizing::new(String::with_capacity(SHARE_PREFIX.len() + 2 * LEN));
        s.push_str(SHARE_PREFIX);
        s.push_str(&Zeroizing::new(hex::encode(&self.bytes()[..])));
        s
    }

    /// Parses a share's text form (surrounding white space is ignored).
    pub fn parse(text: &str) -> Result<UnsealShare, ShareError> {
        let hex_part = text
            .trim()
            .strip_prefix(SHARE_PREFIX)
            .ok_or(ShareError::Malformed)?;
        let mut b = Zeroizing::new([0u8; LEN]);
        hex::decode_to_slice(hex_part, b.as_mut()).map_err(|_| ShareError::Malformed)?;
        if b[0] != SHARE_V1 {
            return Err(ShareError::UnknownVersion(b[0]));
        }
        if checksum(&b[..CHECKED]) != b[CHECKED..] {
            return Err(ShareError::Corrupted);
        }
        let (threshold, total, x) = (b[17], b[18], b[19]);
        if threshold == 0 || threshold > total || x == 0 || x > total {
            return Err(ShareError::Malformed);
        }
        let mut set_id = [0u8; 16];
        set_id.copy_from_slice(&b[1..17]);
        let mut y = Zeroizing::new([0u8; 32]);
        y.copy_from_slice(&b[20..52]);
        Ok(UnsealShare {
            set_id,
            threshold,
            total,
            x,
            y,
        })
    }
}

fn checksum(bytes: &[u8]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(SHARE_LABEL);
    h.update(bytes);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// Checks the parameters of a split: 1 <= threshold <= total, and no
/// threshold of 1 with more than one share (each share would then be the
/// key itself: custody by one person, N times over). A single share (1 of
/// 1, dev mode) is allowed.
pub fn check_split(threshold: u8, total: u8) -> Result<(), ShareError> {
    if threshold == 0 || threshold > total {
        return Err(ShareError::BadParameters);
    }
    if threshold == 1 && total > 1 {
        return Err(ShareError::EveryShareIsTheKey(total));
    }
    Ok(())
}

/// Splits `key` into `total` shares, any `threshold` of which rebuild it.
/// Refuses what [`check_split`] refuses.
pub fn split(key: &Key256, threshold: u8, total: u8) -> Result<Vec<UnsealShare>, ShareError> {
    check_split(threshold, total)?;
    let mut set_id = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut set_id);
    // The polynomials' coefficients come from the operating system's
    // generator too (blahaj's `dealer` would use a thread-local one).
    let mut os = rand_sys::rngs::SysRng;
    let mut rng = rand_sys::rand_core::UnwrapErr(&mut os);
    let dealer = blahaj::Sharks(threshold).dealer_rng(key.expose_secret(), &mut rng);
    let mut shares = Vec::with_capacity(total as usize);
    for share in dealer.take(total as usize) {
        let raw = Zeroizing::new(Vec::from(&share));
        // blahaj shares are x ‖ y, one y byte per secret byte, x from 1 up.
        let mut y = Zeroizing::new([0u8; 32]);
        y.copy_from_slice(raw.get(1..33).ok_or(ShareError::Malformed)?);
        shares.push(UnsealShare {
            set_id,
            threshold,
            total,
            x: raw[0],
            y,
        });
    }
    Ok(shares)
}

/// Collects shares one at a time, as custodians hand them in, refusing
/// foreign and repeated ones, until the threshold is reached.
#[derive(Debug, Default)]
pub struct ShareCollector {
    shares: Vec<UnsealShare>,
}

/// Where an unseal stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Shares accepted so far.
    pub have: u8,
    /// Shares needed.
    pub need: u8,
}

impl ShareCollector {
    /// An empty collector.
    pub fn new() -> Self {
        Self::default()
    }

    /// Shares accepted so far, and the threshold (0 before the first share).
    pub fn progress(&self) -> Progress {
        Progress {
            have: self.shares.len() as u8,
            need: self.shares.first().map_or(0, |s| s.threshold),
        }
    }

    /// Adds a share. The first share fixes the set; later ones must match it.
    pub fn add(&mut self, share: UnsealShare) -> Result<Progress, ShareError> {
        if let Some(first) = self.shares.first() {
            if share.set_id != first.set_id
                || share.threshold != first.threshold
                || share.total != first.total
            {
                return Err(ShareError::Foreign);
            }
            if let Some(same) = self.shares.iter().find(|s| s.x == share.x) {
                // Compare the secret parts in constant time.
                if bool::from(subtle::ConstantTimeEq::ct_eq(
                    same.y.as_slice(),
                    share.y.as_slice(),
                )) {
                    return Err(ShareError::Duplicate);
                }
                self.clear();
                return Err(ShareError::Conflicting);
            }
        }
        self.shares.push(share);
        Ok(self.progress())
    }

    /// Rebuilds the key once the threshold is reached. The caller checks it
    /// (it must open the keyring) and calls [`ShareCollector::clear`] either way.
    pub fn combine(&self) -> Result<Key256, ShareError> {
        let Progress { have, need } = self.progress();
        if need == 0 || have < need {
            return Err(ShareError::NotEnough);
        }
        let shares: Vec<blahaj::Share> = self
            .shares
            .iter()
            .map(|s| {
                let mut raw = Zeroizing::new(Vec::with_capacity(33));
                raw.push(s.x);
                raw.extend_from_slice(s.y.as_ref());
                blahaj::Share::try_from(raw.as_slice()).map_err(|_| ShareError::Malformed)
            })
            .collect::<Result<_, _>>()?;
        let secret = Zeroizing::new(
            blahaj::Sharks(need)
                .recover(&shares)
                .map_err(|_| ShareError::NotEnough)?,
        );
        Key256::from_slice(&secret).ok_or(ShareError::Malformed)
    }

    /// Forgets every share given so far.
    pub fn clear(&mut self) {
        self.shares.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(shares: &[&UnsealShare]) -> Result<Key256, ShareError> {
        let mut c = ShareCollector::new();
        for s in shares {
            c.add((*s).clone())?;
        }
        c.combine()
    }

    #[test]
    fn three_of_five_in_any_order() {
        let key = Key256::random();
        let shares = split(&key, 3, 5).unwrap();
        assert_eq!(shares.len(), 5);
        let orders: [[usize; 3]; 4] = [[0, 1, 2], [4, 2, 0], [3, 1, 4], [2, 4, 3]];
        for order in orders {
            let picked: Vec<_> = order.iter().map(|&i| &shares[i]).collect();
            assert_eq!(
                collect(&picked).unwrap().expose_secret(),
                key.expose_secret(),
                "{order:?}"
            );
        }
        // More than the threshold works too.
        let all: Vec<_> = shares.iter().collect();
        assert_eq!(collect(&all).unwrap().expose_secret(), key.expose_secret());
    }

    #[test]
    fn two_of_three_needed_shares_are_not_enough() {
        let shares = split(&Key256::random(), 3, 5).unwrap();
        let mut c = ShareCollector::new();
        assert_eq!(
            c.add(shares[0].clone()).unwrap(),
            Progress { have: 1, need: 3 }
        );
        assert_eq!(
            c.add(shares[1].clone()).unwrap(),
            Progress { have: 2, need: 3 }
        );
        assert!(matches!(c.combine(), Err(ShareError::NotEnough)));
    }

    #[test]
    fn foreign_and_duplicate_shares_are_refused() {
        let a = split(&Key256::random(), 2, 3).unwrap();
        let b = split(&Key256::random(), 2, 3).unwrap();
        let mut c = ShareCollector::new();
        c.add(a[0].clone()).unwrap();
        assert_eq!(c.add(b[1].clone()).unwrap_err(), ShareError::Foreign);
        assert_eq!(c.add(a[0].clone()).unwrap_err(), ShareError::Duplicate);
        assert_eq!(c.progress(), Progress { have: 1, need: 2 });
        // A different share under a taken index: someone forged one of the
        // two; both are dropped.
        let mut forged = a[0].clone();
        forged.y[3] ^= 1;
        assert_eq!(c.add(forged).unwrap_err(), ShareError::Conflicting);
        assert_eq!(c.progress(), Progress { have: 0, need: 0 });
        c.add(a[0].clone()).unwrap();
        c.add(a[2].clone()).unwrap();
        assert!(c.combine().is_ok());
        c.clear();
        assert_eq!(c.progress(), Progress { have: 0, need: 0 });
    }

    #[test]
    fn text_form_round_trips_and_refuses_damage() {
        let key = Key256::random();
        let shares = split(&key, 2, 2).unwrap();
        let text = shares[0].encode();
        assert!(text.starts_with(SHARE_PREFIX));
        let back = UnsealShare::parse(&format!("  {}\n", text.as_str())).unwrap();
        assert_eq!(back.index(), shares[0].index());
        assert_eq!(back.set_id(), shares[0].set_id());
        assert_eq!(
            collect(&[&back, &shares[1]]).unwrap().expose_secret(),
            key.expose_secret()
        );

        // Every single-character typo in the hex is caught.
        let hex_start = SHARE_PREFIX.len();
        for i in hex_start..text.len() {
            let mut t = text.to_string().into_bytes();
            t[i] = if t[i] == b'0' { b'1' } else { b'0' };
            let t = String::from_utf8(t).unwrap();
            assert!(UnsealShare::parse(&t).is_err(), "typo at {i} accepted");
        }
        // Truncations, other prefixes, non-hex.
        for n in 0..text.len() {
            assert!(UnsealShare::parse(&text[..n]).is_err());
        }
        assert_eq!(
            UnsealShare::parse("vault-share-v1:zz").unwrap_err(),
            ShareError::Malformed
        );
        assert_eq!(
            UnsealShare::parse(&text.replace("v1:", "v2:")).unwrap_err(),
            ShareError::Malformed
        );
    }

    #[test]
    fn debug_and_parameters() {
        let shares = split(&Key256::random(), 1, 1).unwrap();
        assert_eq!(
            format!("{:?}", shares[0]),
            "UnsealShare(1 of 1, threshold 1)"
        );
        assert_eq!(
            split(&Key256::random(), 0, 1).unwrap_err(),
            ShareError::BadParameters
        );
        assert_eq!(
            split(&Key256::random(), 3, 2).unwrap_err(),
            ShareError::BadParameters
        );
        // Threshold 1 of several: every share would be the key.
        let err = split(&Key256::random(), 1, 3).unwrap_err();
        assert_eq!(err, ShareError::EveryShareIsTheKey(3));
        assert!(err.to_string().contains("every share the whole unseal key"));
        assert_eq!(check_split(1, 1), Ok(()));
        assert_eq!(check_split(2, 255), Ok(()));
        // 1-of-1 (dev mode) combines from its one share.
        assert!(collect(&[&shares[0]]).is_ok());
    }

    #[test]
    fn a_forged_share_with_a_valid_checksum_gives_a_wrong_key_not_a_panic() {
        let key = Key256::random();
        let shares = split(&key, 2, 3).unwrap();
        let mut forged = shares[1].clone();
        forged.y[0] ^= 1;
        let forged = UnsealShare::parse(&forged.encode()).unwrap();
        let got = collect(&[&shares[0], &forged]).unwrap();
        assert_ne!(got.expose_secret(), key.expose_secret());
    }
}
