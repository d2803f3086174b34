//! Round trips, projection, batches, delete, restart.

use vault_client::{Record, Value};
use vault_tests::TestVault;

use crate::{all_types, user, vaultc_ts};

#[tokio::test]
async fn round_trip_every_value_type() {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let client = vault.client().await;
    let created = client
        .create_collection(&all_types("things"))
        .await
        .unwrap();
    assert_eq!(
        created.region, "eu",
        "empty region means the vault's region"
    );
    let record = Record::new("things", "t1", "subject-1")
        .with("s", "héllo wörld ✓")
        .with("i", Value::Int64(i64::MIN))
        .with("d", Value::Double(-0.125))
        .with("b", Value::Bool(true))
        .with("y", Value::Bytes(vec![0, 1, 2, 255]))
        .with("t", vaultc_ts(1_700_000_000, 123_456_789));
    client.put(&record).await.unwrap();
    assert_eq!(client.get("things", "t1").await.unwrap(), record);

    // Edge values, and a record with only some fields.
    let edge = Record::new("things", "t2", "subject-1")
        .with("s", "")
        .with("i", Value::Int64(i64::MAX))
        .with("d", Value::Double(f64::MAX))
        .with("b", Value::Bool(false))
        .with("y", Value::Bytes(vec![]))
        .with("t", vaultc_ts(-62_135_596_800, 0));
    client.put(&edge).await.unwrap();
    assert_eq!(client.get("things", "t2").await.unwrap(), edge);
    let partial = Record::new("things", "t3", "subject-2").with("i", Value::Int64(7));
    client.put(&partial).await.unwrap();
    assert_eq!(client.get("things", "t3").await.unwrap(), partial);

    // Replace.
    let replaced = Record::new("things", "t1", "subject-1").with("s", "new");
    client.put(&replaced).await.unwrap();
    assert_eq!(client.get("things", "t1").await.unwrap(), replaced);

    let listed: Vec<_> = client
        .collections()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(listed, vec!["things".to_string(), "users".to_string()]);
    assert_eq!(client.collection("things").await.unwrap(), created);
    vault.stop().await;
}

#[tokio::test]
async fn projection_decrypts_only_named_fields() {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let client = vault.client().await;
    client.put(&user("u1", "s1")).await.unwrap();

    let before = vault.engine().stats().fields_decrypted;
    let got = client
        .get_fields("users", "u1", &["email", "country"])
        .await
        .unwrap();
    assert_eq!(
        vault.engine().stats().fields_decrypted - before,
        2,
        "only the two projected fields"
    );
    assert_eq!(
        got.fields.keys().collect::<Vec<_>>(),
        vec!["country", "email"]
    );
    assert_eq!(
        got.get("email"),
        Some(&Value::String("u1@example.eu".into()))
    );

    let before = vault.engine().stats().fields_decrypted;
    let all = client.get("users", "u1").await.unwrap();
    assert_eq!(vault.engine().stats().fields_decrypted - before, 5);
    assert_eq!(all, user("u1", "s1"));

    let before = vault.engine().stats().fields_decrypted;
    let batch = client
        .get_many("users", &["u1", "nobody"], &["name"])
        .await
        .unwrap();
    assert_eq!(vault.engine().stats().fields_decrypted - before, 1);
    assert_eq!(batch.records.len(), 1);
    assert_eq!(batch.missing_ids, vec!["nobody".to_string()]);
    vault.stop().await;
}

#[tokio::test]
async fn batch_put_get_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let client = vault.client().await;
    let records: Vec<_> = (0..50)
        .map(|i| user(&format!("b{i}"), &format!("s{}", i % 7)))
        .collect();
    assert_eq!(client.put_many(&records).await.unwrap(), 50);
    let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let got = client.get_many("users", &id_refs, &[]).await.unwrap();
    assert_eq!(got.records, records, "in request order");
    assert!(got.missing_ids.is_empty());

    assert!(client.delete("users", "b3").await.unwrap());
    assert!(
        !client.delete("users", "b3").await.unwrap(),
        "second delete finds nothing"
    );
    assert!(matches!(
        client.get("users", "b3").await,
        Err(vault_client::Error::NotFound(_))
    ));
    let got = client
        .get_many("users", &["b2", "b3", "b4"], &[])
        .await
        .unwrap();
    assert_eq!(got.records.len(), 2);
    assert_eq!(got.missing_ids, vec!["b3".to_string()]);

    // A batch is atomic: one bad record and nothing is written.
    let mut bad = vec![user("atomic-1", "s1"), user("atomic-2", "s1")];
    bad[1].set("phone", Value::Int64(5));
    assert!(matches!(
        client.put_many(&bad).await,
        Err(vault_client::Error::InvalidInput(_))
    ));
    assert!(matches!(
        client.get("users", "atomic-1").await,
        Err(vault_client::Error::NotFound(_))
    ));
    vault.stop().await;
}

#[tokio::test]
async fn restart_on_the_same_folder_reads_everything_back() {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let client = vault.client().await;
    client
        .create_collection(&all_types("things"))
        .await
        .unwrap();
    let records: Vec<_> = (0..20)
        .map(|i| user(&format!("r{i}"), &format!("s{i}")))
        .collect();
    client.put_many(&records).await.unwrap();
    let thing = Record::new("things", "x", "s1").with("y", Value::Bytes(vec![9; 100]));
    client.put(&thing).await.unwrap();
    drop(client);
    vault.stop().await;

    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let client = vault.client().await;
    for r in &records {
        assert_eq!(&client.get("users", &r.id).await.unwrap(), r);
    }
    assert_eq!(client.get("things", "x").await.unwrap(), thing);
    assert_eq!(client.collections().await.unwrap().len(), 2);
    drop(client);
    vault.stop().await;
}

#[tokio::test]
async fn concurrent_writers_of_one_new_subject_share_one_key() {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let client = vault.client().await;
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let c = client.clone();
            tokio::spawn(async move {
                c.put(&user(&format!("c{i}"), "shared-subject"))
                    .await
                    .unwrap()
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    for i in 0..16 {
        client.get("users", &format!("c{i}")).await.unwrap();
    }
    drop(client);
    vault.stop().await;
}
