//! Subject export through real sockets: `ExportSubject` with the client and
//! with `vaultctl subject export`, checked offline by `vaultctl subject
//! verify-export`. Everything of the subject across three collections,
//! nothing of anyone else; the signature verifies, and fails after a
//! one-byte edit of the bundle or of the signature.

use serde_json::Value as Json;
use vault_client::audit::VerifierKey;
use vault_client::export::{verify_export, ExportFault};
use vault_client::{Collection, DataCategory, FieldSchema, FieldType, Record};
use vault_tests::TestVault;

use crate::vaultctl::{vaultctl, vaultctl_at};

fn collection(name: &str) -> Collection {
    Collection::new(name)
        .region("eu")
        .field(FieldSchema::new("email", FieldType::String, DataCategory::Contact).indexed())
        .field(FieldSchema::new(
            "note",
            FieldType::String,
            DataCategory::Other,
        ))
        .field(FieldSchema::new(
            "count",
            FieldType::Int64,
            DataCategory::Other,
        ))
        .field(FieldSchema::new(
            "blob",
            FieldType::Bytes,
            DataCategory::Other,
        ))
}

fn record(collection: &str, id: &str, subject: &str, note: &str) -> Record {
    Record::new(collection, id, subject)
        .with("email", format!("{subject}@example.eu"))
        .with("note", note)
        .with("count", 9_007_199_254_740_993_i64)
        .with("blob", vec![0_u8, 1, 2, 255])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_export_is_complete_signed_and_checked_offline() {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let client = vault.client().await;
    for name in ["accounts", "orders", "tickets"] {
        client.create_collection(&collection(name)).await.unwrap();
    }
    let mut expected = Vec::new();
    for (i, name) in ["accounts", "orders", "tickets"].iter().enumerate() {
        for j in 0..=i {
            let id = format!("{name}-alice-{j}");
            client
                .put(&record(name, &id, "alice", &format!("alice note {i}.{j}")))
                .await
                .unwrap();
            expected.push((name.to_string(), id));
            client
                .put(&record(
                    name,
                    &format!("{name}-bob-{j}"),
                    "bob",
                    "BOB-CANARY-not-alices",
                ))
                .await
                .unwrap();
        }
    }
    client.get("orders", "orders-alice-0").await.unwrap();

    // vaultctl: the bundle and its signature, then the offline check.
    let out = dir.path().join("alice.json");
    let out_arg = out.to_str().unwrap();
    let done = vaultctl(&vault, &["subject", "export", "alice", "--out", out_arg]).await;
    assert!(
        done.ok().starts_with("exported 6 records of alice"),
        "{done:?}"
    );
    let again = vaultctl(&vault, &["subject", "export", "alice", "--out", out_arg]).await;
    assert!(again.error(1).contains("exists"), "{again:?}");
    let key_file = dir.path().join("vault.pub");
    std::fs::write(
        &key_file,
        vaultctl(&vault, &["audit", "public-key"]).await.ok(),
    )
    .unwrap();
    let key_arg = key_file.to_str().unwrap();
    let verified = vaultctl(
        &vault,
        &[
            "--json",
            "subject",
            "verify-export",
            out_arg,
            "--public-key",
            key_arg,
        ],
    )
    .await
    .json();
    assert_eq!(verified["valid"], true, "{verified}");
    assert_eq!(verified["records"], 6);
    assert_eq!(verified["subject_id"], "alice");
    assert_eq!(
        verified["collections"],
        serde_json::json!(["accounts", "orders", "tickets"])
    );

    let bundle = std::fs::read(&out).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the bundle is its owner's only");
    }
    let text = String::from_utf8(bundle.clone()).unwrap();
    assert!(
        !text.contains("BOB-CANARY") && !text.contains("bob@"),
        "{text}"
    );
    let doc: Json = serde_json::from_slice(&bundle).unwrap();
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
    expected.sort();
    assert_eq!(ids, expected);
    let first = &doc["records"][0]["fields"];
    assert_eq!(
        first["count"],
        serde_json::json!({"int64": "9007199254740993"})
    );
    assert_eq!(first["blob"], serde_json::json!({"bytes": "AAEC/w=="}));
    // The ledger tells who touched alice's data, and why: the puts, the
    // read, and this export.
    let events: Vec<Json> = doc["access_ledger"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| serde_json::from_str(e["event"].as_str().unwrap()).unwrap())
        .collect();
    let ops: Vec<&str> = events
        .iter()
        .map(|e| e["operation"].as_str().unwrap())
        .collect();
    assert_eq!(
        ops,
        [
            "write",
            "write",
            "write",
            "write",
            "write",
            "write",
            "read",
            "export_subject"
        ]
    );
    assert!(events.iter().all(|e| e["purpose"] == vault_tests::PURPOSE));

    // A one-byte edit anywhere fails: in the bundle, in the signature.
    let sig_path = dir.path().join("alice.json.sig");
    let signature = std::fs::read(&sig_path).unwrap();
    let edited = dir.path().join("edited.json");
    let mut changed = bundle.clone();
    let at = text.find("alice note 1.1").unwrap();
    changed[at] = b'A';
    std::fs::write(&edited, &changed).unwrap();
    std::fs::write(dir.path().join("edited.json.sig"), &signature).unwrap();
    let refused = vaultctl(
        &vault,
        &[
            "subject",
            "verify-export",
            edited.to_str().unwrap(),
            "--public-key",
            key_arg,
        ],
    )
    .await;
    assert!(
        refused.error(1).contains("not the one signed"),
        "{refused:?}"
    );
    let mut bad_sig = signature.clone();
    let line = bad_sig.iter().rposition(|&b| b == b' ').unwrap() + 3;
    bad_sig[line] = if bad_sig[line] == b'A' { b'B' } else { b'A' };
    let bad_sig_path = dir.path().join("bad.sig");
    std::fs::write(&bad_sig_path, &bad_sig).unwrap();
    let refused = vaultctl(
        &vault,
        &[
            "subject",
            "verify-export",
            out_arg,
            "--public-key",
            key_arg,
            "--signature",
            bad_sig_path.to_str().unwrap(),
        ],
    )
    .await;
    assert!(refused.error(1).contains("signature"), "{refused:?}");

    // The client: the same bundle layout, checked in process; another
    // vault's key does not verify it.
    let (bundle, signature) = client
        .export_subject("alice")
        .await
        .unwrap()
        .read_all()
        .await
        .unwrap();
    let key: VerifierKey = std::fs::read_to_string(&key_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let verified = verify_export(&bundle, signature.as_bytes(), &key).unwrap();
    assert_eq!(verified.statement.records, 6);
    // Both exports are in the ledger now (and the first one's read too).
    assert_eq!(verified.statement.ledger_events, 9);
    let other_dir = tempfile::tempdir().unwrap();
    let other = TestVault::start(other_dir.path(), "eu").await.unwrap();
    let other_key: VerifierKey = vaultctl(&other, &["audit", "public-key"])
        .await
        .ok()
        .trim()
        .parse()
        .unwrap();
    assert!(matches!(
        verify_export(&bundle, signature.as_bytes(), &other_key),
        Err(ExportFault::Signature(_))
    ));
    other.stop().await;

    // An export needs the export operation: a key custodian has none.
    let denied = vaultctl_at(
        &vault.url(),
        Some(vault_tests::CUSTODIAN_TOKEN),
        &[
            "subject",
            "export",
            "alice",
            "--out",
            dir.path().join("denied.json").to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert!(denied.error(1).contains("permission denied"), "{denied:?}");
    assert!(
        !dir.path().join("denied.json").exists(),
        "a refused export leaves no file"
    );
    drop(client);
    vault.stop().await;
}
