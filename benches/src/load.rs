//! The load generator's engine: workloads, record shapes, drivers (async
//! clients for gRPC targets, threads for the in-process RocksDB baseline)
//! and the statistics of a run.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde::Serialize;

/// What the clients do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// 95% single-record gets, 5% puts (replacing existing records).
    ReadHeavy,
    /// 95% puts, 5% gets.
    WriteHeavy,
    /// Batch puts and batch gets, alternately.
    Batch,
    /// Only single-record gets (for a clean per-operation ratio).
    GetOnly,
    /// Only single-record puts.
    PutOnly,
    /// Half gets by id, half finds by an indexed field (`FindRecords`, one
    /// record per value), side by side. Baselines do a get for each find.
    FindGet,
}

impl Workload {
    /// The kind of the `i`th operation of a client, drawn with `rng`.
    pub fn pick(self, i: u64, rng: &mut impl Rng) -> OpKind {
        match self {
            Workload::ReadHeavy if rng.gen_range(0..100) < 95 => OpKind::Get,
            Workload::ReadHeavy => OpKind::Put,
            Workload::WriteHeavy if rng.gen_range(0..100) < 95 => OpKind::Put,
            Workload::WriteHeavy => OpKind::Get,
            Workload::Batch if i.is_multiple_of(2) => OpKind::BatchPut,
            Workload::Batch => OpKind::BatchGet,
            Workload::GetOnly => OpKind::Get,
            Workload::PutOnly => OpKind::Put,
            Workload::FindGet if i.is_multiple_of(2) => OpKind::Find,
            Workload::FindGet => OpKind::Get,
        }
    }
}

/// One kind of operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum OpKind {
    /// Read one record.
    Get,
    /// Write one record.
    Put,
    /// Write a batch.
    BatchPut,
    /// Read a batch.
    BatchGet,
    /// Find one record by its indexed key.
    Find,
}

impl OpKind {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Get => "get",
            OpKind::Put => "put",
            OpKind::BatchPut => "batch_put",
            OpKind::BatchGet => "batch_get",
            OpKind::Find => "find",
        }
    }
}

/// The records the clients read and write.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Shape {
    /// String fields per record.
    pub fields: usize,
    /// Bytes per field value.
    pub value_size: usize,
    /// Records written before the measurement (gets read these).
    pub records: usize,
    /// Records per batch (batch workload).
    pub batch_size: usize,
}

impl Shape {
    /// The id of record `n`.
    pub fn id(n: usize) -> String {
        format!("r{n:08}")
    }

    /// The value of record `n`'s indexed field `key` (unique).
    pub fn key(n: usize) -> String {
        format!("k{n:08}")
    }

    /// The subject of record `n` (ten records per subject).
    pub fn subject(n: usize) -> String {
        format!("s{:07}", n / 10)
    }

    /// The field values of a record: `fields` values of `value_size`
    /// printable bytes, drawn with `rng`.
    pub fn values(&self, rng: &mut impl Rng) -> Vec<(String, String)> {
        (0..self.fields)
            .map(|f| {
                let v: String = (0..self.value_size)
                    .map(|_| char::from(rng.gen_range(b'a'..=b'z')))
                    .collect();
                (format!("f{f}"), v)
            })
            .collect()
    }

    /// The plaintext bytes of a record's values, as a baseline stores them.
    pub fn plaintext(values: &[(String, String)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in values {
            out.extend_from_slice(name.as_bytes());
            out.push(0);
            out.extend_from_slice(value.as_bytes());
            out.push(0);
        }
        out
    }

    /// Plaintext bytes of one record.
    pub fn record_bytes(&self) -> usize {
        (0..self.fields)
            .map(|f| format!("f{f}").len() + 2 + self.value_size)
            .sum()
    }
}

/// When a run ends.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    /// After this long.
    Duration(Duration),
    /// After this many operations (all clients together).
    Count(u64),
}

/// One measured operation.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Milliseconds from the start of the run when it finished.
    at_ms: u32,
    kind: OpKind,
    latency_us: u32,
}

/// Shared progress of a run.
#[derive(Debug)]
pub struct Progress {
    done: AtomicU64,
    stop: Stop,
    started: Instant,
    finished: AtomicBool,
}

impl Progress {
    fn new(stop: Stop) -> Arc<Self> {
        Arc::new(Progress {
            done: AtomicU64::new(0),
            stop,
            started: Instant::now(),
            finished: AtomicBool::new(false),
        })
    }

    /// Takes a ticket for one more operation; false when the run is over.
    fn next(&self) -> bool {
        match self.stop {
            Stop::Duration(d) => self.started.elapsed() < d,
            Stop::Count(n) => self.done.fetch_add(1, Ordering::Relaxed) < n,
        }
    }

    fn fraction(&self) -> f64 {
        match self.stop {
            Stop::Duration(d) => self.started.elapsed().as_secs_f64() / d.as_secs_f64().max(1e-9),
            Stop::Count(n) => self.done.load(Ordering::Relaxed) as f64 / (n.max(1)) as f64,
        }
        .min(1.0)
    }
}

/// Draws a progress bar on stderr (when it is a terminal) until the run
/// finishes.
fn spawn_progress_bar(label: String, progress: Arc<Progress>, count: Arc<AtomicU64>, show: bool) {
    if !show || !std::io::stderr().is_terminal() {
        return;
    }
    std::thread::spawn(move || {
        while !progress.finished.load(Ordering::Relaxed) {
            let f = progress.fraction();
            let filled = (f * 30.0) as usize;
            let ops = count.load(Ordering::Relaxed);
            let secs = progress.started.elapsed().as_secs_f64().max(1e-9);
            eprint!(
                "\r{label:<8} [{}{}] {:>3.0}% {ops} ops {:.0} ops/s\x1b[K",
                "#".repeat(filled),
                ".".repeat(30 - filled),
                f * 100.0,
                ops as f64 / secs
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        eprint!("\r\x1b[K");
    });
}

/// The samples of one client.
#[derive(Debug, Default)]
struct ClientLog {
    samples: Vec<Sample>,
    errors: u64,
}

impl ClientLog {
    fn record(&mut self, started: Instant, t0: Instant, kind: OpKind, ok: bool) {
        if !ok {
            self.errors += 1;
            return;
        }
        self.samples.push(Sample {
            at_ms: u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX),
            kind,
            latency_us: u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX),
        });
    }
}

/// Runs `clients` async clients until `stop`; each calls `op(client, i)`,
/// which returns the kind of operation it did and whether it succeeded.
pub async fn drive_async<F, Fut>(
    label: &str,
    clients: usize,
    stop: Stop,
    show_progress: bool,
    op: F,
) -> RunResult
where
    F: Fn(usize, u64, rand::rngs::StdRng) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = (OpKind, bool, rand::rngs::StdRng)> + Send,
{
    let progress = Progress::new(stop);
    let count = Arc::new(AtomicU64::new(0));
    spawn_progress_bar(
        label.to_owned(),
        Arc::clone(&progress),
        Arc::clone(&count),
        show_progress,
    );
    let op = Arc::new(op);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (op, progress, count) = (Arc::clone(&op), Arc::clone(&progress), Arc::clone(&count));
        tasks.push(tokio::spawn(async move {
            let mut log = ClientLog::default();
            let mut rng = rand::rngs::StdRng::seed_from_u64(c as u64);
            let mut i = 0u64;
            while progress.next() {
                let t0 = Instant::now();
                let (kind, ok, back) = op(c, i, rng).await;
                rng = back;
                log.record(progress.started, t0, kind, ok);
                count.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            log
        }));
    }
    // A client that panicked takes the run down with it, rather than
    // vanishing from the figures.
    let mut logs = Vec::new();
    for t in tasks {
        match t.await {
            Ok(log) => logs.push(log),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => {}
        }
    }
    let seconds = progress.started.elapsed().as_secs_f64();
    progress.finished.store(true, Ordering::Relaxed);
    RunResult::from_logs(label, clients, seconds, logs)
}

/// Runs `clients` threads until `stop`; each calls `op(client, i, rng)`.
pub fn drive_threads<F>(
    label: &str,
    clients: usize,
    stop: Stop,
    show_progress: bool,
    op: F,
) -> RunResult
where
    F: Fn(usize, u64, &mut rand::rngs::StdRng) -> (OpKind, bool) + Sync,
{
    let progress = Progress::new(stop);
    let count = Arc::new(AtomicU64::new(0));
    spawn_progress_bar(
        label.to_owned(),
        Arc::clone(&progress),
        Arc::clone(&count),
        show_progress,
    );
    let logs: Vec<ClientLog> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let (op, progress, count) = (&op, &progress, &count);
                s.spawn(move || {
                    let mut log = ClientLog::default();
                    let mut rng = rand::rngs::StdRng::seed_from_u64(c as u64);
                    let mut i = 0u64;
                    while progress.next() {
                        let t0 = Instant::now();
                        let (kind, ok) = op(c, i, &mut rng);
                        log.record(progress.started, t0, kind, ok);
                        count.fetch_add(1, Ordering::Relaxed);
                        i += 1;
                    }
                    log
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let seconds = progress.started.elapsed().as_secs_f64();
    progress.finished.store(true, Ordering::Relaxed);
    RunResult::from_logs(label, clients, seconds, logs)
}

/// Latency and throughput of one kind of operation.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    /// Operations done.
    pub count: u64,
    /// Per second of the run.
    pub ops_per_sec: f64,
    /// Latency percentiles and maximum, microseconds.
    pub p50_us: u64,
    /// 95th percentile.
    pub p95_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// The slowest.
    pub max_us: u64,
    /// Latency histogram: (upper bound in µs, count), log-spaced buckets.
    pub histogram: Vec<(u64, u64)>,
}

impl Summary {
    fn of(latencies: &mut [u64], seconds: f64) -> Summary {
        latencies.sort_unstable();
        let at = |p: f64| {
            latencies
                .get(((latencies.len() as f64 - 1.0) * p).round() as usize)
                .copied()
                .unwrap_or(0)
        };
        // Buckets at 1, 2, 5, 10, 20, 50, … µs.
        let mut bounds = Vec::new();
        let mut b = 1u64;
        while bounds.last().is_none_or(|&l| l < at(1.0)) {
            for m in [1, 2, 5] {
                bounds.push(b * m);
            }
            b *= 10;
        }
        let mut histogram: Vec<(u64, u64)> = bounds.iter().map(|&b| (b, 0)).collect();
        let mut k = 0;
        for &l in latencies.iter() {
            while k + 1 < histogram.len() && l > histogram[k].0 {
                k += 1;
            }
            histogram[k].1 += 1;
        }
        while histogram.len() > 1 && histogram.last().is_some_and(|&(_, n)| n == 0) {
            histogram.pop();
        }
        Summary {
            count: latencies.len() as u64,
            ops_per_sec: latencies.len() as f64 / seconds.max(1e-9),
            p50_us: at(0.5),
            p95_us: at(0.95),
            p99_us: at(0.99),
            max_us: at(1.0),
            histogram,
        }
    }
}

/// One repeat of a run against a target.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Repeat {
    /// Operations per second.
    pub ops_per_sec: f64,
    /// Operations that failed.
    pub errors: u64,
}

/// The median of repeated runs against one target: the figures of the
/// repeat with the median throughput (the lower middle one of an even
/// count), every repeat's throughput beside them, and the failures of all.
///
/// # Panics
/// If `runs` is empty.
pub fn median_of(runs: Vec<RunResult>) -> RunResult {
    assert!(!runs.is_empty(), "no run to take the median of");
    let repeats: Vec<Repeat> = runs.iter().flat_map(|r| r.repeats.clone()).collect();
    let errors = runs.iter().map(|r| r.errors).sum();
    let mut order: Vec<usize> = (0..runs.len()).collect();
    order.sort_by(|&a, &b| {
        runs[a]
            .total
            .ops_per_sec
            .total_cmp(&runs[b].total.ops_per_sec)
    });
    let middle = order[(runs.len() - 1) / 2];
    let mut chosen = runs.into_iter().nth(middle).expect("an index of runs");
    chosen.repeats = repeats;
    chosen.errors = errors;
    chosen
}

/// Runs `run` `n` times, one after the other, and returns the median
/// ([`median_of`]).
pub async fn repeated<F, Fut>(n: usize, mut run: F) -> RunResult
where
    F: FnMut() -> Fut,
    Fut: Future<Output = RunResult>,
{
    let mut runs = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        runs.push(run().await);
    }
    median_of(runs)
}

/// The result of one run against one target.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunResult {
    /// The target (`vault`, `rocksdb`, `echo`).
    pub target: String,
    /// Concurrent clients.
    pub clients: usize,
    /// Seconds measured.
    pub seconds: f64,
    /// Operations that failed (not in the figures), in every repeat.
    pub errors: u64,
    /// With `--repeat N`, every repeat's throughput and failures, in run
    /// order; the figures are those of the median repeat. One entry for a
    /// single run.
    pub repeats: Vec<Repeat>,
    /// All operations.
    pub total: Summary,
    /// Per kind of operation.
    pub ops: BTreeMap<String, Summary>,
    /// Operations finished in each 100 ms of the run.
    pub timeline: Vec<u64>,
}

impl RunResult {
    fn from_logs(target: &str, clients: usize, seconds: f64, logs: Vec<ClientLog>) -> RunResult {
        let errors = logs.iter().map(|l| l.errors).sum();
        let samples: Vec<Sample> = logs.into_iter().flat_map(|l| l.samples).collect();
        let mut by_kind: BTreeMap<OpKind, Vec<u64>> = BTreeMap::new();
        let mut all = Vec::with_capacity(samples.len());
        let buckets = (seconds * 10.0).ceil().max(1.0) as usize;
        let mut timeline = vec![0u64; buckets];
        for s in &samples {
            by_kind
                .entry(s.kind)
                .or_default()
                .push(u64::from(s.latency_us));
            all.push(u64::from(s.latency_us));
            let b = (s.at_ms / 100) as usize;
            if let Some(t) = timeline.get_mut(b.min(buckets - 1)) {
                *t += 1;
            }
        }
        let total = Summary::of(&mut all, seconds);
        RunResult {
            target: target.to_owned(),
            clients,
            seconds,
            errors,
            repeats: vec![Repeat {
                ops_per_sec: total.ops_per_sec,
                errors,
            }],
            total,
            ops: by_kind
                .into_iter()
                .map(|(k, mut v)| (k.name().to_owned(), Summary::of(&mut v, seconds)))
                .collect(),
            timeline,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_and_histograms() {
        let mut l: Vec<u64> = (1..=1000).collect();
        let s = Summary::of(&mut l, 2.0);
        assert_eq!(
            (s.count, s.p50_us, s.p99_us, s.max_us),
            (1000, 501, 990, 1000)
        );
        assert!((s.ops_per_sec - 500.0).abs() < 1e-9);
        assert_eq!(s.histogram.iter().map(|(_, c)| c).sum::<u64>(), 1000);
        assert_eq!(s.histogram[0], (1, 1));
        assert_eq!(s.histogram.last().unwrap().0, 1000);
        let empty = Summary::of(&mut [], 1.0);
        assert_eq!((empty.count, empty.max_us), (0, 0));
    }

    #[test]
    fn workloads_mix_as_documented() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let gets = (0..10_000)
            .filter(|&i| Workload::ReadHeavy.pick(i, &mut rng) == OpKind::Get)
            .count();
        assert!((9_300..9_700).contains(&gets), "{gets}");
        assert_eq!(Workload::Batch.pick(0, &mut rng), OpKind::BatchPut);
        assert_eq!(Workload::Batch.pick(1, &mut rng), OpKind::BatchGet);
        let shape = Shape {
            fields: 3,
            value_size: 10,
            records: 1,
            batch_size: 1,
        };
        let v = shape.values(&mut rng);
        assert_eq!(Shape::plaintext(&v).len(), shape.record_bytes());
    }

    #[test]
    fn the_median_repeat_gives_the_figures_and_every_failure_counts() {
        let run = |n: u64, failing: bool| {
            drive_threads("t", 1, Stop::Count(n), false, |_, i, _| {
                (OpKind::Get, !(failing && i == 0))
            })
        };
        // Three repeats: the figures are those of one of them, all three
        // throughputs are kept, and the one failure of the first counts.
        let runs = vec![run(50, true), run(60, false), run(70, false)];
        let rates: Vec<f64> = runs.iter().map(|r| r.total.ops_per_sec).collect();
        let mut sorted = rates.clone();
        sorted.sort_by(f64::total_cmp);
        let m = median_of(runs);
        assert_eq!(m.total.ops_per_sec, sorted[1]);
        assert_eq!(
            m.repeats.iter().map(|r| r.ops_per_sec).collect::<Vec<_>>(),
            rates
        );
        assert_eq!(m.errors, 1);
        assert_eq!(m.repeats[0].errors, 1);
        // One run is its own median.
        let one = median_of(vec![run(10, false)]);
        assert_eq!((one.repeats.len(), one.errors), (1, 0));
    }

    #[test]
    fn thread_runs_count_and_time() {
        let r = drive_threads("t", 3, Stop::Count(300), false, |_, i, _| {
            (
                if i.is_multiple_of(2) {
                    OpKind::Get
                } else {
                    OpKind::Put
                },
                true,
            )
        });
        assert_eq!(r.total.count, 300);
        assert_eq!(r.ops["get"].count + r.ops["put"].count, 300);
        assert_eq!(r.timeline.iter().sum::<u64>(), 300);
    }
}
