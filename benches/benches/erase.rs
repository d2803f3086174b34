//! Erasure with crypto-shredding at scale: what `erase_subject` costs with a
//! million subjects, split into its two phases.
//!
//! An erasure moves the subject's shred bucket to a new epoch: it saves the
//! keyring twice (fsync and rename each), re-wraps every other subject key
//! of the bucket (about subjects / 1024 of them) and deletes the subject's
//! rows in one synced batch: the **shred** phase, up to the commit point.
//! Then it compacts the deleted key ranges, so that the tombstoned bytes
//! leave the SST files: the **compaction** phase. The engine counts the
//! time of each (`Stats::erasure_shred_micros`, `erasure_compaction_micros`).
//!
//! Setup: `ERASE_SUBJECTS` subject keys (default 1 000 000) imported
//! straight into the store, `ERASE_RECORDS` of those subjects (default
//! 200 000) given a record each through `put_records`, and the subjects to
//! erase three records each; then every table is compacted whole, so the
//! data sits in bottom-level files as in a vault that has run a while.
//! `ERASURES` erasures (default 30) of random such subjects follow, one at
//! a time. The result is checked: each erased subject's records are gone,
//! a bucket-mate's record still reads, and the receipt names the re-wrap.
//! Target: an erasure well under a second with a million subjects.
//!
//! Run: `cargo bench --locked --bench erase` (`ERASE_SUBJECTS=20000` for a
//! quick run).

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use vault_server::crypto::Key256;
use vault_server::engine::{EngineOptions, KeyringFile, Record, Value};
use vault_server::keys::{wrap_subject_key, Custody, Keyring, StorageNames};
use vault_server::policy::Caller;
use vault_server::storage::{subject_key_id, RocksStore, Store, StoreOptions, Table, WriteSet};
use vault_server::{Engine, Error};

const IMPORT_BATCH: usize = 10_000;
const RECORD_BATCH: usize = 500;
const ERASED_RECORDS: usize = 3;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|s| {
            s.replace('_', "")
                .parse()
                .unwrap_or_else(|_| panic!("{name}: a number"))
        })
        .unwrap_or(default)
}

fn subject(i: usize) -> String {
    format!("subject-{i:08}")
}

fn record(id: String, subject: String) -> Record {
    let fields: BTreeMap<String, Value> = [
        ("email", format!("{id}@example.org")),
        ("name", "Ada Lovelace".to_owned()),
        ("phone", "+33612345678".to_owned()),
        ("country", "FR".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), Value::String(v)))
    .collect();
    Record::new("users", id, subject, fields)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// (median, 90th percentile, max) of `v`, sorted in place.
fn spread(v: &mut [Duration]) -> (Duration, Duration, Duration) {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.9), v[v.len() - 1])
}

fn main() {
    let subjects = env_number("ERASE_SUBJECTS", 1_000_000);
    let with_records = env_number("ERASE_RECORDS", 200_000).min(subjects);
    let erasures = env_number("ERASURES", 30).min(with_records);
    assert!(erasures > 0, "nothing to erase");
    let dir = tempfile::tempdir().unwrap();
    println!(
        "erase bench: {subjects} subjects, {with_records} with records, {erasures} erasures, \
         synced writes, data in {}",
        dir.path().display()
    );
    let store: Arc<dyn Store> =
        Arc::new(RocksStore::open(&dir.path().join("db"), &StoreOptions::default()).unwrap());
    let unseal_key = Key256::random();
    let keyring = Keyring::generate(
        "eu".parse().unwrap(),
        Custody {
            set_id: [7; 16],
            threshold: 1,
            shares: 1,
        },
    );
    std::fs::write(dir.path().join("keyring"), keyring.seal(&unseal_key)).unwrap();
    let engine = Engine::new(
        Arc::clone(&store),
        keyring,
        KeyringFile::at(dir.path().join("keyring"), unseal_key),
        EngineOptions::default(),
    )
    .unwrap();
    vault_server::dev::seed(&engine).unwrap();
    let caller = Caller::internal("bench");
    let names = StorageNames::of(&engine.keyring());

    // ---- setup ----
    let t = Instant::now();
    let keyring = engine.keyring();
    let mut ws = WriteSet::new();
    for i in 0..subjects {
        let s = names.subject(&subject(i));
        ws.put(
            Table::SubjectKeys,
            subject_key_id(names.bucket(&s), &s, 1),
            wrap_subject_key(&keyring, &s, 1, &Key256::random()).unwrap(),
        );
        if (i + 1) % IMPORT_BATCH == 0 {
            store.write(std::mem::take(&mut ws)).unwrap();
        }
    }
    if !ws.is_empty() {
        store.write(ws).unwrap();
    }
    drop(keyring);
    println!(
        "setup: {subjects} subject keys imported in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let mut rng = rand::thread_rng();
    let mut chosen: Vec<usize> = (0..with_records).collect();
    chosen.shuffle(&mut rng);
    chosen.truncate(erasures);
    let t = Instant::now();
    let mut batch = Vec::with_capacity(RECORD_BATCH);
    for i in 0..with_records {
        batch.push(record(format!("r{i:08}"), subject(i)));
        if batch.len() == RECORD_BATCH {
            engine
                .put_records(&caller, std::mem::take(&mut batch))
                .unwrap();
        }
    }
    for &i in &chosen {
        for k in 1..ERASED_RECORDS {
            batch.push(record(format!("r{i:08}-{k}"), subject(i)));
        }
    }
    engine.put_records(&caller, batch).unwrap();
    println!(
        "setup: {} records written in {:.1} s",
        with_records + chosen.len() * (ERASED_RECORDS - 1),
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    for table in Table::ALL {
        store.compact_range(table, b"", &[0xFF; 64]).unwrap();
    }
    println!(
        "setup: every table compacted in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // ---- erasures ----
    let mut total = Vec::new();
    let mut shred = Vec::new();
    let mut compaction = Vec::new();
    let mut rewrapped = Vec::new();
    for &i in &chosen {
        let before = engine.stats();
        let t = Instant::now();
        let receipt = engine.erase_subject(&caller, &subject(i)).unwrap();
        total.push(t.elapsed());
        let after = engine.stats();
        shred.push(Duration::from_micros(
            after.erasure_shred_micros - before.erasure_shred_micros,
        ));
        compaction.push(Duration::from_micros(
            after.erasure_compaction_micros - before.erasure_compaction_micros,
        ));
        rewrapped.push(receipt.shredded.keys_rewrapped);
        // Checked: the subject's records are gone, its bucket moved, and a
        // bucket-mate with a record still reads.
        assert_eq!(receipt.records_deleted, ERASED_RECORDS as u64);
        let bucket = names.bucket(&names.subject(&subject(i)));
        assert_eq!(receipt.shredded.bucket, bucket);
        assert!(matches!(
            engine.get_record(&caller, "users", &format!("r{i:08}"), &[]),
            Err(Error::NotFound(_))
        ));
        let mate = (0..with_records)
            .find(|&j| {
                j != i
                    && !chosen.contains(&j)
                    && names.bucket(&names.subject(&subject(j))) == bucket
            })
            .expect("a bucket-mate with a record");
        engine
            .get_record(&caller, "users", &format!("r{mate:08}"), &[])
            .unwrap();
    }
    let expected = (subjects / usize::from(engine.keyring().shred_buckets())) as u64;
    rewrapped.sort_unstable();
    let median_rewrapped = rewrapped[rewrapped.len() / 2];
    assert!(
        median_rewrapped + 1 >= expected / 2,
        "re-wrapped {median_rewrapped} keys per erasure, expected about {expected}"
    );
    println!(
        "erasures: {erasures}, keys re-wrapped per erasure: median {median_rewrapped} \
         (subjects / buckets = {expected})"
    );
    for (what, v) in [
        ("erase_subject, whole", &mut total),
        ("  shred (to the commit point)", &mut shred),
        ("  compaction afterwards", &mut compaction),
    ] {
        let (p50, p90, max) = spread(v);
        println!(
            "{what:<32} median {:>8.1} ms   p90 {:>8.1} ms   max {:>8.1} ms",
            ms(p50),
            ms(p90),
            ms(max)
        );
    }
}
