//! Root-key rotation with resumable re-wrap: what the job costs, beside what
//! RocksDB alone costs for the same rows, and what it does to reads.
//!
//! A one-shot job over a million rows does not fit criterion's sampling, so
//! this is a plain `main` that measures once and prints.
//!
//! 1. **Throughput.** `REWRAP_KEYS` subject keys (default 1 000 000) are
//!    imported straight into `Table::SubjectKeys` (no per-key fsync), then:
//!    - `raw`: every row is scanned in pages of 1000 (`scan_from`) and each
//!      page written back unchanged as one synced `WriteSet`: the floor for
//!      any scan-and-rewrite job on this store, with no crypto;
//!    - `re-wrap`: `rotate_root`, then `rewrap_step` until it returns false,
//!      at no pace limit (batch 1000, the same synced writes, plus the job's
//!      cursor in every batch and its initial count of pending keys);
//!    - `raw` again, so drift of the store between passes (memtable flushes,
//!      compactions) shows; the ratio is taken against the two passes' median.
//!
//!    The job's result is checked (old root version wraps 0 keys, the new one
//!    all of them; progress finished with every key re-wrapped): a bench that
//!    times a broken job is worthless. Targets: 1M keys in under 30 s, and at
//!    least 0.5x the raw rewrite's throughput.
//!
//!    Beside it, where a re-wrapped key's time goes: the job's first step
//!    (which counts the pending keys with a full scan) apart from the others,
//!    a scan alone, and on a sample of rows (no writes) an unwrap, a wrap, a
//!    full re-wrap (its erased-subject check included),
//!    and floors: a nonce from the OS, an AES-GCM key schedule, and a
//!    decrypt + encrypt with a prebuilt cipher.
//! 2. **Reads during the job.** About 10 000 `users` records of imported
//!    subjects (so no key is created) are written with `put_records`; then
//!    two reader threads call `get_record` on random ids, first idle, then
//!    while the job re-wraps every key at its default pace
//!    (`RewrapOptions::default()`) after a second rotation, in the background
//!    (`run_background`). Target: p99 during the job at most 2x idle. The machine
//!    has 2 cores, shared by the readers and the job. One engine per data
//!    folder: the part-1 engine (no pace limit) is dropped and a default one
//!    opened over the same store, keyring and keyring file. Each idle
//!    measurement follows a pause for RocksDB's background work, and a
//!    second one after the job cross-checks the first.
//!
//! Run: `cargo bench --locked --workspace --bench rewrap`
//! (`REWRAP_KEYS=20000` for a quick run; `REWRAP_BATCH` and `REWRAP_PACE`,
//! keys per second, run part 2 at another pace than the default).

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use aes_gcm::aead::{Aead, AeadCore, KeyInit, Payload};
use aes_gcm::Aes256Gcm;
use rand::{Rng, RngCore};
use vault_server::crypto::Key256;
use vault_server::engine::{EngineOptions, KeyringFile, Record, RewrapOptions, Value};
use vault_server::keys::{
    rewrap_subject_key, unwrap_subject_key, wrap_subject_key, Custody, Keyring, StorageNames,
    SubjectName,
};
use vault_server::policy::Caller;
use vault_server::storage::{
    parse_subject_key_id, subject_key_id, RocksStore, Store, StoreOptions, Table, WriteSet,
};
use vault_server::Engine;

/// Rows per page and per write: the job's batch size.
const BATCH: usize = 1000;
/// Rows per write while importing (setup only).
const IMPORT_BATCH: usize = 10_000;
/// Records read in part 2.
const RECORDS: usize = 10_000;
/// Records per `put_records` call.
const PUT_BATCH: usize = 500;
/// Reader threads in part 2.
const READERS: usize = 2;
/// How long the idle readers run.
const IDLE_READS: Duration = Duration::from_secs(3);
/// Rows in the per-key breakdown.
const SAMPLE: usize = 50_000;
/// Pause before each idle measurement, for RocksDB's background work.
const SETTLE: Duration = Duration::from_secs(2);
/// A job that takes longer than this is broken.
const JOB_TIMEOUT: Duration = Duration::from_secs(900);

/// A scratch folder, removed on drop (also on panic).
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p =
            std::env::temp_dir().join(format!("vault-rewrap-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        ScratchDir(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn subject(i: usize) -> String {
    format!("subject-{i:08}")
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn per_sec(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Writes `n` subject keys (version 1, wrapped under the current root key)
/// in large synced batches.
fn import(store: &dyn Store, keyring: &Keyring, n: usize) {
    let names = StorageNames::of(keyring);
    let mut ws = WriteSet::new();
    for i in 0..n {
        let s = names.subject(&subject(i));
        ws.put(
            Table::SubjectKeys,
            subject_key_id(names.bucket(&s), &s, 1),
            wrap_subject_key(keyring, &s, 1, &Key256::random()).unwrap(),
        );
        if (i + 1) % IMPORT_BATCH == 0 {
            store.write(std::mem::take(&mut ws)).unwrap();
        }
    }
    if !ws.is_empty() {
        store.write(ws).unwrap();
    }
}

/// Scans every subject-key row in pages of [`BATCH`]; with `rewrite`, writes
/// each page back unchanged as one `WriteSet`. Returns the rows seen.
fn raw_pass(store: &dyn Store, rewrite: bool) -> u64 {
    let mut cursor = Vec::new();
    let mut rows = 0u64;
    loop {
        let page = store.scan_from(Table::SubjectKeys, &cursor, BATCH).unwrap();
        let full = page.len() == BATCH;
        if let Some((last, _)) = page.last() {
            cursor = last.clone();
            cursor.push(0);
        }
        rows += page.len() as u64;
        if rewrite && !page.is_empty() {
            let mut ws = WriteSet::new();
            for (k, v) in page {
                ws.put(Table::SubjectKeys, k, v);
            }
            store.write(ws).unwrap();
        }
        if !full {
            return rows;
        }
    }
}

/// Subject keys per root key version, as custodians see it.
fn wrapped_per_version(engine: &Engine) -> BTreeMap<u32, u64> {
    engine
        .root_keys(&Caller::internal("bench"))
        .unwrap()
        .into_iter()
        .map(|k| (k.version, k.wrapped_subject_keys))
        .collect()
}

/// Panics unless every one of `n` keys is wrapped under `to` and the job
/// says it re-wrapped all of them.
fn check_job(engine: &Engine, from: u32, to: u32, n: u64) {
    let counts = wrapped_per_version(engine);
    assert_eq!(
        counts.get(&from).copied().unwrap_or(0),
        0,
        "root key version {from} still wraps keys: {counts:?}"
    );
    assert_eq!(
        counts.get(&to).copied().unwrap_or(0),
        n,
        "root key version {to} does not wrap every key: {counts:?}"
    );
    let p = engine.rewrap_progress();
    assert!(
        p.finished && p.target_version == to && p.rewrapped == n && p.unreadable == 0,
        "re-wrap progress is off: {p:?}"
    );
}

/// Per-key costs on a sample of rows wrapped under an older root version,
/// with `keyring` (whose current root is newer). No writes.
struct Breakdown {
    rows: usize,
    unwrap: Duration,
    wrap: Duration,
    rewrap: Duration,
    /// 12 bytes from the OS (a `getrandom` call): how a wrap gets its nonce.
    os_nonce: Duration,
    /// `Aes256Gcm::new`: the key schedule every wrap and unwrap redoes.
    key_schedule: Duration,
    /// Decrypt and encrypt 32 bytes with a prebuilt cipher, a userspace
    /// RNG nonce and an AAD like ours: the floor of a re-wrap.
    bare_aead: Duration,
}

fn breakdown(store: &dyn Store, keyring: &Keyring, sample: usize) -> Breakdown {
    let rows = store.scan_from(Table::SubjectKeys, b"", sample).unwrap();
    let parsed: Vec<(SubjectName, u32, &[u8])> = rows
        .iter()
        .map(|(k, v)| {
            let (_, s, version) = parse_subject_key_id(k).unwrap();
            (s, version, v.as_slice())
        })
        .collect();
    let t = Instant::now();
    let keys: Vec<Key256> = parsed
        .iter()
        .map(|(s, version, v)| unwrap_subject_key(keyring, s, *version, v).unwrap())
        .collect();
    let unwrap = t.elapsed();
    let t = Instant::now();
    for ((s, version, _), key) in parsed.iter().zip(&keys) {
        std::hint::black_box(wrap_subject_key(keyring, s, *version, key).unwrap());
    }
    let wrap = t.elapsed();
    let t = Instant::now();
    for (s, version, v) in &parsed {
        let w = rewrap_subject_key(keyring, s, *version, v).unwrap();
        assert!(w.is_some(), "the sample must need a re-wrap");
        std::hint::black_box(w);
    }
    let rewrap = t.elapsed();

    let t = Instant::now();
    for _ in &parsed {
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        std::hint::black_box(nonce);
    }
    let os_nonce = t.elapsed();
    let root = Key256::random();
    let t = Instant::now();
    for _ in &parsed {
        std::hint::black_box(Aes256Gcm::new(root.expose_secret().into()));
    }
    let key_schedule = t.elapsed();
    let cipher = Aes256Gcm::new(root.expose_secret().into());
    let aad = [7u8; 40];
    let sealed = {
        let nonce = Aes256Gcm::generate_nonce(&mut rand::thread_rng());
        let ct = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: &[9u8; 32],
                    aad: &aad,
                },
            )
            .unwrap();
        (nonce, ct)
    };
    let t = Instant::now();
    for _ in &parsed {
        let pt = cipher
            .decrypt(
                &sealed.0,
                Payload {
                    msg: &sealed.1,
                    aad: &aad,
                },
            )
            .unwrap();
        let nonce = Aes256Gcm::generate_nonce(&mut rand::thread_rng());
        std::hint::black_box(
            cipher
                .encrypt(
                    &nonce,
                    Payload {
                        msg: &pt,
                        aad: &aad,
                    },
                )
                .unwrap(),
        );
    }
    let bare_aead = t.elapsed();
    Breakdown {
        rows: parsed.len(),
        unwrap,
        wrap,
        rewrap,
        os_nonce,
        key_schedule,
        bare_aead,
    }
}

/// The job's pace in part 2: `RewrapOptions::default()`, unless
/// `REWRAP_BATCH` or `REWRAP_PACE` (keys per second) say otherwise, to
/// compare other paces with the default.
fn pace_from_env() -> RewrapOptions {
    let d = RewrapOptions::default();
    let var = |name: &str| std::env::var(name).ok().map(|v| v.parse::<u64>().unwrap());
    RewrapOptions {
        batch_size: var("REWRAP_BATCH").map_or(d.batch_size, |b| b as usize),
        keys_per_second: var("REWRAP_PACE").unwrap_or(d.keys_per_second),
    }
}

/// Latencies of `get_record` on random ids from [`READERS`] threads, until
/// `stop` is set. Sorted.
fn read_latencies(
    engine: &Arc<Engine>,
    ids: &Arc<Vec<String>>,
    stop: &Arc<AtomicBool>,
) -> Vec<Duration> {
    let handles: Vec<_> = (0..READERS)
        .map(|_| {
            let engine = Arc::clone(engine);
            let ids = Arc::clone(ids);
            let stop = Arc::clone(stop);
            thread::spawn(move || {
                let caller = Caller::internal("bench-reader");
                let mut rng = rand::thread_rng();
                let mut lat = Vec::with_capacity(1 << 20);
                while !stop.load(Ordering::Relaxed) {
                    let id = &ids[rng.gen_range(0..ids.len())];
                    let t = Instant::now();
                    let r = engine.get_record(&caller, "users", id, &[]).unwrap();
                    lat.push(t.elapsed());
                    std::hint::black_box(r);
                }
                lat
            })
        })
        .collect();
    let mut all: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    all.sort_unstable();
    all
}

/// [`read_latencies`] for a fixed time.
fn timed_reads(engine: &Arc<Engine>, ids: &Arc<Vec<String>>, d: Duration) -> Reads {
    let stop = Arc::new(AtomicBool::new(false));
    let timer = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            thread::sleep(d);
            stop.store(true, Ordering::Relaxed);
        })
    };
    let t = Instant::now();
    let lat = read_latencies(engine, ids, &stop);
    let elapsed = t.elapsed();
    timer.join().unwrap();
    Reads::new(&lat, elapsed)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    assert!(!sorted.is_empty(), "no reads measured");
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Reads {
    n: usize,
    p50: Duration,
    p99: Duration,
    elapsed: Duration,
}

impl Reads {
    fn new(sorted: &[Duration], elapsed: Duration) -> Self {
        Reads {
            n: sorted.len(),
            p50: percentile(sorted, 0.50),
            p99: percentile(sorted, 0.99),
            elapsed,
        }
    }

    fn line(&self, label: &str) -> String {
        format!(
            "{label:<22} {:>9} reads in {:>6.2} s ({:>8.0}/s)  p50 {:>7.1} µs  p99 {:>7.1} µs",
            self.n,
            secs(self.elapsed),
            per_sec(self.n as u64, self.elapsed),
            micros(self.p50),
            micros(self.p99)
        )
    }
}

fn main() {
    let n: usize = std::env::var("REWRAP_KEYS")
        .ok()
        .map(|s| s.replace('_', "").parse().expect("REWRAP_KEYS: a number"))
        .unwrap_or(1_000_000);
    assert!(n > 0, "REWRAP_KEYS must be positive");
    let n64 = n as u64;
    let dir = ScratchDir::new();
    let cores = thread::available_parallelism().map_or(0, |p| p.get());
    println!(
        "rewrap bench: {n} subject keys, batch {BATCH}, synced writes, {cores} cores, data in {}",
        dir.path().display()
    );

    let store: Arc<dyn Store> =
        Arc::new(RocksStore::open(&dir.path().join("db"), &StoreOptions::default()).unwrap());
    let unseal_key = Key256::random();
    let keyring_file = || {
        KeyringFile::at(
            dir.path().join("keyring"),
            Key256::from_slice(unseal_key.expose_secret()).unwrap(),
        )
    };
    let keyring = Keyring::generate(
        "eu".parse().unwrap(),
        Custody {
            set_id: [7; 16],
            threshold: 1,
            shares: 1,
        },
    );
    let engine = Engine::new(
        Arc::clone(&store),
        keyring,
        keyring_file(),
        EngineOptions {
            rewrap: RewrapOptions {
                batch_size: BATCH,
                keys_per_second: 0,
            },
            ..Default::default()
        },
    )
    .unwrap();
    let caller = Caller::internal("bench");

    // ---- part 1: throughput ----
    let t = Instant::now();
    import(store.as_ref(), &engine.keyring(), n);
    let import_time = t.elapsed();
    println!(
        "setup: imported {n} wrapped subject keys in {:.2} s",
        secs(import_time)
    );
    assert_eq!(wrapped_per_version(&engine).get(&1).copied(), Some(n64));

    let t = Instant::now();
    let rows = raw_pass(store.as_ref(), true);
    let raw1 = t.elapsed();
    assert_eq!(rows, n64);
    println!(
        "raw #1   : {:>7.2} s  {:>10.0} keys/s",
        secs(raw1),
        per_sec(n64, raw1)
    );

    let old_root = engine.keyring().current_root().unwrap().0;
    let new_root = engine.rotate_root(&caller).unwrap();
    // Per-key costs, before the job runs (every row is still under the old root).
    let bd = breakdown(store.as_ref(), &engine.keyring(), n.min(SAMPLE));

    let t = Instant::now();
    let mut more = engine.rewrap_step().unwrap();
    let first_step = t.elapsed();
    let mut steps = 1u64;
    while more {
        more = engine.rewrap_step().unwrap();
        steps += 1;
    }
    let rewrap = t.elapsed();
    check_job(&engine, old_root, new_root, n64);
    println!(
        "re-wrap  : {:>7.2} s  {:>10.0} keys/s  ({steps} steps; the first, with the job's count of pending keys, {:.3} s)",
        secs(rewrap),
        per_sec(n64, rewrap),
        secs(first_step)
    );

    let t = Instant::now();
    let rows = raw_pass(store.as_ref(), true);
    let raw2 = t.elapsed();
    assert_eq!(rows, n64);
    println!(
        "raw #2   : {:>7.2} s  {:>10.0} keys/s",
        secs(raw2),
        per_sec(n64, raw2)
    );

    let t = Instant::now();
    let rows = raw_pass(store.as_ref(), false);
    let scan_only = t.elapsed();
    assert_eq!(rows, n64);

    // The median of two passes is their mean.
    let raw_kps = (per_sec(n64, raw1) + per_sec(n64, raw2)) / 2.0;
    let rewrap_kps = per_sec(n64, rewrap);
    let ratio = rewrap_kps / raw_kps;
    // 1M in 30 s, scaled to the key count of this run.
    let projected_1m = 1_000_000.0 / rewrap_kps;
    println!("ratio re-wrap/raw (median of raw passes, {raw_kps:.0} keys/s): {ratio:.2}x");

    let per_key = |d: Duration| micros(d) / bd.rows as f64;
    let per_row = |d: Duration| micros(d) / n as f64;
    let item = |what: &str, us: f64| println!("  {what:<52} {us:>6.2} µs/key");
    println!("where a re-wrapped key's time goes:");
    item("job, all steps", per_row(rewrap));
    item(
        "  first step (counts pending keys: a full scan)",
        per_row(first_step),
    );
    item("  the other steps", per_row(rewrap - first_step));
    item(
        &format!("scan only (all rows, pages of {BATCH})"),
        per_row(scan_only),
    );
    item(
        "raw rewrite minus scan (the synced write path)",
        per_row((raw1 + raw2) / 2) - per_row(scan_only),
    );
    println!("  crypto, on a sample of {} rows:", bd.rows);
    item("  rewrap_subject_key (unwrap + wrap)", per_key(bd.rewrap));
    item(
        "    unwrap_subject_key (with erased check)",
        per_key(bd.unwrap),
    );
    item("    wrap_subject_key", per_key(bd.wrap));
    item("  floors: OS nonce (getrandom, 12 B)", per_key(bd.os_nonce));
    item(
        "          AES-256-GCM key schedule (Aes256Gcm::new)",
        per_key(bd.key_schedule),
    );
    item(
        "          prebuilt cipher: decrypt + encrypt 32 B",
        per_key(bd.bare_aead),
    );

    // ---- part 2: reads while the job runs at its default pace ----
    // One engine per data folder: the part-1 engine goes, a default-paced
    // one comes over the same store, keyring and keyring file.
    let keyring = Keyring::clone(&engine.keyring());
    drop(engine);
    let engine = Arc::new(
        Engine::new(
            Arc::clone(&store),
            keyring,
            keyring_file(),
            EngineOptions {
                rewrap: pace_from_env(),
                ..EngineOptions::default()
            },
        )
        .unwrap(),
    );
    vault_server::dev::seed(&engine).unwrap();
    let records = n.min(RECORDS);
    let stride = n / records;
    let ids: Vec<String> = (0..records).map(|i| format!("user-{i:05}")).collect();
    let t = Instant::now();
    for chunk in (0..records).collect::<Vec<_>>().chunks(PUT_BATCH) {
        let batch = chunk
            .iter()
            .map(|&i| {
                Record::new(
                    "users",
                    ids[i].clone(),
                    subject(i * stride),
                    BTreeMap::from([
                        (
                            "email".to_owned(),
                            Value::String(format!("user{i}@example.org")),
                        ),
                        ("name".to_owned(), Value::String(format!("User Number {i}"))),
                    ]),
                )
            })
            .collect();
        engine.put_records(&caller, batch).unwrap();
    }
    println!(
        "setup: wrote {records} records in {:.2} s",
        secs(t.elapsed())
    );
    // Every record's subject had a key: none was made.
    let total: u64 = wrapped_per_version(&engine).values().sum();
    assert_eq!(total, n64, "put_records created subject keys");
    let ids = Arc::new(ids);

    // Let RocksDB's background flushes and compactions of part 1 settle,
    // warm up, then read idle.
    thread::sleep(SETTLE);
    timed_reads(&engine, &ids, Duration::from_millis(500));
    let idle = timed_reads(&engine, &ids, IDLE_READS);
    println!("{}", idle.line("reads, idle"));

    // A second rotation; the job runs in the background at its default pace.
    let pace = pace_from_env();
    let old_root = engine.keyring().current_root().unwrap().0;
    let t = Instant::now();
    let new_root = engine.rotate_root(&caller).unwrap();
    let job = {
        let engine = Arc::clone(&engine);
        thread::spawn(move || engine.run_background())
    };
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let engine = Arc::clone(&engine);
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let finished = loop {
                if engine.rewrap_progress().finished {
                    break true;
                }
                if t.elapsed() > JOB_TIMEOUT {
                    break false;
                }
                thread::sleep(Duration::from_millis(2));
            };
            let took = t.elapsed();
            stop.store(true, Ordering::Relaxed);
            assert!(
                finished,
                "the re-wrap job did not finish in {JOB_TIMEOUT:?}"
            );
            took
        })
    };
    let lat = read_latencies(&engine, &ids, &stop);
    let during = Reads::new(&lat, t.elapsed());
    let job_time = watcher.join().unwrap();
    println!("{}", during.line("reads, during job"));
    println!(
        "job at default pace ({} keys/s, batch {}): {:.2} s = {:.0} keys/s",
        pace.keys_per_second,
        pace.batch_size,
        secs(job_time),
        per_sec(n64, job_time)
    );
    // The job thread now sleeps until the next rotation: idle again, as a
    // cross-check of the first idle figure.
    thread::sleep(SETTLE);
    let idle_after = timed_reads(&engine, &ids, IDLE_READS);
    println!("{}", idle_after.line("reads, idle after"));
    engine.close();
    job.join().unwrap();
    check_job(&engine, old_root, new_root, n64);
    let p50_ratio = micros(during.p50) / micros(idle.p50);
    let p99_ratio = micros(during.p99) / micros(idle.p99);

    // ---- summary ----
    let row = |measure: &str, value: String, target: &str| {
        println!("| {measure:<34} | {value:>24} | {target:<20} |");
    };
    let throughput = |d: Duration| format!("{:.2} s {:>8.0} keys/s", secs(d), per_sec(n64, d));
    let ok = |met: bool| if met { "met" } else { "NOT met" };
    let t_time = format!("1M < 30 s: {}", ok(projected_1m < 30.0));
    let t_ratio = format!(">= 0.5x: {}", ok(ratio >= 0.5));
    let t_p99 = format!("p99 <= 2x: {}", ok(p99_ratio <= 2.0));
    println!();
    println!("{n} subject keys; {READERS} readers and the job share {cores} cores");
    row("measure", "value".into(), "target");
    println!("|{:-<36}|{:-<26}|{:-<22}|", "", "", "");
    row("raw scan+rewrite #1", throughput(raw1), "");
    row("re-wrap job, no pace limit", throughput(rewrap), &t_time);
    row("raw scan+rewrite #2", throughput(raw2), "");
    row(
        "re-wrap / raw (median)",
        format!("{ratio:.2}x of {raw_kps:.0} keys/s"),
        &t_ratio,
    );
    row(
        "get_record p50 idle / during job",
        format!("{:.1} / {:.1} µs", micros(idle.p50), micros(during.p50)),
        "",
    );
    row(
        "get_record p99 idle / during job",
        format!("{:.1} / {:.1} µs", micros(idle.p99), micros(during.p99)),
        "",
    );
    row(
        "during / idle, p50 and p99",
        format!("{p50_ratio:.2}x / {p99_ratio:.2}x"),
        &t_p99,
    );
    row(
        "get_record p50 / p99 idle after",
        format!(
            "{:.1} / {:.1} µs",
            micros(idle_after.p50),
            micros(idle_after.p99)
        ),
        "(cross-check)",
    );
    row(
        &format!("job at default pace ({} k/s)", pace.keys_per_second / 1000),
        throughput(job_time),
        "",
    );
    println!();
    println!(
        "1M re-wrapped in < 30 s: {} ({:.1} s for 1M at this rate)",
        ok(projected_1m < 30.0),
        projected_1m
    );
    println!(
        "re-wrap >= 0.5x raw rewrite: {} ({ratio:.2}x)",
        ok(ratio >= 0.5)
    );
    println!(
        "read p99 during the job <= 2x idle: {} ({p99_ratio:.2}x)",
        ok(p99_ratio <= 2.0)
    );
    println!("command: cargo bench --locked --workspace --bench rewrap");

    // The engine and the store go before their folder.
    drop(engine);
    drop(store);
    drop(dir);
}
