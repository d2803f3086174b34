//! No clear identifiers at rest: record ids and subject ids are personal
//! data, so the vault keeps them only inside encrypted records. Distinctive
//! ids go through every path that touches them (write, update, read, batch
//! read, a miss, a refused write, an access ledger, a key rotation, a
//! delete, an erasure) on the `vault-server` binary logging at debug level;
//! then no file of the data folder, WAL included, holds any of them, before
//! and after a flush and a full compaction, and neither does the log.

use std::path::{Path, PathBuf};

use vault_client::{Error, Record, VaultClient};
use vault_tests::{ChildVault, CUSTODIAN_TOKEN, PURPOSE, TOKEN};

use vault_server::storage::{RocksStore, Store, StoreOptions, Table};

const SUBJECTS: [&str; 2] = ["CANARYSUBJ-q7x2-ada@example.eu", "CANARYSUBJ-k9v4-00417733"];
const RECORDS: [&str; 3] = [
    "CANARYREC-m3p8-invoice-2026",
    "CANARYREC-w5z1-contract",
    "CANARYREC-h6j0-ticket",
];
/// An id only ever asked for, never written.
const MISSING: &str = "CANARYREC-absent-r2d2";

fn record(id: &str, subject: &str, name: &str) -> Record {
    Record::new("users", id, subject)
        .with("email", "someone@example.eu")
        .with("name", name)
        .with("country", "FR")
}

/// Every file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Panics if any canary id is in `data`.
fn assert_no_id(data: &[u8], what: &str) {
    for id in SUBJECTS.iter().chain(&RECORDS).chain([&MISSING]) {
        assert!(
            !data.windows(id.len()).any(|w| w == id.as_bytes()),
            "{id} found in {what}"
        );
    }
    // Nor a distinctive piece of one (a prefix cut at a length field).
    for piece in [b"CANARYSUBJ".as_slice(), b"CANARYREC"] {
        assert!(
            !data.windows(piece.len()).any(|w| w == piece),
            "{} found in {what}",
            String::from_utf8_lossy(piece)
        );
    }
}

/// Scans every file of the data folder; returns how many, and whether a
/// WAL was among them. As a control that the files are read as stored (no
/// compression hides a string), the scan must find a string the folder
/// does keep in clear: the purpose stated in the audit events.
fn scan_folder(dir: &Path, stage: &str) -> (usize, bool) {
    let mut wal = false;
    let mut control = false;
    let all = files(dir);
    for path in &all {
        wal |= path.extension().is_some_and(|e| e == "log");
        let data = std::fs::read(path).unwrap();
        assert_no_id(&data, &format!("{stage}: {}", path.display()));
        control |= data.windows(PURPOSE.len()).any(|w| w == PURPOSE.as_bytes());
    }
    assert!(control, "{stage}: the purpose is in no file");
    (all.len(), wal)
}

async fn exercise(client: &VaultClient, custodian: &VaultClient) {
    for (i, id) in RECORDS.iter().enumerate() {
        client
            .put(&record(id, SUBJECTS[i % 2], "first"))
            .await
            .unwrap();
    }
    // An update, a read, a projection, a batch read with a miss, a miss.
    client
        .put(&record(RECORDS[0], SUBJECTS[0], "second"))
        .await
        .unwrap();
    let got = client.get("users", RECORDS[0]).await.unwrap();
    assert_eq!(got.id, RECORDS[0]);
    assert_eq!(got.subject_id, SUBJECTS[0]);
    client
        .get_fields("users", RECORDS[1], &["country"])
        .await
        .unwrap();
    let batch = client
        .get_many("users", &[RECORDS[0], RECORDS[2], MISSING], &[])
        .await
        .unwrap();
    assert_eq!(batch.records.len(), 2);
    assert!(matches!(
        client.get("users", MISSING).await,
        Err(Error::NotFound(_))
    ));
    // A write the schema refuses: its audit event says why, without ids.
    let bad = Record::new("users", MISSING, SUBJECTS[1]).with("no_such_field", "x");
    assert!(matches!(
        client.put(&bad).await,
        Err(Error::InvalidInput(_))
    ));
    // The access ledger looks a subject up by its id.
    client.access_ledger(SUBJECTS[0], 0, 100, 0).await.unwrap();
    custodian.rotate_subject_key(SUBJECTS[1]).await.unwrap();
    assert_eq!(
        client.get("users", RECORDS[1]).await.unwrap().subject_id,
        SUBJECTS[1]
    );
    assert!(client.delete("users", RECORDS[2]).await.unwrap());
    let receipt = client.erase_subject(SUBJECTS[0]).await.unwrap();
    assert_eq!(receipt.records_deleted, 1);
    assert!(matches!(
        client.get("users", RECORDS[0]).await,
        Err(Error::NotFound(_))
    ));
}

#[tokio::test]
async fn no_clear_id_in_any_file_of_the_data_folder_or_in_the_log() {
    if vault_tests::skip_on_postgres("scans RocksDB's files") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let vault = ChildVault::start_with_env(dir.path(), TOKEN, &[("RUST_LOG", "debug")]).await;
    let connect = |token| {
        VaultClient::builder(vault.url())
            .token(token)
            .purpose(PURPOSE)
            .connect()
    };
    let client = connect(TOKEN).await.unwrap();
    let custodian = connect(CUSTODIAN_TOKEN).await.unwrap();
    exercise(&client, &custodian).await;
    drop((client, custodian));
    // Killed: whatever was written is in the WAL, not yet in SST files.
    let log = vault.kill().await;
    assert!(log.contains("DEBUG"), "the log is at debug level:\n{log}");
    assert_no_id(log.as_bytes(), "the server's log");
    let (before, wal) = scan_folder(dir.path(), "before compaction");
    assert!(wal && before >= 5, "{before} files, WAL: {wal}");

    // Flush every table and compact it whole, with the vault's own store
    // options (no compression, as the vault runs): SST files, rewritten.
    {
        let store = RocksStore::open(&dir.path().join("db"), &StoreOptions::default()).unwrap();
        for t in Table::ALL {
            store.compact_range(t, b"", &[0xff; 64]).unwrap();
        }
    }
    let (after, _) = scan_folder(dir.path(), "after compaction");
    let ssts = files(dir.path())
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "sst"))
        .count();
    assert!(after >= 5 && ssts >= 3, "{after} files, {ssts} SST files");
}
