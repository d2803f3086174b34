use super::*;
use crate::policy::Principal;
use crate::storage::{RocksStore, StoreOptions};

fn engine(dir: &std::path::Path) -> Engine {
    let store = RocksStore::open(dir, &StoreOptions::default()).unwrap();
    let kr = Keyring::generate("eu".parse().unwrap());
    let e = Engine::new(Box::new(store), kr, Limits::default(), 16).unwrap();
    crate::dev::seed(&e).unwrap();
    e
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
    Record {
        collection: "users".into(),
        id: id.into(),
        subject_id: subject.into(),
        fields,
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
    let c = Caller::internal("t");
    for i in 0..8 {
        e.get_record(&c, "users", &format!("r{i}"), &[]).unwrap();
    }
    assert_eq!(
        e.store
            .scan_prefix(Table::SubjectKeys, b"same\0")
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
        purpose: None,
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
    let store = RocksStore::open(dir.path(), &StoreOptions::default()).unwrap();
    let other = Keyring::generate("eu".parse().unwrap());
    let err = Engine::new(Box::new(store), other, Limits::default(), 16).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Keyring(crate::keys::KeyringError::ForeignDataFolder)
        ),
        "{err}"
    );
}
