//! Raw-store tamper tests: after writes through the server, stop it, edit
//! its RocksDB directly, restart, and check that every read of an edited
//! value fails with an integrity error (gRPC DATA_LOSS), never wrong plaintext.
//! Also: no file in the data folder holds a plaintext value.

use std::path::Path;

use rocksdb::{Options, DB};
use vault_client::{Error, Record, Value};
use vault_server::keys::StorageNames;
use vault_server::storage::{record_key, subject_key_id, StoredRecord, Table};
use vault_tests::TestVault;

use crate::user;

pub fn open_raw(data_dir: &Path) -> DB {
    let names: Vec<&str> = Table::ALL.iter().map(|t| t.name()).collect();
    DB::open_cf(&Options::default(), data_dir.join("db"), names).unwrap()
}

/// The storage names of a test vault's rows (its keyring's), so that a
/// test can find a record's row by its clear ids.
pub fn names_of(vault: &TestVault) -> StorageNames {
    StorageNames::of(&vault.engine().keyring())
}

/// The Records row of a record.
pub fn row(names: &StorageNames, collection: &str, id: &str) -> Vec<u8> {
    record_key(collection, &names.record(collection, id))
}

/// The SubjectKeys row of a version of a subject's key.
pub fn key_row(names: &StorageNames, subject: &str, version: u32) -> Vec<u8> {
    let name = names.subject(subject);
    subject_key_id(names.bucket(&name), &name, version)
}

pub fn stored(db: &DB, names: &StorageNames, collection: &str, id: &str) -> StoredRecord {
    let cf = db.cf_handle("records").unwrap();
    let raw = db.get_cf(cf, row(names, collection, id)).unwrap().unwrap();
    StoredRecord::decode(&raw).unwrap().0
}

fn store(db: &DB, names: &StorageNames, collection: &str, id: &str, r: &StoredRecord) {
    let cf = db.cf_handle("records").unwrap();
    db.put_cf(cf, row(names, collection, id), r.encode())
        .unwrap();
}

fn field_index(r: &StoredRecord, name: &str) -> usize {
    r.fields.iter().position(|f| f.name == name).unwrap()
}

#[tokio::test]
async fn every_raw_edit_is_an_integrity_error() {
    if vault_tests::skip_on_postgres("edits RocksDB directly") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let client = vault.client().await;
    let mut users2 = client.collection("users").await.unwrap();
    users2.name = "users2".into();
    client.create_collection(&users2).await.unwrap();
    let ids = [
        "flip",
        "swap-a",
        "swap-b",
        "cross",
        "moved",
        "version",
        "untouched",
        "subject-key",
        "dropped-field",
        "other-subject",
        "record-version",
        "empty",
        "s2-anchor",
        "relocated",
        "relocated-over",
    ];
    for id in ids {
        let subject = match id {
            "subject-key" => "s9",
            "s2-anchor" | "relocated-over" => "s2",
            _ => "s1",
        };
        client.put(&user(id, subject)).await.unwrap();
    }
    drop(client);
    let n = &names_of(&vault);
    vault.stop().await;

    {
        let db = open_raw(dir.path());
        // (a) flip one byte of a stored field's ciphertext.
        let mut r = stored(&db, n, "users", "flip");
        let i = field_index(&r, "email");
        r.fields[i].envelope[20] ^= 0x01;
        store(&db, n, "users", "flip", &r);
        // (b) swap one field's ciphertext between two records of the same subject.
        let mut a = stored(&db, n, "users", "swap-a");
        let mut b = stored(&db, n, "users", "swap-b");
        let (ia, ib) = (field_index(&a, "name"), field_index(&b, "name"));
        std::mem::swap(&mut a.fields[ia].envelope, &mut b.fields[ib].envelope);
        store(&db, n, "users", "swap-a", &a);
        store(&db, n, "users", "swap-b", &b);
        // (c) swap the ciphertexts of two fields of one record.
        let mut c = stored(&db, n, "users", "cross");
        let (ie, in_) = (field_index(&c, "email"), field_index(&c, "name"));
        let tmp = c.fields[ie].envelope.clone();
        c.fields[ie].envelope = c.fields[in_].envelope.clone();
        c.fields[in_].envelope = tmp;
        store(&db, n, "users", "cross", &c);
        // (d) move a record's ciphertext to another collection with the same schema.
        let m = stored(&db, n, "users", "moved");
        store(&db, n, "users2", "moved", &m);
        // (e) change the stored key version of a field.
        let mut v = stored(&db, n, "users", "version");
        let i = field_index(&v, "phone");
        v.fields[i].envelope[1..5].copy_from_slice(&2u32.to_be_bytes());
        store(&db, n, "users", "version", &v);
        // (f) drop one field from a record: each remaining envelope is
        // intact, but the record tag covers the set of fields.
        let mut d = stored(&db, n, "users", "dropped-field");
        d.fields.retain(|f| f.name != "phone");
        store(&db, n, "users", "dropped-field", &d);
        // (g) re-attribute a record to another subject whose key exists.
        let mut o = stored(&db, n, "users", "other-subject");
        o.subject = n.subject("s2");
        store(&db, n, "users", "other-subject", &o);
        // (h) change the record-level key version.
        let mut rv = stored(&db, n, "users", "record-version");
        rv.key_version = 2;
        store(&db, n, "users", "record-version", &rv);
        // (i) strip every field: an emptied record must not read as a record.
        let mut e = stored(&db, n, "users", "empty");
        e.fields.clear();
        store(&db, n, "users", "empty", &e);
        // (j) move a whole record, its raw value byte for byte, to other
        // ids of the same collection: a new id (same subject, no index
        // row), and over another subject's record.
        let cf = db.cf_handle("records").unwrap();
        let whole = db
            .get_cf(cf, row(n, "users", "relocated"))
            .unwrap()
            .unwrap();
        for to in ["relocated-new", "relocated-over"] {
            db.put_cf(cf, row(n, "users", to), &whole).unwrap();
        }
        // And a flipped byte in a wrapped subject key.
        let cf = db.cf_handle("subject_keys").unwrap();
        let key = key_row(n, "s9", 1);
        let mut wrapped = db.get_cf(cf, &key).unwrap().unwrap();
        wrapped[30] ^= 0x01;
        db.put_cf(cf, &key, wrapped).unwrap();
    }

    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let client = vault.client().await;
    let cases = [
        ("users", "flip"),
        ("users", "swap-a"),
        ("users", "swap-b"),
        ("users", "cross"),
        ("users2", "moved"),
        ("users", "version"),
        ("users", "subject-key"),
        ("users", "dropped-field"),
        ("users", "other-subject"),
        ("users", "record-version"),
        ("users", "empty"),
        ("users", "relocated-new"),
        ("users", "relocated-over"),
    ];
    for (collection, id) in cases {
        let got = client.get(collection, id).await;
        assert!(
            matches!(got, Err(Error::Integrity)),
            "{collection}/{id}: {got:?}"
        );
        // A projection that skips the edited field fails too: the record tag
        // is checked before anything is decrypted.
        let got = client.get_fields(collection, id, &["country"]).await;
        assert!(
            matches!(got, Err(Error::Integrity)),
            "projected {collection}/{id}: {got:?}"
        );
        let batch = client.get_many(collection, &[id], &[]).await;
        assert!(
            matches!(batch, Err(Error::Integrity)),
            "batch {collection}/{id}: {batch:?}"
        );
    }
    // The untouched records and the originals of the moved ones still read.
    assert_eq!(
        client.get("users", "untouched").await.unwrap(),
        user("untouched", "s1")
    );
    assert_eq!(
        client.get("users", "moved").await.unwrap(),
        user("moved", "s1")
    );
    assert_eq!(
        client.get("users", "s2-anchor").await.unwrap(),
        user("s2-anchor", "s2")
    );
    // The relocated record still reads under its own id.
    assert_eq!(
        client.get("users", "relocated").await.unwrap(),
        user("relocated", "s1")
    );
    drop(client);
    vault.stop().await;
}

#[tokio::test]
async fn no_file_in_the_data_folder_holds_plaintext() {
    if vault_tests::skip_on_postgres("scans RocksDB's files") {
        return;
    }
    const CANARIES: [&str; 3] = [
        "CANARY-e1f0c2-mail@example.eu",
        "CANARY-Zoë-Ångström",
        "CANARY-+33699887766",
    ];
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let client = vault.client().await;
    client
        .create_collection(&crate::all_types("things"))
        .await
        .unwrap();
    for i in 0..200 {
        let r = Record::new("users", format!("c{i}"), format!("s{i}"))
            .with("email", CANARIES[0])
            .with("name", CANARIES[1])
            .with("phone", CANARIES[2]);
        client.put(&r).await.unwrap();
    }
    let bytes =
        Record::new("things", "b", "s1").with("y", Value::Bytes(b"CANARY-RAW-BYTES-0042".to_vec()));
    client.put(&bytes).await.unwrap();
    drop(client);
    vault.stop().await;

    let scan = |stage: &str| {
        let mut files = 0;
        for path in walk(dir.path()) {
            let data = std::fs::read(&path).unwrap();
            files += 1;
            for canary in CANARIES
                .iter()
                .map(|c| c.as_bytes())
                .chain([b"CANARY-RAW-BYTES-0042".as_slice()])
            {
                assert!(
                    !data.windows(canary.len()).any(|w| w == canary),
                    "{stage}: plaintext found in {}",
                    path.display()
                );
            }
            assert!(
                !data.windows(6).any(|w| w == b"CANARY"),
                "{stage}: canary prefix in {}",
                path.display()
            );
        }
        files
    };
    let before = scan("WAL");
    {
        // Flush every column family so the values also sit in SST files.
        let db = open_raw(dir.path());
        for t in Table::ALL {
            db.flush_cf(db.cf_handle(t.name()).unwrap()).unwrap();
        }
    }
    let after = scan("SST");
    assert!(
        before >= 5 && after >= 5,
        "scanned {before} and {after} files"
    );
}

pub(crate) fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Asserts that `canary`, as written, lower-cased or upper-cased, is in
/// no file of the data folder `dir` (of a stopped vault): scanned as it
/// is (the WAL), then again after every table is flushed to its files.
pub(crate) fn assert_not_in_clear(dir: &Path, canary: &str) {
    let canaries = [
        canary.to_owned(),
        canary.to_lowercase(),
        canary.to_uppercase(),
    ];
    let scan = || {
        for path in walk(dir) {
            let data = std::fs::read(&path).unwrap();
            for canary in &canaries {
                assert!(
                    !data.windows(canary.len()).any(|w| w == canary.as_bytes()),
                    "{canary} in {}",
                    path.display()
                );
            }
        }
    };
    scan();
    {
        let db = open_raw(dir);
        for t in Table::ALL {
            db.flush_cf(db.cf_handle(t.name()).unwrap()).unwrap();
        }
    }
    scan();
}
