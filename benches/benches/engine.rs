//! The engine in process, with criterion: the stored-record codec, put and
//! get through the engine (synced, as in production, and unsynced, to see
//! the CPU cost apart from the disk), and the audit log's append alone.
//! Field crypto and key derivation with and without the cache are in
//! `field_crypto`; the gRPC path is measured by `vault-bench`.
//!
//! Run: `cargo bench --locked --workspace --bench engine`

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use vault_server::audit::Event;
use vault_server::engine::{Record, Value};
use vault_server::policy::Caller;
use vault_server::storage::{StoredField, StoredRecord, WriteSet};
use vault_server::vault::{OpenOptions, Vault};

const RECORDS: usize = 1000;

fn record(i: usize) -> Record {
    let fields: BTreeMap<String, Value> = [
        ("email", format!("user{i}@example.org")),
        ("name", format!("User Number {i}")),
        ("phone", "+33612345678".to_owned()),
        ("country", "FR".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), Value::String(v)))
    .collect();
    Record::new("users", format!("u{i:05}"), format!("s{i:05}"), fields)
}

/// A dev vault over a temporary folder, seeded with `RECORDS` users.
fn vault(synced: bool) -> (tempfile::TempDir, Vault) {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = OpenOptions::dev(dir.path(), "eu".parse().unwrap());
    opts.store.sync_writes = synced;
    let vault = Vault::open_dev(opts).unwrap();
    let engine = vault.engine().unwrap();
    vault_server::dev::seed(&engine).unwrap();
    let c = Caller::internal("bench");
    for chunk in (0..RECORDS).collect::<Vec<_>>().chunks(250) {
        engine
            .put_records(&c, chunk.iter().map(|&i| record(i)).collect())
            .unwrap();
    }
    (dir, vault)
}

fn codec(c: &mut Criterion) {
    // Four fields of about 20 bytes and the ids sealed in their envelopes
    // (version, nonce, ciphertext, GCM tag): the codec does not look inside
    // them.
    let stored = StoredRecord {
        subject: [0x33; 32],
        key_version: 1,
        written_ms: Some(1_800_000_000_000),
        // The ids envelope: "s00001" and "u0000001" with their lengths.
        ids: vec![0x5a; 1 + 12 + 18 + 16],
        fields: ["country", "email", "name", "phone"]
            .iter()
            .map(|n| StoredField {
                name: (*n).to_owned(),
                envelope: vec![0x5a; 1 + 12 + 20 + 16],
            })
            .collect(),
        tag: [7; 32],
    }
    .encode();
    let mut g = c.benchmark_group("record_codec");
    g.bench_function("decode (4 fields)", |b| {
        b.iter(|| black_box(StoredRecord::decode(black_box(&stored)).unwrap()))
    });
    let (decoded, _) = StoredRecord::decode(&stored).unwrap();
    g.bench_function("encode (4 fields)", |b| {
        b.iter(|| black_box(black_box(&decoded).encode()))
    });
    g.finish();
}

fn engine_ops(c: &mut Criterion) {
    for synced in [false, true] {
        let (_dir, vault) = vault(synced);
        let engine = vault.engine().unwrap();
        let caller = Caller::internal("bench");
        let label = if synced { "synced" } else { "unsynced" };
        let mut g = c.benchmark_group(format!("engine_{label}"));
        if synced {
            g.measurement_time(Duration::from_secs(5)).sample_size(30);
        }
        let mut i = 0usize;
        g.bench_function("get (4 fields, audited)", |b| {
            b.iter(|| {
                i = (i + 7) % RECORDS;
                black_box(
                    engine
                        .get_record(&caller, "users", &format!("u{i:05}"), &[])
                        .unwrap(),
                )
            })
        });
        g.bench_function("put (4 fields, audited)", |b| {
            b.iter(|| {
                i = (i + 7) % RECORDS;
                engine.put_record(&caller, record(i)).unwrap();
            })
        });
        g.bench_function("audit append alone", |b| {
            b.iter(|| {
                engine
                    .audit()
                    .commit(WriteSet::new(), Event::new("bench", None, "read", None))
                    .unwrap()
            })
        });
        g.finish();
    }
}

criterion_group!(benches, codec, engine_ops);
criterion_main!(benches);
