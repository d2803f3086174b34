//! Crash harness: the `vault-server` binary runs as a child process under
//! concurrent writes (single records and batches) and reads from the
//! client, is killed with SIGKILL at a random moment, restarts on the same
//! folder, and is checked:
//!
//! - every acknowledged write reads back exactly: a record holds the last
//!   value the vault acknowledged, or the value of the one write that was
//!   in flight when the vault died, and nothing else;
//! - no batch is half-applied: the records of a batch all hold the same
//!   write;
//! - every acknowledged read has its audit event (each read states a
//!   purpose of its own, so its event is found by purpose).
//!
//! Any error before the kill fails the run: the load is valid, so only the
//! kill may interrupt it.
//!
//! Cycles: `VAULT_CRASH_CYCLES` (20 by default, what CI runs). The long
//! run: `VAULT_CRASH_CYCLES=100 scripts/test crash_cycles`; the seed of a
//! run is printed and `VAULT_CRASH_SEED` replays its choices of operations
//! and kill times (the interleaving is the machine's).

#![allow(clippy::unwrap_used)]
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vault_client::{Record, Value, VaultClient};
use vault_tests::ChildVault;

const TOKEN: &str = "crash-harness-token";
const WRITERS: usize = 4;
const READERS: usize = 2;
/// Single-record ids per writer.
const SINGLES: usize = 8;
/// Batch groups per writer, and records per batch.
const GROUPS: usize = 3;
const GROUP_SIZE: usize = 5;

/// What one id (or one batch group) may hold.
#[derive(Debug, Default, Clone)]
struct Slot {
    /// The last value the vault acknowledged.
    acked: Option<String>,
    /// A write whose answer never came (the vault died): it may or may not
    /// have happened.
    in_flight: Option<String>,
}

impl Slot {
    /// Checks what the vault holds now and settles the in-flight write.
    fn settle(&mut self, what: &str, found: Option<&str>) {
        let ok = found == self.acked.as_deref()
            || (found.is_some() && found == self.in_flight.as_deref());
        assert!(
            ok,
            "{what}: the vault holds {found:?}, but the last acknowledged write was {:?} \
             and the one in flight {:?}",
            self.acked, self.in_flight
        );
        self.acked = found.map(str::to_owned);
        self.in_flight = None;
    }
}

/// The model: what each writer's ids and groups may hold.
#[derive(Debug, Default)]
struct Model {
    singles: Vec<Vec<Slot>>,
    groups: Vec<Vec<Slot>>,
    /// Per writer, the next write number (values are never reused).
    next: Vec<u64>,
}

impl Model {
    fn slot(&mut self, w: usize, target: Target) -> &mut Slot {
        match target {
            Target::Single(k) => &mut self.singles[w][k],
            Target::Group(g) => &mut self.groups[w][g],
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    writes: u64,
    batches: u64,
    reads: u64,
    in_flight_writes_found: u64,
    in_flight_writes_lost: u64,
}

fn single_id(w: usize, k: usize) -> String {
    format!("crash-w{w}-s{k}")
}

fn group_ids(w: usize, g: usize) -> Vec<String> {
    (0..GROUP_SIZE)
        .map(|i| format!("crash-w{w}-b{g}-{i}"))
        .collect()
}

fn record(id: &str, subject: &str, value: &str) -> Record {
    Record::new("users", id, subject)
        .with("email", format!("{id}@example.eu"))
        .with("name", value)
}

/// Writer `w`'s single record `k`, holding `value`.
fn single_record(w: usize, k: usize, value: &str) -> Record {
    record(&single_id(w, k), &format!("subject-w{w}-{k}"), value)
}

/// Writer `w`'s batch group `g`, every record holding `value` (two
/// subjects per batch).
fn group_records(w: usize, g: usize, value: &str) -> Vec<Record> {
    group_ids(w, g)
        .iter()
        .enumerate()
        .map(|(i, id)| record(id, &format!("subject-w{w}-g{g}-{}", i % 2), value))
        .collect()
}

/// What one write touches: a single record or a batch group.
#[derive(Debug, Clone, Copy)]
enum Target {
    Single(usize),
    Group(usize),
}

fn name_of(r: &Record) -> Option<&str> {
    match r.fields.get("name") {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

/// A running `vault-server --dev` child.
struct Server(ChildVault);

impl Server {
    async fn start(dir: &Path) -> Server {
        Server(ChildVault::start(dir, TOKEN).await)
    }

    async fn client(&self, purpose: &str) -> VaultClient {
        VaultClient::connect(self.0.url(), TOKEN)
            .await
            .unwrap_or_else(|e| panic!("connect: {e}; stderr:\n{}", self.0.stderr()))
            .with_purpose(Some(purpose))
            .unwrap()
    }

    async fn kill(self) {
        let stderr = self.0.kill().await;
        assert!(
            !stderr.contains("panicked"),
            "the vault panicked:\n{stderr}"
        );
    }
}

/// Reads every id back and checks it against the model; then checks that
/// every read acknowledged since `audit_from` has its audit event.
/// Returns the audit log's size.
async fn verify(
    server: &Server,
    model: &mut Model,
    counts: &mut Counts,
    acked_reads: &HashSet<String>,
    audit_from: u64,
) -> u64 {
    let client = server.client("crash-verify").await;
    for w in 0..WRITERS {
        let mut ids: Vec<String> = (0..SINGLES).map(|k| single_id(w, k)).collect();
        for g in 0..GROUPS {
            ids.extend(group_ids(w, g));
        }
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let got = client
            .get_many("users", &refs, &[])
            .await
            .unwrap_or_else(|e| panic!("reading back writer {w}: {e}"));
        let found: BTreeMap<&str, Option<&str>> = got
            .records
            .iter()
            .map(|r| (r.id.as_str(), name_of(r)))
            .collect();
        let holds = |id: &str| -> Option<&str> { found.get(id).copied().flatten() };
        for k in 0..SINGLES {
            let id = single_id(w, k);
            let slot = &mut model.singles[w][k];
            let had_in_flight = slot.in_flight.clone();
            slot.settle(&id, holds(&id));
            if let Some(v) = had_in_flight {
                if slot.acked.as_deref() == Some(&v) {
                    counts.in_flight_writes_found += 1;
                } else {
                    counts.in_flight_writes_lost += 1;
                }
            }
        }
        for g in 0..GROUPS {
            let values: Vec<Option<&str>> = group_ids(w, g).iter().map(|id| holds(id)).collect();
            assert!(
                values.iter().all(|v| *v == values[0]),
                "batch group {g} of writer {w} is half-applied: {values:?}"
            );
            model.groups[w][g].settle(&format!("batch group {g} of writer {w}"), values[0]);
        }
    }
    // Every acknowledged read has its event.
    let mut purposes = HashSet::new();
    // Each audit read is itself an event: read up to the size the first
    // page gives, or the loop would chase its own events.
    let mut from = audit_from;
    let mut end = None;
    while end.is_none_or(|end| from < end) {
        let page = client.audit_events(from, 1000).await.expect("audit events");
        end.get_or_insert(page.tree_size);
        if page.events.is_empty() {
            break;
        }
        for bytes in &page.events {
            let ev: serde_json::Value = serde_json::from_slice(bytes).expect("event JSON");
            if ev["operation"] == "read" && ev["decision"] == "allowed" {
                if let Some(p) = ev["purpose"].as_str() {
                    purposes.insert(p.to_owned());
                }
            }
        }
        from += page.events.len() as u64;
    }
    let missing: Vec<&String> = acked_reads
        .iter()
        .filter(|p| !purposes.contains(*p))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged reads have no audit event, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    from
}

/// One writer until the kill: single puts and batches of its own ids.
async fn writer(
    w: usize,
    client: VaultClient,
    model: Arc<Mutex<Model>>,
    killed: Arc<AtomicBool>,
    seed: u64,
) -> (u64, u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut writes, mut batches) = (0, 0);
    loop {
        let n = {
            let mut m = model.lock().unwrap();
            m.next[w] += 1;
            m.next[w]
        };
        let value = format!("w{w}-n{n}");
        let target = if rng.gen_bool(0.6) {
            Target::Single(rng.gen_range(0..SINGLES))
        } else {
            Target::Group(rng.gen_range(0..GROUPS))
        };
        model.lock().unwrap().slot(w, target).in_flight = Some(value.clone());
        let result = match target {
            Target::Single(k) => client.put(&single_record(w, k, &value)).await,
            Target::Group(g) => client
                .put_many(&group_records(w, g, &value))
                .await
                .map(|_| ()),
        };
        if result.is_ok() {
            let mut m = model.lock().unwrap();
            let slot = m.slot(w, target);
            slot.acked = slot.in_flight.take();
            match target {
                Target::Single(_) => writes += 1,
                Target::Group(_) => batches += 1,
            }
        }
        if let Err(e) = result {
            assert!(
                killed.load(Ordering::SeqCst),
                "writer {w} failed before the kill: {e}"
            );
            return (writes, batches);
        }
    }
}

/// One reader until the kill: gets with a purpose of their own.
async fn reader(
    r: usize,
    cycle: usize,
    client: VaultClient,
    killed: Arc<AtomicBool>,
    seed: u64,
) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut acked = Vec::new();
    for n in 0.. {
        let id = single_id(rng.gen_range(0..WRITERS), rng.gen_range(0..SINGLES));
        let purpose = format!("crash-c{cycle}-r{r}-{n}");
        let result = match client.with_purpose(Some(&purpose)) {
            Ok(c) => c.get("users", &id).await,
            Err(e) => panic!("purpose {purpose}: {e}"),
        };
        match result {
            Ok(_) => acked.push(purpose),
            Err(e) => {
                assert!(
                    killed.load(Ordering::SeqCst),
                    "reader {r} failed before the kill: {e}"
                );
                return acked;
            }
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_cycles_lose_no_acknowledged_write_or_read_event() {
    let cycles: usize = std::env::var("VAULT_CRASH_CYCLES")
        .ok()
        .map(|v| v.parse().expect("VAULT_CRASH_CYCLES is a number"))
        .unwrap_or(20);
    let seed: u64 = std::env::var("VAULT_CRASH_SEED")
        .ok()
        .map(|v| v.parse().expect("VAULT_CRASH_SEED is a number"))
        .unwrap_or_else(|| rand::thread_rng().gen());
    println!("crash harness: {cycles} cycles, VAULT_CRASH_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let model = Arc::new(Mutex::new(Model {
        singles: vec![vec![Slot::default(); SINGLES]; WRITERS],
        groups: vec![vec![Slot::default(); GROUPS]; WRITERS],
        next: vec![0; WRITERS],
    }));
    let mut counts = Counts::default();
    let mut acked_reads: HashSet<String> = HashSet::new();
    let mut audit_from = 0;

    // Every id exists before the first kill, so readers always find one.
    let server = Server::start(dir.path()).await;
    {
        let client = server.client("crash-setup").await;
        for w in 0..WRITERS {
            for k in 0..SINGLES {
                client.put(&single_record(w, k, "initial")).await.unwrap();
                model.lock().unwrap().singles[w][k].acked = Some("initial".into());
            }
            for g in 0..GROUPS {
                client
                    .put_many(&group_records(w, g, "initial"))
                    .await
                    .unwrap();
                model.lock().unwrap().groups[w][g].acked = Some("initial".into());
            }
        }
    }
    let mut server = Some(server);

    for cycle in 0..cycles {
        let s = match server.take() {
            Some(s) => s,
            None => Server::start(dir.path()).await,
        };
        // No writer runs now: the model is the verifier's.
        let mut m = std::mem::take(&mut *model.lock().unwrap());
        audit_from = verify(&s, &mut m, &mut counts, &acked_reads, audit_from).await;
        *model.lock().unwrap() = m;
        acked_reads.clear();

        let killed = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let client = s.client("crash-write").await;
            writers.push(tokio::spawn(writer(
                w,
                client,
                Arc::clone(&model),
                Arc::clone(&killed),
                rng.gen(),
            )));
        }
        let mut readers = Vec::new();
        for r in 0..READERS {
            let client = s.client("crash-read").await;
            readers.push(tokio::spawn(reader(
                r,
                cycle,
                client,
                Arc::clone(&killed),
                rng.gen(),
            )));
        }
        // The kill comes at a random moment of the load (this is the
        // crash being tested, not a wait for readiness).
        tokio::time::sleep(Duration::from_millis(rng.gen_range(20..600))).await;
        killed.store(true, Ordering::SeqCst);
        s.kill().await;
        for h in writers {
            let (w, b) = h.await.expect("writer task");
            counts.writes += w;
            counts.batches += b;
        }
        for h in readers {
            let acked = h.await.expect("reader task");
            counts.reads += acked.len() as u64;
            acked_reads.extend(acked);
        }
    }

    // The last restart: everything acknowledged in the last cycle is there.
    let s = Server::start(dir.path()).await;
    let mut m = std::mem::take(&mut *model.lock().unwrap());
    verify(&s, &mut m, &mut counts, &acked_reads, audit_from).await;
    s.kill().await;
    println!(
        "crash harness: {cycles} cycles, {} acknowledged single writes, {} acknowledged batches \
         of {GROUP_SIZE}, {} acknowledged reads; 0 acknowledged writes lost, 0 batches \
         half-applied, 0 reads without an event; of the writes in flight at a kill, {} were \
         found applied and {} not",
        counts.writes,
        counts.batches,
        counts.reads,
        counts.in_flight_writes_found,
        counts.in_flight_writes_lost,
    );
    assert!(
        counts.writes + counts.batches > 0 && counts.reads > 0,
        "the load did nothing: {counts:?}"
    );
}

/// The checker itself: it accepts what the vault may hold and refuses a
/// lost write and a value nobody wrote (the harness could not fail
/// otherwise).
#[test]
fn the_checker_accepts_acked_or_in_flight_values_only() {
    let slot = || Slot {
        acked: Some("a".into()),
        in_flight: Some("b".into()),
    };
    for found in [Some("a"), Some("b")] {
        let mut s = slot();
        s.settle("id", found);
        assert_eq!(s.acked.as_deref(), found);
        assert_eq!(s.in_flight, None);
    }
    for found in [None, Some("c")] {
        let r = std::panic::catch_unwind(|| slot().settle("id", found));
        assert!(r.is_err(), "{found:?} was accepted");
    }
}
