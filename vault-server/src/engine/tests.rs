use super::*;
use crate::policy::{PolicyHandle, Principal, Role};
use crate::storage::{
    parse_subject_key_id, subject_key_id, subject_key_prefix, RocksStore, StoreOptions,
};

/// The Records row of a record, by its clear ids.
fn rec_key(e: &Engine, collection: &str, id: &str) -> Vec<u8> {
    record_key(collection, &e.names.record(collection, id))
}

/// The prefix of a subject's SubjectKeys rows.
fn key_prefix(e: &Engine, subject: &str) -> Vec<u8> {
    let name = e.names.subject(subject);
    subject_key_prefix(e.names.bucket(&name), &name)
}

/// The SubjectKeys row of one version of a subject's key.
fn key_row(e: &Engine, subject: &str, version: u32) -> Vec<u8> {
    let name = e.names.subject(subject);
    subject_key_id(e.names.bucket(&name), &name, version)
}

/// The prefix of a subject's SubjectRecords (index) rows.
fn index_prefix(e: &Engine, subject: &str) -> Vec<u8> {
    e.names.subject(subject).to_vec()
}

fn custody() -> crate::keys::Custody {
    crate::keys::Custody {
        set_id: [1; 16],
        threshold: 1,
        shares: 1,
    }
}

fn keyring_file(dir: &std::path::Path) -> KeyringFile {
    KeyringFile::at(dir.join("keyring"), Key256::random())
}

fn options() -> EngineOptions {
    EngineOptions {
        key_cache_capacity: 16,
        rewrap: RewrapOptions {
            batch_size: 7,
            keys_per_second: 0,
        },
        reindex: ReindexOptions {
            batch_size: 3,
            rows_per_second: 0,
        },
        ..EngineOptions::default()
    }
}

fn engine_over(store: Arc<dyn Store>, dir: &std::path::Path) -> Engine {
    let kr = Keyring::generate("eu".parse().unwrap(), custody());
    let e = Engine::new(store, kr, keyring_file(dir), options()).unwrap();
    crate::dev::seed(&e).unwrap();
    e
}

/// A data folder whose engine can be "restarted": a new engine over the
/// same store, unsealing the saved keyring file with the same key.
struct Restartable {
    dir: std::path::PathBuf,
    store: Arc<dyn Store>,
    unseal_key: Key256,
}

impl Restartable {
    fn new(dir: &std::path::Path) -> Self {
        Restartable {
            dir: dir.to_owned(),
            store: Arc::new(RocksStore::open(&dir.join("db"), &StoreOptions::default()).unwrap()),
            unseal_key: Key256::random(),
        }
    }

    /// The same over a store of the test's own (one that injects faults).
    fn over(dir: &std::path::Path, store: Arc<dyn Store>) -> Self {
        Restartable {
            dir: dir.to_owned(),
            store,
            unseal_key: Key256::random(),
        }
    }

    fn file(&self) -> KeyringFile {
        KeyringFile::at(
            self.dir.join("keyring"),
            Key256::from_slice(self.unseal_key.expose_secret()).unwrap(),
        )
    }

    /// The first engine: a fresh keyring, the dev collection.
    fn start(&self) -> Engine {
        let kr = Keyring::generate("eu".parse().unwrap(), custody());
        let e = Engine::new(Arc::clone(&self.store), kr, self.file(), options()).unwrap();
        crate::dev::seed(&e).unwrap();
        e
    }

    /// A later engine, from the keyring file the earlier one saved.
    fn restart(&self) -> Engine {
        let file = std::fs::read(self.dir.join("keyring")).unwrap();
        let kr = Keyring::unseal(&file, &self.unseal_key, &"eu".parse().unwrap()).unwrap();
        Engine::new(Arc::clone(&self.store), kr, self.file(), options()).unwrap()
    }
}

fn engine(dir: &std::path::Path) -> Engine {
    let store = RocksStore::open(&dir.join("db"), &StoreOptions::default()).unwrap();
    engine_over(Arc::new(store), dir)
}

fn user(id: &str, subject: &str) -> Record {
    let mut fields = BTreeMap::new();
    fields.insert(
        "email".to_string(),
        Value::String(format!("{id}@example.eu")),
    );
    fields.insert("name".to_string(), Value::String("Ada".into()));
    fields.insert(
        "birth_date".to_string(),
        Value::Timestamp {
            seconds: 1,
            nanos: 2,
        },
    );
    Record::new("users", id, subject, fields)
}

/// Writes users `r0`..`r{n-1}`, each of its own subject `s0`...
fn put_users(e: &Engine, n: usize) {
    let c = Caller::internal("t");
    for i in 0..n {
        e.put_record(&c, user(&format!("r{i}"), &format!("s{i}")))
            .unwrap();
    }
}

/// Reads users `r0`..`r{n-1}` back (each must decrypt).
fn read_users(e: &Engine, n: usize) {
    let c = Caller::internal("t");
    for i in 0..n {
        e.get_record(&c, "users", &format!("r{i}"), &[]).unwrap();
    }
}

#[test]
fn put_get_projection_counts_decrypts() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let c = Caller::internal("t");
    e.put_record(&c, user("r1", "s1")).unwrap();
    let before = e.stats().fields_decrypted;
    let got = e.get_record(&c, "users", "r1", &["email".into()]).unwrap();
    assert_eq!(got.fields.len(), 1);
    assert_eq!(e.stats().fields_decrypted - before, 1);
    let all = e.get_record(&c, "users", "r1", &[]).unwrap();
    assert_eq!(all, user("r1", "s1"));
}

#[test]
fn one_subject_key_per_subject_under_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let e = Arc::new(engine(dir.path()));
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let e = Arc::clone(&e);
            std::thread::spawn(move || {
                e.put_record(&Caller::internal("t"), user(&format!("r{i}"), "same"))
                    .unwrap()
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    read_users(&e, 8);
    assert_eq!(
        e.store
            .scan_prefix(Table::SubjectKeys, &key_prefix(&e, "same"))
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn validation_errors() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let c = Caller::internal("t");
    let mut r = user("r1", "s1");
    r.fields.insert("nope".into(), Value::Bool(true));
    assert!(matches!(
        e.put_record(&c, r),
        Err(Error::InvalidArgument(_))
    ));
    let mut r = user("r1", "s1");
    r.fields.insert("name".into(), Value::Int64(1));
    let err = e.put_record(&c, r).unwrap_err().to_string();
    assert!(err.contains("expects string, got int64"), "{err}");
    let mut r = user("r1", "s1");
    r.fields
        .insert("name".into(), Value::String("x".repeat(70_000)));
    assert!(matches!(e.put_record(&c, r), Err(Error::LimitExceeded(_))));
    assert!(matches!(
        e.put_record(&c, user("", "s1")),
        Err(Error::InvalidArgument(_))
    ));
    let mut r = user("r1", "s1");
    r.collection = "ghosts".into();
    assert!(matches!(e.put_record(&c, r), Err(Error::NotFound(_))));
    assert!(matches!(
        e.get_record(&c, "users", "zz", &[]),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        e.get_record(&c, "users", "zz", &["nope".into()]),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        e.put_records(&c, vec![user("a", "s"), user("a", "s")]),
        Err(Error::InvalidArgument(_))
    ));
    let reader = Caller {
        principal: Principal {
            name: "ro".into(),
            roles: vec![Role::Reader],
        },
        purpose: Some("test".into()),
        internal: false,
        request_id: None,
    };
    assert!(matches!(
        e.put_record(&reader, user("r1", "s1")),
        Err(Error::PermissionDenied(_))
    ));
}

#[test]
fn foreign_region_collection_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let mut c = crate::dev::users_collection("us");
    c.name = "us_users".into();
    assert!(matches!(
        e.create_collection(&Caller::internal("t"), c),
        Err(Error::WrongRegion { .. })
    ));
}

#[test]
fn data_folder_remembers_its_keyring() {
    let dir = tempfile::tempdir().unwrap();
    drop(engine(dir.path()));
    let store = RocksStore::open(&dir.path().join("db"), &StoreOptions::default()).unwrap();
    let other = Keyring::generate("eu".parse().unwrap(), custody());
    let err = Engine::new(Arc::new(store), other, keyring_file(dir.path()), options()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Keyring(crate::keys::KeyringError::ForeignDataFolder)
        ),
        "{err}"
    );
}

/// Region binding with the same key material: records and wrapped subject
/// keys written by an eu engine are copied into fresh data folders and read
/// by engines holding that very keyring, labelled eu (the control: they
/// read) and relabelled de (they do not). Only the label differs, so the
/// refusal comes from the region bound into the keys and AADs, not from
/// other keys (the e2e test `region::ciphertext_copied_to_another_region_
/// does_not_decrypt` copies into a vault with other keys as well).
#[test]
fn the_same_keys_under_another_region_label_do_not_decrypt() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(RocksStore::open(&dir.path().join("db"), &StoreOptions::default()).unwrap());
    let keyring = Keyring::generate("eu".parse().unwrap(), custody());
    let e = Engine::new(
        Arc::clone(&store),
        keyring.clone(),
        keyring_file(dir.path()),
        options(),
    )
    .unwrap();
    crate::dev::seed(&e).unwrap();
    put_users(&e, 3);
    e.close();
    drop(e);

    // A fresh data folder holding the eu rows, unsealed with `keyring`
    // under the label `region`.
    let copy_under = |region: &str| {
        let folder = dir.path().join(region);
        let to = RocksStore::open(&folder.join("db"), &StoreOptions::default()).unwrap();
        let mut ws = WriteSet::new();
        for table in [Table::Records, Table::SubjectKeys, Table::SubjectRecords] {
            store
                .visit(table, &mut |k, v| ws.put(table, k.to_vec(), v.to_vec()))
                .unwrap();
        }
        to.write(ws).unwrap();
        let labelled = keyring.relabelled_for_test(region.parse().unwrap());
        let e = Engine::new(Arc::new(to), labelled, keyring_file(&folder), options()).unwrap();
        crate::dev::seed(&e).unwrap();
        assert_eq!(e.region().as_str(), region);
        e
    };
    let c = Caller::internal("t");
    let eu = copy_under("eu");
    read_users(&eu, 3);
    let de = copy_under("de");
    // Storage names are region-bound too: under another label no row is
    // even found.
    for i in 0..3 {
        let got = de.get_record(&c, "users", &format!("r{i}"), &[]);
        assert!(matches!(got, Err(Error::NotFound(_))), "r{i}: {got:?}");
    }
    // Each subject key unwraps under eu and under no other label: the
    // refusal is the wrap's region binding, whatever the store holds.
    for (row, wrapped) in wrapped_keys(&eu) {
        let (_, subject, version) = parse_subject_key_id(&row).unwrap();
        let eu_ring = keyring.relabelled_for_test("eu".parse().unwrap());
        let de_ring = keyring.relabelled_for_test("de".parse().unwrap());
        assert!(unwrap_subject_key(&eu_ring, &subject, version, &wrapped).is_ok());
        assert!(matches!(
            unwrap_subject_key(&de_ring, &subject, version, &wrapped),
            Err(Error::Integrity)
        ));
    }
}

/// Every wrapped subject key, by subject-key row.
fn wrapped_keys(e: &Engine) -> Vec<(Vec<u8>, Vec<u8>)> {
    e.store.scan_prefix(Table::SubjectKeys, b"").unwrap()
}

fn run_rewrap_to_end(e: &Engine) -> usize {
    let mut steps = 1;
    while e.rewrap_step().unwrap() {
        steps += 1;
    }
    steps
}

#[test]
fn root_rotation_rewraps_every_key_and_data_still_reads() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let c = Caller::internal("t");
    put_users(&e, 30);
    assert!(e.rewrap_progress().finished);
    assert_eq!(e.rotate_root(&c).unwrap(), 2);
    assert!(!e.rewrap_progress().finished);
    // A write after the rotation wraps under version 2.
    e.put_record(&c, user("late", "s-late")).unwrap();
    let before = wrapped_keys(&e);
    // 31 keys in batches of 7: 5 batches, the last one short.
    assert_eq!(run_rewrap_to_end(&e), 5);
    let p = e.rewrap_progress();
    assert!(p.finished);
    assert_eq!(p.target_version, 2);
    assert_eq!(
        (p.rewrapped, p.examined, p.pending_at_start, p.unreadable),
        (30, 31, 30, 0)
    );
    let after = wrapped_keys(&e);
    assert_eq!(before.len(), after.len(), "no key lost or added");
    for (k, v) in &after {
        assert_eq!(crate::keys::wrapping_version(v).unwrap(), 2, "{k:?}");
    }
    let counts = e.root_keys(&c).unwrap();
    assert_eq!(counts[0].wrapped_subject_keys, 0);
    assert_eq!(counts[1].wrapped_subject_keys, 31);
    // Retire and destroy the old version; everything still reads, from a
    // cold cache too.
    e.cache.clear();
    e.retire_root(&c, 1).unwrap();
    e.destroy_root(&c, 1).unwrap();
    read_users(&e, 30);
    let file = std::fs::read(dir.path().join("keyring")).unwrap();
    let kr = Keyring::unseal(&file, &e.keyring_file.unseal_key, &"eu".parse().unwrap()).unwrap();
    assert_eq!(
        kr.root_versions().collect::<Vec<_>>(),
        vec![
            (1, crate::keys::KeyState::Destroyed),
            (2, crate::keys::KeyState::Active)
        ]
    );
}

#[test]
fn retire_is_refused_while_keys_remain_or_for_the_current_version() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let c = Caller::internal("t");
    e.put_record(&c, user("r1", "s1")).unwrap();
    assert!(matches!(
        e.retire_root(&c, 1),
        Err(Error::FailedPrecondition(_))
    ));
    e.rotate_root(&c).unwrap();
    let err = e.retire_root(&c, 1).unwrap_err();
    assert!(
        err.to_string().contains("still wraps 1 subject keys"),
        "{err}"
    );
    assert!(matches!(
        e.destroy_root(&c, 1),
        Err(Error::FailedPrecondition(_))
    ));
    assert!(matches!(e.destroy_root(&c, 9), Err(Error::NotFound(_))));
    run_rewrap_to_end(&e);
    e.retire_root(&c, 1).unwrap();
    // A retired version wraps nothing new: new subjects go under v2.
    e.put_record(&c, user("r2", "s2")).unwrap();
    for (_, v) in wrapped_keys(&e) {
        assert_eq!(crate::keys::wrapping_version(&v).unwrap(), 2);
    }
    // Custody needs the custodian role.
    let reader = Caller {
        principal: Principal {
            name: "svc".into(),
            roles: vec![Role::Reader, Role::Writer, Role::Admin],
        },
        purpose: Some("test".into()),
        internal: false,
        request_id: None,
    };
    assert!(matches!(
        e.rotate_root(&reader),
        Err(Error::PermissionDenied(_))
    ));
    assert!(matches!(
        e.rotate_subject(&reader, "s1"),
        Err(Error::PermissionDenied(_))
    ));
    assert!(matches!(
        e.erase_subject(&reader, "s1"),
        Err(Error::PermissionDenied(_))
    ));
}

#[test]
fn rewrap_resumes_from_its_persisted_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let folder = Restartable::new(dir.path());
    let e = folder.start();
    let c = Caller::internal("t");
    put_users(&e, 20);
    e.rotate_root(&c).unwrap();
    assert!(e.rewrap_step().unwrap());
    assert!(e.rewrap_step().unwrap());
    let mid = e.rewrap_progress();
    assert_eq!(mid.examined, 14);
    // "Restart": a new engine over the same store and the saved keyring.
    drop(e);
    let e = folder.restart();
    assert_eq!(e.rewrap_progress(), mid, "progress survives the restart");
    run_rewrap_to_end(&e);
    let p = e.rewrap_progress();
    assert_eq!((p.rewrapped, p.examined), (20, 20), "every key once");
    read_users(&e, 20);
}

#[test]
fn subject_rotation_reencrypts_and_destroys_the_old_key() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let c = Caller::internal("t");
    e.put_record(&c, user("a1", "alice")).unwrap();
    e.put_record(&c, user("a2", "alice")).unwrap();
    e.put_record(&c, user("b1", "bob")).unwrap();
    let before = e.get_record(&c, "users", "a1", &[]).unwrap();
    let raw_before = e
        .store
        .get(Table::Records, &rec_key(&e, "users", "a1"))
        .unwrap()
        .unwrap();
    let r = e.rotate_subject(&c, "alice").unwrap();
    assert_eq!(
        r,
        SubjectRotation {
            new_version: 2,
            records: 2,
            fields: 6
        }
    );
    let raw_after = e
        .store
        .get(Table::Records, &rec_key(&e, "users", "a1"))
        .unwrap()
        .unwrap();
    assert_ne!(raw_before, raw_after);
    assert_eq!(StoredRecord::decode(&raw_after).unwrap().0.key_version, 2);
    e.cache.clear();
    assert_eq!(e.get_record(&c, "users", "a1", &[]).unwrap(), before);
    e.get_record(&c, "users", "a2", &[]).unwrap();
    e.get_record(&c, "users", "b1", &[]).unwrap();
    // Only version 2 of alice's key is left.
    let rows = e
        .store
        .scan_prefix(Table::SubjectKeys, &key_prefix(&e, "alice"))
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, key_row(&e, "alice", 2));
    // The old ciphertext does not open any more.
    let mut ws = WriteSet::new();
    ws.put(Table::Records, rec_key(&e, "users", "a1"), raw_before);
    e.store.write(ws).unwrap();
    assert!(matches!(
        e.get_record(&c, "users", "a1", &[]),
        Err(Error::Integrity)
    ));
    // New writes go under version 2.
    e.put_record(&c, user("a3", "alice")).unwrap();
    let raw = e
        .store
        .get(Table::Records, &rec_key(&e, "users", "a3"))
        .unwrap()
        .unwrap();
    assert_eq!(StoredRecord::decode(&raw).unwrap().0.key_version, 2);
    assert!(matches!(
        e.rotate_subject(&c, "nobody"),
        Err(Error::NotFound(_))
    ));
}

#[test]
fn index_follows_replaced_and_deleted_records() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let c = Caller::internal("t");
    e.put_record(&c, user("r1", "alice")).unwrap();
    e.put_record(&c, user("r2", "alice")).unwrap();
    // r1 moves to bob; r2 is deleted.
    e.put_record(&c, user("r1", "bob")).unwrap();
    e.delete_record(&c, "users", "r2").unwrap();
    assert!(e
        .store
        .scan_prefix(Table::SubjectRecords, &index_prefix(&e, "alice"))
        .unwrap()
        .is_empty());
    assert_eq!(
        e.store
            .scan_prefix(Table::SubjectRecords, &index_prefix(&e, "bob"))
            .unwrap()
            .len(),
        1
    );
    // Erasing alice leaves bob's r1 alone.
    let receipt = e.erase_subject(&c, "alice").unwrap();
    assert_eq!(receipt.records_deleted, 0);
    e.get_record(&c, "users", "r1", &[]).unwrap();
}

#[test]
fn erasure_shreds_and_survives_a_restored_backup() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let c = Caller::internal("t");
    e.put_record(&c, user("a1", "alice")).unwrap();
    e.put_record(&c, user("a2", "alice")).unwrap();
    e.put_record(&c, user("b1", "bob")).unwrap();
    // The "backup": every raw row of alice, taken before the erasure.
    let backup: Vec<(Table, Vec<u8>, Vec<u8>)> =
        [Table::SubjectKeys, Table::Records, Table::SubjectRecords]
            .into_iter()
            .flat_map(|t| {
                e.store
                    .scan_prefix(t, b"")
                    .unwrap()
                    .into_iter()
                    .map(move |(k, v)| (t, k, v))
            })
            .collect();
    assert_eq!(e.stats().cached_subject_keys, 2);
    let receipt = e.erase_subject(&c, "alice").unwrap();
    assert_eq!(e.stats().cached_subject_keys, 1, "alice evicted at once");
    assert_eq!(
        (receipt.records_deleted, receipt.key_versions_destroyed),
        (2, 1)
    );
    receipt
        .verify(&ed25519_dalek::VerifyingKey::from_bytes(&e.signing_public_key()).unwrap())
        .unwrap();
    let stored = e.store.scan_prefix(Table::Receipts, b"").unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        crate::keys::ErasureReceipt::decode(&stored[0].1).unwrap(),
        receipt
    );
    assert!(e
        .store
        .scan_prefix(Table::SubjectKeys, &key_prefix(&e, "alice"))
        .unwrap()
        .is_empty());
    assert!(matches!(
        e.get_record(&c, "users", "a1", &[]),
        Err(Error::NotFound(_))
    ));
    e.get_record(&c, "users", "b1", &[]).unwrap();

    // Restore the backup over the live store: alice stays erased.
    let mut ws = WriteSet::new();
    for (t, k, v) in backup {
        ws.put(t, k, v);
    }
    e.store.write(ws).unwrap();
    e.cache.clear();
    assert!(matches!(
        e.get_record(&c, "users", "a1", &[]),
        Err(Error::NotFound(_))
    ));
    let (found, missing) = e
        .get_records(&c, "users", &["a1".into(), "a2".into()], &[])
        .unwrap();
    assert!(found.is_empty());
    assert_eq!(missing.len(), 2);
    e.get_record(&c, "users", "b1", &[]).unwrap();
    assert_eq!(
        e.stats().cached_subject_keys,
        1,
        "no erased key enters the cache"
    );

    // The id can be used again: a new key, numbered after the erased ones.
    e.put_record(&c, user("a9", "alice")).unwrap();
    let raw = e
        .store
        .get(Table::Records, &rec_key(&e, "users", "a9"))
        .unwrap()
        .unwrap();
    assert_eq!(StoredRecord::decode(&raw).unwrap().0.key_version, 2);
    e.get_record(&c, "users", "a9", &[]).unwrap();
    assert!(matches!(
        e.get_record(&c, "users", "a1", &[]),
        Err(Error::NotFound(_))
    ));

    // Erasing someone unknown is not an error and changes nothing.
    let r = e.erase_subject(&c, "nobody").unwrap();
    assert_eq!((r.records_deleted, r.key_versions_destroyed), (0, 0));
}

/// An erasure stopped at its commit point (the keyring save after the
/// batch fails, say a full disk) leaves no subject without a key: the batch
/// already re-wrapped the bucket under the new epoch, which the keyring on
/// disk holds beside the old one; the vault keeps serving, and the next
/// engine drops the old epoch at start (an audited `finish_erasure`).
#[test]
fn an_erasure_stopped_at_its_commit_point_is_finished_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (keys, store, e) = faulty_engine_with_keyring_apart(dir.path());
    let folder = keys.folder.clone();
    let c = Caller::internal("t");
    let names = e.names.clone();
    let bucket = names.bucket(&names.subject("alice"));
    let mates = bucket_mates(&names, "alice", 2);
    e.put_record(&c, user("a1", "alice")).unwrap();
    for (i, s) in mates.iter().enumerate() {
        e.put_record(&c, user(&format!("r{i}"), s)).unwrap();
    }
    let read_mates = |e: &Engine| {
        for i in 0..mates.len() {
            e.get_record(&c, "users", &format!("r{i}"), &[]).unwrap();
        }
    };
    *lock(&store.block_folder_after_key_write) = Some(folder.clone());
    assert!(matches!(
        e.erase_subject(&c, "alice"),
        Err(Error::Io { .. })
    ));
    // The folder comes back (the operator frees the disk).
    std::fs::remove_file(&folder).unwrap();
    std::fs::rename(folder.with_extension("moved"), &folder).unwrap();
    assert_eq!(keys.on_disk().unfinished_shreds(), vec![bucket]);
    read_mates(&e);
    assert!(matches!(
        e.get_record(&c, "users", "a1", &[]),
        Err(Error::NotFound(_))
    ));
    e.close();
    drop(e);

    let e = Engine::new(
        Arc::clone(&store) as Arc<dyn Store>,
        keys.on_disk(),
        keys.file(),
        options(),
    )
    .unwrap();
    assert!(e.keyring().unfinished_shreds().is_empty());
    assert!(keys.on_disk().unfinished_shreds().is_empty());
    assert_eq!(e.keyring().shred_epoch(bucket).unwrap(), 2);
    assert!(
        keys.on_disk().shred_key(bucket, 1).is_err(),
        "the old epoch is gone"
    );
    read_mates(&e);
    let finished = events_of(&e, "finish_erasure");
    assert_eq!(finished.len(), 1);
    let detail = finished[0].detail.clone().unwrap();
    assert!(
        detail.contains(&format!(
            "shred bucket {bucket} moved to epoch 2 (0 keys re-wrapped"
        )),
        "{detail}"
    );
}

/// The commit point of an erasure is saved even by an engine sealed
/// meanwhile (a request past its batch finishes); a closed engine refuses
/// every new request all the same.
#[test]
fn a_sealed_engine_still_saves_an_erasure_commit_point() {
    let dir = tempfile::tempdir().unwrap();
    let (keys, store, e) = faulty_engine_with_keyring_apart(dir.path());
    let folder = keys.folder.clone();
    let c = Caller::internal("t");
    let bucket = e.names.bucket(&e.names.subject("alice"));
    e.put_record(&c, user("a1", "alice")).unwrap();
    // A bucket-mate, so the erasure's batch re-wraps a key (the fault
    // fires after a batch that writes one).
    let mate = bucket_mates(&e.names, "alice", 1).remove(0);
    e.put_record(&c, user("m1", &mate)).unwrap();
    *lock(&store.block_folder_after_key_write) = Some(folder.clone());
    assert!(e.erase_subject(&c, "alice").is_err());
    std::fs::remove_file(&folder).unwrap();
    std::fs::rename(folder.with_extension("moved"), &folder).unwrap();
    assert_eq!(keys.on_disk().unfinished_shreds(), vec![bucket]);
    e.close();
    assert!(matches!(e.erase_subject(&c, "bob"), Err(Error::Sealed)));
    assert_eq!(e.finish_bucket(bucket).unwrap(), vec![1]);
    assert!(keys.on_disk().unfinished_shreds().is_empty());
    assert!(keys.on_disk().shred_key(bucket, 1).is_err());
}

/// A later erasure in a bucket whose last erasure did not reach its commit
/// point finishes that one first, then destroys its own epoch: a key made
/// in between (under the newer epoch) is not left openable in a copy.
#[test]
fn a_later_erasure_finishes_an_unfinished_one_and_destroys_its_own_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let (keys, store, e) = faulty_engine_with_keyring_apart(dir.path());
    let folder = keys.folder.clone();
    let c = Caller::internal("t");
    let names = e.names.clone();
    let bucket = names.bucket(&names.subject("alice"));
    let [bob, carol]: [String; 2] = bucket_mates(&names, "alice", 2).try_into().unwrap();
    e.put_record(&c, user("a1", "alice")).unwrap();
    e.put_record(&c, user("c1", &carol)).unwrap();
    *lock(&store.block_folder_after_key_write) = Some(folder.clone());
    assert!(e.erase_subject(&c, "alice").is_err());
    std::fs::remove_file(&folder).unwrap();
    std::fs::rename(folder.with_extension("moved"), &folder).unwrap();
    assert_eq!(e.keyring().unfinished_shreds(), vec![bucket]);
    // bob's first key is made now, under epoch 2; a copy keeps it.
    e.put_record(&c, user("b1", &bob)).unwrap();
    let bob_row = key_row(&e, &bob, 1);
    let copy = e.store.get(Table::SubjectKeys, &bob_row).unwrap().unwrap();
    assert_eq!(crate::keys::wrapping(&copy).unwrap().1, 2);

    let receipt = e.erase_subject(&c, &bob).unwrap();
    assert_eq!(receipt.shredded.epoch, 2, "bob's own epoch is destroyed");
    let kr = e.keyring();
    assert!(kr.unfinished_shreds().is_empty());
    assert_eq!(kr.shred_epoch(bucket).unwrap(), 3);
    assert!(kr.shred_key(bucket, 1).is_err() && kr.shred_key(bucket, 2).is_err());
    let bare = kr.without_erasures_for_test();
    let bob_name = names.subject(&bob);
    assert!(matches!(
        unwrap_subject_key(&bare, &bob_name, 1, &copy),
        Err(Error::Integrity)
    ));
    e.get_record(&c, "users", "c1", &[]).unwrap();
    assert_eq!(events_of(&e, "finish_erasure").len(), 1);
    // Both erasures' batches were written synced, as their commit points
    // need, whatever the store's own setting.
    assert_eq!(*lock(&store.receipt_writes_synced), vec![true, true]);
}

/// An erasure whose batch failed (after the keyring gained the bucket's
/// new epoch and recorded the erasure) leaves no subject without a key:
/// the old epoch still opens the bucket-mates' rows, and the next engine
/// re-wraps them, deletes the erased subject's key rows and drops the old
/// epoch at start. (After a failed write the audit log refuses every write
/// until a restart, so the restart comes first.)
#[test]
fn an_engine_finishes_an_erasure_whose_batch_never_ran() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FaultyAudit::over(dir.path()));
    let folder = Restartable::over(dir.path(), Arc::clone(&store) as Arc<dyn Store>);
    let e = folder.start();
    // The first engine's keyring exists only in memory until a save.
    e.rotate_root(&Caller::internal("t")).unwrap();
    run_rewrap_to_end(&e);
    let c = Caller::internal("t");
    let names = e.names.clone();
    let bucket = names.bucket(&names.subject("alice"));
    let mate = (0..)
        .map(|i| format!("m{i}"))
        .find(|s| names.bucket(&names.subject(s)) == bucket)
        .unwrap();
    e.put_record(&c, user("a1", "alice")).unwrap();
    e.put_record(&c, user("r0", &mate)).unwrap();
    store.fail.store(true, Ordering::SeqCst);
    assert!(e.erase_subject(&c, "alice").is_err());
    store.fail.store(false, Ordering::SeqCst);
    e.close();
    drop(e);
    let e = folder.restart();
    let kr = e.keyring();
    assert!(kr.unfinished_shreds().is_empty());
    assert!(kr.shred_key(bucket, 1).is_err(), "the old epoch is gone");
    e.get_record(&c, "users", "r0", &[]).unwrap();
    assert!(e
        .store
        .scan_prefix(Table::SubjectKeys, &key_prefix(&e, "alice"))
        .unwrap()
        .is_empty());
    // alice's record outlived the failed call; erasing again removes it.
    let again = e.erase_subject(&c, "alice").unwrap();
    assert_eq!(again.records_deleted, 1);
}

/// A keyring file in a folder of its own, as production keeps it apart
/// from the data folder, sealed under a known unseal key.
struct KeyringApart {
    folder: std::path::PathBuf,
    unseal_key: Key256,
}

impl KeyringApart {
    /// A new keyring, saved in `folder` (created).
    fn new(folder: std::path::PathBuf) -> (KeyringApart, Keyring) {
        std::fs::create_dir_all(&folder).unwrap();
        let apart = KeyringApart {
            folder,
            unseal_key: Key256::random(),
        };
        let kr = Keyring::generate("eu".parse().unwrap(), custody());
        std::fs::write(apart.folder.join("keyring"), kr.seal(&apart.unseal_key)).unwrap();
        (apart, kr)
    }

    fn file(&self) -> KeyringFile {
        KeyringFile::at(
            self.folder.join("keyring"),
            Key256::from_slice(self.unseal_key.expose_secret()).unwrap(),
        )
    }

    /// The keyring as the file holds it now.
    fn on_disk(&self) -> Keyring {
        let bytes = std::fs::read(self.folder.join("keyring")).unwrap();
        Keyring::unseal(&bytes, &self.unseal_key, &"eu".parse().unwrap()).unwrap()
    }
}

/// A seeded engine over a fault-injecting store in `dir`, its keyring
/// file in `dir/keys`.
fn faulty_engine_with_keyring_apart(
    dir: &std::path::Path,
) -> (KeyringApart, Arc<FaultyAudit>, Engine) {
    let (keys, kr) = KeyringApart::new(dir.join("keys"));
    let store = Arc::new(FaultyAudit::over(dir));
    let e = Engine::new(
        Arc::clone(&store) as Arc<dyn Store>,
        kr,
        keys.file(),
        options(),
    )
    .unwrap();
    crate::dev::seed(&e).unwrap();
    (keys, store, e)
}

/// `n` subject ids that share `subject`'s shred bucket.
fn bucket_mates(names: &StorageNames, subject: &str, n: usize) -> Vec<String> {
    let bucket = names.bucket(&names.subject(subject));
    (0..)
        .map(|i| format!("m{i}"))
        .filter(|s| names.bucket(&names.subject(s)) == bucket)
        .take(n)
        .collect()
}

/// The audit events of `operation`.
fn events_of(e: &Engine, operation: &str) -> Vec<crate::audit::Event> {
    e.audit()
        .events(0, 10_000)
        .unwrap()
        .iter()
        .map(|raw| serde_json::from_slice::<crate::audit::Event>(raw).unwrap())
        .filter(|ev| ev.operation == operation)
        .collect()
}

fn copy_folder(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_folder(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Crypto-shredding, read from the disk: a copy of the data folder taken
/// before an erasure, opened afterwards with the current keyring through
/// the storage and key layers alone (no engine check), cannot unwrap the
/// erased subject's key, even with the keyring's erased list emptied: the
/// bucket key it was wrapped under is gone. The other subjects of the
/// bucket open from the current folder (re-wrapped under the new epoch),
/// with the same keys as before; subjects of other buckets are untouched.
#[test]
fn a_copy_from_before_an_erasure_cannot_unwrap_the_erased_key() {
    let dir = tempfile::tempdir().unwrap();
    let backup = tempfile::tempdir().unwrap();
    let (keys, kr) = KeyringApart::new(dir.path().join("keys"));
    let open_store = |folder: &std::path::Path| -> Arc<dyn Store> {
        Arc::new(RocksStore::open(&folder.join("db"), &StoreOptions::default()).unwrap())
    };
    let c = Caller::internal("t");
    let (names, bucket, mates, outsider) = {
        let e = Engine::new(open_store(dir.path()), kr, keys.file(), options()).unwrap();
        crate::dev::seed(&e).unwrap();
        let names = e.names.clone();
        let bucket = names.bucket(&names.subject("alice"));
        // Three subjects that share alice's bucket, one that does not.
        let mates = bucket_mates(&names, "alice", 3);
        let outsider = (0..)
            .map(|i| format!("o{i}"))
            .find(|s| names.bucket(&names.subject(s)) != bucket)
            .unwrap();
        e.put_record(&c, user("a1", "alice")).unwrap();
        e.put_record(&c, user("a2", "alice")).unwrap();
        for (i, s) in mates.iter().chain([&outsider]).enumerate() {
            e.put_record(&c, user(&format!("r{i}"), s)).unwrap();
        }
        e.close();
        (names, bucket, mates, outsider)
    };
    // The engine and its store are dropped: the folder is closed. Copy it,
    // and the keyring that goes with it (to check the copy is sound).
    copy_folder(&dir.path().join("db"), &backup.path().join("db"));
    let keyring_before = keys.on_disk();

    let e = Engine::new(
        open_store(dir.path()),
        keys.on_disk(),
        keys.file(),
        options(),
    )
    .unwrap();
    let receipt = e.erase_subject(&c, "alice").unwrap();
    assert_eq!(receipt.shredded.bucket, bucket);
    assert_eq!(receipt.shredded.epoch, 1);
    assert_eq!(receipt.shredded.keys_rewrapped, 3);
    for i in 0..3 {
        e.get_record(&c, "users", &format!("r{i}"), &[]).unwrap();
    }
    e.close();
    drop(e);

    let now = keys.on_disk();
    let bare = now.without_erasures_for_test();
    let old_rows = open_store(backup.path())
        .scan_prefix(Table::SubjectKeys, b"")
        .unwrap();
    let current_store = open_store(dir.path());
    let alice = names.subject("alice");
    let mut seen = (0, 0, 0);
    for (row, wrapped) in &old_rows {
        let (row_bucket, name, version) = parse_subject_key_id(row).unwrap();
        // The copy is sound: its keyring opens every row of it.
        let before = unwrap_subject_key(&keyring_before, &name, version, wrapped).unwrap();
        if name == alice {
            seen.0 += 1;
            assert!(matches!(
                unwrap_subject_key(&now, &name, version, wrapped),
                Err(Error::SubjectErased)
            ));
            assert!(matches!(
                unwrap_subject_key(&bare, &name, version, wrapped),
                Err(Error::Integrity)
            ));
            assert!(current_store
                .get(Table::SubjectKeys, row)
                .unwrap()
                .is_none());
        } else if row_bucket == bucket {
            seen.1 += 1;
            // The old wrap of a bucket-mate is dead too; its re-wrapped
            // row in the current folder opens, to the same key.
            assert!(matches!(
                unwrap_subject_key(&bare, &name, version, wrapped),
                Err(Error::Integrity)
            ));
            let rewrapped = current_store.get(Table::SubjectKeys, row).unwrap().unwrap();
            assert_eq!(crate::keys::wrapping(&rewrapped).unwrap().1, 2);
            let after = unwrap_subject_key(&now, &name, version, &rewrapped).unwrap();
            assert_eq!(after.expose_secret(), before.expose_secret());
        } else {
            seen.2 += 1;
            let same = unwrap_subject_key(&now, &name, version, wrapped).unwrap();
            assert_eq!(same.expose_secret(), before.expose_secret());
        }
    }
    // alice, her three bucket-mates, and the outsider plus the dev seed's
    // subjects elsewhere.
    assert_eq!((seen.0, seen.1), (1, mates.len()));
    assert!(seen.2 >= 1, "{outsider} is in another bucket");
}

#[test]
fn rewrap_removes_erased_rows_from_a_restored_backup_so_the_old_root_can_retire() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let c = Caller::internal("t");
    e.put_record(&c, user("a1", "alice")).unwrap();
    e.put_record(&c, user("b1", "bob")).unwrap();
    let alice_row = key_row(&e, "alice", 1);
    let backup = e
        .store
        .get(Table::SubjectKeys, &alice_row)
        .unwrap()
        .unwrap();
    e.erase_subject(&c, "alice").unwrap();
    // The backup brings alice's wrapped key back, under root version 1.
    let mut ws = WriteSet::new();
    ws.put(Table::SubjectKeys, alice_row.clone(), backup);
    e.store.write(ws).unwrap();
    e.rotate_root(&c).unwrap();
    run_rewrap_to_end(&e);
    let p = e.rewrap_progress();
    assert_eq!((p.rewrapped, p.removed_erased, p.unreadable), (1, 1, 0));
    assert!(e
        .store
        .get(Table::SubjectKeys, &alice_row)
        .unwrap()
        .is_none());
    e.retire_root(&c, 1).unwrap();
    e.get_record(&c, "users", "b1", &[]).unwrap();
}

#[test]
fn a_closed_engine_refuses_work_and_custody() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let c = Caller::internal("t");
    e.put_record(&c, user("r1", "s1")).unwrap();
    e.close();
    assert_eq!(e.stats().cached_subject_keys, 0, "keys dropped at close");
    assert!(matches!(
        e.put_record(&c, user("r2", "s2")),
        Err(Error::Sealed)
    ));
    assert!(matches!(
        e.get_record(&c, "users", "r1", &[]),
        Err(Error::Sealed)
    ));
    assert!(matches!(e.rotate_root(&c), Err(Error::Sealed)));
    assert!(matches!(e.erase_subject(&c, "s1"), Err(Error::Sealed)));
    assert!(matches!(e.rotate_subject(&c, "s1"), Err(Error::Sealed)));
    assert!(!e.rewrap_step().unwrap());
}

#[test]
fn a_damaged_job_record_restarts_the_job_instead_of_blocking_the_unseal() {
    let dir = tempfile::tempdir().unwrap();
    let folder = Restartable::new(dir.path());
    let e = folder.start();
    let c = Caller::internal("t");
    e.put_record(&c, user("r1", "s1")).unwrap();
    e.rotate_root(&c).unwrap();
    drop(e);
    let mut ws = WriteSet::new();
    ws.put(Table::Meta, b"rewrap_job".to_vec(), b"\x01garbage".to_vec());
    folder.store.write(ws).unwrap();
    let e = folder.restart();
    run_rewrap_to_end(&e);
    assert_eq!(e.rewrap_progress().rewrapped, 1);
    e.retire_root(&c, 1).unwrap();
}

#[test]
fn a_failed_keyring_save_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the keyring's folder should be: every save fails before
    // the rename.
    std::fs::write(dir.path().join("blocker"), b"not a folder").unwrap();
    let store: Arc<dyn Store> =
        Arc::new(RocksStore::open(&dir.path().join("db"), &StoreOptions::default()).unwrap());
    let kr = Keyring::generate("eu".parse().unwrap(), custody());
    let e = Engine::new(
        store,
        kr,
        KeyringFile::at(dir.path().join("blocker").join("keyring"), Key256::random()),
        options(),
    )
    .unwrap();
    let c = Caller::internal("t");
    assert!(matches!(e.rotate_root(&c), Err(Error::Io { .. })));
    assert_eq!(e.keyring().current_root().unwrap().0, 1, "memory unchanged");
    assert!(e.rewrap_progress().finished, "no job was started");
}

const POLICY: &str = r#"
[principals]
"loader" = ["loader"]
"support" = ["support"]
"mailer" = ["mailer"]

[[roles.mailer.rules]]
collections = ["users"]
fields = ["email"]
operations = ["write"]
purposes = ["onboarding"]

[[roles.loader.rules]]
collections = ["users"]
operations = ["write", "read"]
purposes = ["onboarding"]

[[roles.support.rules]]
collections = ["users"]
categories = ["contact"]
operations = ["read"]
purposes = ["support-ticket"]
redaction = "masked"

[[roles.support.rules]]
collections = ["users"]
fields = ["birth_date"]
operations = ["read"]
purposes = ["support-ticket"]
redaction = "masked"
"#;

fn policy_engine(dir: &std::path::Path) -> Engine {
    let store = RocksStore::open(&dir.join("db"), &StoreOptions::default()).unwrap();
    let kr = Keyring::generate("eu".parse().unwrap(), custody());
    let mut opts = options();
    opts.policy = Arc::new(PolicyHandle::new(
        crate::policy::Policy::parse(POLICY, "test").unwrap(),
        None,
    ));
    let e = Engine::new(Arc::new(store), kr, keyring_file(dir), opts).unwrap();
    // Seeding needs admin, which this policy grants nobody: seed directly.
    e.collections
        .write()
        .unwrap()
        .insert("users".into(), Arc::new(crate::dev::users_collection("eu")));
    e
}

fn as_(name: &str, purpose: Option<&str>) -> Caller {
    Caller {
        principal: Principal {
            name: name.into(),
            roles: vec![],
        },
        purpose: purpose.map(str::to_owned),
        internal: false,
        request_id: None,
    }
}

#[test]
fn policy_masks_redacts_and_never_decrypts_what_it_hides() {
    let dir = tempfile::tempdir().unwrap();
    let e = policy_engine(dir.path());
    let loader = as_("loader", Some("onboarding"));
    let mut r = user("r1", "s1");
    r.fields
        .insert("phone".into(), Value::String("+33612345678".into()));
    e.put_record(&loader, r.clone()).unwrap();

    let support = as_("support", Some("support-ticket"));
    let before = e.stats().fields_decrypted;
    let got = e.get_record(&support, "users", "r1", &[]).unwrap();
    // email and phone are contact (masked by the schema's masks); name is
    // not covered (redacted); birth_date is masked but not a string
    // (redacted). Only the two masked strings were decrypted.
    assert_eq!(e.stats().fields_decrypted - before, 2);
    assert_eq!(got.fields["email"], Value::String("r************".into()));
    assert_eq!(got.fields["phone"], Value::String("********5678".into()));
    assert_eq!(
        got.masked,
        ["email", "phone"].iter().map(|s| s.to_string()).collect()
    );
    assert_eq!(
        got.redacted,
        ["birth_date", "name"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    assert!(!got.fields.contains_key("name"));
    // The loader sees everything plain.
    let plain = e.get_record(&loader, "users", "r1", &[]).unwrap();
    assert_eq!(plain.fields, r.fields);
    assert!(plain.redacted.is_empty() && plain.masked.is_empty());

    // Purposes: none → invalid argument; another → denied, no data.
    assert!(matches!(
        e.get_record(&as_("support", None), "users", "r1", &[]),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        e.get_record(&as_("support", Some("marketing")), "users", "r1", &[]),
        Err(Error::PermissionDenied(_))
    ));
    // A writer of one field may create a record of that field, but not
    // replace a record whose other fields it would drop.
    let mailer = as_("mailer", Some("onboarding"));
    let mut only_email = user("r7", "s7");
    only_email.fields.retain(|k, _| k == "email");
    e.put_record(&mailer, only_email.clone()).unwrap();
    e.put_record(&mailer, only_email).unwrap();
    let mut onto_r1 = user("r1", "s1");
    onto_r1.fields.retain(|k, _| k == "email");
    let err = e.put_record(&mailer, onto_r1).unwrap_err();
    assert!(matches!(err, Error::PermissionDenied(_)), "{err}");
    assert_eq!(
        e.get_record(&loader, "users", "r1", &[]).unwrap().fields,
        r.fields
    );
    // Operations the policy does not grant.
    assert!(matches!(
        e.put_record(&support, user("r2", "s2")),
        Err(Error::PermissionDenied(_))
    ));
    assert!(matches!(
        e.delete_record(&loader, "users", "r1"),
        Err(Error::PermissionDenied(_))
    ));
    assert!(matches!(
        e.rotate_root(&loader),
        Err(Error::PermissionDenied(_))
    ));
    assert!(matches!(
        e.get_record(&as_("stranger", Some("x")), "users", "r1", &[]),
        Err(Error::PermissionDenied(_))
    ));
    // Schemas: visible to principals with a rule on the collection only.
    assert_eq!(e.list_collections(&support).unwrap().len(), 1);
    assert!(e
        .list_collections(&as_("stranger", None))
        .unwrap()
        .is_empty());
    assert!(matches!(
        e.collection(&as_("stranger", None), "users"),
        Err(Error::PermissionDenied(_))
    ));
}

/// A store whose writes fail while they hold an audit event, on demand.
#[derive(Debug)]
struct FaultyAudit {
    inner: RocksStore,
    fail: std::sync::atomic::AtomicBool,
    /// Panic (rather than fail) on such writes.
    panic: std::sync::atomic::AtomicBool,
    /// Fail every write as RocksDB does on a full disk.
    full: std::sync::atomic::AtomicBool,
    /// After the next successful write that puts a subject key, replace
    /// this folder with a file: every later keyring save into it fails.
    block_folder_after_key_write: Mutex<Option<std::path::PathBuf>>,
    /// Whether each write that stored an erasure receipt asked to be synced.
    receipt_writes_synced: Mutex<Vec<bool>>,
    /// Milliseconds every write takes first (a slow disk).
    delay_ms: AtomicU64,
}

impl FaultyAudit {
    fn over(dir: &std::path::Path) -> FaultyAudit {
        FaultyAudit {
            inner: RocksStore::open(&dir.join("db"), &StoreOptions::default()).unwrap(),
            fail: std::sync::atomic::AtomicBool::new(false),
            panic: std::sync::atomic::AtomicBool::new(false),
            full: std::sync::atomic::AtomicBool::new(false),
            block_folder_after_key_write: Mutex::new(None),
            receipt_writes_synced: Mutex::new(Vec::new()),
            delay_ms: AtomicU64::new(0),
        }
    }
}

impl Store for FaultyAudit {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.get(table, key)
    }
    fn multi_get(&self, table: Table, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        self.inner.multi_get(table, keys)
    }
    fn scan_prefix(&self, table: Table, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.inner.scan_prefix(table, prefix)
    }
    fn scan_from(
        &self,
        table: Table,
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.inner.scan_from(table, start, limit)
    }
    fn visit(&self, table: Table, visit: &mut dyn FnMut(&[u8], &[u8])) -> Result<()> {
        self.inner.visit(table, visit)
    }
    fn last_with_prefix(&self, table: Table, prefix: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        self.inner.last_with_prefix(table, prefix)
    }
    fn compact_range(&self, table: Table, start: &[u8], end: &[u8]) -> Result<()> {
        self.inner.compact_range(table, start, end)
    }
    fn write(&self, set: WriteSet) -> Result<()> {
        let delay = self.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        if self.full.load(Ordering::SeqCst) {
            return Err(Error::Unavailable(crate::storage::STORAGE_FULL.into()));
        }
        let audits = set
            .ops()
            .iter()
            .any(|op| matches!(op, crate::storage::Op::Put(Table::Audit, _, _)));
        if audits && self.fail.load(Ordering::SeqCst) {
            return Err(Error::Storage("injected audit write fault".into()));
        }
        if audits && self.panic.load(Ordering::SeqCst) {
            panic!("injected audit write panic");
        }
        let keys = set
            .ops()
            .iter()
            .any(|op| matches!(op, crate::storage::Op::Put(Table::SubjectKeys, _, _)));
        if set
            .ops()
            .iter()
            .any(|op| matches!(op, crate::storage::Op::Put(Table::Receipts, _, _)))
        {
            lock(&self.receipt_writes_synced).push(set.needs_sync());
        }
        self.inner.write(set)?;
        if keys {
            if let Some(folder) = lock(&self.block_folder_after_key_write).take() {
                std::fs::rename(&folder, folder.with_extension("moved")).unwrap();
                std::fs::write(&folder, b"not a folder").unwrap();
            }
        }
        Ok(())
    }
}

#[test]
fn audit_is_fail_closed_and_counts_one_event_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FaultyAudit::over(dir.path()));
    let e = engine_over(Arc::clone(&store) as Arc<dyn Store>, dir.path());
    let c = Caller::internal("t");
    let base = e.audit().size();
    e.put_record(&c, user("r1", "s1")).unwrap();
    e.get_record(&c, "users", "r1", &[]).unwrap();
    e.get_records(&c, "users", &["r1".into(), "zz".into()], &[])
        .unwrap();
    assert!(e.get_record(&c, "users", "nope", &[]).is_err());
    assert!(e.delete_record(&c, "users", "zz").is_ok());
    let stranger = Caller {
        principal: Principal {
            name: "x".into(),
            roles: vec![],
        },
        purpose: Some("p".into()),
        internal: false,
        request_id: None,
    };
    assert!(e.get_record(&stranger, "users", "r1", &[]).is_err());
    assert_eq!(e.audit().size() - base, 6, "one event per request");
    let events = e.audit().events(base, 100).unwrap();
    let last: crate::audit::Event = serde_json::from_slice(events.last().unwrap()).unwrap();
    assert_eq!(last.decision, "denied");
    assert_eq!(last.bytes, 0);
    // A refused read still names (by pseudonym) the id it asked for.
    let write: crate::audit::Event = serde_json::from_slice(&events[0]).unwrap();
    assert_eq!(last.records, write.records);
    let read: crate::audit::Event = serde_json::from_slice(&events[1]).unwrap();
    assert_eq!(read.operation, "read");
    assert!(read.bytes > 0);
    assert_eq!(read.records.len(), 1);
    // No event ever holds a value or an id in the clear.
    for ev in &events {
        let text = String::from_utf8(ev.clone()).unwrap();
        assert!(
            !text.contains("r1@example.eu") && !text.contains("\"s1\""),
            "{text}"
        );
    }

    // With audit writes failing: no read returns data, no write lands.
    store.fail.store(true, Ordering::SeqCst);
    let size = e.audit().size();
    assert!(matches!(
        e.get_record(&c, "users", "r1", &[]),
        Err(Error::Storage(_))
    ));
    assert!(e.get_records(&c, "users", &["r1".into()], &[]).is_err());
    assert!(e.put_record(&c, user("r2", "s2")).is_err());
    assert!(e.delete_record(&c, "users", "r1").is_err());
    assert_eq!(e.audit().size(), size, "nothing appended");
    store.fail.store(false, Ordering::SeqCst);
    // After a failed audit write the log takes no more writes until the
    // vault reopens it: still no data.
    let err = e.get_record(&c, "users", "r1", &[]).unwrap_err();
    assert!(err.to_string().contains("restart"), "{err}");
    drop(e);
    // Reopened (as a restarted vault would), the log is whole.
    let log = crate::audit::AuditLog::open(Arc::clone(&store) as Arc<dyn Store>).unwrap();
    assert_eq!(
        log.size(),
        size,
        "the log is whole, nothing was half-written"
    );
}

#[test]
fn checkpoints_are_signed_by_count_and_by_time() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(RocksStore::open(&dir.path().join("db"), &StoreOptions::default()).unwrap());
    let kr = Keyring::generate("eu".parse().unwrap(), custody());
    let mut opts = options();
    opts.checkpoints = CheckpointOptions {
        every_events: 4,
        interval: std::time::Duration::from_millis(20),
    };
    let e = Arc::new(Engine::new(store, kr, keyring_file(dir.path()), opts).unwrap());
    crate::dev::seed(&e).unwrap();
    let c = Caller::internal("t");
    let sizes = |e: &Engine| -> Vec<u64> {
        e.audit()
            .checkpoints(0, 1000)
            .unwrap()
            .iter()
            .map(|n| crate::audit::checkpoint::parse(n.as_bytes()).unwrap().0)
            .collect()
    };
    // By count: after the 4th and 8th events, without anyone asking.
    for i in 0..9 {
        e.put_record(&c, user(&format!("r{i}"), "s1")).unwrap();
    }
    let size = e.audit().size();
    let by_count: Vec<u64> = (1..=size / 4).map(|k| k * 4).collect();
    assert_eq!(sizes(&e), by_count);
    // By time: the background thread signs the log as it is, once.
    let worker = Arc::clone(&e);
    let thread = std::thread::spawn(move || worker.run_background());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while sizes(&e).last() != Some(&size) {
        assert!(std::time::Instant::now() < deadline, "no timed checkpoint");
        std::thread::yield_now();
    }
    e.close();
    thread.join().unwrap();
    let mut expected = by_count;
    expected.push(size);
    assert_eq!(
        sizes(&e),
        expected,
        "no checkpoint while the log did not grow"
    );
}

/// The root an inclusion proof of `event` at `index` in a tree of `size`
/// leads to (RFC 6962 §2.1.1, as a verifier would check it).
fn root_of_inclusion(
    event: &[u8],
    index: u64,
    size: u64,
    proof: &[crate::audit::merkle::Hash],
) -> crate::audit::merkle::Hash {
    let mut h = crate::audit::merkle::leaf_hash(event);
    let mut fi = index;
    let mut sn = size - 1;
    for p in proof {
        assert!(sn != 0, "proof too long");
        if fi & 1 == 1 || fi == sn {
            h = crate::audit::merkle::node_hash(p, &h);
            while fi & 1 == 0 && fi != 0 {
                fi >>= 1;
                sn >>= 1;
            }
        } else {
            h = crate::audit::merkle::node_hash(&h, p);
        }
        fi >>= 1;
        sn >>= 1;
    }
    assert_eq!(sn, 0, "proof too short");
    h
}

#[test]
fn access_ledgers_page_prove_and_need_the_export_operation() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let c = Caller::internal("t");
    for i in 0..5 {
        e.put_record(&c, user(&format!("a{i}"), "alice")).unwrap();
        e.put_record(&c, user(&format!("b{i}"), "bob")).unwrap();
    }
    let page = e.access_ledger(&c, "alice", 0, 3, 0).unwrap();
    assert_eq!(page.entries.len(), 3);
    let (size, root) = crate::audit::checkpoint::parse(page.checkpoint.as_bytes()).unwrap();
    let pseudonym = hex::encode(page.pseudonym);
    for entry in &page.entries {
        let ev: crate::audit::Event = serde_json::from_slice(&entry.event).unwrap();
        assert_eq!(
            (ev.index, ev.subjects.clone()),
            (entry.index, vec![pseudonym.clone()])
        );
        assert_eq!(
            root_of_inclusion(&entry.event, entry.index, size, &entry.proof),
            root,
            "entry {}",
            entry.index
        );
    }
    // The next page, proved in the same tree: the two other puts, not the
    // first page's own event (it came after that checkpoint).
    let rest = e
        .access_ledger(&c, "alice", page.next.unwrap(), 100, size)
        .unwrap();
    assert_eq!(rest.checkpoint, page.checkpoint);
    assert_eq!(rest.entries.len(), 2);
    assert_eq!(rest.next, None);
    // A fresh ledger sees both earlier ledger requests.
    let fresh = e.access_ledger(&c, "alice", 0, 100, 0).unwrap();
    let ops: Vec<String> = fresh
        .entries
        .iter()
        .map(|en| {
            serde_json::from_slice::<crate::audit::Event>(&en.event)
                .unwrap()
                .operation
        })
        .collect();
    assert_eq!(ops[5..], ["access_ledger", "access_ledger"]);
    assert!(matches!(
        e.access_ledger(&c, "alice", 0, 100, size + 1),
        Err(Error::InvalidArgument(_))
    ));

    // A reader may not: refused, and the refusal is an event.
    let before = e.audit().size();
    let reader = Caller {
        principal: Principal {
            name: "svc".into(),
            roles: vec![Role::Reader],
        },
        ..as_("svc", Some("support"))
    };
    assert!(matches!(
        e.access_ledger(&reader, "alice", 0, 10, 0),
        Err(Error::PermissionDenied(_))
    ));
    assert_eq!(e.audit().size(), before + 1);
    assert!(matches!(
        e.access_ledger(&c, "", 0, 10, 0),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn a_panicking_audit_write_leaves_nobody_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FaultyAudit::over(dir.path()));
    let e = Arc::new(engine_over(
        Arc::clone(&store) as Arc<dyn Store>,
        dir.path(),
    ));
    let c = Caller::internal("t");
    e.put_record(&c, user("r1", "s1")).unwrap();
    store.panic.store(true, Ordering::SeqCst);
    let worker = Arc::clone(&e);
    let panicked = std::thread::spawn(move || {
        let _ = worker.get_record(&Caller::internal("t"), "users", "r1", &[]);
    })
    .join();
    assert!(panicked.is_err(), "the injected panic");
    // The lead was given up and the log stopped: the next request fails at
    // once (no data), rather than queueing behind a dead leader.
    store.panic.store(false, Ordering::SeqCst);
    assert!(matches!(
        e.get_record(&c, "users", "r1", &[]),
        Err(Error::Unavailable(_))
    ));
}

/// A full disk: every write fails as RocksDB fails it. Requests get a
/// clear UNAVAILABLE (no path, no INTERNAL); a read returns no data; a
/// re-wrap batch stops with the same error. After a restart with space
/// again, every acknowledged write is there, the failed ones are not, the
/// audit log verifies, and the re-wrap resumes where it stopped.
#[test]
fn a_full_disk_fails_clearly_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FaultyAudit::over(dir.path()));
    let folder = Restartable::over(dir.path(), Arc::clone(&store) as Arc<dyn Store>);
    let e = folder.start();
    let c = Caller::internal("t");
    put_users(&e, 20);
    e.rotate_root(&c).unwrap();
    assert!(e.rewrap_step().unwrap());
    let mid = e.rewrap_progress();
    let events = e.audit().size();

    let refusing = e.audit().watch_refusing();
    assert!(!*refusing.borrow());
    store.full.store(true, Ordering::SeqCst);
    let full = |r: Result<()>| match r {
        Err(Error::Unavailable(m)) => assert!(m.starts_with(crate::storage::STORAGE_FULL), "{m}"),
        other => panic!("{other:?}"),
    };
    full(e.put_record(&c, user("lost", "s-lost")).map(|_| ()));
    full(e.get_record(&c, "users", "r1", &[]).map(|_| ()));
    full(e.rewrap_step().map(|_| ()));
    let status = tonic::Status::from(e.put_record(&c, user("x", "s")).unwrap_err());
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(e.rewrap_progress(), mid, "the failed batch is not counted");
    assert!(
        *refusing.borrow(),
        "health follows this: the data services go NOT_SERVING"
    );

    // Space again, and a restart.
    store.full.store(false, Ordering::SeqCst);
    drop(e);
    let e = folder.restart();
    assert_eq!(e.audit().size(), events, "no event of a failed write");
    assert_eq!(e.rewrap_progress(), mid);
    run_rewrap_to_end(&e);
    let p = e.rewrap_progress();
    assert_eq!((p.rewrapped, p.examined), (20, 20));
    read_users(&e, 20);
    assert!(matches!(
        e.get_record(&c, "users", "lost", &[]),
        Err(Error::NotFound(_))
    ));
}

/// Every key a root version wraps is counted (new subjects, subject-key
/// rotations, re-wraps), the count survives a restart, the status asks for
/// a rotation past the configured bound, and a version that has sealed
/// 2^32 keys seals no more.
#[test]
fn wraps_are_counted_per_root_version_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let r = Restartable::new(dir.path());
    let e = r.start();
    let c = Caller::internal("t");
    let wraps = |e: &Engine, v: u32| {
        e.root_versions()
            .iter()
            .find(|k| k.version == v)
            .unwrap()
            .wraps
    };
    put_users(&e, 5);
    assert_eq!(wraps(&e, 1), 5);
    // A subject already keyed wraps nothing more.
    e.put_record(&c, user("r0", "s0")).unwrap();
    assert_eq!(wraps(&e, 1), 5);
    e.rotate_subject(&c, "s0").unwrap();
    assert_eq!(wraps(&e, 1), 6);
    assert!(!e.root_rotation_due());
    assert_eq!(e.rotate_root(&c).unwrap(), 2);
    run_rewrap_to_end(&e);
    assert_eq!(wraps(&e, 1), 6, "counts stay with their version");
    assert_eq!(
        wraps(&e, 2),
        5,
        "each of the five subjects' keys re-wrapped"
    );
    e.close();
    drop(e);

    // After a restart, with a bound of 7: the next new subject reaches it.
    let file = std::fs::read(dir.path().join("keyring")).unwrap();
    let kr = Keyring::unseal(&file, &r.unseal_key, &"eu".parse().unwrap()).unwrap();
    let bounded = EngineOptions {
        rotate_root_after_wraps: 7,
        ..options()
    };
    let e = Engine::new(Arc::clone(&r.store), kr, r.file(), bounded).unwrap();
    assert_eq!(wraps(&e, 2), 5);
    assert_eq!(e.rotate_root_after_wraps(), 7);
    e.put_record(&c, user("r5", "s5")).unwrap();
    assert!(!e.root_rotation_due());
    e.put_record(&c, user("r6", "s6")).unwrap();
    assert_eq!(wraps(&e, 2), 7);
    assert!(e.root_rotation_due(), "rotation asked for at the bound");

    // NIST's bound is hard: past 2^32 nothing more is wrapped under v2.
    let mut ws = WriteSet::new();
    ws.put(
        Table::Meta,
        [b"wraps/".as_slice(), &2u32.to_be_bytes()].concat(),
        crate::engine::NIST_RANDOM_NONCE_LIMIT
            .to_be_bytes()
            .to_vec(),
    );
    e.store.write(ws).unwrap();
    e.close();
    drop(e);
    let kr = Keyring::unseal(&file, &r.unseal_key, &"eu".parse().unwrap()).unwrap();
    let e = Engine::new(Arc::clone(&r.store), kr, r.file(), options()).unwrap();
    let err = e.put_record(&c, user("r7", "s7")).unwrap_err();
    assert!(
        matches!(&err, Error::FailedPrecondition(m) if m.contains("rotate the root key")),
        "{err}"
    );
    assert!(
        e.get_record(&c, "users", "r7", &[]).is_err(),
        "nothing written"
    );
    // A malformed counter row is a clear error at open.
    let mut ws = WriteSet::new();
    ws.put(
        Table::Meta,
        [b"wraps/".as_slice(), &2u32.to_be_bytes()].concat(),
        vec![1, 2, 3],
    );
    e.store.write(ws).unwrap();
    e.close();
    drop(e);
    let kr = Keyring::unseal(&file, &r.unseal_key, &"eu".parse().unwrap()).unwrap();
    let err = Engine::new(Arc::clone(&r.store), kr, r.file(), options()).unwrap_err();
    assert!(err.to_string().contains("wrap counter"), "{err}");
}

/// Every saved keyring change raises the generation and the data folder
/// follows it; an older keyring file (a restored backup) is refused at
/// open, unless custodians accept the rollback, which the engine reports.
#[test]
fn an_older_keyring_is_refused_unless_the_rollback_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let r = Restartable::new(dir.path());
    let e = r.start();
    let c = Caller::internal("t");
    let folder_generation = |e: &Engine| {
        let v = e
            .store
            .get(Table::Meta, META_KEYRING_GENERATION)
            .unwrap()
            .unwrap();
        u64::from_be_bytes(v.try_into().unwrap())
    };
    assert_eq!(e.keyring().generation(), 1);
    assert_eq!(folder_generation(&e), 1);
    put_users(&e, 2);
    e.rotate_root(&c).unwrap();
    let old_file = std::fs::read(dir.path().join("keyring")).unwrap();
    assert_eq!(e.keyring().generation(), 2);
    e.erase_subject(&c, "s0").unwrap();
    // An erasure saves twice: the new bucket epoch, then the old one gone.
    assert_eq!(e.keyring().generation(), 4);
    assert_eq!(folder_generation(&e), 4);
    e.close();
    drop(e);

    // The current file opens; the one from before the erasure does not.
    drop(r.restart());
    let current = std::fs::read(dir.path().join("keyring")).unwrap();
    std::fs::write(dir.path().join("keyring"), &old_file).unwrap();
    let open = |accept: bool| {
        let kr = Keyring::unseal(&old_file, &r.unseal_key, &"eu".parse().unwrap()).unwrap();
        let options = EngineOptions {
            accept_keyring_rollback: accept,
            ..options()
        };
        Engine::new(Arc::clone(&r.store), kr, r.file(), options)
    };
    let err = open(false).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Keyring(crate::keys::KeyringError::RolledBack {
                keyring: 2,
                folder: 4
            })
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("--allow-keyring-rollback"),
        "{err}"
    );
    // Disaster recovery: accepted, reported, and the folder's mark follows.
    let e = open(true).unwrap();
    assert_eq!(e.accepted_keyring_rollback(), Some((2, 4)));
    assert_eq!(folder_generation(&e), 2);
    e.close();
    drop(e);
    std::fs::write(dir.path().join("keyring"), &current).unwrap();
    let e = r.restart();
    assert_eq!(e.accepted_keyring_rollback(), None);
    assert_eq!(
        folder_generation(&e),
        4,
        "a newer keyring moves the mark up"
    );
}

/// An engine (shared, for tasks) over a store whose audit writes fail or
/// panic on demand, and an internal caller.
fn faulty_engine(dir: &std::path::Path) -> (Arc<FaultyAudit>, Arc<Engine>, Caller) {
    let store = Arc::new(FaultyAudit::over(dir));
    let e = engine_over(Arc::clone(&store) as Arc<dyn Store>, dir);
    (store, Arc::new(e), Caller::internal("t"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The async request path keeps the blocking path's guarantees: one event
/// per request, in one queue with blocking commits (dense indices); no
/// data when the read event cannot be written; no write without its
/// event. A put that would wait (a new subject's key to store) moves to
/// the blocking pool and still leaves one event.
#[test]
fn the_async_path_is_fail_closed_and_shares_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let (store, e, c) = faulty_engine(dir.path());
    let rt = runtime();
    let size = rt.block_on(async {
        let base = e.audit().size();
        // s1 is new: its key is made on the blocking pool.
        e.put_records_async(&c, vec![user("r1", "s1")])
            .await
            .unwrap();
        let r = e.get_record_async(&c, "users", "r1", &[]).await.unwrap();
        assert_eq!(r.subject_id, "s1");
        let (found, missing) = e
            .get_records_async(&c, "users", &["r1".into(), "zz".into()], &[])
            .await
            .unwrap();
        assert_eq!((found.len(), missing), (1, vec!["zz".to_string()]));
        assert!(matches!(
            e.get_record_async(&c, "users", "nope", &[]).await,
            Err(Error::NotFound(_))
        ));
        assert!(!e.delete_record_async(&c, "users", "zz").await.unwrap());
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let (e, c) = (Arc::clone(&e), c.clone());
                tokio::spawn(async move {
                    let r = user(&format!("a{i}"), "s1");
                    e.put_records_async(&c, vec![r]).await.map(|_| ())
                })
            })
            .collect();
        let blocking: Vec<_> = (0..8)
            .map(|i| {
                let (e, c) = (Arc::clone(&e), c.clone());
                tokio::task::spawn_blocking(move || e.put_record(&c, user(&format!("b{i}"), "s2")))
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        for t in blocking {
            t.await.unwrap().unwrap();
        }
        assert_eq!(e.audit().size() - base, 5 + 40, "one event per request");

        store.fail.store(true, Ordering::SeqCst);
        let size = e.audit().size();
        assert!(matches!(
            e.get_record_async(&c, "users", "r1", &[]).await,
            Err(Error::Storage(_))
        ));
        assert!(e
            .put_records_async(&c, vec![user("r2", "s1")])
            .await
            .is_err());
        assert!(e.delete_record_async(&c, "users", "r1").await.is_err());
        assert_eq!(e.audit().size(), size, "nothing appended");
        store.fail.store(false, Ordering::SeqCst);
        let err = e
            .get_record_async(&c, "users", "r1", &[])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("restart"), "{err}");
        size
    });
    drop(rt);
    drop(e);
    // Reopened, the log is whole: every index once, every link right.
    let log = crate::audit::AuditLog::open(Arc::clone(&store) as Arc<dyn Store>).unwrap();
    assert_eq!(log.size(), size);
}

/// A write that panics in the audit writer thread fails everyone queued
/// (no task waits forever) and stops the log, as on the blocking path.
#[test]
fn a_panicking_audit_write_leaves_no_task_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let (store, e, c) = faulty_engine(dir.path());
    e.put_record(&c, user("r1", "s1")).unwrap();
    runtime().block_on(async {
        e.get_record_async(&c, "users", "r1", &[]).await.unwrap();
        store.panic.store(true, Ordering::SeqCst);
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (e, c) = (Arc::clone(&e), c.clone());
                tokio::spawn(async move { e.get_record_async(&c, "users", "r1", &[]).await })
            })
            .collect();
        for t in tasks {
            assert!(t.await.unwrap().is_err(), "no data");
        }
        store.panic.store(false, Ordering::SeqCst);
        assert!(matches!(
            e.get_record_async(&c, "users", "r1", &[]).await,
            Err(Error::Unavailable(_))
        ));
    });
    // The blocking path hears the same.
    assert!(matches!(
        e.get_record(&c, "users", "r1", &[]),
        Err(Error::Unavailable(_))
    ));
}

/// The writer thread holds the log only while it writes: once the last
/// user drops the log, its store is closed, and the folder opens again.
#[test]
fn the_audit_writer_lets_go_of_the_log_and_its_store() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let event = || crate::audit::Event::new("p", None, "read", None);
    for round in 1..=3u64 {
        let store: Arc<dyn Store> =
            Arc::new(RocksStore::open(&dir.path().join("db"), &StoreOptions::default()).unwrap());
        let log = Arc::new(crate::audit::AuditLog::open(store).unwrap());
        rt.block_on(async {
            let tasks: Vec<_> = (0..20)
                .map(|_| {
                    let log = Arc::clone(&log);
                    tokio::spawn(async move { log.commit_async(WriteSet::new(), event()).await })
                })
                .collect();
            for t in tasks {
                t.await.unwrap().unwrap();
            }
        });
        // A blocking commit once the writer runs: queued for it.
        log.commit(WriteSet::new(), event()).unwrap();
        assert_eq!(log.size(), 21 * round);
        drop(log);
    }
}

/// A slow store under an engine that signs a checkpoint after every event,
/// and a runtime with `blocking` threads in its blocking pool.
fn slow_engine(
    dir: &std::path::Path,
    blocking: usize,
) -> (Arc<FaultyAudit>, Arc<Engine>, tokio::runtime::Runtime) {
    let store = Arc::new(FaultyAudit::over(dir));
    let kr = Keyring::generate("eu".parse().unwrap(), custody());
    let every = EngineOptions {
        checkpoints: CheckpointOptions {
            every_events: 1,
            interval: Duration::ZERO,
        },
        ..options()
    };
    let e = Engine::new(
        Arc::clone(&store) as Arc<dyn Store>,
        kr,
        keyring_file(dir),
        every,
    )
    .unwrap();
    crate::dev::seed(&e).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(blocking)
        .enable_all()
        .build()
        .unwrap();
    (store, Arc::new(e), rt)
}

/// An async put lets go of its subject's lock once its batch is written,
/// before it waits for a checkpoint on the blocking pool: a rotation of
/// that subject waiting for the lock on the pool's only thread cannot
/// starve the checkpoint (a deadlock a review found).
#[test]
fn an_async_put_holds_no_lock_while_its_checkpoint_waits_for_the_pool() {
    let dir = tempfile::tempdir().unwrap();
    let (store, e, rt) = slow_engine(dir.path(), 1);
    let c = Caller::internal("t");
    e.put_record(&c, user("r1", "s1")).unwrap();
    let (done, finished) = std::sync::mpsc::channel();
    rt.spawn(async move {
        store.delay_ms.store(300, Ordering::SeqCst);
        let put = {
            let (e, c) = (Arc::clone(&e), c.clone());
            tokio::spawn(async move { e.put_records_async(&c, vec![user("r2", "s1")]).await })
        };
        // The put is in its write; the rotation takes the pool's thread
        // and waits for the subject's lock.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let rotation = {
            let (e, c) = (Arc::clone(&e), c.clone());
            tokio::task::spawn_blocking(move || e.rotate_subject(&c, "s1"))
        };
        let put = put.await.unwrap();
        store.delay_ms.store(0, Ordering::SeqCst);
        let rotation = rotation.await.unwrap();
        done.send((put.is_ok(), rotation.is_ok())).unwrap();
    });
    let outcome = finished.recv_timeout(Duration::from_secs(30));
    assert_eq!(outcome, Ok((true, true)), "the put and the rotation finish");
    rt.shutdown_background();
}

/// A put whose future is dropped while its batch waits for the audit
/// writer keeps its subject's lock until the batch is written: a rotation
/// of the subject then sees the record and re-encrypts it (a review found
/// the record left under the destroyed key).
#[test]
fn a_dropped_async_put_holds_its_lock_until_its_batch_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (store, e, rt) = slow_engine(dir.path(), 8);
    let c = Caller::internal("t");
    e.put_record(&c, user("r1", "s1")).unwrap();
    rt.block_on(async {
        // The writer thread runs; then keep it busy with one read event.
        e.get_record_async(&c, "users", "r1", &[]).await.unwrap();
        store.delay_ms.store(400, Ordering::SeqCst);
        let busy = {
            let (e, c) = (Arc::clone(&e), c.clone());
            tokio::spawn(async move { e.get_record_async(&c, "users", "r1", &[]).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let put = {
            let (e, c) = (Arc::clone(&e), c.clone());
            tokio::spawn(async move { e.put_records_async(&c, vec![user("r3", "s1")]).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        put.abort();
        assert!(put.await.unwrap_err().is_cancelled());
        let rotation = {
            let (e, c) = (Arc::clone(&e), c.clone());
            tokio::task::spawn_blocking(move || e.rotate_subject(&c, "s1"))
        };
        busy.await.unwrap().unwrap();
        rotation.await.unwrap().unwrap();
        store.delay_ms.store(0, Ordering::SeqCst);
    });
    // The dropped put's write was made; its record is readable after the
    // rotation (re-encrypted under the new key), as is the other one.
    for id in ["r1", "r3"] {
        let r = e.get_record(&c, "users", id, &[]).unwrap();
        assert_eq!(r.subject_id, "s1");
    }
}

#[test]
fn hex_is_hex_encode() {
    for bytes in [&[][..], &[0x00, 0x0f, 0xa5, 0xff][..], &[7; 32][..]] {
        assert_eq!(to_hex(bytes), hex::encode(bytes));
    }
}

#[test]
fn budgets_charge_outside_callers_and_count_ids_as_bytes_but_not_the_vault_itself() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine_with_policy(
        dir.path(),
        "[principals]\nsvc = [\"r\"]\n\n[[roles.r.rules]]\noperations = [\"read\"]\n\
         purposes = [\"*\"]\n\n[[budgets]]\nprincipal = \"*\"\nwindow_seconds = 3600\nbytes = 30\n",
    );
    let internal = Caller::internal("t");
    e.put_records(&internal, vec![user("u1", "s1"), user("u2", "s2")])
        .unwrap();
    // The vault itself (dev seeding, benches) is never charged: these are
    // far more than 30 bytes.
    for _ in 0..5 {
        e.get_records(&internal, "users", &["u1".into(), "u2".into()], &[])
            .unwrap();
    }
    let outside = Caller {
        principal: crate::policy::Principal {
            name: "svc".into(),
            roles: Vec::new(),
        },
        purpose: Some("p".into()),
        internal: false,
        request_id: None,
    };
    // One field: "u1@example.eu" (13 bytes) plus the ids "u1" and "s1"
    // (4 bytes): 17, within 30.
    e.get_records(&outside, "users", &["u1".into()], &["email".into()])
        .unwrap();
    // The same again makes 34: refused, though the plaintext alone (26)
    // would fit.
    let err = e
        .get_records(&outside, "users", &["u2".into()], &["email".into()])
        .unwrap_err();
    assert!(matches!(err, Error::BudgetExceeded(_)), "{err}");
}

#[test]
fn cosignatures_and_refusals_are_taken_from_configured_witnesses_only() {
    use base64::Engine as _;
    use ed25519_dalek::Signer as _;
    let dir = tempfile::tempdir().unwrap();
    let store =
        Arc::new(RocksStore::open(&dir.path().join("db"), &StoreOptions::default()).unwrap());
    let witness = ed25519_dalek::SigningKey::from_bytes(&[8; 32]);
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let public = witness.verifying_key().to_bytes();
    let mut blob = vec![4u8];
    blob.extend_from_slice(&public);
    let vkey = format!(
        "w.example/eu+{}+{}",
        hex::encode(crate::audit::checkpoint::cosigner_key_id(
            "w.example/eu",
            &public
        )),
        base64::engine::general_purpose::STANDARD.encode(blob)
    );
    let mut opts = options();
    opts.witnesses = vec![vkey.parse().unwrap()];
    let kr = Keyring::generate("eu".parse().unwrap(), custody());
    let e = Engine::new(store, kr, keyring_file(dir.path()), opts).unwrap();
    assert_eq!(e.witness_names(), vec!["w.example/eu".to_owned()]);
    let mut alerts = e.monitor().subscribe();
    let note = e.checkpoint().unwrap();
    let text = &note[..=note.find("\n\n").unwrap()];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();

    // A cosignature: taken, served with the checkpoint, its time noted.
    let mut line = crate::audit::checkpoint::cosigner_key_id("w.example/eu", &public).to_vec();
    line.extend_from_slice(&now.to_be_bytes());
    line.extend_from_slice(
        &witness
            .sign(format!("cosignature/v1\ntime {now}\n{text}").as_bytes())
            .to_bytes(),
    );
    let cosigned = format!(
        "{note}\u{2014} w.example/eu {}\n",
        base64::engine::general_purpose::STANDARD.encode(line)
    );
    let (size, taken) = e.add_cosignatures(&cosigned).unwrap();
    assert_eq!(taken, vec![("w.example/eu".to_owned(), now)]);
    assert_eq!(e.audit().stored_checkpoint(size).unwrap(), Some(cosigned));
    assert!(e.monitor().cosignature_age_secs("w.example/eu").is_some());

    // A refusal: from the configured witness, recent, one line.
    let caller = Caller::internal("auditor");
    let refusal = |key: &ed25519_dalek::SigningKey, time: u64, reason: &str| {
        let message = format!("vault-witness-refusal/v1\ntime {time}\nreason {reason}\n{text}");
        crate::engine::WitnessRefusal {
            time,
            reason: reason.into(),
            checkpoint: text.into(),
            signature: key.sign(message.as_bytes()).to_bytes().to_vec(),
        }
    };
    e.witness_refused(&caller, "w.example/eu", &refusal(&witness, now, "rollback"))
        .unwrap();
    // Taken once: the same refusal again is refused.
    let again = e
        .witness_refused(&caller, "w.example/eu", &refusal(&witness, now, "rollback"))
        .unwrap_err();
    assert!(again.to_string().contains("already"), "{again}");
    let alert = alerts.try_recv().unwrap();
    assert_eq!(alert.kind, crate::monitor::AlertKind::WitnessRefused);
    assert_eq!(alert.severity, crate::monitor::Severity::Critical);
    assert!(alert.message.contains("rollback"), "{alert:?}");
    for (name, bad, why) in [
        ("w.example/eu", refusal(&stranger, now, "x"), "not signed"),
        ("w.example/other", refusal(&witness, now, "x"), "not signed"),
        (
            "w.example/eu",
            refusal(&witness, now - 3600, "x"),
            "ten minutes",
        ),
        ("w.example/eu", refusal(&witness, now, "a\nb"), "one line"),
    ] {
        let err = e.witness_refused(&caller, name, &bad).unwrap_err();
        assert!(err.to_string().contains(why), "{err}");
    }
    // Another log's checkpoint (a witness that also follows another
    // vault): refused.
    let other_log = text.replacen("vault/eu/", "vault/fr/", 1);
    let message = format!("vault-witness-refusal/v1\ntime {now}\nreason fork\n{other_log}");
    let foreign = crate::engine::WitnessRefusal {
        time: now,
        reason: "fork".into(),
        checkpoint: other_log,
        signature: witness.sign(message.as_bytes()).to_bytes().to_vec(),
    };
    let err = e
        .witness_refused(&caller, "w.example/eu", &foreign)
        .unwrap_err();
    assert!(err.to_string().contains("another origin"), "{err}");
    let mut tampered = refusal(&witness, now, "fork");
    tampered.reason = "nothing".into();
    assert!(e
        .witness_refused(&caller, "w.example/eu", &tampered)
        .is_err());
    assert!(
        alerts.try_recv().is_err(),
        "a refused refusal raised an alert"
    );
}

/// A seeded engine over `dir` whose access policy is `policy` (a policy
/// file's text).
fn engine_with_policy(dir: &std::path::Path, policy: &str) -> Engine {
    let store = Arc::new(RocksStore::open(&dir.join("db"), &StoreOptions::default()).unwrap());
    let mut opts = options();
    let policy = crate::policy::Policy::parse(policy, "test").unwrap();
    opts.policy = Arc::new(crate::policy::PolicyHandle::new(policy, None));
    let kr = Keyring::generate("eu".parse().unwrap(), custody());
    let e = Engine::new(store, kr, keyring_file(dir), opts).unwrap();
    crate::dev::seed(&e).unwrap();
    e
}

/// The dev `users` schema as collection `people`, its `email` indexed.
fn create_people(e: &Engine) {
    let mut people = crate::dev::users_collection("eu");
    people.name = "people".into();
    for f in &mut people.fields {
        f.indexed = f.name == "email";
    }
    e.create_collection(&Caller::internal("t"), people).unwrap();
}

/// A `people` record with this e-mail.
fn person(id: &str, subject: &str, email: &str) -> Record {
    let mut r = user(id, subject);
    r.collection = "people".into();
    r.fields
        .insert("email".into(), Value::String(email.to_owned()));
    r
}

#[test]
fn blind_index_rows_follow_puts_replaces_deletes_and_erasures() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(RocksStore::open(&dir.path().join("db"), &StoreOptions::default()).unwrap());
    let kr = Keyring::generate("eu".parse().unwrap(), custody());
    let e = Engine::new(Arc::clone(&store), kr, keyring_file(dir.path()), options()).unwrap();
    crate::dev::seed(&e).unwrap();
    let c = Caller::internal("t");
    create_people(&e);
    let rows = || store.scan_prefix(Table::Index, b"").unwrap();
    // The token the engine should have written for `email`.
    let token_of = |email: &str| {
        let kr = e.keyring();
        let (version, key) = kr.current_index_key().unwrap();
        index::token(
            key,
            version,
            "eu",
            "people",
            "email",
            &Value::String(email.into()),
        )
        .unwrap()
    };
    let forward = |email: &str| {
        rows()
            .into_iter()
            .filter(|(k, _)| k.starts_with(&index::forward_prefix(&token_of(email))))
            .count()
    };

    e.put_record(&c, person("p1", "s1", " Ada@Example.EU"))
        .unwrap();
    e.put_record(&c, person("p2", "s2", "ada@example.eu"))
        .unwrap();
    e.put_record(&c, person("p3", "s3", "bob@example.eu"))
        .unwrap();
    // Normalised: both of Ada's records under one token; a forward row per
    // record, a reverse row per record.
    assert_eq!(forward("ada@example.eu"), 2);
    assert_eq!(forward("bob@example.eu"), 1);
    assert_eq!(rows().len(), 6);
    // No value in clear in the index.
    for (k, v) in rows() {
        for canary in [&b"ada"[..], b"Ada", b"bob", b"example"] {
            assert!(!k.windows(canary.len()).any(|w| w == canary));
            assert!(!v.windows(canary.len()).any(|w| w == canary));
        }
    }
    // A replace moves the record's entry; a delete removes it.
    e.put_record(&c, person("p2", "s2", "carol@example.eu"))
        .unwrap();
    assert_eq!(forward("ada@example.eu"), 1);
    assert_eq!(forward("carol@example.eu"), 1);
    assert!(e.delete_record(&c, "people", "p3").unwrap());
    assert_eq!(forward("bob@example.eu"), 0);
    assert_eq!(rows().len(), 4);
    // An erasure removes the subject's entries with its records.
    e.erase_subject(&c, "s1").unwrap();
    assert_eq!(forward("ada@example.eu"), 0);
    assert_eq!(rows().len(), 2);
    // A collection without indexed fields keeps no rows.
    e.put_record(&c, user("u9", "s9")).unwrap();
    assert_eq!(rows().len(), 2);
    // Rows a put left while a delete of its record ran (the record gone,
    // its rows not) go with the next delete of that id.
    let ghost = crate::storage::record_key("people", &e.names.record("people", "ghost"));
    let mut ws = WriteSet::new();
    index::replace(&mut ws, &ghost, &[], 1, &[token_of("ghost@example.eu")]);
    store.write(ws).unwrap();
    assert_eq!(rows().len(), 4);
    assert!(!e.delete_record(&c, "people", "ghost").unwrap());
    assert_eq!(rows().len(), 2);
}

#[test]
fn find_returns_the_records_whose_indexed_field_matches_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine_with_policy(
        dir.path(),
        "[principals]\nsvc = [\"finder\"]\nnosy = [\"blind\"]\npeek = [\"masked\"]\n\n\
         [[roles.masked.rules]]\noperations = [\"search\"]\ncollections = [\"people\"]\n\
         purposes = [\"support\"]\nfields = [\"*\"]\nredaction = \"masked\"\n\n\
         [[roles.finder.rules]]\noperations = [\"search\"]\ncollections = [\"people\"]\n\
         purposes = [\"support\"]\nfields = [\"email\", \"name\"]\n\n\
         [[roles.blind.rules]]\noperations = [\"search\"]\ncollections = [\"people\"]\n\
         purposes = [\"support\"]\nfields = [\"name\"]\n",
    );
    let c = Caller::internal("t");
    create_people(&e);
    e.put_records(
        &c,
        vec![
            person("p1", "s1", "Ada@Example.eu"),
            person("p2", "s2", " ada@example.EU "),
            person("p3", "s3", "bob@example.eu"),
        ],
    )
    .unwrap();
    let svc = |name: &str| Caller {
        principal: Principal {
            name: name.into(),
            roles: Vec::new(),
        },
        purpose: Some("support".into()),
        internal: false,
        request_id: None,
    };
    let email = |s: &str| Value::String(s.into());
    let ids = |found: Vec<Record>| {
        let mut ids: Vec<String> = found.iter().map(|r| r.id.clone()).collect();
        ids.sort();
        ids
    };
    // Hits after normalisation, no false hits; the fields the search rules
    // show, the others redacted (never decrypted).
    let found = e
        .find_records(
            &svc("svc"),
            "people",
            "email",
            &email("ADA@example.eu"),
            &[],
            10,
        )
        .unwrap();
    assert!(found.iter().all(|r| r.fields.contains_key("name")
        && r.redacted.contains("birth_date")
        && !r.fields.contains_key("birth_date")));
    assert_eq!(ids(found), vec!["p1", "p2"]);
    assert!(e
        .find_records(
            &svc("svc"),
            "people",
            "email",
            &email("ada@example.e"),
            &[],
            10
        )
        .unwrap()
        .is_empty());
    // A limit, and the paging behind it.
    assert_eq!(
        e.find_records(&c, "people", "email", &email("ada@example.eu"), &[], 1)
            .unwrap()
            .len(),
        1
    );
    // The index follows a replace, a delete and an erasure.
    e.put_record(&c, person("p2", "s2", "carol@example.eu"))
        .unwrap();
    assert!(e.delete_record(&c, "people", "p3").unwrap());
    e.erase_subject(&c, "s1").unwrap();
    for (value, expected) in [
        ("ada@example.eu", Vec::<&str>::new()),
        ("bob@example.eu", vec![]),
        ("carol@example.eu", vec!["p2"]),
    ] {
        let found = e
            .find_records(&c, "people", "email", &email(value), &[], 10)
            .unwrap();
        assert_eq!(ids(found), expected, "{value}");
    }
    // Refused: a field the caller may not see, a field not indexed, a
    // value of another type, no search rule, a limit out of range.
    let err = e
        .find_records(&svc("nosy"), "people", "email", &email("x"), &[], 10)
        .unwrap_err();
    assert!(matches!(err, Error::PermissionDenied(_)), "{err}");
    // A field shown masked cannot be searched either: an equality answer
    // would give away what the mask hides.
    let err = e
        .find_records(
            &svc("peek"),
            "people",
            "email",
            &email("carol@example.eu"),
            &[],
            10,
        )
        .unwrap_err();
    assert!(err.to_string().contains("in full"), "{err}");
    let err = e
        .find_records(&c, "people", "name", &email("x"), &[], 10)
        .unwrap_err();
    assert!(err.to_string().contains("not indexed"), "{err}");
    let err = e
        .find_records(&c, "people", "email", &Value::Int64(1), &[], 10)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    let err = e
        .find_records(&svc("svc"), "users", "email", &email("x"), &[], 10)
        .unwrap_err();
    assert!(matches!(err, Error::PermissionDenied(_)), "{err}");
    for limit in [0, 501] {
        assert!(e
            .find_records(&c, "people", "email", &email("x"), &[], limit)
            .is_err());
    }
    // Audited like a read: operation search, the field in the detail.
    let events = e.audit().events(0, 100_000).unwrap();
    let search: Vec<serde_json::Value> = events
        .iter()
        .map(|raw| serde_json::from_slice(raw).unwrap())
        .filter(|ev: &serde_json::Value| ev["operation"] == "search")
        .collect();
    assert!(search.iter().any(|ev| ev["decision"] == "allowed"
        && ev["subjects"].as_array().unwrap().len() == 2
        && ev["records"].as_array().unwrap().len() == 2));
    assert!(search
        .iter()
        .all(|ev| ev["detail"].is_null()
            || ev["detail"].as_str().unwrap().starts_with("{\"field\":")));
    // A field the collection does not have is not kept in the log.
    e.find_records(&c, "people", "e-mail-typo", &email("x"), &[], 10)
        .unwrap_err();
    let last: serde_json::Value =
        serde_json::from_slice(e.audit().events(0, 100_000).unwrap().last().unwrap()).unwrap();
    assert_eq!(last["operation"], "search");
    assert!(
        last["detail"].is_null() && !last.to_string().contains("typo"),
        "{last}"
    );
    assert!(search
        .iter()
        .any(|ev| ev["detail"] == "{\"field\":\"email\"}" && ev["decision"] == "denied"));
}

/// A copy of the dev `users` schema under another name.
fn create_users_named(e: &Engine, name: &str) {
    let mut c = crate::dev::users_collection("eu");
    c.name = name.into();
    e.create_collection(&Caller::internal("t"), c).unwrap();
}

/// Runs an export to the end: the bundle and its summary.
fn export_of(
    e: &Engine,
    caller: &Caller,
    subject: &str,
) -> Result<(Vec<u8>, super::ExportSummary)> {
    let mut bundle = Vec::new();
    let mut last_done = 0;
    let summary = e.export_subject(caller, subject, &mut |chunk| {
        assert!(chunk.records_done >= last_done && chunk.records_done <= chunk.records_total);
        last_done = chunk.records_done;
        bundle.extend_from_slice(&chunk.bytes);
        Ok(())
    })?;
    Ok((bundle, summary))
}

#[test]
fn a_subject_export_holds_every_record_of_the_subject_and_nothing_of_anyone_else() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine_with_policy(
        dir.path(),
        "[principals]\ndpo = [\"exporter\"]\nnarrow = [\"email_only\"]\nsvc = [\"lookup\"]\n\
         thrifty = [\"exporter\"]\n\n[[budgets]]\nprincipal = \"thrifty\"\nwindow_seconds = 3600\n\
         records = 2\n\n\
         [[roles.lookup.rules]]\noperations = [\"read\"]\ncollections = [\"*\"]\n\
         purposes = [\"data-subject-request\"]\nfields = [\"*\"]\n\n\
         [[roles.exporter.rules]]\noperations = [\"export\"]\ncollections = [\"*\"]\n\
         purposes = [\"data-subject-request\"]\nfields = [\"*\"]\n\n\
         [[roles.email_only.rules]]\noperations = [\"export\"]\ncollections = [\"*\"]\n\
         purposes = [\"data-subject-request\"]\nfields = [\"email\"]\n",
    );
    let c = Caller::internal("t");
    create_people(&e);
    create_users_named(&e, "accounts");
    let mut records = vec![
        user("u1", "alice"),
        user("u2", "alice"),
        person("p1", "alice", "alice@example.eu"),
        user("u3", "bob"),
        person("p2", "bob", "bob-secret@example.eu"),
    ];
    let mut account = user("a1", "alice");
    account.collection = "accounts".into();
    account
        .fields
        .insert("name".into(), Value::String("Alice Account".into()));
    records.push(account);
    let mut bobs = user("a2", "bob");
    bobs.collection = "accounts".into();
    bobs.fields
        .insert("name".into(), Value::String("Bob Hidden".into()));
    records.push(bobs);
    e.put_records(&c, records).unwrap();
    // A record that moved from alice to bob is bob's now.
    e.put_record(&c, user("u4", "alice")).unwrap();
    e.put_record(&c, user("u4", "bob")).unwrap();
    let as_ = |name: &str| Caller {
        principal: Principal {
            name: name.into(),
            roles: Vec::new(),
        },
        purpose: Some("data-subject-request".into()),
        internal: false,
        request_id: None,
    };

    let (bundle, summary) = export_of(&e, &as_("dpo"), "alice").unwrap();
    let text = String::from_utf8(bundle.clone()).unwrap();
    for other in ["bob-secret", "Bob Hidden", "u3@", "u4@", "\"bob\""] {
        assert!(!text.contains(other), "{other} is in alice's export");
    }
    let doc: serde_json::Value = serde_json::from_slice(&bundle).unwrap();
    assert_eq!(doc["format"], "vault-subject-export/v1");
    assert_eq!(doc["subject_id"], "alice");
    let mut ids: Vec<(String, String)> = doc["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["collection"].as_str().unwrap().to_owned(),
                r["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    ids.sort();
    let expected: Vec<(String, String)> = [
        ("accounts", "a1"),
        ("people", "p1"),
        ("users", "u1"),
        ("users", "u2"),
    ]
    .iter()
    .map(|(c, i)| (c.to_string(), i.to_string()))
    .collect();
    assert_eq!(ids, expected);
    let a1 = doc["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "a1")
        .unwrap();
    assert_eq!(
        a1["fields"]["name"],
        serde_json::json!({"string": "Alice Account"})
    );
    assert_eq!(
        a1["fields"]["birth_date"],
        serde_json::json!({"timestamp": {"seconds": 1, "nanos": 2}})
    );
    let names: Vec<&str> = doc["collections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["accounts", "people", "users"]);
    assert_eq!(summary.records, 4);
    assert_eq!(doc["counts"]["records"], 4);

    // The ledger: every event naming alice, her export last (on record
    // before anything was read), each proved in the checkpoint.
    let ledger = &doc["access_ledger"];
    let events = ledger["events"].as_array().unwrap();
    assert_eq!(events.len() as u64, summary.ledger_events);
    let last: crate::audit::Event =
        serde_json::from_str(events.last().unwrap()["event"].as_str().unwrap()).unwrap();
    assert_eq!(last.operation, "export_subject");
    assert_eq!(last.principal, "dpo");
    assert_eq!(last.collection.as_deref(), Some("accounts,people,users"));
    // The batch (u1, u2, p1, a1), u4's first put (alice's; its move to
    // bob names bob), and the export.
    let ops: Vec<String> = events
        .iter()
        .map(|ev| {
            serde_json::from_str::<crate::audit::Event>(ev["event"].as_str().unwrap())
                .unwrap()
                .operation
        })
        .collect();
    assert_eq!(ops, ["write", "write", "export_subject"]);
    let (size, root) =
        crate::audit::checkpoint::parse(ledger["checkpoint"].as_str().unwrap().as_bytes()).unwrap();
    for ev in events {
        let index = ev["index"].as_u64().unwrap();
        let proof: Vec<crate::audit::merkle::Hash> = ev["proof"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                hex::decode(h.as_str().unwrap())
                    .unwrap()
                    .try_into()
                    .unwrap()
            })
            .collect();
        let event = ev["event"].as_str().unwrap().as_bytes();
        assert_eq!(
            root_of_inclusion(event, index, size, &proof),
            root,
            "event {index}"
        );
    }

    // The signature: the audit key over the statement naming this bundle.
    let statement = super::export_statement(
        &e.audit_origin(),
        &e.keyring().subject_pseudonym("alice"),
        4,
        summary.ledger_events,
        bundle.len() as u64,
        &<sha2::Sha256 as sha2::Digest>::digest(&bundle).into(),
    );
    assert_eq!(
        summary.sha256,
        <[u8; 32]>::from(<sha2::Sha256 as sha2::Digest>::digest(&bundle))
    );
    assert!(summary
        .signature
        .starts_with(&format!("{statement}\n\u{2014} ")));

    // Export rules that show only `email`: the rest is listed as redacted.
    let (bundle, _) = export_of(&e, &as_("narrow"), "alice").unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&bundle).unwrap();
    let a1 = doc["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "a1")
        .unwrap();
    assert_eq!(a1["fields"].as_object().unwrap().len(), 1);
    assert_eq!(a1["redacted"], serde_json::json!(["birth_date", "name"]));
    assert!(!String::from_utf8(bundle).unwrap().contains("Alice Account"));

    // A reader may not export; the refusal is on record.
    let before = e.audit().size();
    assert!(matches!(
        export_of(&e, &as_("svc"), "alice"),
        Err(Error::PermissionDenied(_))
    ));
    assert_eq!(e.audit().size(), before + 1);

    // A receiver that goes away stops the export, and that is on record
    // too (after the export's own event).
    let before = e.audit().size();
    let stopped = e.export_subject(&as_("dpo"), "alice", &mut |_| {
        Err(Error::Unavailable("gone".into()))
    });
    assert!(matches!(stopped, Err(Error::Unavailable(_))));
    let events = e.audit().events(before, 10).unwrap();
    let ops: Vec<(String, String)> = events
        .iter()
        .map(|b| {
            let ev: crate::audit::Event = serde_json::from_slice(b).unwrap();
            (ev.operation, ev.decision)
        })
        .collect();
    assert_eq!(
        ops,
        [
            ("export_subject".to_owned(), "allowed".to_owned()),
            ("export_subject".to_owned(), "failed".to_owned())
        ]
    );

    // Each record is charged to read budgets before it is written: over
    // the budget, the export stops (and says so in the log).
    let before = e.audit().size();
    let mut got = 0;
    let stopped = e.export_subject(&as_("thrifty"), "alice", &mut |chunk| {
        got = chunk.records_done;
        Ok(())
    });
    assert!(
        matches!(stopped, Err(Error::BudgetExceeded(_))),
        "{stopped:?}"
    );
    assert!(got <= 2, "{got} records left over a budget of 2");
    let last: crate::audit::Event =
        serde_json::from_slice(e.audit().events(before, 10).unwrap().last().unwrap()).unwrap();
    assert_eq!(
        (last.operation.as_str(), last.decision.as_str()),
        ("export_subject", "denied")
    );
    // A subject the vault does not know: an empty export, signed.
    let (bundle, summary) = export_of(&e, &as_("dpo"), "nobody").unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&bundle).unwrap();
    assert_eq!(doc["records"], serde_json::json!([]));
    assert_eq!(summary.records, 0);
    assert_eq!(summary.ledger_events, 1, "its own export event");
}

#[test]
fn expired_records_are_unreadable_at_once_and_purged_after_the_grace_period() {
    use crate::monitor::{Clock, ManualClock, Monitor, MonitorOptions};
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(RocksStore::open(&dir.path().join("db"), &StoreOptions::default()).unwrap());
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let mut opts = options();
    opts.monitor = Arc::new(Monitor::new(
        MonitorOptions::default(),
        Arc::clone(&clock) as Arc<dyn Clock>,
    ));
    let kr = Keyring::generate("eu".parse().unwrap(), custody());
    let e = Engine::new(Arc::clone(&store), kr, keyring_file(dir.path()), opts).unwrap();
    crate::dev::seed(&e).unwrap();
    let c = Caller::internal("t");
    let mut people = crate::dev::users_collection("eu");
    people.name = "people".into();
    for f in &mut people.fields {
        f.indexed = f.name == "email";
    }
    people.retention = Some(super::Retention {
        ttl_seconds: 3600,
        grace_seconds: 600,
    });
    e.create_collection(&c, people.clone()).unwrap();
    // Refused: a time to live of zero.
    let mut bad = people.clone();
    bad.name = "bad".into();
    bad.retention = Some(super::Retention {
        ttl_seconds: 0,
        grace_seconds: 0,
    });
    assert!(matches!(
        e.create_collection(&c, bad),
        Err(Error::InvalidArgument(_))
    ));
    e.put_records(
        &c,
        vec![
            person("p1", "alice", "ada@example.eu"),
            person("p2", "bob", "bob@example.eu"),
            person("p3", "carol", "carol@example.eu"),
        ],
    )
    .unwrap();
    e.put_record(&c, user("u1", "alice")).unwrap();
    let email = Value::String("ada@example.eu".into());
    let find = |e: &Engine| {
        e.find_records(&c, "people", "email", &email, &[], 10)
            .unwrap()
    };
    assert_eq!(find(&e).len(), 1);

    // A second before expiry: readable. At expiry: unreadable at once.
    clock.advance(Duration::from_secs(3599));
    assert!(e.get_record(&c, "people", "p1", &[]).is_ok());
    clock.advance(Duration::from_secs(1));
    assert!(matches!(
        e.get_record(&c, "people", "p1", &[]),
        Err(Error::NotFound(_))
    ));
    assert!(find(&e).is_empty());
    // A delete removes an expired record but answers as a get does: it
    // was not there.
    assert!(!e.delete_record(&c, "people", "p3").unwrap());
    assert!(!e.delete_record(&c, "people", "p3").unwrap());
    // A collection without a retention keeps its records.
    assert!(e.get_record(&c, "users", "u1", &[]).is_ok());
    // A rewrite starts the time to live again; a subject-key rotation does
    // not.
    e.put_record(&c, person("p2", "bob", "bob@example.eu"))
        .unwrap();
    e.rotate_subject(&c, "alice").unwrap();
    assert!(matches!(
        e.get_record(&c, "people", "p1", &[]),
        Err(Error::NotFound(_))
    ));
    // The subject's export lists the expired record, marked, while held.
    let (bundle, _) = export_of(&e, &c, "alice").unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&bundle).unwrap();
    let p1 = doc["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "p1")
        .unwrap();
    assert_eq!(p1["expired"], true);
    assert_eq!(p1["written_at_ms"], 1_800_000_000_000_u64);

    // Within the grace period nothing is purged; after it, p1 is.
    assert_eq!(e.sweep_expired().unwrap(), 0);
    clock.advance(Duration::from_secs(600));
    let before = e.audit().size();
    assert_eq!(e.sweep_expired().unwrap(), 1);
    assert_eq!(e.sweep_expired().unwrap(), 0);
    let events = e.audit().events(before, 10).unwrap();
    assert_eq!(events.len(), 1);
    let ev: crate::audit::Event = serde_json::from_slice(&events[0]).unwrap();
    assert_eq!(
        (ev.operation.as_str(), ev.principal.as_str()),
        ("retention_purge", "vault")
    );
    assert_eq!(ev.collection.as_deref(), Some("people"));
    assert!(ev.records.is_empty() && ev.subjects.is_empty());
    assert!(ev.detail.unwrap().starts_with("1 records purged"));
    // Gone with its index rows and its subject-index row; p2 stays.
    let p1 = record_key("people", &e.names.record("people", "p1"));
    assert!(store.get(Table::Records, &p1).unwrap().is_none());
    assert!(e.indexed_tokens(&p1).unwrap().is_empty());
    assert!(!store
        .scan_prefix(Table::SubjectRecords, &index_prefix(&e, "alice"))
        .unwrap()
        .iter()
        .any(|(k, _)| k.ends_with(&p1)));
    assert!(e.get_record(&c, "people", "p2", &[]).is_ok());
    assert!(e.get_record(&c, "users", "u1", &[]).is_ok());
    // The write time is under the record tag: moved on disk (to keep a
    // record longer, or to have it purged), the record does not open, and
    // the sweeper leaves it.
    let p2 = record_key("people", &e.names.record("people", "p2"));
    let mut bytes = store.get(Table::Records, &p2).unwrap().unwrap();
    assert_eq!(bytes[0], crate::storage::STORED_RECORD_V3);
    let original = bytes.clone();
    // The u64 after version, subject and key version: written at 0.
    bytes[37..45].fill(0);
    let mut ws = WriteSet::new();
    ws.put(Table::Records, p2.clone(), bytes);
    store.write(ws).unwrap();
    assert!(matches!(
        e.get_record(&c, "people", "p2", &[]),
        Err(Error::Integrity)
    ));
    assert_eq!(e.sweep_expired().unwrap(), 0);
    assert!(store.get(Table::Records, &p2).unwrap().is_some());
    let bytes = original;
    let mut ws = WriteSet::new();
    ws.put(Table::Records, p2, bytes);
    store.write(ws).unwrap();
    // p2 goes in its turn.
    clock.advance(Duration::from_secs(3600));
    assert_eq!(e.sweep_expired().unwrap(), 1);
}

#[test]
fn a_record_rewritten_while_the_sweeper_purges_it_is_never_lost() {
    use crate::monitor::{Clock, ManualClock, Monitor, MonitorOptions};
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(RocksStore::open(&dir.path().join("db"), &StoreOptions::default()).unwrap());
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let mut opts = options();
    opts.monitor = Arc::new(Monitor::new(
        MonitorOptions::default(),
        Arc::clone(&clock) as Arc<dyn Clock>,
    ));
    let kr = Keyring::generate("eu".parse().unwrap(), custody());
    let e = Arc::new(Engine::new(store, kr, keyring_file(dir.path()), opts).unwrap());
    crate::dev::seed(&e).unwrap();
    let c = Caller::internal("t");
    let mut people = crate::dev::users_collection("eu");
    people.name = "people".into();
    people.retention = Some(super::Retention {
        ttl_seconds: 10,
        grace_seconds: 0,
    });
    e.create_collection(&c, people).unwrap();
    // Each round: a record due for purge, swept while it is written
    // again. Whatever the order, the acknowledged write must stand (it
    // carries a new write time, so it is not due).
    for round in 0..40 {
        let id = format!("p{round}");
        // Many due records in the batch, so the sweep's window is wide.
        let filler: Vec<Record> = (0..60)
            .map(|i| person(&format!("f{round}-{i}"), "filler", "f@example.eu"))
            .collect();
        e.put_records(&c, filler).unwrap();
        e.put_record(&c, person(&id, "alice", "a@example.eu"))
            .unwrap();
        clock.advance(Duration::from_secs(11));
        let sweeper = {
            let e = Arc::clone(&e);
            std::thread::spawn(move || e.sweep_expired().unwrap())
        };
        e.put_record(&c, person(&id, "alice", "a@example.eu"))
            .unwrap();
        sweeper.join().unwrap();
        assert!(
            e.get_record(&c, "people", &id, &[]).is_ok(),
            "round {round}: an acknowledged write was purged"
        );
    }
}

fn run_reindex_to_end(e: &Engine) -> usize {
    let mut steps = 1;
    while e.reindex_step().unwrap() {
        steps += 1;
    }
    steps
}

/// The index-key versions of the reverse rows of the index, by record
/// key (a version that is not a u32 is 0).
fn indexed_versions(e: &Engine) -> BTreeMap<Vec<u8>, Vec<u32>> {
    let mut by_record: BTreeMap<Vec<u8>, Vec<u32>> = BTreeMap::new();
    for (k, v) in e.store.scan_prefix(Table::Index, b"r").unwrap() {
        let rk = index::reverse_record_key(&k).unwrap().to_vec();
        let version = <[u8; 4]>::try_from(v.as_slice()).map_or(0, u32::from_be_bytes);
        by_record.entry(rk).or_default().push(version);
    }
    by_record
}

/// The ids of `people` whose e-mail is `email`, sorted.
fn people_with(e: &Engine, email: &str) -> Vec<String> {
    let found = e
        .find_records(
            &Caller::internal("t"),
            "people",
            "email",
            &Value::String(email.into()),
            &[],
            50,
        )
        .unwrap();
    let mut ids: Vec<String> = found.into_iter().map(|r| r.id).collect();
    ids.sort();
    ids
}

#[test]
fn index_key_rotation_rebuilds_every_row_and_destroys_the_old_key() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let c = Caller::internal("t");
    create_people(&e);
    // Ten people, two of each e-mail; users (no indexed field) beside them.
    let email = |i: usize| format!("person{}@example.eu", i / 2);
    e.put_records(
        &c,
        (0..10)
            .map(|i| person(&format!("p{i}"), &format!("s{i}"), &email(i)))
            .collect(),
    )
    .unwrap();
    put_users(&e, 3);
    let old_key = e
        .keyring()
        .current_index_key()
        .unwrap()
        .1
        .expose_secret()
        .to_vec();
    let old_forward: Vec<Vec<u8>> = e
        .store
        .scan_prefix(Table::Index, b"f")
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(old_forward.len(), 10);
    assert!(e.reindex_progress().finished);
    assert!(
        !e.reindex_step().unwrap(),
        "nothing to rebuild before a rotation"
    );

    // Custody only, like every key change.
    let writer = Caller {
        principal: Principal {
            name: "svc".into(),
            roles: vec![Role::Reader, Role::Writer, Role::Admin],
        },
        purpose: Some("test".into()),
        internal: false,
        request_id: None,
    };
    assert!(matches!(
        e.rotate_index_key(&writer),
        Err(Error::PermissionDenied(_))
    ));
    assert!(matches!(
        e.reindex_status(&writer),
        Err(Error::PermissionDenied(_))
    ));
    assert_eq!(e.rotate_index_key(&c).unwrap(), 2);
    let p = e.reindex_progress();
    assert_eq!((p.target_version, p.finished), (2, false));
    // At most two live versions: no rotation while the rebuild runs.
    let err = e.rotate_index_key(&c).unwrap_err();
    assert!(
        matches!(err, Error::FailedPrecondition(_))
            && err.to_string().contains("still being rebuilt"),
        "{err}"
    );

    // One batch by hand (3 rows, 3 records): part of the index is under
    // version 2, the rest still under version 1.
    assert!(e.reindex_step().unwrap());
    let mid = e.reindex_progress();
    assert_eq!(
        (mid.examined, mid.reindexed, mid.total_at_start),
        (3, 3, 10)
    );
    let versions = indexed_versions(&e);
    let under = |v: u32| {
        versions
            .iter()
            .filter(|(_, vs)| vs.iter().all(|x| *x == v))
            .map(|(k, _)| k.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!((under(1).len(), under(2).len()), (7, 3));
    // Searches find every record, under whichever version its rows are.
    for i in 0..5 {
        assert_eq!(
            people_with(&e, &format!("  PERSON{i}@example.EU")),
            vec![format!("p{}", 2 * i), format!("p{}", 2 * i + 1)],
            "person{i}"
        );
    }
    // Writes during the rebuild: a new record, a replace and a delete of
    // records the walk has not reached, a replace of one it has. Their
    // rows are of version 2 only, and searches follow them.
    let ids: Vec<String> = (0..10).map(|i| format!("p{i}")).collect();
    let id_of = |k: &Vec<u8>| {
        ids.iter()
            .find(|id| rec_key(&e, "people", id) == *k)
            .unwrap()
            .clone()
    };
    let ahead: Vec<String> = under(1).iter().map(id_of).collect();
    let passed: Vec<String> = under(2).iter().map(id_of).collect();
    let (moved, deleted, again) = (&ahead[0], &ahead[1], &passed[0]);
    e.put_record(&c, person("p10", "s10", "new@example.eu"))
        .unwrap();
    e.put_record(&c, person(moved, "s-moved", "moved@example.eu"))
        .unwrap();
    assert!(e.delete_record(&c, "people", deleted).unwrap());
    e.put_record(&c, person(again, "s-again", "again@example.eu"))
        .unwrap();
    let versions = indexed_versions(&e);
    for id in ["p10", moved.as_str(), again.as_str()] {
        assert_eq!(versions[&rec_key(&e, "people", id)], vec![2], "{id}");
    }
    assert!(!versions.contains_key(&rec_key(&e, "people", deleted)));
    assert_eq!(people_with(&e, "new@example.eu"), vec!["p10"]);
    assert_eq!(people_with(&e, "moved@example.eu"), vec![moved.clone()]);
    assert_eq!(people_with(&e, "again@example.eu"), vec![again.clone()]);

    run_reindex_to_end(&e);
    let p = e.reindex_progress();
    // The walk meets p10 only if it lies past the first batch.
    let last_passed = under(2).into_iter().max().unwrap();
    let p10_ahead = u64::from(rec_key(&e, "people", "p10") > last_passed);
    assert!(p.finished);
    assert_eq!(
        (p.target_version, p.total_at_start, p.skipped, p.unreadable),
        (2, 10, 0, 0)
    );
    // Reindexed: the ten but the deleted one and the one replaced ahead of
    // the walk; examined: those, the replaced one and perhaps p10.
    assert_eq!(p.reindexed, 8);
    assert_eq!(p.examined, 9 + p10_ahead);
    // No row of version 1 is left: every reverse row is of version 2, and
    // no forward row made under version 1 remains.
    let versions = indexed_versions(&e);
    assert_eq!(versions.len(), 10);
    assert!(versions.values().flatten().all(|v| *v == 2), "{versions:?}");
    let forward = e.store.scan_prefix(Table::Index, b"f").unwrap();
    assert_eq!(forward.len(), 10);
    for k in &old_forward {
        assert!(
            e.store.get(Table::Index, k).unwrap().is_none(),
            "a forward row of version 1 is left"
        );
    }
    // Every record is found by its value.
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (i, id) in ids.iter().enumerate() {
        if id != moved && id != deleted && id != again {
            expected.entry(email(i)).or_default().push(id.clone());
        }
    }
    for (value, ids) in &expected {
        assert_eq!(&people_with(&e, value), ids, "{value}");
    }
    assert_eq!(people_with(&e, "new@example.eu"), vec!["p10"]);
    assert_eq!(people_with(&e, "moved@example.eu"), vec![moved.clone()]);
    // The old version is destroyed, in memory and in the keyring file,
    // and its bytes left the file.
    let destroyed = vec![
        (1, crate::keys::KeyState::Destroyed),
        (2, crate::keys::KeyState::Active),
    ];
    assert_eq!(e.keyring().index_versions().collect::<Vec<_>>(), destroyed);
    let file = std::fs::read(dir.path().join("keyring")).unwrap();
    let kr = Keyring::unseal(&file, &e.keyring_file.unseal_key, &"eu".parse().unwrap()).unwrap();
    assert_eq!(kr.index_versions().collect::<Vec<_>>(), destroyed);
    assert_eq!(kr.live_index_keys().len(), 1);
    assert!(!kr
        .contents_for_seed()
        .windows(32)
        .any(|w| w == old_key.as_slice()));
    // The rotation and the rebuild's end are custody events, with counts
    // and no id.
    let events: Vec<serde_json::Value> = e
        .audit()
        .events(0, 100_000)
        .unwrap()
        .iter()
        .map(|raw| serde_json::from_slice(raw).unwrap())
        .collect();
    let rotated: Vec<_> = events
        .iter()
        .filter(|ev| ev["operation"] == "rotate_index_key")
        .collect();
    // One done; one refused by the policy, one by the running rebuild.
    assert_eq!(
        rotated
            .iter()
            .map(|ev| ev["decision"].as_str().unwrap())
            .collect::<Vec<_>>(),
        vec!["denied", "allowed", "failed"]
    );
    let finished: Vec<_> = events
        .iter()
        .filter(|ev| ev["operation"] == "reindex_finished")
        .collect();
    assert_eq!(finished.len(), 1);
    let detail = finished[0]["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("index key version 2: ")
            && detail.contains("8 re-indexed")
            && detail.contains("destroyed: 1;"),
        "{detail}"
    );
    assert!(!finished[0].to_string().contains("example.eu"));
    assert!(!finished[0].to_string().contains("\"p1"));
    // The next rotation is allowed again, and rebuilds as well.
    assert_eq!(e.rotate_index_key(&c).unwrap(), 3);
    run_reindex_to_end(&e);
    assert!(e.reindex_progress().finished);
    assert!(indexed_versions(&e).values().flatten().all(|v| *v == 3));
    assert_eq!(people_with(&e, "new@example.eu"), vec!["p10"]);
    assert_eq!(e.keyring().older_index_versions(), Vec::<u32>::new());
}

#[test]
fn index_rebuild_resumes_after_a_restart_and_skips_what_it_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    let folder = Restartable::new(dir.path());
    let e = folder.start();
    let c = Caller::internal("t");
    create_people(&e);
    let email = |i: usize| format!("person{i}@example.eu");
    for i in 0..20 {
        e.put_record(&c, person(&format!("p{i}"), &format!("s{i}"), &email(i)))
            .unwrap();
    }
    // Rows whose record is gone (a put that raced a delete), and a record
    // whose tag no longer verifies.
    let ghost = rec_key(&e, "people", "ghost");
    let kr = e.keyring();
    let (v1, k1) = kr.current_index_key().unwrap();
    let ghost_token = index::token(
        k1,
        v1,
        "eu",
        "people",
        "email",
        &Value::String("ghost@example.eu".into()),
    )
    .unwrap();
    drop(kr);
    let mut ws = WriteSet::new();
    index::replace(&mut ws, &ghost, &[], 1, &[ghost_token]);
    let damaged = rec_key(&e, "people", "p0");
    let mut bytes = e.store.get(Table::Records, &damaged).unwrap().unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    ws.put(Table::Records, damaged.clone(), bytes);
    e.store.write(ws).unwrap();

    e.rotate_index_key(&c).unwrap();
    assert!(e.reindex_step().unwrap());
    assert!(e.reindex_step().unwrap());
    let mid = e.reindex_progress();
    assert_eq!((mid.examined, mid.total_at_start), (6, 21));
    // "Restart": a new engine over the same folder and the saved keyring.
    drop(e);
    let e = folder.restart();
    assert_eq!(e.reindex_progress(), mid, "progress survives the restart");
    assert_eq!(e.keyring().older_index_versions(), vec![1]);
    run_reindex_to_end(&e);
    let p = e.reindex_progress();
    assert!(p.finished);
    assert_eq!(
        (
            p.examined,
            p.reindexed,
            p.skipped,
            p.unreadable,
            p.total_at_start
        ),
        (21, 19, 1, 1, 21),
        "every record once"
    );
    // The unreadable record and the rows without a record keep no row; the
    // others are all under version 2 and found.
    let versions = indexed_versions(&e);
    assert_eq!(versions.len(), 19);
    assert!(!versions.contains_key(&ghost) && !versions.contains_key(&damaged));
    assert!(versions.values().flatten().all(|v| *v == 2));
    assert_eq!(e.store.scan_prefix(Table::Index, b"f").unwrap().len(), 19);
    for i in 1..20 {
        assert_eq!(people_with(&e, &email(i)), vec![format!("p{i}")]);
    }
    assert!(people_with(&e, "ghost@example.eu").is_empty());
    assert_eq!(
        e.keyring().index_versions().collect::<Vec<_>>(),
        vec![
            (1, crate::keys::KeyState::Destroyed),
            (2, crate::keys::KeyState::Active)
        ]
    );
    // A third engine finds the job finished and nothing to do.
    drop(e);
    let e = folder.restart();
    assert_eq!(e.reindex_progress(), p);
    assert!(!e.reindex_step().unwrap());
}

/// A batch of the rebuild holds its records' writer locks exclusively
/// from the moment it reads them until its rows are written: a put or
/// delete of one of them waits, and then follows the batch, so no row is
/// made from a value a write replaced, or for a record a write deleted.
#[test]
fn a_write_of_a_record_in_a_rebuild_batch_waits_for_the_batch_and_stays() {
    use std::sync::mpsc;
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let c = Caller::internal("t");
    create_people(&e);
    // Three records, one indexed row each: one batch of three.
    for i in 0..3 {
        e.put_record(
            &c,
            person(
                &format!("p{i}"),
                &format!("s{i}"),
                &format!("old{i}@example.eu"),
            ),
        )
        .unwrap();
    }
    e.rotate_index_key(&c).unwrap();
    let (at_batch, batch_reached) = mpsc::channel::<()>();
    let (go, wait_for_go) = mpsc::channel::<()>();
    *lock(&e.reindex.pause) = Some(Box::new(move || {
        at_batch.send(()).unwrap();
        wait_for_go.recv().unwrap();
    }));
    let written = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let rebuild = scope.spawn(|| while e.reindex_step().unwrap() {});
        // The batch has read its three records, under their locks.
        batch_reached.recv().unwrap();
        let writer = scope.spawn(|| {
            e.put_record(&c, person("p0", "s0", "new0@example.eu"))
                .unwrap();
            assert!(e.delete_record(&c, "people", "p1").unwrap());
            written.store(true, Ordering::SeqCst);
        });
        // Not a wait for readiness: the writes must not get through while
        // the batch holds the records (they would within milliseconds).
        std::thread::sleep(std::time::Duration::from_millis(300));
        let early = written.load(Ordering::SeqCst);
        go.send(()).unwrap();
        writer.join().unwrap();
        rebuild.join().unwrap();
        assert!(
            !early,
            "a write of a record of the batch ran while the batch held it"
        );
    });
    while e.reindex_step().unwrap() {}
    let p = e.reindex_progress();
    assert!(p.finished);
    assert_eq!((p.examined, p.reindexed), (3, 3));
    // Each record has exactly the row of its value under version 2.
    let kr = e.keyring();
    let (_, key) = kr.current_index_key().unwrap();
    let listed = |id: &str| {
        let prefix = index::reverse_prefix(&rec_key(&e, "people", id));
        index::listed_tokens(
            &e.store.scan_prefix(Table::Index, &prefix).unwrap(),
            &prefix,
        )
        .unwrap()
    };
    let token =
        |v: &str| index::token(key, 2, "eu", "people", "email", &Value::String(v.into())).unwrap();
    assert_eq!(listed("p0"), vec![token("new0@example.eu")]);
    assert!(listed("p1").is_empty());
    assert_eq!(listed("p2"), vec![token("old2@example.eu")]);
    assert_eq!(e.store.scan_prefix(Table::Index, b"f").unwrap().len(), 2);
    assert_eq!(people_with(&e, "new0@example.eu"), vec!["p0"]);
    assert!(people_with(&e, "old0@example.eu").is_empty());
    assert!(people_with(&e, "old1@example.eu").is_empty());
    assert_eq!(people_with(&e, "old2@example.eu"), vec!["p2"]);
}
