//! The keyring: every long-lived key of one regional vault, stored in one
//! file encrypted under the unseal key and tagged with its region.
//!
//! File layout (all integers big-endian):
//!
//! ```text
//!  0      4     5       7          7+r            23+r   24+r   25+r                   end
//!  +------+-----+-------+----------+--------------+------+------+------------------------+
//!  |"RDVK"| ver | u16 r | region   | share-set id | M    | N    | wrapped contents       |
//!  |      | =2  |       | (r B)    | (16 B)       | u8   | u8   | nonce ‖ ciphertext ‖ tag|
//!  +------+-----+-------+----------+--------------+------+------+------------------------+
//!  \_______________________ header (clear, authenticated) ______/
//! ```
//!
//! Version 3 (what this build writes) adds, after N, `u32 len ‖ extension`:
//! the seal (Shamir, or the HSM key that wraps the unseal key) and the
//! approved builds, laid out in [`super::seal`]. Version 2 files read as
//! Shamir-sealed with no approved builds.
//!
//! The contents are AES-256-GCM under `derive_keyring_key(unseal key, region)`
//! with `AAD = labels::KEYRING ‖ lp(header)`. The header is readable while
//! sealed: the region (so a server of another region refuses the file with
//! a clear error) and the custody parameters (which share set unseals it,
//! M of N), so a foreign share is refused before it is combined. Editing
//! any header byte makes the contents fail to open. The region is bound
//! again through the KDF salt and inside the contents.
//!
//! The unseal key itself is never stored: custodians hold it as M-of-N
//! Shamir shares ([`super::shares`]).
//!
//! The decrypted contents are a sequence of sections `u8 tag ‖ u32 len ‖ value`:
//!
//! | tag | section | value | count |
//! |---|---|---|---|
//! | 1 | region | UTF-8 | 1 |
//! | 2 | keyring id | 16 random bytes; the data folder remembers it | 1 |
//! | 3 | created at | u64 unix seconds | 1 |
//! | 4 | root key | u32 version ‖ u8 state ‖ 32 key bytes (none when destroyed) | ≥ 1 |
//! | 5 | current root key version | u32 | 1 |
//! | 6 | index key | u32 version ‖ u8 state ‖ 32 key bytes (none when destroyed) | ≥ 1 |
//! | 7 | current index key version | u32 | 1 |
//! | 8 | pseudonym key | 32 bytes | 1 |
//! | 9 | audit signing key seed (Ed25519) | 32 bytes | 1 |
//! | 10 | erased subject | 32-byte subject storage name ‖ u32 highest erased key version | ≥ 0 |
//! | 11 | generation | u64, raised by every saved change (absent: 0) | ≤ 1 |
//! | 12 | shred-bucket key | u16 bucket ‖ u32 epoch ‖ 32 key bytes | 1 or 2 per bucket, buckets 0..K in order |
//! | 13 | shred-bucket count K | u16, before the bucket keys; every bucket must have a key | 1 |
//!
//! Unknown tags, repeated singletons, missing sections and trailing bytes are
//! refused: a keyring is either understood whole or not used at all.
//!
//! Shred-bucket keys are the secrets erasure destroys. Every subject key is
//! wrapped under a key derived from a root key *and* its bucket's key; to
//! erase a subject the vault re-wraps the other subjects of the bucket
//! under a new epoch of the bucket key and drops the old one. While that
//! runs a bucket holds two epochs (the newer wraps); a keyring saved with
//! two (a crash mid-erasure) is finished at the next unseal. A keyring
//! without shred-bucket keys was made by an older build and is refused.
//!
//! Erased subjects live here, not in the data folder, because the keyring
//! is kept and backed up apart from the data: a restored backup of the data
//! folder still holds the erased subject's wrapped keys, and this list is
//! what refuses them (see SECURITY.md, "Erasure and backups").
//!
//! The generation rises with every change the vault saves, and the data
//! folder remembers the highest it has seen: an older keyring file (a
//! restored backup, which would bring destroyed keys back and forget
//! erasures) is refused at unseal unless custodians override it.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::seal::{Measurement, Seal, SealHeader};
use super::Region;
use crate::crypto::{derive_keyring_key, labels, open_wrapped, put_lp, seal_wrapped, Key256};

const MAGIC: &[u8; 4] = b"RDVK";
/// The keyring file format of builds before seals (read, not written).
/// (Version 1, of the first development builds, kept an unseal key file;
/// it is refused.)
pub const KEYRING_FILE_V2: u8 = 2;
/// The keyring file format this build writes: v2 and the seal extension.
pub const KEYRING_FILE_V3: u8 = 3;
/// At most this many bytes of header extension.
const MAX_EXTENSION: usize = 16 * 1024;

const TAG_REGION: u8 = 1;
const TAG_ID: u8 = 2;
const TAG_CREATED_AT: u8 = 3;
const TAG_ROOT_KEY: u8 = 4;
const TAG_CURRENT_ROOT: u8 = 5;
const TAG_INDEX_KEY: u8 = 6;
const TAG_CURRENT_INDEX: u8 = 7;
const TAG_PSEUDONYM_KEY: u8 = 8;
const TAG_AUDIT_SEED: u8 = 9;
const TAG_ERASED_SUBJECT: u8 = 10;
const TAG_GENERATION: u8 = 11;
const TAG_SHRED_KEY: u8 = 12;
const TAG_SHRED_COUNT: u8 = 13;

/// Shred buckets of a new keyring: an erasure re-wraps about
/// subjects / 1024 keys (a thousand with a million subjects), and the
/// keyring holds 1024 keys (about 43 KB).
pub const SHRED_BUCKETS: u16 = 1024;

/// Which share set unseals a keyring: in the clear header of its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Custody {
    /// The id every share of the set carries.
    pub set_id: [u8; 16],
    /// Shares needed (M).
    pub threshold: u8,
    /// Shares made (N).
    pub shares: u8,
}

/// A keyed hash that names a subject without its id.
pub type SubjectPseudonym = [u8; 32];

/// Why a keyring could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyringError {
    /// Not a keyring file, or its structure does not add up.
    #[error("malformed keyring file: {0}")]
    Malformed(&'static str),
    /// A format version this build does not know.
    #[error("keyring file version {0} is not supported")]
    UnknownVersion(u8),
    /// The keyring belongs to another region than the server is configured for.
    #[error("the keyring is bound to region {keyring}; this server is configured for region {configured}")]
    WrongRegion {
        /// The keyring's region.
        keyring: String,
        /// The server's configured region.
        configured: String,
    },
    /// The unseal key does not open the keyring (or the file was altered).
    #[error("the unseal key does not open this keyring (wrong key, or the file was altered)")]
    WrongUnsealKey,
    /// A key version that is not in the keyring or whose key is destroyed.
    #[error("root key version {0} is not available")]
    RootKeyUnavailable(u32),
    /// The data folder was made with another keyring.
    #[error("the data folder belongs to another keyring")]
    ForeignDataFolder,
    /// The keyring is older than the data folder has seen: a restored
    /// keyring file, which would bring destroyed keys back and forget
    /// erasures.
    #[error(
        "the keyring is generation {keyring}, older than generation {folder} that this data \
         folder has seen: an old keyring file was restored (it would bring destroyed keys back \
         and forget erasures); put the current keyring file back, or, to recover from a \
         disaster, unseal with --allow-keyring-rollback (recorded in the audit log)"
    )]
    RolledBack {
        /// The keyring's generation.
        keyring: u64,
        /// The highest generation the data folder has seen.
        folder: u64,
    },
    /// A root key change the key's state does not allow.
    #[error("{0}")]
    BadTransition(String),
    /// A shred-bucket key epoch the keyring does not hold (destroyed by an
    /// erasure, or never made).
    #[error("shred bucket {bucket} has no key of epoch {epoch}")]
    ShredKeyUnavailable {
        /// The bucket.
        bucket: u16,
        /// The epoch asked for.
        epoch: u32,
    },
    /// A keyring of an older build, without shred-bucket keys.
    #[error(
        "the keyring was made by an older build of the vault (it has no shred-bucket keys); \
         this build opens only keyrings and data folders of format 2: start from a new data \
         folder and keyring (operator init)"
    )]
    NoShredBuckets,
}

/// The life of a versioned key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum KeyState {
    /// Encrypts (if current) and decrypts.
    Active = 1,
    /// Decrypts no more; kept until destroyed.
    Retired = 2,
    /// Its bytes are gone.
    Destroyed = 3,
}

impl KeyState {
    /// The state's name, as operators see it.
    pub fn name(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::Retired => "retired",
            KeyState::Destroyed => "destroyed",
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(KeyState::Active),
            2 => Some(KeyState::Retired),
            3 => Some(KeyState::Destroyed),
            _ => None,
        }
    }
}

/// One version of a versioned key.
#[derive(Debug, Clone)]
pub struct VersionedKey {
    /// Its state.
    pub state: KeyState,
    /// The key; `None` once destroyed.
    key: Option<Key256>,
}

/// The unsealed keyring. `Debug` shows versions and states, never key bytes
/// (nor the erased subjects' pseudonyms, only how many there are).
#[derive(Clone)]
pub struct Keyring {
    region: Region,
    id: [u8; 16],
    created_at: u64,
    root_keys: BTreeMap<u32, VersionedKey>,
    current_root: u32,
    index_keys: BTreeMap<u32, VersionedKey>,
    current_index: u32,
    pseudonym_key: Key256,
    audit_seed: Key256,
    /// Erased subjects (by storage name) and the highest key version erased.
    erased: BTreeMap<SubjectPseudonym, u32>,
    /// Shred-bucket keys by bucket: epoch → key; one epoch, or two while
    /// an erasure moves the bucket to the newer one.
    buckets: Vec<BTreeMap<u32, Key256>>,
    /// Raised by every saved change.
    generation: u64,
    custody: Custody,
    /// The seal and approved builds (the file's clear header extension).
    sealing: SealHeader,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("region", &self.region)
            .field("id", &hex::encode(self.id))
            .field("root_keys", &self.root_keys)
            .field("current_root", &self.current_root)
            .field("index_keys", &self.index_keys)
            .field("current_index", &self.current_index)
            .field("pseudonym_key", &self.pseudonym_key)
            .field("audit_seed", &self.audit_seed)
            .field("erased_subjects", &self.erased.len())
            .field("shred_buckets", &self.buckets.len())
            .field("generation", &self.generation)
            .field("custody", &self.custody)
            .field("seal", &self.sealing.seal)
            .field("approved_builds", &self.sealing.approved_builds.len())
            .finish()
    }
}

impl Keyring {
    /// Whether two keyrings hold the same keys and state (every section,
    /// and the same share set).
    pub fn same_state(&self, other: &Keyring) -> bool {
        self.custody == other.custody
            && self.sealing == other.sealing
            && self.encode_contents().as_slice() == other.encode_contents().as_slice()
    }

    /// A new keyring for `region` with fresh random keys, version 1 of
    /// each, to be unsealed by the share set `custody`.
    pub fn generate(region: Region, custody: Custody) -> Self {
        let mut id = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut id);
        let created_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let fresh = || VersionedKey {
            state: KeyState::Active,
            key: Some(Key256::random()),
        };
        Keyring {
            region,
            id,
            created_at,
            root_keys: BTreeMap::from([(1, fresh())]),
            current_root: 1,
            index_keys: BTreeMap::from([(1, fresh())]),
            current_index: 1,
            pseudonym_key: Key256::random(),
            audit_seed: Key256::random(),
            erased: BTreeMap::new(),
            buckets: (0..SHRED_BUCKETS)
                .map(|_| BTreeMap::from([(1, Key256::random())]))
                .collect(),
            generation: 1,
            custody,
            sealing: SealHeader::default(),
        }
    }

    /// The generation: every saved change raises it.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Raises the generation, for a change about to be saved.
    pub fn next_generation(&mut self) {
        self.generation = self.generation.saturating_add(1);
    }

    /// Which share set unseals this keyring.
    pub fn custody(&self) -> Custody {
        self.custody
    }

    /// Hands the keyring to a new share set (a rekey): its file's clear
    /// header will name the new set, M and N. The caller raises the
    /// generation and seals it under the new unseal key.
    pub fn set_custody(&mut self, custody: Custody) {
        self.custody = custody;
    }

    /// How the unseal key is kept, and the approved builds.
    pub fn sealing(&self) -> &SealHeader {
        &self.sealing
    }

    /// Names how the unseal key is kept (a new seal goes with a new
    /// unseal key: the caller seals the keyring under it).
    pub fn set_seal(&mut self, seal: Seal) {
        self.sealing.seal = seal;
    }

    /// Adds a build to the approved list; false if it was there.
    pub fn approve_build(&mut self, m: Measurement) -> Result<bool, KeyringError> {
        if self.sealing.approved_builds.contains(&m) {
            return Ok(false);
        }
        if self.sealing.approved_builds.len() >= super::seal::MAX_APPROVED_BUILDS {
            return Err(KeyringError::BadTransition(format!(
                "at most {} builds can be approved; revoke one first",
                super::seal::MAX_APPROVED_BUILDS
            )));
        }
        Ok(self.sealing.approved_builds.insert(m))
    }

    /// Removes a build from the approved list; false if it was not there.
    pub fn revoke_build(&mut self, m: &Measurement) -> bool {
        self.sealing.approved_builds.remove(m)
    }

    /// Makes a new root key version current and returns it. Earlier
    /// versions stay active (they still unwrap) until retired.
    pub fn rotate_root(&mut self) -> u32 {
        let next = self.root_keys.keys().next_back().copied().unwrap_or(0) + 1;
        self.root_keys.insert(
            next,
            VersionedKey {
                state: KeyState::Active,
                key: Some(Key256::random()),
            },
        );
        self.current_root = next;
        next
    }

    /// Retires an active, non-current root key version: it unwraps no more.
    /// (The caller checks that no subject key is wrapped under it.)
    pub fn retire_root(&mut self, version: u32) -> Result<(), KeyringError> {
        if version == self.current_root {
            return Err(KeyringError::BadTransition(format!(
                "root key version {version} is current; rotate first"
            )));
        }
        match self.root_keys.get_mut(&version) {
            Some(k) if k.state == KeyState::Active => {
                k.state = KeyState::Retired;
                Ok(())
            }
            Some(k) => Err(KeyringError::BadTransition(format!(
                "root key version {version} is {}, not active",
                k.state.name()
            ))),
            None => Err(KeyringError::RootKeyUnavailable(version)),
        }
    }

    /// Destroys a retired root key version: its bytes are dropped (and
    /// zeroized) and leave the keyring file at its next write.
    pub fn destroy_root(&mut self, version: u32) -> Result<(), KeyringError> {
        match self.root_keys.get_mut(&version) {
            Some(k) if k.state == KeyState::Retired => {
                k.state = KeyState::Destroyed;
                k.key = None;
                Ok(())
            }
            Some(k) => Err(KeyringError::BadTransition(format!(
                "root key version {version} is {}; only a retired version can be destroyed",
                k.state.name()
            ))),
            None => Err(KeyringError::RootKeyUnavailable(version)),
        }
    }

    /// The pseudonym of a subject id: HMAC-SHA256 under the pseudonym key.
    pub fn subject_pseudonym(&self, subject: &str) -> SubjectPseudonym {
        // HMAC takes keys of any length; 32 bytes is always accepted.
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(self.pseudonym_key.expose_secret())
            .expect("HMAC accepts any key length");
        m.update(labels::SUBJECT_PSEUDONYM);
        m.update(subject.as_bytes());
        m.finalize().into_bytes().into()
    }

    /// The pseudonym of a record (collection and id) in audit events.
    pub fn record_pseudonym(&self, collection: &str, id: &str) -> SubjectPseudonym {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(self.pseudonym_key.expose_secret())
            .expect("HMAC accepts any key length");
        m.update(labels::RECORD_PSEUDONYM);
        m.update(&(collection.len() as u64).to_be_bytes());
        m.update(collection.as_bytes());
        m.update(id.as_bytes());
        m.finalize().into_bytes().into()
    }

    /// Records that every key version of the subject named `subject` (its
    /// storage name) up to `through` was destroyed: those versions are
    /// refused from now on, wherever they come from (a restored backup).
    pub fn record_erasure(&mut self, subject: &SubjectPseudonym, through: u32) {
        let e = self.erased.entry(*subject).or_insert(0);
        *e = (*e).max(through);
    }

    /// The highest erased key version of the subject named `subject`, if it
    /// was ever erased.
    pub fn erased_through(&self, subject: &SubjectPseudonym) -> Option<u32> {
        self.erased.get(subject).copied()
    }

    /// How many shred buckets there are.
    pub fn shred_buckets(&self) -> u16 {
        // At most SHRED_BUCKETS-sized lists are made or decoded (u16 buckets).
        self.buckets.len() as u16
    }

    /// The epoch of `bucket`'s key that wraps new subject keys (its newest).
    pub fn shred_epoch(&self, bucket: u16) -> Result<u32, KeyringError> {
        self.buckets
            .get(bucket as usize)
            .and_then(|b| b.keys().next_back().copied())
            .ok_or(KeyringError::ShredKeyUnavailable { bucket, epoch: 0 })
    }

    /// One epoch of a bucket's key, if the keyring still holds it.
    pub fn shred_key(&self, bucket: u16, epoch: u32) -> Result<&Key256, KeyringError> {
        self.buckets
            .get(bucket as usize)
            .and_then(|b| b.get(&epoch))
            .ok_or(KeyringError::ShredKeyUnavailable { bucket, epoch })
    }

    /// Adds a new epoch to `bucket` (the first step of an erasure): new
    /// wraps use it, the old epoch still unwraps. Returns (old, new).
    /// Refused while an earlier erasure left the bucket with two epochs:
    /// that one must be finished first, or this erasure would destroy only
    /// the older epoch and leave keys wrapped under the newer one.
    pub fn begin_shred(&mut self, bucket: u16) -> Result<(u32, u32), KeyringError> {
        let b = self
            .buckets
            .get_mut(bucket as usize)
            .ok_or(KeyringError::ShredKeyUnavailable { bucket, epoch: 0 })?;
        let newest = b.keys().next_back().copied().unwrap_or(0);
        if b.len() > 1 {
            return Err(KeyringError::BadTransition(format!(
                "shred bucket {bucket} has an unfinished erasure"
            )));
        }
        let next = newest
            .checked_add(1)
            .ok_or(KeyringError::BadTransition(format!(
                "shred bucket {bucket} has no epoch left"
            )))?;
        b.insert(next, Key256::random());
        Ok((newest, next))
    }

    /// Drops every epoch of `bucket` but its newest (the commit point of an
    /// erasure, once the keyring is saved): the dropped keys are zeroized
    /// and leave the keyring file. Returns the epochs destroyed.
    pub fn finish_shred(&mut self, bucket: u16) -> Vec<u32> {
        let Some(b) = self.buckets.get_mut(bucket as usize) else {
            return Vec::new();
        };
        let newest = b.keys().next_back().copied().unwrap_or(0);
        let old: Vec<u32> = b.keys().copied().filter(|e| *e != newest).collect();
        for e in &old {
            b.remove(e);
        }
        old
    }

    /// Buckets holding more than one epoch: erasures a crash interrupted.
    pub fn unfinished_shreds(&self) -> Vec<u16> {
        (0..self.shred_buckets())
            .filter(|&b| self.buckets[b as usize].len() > 1)
            .collect()
    }

    /// How many subjects were erased.
    pub fn erased_subjects(&self) -> usize {
        self.erased.len()
    }

    /// The region the keyring is bound to.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// The keyring's random id, which the data folder records.
    pub fn id(&self) -> [u8; 16] {
        self.id
    }

    /// When the keyring was made (unix seconds).
    pub fn created_at(&self) -> u64 {
        self.created_at
    }

    /// The current root key and its version.
    pub fn current_root(&self) -> Result<(u32, &Key256), KeyringError> {
        Ok((self.current_root, self.root_key(self.current_root)?))
    }

    /// A root key by version, if it is still usable.
    pub fn root_key(&self, version: u32) -> Result<&Key256, KeyringError> {
        match self.root_keys.get(&version) {
            Some(VersionedKey {
                state: KeyState::Active,
                key: Some(k),
            }) => Ok(k),
            _ => Err(KeyringError::RootKeyUnavailable(version)),
        }
    }

    /// Root key versions and their states.
    pub fn root_versions(&self) -> impl Iterator<Item = (u32, KeyState)> + '_ {
        self.root_keys.iter().map(|(v, k)| (*v, k.state))
    }

    /// The pseudonym key (keyed hashes of ids in audit events).
    pub fn pseudonym_key(&self) -> &Key256 {
        &self.pseudonym_key
    }

    /// The seed of the Ed25519 audit signing key.
    pub fn audit_seed(&self) -> &Key256 {
        &self.audit_seed
    }

    /// The current blind-index key and its version.
    pub fn current_index_key(&self) -> Option<(u32, &Key256)> {
        let k = self.index_keys.get(&self.current_index)?.key.as_ref()?;
        Some((self.current_index, k))
    }

    /// The version of the current blind-index key (new index rows are made
    /// under it).
    pub fn current_index_version(&self) -> u32 {
        self.current_index
    }

    /// Every blind-index key still held (the current one and, while the
    /// index is rebuilt after a rotation, the one before), oldest first.
    pub fn live_index_keys(&self) -> Vec<(u32, &Key256)> {
        self.index_keys
            .iter()
            .filter_map(|(v, k)| match k {
                VersionedKey {
                    state: KeyState::Active,
                    key: Some(key),
                } => Some((*v, key)),
                _ => None,
            })
            .collect()
    }

    /// The live blind-index key versions other than the current one: the
    /// versions whose rows a rebuild has still to replace.
    pub fn older_index_versions(&self) -> Vec<u32> {
        self.live_index_keys()
            .into_iter()
            .map(|(v, _)| v)
            .filter(|v| *v != self.current_index)
            .collect()
    }

    /// Blind-index key versions and their states.
    pub fn index_versions(&self) -> impl Iterator<Item = (u32, KeyState)> + '_ {
        self.index_keys.iter().map(|(v, k)| (*v, k.state))
    }

    /// Makes a new blind-index key version current and returns it. The
    /// earlier version stays live (searches still look under it) until the
    /// rebuild that moves every index row to the new one destroys it.
    pub fn rotate_index(&mut self) -> Result<u32, KeyringError> {
        let next = self
            .index_keys
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
            .checked_add(1)
            .ok_or_else(|| KeyringError::BadTransition("no index key version is left".into()))?;
        self.index_keys.insert(
            next,
            VersionedKey {
                state: KeyState::Active,
                key: Some(Key256::random()),
            },
        );
        self.current_index = next;
        Ok(next)
    }

    /// Destroys a blind-index key version other than the current one (once
    /// no index row is made under it): its bytes are dropped (and zeroized)
    /// and leave the keyring file at its next write.
    pub fn destroy_index(&mut self, version: u32) -> Result<(), KeyringError> {
        if version == self.current_index {
            return Err(KeyringError::BadTransition(format!(
                "index key version {version} is current"
            )));
        }
        match self.index_keys.get_mut(&version) {
            Some(k) if k.state != KeyState::Destroyed => {
                k.state = KeyState::Destroyed;
                k.key = None;
                Ok(())
            }
            Some(_) => Err(KeyringError::BadTransition(format!(
                "index key version {version} is already destroyed"
            ))),
            None => Err(KeyringError::BadTransition(format!(
                "there is no index key version {version}"
            ))),
        }
    }

    /// Encrypts the keyring under `unseal_key` into the bytes of a keyring file.
    pub fn seal(&self, unseal_key: &Key256) -> Vec<u8> {
        let contents = self.encode_contents();
        let kek = derive_keyring_key(unseal_key, self.region.as_str());
        let mut out = header(&self.region, &self.custody, &self.sealing);
        let wrapped = seal_wrapped(&kek, &aad(&out), &contents);
        out.extend_from_slice(&wrapped);
        out
    }

    /// Opens a keyring file for a server configured for `expected`.
    pub fn unseal(
        file: &[u8],
        unseal_key: &Key256,
        expected: &Region,
    ) -> Result<Keyring, KeyringError> {
        let Header {
            region,
            custody,
            sealing,
            len,
        } = parse_header(file)?;
        let (header_bytes, wrapped) = file.split_at(len);
        if &region != expected {
            return Err(KeyringError::WrongRegion {
                keyring: region.to_string(),
                configured: expected.to_string(),
            });
        }
        let kek = derive_keyring_key(unseal_key, region.as_str());
        let contents = open_wrapped(&kek, &aad(header_bytes), wrapped)
            .map_err(|_| KeyringError::WrongUnsealKey)?;
        let mut keyring = Self::decode_contents(&contents, custody)?;
        if keyring.region != region {
            return Err(KeyringError::Malformed(
                "region inside differs from the header",
            ));
        }
        keyring.custody = custody;
        keyring.sealing = sealing;
        Ok(keyring)
    }

    /// The decoder of a keyring's decrypted contents (its sections), for
    /// the fuzz target: a random file never gets past the AEAD, so the
    /// sections are fuzzed directly. Refuses malformed input with an error.
    /// Only in test and fuzzing builds (`--cfg fuzzing` or the `fuzzing`
    /// feature): it builds a keyring from unauthenticated bytes.
    #[cfg(any(test, fuzzing, feature = "fuzzing"))]
    #[doc(hidden)]
    pub fn decode_contents_for_fuzzing(contents: &[u8]) -> Result<Keyring, KeyringError> {
        Self::decode_contents(
            contents,
            Custody {
                set_id: [0; 16],
                threshold: 1,
                shares: 1,
            },
        )
    }

    /// A keyring of `region` whose keys are fixed bytes (root key 1 is
    /// `[1; 32]`, index key 1 `[2; 32]`, the pseudonym key `[3; 32]`, the
    /// audit seed `[4; 32]`), for the fuzz targets: their seeds (wrapped
    /// subject keys, signed receipts) are made under it, so they open again
    /// on every run. Only in test and fuzzing builds.
    #[cfg(any(test, fuzzing, feature = "fuzzing"))]
    #[doc(hidden)]
    pub fn fixed_for_fuzzing(region: Region) -> Keyring {
        let fixed = |byte: u8| {
            let mut bytes = [byte; 32];
            Key256::take(&mut bytes)
        };
        let active = |byte: u8| VersionedKey {
            state: KeyState::Active,
            key: Some(fixed(byte)),
        };
        Keyring {
            region,
            id: [5; 16],
            created_at: 1_700_000_000,
            root_keys: BTreeMap::from([(1, active(1))]),
            current_root: 1,
            index_keys: BTreeMap::from([(1, active(2))]),
            current_index: 1,
            pseudonym_key: fixed(3),
            audit_seed: fixed(4),
            erased: BTreeMap::new(),
            // Few buckets keep the fuzz seeds small; bucket keys are 6, 7.
            buckets: (0..2)
                .map(|b| BTreeMap::from([(1, fixed(6 + b))]))
                .collect(),
            generation: 1,
            custody: Custody {
                set_id: [0; 16],
                threshold: 1,
                shares: 1,
            },
            sealing: SealHeader::default(),
        }
    }

    /// The same keys and state under another region label: what a keyring
    /// whose region were not bound into its keys would let through (the
    /// region tests show it is refused).
    #[cfg(test)]
    pub(crate) fn relabelled_for_test(&self, region: Region) -> Keyring {
        let mut k = self.clone();
        k.region = region;
        k
    }

    /// This keyring with its erased list emptied: what a test uses to show
    /// that an erased key is gone by cryptography, not refused by the list.
    #[cfg(test)]
    pub(crate) fn without_erasures_for_test(&self) -> Keyring {
        let mut k = self.clone();
        k.erased.clear();
        k
    }

    /// Reads the region and custody parameters of a keyring file without
    /// unsealing it.
    pub fn peek(file: &[u8]) -> Result<(Region, Custody), KeyringError> {
        parse_header(file).map(|h| (h.region, h.custody))
    }

    /// Reads the seal and approved builds of a keyring file without
    /// unsealing it. Not yet authenticated: the contents open only if
    /// these bytes are the ones sealed with them.
    pub fn peek_sealing(file: &[u8]) -> Result<SealHeader, KeyringError> {
        parse_header(file).map(|h| h.sealing)
    }

    /// The plaintext contents, for the fuzz seed corpus.
    #[cfg(test)]
    pub(crate) fn contents_for_seed(&self) -> Vec<u8> {
        self.encode_contents().to_vec()
    }

    fn encode_contents(&self) -> Zeroizing<Vec<u8>> {
        // Sized up front so the buffer never reallocates: a reallocation
        // would free a copy of the keys without wiping it.
        let keys = self.root_keys.len() + self.index_keys.len();
        let capacity = 5 * 10
            + 16
            + 16
            + 8
            + 4
            + 4
            + 32
            + 32
            + 8
            + keys * (5 + 37)
            + self.erased.len() * (5 + 36)
            + 5
            + 2
            + self.buckets.iter().map(BTreeMap::len).sum::<usize>() * (5 + 38);
        let mut out = Zeroizing::new(Vec::with_capacity(capacity));
        section(&mut out, TAG_REGION, self.region.as_str().as_bytes());
        section(&mut out, TAG_ID, &self.id);
        section(&mut out, TAG_CREATED_AT, &self.created_at.to_be_bytes());
        for (tag, keys) in [
            (TAG_ROOT_KEY, &self.root_keys),
            (TAG_INDEX_KEY, &self.index_keys),
        ] {
            for (v, k) in keys {
                let mut value = Zeroizing::new(Vec::with_capacity(37));
                value.extend_from_slice(&v.to_be_bytes());
                value.push(k.state as u8);
                if let Some(key) = &k.key {
                    value.extend_from_slice(key.expose_secret());
                }
                section(&mut out, tag, &value);
            }
        }
        section(&mut out, TAG_CURRENT_ROOT, &self.current_root.to_be_bytes());
        section(
            &mut out,
            TAG_CURRENT_INDEX,
            &self.current_index.to_be_bytes(),
        );
        section(
            &mut out,
            TAG_PSEUDONYM_KEY,
            self.pseudonym_key.expose_secret(),
        );
        section(&mut out, TAG_AUDIT_SEED, self.audit_seed.expose_secret());
        for (p, v) in &self.erased {
            let mut value = [0u8; 36];
            value[..32].copy_from_slice(p);
            value[32..].copy_from_slice(&v.to_be_bytes());
            section(&mut out, TAG_ERASED_SUBJECT, &value);
        }
        section(
            &mut out,
            TAG_SHRED_COUNT,
            &self.shred_buckets().to_be_bytes(),
        );
        for (bucket, epochs) in self.buckets.iter().enumerate() {
            for (epoch, key) in epochs {
                let mut value = Zeroizing::new([0u8; 38]);
                value[..2].copy_from_slice(&(bucket as u16).to_be_bytes());
                value[2..6].copy_from_slice(&epoch.to_be_bytes());
                value[6..].copy_from_slice(key.expose_secret());
                section(&mut out, TAG_SHRED_KEY, value.as_ref());
            }
        }
        // Last, so that a keyring from before generations reads as one
        // with the section cut off.
        section(&mut out, TAG_GENERATION, &self.generation.to_be_bytes());
        out
    }

    fn decode_contents(mut bytes: &[u8], custody: Custody) -> Result<Keyring, KeyringError> {
        use KeyringError::Malformed;
        let mut region = None;
        let mut id = None;
        let mut created_at = None;
        let mut root_keys = BTreeMap::new();
        let mut current_root = None;
        let mut index_keys = BTreeMap::new();
        let mut current_index = None;
        let mut pseudonym_key = None;
        let mut audit_seed = None;
        let mut erased = BTreeMap::new();
        let mut generation = None;
        let mut buckets: Vec<BTreeMap<u32, Key256>> = Vec::new();
        let mut bucket_count: Option<u16> = None;

        fn once<T>(slot: &mut Option<T>, value: T) -> Result<(), KeyringError> {
            if slot.replace(value).is_some() {
                return Err(Malformed("repeated section"));
            }
            Ok(())
        }
        fn u32_of(v: &[u8]) -> Result<u32, KeyringError> {
            Ok(u32::from_be_bytes(
                v.try_into().map_err(|_| Malformed("bad u32"))?,
            ))
        }
        fn key_of(v: &[u8]) -> Result<Key256, KeyringError> {
            Key256::from_slice(v).ok_or(Malformed("bad key length"))
        }
        fn versioned(v: &[u8], into: &mut BTreeMap<u32, VersionedKey>) -> Result<(), KeyringError> {
            if v.len() < 5 {
                return Err(Malformed("short versioned key"));
            }
            let version = u32_of(&v[..4])?;
            let state = KeyState::from_byte(v[4]).ok_or(Malformed("unknown key state"))?;
            let key = match (state, &v[5..]) {
                (KeyState::Destroyed, []) => None,
                (KeyState::Destroyed, _) => return Err(Malformed("destroyed key with bytes")),
                (_, bytes) => Some(key_of(bytes)?),
            };
            if version == 0 || into.insert(version, VersionedKey { state, key }).is_some() {
                return Err(Malformed("bad or repeated key version"));
            }
            Ok(())
        }

        while !bytes.is_empty() {
            if bytes.len() < 5 {
                return Err(Malformed("truncated section header"));
            }
            let tag = bytes[0];
            let len = u32_of(&bytes[1..5])? as usize;
            let rest = &bytes[5..];
            if rest.len() < len {
                return Err(Malformed("truncated section"));
            }
            let (value, tail) = rest.split_at(len);
            bytes = tail;
            match tag {
                TAG_REGION => {
                    let s =
                        std::str::from_utf8(value).map_err(|_| Malformed("region is not UTF-8"))?;
                    once(
                        &mut region,
                        s.parse::<Region>().map_err(|_| Malformed("bad region"))?,
                    )?
                }
                TAG_ID => once(
                    &mut id,
                    <[u8; 16]>::try_from(value).map_err(|_| Malformed("bad id"))?,
                )?,
                TAG_CREATED_AT => once(
                    &mut created_at,
                    u64::from_be_bytes(value.try_into().map_err(|_| Malformed("bad time"))?),
                )?,
                TAG_ROOT_KEY => versioned(value, &mut root_keys)?,
                TAG_CURRENT_ROOT => once(&mut current_root, u32_of(value)?)?,
                TAG_INDEX_KEY => versioned(value, &mut index_keys)?,
                TAG_CURRENT_INDEX => once(&mut current_index, u32_of(value)?)?,
                TAG_PSEUDONYM_KEY => once(&mut pseudonym_key, key_of(value)?)?,
                TAG_AUDIT_SEED => once(&mut audit_seed, key_of(value)?)?,
                TAG_ERASED_SUBJECT => {
                    let (p, v) = value
                        .split_first_chunk::<32>()
                        .ok_or(Malformed("bad erased subject"))?;
                    if erased.insert(*p, u32_of(v)?).is_some() {
                        return Err(Malformed("repeated erased subject"));
                    }
                }
                TAG_GENERATION => once(
                    &mut generation,
                    u64::from_be_bytes(value.try_into().map_err(|_| Malformed("bad generation"))?),
                )?,
                TAG_SHRED_COUNT => {
                    let count = value
                        .try_into()
                        .map_err(|_| Malformed("bad shred-bucket count"))?;
                    once(&mut bucket_count, u16::from_be_bytes(count))?;
                    if bucket_count == Some(0) || !buckets.is_empty() {
                        return Err(Malformed("bad shred-bucket count"));
                    }
                }
                TAG_SHRED_KEY => {
                    if bucket_count.is_none() {
                        return Err(Malformed("shred-bucket key before the count"));
                    }
                    if value.len() != 38 {
                        return Err(Malformed("bad shred-bucket key"));
                    }
                    let bucket = u16::from_be_bytes([value[0], value[1]]) as usize;
                    let epoch = u32_of(&value[2..6])?;
                    // Buckets come in order, each with one or two epochs.
                    if bucket == buckets.len() {
                        buckets.push(BTreeMap::new());
                    }
                    if bucket + 1 != buckets.len() {
                        return Err(Malformed("shred-bucket keys out of order"));
                    }
                    let epochs = &mut buckets[bucket];
                    if epoch == 0
                        || epochs.len() >= 2
                        || epochs.insert(epoch, key_of(&value[6..])?).is_some()
                    {
                        return Err(Malformed("bad or repeated shred-bucket epoch"));
                    }
                }
                _ => return Err(Malformed("unknown section")),
            }
        }
        let current_root = current_root.ok_or(Malformed("no current root key"))?;
        let current_index = current_index.ok_or(Malformed("no current index key"))?;
        let usable = |keys: &BTreeMap<u32, VersionedKey>, v| {
            matches!(
                keys.get(&v),
                Some(VersionedKey {
                    state: KeyState::Active,
                    key: Some(_)
                })
            )
        };
        if !usable(&root_keys, current_root) || !usable(&index_keys, current_index) {
            return Err(Malformed("current key is not an active key"));
        }
        match bucket_count {
            None => return Err(KeyringError::NoShredBuckets),
            Some(k) if usize::from(k) != buckets.len() => {
                return Err(Malformed("a shred bucket has no key"))
            }
            Some(_) => {}
        }
        Ok(Keyring {
            region: region.ok_or(Malformed("no region"))?,
            id: id.ok_or(Malformed("no id"))?,
            created_at: created_at.ok_or(Malformed("no creation time"))?,
            root_keys,
            current_root,
            index_keys,
            current_index,
            pseudonym_key: pseudonym_key.ok_or(Malformed("no pseudonym key"))?,
            audit_seed: audit_seed.ok_or(Malformed("no audit key"))?,
            erased,
            buckets,
            // A keyring from before generations: the oldest.
            generation: generation.unwrap_or(0),
            custody,
            sealing: SealHeader::default(),
        })
    }
}

fn section(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
    out.push(tag);
    put_lp(out, value);
}

fn header(region: &Region, custody: &Custody, sealing: &SealHeader) -> Vec<u8> {
    let r = region.as_str().as_bytes();
    let mut out = Vec::with_capacity(7 + r.len() + 22);
    out.extend_from_slice(MAGIC);
    out.push(KEYRING_FILE_V3);
    // A region is at most 16 bytes (see Region).
    out.extend_from_slice(&(r.len() as u16).to_be_bytes());
    out.extend_from_slice(r);
    out.extend_from_slice(&custody.set_id);
    out.push(custody.threshold);
    out.push(custody.shares);
    let mut ext = Vec::new();
    sealing.encode(&mut ext);
    // Bounded: one seal and at most MAX_APPROVED_BUILDS builds.
    out.extend_from_slice(&(ext.len() as u32).to_be_bytes());
    out.extend_from_slice(&ext);
    out
}

fn aad(header: &[u8]) -> Vec<u8> {
    let mut aad = labels::KEYRING.to_vec();
    put_lp(&mut aad, header);
    aad
}

/// The clear header of a keyring file.
struct Header {
    region: Region,
    custody: Custody,
    sealing: SealHeader,
    /// Its length in bytes.
    len: usize,
}

fn parse_header(file: &[u8]) -> Result<Header, KeyringError> {
    use KeyringError::Malformed;
    if file.len() < 7 || &file[..4] != MAGIC {
        return Err(Malformed("not a keyring file"));
    }
    let version = file[4];
    if version != KEYRING_FILE_V2 && version != KEYRING_FILE_V3 {
        return Err(KeyringError::UnknownVersion(version));
    }
    let r = u16::from_be_bytes([file[5], file[6]]) as usize;
    let region_bytes = file.get(7..7 + r).ok_or(Malformed("truncated region"))?;
    let region = std::str::from_utf8(region_bytes)
        .ok()
        .and_then(|s| s.parse::<Region>().ok())
        .ok_or(Malformed("bad region"))?;
    let c = file
        .get(7 + r..7 + r + 18)
        .ok_or(Malformed("truncated custody header"))?;
    let mut set_id = [0u8; 16];
    set_id.copy_from_slice(&c[..16]);
    let (threshold, shares) = (c[16], c[17]);
    if threshold == 0 || threshold > shares {
        return Err(Malformed("bad custody parameters"));
    }
    let mut len = 7 + r + 18;
    let mut sealing = SealHeader::default();
    if version == KEYRING_FILE_V3 {
        let ext_len = file
            .get(len..len + 4)
            .ok_or(Malformed("truncated header extension"))?;
        let ext_len = u32::from_be_bytes([ext_len[0], ext_len[1], ext_len[2], ext_len[3]]) as usize;
        if ext_len > MAX_EXTENSION {
            return Err(Malformed("header extension too long"));
        }
        let ext = file
            .get(len + 4..len + 4 + ext_len)
            .ok_or(Malformed("truncated header extension"))?;
        sealing = SealHeader::decode(ext)?;
        len += 4 + ext_len;
    }
    Ok(Header {
        region,
        custody: Custody {
            set_id,
            threshold,
            shares,
        },
        sealing,
        len,
    })
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename, fsync
/// of the folder), readable by the owner only.
pub fn write_secret_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    // A fresh file (O_EXCL), never one left behind with other permissions
    // or a link planted in its place.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eu() -> Region {
        "eu".parse().unwrap()
    }

    fn custody() -> Custody {
        Custody {
            set_id: [7; 16],
            threshold: 2,
            shares: 3,
        }
    }

    #[test]
    fn seal_unseal_round_trip() {
        let kr = Keyring::generate(eu(), custody());
        let uk = Key256::random();
        let file = kr.seal(&uk);
        let back = Keyring::unseal(&file, &uk, &eu()).unwrap();
        assert_eq!(back.id(), kr.id());
        assert_eq!(
            back.current_root().unwrap().1.expose_secret(),
            kr.current_root().unwrap().1.expose_secret()
        );
        assert_eq!(
            back.pseudonym_key().expose_secret(),
            kr.pseudonym_key().expose_secret()
        );
        assert_eq!(
            back.audit_seed().expose_secret(),
            kr.audit_seed().expose_secret()
        );
        assert_eq!(Keyring::peek(&file).unwrap(), (eu(), custody()));
        assert_eq!(back.custody(), custody());
    }

    /// A version 3 header carries the seal and the approved builds,
    /// authenticated with the contents; a version 2 file (builds before
    /// seals) still opens, as Shamir-sealed with no approved builds.
    #[test]
    fn the_seal_and_approved_builds_travel_in_the_authenticated_header() {
        use crate::keys::seal::{HsmSeal, Seal, HSM_WRAPPED_LEN};
        let mut kr = Keyring::generate(eu(), custody());
        kr.set_seal(Seal::Pkcs11(HsmSeal {
            token_label: "vault-eu".into(),
            token_serial: "42".into(),
            key_label: "vault-unseal".into(),
            key_id: vec![1; 16],
            wrapped_key: vec![2; HSM_WRAPPED_LEN],
            recovery_check: [3; 32],
        }));
        assert!(kr.approve_build([5; 48]).unwrap());
        assert!(!kr.approve_build([5; 48]).unwrap());
        assert!(kr.approve_build([4; 48]).unwrap());
        let uk = Key256::random();
        let file = kr.seal(&uk);
        assert_eq!(file[4], KEYRING_FILE_V3);
        assert_eq!(Keyring::peek_sealing(&file).unwrap(), *kr.sealing());
        let back = Keyring::unseal(&file, &uk, &eu()).unwrap();
        assert!(back.same_state(&kr));
        // An approved build changed in the clear header: the keyring no
        // longer opens.
        let at = file
            .windows(48)
            .position(|w| w == [5u8; 48])
            .expect("the build is in the header");
        let mut forged = file.clone();
        forged[at] ^= 1;
        assert_eq!(
            Keyring::unseal(&forged, &uk, &eu()).unwrap_err(),
            KeyringError::WrongUnsealKey
        );
        assert!(kr.revoke_build(&[5; 48]));
        assert!(!kr.revoke_build(&[5; 48]));
        // Every truncation of the header is an error, never a panic.
        let header_len = parse_header(&file).unwrap().len;
        for n in 0..header_len {
            assert!(Keyring::peek_sealing(&file[..n]).is_err(), "prefix {n}");
        }

        // Version 2: the header of the builds before seals.
        let plain = Keyring::generate(eu(), custody());
        let mut v2 = MAGIC.to_vec();
        v2.push(KEYRING_FILE_V2);
        v2.extend_from_slice(&2u16.to_be_bytes());
        v2.extend_from_slice(b"eu");
        v2.extend_from_slice(&custody().set_id);
        v2.extend_from_slice(&[custody().threshold, custody().shares]);
        let kek = derive_keyring_key(&uk, "eu");
        let wrapped = seal_wrapped(&kek, &aad(&v2), &plain.encode_contents());
        v2.extend_from_slice(&wrapped);
        let back = Keyring::unseal(&v2, &uk, &eu()).unwrap();
        assert!(back.same_state(&plain));
        assert_eq!(back.sealing().seal, Seal::Shamir);
        // Saved again, it is written as version 3.
        assert_eq!(back.seal(&uk)[4], KEYRING_FILE_V3);
    }

    /// A rekey: the same keys under a new share set and a new unseal key;
    /// the header names the new set, and the old key opens it no more.
    #[test]
    fn a_rekeyed_keyring_opens_only_with_the_new_key() {
        let kr = Keyring::generate(eu(), custody());
        let (old_key, new_key) = (Key256::random(), Key256::random());
        let new_custody = Custody {
            set_id: [9; 16],
            threshold: 3,
            shares: 5,
        };
        let mut rekeyed = Keyring::clone(&kr);
        rekeyed.set_custody(new_custody);
        rekeyed.next_generation();
        let file = rekeyed.seal(&new_key);
        assert_eq!(Keyring::peek(&file).unwrap(), (eu(), new_custody));
        assert_eq!(
            Keyring::unseal(&file, &old_key, &eu()).unwrap_err(),
            KeyringError::WrongUnsealKey
        );
        let back = Keyring::unseal(&file, &new_key, &eu()).unwrap();
        assert_eq!(back.custody(), new_custody);
        assert_eq!(back.generation(), kr.generation() + 1);
        assert_eq!(back.id(), kr.id());
        assert_eq!(
            back.current_root().unwrap().1.expose_secret(),
            kr.current_root().unwrap().1.expose_secret()
        );
    }

    /// The generation travels in the file; a keyring from before
    /// generations (no such section) is generation 0, the oldest; a
    /// malformed or repeated one is refused.
    #[test]
    fn the_generation_round_trips_and_defaults_to_the_oldest() {
        let mut kr = Keyring::generate(eu(), custody());
        assert_eq!(kr.generation(), 1);
        kr.next_generation();
        kr.next_generation();
        let uk = Key256::random();
        let back = Keyring::unseal(&kr.seal(&uk), &uk, &eu()).unwrap();
        assert_eq!(back.generation(), 3);
        let contents = kr.encode_contents();
        // The generation is the last section: tag, u32 length, u64.
        let (without, last) = contents.split_at(contents.len() - 13);
        assert_eq!(last[0], TAG_GENERATION);
        assert_eq!(
            Keyring::decode_contents(without, custody())
                .unwrap()
                .generation(),
            0
        );
        let twice = [&contents[..], last].concat();
        assert_eq!(
            Keyring::decode_contents(&twice, custody()).unwrap_err(),
            KeyringError::Malformed("repeated section")
        );
        let mut short = without.to_vec();
        short.extend_from_slice(&[TAG_GENERATION, 0, 0, 0, 2, 0, 1]);
        assert_eq!(
            Keyring::decode_contents(&short, custody()).unwrap_err(),
            KeyringError::Malformed("bad generation")
        );
    }

    #[test]
    fn wrong_unseal_key() {
        let file = Keyring::generate(eu(), custody()).seal(&Key256::random());
        assert_eq!(
            Keyring::unseal(&file, &Key256::random(), &eu()).unwrap_err(),
            KeyringError::WrongUnsealKey
        );
    }

    #[test]
    fn wrong_region_is_refused_before_decrypting() {
        let uk = Key256::random();
        let file = Keyring::generate(eu(), custody()).seal(&uk);
        let us: Region = "us".parse().unwrap();
        assert!(matches!(
            Keyring::unseal(&file, &uk, &us),
            Err(KeyringError::WrongRegion { .. })
        ));
    }

    #[test]
    fn relabelled_region_does_not_decrypt() {
        // Rewrite the clear header to say "us": the AAD and the KDF salt catch it.
        let uk = Key256::random();
        let mut file = Keyring::generate(eu(), custody()).seal(&uk);
        file[7..9].copy_from_slice(b"us");
        let us: Region = "us".parse().unwrap();
        assert_eq!(
            Keyring::unseal(&file, &uk, &us).unwrap_err(),
            KeyringError::WrongUnsealKey
        );
    }

    #[test]
    fn malformed_files() {
        let uk = Key256::random();
        // Two buckets keep the every-byte loop below quick (debug builds).
        let mut kr = Keyring::generate(eu(), custody());
        kr.buckets.truncate(2);
        let file = kr.seal(&uk);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("bad magic", [b"XXXX".as_slice(), &file[4..]].concat()),
            ("truncated header", file[..6].to_vec()),
            ("truncated region", file[..8].to_vec()),
            ("truncated body", file[..20].to_vec()),
        ];
        for (name, bytes) in cases {
            assert!(Keyring::unseal(&bytes, &uk, &eu()).is_err(), "{name}");
        }
        for v in [1, 4] {
            let mut old = file.clone();
            old[4] = v;
            assert_eq!(
                Keyring::unseal(&old, &uk, &eu()).unwrap_err(),
                KeyringError::UnknownVersion(v)
            );
        }
        // Every byte after the region is authenticated: the custody header
        // (set id, M, N) and the contents.
        for i in 9..file.len() {
            let mut t = file.clone();
            t[i] ^= 1;
            let err = Keyring::unseal(&t, &uk, &eu()).unwrap_err();
            assert!(
                matches!(
                    err,
                    KeyringError::WrongUnsealKey | KeyringError::Malformed(_)
                ),
                "byte {i}: {err:?}"
            );
        }
        // M > N in the header is refused before decrypting.
        let mut t = file.clone();
        t[9 + 16] = 9;
        assert_eq!(
            Keyring::unseal(&t, &uk, &eu()).unwrap_err(),
            KeyringError::Malformed("bad custody parameters")
        );
    }

    #[test]
    fn contents_decoder_refuses_bad_structure() {
        let mut kr = Keyring::generate(eu(), custody());
        // Three buckets keep the every-truncation loop below quick.
        kr.buckets.truncate(3);
        kr.begin_shred(1).unwrap();
        let good = kr.encode_contents();
        assert!(Keyring::decode_contents(&good, custody()).is_ok());
        // Trailing garbage, an unknown section, a repeated singleton, a missing one.
        let mut t = good.to_vec();
        t.push(0);
        assert!(Keyring::decode_contents(&t, custody()).is_err());
        let mut t = good.to_vec();
        section(&mut t, 99, b"x");
        assert!(Keyring::decode_contents(&t, custody()).is_err());
        let mut t = good.to_vec();
        section(&mut t, TAG_CURRENT_ROOT, &1u32.to_be_bytes());
        assert!(Keyring::decode_contents(&t, custody()).is_err());
        let mut t = Vec::new();
        section(&mut t, TAG_REGION, b"eu");
        assert!(Keyring::decode_contents(&t, custody()).is_err());
        // Every truncation is an error, never a panic, but the one that
        // drops exactly the (optional, last) generation section.
        for n in 0..good.len() {
            let decoded = Keyring::decode_contents(&good[..n], custody());
            if n == good.len() - 13 {
                assert_eq!(decoded.map(|k| k.generation()), Ok(0));
                continue;
            }
            assert!(decoded.is_err(), "prefix {n}");
        }
    }

    #[test]
    fn debug_shows_no_key_bytes() {
        let kr = Keyring::generate(eu(), custody());
        let shown = format!("{kr:?}");
        let hex_root = hex::encode(kr.current_root().unwrap().1.expose_secret());
        assert!(!shown.contains(&hex_root[..8]));
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn root_key_life_cycle() {
        let mut kr = Keyring::generate(eu(), custody());
        let v1 = kr.current_root().unwrap().0;
        let old = kr.root_key(v1).unwrap().expose_secret().to_vec();
        assert_eq!(kr.rotate_root(), 2);
        assert_eq!(kr.current_root().unwrap().0, 2);
        // The old version still unwraps until retired.
        assert!(kr.root_key(1).is_ok());
        assert!(matches!(
            kr.retire_root(2),
            Err(KeyringError::BadTransition(_))
        ));
        assert!(matches!(
            kr.destroy_root(1),
            Err(KeyringError::BadTransition(_))
        ));
        kr.retire_root(1).unwrap();
        assert_eq!(
            kr.root_key(1).unwrap_err(),
            KeyringError::RootKeyUnavailable(1)
        );
        assert!(matches!(
            kr.retire_root(1),
            Err(KeyringError::BadTransition(_))
        ));
        assert_eq!(
            kr.retire_root(9).unwrap_err(),
            KeyringError::RootKeyUnavailable(9)
        );
        kr.destroy_root(1).unwrap();
        // The destroyed key's bytes are gone from the sealed file.
        let uk = Key256::random();
        let file = kr.seal(&uk);
        let back = Keyring::unseal(&file, &uk, &eu()).unwrap();
        assert_eq!(
            back.root_versions().collect::<Vec<_>>(),
            vec![(1, KeyState::Destroyed), (2, KeyState::Active)]
        );
        let contents = back.encode_contents();
        assert!(!contents.windows(32).any(|w| w == old.as_slice()));
        assert_eq!(back.current_root().unwrap().0, 2);
    }

    /// An index-key rotation leaves two live versions (the older one for
    /// searches during the rebuild) until the older is destroyed: its bytes
    /// then leave the sealed file; the current version cannot be destroyed.
    #[test]
    fn index_key_life_cycle() {
        let mut kr = Keyring::generate(eu(), custody());
        let old = kr.current_index_key().unwrap().1.expose_secret().to_vec();
        assert_eq!(kr.current_index_version(), 1);
        assert!(kr.older_index_versions().is_empty());
        assert_eq!(kr.rotate_index().unwrap(), 2);
        assert_eq!(kr.current_index_key().unwrap().0, 2);
        assert_eq!(
            kr.live_index_keys()
                .iter()
                .map(|(v, _)| *v)
                .collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(kr.older_index_versions(), vec![1]);
        assert!(matches!(
            kr.destroy_index(2),
            Err(KeyringError::BadTransition(_))
        ));
        assert!(matches!(
            kr.destroy_index(7),
            Err(KeyringError::BadTransition(_))
        ));
        kr.destroy_index(1).unwrap();
        assert!(matches!(
            kr.destroy_index(1),
            Err(KeyringError::BadTransition(_))
        ));
        assert!(kr.older_index_versions().is_empty());
        let uk = Key256::random();
        let back = Keyring::unseal(&kr.seal(&uk), &uk, &eu()).unwrap();
        assert_eq!(
            back.index_versions().collect::<Vec<_>>(),
            vec![(1, KeyState::Destroyed), (2, KeyState::Active)]
        );
        assert_eq!(back.current_index_version(), 2);
        assert_eq!(back.live_index_keys().len(), 1);
        assert!(!back
            .encode_contents()
            .windows(32)
            .any(|w| w == old.as_slice()));
        let mut again = back;
        assert_eq!(again.rotate_index().unwrap(), 3);
    }

    /// A shred runs in two saved steps: a new epoch beside the old, then
    /// the old one gone, its bytes out of the sealed contents. The decoder
    /// refuses bucket lists that are out of order, incomplete, or hold more
    /// than two epochs.
    #[test]
    fn shred_buckets_move_in_two_steps_and_refuse_bad_lists() {
        let uk = Key256::random();
        let mut kr = Keyring::generate(eu(), custody());
        assert_eq!(kr.shred_buckets(), SHRED_BUCKETS);
        assert!(kr.unfinished_shreds().is_empty());
        let old = kr.shred_key(5, 1).unwrap().expose_secret().to_vec();
        assert_eq!(kr.begin_shred(5).unwrap(), (1, 2));
        assert!(
            matches!(kr.begin_shred(5), Err(KeyringError::BadTransition(_))),
            "an unfinished shred is finished before the next"
        );
        assert_eq!(kr.shred_epoch(5).unwrap(), 2);
        let mid = Keyring::unseal(&kr.seal(&uk), &uk, &eu()).unwrap();
        assert_eq!(mid.unfinished_shreds(), vec![5]);
        assert!(mid.shred_key(5, 1).is_ok());
        assert_eq!(kr.finish_shred(5), vec![1]);
        assert_eq!(kr.finish_shred(5), Vec::<u32>::new());
        let back = Keyring::unseal(&kr.seal(&uk), &uk, &eu()).unwrap();
        assert!(back.unfinished_shreds().is_empty());
        assert_eq!(
            back.shred_key(5, 1).unwrap_err(),
            KeyringError::ShredKeyUnavailable {
                bucket: 5,
                epoch: 1
            }
        );
        assert!(!back
            .encode_contents()
            .windows(32)
            .any(|w| w == old.as_slice()));
        assert!(back.shred_key(SHRED_BUCKETS, 1).is_err());

        let mut small = Keyring::generate(eu(), custody());
        small.buckets.truncate(2);
        let good = small.encode_contents();
        assert!(Keyring::decode_contents(&good, custody()).is_ok());
        let count_at = good
            .windows(7)
            .position(|w| w == [TAG_SHRED_COUNT, 0, 0, 0, 2, 0, 2])
            .unwrap();
        let key = |bucket: u16, epoch: u32| {
            let mut v = bucket.to_be_bytes().to_vec();
            v.extend_from_slice(&epoch.to_be_bytes());
            v.extend_from_slice(&[9; 32]);
            v
        };
        let with = |extra: &[(u16, u32)]| {
            let mut t = good[..good.len() - 13].to_vec();
            for (b, e) in extra {
                section(&mut t, TAG_SHRED_KEY, &key(*b, *e));
            }
            t.extend_from_slice(&good[good.len() - 13..]);
            Keyring::decode_contents(&t, custody())
        };
        assert!(with(&[(1, 2)]).is_ok(), "a second epoch");
        assert!(with(&[(1, 2), (1, 3)]).is_err(), "a third epoch");
        assert!(with(&[(1, 1)]).is_err(), "a repeated epoch");
        assert!(with(&[(1, 0)]).is_err(), "epoch 0");
        assert!(with(&[(0, 2)]).is_err(), "out of order");
        assert!(with(&[(3, 1)]).is_err(), "a skipped bucket");
        // The count disagrees with the keys, or is missing.
        let mut t = good.to_vec();
        t[count_at + 6] = 3;
        assert!(Keyring::decode_contents(&t, custody()).is_err());
        let t = [&good[..count_at], &good[count_at + 7..]].concat();
        assert!(Keyring::decode_contents(&t, custody()).is_err());
    }

    #[test]
    fn erased_subjects_survive_sealing() {
        const ALICE: SubjectPseudonym = [1; 32];
        const BOB: SubjectPseudonym = [2; 32];
        let mut kr = Keyring::generate(eu(), custody());
        assert_eq!(kr.erased_through(&ALICE), None);
        kr.record_erasure(&ALICE, 3);
        kr.record_erasure(&ALICE, 2);
        kr.record_erasure(&BOB, 1);
        assert_eq!(kr.erased_through(&ALICE), Some(3));
        let uk = Key256::random();
        let back = Keyring::unseal(&kr.seal(&uk), &uk, &eu()).unwrap();
        assert_eq!(back.erased_through(&ALICE), Some(3));
        assert_eq!(back.erased_through(&BOB), Some(1));
        assert_eq!(back.erased_through(&[3; 32]), None);
        assert_eq!(back.erased_subjects(), 2);
        // Pseudonyms depend on the keyring's key, not just the id.
        let other = Keyring::generate(eu(), custody());
        assert_ne!(
            other.subject_pseudonym("alice"),
            kr.subject_pseudonym("alice")
        );
        // The file names no subject in the clear.
        let file = kr.seal(&uk);
        assert!(!file.windows(5).any(|w| w == b"alice"));
    }
}
