//! `vault-bench`: the load generator. Drives a vault over gRPC with N
//! concurrent clients for a fixed time or count, then (with --baselines)
//! the same records, workload and concurrency against the baselines: raw
//! RocksDB with the vault's own store options (the storage ceiling) and a
//! bare gRPC echo of the same payload size (the transport ceiling).
//! Reports ops/s and latency p50/p95/p99/max per operation, the ratios, and
//! writes `result.json` and a self-contained `report.html` with plots.
//!
//! Without --addr it starts a development vault of its own, in process, on
//! a temporary folder and a loopback port (synced writes, as in
//! production, unless --unsynced).

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use rand::Rng;
use tokio::net::TcpListener;
use vault_benches::echo::echo_client::EchoClient;
use vault_benches::echo::echo_server::EchoServer;
use vault_benches::echo::EchoMessage;
use vault_benches::load::{
    drive_async, drive_threads, median_of, repeated, OpKind, RunResult, Shape, Stop, Workload,
};
use vault_benches::report::Report;
use vault_benches::EchoService;
use vault_client::{Collection, DataCategory, FieldSchema, FieldType, Record, VaultClient};
use vault_server::storage::{RocksStore, Store, StoreOptions, Table, WriteSet};

/// The allocator of `vault-server` (jemalloc), so that a vault started here
/// uses memory as the server binary does.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The collection the bench writes.
const COLLECTION: &str = "bench";

#[derive(Debug, Parser)]
#[command(
    name = "vault-bench",
    about = "Load generator for the regional data vault: ops/s and latency over gRPC, beside raw RocksDB and a bare gRPC echo",
    after_help = "Example: vault-bench --clients 16 --duration 30 --workload read-heavy --baselines --out report\n\
                  Open OUT/report.html in a browser; OUT/result.json holds every figure."
)]
struct Args {
    /// The vault to drive (e.g. http://127.0.0.1:8200), or several servers
    /// of one vault, comma-separated (servers over one PostgreSQL
    /// database): the clients are spread over them in turn. Without it, a
    /// development vault is started in this process on a temporary folder.
    #[arg(long, env = "VAULT_ADDR")]
    addr: Option<String>,

    /// Bearer token for --addr (the started vault makes its own).
    #[arg(long, env = "VAULT_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// The purpose stated on every request.
    #[arg(long, default_value = "benchmark")]
    purpose: String,

    /// Concurrent clients (each with its own connection).
    #[arg(long, default_value_t = 16)]
    clients: usize,

    /// Seconds to run each target (ignored with --count).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,

    /// Run each target for this many operations instead of a duration.
    #[arg(long)]
    count: Option<u64>,

    /// The mix: read-heavy (95% get, 5% put), write-heavy (95% put, 5%
    /// get), batch (batch put and batch get alternately), get-only or
    /// put-only (one operation, for a clean ratio to the baselines).
    #[arg(long, value_enum, default_value_t = Workload::ReadHeavy)]
    workload: Workload,

    /// String fields per record.
    #[arg(long, default_value_t = 5)]
    fields: usize,

    /// Bytes per field value.
    #[arg(long, default_value_t = 32)]
    value_size: usize,

    /// Records written before measuring (gets read these).
    #[arg(long, default_value_t = 1000)]
    records: usize,

    /// Records per batch (batch workload; at most 500).
    #[arg(long, default_value_t = 50)]
    batch_size: usize,

    /// Also run the baselines: raw RocksDB and a bare gRPC echo.
    #[arg(long)]
    baselines: bool,

    /// Also run the PostgreSQL baseline: pgcrypto-encrypted fields, an
    /// audit row per request in the same transaction, synchronous commit;
    /// a server started in a temporary folder on loopback (PostgreSQL is
    /// installed with apt-get if missing, when running as root).
    #[arg(long)]
    postgres: bool,

    /// Acknowledge writes before the WAL is synced, in the started vault
    /// and the RocksDB baseline (to measure CPU cost rather than the disk).
    #[arg(long)]
    unsynced: bool,

    /// Directory for result.json and report.html (created if missing).
    #[arg(long, default_value = "vault-bench-report")]
    out: PathBuf,

    /// No progress bar.
    #[arg(long)]
    quiet: bool,

    /// Run each target this many times (1 to 20) and report its median
    /// repeat, with every repeat's throughput beside it.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = check(&args) {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(report) => {
            print!("{}", report.text());
            println!(
                "wrote {} and {}",
                args.out.join("result.json").display(),
                args.out.join("report.html").display()
            );
            let failures = report.failures();
            if !failures.is_empty() {
                for f in &failures {
                    eprintln!("FAILED: {f}");
                }
                eprintln!("error: operations failed: this run is not a valid measurement");
                std::process::exit(3);
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

/// Refuses options that cannot make a run.
fn check(args: &Args) -> Result<(), String> {
    if args.clients == 0 {
        return Err("--clients must be at least 1".into());
    }
    if !(1..=20).contains(&args.repeat) {
        return Err("--repeat must be 1 to 20".into());
    }
    // A day at most: Duration::from_secs_f64 takes no more than it holds.
    let duration_ok = args.duration.is_finite() && args.duration > 0.0 && args.duration <= 86_400.0;
    if args.count == Some(0) || (args.count.is_none() && !duration_ok) {
        return Err("--count must be positive, --duration positive and at most 86400".into());
    }
    if args.fields == 0 || args.value_size == 0 || args.records == 0 {
        return Err("--fields, --value-size and --records must be at least 1".into());
    }
    if !(1..=500).contains(&args.batch_size) {
        return Err("--batch-size must be 1 to 500".into());
    }
    if args.workload == Workload::Batch && args.batch_size > args.records {
        return Err("--batch-size cannot exceed --records".into());
    }
    if args.unsynced && args.postgres {
        return Err("--unsynced and --postgres do not compare: the PostgreSQL baseline commits synchronously".into());
    }
    let record = args
        .fields
        .saturating_mul(args.value_size.saturating_add(8));
    if record > 64 * 1024 {
        return Err("--fields x --value-size must stay under the vault's 64 KiB per record".into());
    }
    if args.workload == Workload::Batch && record.saturating_mul(args.batch_size) > 4 * 1024 * 1024
    {
        return Err(
            "--batch-size x record size must stay under the vault's 4 MiB per batch".into(),
        );
    }
    if args.addr.is_some() && args.token.is_none() {
        return Err("--addr needs --token (or VAULT_TOKEN)".into());
    }
    Ok(())
}

fn stop(args: &Args) -> Stop {
    match args.count {
        Some(n) => Stop::Count(n),
        None => Stop::Duration(Duration::from_secs_f64(args.duration)),
    }
}

fn shape(args: &Args) -> Shape {
    Shape {
        fields: args.fields,
        value_size: args.value_size,
        records: args.records,
        batch_size: args.batch_size,
    }
}

/// A vault started by the bench: its address, token, and what keeps it up.
struct Hosted {
    vault: Arc<vault_server::vault::Vault>,
    url: String,
    token: String,
    dir: tempfile::TempDir,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<vault_server::Result<()>>,
}

impl Hosted {
    /// Where the started vault's memory goes now: its store's caches and
    /// buffers, and its key cache (an estimate).
    fn memory(&self) -> serde_json::Value {
        let store = self.vault.storage_memory().ok();
        let key_cache = self.vault.engine().ok().map(|e| e.stats().key_cache_bytes);
        serde_json::json!({
            "block_cache_bound_bytes": store.map(|m| m.block_cache_bound),
            "block_cache_bytes": store.map(|m| m.block_cache),
            "block_cache_pinned_bytes": store.map(|m| m.block_cache_pinned),
            "memtable_bytes": store.map(|m| m.memtables),
            "table_reader_bytes": store.map(|m| m.table_readers),
            "key_cache_bytes_estimate": key_cache,
        })
    }

    /// Stops the vault and waits for it; returns the size of its data
    /// folder, and where those bytes go, before it is removed. The
    /// baselines run after this, on cores the vault no longer uses.
    async fn shutdown(self) -> (u64, serde_json::Value) {
        let _ = self.stop.send(());
        let _ = self.task.await;
        // The last handle on the vault: dropping it closes the store (and
        // joins the engine's thread), so the folder can be measured and
        // opened again below.
        let vault = self.vault;
        let _ = tokio::task::spawn_blocking(move || drop(vault)).await;
        let total = folder_bytes(self.dir.path());
        let db = self.dir.path().join("db");
        let by_table = tokio::task::spawn_blocking(move || bytes_by_table(&db))
            .await
            .unwrap_or(serde_json::Value::Null);
        (total, by_table)
    }
}

async fn host_vault(unsynced: bool) -> Result<Hosted, String> {
    use vault_server::service::{self, Authenticator};
    use vault_server::vault::{OpenOptions, Vault};
    let dir = tempfile::tempdir().map_err(|e| format!("temporary folder: {e}"))?;
    let mut opts = OpenOptions::dev(dir.path(), "eu".parse().map_err(|e| format!("{e:?}"))?);
    opts.store.sync_writes = !unsynced;
    let vault = tokio::task::spawn_blocking(move || Vault::open_dev(opts))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("starting the vault: {e}"))?;
    let token = format!("bench-{:016x}", rand::thread_rng().gen::<u64>());
    let mut auth = Authenticator::new();
    auth.add_token(&token, vault_server::dev::dev_principal());
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("binding a port: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let vault = Arc::new(vault);
    let task = tokio::spawn(service::serve(
        listener,
        Arc::clone(&vault),
        Arc::new(auth),
        async {
            let _ = rx.await;
        },
    ));
    Ok(Hosted {
        vault,
        url: format!("http://{addr}"),
        token,
        dir,
        stop: tx,
        task,
    })
}

fn record(shape: &Shape, n: usize, rng: &mut impl Rng) -> Record {
    let mut r = Record::new(COLLECTION, Shape::id(n), Shape::subject(n)).with("key", Shape::key(n));
    for (name, value) in shape.values(rng) {
        r = r.with(name, value);
    }
    r
}

async fn run(args: &Args) -> Result<Report, String> {
    let shape = shape(args);
    let hosted = match &args.addr {
        Some(_) => None,
        None => Some(host_vault(args.unsynced).await?),
    };
    let (url, token) = match (&hosted, &args.addr, &args.token) {
        (Some(h), _, _) => (h.url.clone(), h.token.clone()),
        (None, Some(a), Some(t)) => (a.clone(), t.clone()),
        _ => return Err("--addr needs --token".into()),
    };
    let urls: Vec<String> = url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect();
    if urls.is_empty() {
        return Err("--addr names no server".into());
    }
    let connect = |c: usize| {
        VaultClient::builder(urls[c % urls.len()].clone())
            .token(token.clone())
            .purpose(args.purpose.clone())
            .connect()
    };
    let admin = connect(0)
        .await
        .map_err(|e| format!("connecting to {}: {e}", urls[0]))?;
    // `key`: one indexed value per record, for finds.
    let mut collection = Collection::new(COLLECTION)
        .description("vault-bench records")
        .field(FieldSchema::new("key", FieldType::String, DataCategory::Other).indexed());
    for f in 0..shape.fields {
        collection = collection.field(FieldSchema::new(
            format!("f{f}"),
            FieldType::String,
            DataCategory::Other,
        ));
    }
    match admin.create_collection(&collection).await {
        Ok(_) | Err(vault_client::Error::AlreadyExists(_)) => {}
        Err(e) => return Err(format!("creating collection {COLLECTION}: {e}")),
    }
    let mut rng = rand::thread_rng();
    // Chunks under the vault's batch limits (500 records, 4 MiB), made one
    // at a time: the load generator holds no copy of the data set, so the
    // process's memory is the vault's and the clients' working set.
    let per_chunk = (2 * 1024 * 1024 / shape.record_bytes().max(1)).clamp(1, 100);
    let mut next = 0;
    while next < shape.records {
        let end = (next + per_chunk).min(shape.records);
        let chunk: Vec<Record> = (next..end).map(|n| record(&shape, n, &mut rng)).collect();
        admin
            .put_many(&chunk)
            .await
            .map_err(|e| format!("writing the records: {e}"))?;
        next = end;
    }

    let mut clients = Vec::with_capacity(args.clients);
    for c in 0..args.clients {
        clients.push(connect(c).await.map_err(|e| e.to_string())?);
    }
    let clients = Arc::new(clients);
    let workload = args.workload;
    let vault_run = repeated(args.repeat, || {
        drive_async("vault", args.clients, stop(args), !args.quiet, {
            let clients = Arc::clone(&clients);
            move |c, i, mut rng| {
                let client = clients[c].clone();
                async move {
                    let kind = workload.pick(i, &mut rng);
                    let n = rng.gen_range(0..shape.records);
                    let ok = match kind {
                        OpKind::Get => client.get(COLLECTION, &Shape::id(n)).await.is_ok(),
                        OpKind::Find => client
                            .find(COLLECTION, "key", Shape::key(n), &[], 1)
                            .await
                            .is_ok_and(|found| found.len() == 1),
                        OpKind::Put => client.put(&record(&shape, n, &mut rng)).await.is_ok(),
                        OpKind::BatchPut => {
                            let batch: Vec<Record> = (0..shape.batch_size)
                                .map(|k| record(&shape, (n + k) % shape.records, &mut rng))
                                .collect();
                            client.put_many(&batch).await.is_ok()
                        }
                        OpKind::BatchGet => {
                            let ids: Vec<String> = (0..shape.batch_size)
                                .map(|k| Shape::id((n + k) % shape.records))
                                .collect();
                            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                            client.get_many(COLLECTION, &ids, &[]).await.is_ok()
                        }
                    };
                    (kind, ok, rng)
                }
            }
        })
    })
    .await;
    // Memory now (clients and the started vault, before any baseline),
    // then the vault stops: what its data folder holds (records, keys,
    // audit events, RocksDB's own files), for sizing.
    let peak_rss = peak_rss_bytes();
    let rss = rss_bytes();
    let vault_memory = hosted.as_ref().map(Hosted::memory);
    if let Some(m) = &vault_memory {
        let fmt = |b: Option<u64>| b.map_or("?".into(), |b| format!("{:.1}", b as f64 / 1048576.0));
        let mib = |k: &str| fmt(m[k].as_u64());
        eprintln!(
            "memory now, MiB: process {} (peak {}); the vault's block cache {} of {} (pinned {}), memtables {}, table readers {}, key cache about {}",
            fmt(rss),
            fmt(peak_rss),
            mib("block_cache_bytes"),
            mib("block_cache_bound_bytes"),
            mib("block_cache_pinned_bytes"),
            mib("memtable_bytes"),
            mib("table_reader_bytes"),
            mib("key_cache_bytes_estimate"),
        );
    }
    drop(clients);
    drop(admin);
    let (disk_bytes, disk_by_table) = match hosted {
        Some(h) => {
            let (total, by_table) = h.shutdown().await;
            (Some(total), by_table)
        }
        None => (None, serde_json::Value::Null),
    };
    let mut runs = vec![vault_run];
    if args.baselines {
        runs.push(rocksdb_baseline(args, shape)?);
        runs.push(echo_baseline(args, shape).await?);
    }
    if args.postgres {
        runs.push(postgres_baseline(args, shape).await?);
    }

    let report = Report {
        version: 1,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        config: serde_json::json!({
            "addr": args.addr,
            "self_hosted": args.addr.is_none(),
            "clients": args.clients,
            "duration_s": args.count.is_none().then_some(args.duration),
            "count": args.count,
            "workload": args.workload,
            "shape": shape,
            "record_plaintext_bytes": shape.record_bytes(),
            // Unknown for a vault at --addr: its own configuration says.
            "synced_writes": args.addr.is_none().then_some(!args.unsynced),
            "self_hosted_data_folder_bytes": disk_bytes,
            // The WAL's files, then each table's SST files and memtables
            // after reopening (the log replayed): overlapping views.
            "self_hosted_data_folder_bytes_by_table": disk_by_table,
            "peak_rss_bytes_after_vault_run": peak_rss,
            "rss_bytes_after_vault_run": rss,
            // The started vault's caches and buffers at that moment.
            "self_hosted_memory": vault_memory,
        }),
        ratios: Report::ratios_of(&runs),
        runs,
    };
    write_report(&args.out, &report)?;
    Ok(report)
}

fn write_report(out: &std::path::Path, report: &Report) -> Result<(), String> {
    std::fs::create_dir_all(out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let json = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
    for (name, text) in [("result.json", json), ("report.html", report.html())] {
        let path = out.join(name);
        std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}

/// The same records and mix written to and read from RocksDB directly,
/// through the vault's own store (same options, same sync), plaintext.
fn rocksdb_baseline(args: &Args, shape: Shape) -> Result<RunResult, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temporary folder: {e}"))?;
    let store = RocksStore::open(
        &dir.path().join("db"),
        &StoreOptions {
            sync_writes: !args.unsynced,
            ..StoreOptions::default()
        },
    )
    .map_err(|e| format!("opening RocksDB: {e}"))?;
    let mut rng = rand::thread_rng();
    let mut ws = WriteSet::new();
    for n in 0..shape.records {
        ws.put(
            Table::Records,
            Shape::id(n).into_bytes(),
            Shape::plaintext(&shape.values(&mut rng)),
        );
    }
    store.write(ws).map_err(|e| e.to_string())?;
    let workload = args.workload;
    let op = |_, i, rng: &mut rand::rngs::StdRng| {
        let kind = workload.pick(i, rng);
        let n = rng.gen_range(0..shape.records);
        let ok = match kind {
            OpKind::Get | OpKind::Find => store
                .get(Table::Records, Shape::id(n).as_bytes())
                .is_ok_and(|v| v.is_some()),
            OpKind::Put => {
                let mut ws = WriteSet::new();
                ws.put(
                    Table::Records,
                    Shape::id(n).into_bytes(),
                    Shape::plaintext(&shape.values(rng)),
                );
                store.write(ws).is_ok()
            }
            OpKind::BatchPut => {
                let mut ws = WriteSet::new();
                for k in 0..shape.batch_size {
                    ws.put(
                        Table::Records,
                        Shape::id((n + k) % shape.records).into_bytes(),
                        Shape::plaintext(&shape.values(rng)),
                    );
                }
                store.write(ws).is_ok()
            }
            OpKind::BatchGet => {
                let keys: Vec<Vec<u8>> = (0..shape.batch_size)
                    .map(|k| Shape::id((n + k) % shape.records).into_bytes())
                    .collect();
                store.multi_get(Table::Records, &keys).is_ok()
            }
        };
        (kind, ok)
    };
    let runs = (0..args.repeat)
        .map(|_| drive_threads("rocksdb", args.clients, stop(args), !args.quiet, op))
        .collect();
    Ok(median_of(runs))
}

/// A bare tonic echo of the same payloads (a record's plaintext, or a
/// batch's), same concurrency: the transport ceiling.
async fn echo_baseline(args: &Args, shape: Shape) -> Result<RunResult, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("binding a port: {e}"))?;
    let addr: SocketAddr = listener.local_addr().map_err(|e| e.to_string())?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EchoServer::new(EchoService).max_decoding_message_size(16 * 1024 * 1024))
            .serve_with_incoming_shutdown(tokio_stream_incoming(listener), async {
                let _ = rx.await;
            }),
    );
    let mut clients = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| format!("connecting to the echo server: {e}"))?;
        clients.push(EchoClient::new(channel).max_decoding_message_size(16 * 1024 * 1024));
    }
    let clients = Arc::new(clients);
    let workload = args.workload;
    let one = shape.record_bytes();
    let result = repeated(args.repeat, || {
        drive_async("echo", args.clients, stop(args), !args.quiet, {
            let clients = Arc::clone(&clients);
            move |c, i, mut rng| {
                let mut client = clients[c].clone();
                async move {
                    let kind = workload.pick(i, &mut rng);
                    let size = match kind {
                        OpKind::Get | OpKind::Put | OpKind::Find => one,
                        OpKind::BatchPut | OpKind::BatchGet => one * shape.batch_size,
                    };
                    let payload = vec![b'x'; size];
                    let ok = client
                        .echo(EchoMessage { payload })
                        .await
                        .is_ok_and(|r| r.into_inner().payload.len() == size);
                    (kind, ok, rng)
                }
            }
        })
    })
    .await;
    let _ = tx.send(());
    let _ = server.await;
    Ok(result)
}

/// The same records, mix and concurrency through PostgreSQL doing the
/// vault's job (see `vault_benches::postgres`).
async fn postgres_baseline(args: &Args, shape: Shape) -> Result<RunResult, String> {
    use vault_benches::postgres::{self, Prepared, Statements};
    let max_connections = args.clients;
    let server = tokio::task::spawn_blocking(move || postgres::Server::start(max_connections))
        .await
        .map_err(|e| e.to_string())??;
    let setup = server.connect().await?;
    setup
        .batch_execute(&Statements::schema(shape.fields))
        .await
        .map_err(|e| format!("PostgreSQL schema: {e}"))?;
    let statements = Statements::new(shape.fields);
    let key: Arc<str> = format!("{:032x}", rand::thread_rng().gen::<u128>()).into();
    let prepared = Prepared::new(&setup, &statements).await?;
    postgres::preload(&setup, &prepared, &shape, &key, &mut rand::thread_rng()).await?;
    // One connection per client, its statements prepared once.
    let mut clients = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        let client = server.connect().await?;
        let prepared = Prepared::new(&client, &statements).await?;
        clients.push(Arc::new((client, prepared)));
    }
    let clients = Arc::new(clients);
    let workload = args.workload;
    let result = repeated(args.repeat, || {
        drive_async("postgres", args.clients, stop(args), !args.quiet, {
            let clients = Arc::clone(&clients);
            let key = Arc::clone(&key);
            move |c, i, mut rng| {
                let (conn, key) = (Arc::clone(&clients[c]), Arc::clone(&key));
                async move {
                    let (client, statements) = (&conn.0, &conn.1);
                    let kind = workload.pick(i, &mut rng);
                    let n = rng.gen_range(0..shape.records);
                    // Sorted: two batches that overlap lock rows in one order.
                    let mut batch: Vec<usize> = (0..shape.batch_size)
                        .map(|k| (n + k) % shape.records)
                        .collect();
                    batch.sort_unstable();
                    let ok = match kind {
                        OpKind::Get | OpKind::Find => postgres::get(client, statements, &key, n)
                            .await
                            .is_ok_and(|v| v.len() == shape.fields),
                        OpKind::Put => postgres::put(client, statements, &shape, &key, n, &mut rng)
                            .await
                            .is_ok(),
                        OpKind::BatchPut => {
                            postgres::batch_put(client, statements, &shape, &key, &batch, &mut rng)
                                .await
                                .is_ok()
                        }
                        OpKind::BatchGet => postgres::batch_get(client, statements, &key, &batch)
                            .await
                            .is_ok(),
                    };
                    (kind, ok, rng)
                }
            }
        })
    })
    .await;
    drop(clients);
    drop(setup);
    tokio::task::spawn_blocking(move || drop(server))
        .await
        .map_err(|e| e.to_string())?;
    Ok(result)
}

/// Where a closed data folder's bytes go: its write-ahead log files, and
/// each table's SST files and memtables once reopened (the reopening
/// replays the log into memtables). Null if it cannot be read.
fn bytes_by_table(db: &std::path::Path) -> serde_json::Value {
    let wal: u64 = std::fs::read_dir(db)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                .filter_map(|e| e.metadata().ok().map(|m| m.len()))
                .sum()
        })
        .unwrap_or(0);
    let store = match RocksStore::open(db, &StoreOptions::default()) {
        Ok(store) => store,
        Err(e) => {
            eprintln!("warning: the data folder's tables cannot be sized: {e}");
            return serde_json::Value::Null;
        }
    };
    let mut out = serde_json::Map::new();
    out.insert("wal_files".into(), wal.into());
    for table in Table::ALL {
        if let Ok(n) = store.table_bytes(table) {
            out.insert(table.name().into(), n.into());
        }
    }
    out.into()
}

/// Bytes of every file under `dir`.
fn folder_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => folder_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The peak resident memory of this process so far, from /proc on Linux.
fn peak_rss_bytes() -> Option<u64> {
    proc_status_bytes("VmHWM:")
}

/// The resident memory of this process now, from /proc on Linux.
fn rss_bytes() -> Option<u64> {
    proc_status_bytes("VmRSS:")
}

fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Accepted connections of `listener`, with Nagle off (as the vault does).
fn tokio_stream_incoming(
    listener: TcpListener,
) -> impl tonic::codegen::tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    let incoming = tonic::codegen::tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::codegen::tokio_stream::StreamExt::map(incoming, |conn| {
        if let Ok(s) = &conn {
            let _ = s.set_nodelay(true);
        }
        conn
    })
}
