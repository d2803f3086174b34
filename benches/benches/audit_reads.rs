//! What the audit log costs reads and writes: `get_record` and
//! `put_record` throughput and latency on one engine (synced writes, as in
//! production), and the audit log's own append rate.
//!
//! Every read now syncs its audit event before returning plaintext (fail
//! closed), so a read pays one synced RocksDB write. To compare with the
//! form before the audit log, run this same file on the commit before it
//! (`git worktree add /tmp/before f75625a~1`, copy this file there, and
//! `cargo bench --locked --workspace --bench audit_reads` in both trees).
//! The audit-append part runs only where `vault_server::audit` exists.
//!
//! Run: `cargo bench --locked --workspace --bench audit_reads`
//!
//! Measured 2026-11-29 on the 2-core CI-class machine, the two builds run
//! alternately twice (before, after, before, after), ops/s, run 1 / run 2:
//!
//! | | before the audit log (06f5b98) | with durable read events |
//! |---|---|---|
//! | get, 1 thread | 160 662 / 166 926 | 3 197 / 3 787 |
//! | get, 4 threads | 308 032 / 358 234 | 6 349 / 7 736 |
//! | get, 16 threads | 314 718 / 366 212 | 16 439 / 19 356 |
//! | get, 64 threads | 290 416 / 358 210 | 29 964 / 33 527 |
//! | put, 4 threads | 5 433 / 6 802 | 5 988 / 6 310 |
//! | audit append alone, 1 / 4 / 64 threads | — | 3 652 / 8 792 / 50 967 (run 1), 4 119 / 9 353 / 57 356 (run 2) |
//!
//! Durable puts beside raw RocksDB synced writes of the same plaintext
//! (same `RocksStore` options), one later run, ops/s: 1 thread 2 548 vs
//! 3 602; 4 threads 5 250 vs 6 030; 16 threads 12 553 vs 15 145 (0.83).
//!
//! A read now waits for one fsync (p50 ≈ 250 µs alone); group commit lets
//! concurrent reads share it, so throughput grows with concurrency (about
//! 9× from 1 to 64 threads). Writes already paid a synced write and are
//! unchanged within noise.

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vault_server::engine::{Record, Value};
use vault_server::policy::Caller;
use vault_server::storage::{RocksStore, Store, StoreOptions, Table, WriteSet};
use vault_server::vault::{OpenOptions, Vault};

const RECORDS: usize = 2_000;
const RUN: Duration = Duration::from_secs(3);

fn record(i: usize) -> Record {
    Record::new(
        "users",
        format!("user-{i:05}"),
        format!("subject-{i:05}"),
        BTreeMap::from([
            (
                "email".to_owned(),
                Value::String(format!("user{i}@example.org")),
            ),
            ("name".to_owned(), Value::String(format!("User Number {i}"))),
        ]),
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p) as usize]
}

fn run(name: &str, threads: usize, op: impl Fn(usize) + Sync) {
    let start = Instant::now();
    let mut all: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let op = &op;
                s.spawn(move || {
                    let mut lat = Vec::new();
                    let mut i = t * 7919;
                    while start.elapsed() < RUN {
                        let t0 = Instant::now();
                        op(i % RECORDS);
                        lat.push(t0.elapsed());
                        i += 13;
                    }
                    lat
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let secs = start.elapsed().as_secs_f64();
    all.sort();
    println!(
        "{name:<28} {threads} threads: {:>8.0} ops/s  p50 {:>7.1} µs  p99 {:>7.1} µs",
        all.len() as f64 / secs,
        percentile(&all, 0.5).as_secs_f64() * 1e6,
        percentile(&all, 0.99).as_secs_f64() * 1e6,
    );
}

fn main() {
    let dir = std::env::temp_dir().join(format!("vault-audit-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let vault = Vault::open_dev(OpenOptions::dev(&dir, "eu".parse().unwrap())).unwrap();
    let engine = vault.engine().unwrap();
    vault_server::dev::seed(&engine).unwrap();
    let c = Caller::internal("bench");
    for chunk in (0..RECORDS).collect::<Vec<_>>().chunks(500) {
        engine
            .put_records(&c, chunk.iter().map(|&i| record(i)).collect())
            .unwrap();
    }
    println!("audit_reads bench: {RECORDS} records, synced writes, {RUN:?} per measurement");
    // Concurrent reads share synced audit writes (group commit): more
    // threads, more reads per fsync.
    for threads in [1, 4, 16, 64] {
        run("get_record", threads, |i| {
            engine
                .get_record(&c, "users", &format!("user-{i:05}"), &[])
                .unwrap();
        });
    }
    // Durable puts beside raw RocksDB durable writes of the same plaintext
    // (the vault's own `RocksStore` and options, sync on) at the same
    // thread counts: the storage path in process, without gRPC.
    let raw_dir = dir.with_extension("raw");
    let raw = RocksStore::open(&raw_dir, &StoreOptions::default()).unwrap();
    for threads in [1, 4, 16] {
        run("put_record (replace)", threads, |i| {
            engine.put_record(&c, record(i)).unwrap();
        });
        run("raw RocksDB synced put", threads, |i| {
            let mut ws = WriteSet::new();
            ws.put(
                Table::Records,
                format!("user-{i:05}").into_bytes(),
                format!("subject-{i:05}user{i}@example.orgUser Number {i}").into_bytes(),
            );
            raw.write(ws).unwrap();
        });
    }
    drop(raw);
    let _ = std::fs::remove_dir_all(&raw_dir);
    audit_append(&engine);
    drop(engine);
    drop(vault);
    let _ = std::fs::remove_dir_all(&dir);
    println!("command: cargo bench --locked --workspace --bench audit_reads");
}

/// The audit log's own append rate: events committed alone (one synced
/// write each, grouped when concurrent), from 1, 4 and 64 threads.
fn audit_append(engine: &Arc<vault_server::Engine>) {
    use vault_server::audit::Event;
    for threads in [1, 4, 64] {
        run("audit append (alone)", threads, |_| {
            engine
                .audit()
                .commit(WriteSet::new(), Event::new("bench", None, "read", None))
                .unwrap();
        });
    }
}
