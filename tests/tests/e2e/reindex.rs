//! Index-key rotation through real sockets and vaultctl: `operator rotate
//! index` makes a new blind-index key version current, searches find every
//! record while the background rebuild runs and after, a second rotation
//! is refused until it ends, `operator reindex-status --wait` follows it
//! to the end, the older index key is destroyed, no index row made under
//! it is left, and no indexed value is in the data folder in clear.

use std::collections::BTreeSet;

use serde_json::Value as Json;
use vault_client::Record;
use vault_server::engine::ReindexOptions;
use vault_server::keys::KeyState;
use vault_server::storage::Table;
use vault_server::vault::OpenOptions;
use vault_tests::TestVault;

use crate::search::people;
use crate::tamper::{assert_not_in_clear, walk};
use crate::vaultctl::{vaultctl, vaultctl_at, Run};

const CANARY: &str = "Canary-91c2-Reindex@Example.EU";
/// People written; every tenth has the canary's e-mail.
const PEOPLE: usize = 40;

fn person(i: usize) -> Record {
    let email = if i.is_multiple_of(10) {
        CANARY.to_owned()
    } else {
        format!("person{i}@example.eu")
    };
    Record::new("people", format!("p{i}"), format!("s{i}"))
        .with("email", email)
        .with("number", (i % 7) as i64)
        .with("name", "Ada Lovelace")
}

fn ids(found: &[Record]) -> Vec<String> {
    let mut ids: Vec<String> = found.iter().map(|r| r.id.clone()).collect();
    ids.sort();
    ids
}

/// `vaultctl` with the test vault's custodian token.
async fn custody(vault: &TestVault, args: &[&str]) -> Run {
    vaultctl_at(&vault.url(), Some(vault_tests::CUSTODIAN_TOKEN), args, None).await
}

/// The keys of the forward rows of the index, and the index-key version
/// of every reverse row, of a stopped vault's data folder.
pub(crate) async fn index_rows(dir: &std::path::Path) -> (BTreeSet<Vec<u8>>, Vec<u32>) {
    let store = vault_tests::raw_store(dir).await;
    tokio::task::spawn_blocking(move || {
        let mut forward = BTreeSet::new();
        let mut versions = Vec::new();
        store
            .visit(Table::Index, &mut |k, v| match k.first() {
                Some(b'f') => {
                    forward.insert(k.to_vec());
                }
                Some(b'r') => versions.push(u32::from_be_bytes(v.try_into().unwrap())),
                other => panic!("an index row of another kind: {other:?}"),
            })
            .unwrap();
        (forward, versions)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_index_key_rebuilds_the_index_and_every_record_is_still_found() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = OpenOptions::dev(dir.path(), "eu".parse().unwrap());
    // One record a batch, ten a second: the rebuild of forty records takes
    // about four seconds, long enough to search and rotate while it runs.
    opts.engine.reindex = ReindexOptions {
        batch_size: 1,
        rows_per_second: 10,
    };
    let vault = TestVault::start_dev_with(opts.clone()).await.unwrap();
    let client = vault.client().await;
    client.create_collection(&people()).await.unwrap();
    let all: Vec<Record> = (0..PEOPLE).map(person).collect();
    client.put_many(&all).await.unwrap();
    drop(client);
    vault.stop().await;
    // The rows made under index key version 1.
    let (before, versions) = index_rows(dir.path()).await;
    assert_eq!(before.len(), 2 * PEOPLE);
    assert!(versions.iter().all(|v| *v == 1), "{versions:?}");

    let vault = TestVault::start_dev_with(opts).await.unwrap();
    let client = vault.client().await;
    let status = custody(&vault, &["--json", "operator", "reindex-status"])
        .await
        .json();
    assert_eq!(
        (status["target_version"].clone(), status["finished"].clone()),
        (Json::from(1), Json::Bool(true))
    );
    // A data token may not rotate keys.
    let run = vaultctl(&vault, &["operator", "rotate", "index"]).await;
    assert!(
        run.error(1).contains("may not perform key custody"),
        "{run:?}"
    );
    let rotated = custody(&vault, &["--json", "operator", "rotate", "index"])
        .await
        .json();
    assert_eq!(rotated["version"], 2);

    // While the rebuild runs: a second rotation is refused, and searches
    // find every record, under whichever version its rows are.
    let run = custody(&vault, &["operator", "rotate", "index"]).await;
    let refusal = run.error(1);
    assert!(
        refusal.contains("still being rebuilt") && refusal.contains("reindex-status --wait"),
        "{refusal}"
    );
    let canaries = vec!["p0", "p10", "p20", "p30"];
    let found = client
        .find("people", "email", CANARY.to_uppercase(), &[], 50)
        .await
        .unwrap();
    assert_eq!(ids(&found), canaries);
    let text = vaultctl(&vault, &["find", "people", "number", "3"]).await;
    assert!(text.ok().ends_with("6 records found\n"), "{}", text.stdout);
    let mid = custody(&vault, &["--json", "operator", "reindex-status"])
        .await
        .json();
    assert_eq!(mid["target_version"], 2);
    assert_eq!(mid["finished"], false, "the rebuild ended too soon: {mid}");

    // `--wait` follows it to the end.
    let end = custody(&vault, &["--json", "operator", "reindex-status", "--wait"])
        .await
        .json();
    assert_eq!(
        end,
        serde_json::json!({
            "target_version": 2,
            "finished": true,
            "examined": PEOPLE,
            "reindexed": PEOPLE,
            "skipped": 0,
            "unreadable": 0,
            "total_at_start": PEOPLE,
        })
    );
    let text = custody(&vault, &["operator", "reindex-status"]).await;
    assert!(
        text.ok()
            .starts_with("target index key version: 2\nfinished: yes\n"),
        "{}",
        text.stdout
    );
    // Every record is found by each indexed field; writes go on.
    let found = client
        .find("people", "email", CANARY.to_lowercase(), &[], 50)
        .await
        .unwrap();
    assert_eq!(ids(&found), canaries);
    for i in [1, 17, 39] {
        let found = client
            .find("people", "email", format!("PERSON{i}@example.eu"), &[], 50)
            .await
            .unwrap();
        assert_eq!(ids(&found), vec![format!("p{i}")]);
    }
    let threes = client
        .find("people", "number", 3_i64, &[], 50)
        .await
        .unwrap();
    assert_eq!(ids(&threes), vec!["p10", "p17", "p24", "p3", "p31", "p38"]);
    client.put(&person(PEOPLE)).await.unwrap();
    let found = client
        .find("people", "email", CANARY, &[], 50)
        .await
        .unwrap();
    assert_eq!(found.len(), 5);
    // The older index key is destroyed; the vault's own event says so,
    // with counts and no id or value.
    let engine = vault.engine();
    assert_eq!(
        engine.keyring().index_versions().collect::<Vec<_>>(),
        vec![(1, KeyState::Destroyed), (2, KeyState::Active)]
    );
    let events = engine.audit().events(0, 100_000).unwrap();
    let finished: Vec<Json> = events
        .iter()
        .map(|raw| serde_json::from_slice::<Json>(raw).unwrap())
        .filter(|ev| ev["operation"] == "reindex_finished")
        .collect();
    assert_eq!(finished.len(), 1);
    let detail = finished[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("40 re-indexed") && detail.contains("destroyed: 1;"),
        "{detail}"
    );
    assert!(!finished[0].to_string().to_lowercase().contains("canary"));
    drop(engine);
    drop(client);
    vault.stop().await;

    // No row made under version 1 is left: its tokens match nothing.
    let (after, versions) = index_rows(dir.path()).await;
    assert_eq!(after.len(), 2 * (PEOPLE + 1));
    assert_eq!(versions.len(), 2 * (PEOPLE + 1));
    assert!(versions.iter().all(|v| *v == 2), "{versions:?}");
    assert!(after.is_disjoint(&before));
    // Nor are their tokens in any table file: the rebuild compacted the
    // index when it ended.
    if vault_tests::skip_on_postgres("the rest reads RocksDB's table files") {
        return;
    }
    let old_tokens: BTreeSet<&[u8]> = before.iter().map(|k| &k[1..33]).collect();
    let tables: Vec<_> = walk(dir.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "sst"))
        .collect();
    assert!(!tables.is_empty());
    for path in &tables {
        let data = std::fs::read(path).unwrap();
        assert!(
            !data.windows(32).any(|w| old_tokens.contains(w)),
            "a token of index key version 1 in {}",
            path.display()
        );
    }

    // No indexed value in clear anywhere in the data folder, in the WAL or
    // (after a flush) in the tables.
    assert_not_in_clear(dir.path(), CANARY);
}
