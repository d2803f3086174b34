//! A bounded cache of unwrapped subject keys and the field keys derived
//! from them. Entries hold key material in zeroizing types, so an evicted
//! entry is wiped when its last user drops it.

use std::fmt;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use aes_gcm::{Aes256Gcm, KeyInit};
use lru::LruCache;

use super::SubjectName;
use crate::crypto::{derive_field_key, derive_record_key, FieldKeyContext, Key256};

/// Field keys kept per subject key; further fields are derived per use.
const FIELD_KEYS_PER_SUBJECT: usize = 32;

/// One unwrapped subject key version and the field keys derived from it.
pub struct SubjectKeys {
    version: u32,
    key: Key256,
    /// Derived keys per (collection, field): 32 bytes each, where a key
    /// schedule (`Aes256Gcm`) takes about 1 KiB. The schedule is built per
    /// use (about 0.2 µs): cached, it made the key cache 64 MiB at its
    /// default 10 000 subjects with five fields each. A short list, scanned
    /// without allocating: a subject has few fields.
    field_keys: Mutex<Vec<CachedFieldKey>>,
    /// The record-tag key, derived on first use.
    record_key: OnceLock<Key256>,
}

impl SubjectKeys {
    /// Wraps an unwrapped subject key.
    pub fn new(version: u32, key: Key256) -> Self {
        SubjectKeys {
            version,
            key,
            field_keys: Mutex::new(Vec::new()),
            record_key: OnceLock::new(),
        }
    }

    /// The key of the record tags made with this subject key version. An
    /// engine serves one region, so the first derivation is the only one.
    pub fn record_key(&self, region: &str) -> &Key256 {
        self.record_key
            .get_or_init(|| derive_record_key(&self.key, region, self.version))
    }

    /// The subject key version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The raw subject key (for wrapping).
    pub fn key(&self) -> &Key256 {
        &self.key
    }

    /// The cipher of one field: its key derived once and then cached, its
    /// key schedule built for this use. `Aes256Gcm` is built with the
    /// `zeroize` feature: it wipes its round keys on drop.
    pub fn field_cipher(&self, region: &str, collection: &str, field: &str) -> Aes256Gcm {
        let mut keys = lock(&self.field_keys);
        if let Some(k) = keys
            .iter()
            .find(|k| k.collection == collection && k.field == field)
        {
            return Aes256Gcm::new(k.key.expose_secret().into());
        }
        let ctx = FieldKeyContext {
            region,
            collection,
            field,
            key_version: self.version,
        };
        let key = derive_field_key(&self.key, &ctx);
        let cipher = Aes256Gcm::new(key.expose_secret().into());
        if keys.len() < FIELD_KEYS_PER_SUBJECT {
            keys.push(CachedFieldKey {
                collection: collection.to_owned(),
                field: field.to_owned(),
                key,
            });
        }
        cipher
    }
}

/// One derived field key.
struct CachedFieldKey {
    collection: String,
    field: String,
    key: Key256,
}

impl fmt::Debug for SubjectKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubjectKeys")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// A least-recently-used cache of subject keys by (subject storage name,
/// version).
pub struct KeyCache {
    entries: Mutex<LruCache<(SubjectName, u32), Arc<SubjectKeys>>>,
}

impl KeyCache {
    /// A cache of at most `capacity` subject key versions (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        KeyCache {
            entries: Mutex::new(LruCache::new(capacity)),
        }
    }

    /// A cached key, if present.
    pub fn get(&self, subject: &SubjectName, version: u32) -> Option<Arc<SubjectKeys>> {
        lock(&self.entries).get(&(*subject, version)).cloned()
    }

    /// Caches a key, evicting the least recently used one if full.
    pub fn insert(&self, subject: &SubjectName, keys: Arc<SubjectKeys>) {
        lock(&self.entries).put((*subject, keys.version), keys);
    }

    /// Drops every version of one subject's key at once.
    pub fn evict_subject(&self, subject: &SubjectName) {
        let mut entries = lock(&self.entries);
        let doomed: Vec<_> = entries
            .iter()
            .filter(|((s, _), _)| s == subject)
            .map(|(k, _)| *k)
            .collect();
        for k in doomed {
            entries.pop(&k);
        }
    }

    /// Drops every key (zeroized as their last users let go).
    pub fn clear(&self) {
        lock(&self.entries).clear();
    }

    /// How many subject key versions are cached.
    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    /// An estimate of the bytes the cache holds: its entries, their field
    /// keys and the keys' names, without allocator overhead (for sizing).
    pub fn approx_bytes(&self) -> usize {
        use std::mem::size_of;
        // The LRU's node: the key, the value's pointer, two links.
        let node = size_of::<(SubjectName, u32)>() + 3 * size_of::<usize>();
        // An `Arc`'s two counts.
        let arc = 2 * size_of::<usize>();
        // The entries copied out first: the walk below does not hold the
        // lock every read needs.
        let entries: Vec<Arc<SubjectKeys>> = lock(&self.entries)
            .iter()
            .map(|(_, k)| Arc::clone(k))
            .collect();
        entries
            .iter()
            .map(|keys| {
                let field_keys = lock(&keys.field_keys);
                let names: usize = field_keys
                    .iter()
                    .map(|k| k.collection.capacity() + k.field.capacity())
                    .sum();
                // A `Key256` boxes its bytes: the subject key, its field
                // keys and the record key once derived.
                let key_bytes =
                    (1 + field_keys.len() + usize::from(keys.record_key.get().is_some())) * 32;
                node + arc
                    + size_of::<SubjectKeys>()
                    + field_keys.capacity() * size_of::<CachedFieldKey>()
                    + key_bytes
                    + names
            })
            .sum()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyCache")
            .field("len", &self.len())
            .finish()
    }
}

/// Locks a mutex; a panic elsewhere while holding it leaves only cache state,
/// which stays consistent, so poisoning is ignored.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_evicts_by_subject() {
        let cache = KeyCache::new(2);
        let (a, b) = (&[1; 32], &[2; 32]);
        cache.insert(a, Arc::new(SubjectKeys::new(1, Key256::random())));
        cache.insert(a, Arc::new(SubjectKeys::new(2, Key256::random())));
        cache.insert(b, Arc::new(SubjectKeys::new(1, Key256::random())));
        assert_eq!(cache.len(), 2);
        assert!(cache.get(a, 1).is_none(), "least recently used went first");
        cache.evict_subject(a);
        assert!(cache.get(a, 2).is_none());
        assert!(cache.get(b, 1).is_some());
    }

    #[test]
    fn the_size_estimate_counts_entries_and_field_keys() {
        let cache = KeyCache::new(8);
        assert_eq!(cache.approx_bytes(), 0);
        let keys = Arc::new(SubjectKeys::new(1, Key256::random()));
        cache.insert(&[1; 32], Arc::clone(&keys));
        let bare = cache.approx_bytes();
        assert!(bare >= std::mem::size_of::<SubjectKeys>(), "{bare}");
        keys.field_cipher("eu", "users", "email");
        let one = cache.approx_bytes();
        // The key and its names, not a key schedule.
        assert!(one >= bare + 32 + "usersemail".len(), "{one} {bare}");
        assert!(
            one < bare + std::mem::size_of::<Aes256Gcm>(),
            "{one} {bare}"
        );
        cache.insert(&[2; 32], Arc::new(SubjectKeys::new(1, Key256::random())));
        assert_eq!(cache.approx_bytes(), one + bare);
    }

    #[test]
    fn field_ciphers_are_cached_and_distinct() {
        use aes_gcm::aead::Aead;
        let sk = SubjectKeys::new(1, Key256::random());
        let seal = |c: &Aes256Gcm| c.encrypt(&[0; 12].into(), &b"x"[..]).unwrap();
        let a = sk.field_cipher("eu", "users", "email");
        let b = sk.field_cipher("eu", "users", "email");
        assert_eq!(seal(&a), seal(&b));
        let c = sk.field_cipher("eu", "users", "name");
        assert_ne!(seal(&a), seal(&c));
        // One cached key per field.
        assert_eq!(lock(&sk.field_keys).len(), 2);
    }
}
