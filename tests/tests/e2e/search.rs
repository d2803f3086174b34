//! Search by blind index through real sockets: `FindRecords` with the
//! client and with `vaultctl find`. Hits after normalisation, no false
//! hits, the index follows replace, delete and erasure, and no indexed
//! value is in the data folder in clear.

use serde_json::Value as Json;
use vault_client::{Collection, DataCategory, FieldSchema, FieldType, Record};
use vault_server::storage::Table;
use vault_tests::TestVault;

use crate::tamper::{assert_not_in_clear, open_raw};
use crate::vaultctl::vaultctl;

const CANARY: &str = "Canary-7f3e-Search@Example.EU";

pub(crate) fn people() -> Collection {
    Collection::new("people")
        .region("eu")
        .field(FieldSchema::new("email", FieldType::String, DataCategory::Contact).indexed())
        .field(FieldSchema::new("number", FieldType::Int64, DataCategory::Identity).indexed())
        .field(FieldSchema::new(
            "name",
            FieldType::String,
            DataCategory::Identity,
        ))
}

pub(crate) fn person(id: &str, subject: &str, email: &str, number: i64) -> Record {
    Record::new("people", id, subject)
        .with("email", email)
        .with("number", number)
        .with("name", "Ada Lovelace")
}

fn ids(found: &[Record]) -> Vec<String> {
    let mut ids: Vec<String> = found.iter().map(|r| r.id.clone()).collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_by_an_indexed_field_follows_every_write_and_leaves_no_value_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let client = vault.client().await;
    client.create_collection(&people()).await.unwrap();
    // A boolean cannot be indexed.
    let flags = Collection::new("flags")
        .region("eu")
        .field(FieldSchema::new("vip", FieldType::Bool, DataCategory::Other).indexed());
    let e = client.create_collection(&flags).await.unwrap_err();
    assert!(e.to_string().contains("cannot be indexed"), "{e}");

    client.put(&person("p1", "s1", CANARY, 1001)).await.unwrap();
    client
        .put(&person(
            "p2",
            "s2",
            &format!("  {}  ", CANARY.to_lowercase()),
            1002,
        ))
        .await
        .unwrap();
    client
        .put(&person("p3", "s3", "someone.else@example.eu", 1001))
        .await
        .unwrap();

    // Hits after normalisation; no false hits.
    let found = client
        .find("people", "email", CANARY.to_uppercase(), &[], 10)
        .await
        .unwrap();
    assert_eq!(ids(&found), vec!["p1", "p2"]);
    assert_eq!(found[0].get("name").unwrap().to_string(), "Ada Lovelace");
    let numbers = client
        .find("people", "number", 1001_i64, &[], 10)
        .await
        .unwrap();
    assert_eq!(ids(&numbers), vec!["p1", "p3"]);
    for missing in [
        "canary-7f3e-search@example.e",
        "someone.else@example.eu.",
        "",
    ] {
        let found = client.find("people", "email", missing, &[], 10).await;
        match found {
            Ok(found) => assert!(found.is_empty(), "{missing}"),
            // An empty string is not a value a field can hold.
            Err(e) => assert!(missing.is_empty(), "{missing}: {e}"),
        }
    }
    // The projection and the limit.
    let one = client
        .find("people", "email", CANARY, &["email"], 1)
        .await
        .unwrap();
    assert_eq!(one.len(), 1);
    assert!(one[0].get("name").is_none());
    // A field that is not indexed, a value of another type.
    assert!(client
        .find("people", "name", "Ada Lovelace", &[], 10)
        .await
        .is_err());
    assert!(client
        .find("people", "email", 5_i64, &[], 10)
        .await
        .is_err());

    // The index follows a replace, a delete and an erasure.
    client
        .put(&person("p2", "s2", "moved@example.eu", 1002))
        .await
        .unwrap();
    let found = client
        .find("people", "email", CANARY, &[], 10)
        .await
        .unwrap();
    assert_eq!(ids(&found), vec!["p1"]);
    assert!(client.delete("people", "p3").await.unwrap());
    let numbers = client
        .find("people", "number", 1001_i64, &[], 10)
        .await
        .unwrap();
    assert_eq!(ids(&numbers), vec!["p1"]);
    client.erase_subject("s1").await.unwrap();
    assert!(client
        .find("people", "email", CANARY, &[], 10)
        .await
        .unwrap()
        .is_empty());
    let moved = client
        .find("people", "email", "MOVED@example.eu", &[], 10)
        .await
        .unwrap();
    assert_eq!(ids(&moved), vec!["p2"]);

    // vaultctl find, text and JSON.
    client.put(&person("p4", "s4", CANARY, 7)).await.unwrap();
    let text = vaultctl(&vault, &["find", "people", "email", &CANARY.to_lowercase()]).await;
    let out = text.ok();
    assert!(
        out.contains("people/p4 (subject s4)") && out.ends_with("1 record found\n"),
        "{out}"
    );
    let json: Json = vaultctl(&vault, &["--json", "find", "people", "number", "7"])
        .await
        .json();
    assert_eq!(json["records"][0]["id"], "p4", "{json}");
    let bad = vaultctl(&vault, &["find", "people", "nope", "x"]).await;
    assert!(bad.error(1).contains("no field nope"), "{bad:?}");
    drop(client);
    vault.stop().await;

    if vault_tests::skip_on_postgres("the rest reads RocksDB's files") {
        return;
    }
    // No indexed value in clear anywhere in the data folder, in the WAL or
    // (after a flush) in the tables, which do hold index rows.
    assert_not_in_clear(dir.path(), CANARY);
    let db = open_raw(dir.path());
    assert!(db
        .iterator_cf(
            db.cf_handle(Table::Index.name()).unwrap(),
            rocksdb::IteratorMode::Start
        )
        .next()
        .is_some());
}

/// The forward blind-index rows (`f ‖ token ‖ record key`) in a stopped
/// vault's data folder.
fn forward_rows(dir: &std::path::Path) -> Vec<Vec<u8>> {
    let db = open_raw(dir);
    let cf = db.cf_handle(Table::Index.name()).unwrap();
    db.iterator_cf(cf, rocksdb::IteratorMode::Start)
        .map(|row| row.unwrap().0.to_vec())
        .filter(|k| k.first() == Some(&b'f'))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_compacts_the_index_rows_of_the_subject_away() {
    if vault_tests::skip_on_postgres("reads RocksDB's table files") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let client = vault.client().await;
    client.create_collection(&people()).await.unwrap();
    client
        .put(&person("p1", "s1", "erased@example.eu", 4242))
        .await
        .unwrap();
    drop(client);
    vault.stop().await;
    // p1's rows, flushed into a table file.
    let tokens: Vec<Vec<u8>> = forward_rows(dir.path())
        .iter()
        .map(|k| k[1..33].to_vec())
        .collect();
    assert_eq!(tokens.len(), 2, "email and number");
    {
        let db = open_raw(dir.path());
        db.flush_cf(db.cf_handle(Table::Index.name()).unwrap())
            .unwrap();
    }
    let sst_has_a_token = || {
        crate::tamper::walk(dir.path())
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "sst"))
            .any(|p| {
                let data = std::fs::read(&p).unwrap();
                data.windows(32).any(|w| tokens.iter().any(|t| t == w))
            })
    };
    assert!(sst_has_a_token(), "the rows are in a table file");

    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let client = vault.client().await;
    client
        .put(&person("p2", "s2", "kept@example.eu", 7))
        .await
        .unwrap();
    client.erase_subject("s1").await.unwrap();
    drop(client);
    vault.stop().await;
    assert_eq!(forward_rows(dir.path()).len(), 2, "p2's rows only");
    assert!(
        !sst_has_a_token(),
        "an erased record's index tokens are still in a table file"
    );
}
