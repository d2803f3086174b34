//! The audit log as it grows: resident memory and proof latency at 10^6
//! and 10^7 events (issue 15's target: memory flat within 10% between the
//! two).
//!
//! The log keeps its Merkle tree in stored tiles and only the tree's right
//! edge in memory, so memory should not follow the number of events. Each
//! size is measured in a fresh process (this binary, run again with
//! `AUDIT_GROWTH_MEASURE=<folder>`): the time to open the log (which
//! re-hashes every stored event and checks every checkpoint), resident
//! memory after the open and its peak, the latency of inclusion proofs at
//! random indices (as an access ledger asks) and of consistency proofs
//! from random signed sizes to the whole log, a page of 1 000 consecutive inclusion proofs (as
//! an export asks), and resident memory after all of that.
//!
//! The log is built without the gRPC path: 32 threads append realistic read
//! events (a record and a subject pseudonym, two field names) through
//! `AuditLog::commit` into a store with unsynced writes (the rows and the
//! tree are those of a synced store; only the wait for the disk differs),
//! with a signed checkpoint every 100 000 events.
//!
//! Run: `cargo bench --locked -p vault-benches --bench audit_growth`
//! (`AUDIT_GROWTH_SIZES=100000,1000000` for a quicker run,
//! `AUDIT_GROWTH_FOLDER=DIR` to keep the log, `AUDIT_GROWTH_CACHE_MIB=N`
//! for another block cache than the default 256 MiB; the default
//! `1000000,10000000` writes about 6 GB and takes some minutes).

#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use rand::{Rng, RngCore};
use vault_client::audit::{leaf_hash, verify_consistency, verify_inclusion};
use vault_server::audit::checkpoint::parse;
use vault_server::audit::{AuditLog, Event};
use vault_server::storage::{RocksStore, Store, StoreOptions, WriteSet};

/// The allocator of `vault-server` (jemalloc): resident memory as the
/// server would hold it.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const THREADS: usize = 32;
const CHECKPOINT_EVERY: u64 = 100_000;
const INCLUSION_PROOFS: usize = 2_000;
const CONSISTENCY_PROOFS: usize = 200;
const PAGE: u64 = 1_000;

/// (resident, peak resident) memory of this process, in bytes.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn open(folder: &str) -> Arc<RocksStore> {
    // AUDIT_GROWTH_CACHE_MIB: another block cache than the default, e.g.
    // one small enough to be full at every size.
    let block_cache_bytes = std::env::var("AUDIT_GROWTH_CACHE_MIB")
        .map_or(vault_server::storage::DEFAULT_BLOCK_CACHE_BYTES, |mib| {
            mib.parse::<usize>().expect("AUDIT_GROWTH_CACHE_MIB: MiB") << 20
        });
    let options = StoreOptions {
        sync_writes: false,
        block_cache_bytes,
    };
    Arc::new(RocksStore::open(std::path::Path::new(folder), &options).unwrap())
}

/// Appends events until the log holds `target`.
fn grow(log: &Arc<AuditLog>, target: u64) {
    let key = SigningKey::from_bytes(&[7; 32]);
    let left = Arc::new(AtomicU64::new(target.saturating_sub(log.size())));
    let started = Instant::now();
    let from = log.size();
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            let (log, left, key) = (Arc::clone(log), Arc::clone(&left), key.clone());
            scope.spawn(move || {
                let mut rng = rand::thread_rng();
                while left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
                {
                    let mut ev = Event::new(
                        "svc-billing",
                        Some("benchmark"),
                        "read",
                        Some(&format!("{:016x}", rng.next_u64())),
                    );
                    ev.collection = Some("users".into());
                    let mut pseudonym = [0u8; 32];
                    rng.fill_bytes(&mut pseudonym);
                    ev.records = vec![hex::encode(pseudonym)];
                    // A few thousand subjects, as ledgers have many events.
                    let subject: u16 = rng.gen_range(0..4096);
                    ev.subjects =
                        vec![hex::encode([subject.to_be_bytes(), [0; 2]].concat()).repeat(8)];
                    ev.fields = vec!["email".into(), "name".into()];
                    ev.bytes = 48;
                    let index = log.commit(WriteSet::new(), ev).unwrap();
                    if (index + 1) % CHECKPOINT_EVERY == 0 {
                        log.checkpoint("vault.example/bench", &key).unwrap();
                    }
                }
            });
        }
    });
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "appended {} events in {secs:.0} s ({:.0}/s)",
        log.size() - from,
        (log.size() - from) as f64 / secs
    );
}

/// The measuring process: open, prove, report one JSON line.
fn measure(folder: &str) {
    let rocks = open(folder);
    let store: Arc<dyn Store> = Arc::clone(&rocks) as Arc<dyn Store>;
    let (rss_store, _) = memory();
    let started = Instant::now();
    let log = AuditLog::open(Arc::clone(&store)).unwrap();
    let open_secs = started.elapsed().as_secs_f64();
    let (rss_open, peak_open) = memory();
    let cache_open = rocks.memory().unwrap().block_cache;
    let (size, root) = log.root();
    let mut rng = rand::thread_rng();
    // Every proof is checked with vault-client's independent verifier
    // (outside the timing).
    let leaf = |index: u64| leaf_hash(&log.events(index, 1).unwrap()[0]);

    let mut inclusion = Vec::with_capacity(INCLUSION_PROOFS);
    for _ in 0..INCLUSION_PROOFS {
        let index = rng.gen_range(0..size);
        let t = Instant::now();
        let proof = log.inclusion_proof(index, size).unwrap();
        inclusion.push(t.elapsed());
        verify_inclusion(&leaf(index), index, size, &proof, &root).unwrap();
    }
    inclusion.sort();
    let signed = log.checkpoints(0, 1_000).unwrap();
    let mut consistency = Vec::with_capacity(CONSISTENCY_PROOFS);
    for _ in 0..CONSISTENCY_PROOFS {
        // The older tree: one the vault signed (so its root is known).
        let note = &signed[rng.gen_range(0..signed.len())];
        let (old, old_root) = parse(note.as_bytes()).unwrap();
        let t = Instant::now();
        let proof = log.consistency_proof(old, size).unwrap();
        consistency.push(t.elapsed());
        verify_consistency(old, size, &proof, &old_root, &root).unwrap();
    }
    consistency.sort();
    let from = rng.gen_range(0..size.saturating_sub(PAGE));
    let indices: Vec<u64> = (from..from + PAGE).collect();
    let t = Instant::now();
    let page = log.inclusion_proofs(&indices, size).unwrap();
    let page_time = t.elapsed();
    assert_eq!(page.len() as u64, PAGE);
    for (index, proof) in indices.iter().zip(&page) {
        verify_inclusion(&leaf(*index), *index, size, proof, &root).unwrap();
    }
    let (rss_end, peak_end) = memory();
    let store_memory = rocks.memory().unwrap();
    let (block_cache, memtables) = (store_memory.block_cache, store_memory.memtables);
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{}",
        serde_json::json!({
            "events": size,
            "open_s": open_secs,
            "rss_store_bytes": rss_store,
            "rss_open_bytes": rss_open,
            "peak_open_bytes": peak_open,
            "rss_end_bytes": rss_end,
            "peak_end_bytes": peak_end,
            "block_cache_bytes": block_cache,
            "block_cache_open_bytes": cache_open,
            "memtable_bytes": memtables,
            "table_readers_bytes": store_memory.table_readers,
            "inclusion_p50_us": us(percentile(&inclusion, 0.5)),
            "inclusion_p99_us": us(percentile(&inclusion, 0.99)),
            "consistency_p50_us": us(percentile(&consistency, 0.5)),
            "consistency_p99_us": us(percentile(&consistency, 0.99)),
            "page_of_1000_ms": page_time.as_secs_f64() * 1e3,
        })
    );
}

fn main() {
    if let Ok(folder) = std::env::var("AUDIT_GROWTH_MEASURE") {
        measure(&folder);
        return;
    }
    let sizes: Vec<u64> = std::env::var("AUDIT_GROWTH_SIZES")
        .unwrap_or_else(|_| "1000000,10000000".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("AUDIT_GROWTH_SIZES: sizes, comma-separated")
        })
        .collect();
    assert!(
        sizes.windows(2).all(|w| w[0] < w[1]) && sizes[0] >= CHECKPOINT_EVERY,
        "AUDIT_GROWTH_SIZES: growing sizes of at least {CHECKPOINT_EVERY}"
    );
    let dir = tempfile::tempdir().unwrap();
    // AUDIT_GROWTH_FOLDER keeps the log (to measure it again:
    // AUDIT_GROWTH_MEASURE=<folder>).
    let folder = std::env::var("AUDIT_GROWTH_FOLDER")
        .unwrap_or_else(|_| dir.path().to_str().unwrap().to_owned());
    let mut rows = Vec::new();
    for &size in &sizes {
        {
            let log = Arc::new(AuditLog::open(open(&folder) as Arc<dyn Store>).unwrap());
            grow(&log, size);
        }
        // Opened once more, RocksDB flushes what its log replays: the
        // measuring process starts with empty memtables at every size.
        drop(open(&folder));
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .env("AUDIT_GROWTH_MEASURE", &folder)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let row: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        eprintln!("{row}");
        rows.push(row);
    }
    println!(
        "| events | open | RSS after open | peak RSS | RSS after proofs | of which RocksDB block cache | RSS without it | RocksDB table readers | inclusion p50 / p99 | consistency p50 / p99 | page of 1 000 proofs |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let b = |k: &str| r[k].as_u64().unwrap();
        let f = |k: &str| r[k].as_f64().unwrap();
        println!(
            "| {} | {:.1} s | {} | {} | {} | {} | {} | {} | {:.0} / {:.0} µs | {:.0} / {:.0} µs | {:.1} ms |",
            b("events"),
            f("open_s"),
            mib(b("rss_open_bytes")),
            mib(b("peak_end_bytes")),
            mib(b("rss_end_bytes")),
            mib(b("block_cache_bytes")),
            mib(b("rss_end_bytes").saturating_sub(b("block_cache_bytes"))),
            mib(b("table_readers_bytes")),
            f("inclusion_p50_us"),
            f("inclusion_p99_us"),
            f("consistency_p50_us"),
            f("consistency_p99_us"),
            f("page_of_1000_ms"),
        );
    }
    if let [.., a, b] = &rows[..] {
        let rss = |r: &serde_json::Value| r["rss_end_bytes"].as_f64().unwrap();
        let cache = |r: &serde_json::Value| r["block_cache_bytes"].as_f64().unwrap();
        println!(
            "resident memory after proofs, {} vs {} events: {:.2}x; without the block cache: {:.2}x (target: within 10%)",
            b["events"],
            a["events"],
            rss(b) / rss(a),
            (rss(b) - cache(b)) / (rss(a) - cache(a)),
        );
    }
}
