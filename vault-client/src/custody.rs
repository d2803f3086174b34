//! Key custody: the results of the `OperatorService` calls (`vault.v1`
//! custody contract) as plain Rust types.
//!
//! Unseal shares are secrets: [`UnsealShare`] keeps its text in a zeroizing
//! buffer and its `Debug` shows nothing of it; the text is reachable only
//! through [`UnsealShare::expose_secret`].

use std::fmt;

use zeroize::Zeroizing;

/// One custodian's unseal share, in its text form (`vault-share-v1:…`).
///
/// The text is wiped from memory when the share is dropped, and `Debug`
/// redacts it. The client's own copies are zeroized; the bytes that the gRPC
/// transport buffers on the way to or from the vault are beyond its reach.
#[derive(Clone)]
pub struct UnsealShare(Zeroizing<String>);

impl UnsealShare {
    /// A share from its text; surrounding whitespace (a trailing newline of
    /// a file or a pasted line) is dropped in place, without a copy.
    pub fn new(text: impl Into<String>) -> Self {
        let mut text = Zeroizing::new(text.into());
        let end = text.trim_end().len();
        text.truncate(end);
        let start = text.len() - text.trim_start().len();
        text.drain(..start);
        Self(text)
    }

    /// The share's text. Every use of it is a place where the secret leaves
    /// this type: print it, write it to a file, or send it to the vault.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// Whether the share has no text.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for UnsealShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UnsealShare(<redacted>)")
    }
}

/// What [`VaultClient::init`](crate::VaultClient::init) returns: the new
/// keyring's region and the unseal shares, shown once and never stored by
/// the vault. `Debug` redacts the shares.
#[derive(Debug, Clone)]
pub struct Initialized {
    /// The region the new keyring is bound to.
    pub region: String,
    /// Shares needed to unseal.
    pub threshold: u32,
    /// The shares, one per custodian, as the vault returned them (empty
    /// when they were encrypted to recipients).
    pub shares: Vec<UnsealShare>,
    /// With recipients: share i encrypted to recipient i (ASCII-armored age
    /// files, openable only with that custodian's identity).
    pub encrypted_shares: Vec<String>,
}

/// Where a rekey stands after one share
/// ([`VaultClient::rekey`](crate::VaultClient::rekey)). `Debug` redacts
/// the new shares.
#[derive(Debug, Clone, Default)]
pub struct RekeyProgress {
    /// True once the rekey is done (this call gave the last share).
    pub complete: bool,
    /// Current shares accepted towards the rekey (0 once complete).
    pub progress: u32,
    /// Current shares needed.
    pub required: u32,
    /// When complete: the new shares in clear (no recipients given) …
    pub shares: Vec<UnsealShare>,
    /// … or each encrypted to its recipient (ASCII-armored age files).
    pub encrypted_shares: Vec<String>,
    /// When complete: shares needed and made by the new split.
    pub threshold: u32,
    /// When complete: shares made.
    pub share_count: u32,
    /// When complete: the keyring's new generation.
    pub keyring_generation: u64,
    /// When complete: the vault could not reopen and is sealed (unseal it
    /// with the new shares).
    pub sealed: bool,
}

/// Unseal progress after one share
/// ([`VaultClient::unseal`](crate::VaultClient::unseal)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnsealProgress {
    /// Whether the vault is still sealed.
    pub sealed: bool,
    /// Distinct shares accepted so far (0 once unsealed).
    pub progress: u32,
    /// Shares needed.
    pub threshold: u32,
}

/// The vault's custody state ([`VaultClient::status`](crate::VaultClient::status)).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SealStatus {
    /// False until the vault has a keyring.
    pub initialized: bool,
    /// Whether the vault is sealed (it then serves no data).
    pub sealed: bool,
    /// The vault's region.
    pub region: String,
    /// Shares needed to unseal.
    pub threshold: u32,
    /// Shares made at init.
    pub shares: u32,
    /// Shares accepted towards the next unseal.
    pub progress: u32,
    /// The current root key version; `None` while sealed.
    pub current_root_version: Option<u32>,
    /// Every root key version (empty while sealed). The status does not
    /// count wrapped subject keys, so their
    /// [`wrapped_subject_keys`](RootKeyInfo::wrapped_subject_keys) are 0;
    /// [`VaultClient::root_keys`](crate::VaultClient::root_keys) counts them.
    pub root_keys: Vec<RootKeyInfo>,
    /// The Ed25519 public key that verifies erasure receipts; `None` while
    /// sealed.
    pub signing_public_key: Option<[u8; 32]>,
    /// Keys a root key version may wrap before the vault asks for a root
    /// rotation (NIST SP 800-38D bounds random nonces at 2^32 per key).
    pub rotate_root_after_wraps: u64,
    /// The current root key has wrapped that many keys: rotate it.
    pub root_rotation_due: bool,
    /// How the vault's port is reached: `plaintext (loopback)`,
    /// `plaintext (allowed on any address)`, `TLS` or `mutual TLS`.
    pub transport: String,
    /// How the unseal key is kept: `shamir` or `pkcs11` (empty before init).
    pub seal: String,
    /// Under the PKCS#11 seal: the HSM token and key.
    pub seal_identity: Option<String>,
    /// While sealed: why the last unseal by the HSM failed.
    pub seal_message: Option<String>,
    /// The builds the key release gate lets through (none: the gate is off).
    pub approved_builds: Vec<[u8; 48]>,
    /// What the server presents to the gate: `none`, `self-reported` or
    /// `nitro`.
    pub evidence: String,
    /// The server's measurement, if it presents one.
    pub measurement: Option<[u8; 48]>,
    /// Whether a verified attestation document vouches for the
    /// measurement, as the server reports it.
    pub attested: bool,
    /// With Nitro evidence: the pinned root's SHA-256 and the enclave of
    /// the last verified document.
    pub attestation_identity: Option<String>,
}

impl SealStatus {
    /// Whether the server's measurement is among the approved builds
    /// (`None` while no build is approved: the gate is off).
    pub fn measurement_approved(&self) -> Option<bool> {
        if self.approved_builds.is_empty() {
            return None;
        }
        Some(
            self.measurement
                .is_some_and(|m| self.approved_builds.contains(&m)),
        )
    }
}

/// The life of a root key version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyState {
    /// Unwraps subject keys, and wraps them too if it is the current version.
    Active,
    /// Unwraps no more; kept until destroyed.
    Retired,
    /// Its bytes are gone from the keyring.
    Destroyed,
}

impl KeyState {
    /// `active`, `retired` or `destroyed`.
    pub const fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::Retired => "retired",
            KeyState::Destroyed => "destroyed",
        }
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One root key version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootKeyInfo {
    /// The version number.
    pub version: u32,
    /// Its state.
    pub state: KeyState,
    /// Whether new subject keys are wrapped under it.
    pub current: bool,
    /// Subject keys wrapped under it (counted by
    /// [`VaultClient::root_keys`](crate::VaultClient::root_keys) only).
    pub wrapped_subject_keys: u64,
    /// Keys it has wrapped, ever: each one AES-GCM encryption under a
    /// random nonce, bounded at 2^32 per key (NIST SP 800-38D).
    pub wraps: u64,
}

/// Every root key version ([`VaultClient::root_keys`](crate::VaultClient::root_keys)).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RootKeys {
    /// The current version.
    pub current_version: u32,
    /// Every version, as the vault lists them.
    pub versions: Vec<RootKeyInfo>,
}

/// Progress of the job that re-wraps subject keys under the current root
/// key ([`VaultClient::rewrap_status`](crate::VaultClient::rewrap_status)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RewrapProgress {
    /// The version subject keys are re-wrapped to (the current one).
    pub target_version: u32,
    /// True once every subject key is wrapped under the target version.
    pub finished: bool,
    /// Subject keys re-wrapped by this job so far.
    pub rewrapped: u64,
    /// Subject keys that needed a re-wrap when the job started.
    pub pending_at_start: u64,
    /// Subject keys examined so far (all versions).
    pub examined: u64,
    /// Subject keys that could not be unwrapped (damaged, or under a root
    /// version no longer available): left as they are. While any remain
    /// under an old version, that version cannot be retired.
    pub unreadable: u64,
    /// Wrapped keys of erased subjects (from a restored backup) removed.
    pub removed_erased: u64,
}

impl RewrapProgress {
    /// Whole percent done, 0 to 100: `rewrapped` of `pending_at_start`
    /// (100 when the job is finished or had nothing to do).
    pub fn percent(&self) -> u8 {
        if self.finished || self.pending_at_start == 0 {
            return 100;
        }
        let done = u128::from(self.rewrapped.min(self.pending_at_start));
        let percent = done * 100 / u128::from(self.pending_at_start);
        // done <= pending, so percent <= 100.
        u8::try_from(percent).unwrap_or(100)
    }
}

/// Progress of the job that rebuilds the blind index under the current
/// index key after an index-key rotation
/// ([`VaultClient::reindex_status`](crate::VaultClient::reindex_status)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReindexProgress {
    /// The index key version rows are rebuilt under (the current one).
    pub target_version: u32,
    /// True once every index row is of the target version and the older
    /// version is destroyed.
    pub finished: bool,
    /// Records examined by this job so far.
    pub examined: u64,
    /// Records whose rows this job made again under the target version.
    pub reindexed: u64,
    /// Records of erased subjects (from a restored backup) and index rows
    /// whose record is gone: their older rows removed, none made.
    pub skipped: u64,
    /// Records that could not be read (damaged: their older rows removed,
    /// none made) and index rows that name no record (left as they are).
    pub unreadable: u64,
    /// Records listed in the index when the job started.
    pub total_at_start: u64,
}

impl ReindexProgress {
    /// Whole percent done, 0 to 100: `examined` of `total_at_start` (100
    /// when the job is finished or had nothing to do).
    pub fn percent(&self) -> u8 {
        if self.finished || self.total_at_start == 0 {
            return 100;
        }
        let done = u128::from(self.examined.min(self.total_at_start));
        let percent = done * 100 / u128::from(self.total_at_start);
        // done <= total, so percent <= 100.
        u8::try_from(percent).unwrap_or(100)
    }
}

/// The result of rotating one subject's key
/// ([`VaultClient::rotate_subject_key`](crate::VaultClient::rotate_subject_key)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubjectKeyRotation {
    /// The subject's new key version.
    pub new_version: u32,
    /// Records re-encrypted under it.
    pub records: u64,
    /// Field values re-encrypted under it.
    pub fields: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_trimmed_and_redacted() {
        let share = UnsealShare::new("  vault-share-v1:00ff\r\n");
        assert_eq!(share.expose_secret(), "vault-share-v1:00ff");
        assert!(!share.is_empty());
        assert_eq!(format!("{share:?}"), "UnsealShare(<redacted>)");
        assert!(UnsealShare::new(" \n").is_empty());

        let init = Initialized {
            region: "eu".into(),
            threshold: 2,
            shares: vec![share.clone(), UnsealShare::new("vault-share-v1:abcd")],
            encrypted_shares: Vec::new(),
        };
        let debug = format!("{init:?}");
        assert!(!debug.contains("vault-share"), "{debug}");
        assert!(debug.contains("threshold: 2"), "{debug}");
        let rekeyed = RekeyProgress {
            complete: true,
            shares: vec![share.clone()],
            ..Default::default()
        };
        let debug = format!("{rekeyed:?}");
        assert!(!debug.contains("vault-share"), "{debug}");
    }

    #[test]
    fn rewrap_percent() {
        let progress = |rewrapped, pending_at_start, finished| RewrapProgress {
            target_version: 2,
            finished,
            rewrapped,
            pending_at_start,
            examined: 0,
            unreadable: 0,
            removed_erased: 0,
        };
        assert_eq!(progress(0, 10_000, false).percent(), 0);
        assert_eq!(progress(5_200, 10_000, false).percent(), 52);
        assert_eq!(progress(9_999, 10_000, false).percent(), 99);
        assert_eq!(progress(10_000, 10_000, true).percent(), 100);
        assert_eq!(progress(0, 0, false).percent(), 100);
        assert_eq!(progress(12, 10, false).percent(), 100);
        assert_eq!(progress(u64::MAX - 1, u64::MAX, false).percent(), 99);
    }

    #[test]
    fn reindex_percent() {
        let progress = |examined, total_at_start, finished| ReindexProgress {
            target_version: 2,
            finished,
            examined,
            total_at_start,
            ..ReindexProgress::default()
        };
        assert_eq!(progress(0, 400, false).percent(), 0);
        assert_eq!(progress(100, 400, false).percent(), 25);
        assert_eq!(progress(399, 400, false).percent(), 99);
        assert_eq!(progress(400, 400, false).percent(), 100);
        assert_eq!(progress(7, 400, true).percent(), 100);
        assert_eq!(progress(0, 0, false).percent(), 100);
        assert_eq!(progress(500, 400, false).percent(), 100);
    }

    #[test]
    fn key_state_names() {
        assert_eq!(KeyState::Active.to_string(), "active");
        assert_eq!(KeyState::Retired.as_str(), "retired");
        assert_eq!(KeyState::Destroyed.as_str(), "destroyed");
    }
}
