//! Retention through real sockets, with a clock the test moves: a record
//! past its collection's time to live is unreadable at once (get, find),
//! and once past the grace period the vault's sweeper purges it, also after
//! a restart; the purge is in the audit log with a count and no ids.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use vault_client::{Collection, DataCategory, FieldSchema, FieldType, Record};
use vault_server::monitor::{Clock, ManualClock, Monitor, MonitorOptions};
use vault_server::storage::Table;
use vault_server::vault::OpenOptions;
use vault_tests::TestVault;

use crate::tamper::open_raw;
use crate::vaultctl::vaultctl;

const START_MS: u64 = 1_800_000_000_000;

fn options(dir: &std::path::Path, clock: &Arc<ManualClock>) -> OpenOptions {
    let mut opts = OpenOptions::dev(dir, "eu".parse().unwrap());
    opts.engine.monitor = Arc::new(Monitor::new(
        MonitorOptions::default(),
        Arc::clone(clock) as Arc<dyn Clock>,
    ));
    opts.engine.retention_sweep_interval = Duration::from_millis(20);
    opts
}

fn session(id: &str, subject: &str, email: &str) -> Record {
    Record::new("sessions", id, subject)
        .with("email", email)
        .with("token", "RETENTION-CANARY-token")
}

/// Polls the audit log until a `retention_purge` event appears after
/// `from` (the sweeper runs every 20 ms), for at most 20 s.
async fn purge_event(vault: &TestVault, from: u64) -> Json {
    let started = Instant::now();
    loop {
        let out = vaultctl(vault, &["audit", "tail", "--from", &from.to_string()]).await;
        if let Some(event) = out
            .ok()
            .lines()
            .map(|l| serde_json::from_str::<Json>(l).unwrap())
            .find(|e| e["operation"] == "retention_purge")
        {
            return event;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no purge within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_records_are_unreadable_then_purged_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START_MS));
    let vault = TestVault::start_dev_with(options(dir.path(), &clock))
        .await
        .unwrap();
    let client = vault.client().await;
    let sessions = Collection::new("sessions")
        .region("eu")
        .field(FieldSchema::new("email", FieldType::String, DataCategory::Contact).indexed())
        .field(FieldSchema::new(
            "token",
            FieldType::String,
            DataCategory::Other,
        ))
        .retention(Duration::from_secs(3600), Duration::from_secs(600));
    let created = client.create_collection(&sessions).await.unwrap();
    assert_eq!(created.retention, sessions.retention);
    // vaultctl shows it, and refuses a time to live of zero.
    let shown = vaultctl(&vault, &["collection", "show", "sessions"]).await;
    assert!(
        shown
            .ok()
            .contains("retention: records expire 3600 s after"),
        "{shown:?}"
    );
    let zero = vaultctl(
        &vault,
        &[
            "collection",
            "create",
            "z",
            "--field",
            "a:string:other",
            "--ttl",
            "0",
        ],
    )
    .await;
    assert!(zero.error(1).contains("time to live"), "{zero:?}");

    client
        .put(&session("s1", "alice", "alice@example.eu"))
        .await
        .unwrap();
    client
        .put(&session("s2", "bob", "bob@example.eu"))
        .await
        .unwrap();
    assert!(client.get("sessions", "s1").await.is_ok());

    // At expiry: unreadable at once, to get and to find.
    clock.advance(Duration::from_secs(3600));
    assert!(matches!(
        client.get("sessions", "s1").await,
        Err(vault_client::Error::NotFound(_))
    ));
    assert!(client
        .find("sessions", "email", "alice@example.eu", &[], 10)
        .await
        .unwrap()
        .is_empty());
    // Rewritten: readable again, for another hour.
    client
        .put(&session("s2", "bob", "bob@example.eu"))
        .await
        .unwrap();
    assert!(client.get("sessions", "s2").await.is_ok());
    drop(client);
    vault.stop().await;

    // Past the grace period while the vault is down: the sweeper of the
    // next start purges s1 (and only s1).
    clock.advance(Duration::from_secs(601));
    let vault = TestVault::start_dev_with(options(dir.path(), &clock))
        .await
        .unwrap();
    let event = purge_event(&vault, 0).await;
    assert_eq!(event["principal"], "vault");
    assert_eq!(event["collection"], "sessions");
    assert_eq!(event["records"], serde_json::json!([]));
    assert_eq!(event["subjects"], serde_json::json!([]));
    assert!(
        event["detail"]
            .as_str()
            .unwrap()
            .starts_with("1 records purged"),
        "{event}"
    );
    let client = vault.client().await;
    assert!(client.get("sessions", "s2").await.is_ok());
    drop(client);
    vault.stop().await;

    if vault_tests::skip_on_postgres("the rest reads RocksDB directly") {
        return;
    }
    // On disk: one record left in the collection, and no index row of s1.
    let db = open_raw(dir.path());
    let records = db
        .prefix_iterator_cf(db.cf_handle(Table::Records.name()).unwrap(), b"sessions\0")
        .filter_map(Result::ok)
        .take_while(|(k, _)| k.starts_with(b"sessions\0"))
        .count();
    assert_eq!(records, 1);
}
