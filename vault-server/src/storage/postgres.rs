//! The PostgreSQL store: one table of `(k bytea PRIMARY KEY, v bytea)`
//! per [`Table`], named `vault_<table>`, and the sealed keyring in a table
//! of its own (`vault_keyring`, one row), apart from the record tables.
//!
//! - **Atomic and durable.** A [`WriteSet`] is one transaction, committed
//!   with `synchronous_commit = on` (the server's WAL flushed, and the
//!   synchronous standbys' too where the cluster has them) unless the
//!   store was opened with `sync_writes = false`.
//! - **Ordering.** `bytea` compares byte by byte, then by length: the
//!   order of RocksDB's default comparator, so scans by prefix and from a
//!   key return what they return on RocksDB.
//! - **Conditions.** A set's conditions ([`WriteSet::expect`]) are read in
//!   its transaction: a row that exists `FOR UPDATE` (held as read until
//!   the set commits, so two servers appending to one audit log never both
//!   pass the same check, and a write of it without a condition, such as a
//!   subject-key rotation's delete, waits for the set or makes it fail),
//!   an absent one under a transaction-scoped advisory lock of its key.
//! - **Fences** ([`Store::hold_fences`]): a hold is session advisory locks
//!   (one per fence, taken in ascending order) on a pooled connection,
//!   given back by `pg_advisory_unlock_all` (or the connection dropped).
//!   Taking a hold and letting it go each move the fences' epochs (in
//!   `vault_fences`) on, so a set made before either never passes, even
//!   when the holder's own write failed. A set that expects fences takes
//!   each one's transaction lock shared without waiting (held elsewhere:
//!   `Error::Conflict`), then reads their epochs in a later statement (so
//!   it sees a holder's commit); it also tries the fences' commit locks
//!   shared. A set that bumps them takes those commit locks first, moves
//!   the fences on, and is written only if its holder's session still
//!   holds them (`pg_locks`): a hold lost with its connection (a failover,
//!   a terminated session) fails the holder's write rather than let it
//!   land after writes it no longer kept out, and no writer passes while
//!   the holder's write is in flight.
//! - **Encryption in transit.** With `sslmode=require` in the connection
//!   string every connection speaks TLS (rustls, `ring`), and the
//!   database's certificate must chain to the configured CA file (else the
//!   system's roots) and name the host connected to: stricter than libpq's
//!   `require`, which checks neither. Without it the connection is plain,
//!   which [`PgStore::open`] refuses for any host but loopback or a Unix
//!   socket unless the options allow it.
//! - **Isolation.** Every write is a `READ COMMITTED` transaction,
//!   whatever the database's default: the fence and condition checks rely
//!   on each statement seeing what committed before it.
//! - **Blocking calls over an async driver.** `tokio-postgres` runs on a
//!   small runtime of the store's own; each [`Store`] call hands its work
//!   to it and waits. A caller on another runtime's worker (the record
//!   path) waits one round trip, as it would for a RocksDB read that
//!   misses the cache.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use super::{Condition, FenceHold, KeyringStore, Op, Store, Table, WriteSet};
use crate::{Error, Result};

/// How to reach the database.
#[derive(Clone)]
pub struct PgOptions {
    /// A libpq connection string, key-value (`host=… port=… user=…
    /// dbname=…`) or URL form. Several hosts with
    /// `target_session_attrs=read-write` follow a failover to the new
    /// primary.
    pub url: String,
    /// Connections in the pool.
    pub pool_size: usize,
    /// Commit with `synchronous_commit = on`. Off only for benchmarks.
    pub sync_writes: bool,
    /// How long a request waits for a connection (or to make one).
    pub connect_timeout: Duration,
    /// The CA certificates (PEM) the database's certificate must chain to,
    /// with `sslmode=require`; `None`: the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Connect without TLS to hosts other than loopback (a private network
    /// the operator vouches for).
    pub allow_plaintext: bool,
}

impl std::fmt::Debug for PgOptions {
    // The connection string may hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("pool_size", &self.pool_size)
            .field("sync_writes", &self.sync_writes)
            .field("ca_file", &self.ca_file)
            .field("allow_plaintext", &self.allow_plaintext)
            .finish_non_exhaustive()
    }
}

impl PgOptions {
    /// Defaults for `url`: 16 connections, synced commits, 10 s to connect.
    pub fn new(url: impl Into<String>) -> Self {
        PgOptions {
            url: url.into(),
            pool_size: 16,
            sync_writes: true,
            connect_timeout: Duration::from_secs(10),
            ca_file: None,
            allow_plaintext: false,
        }
    }
}

/// How connections to the database are made: TLS as configured, or plain.
#[derive(Clone)]
enum Tls {
    Plain,
    Rustls(tokio_postgres_rustls::MakeRustlsConnect),
}

impl Tls {
    /// From the connection string's `sslmode` and the options: TLS with a
    /// verifying rustls client for `require`; plain otherwise, refused for a
    /// host that is neither loopback nor a Unix socket unless the options
    /// allow it.
    fn of(config: &tokio_postgres::Config, options: &PgOptions) -> Result<Tls> {
        use tokio_postgres::config::{Host, SslMode};
        if config.get_ssl_mode() != SslMode::Require {
            if options.ca_file.is_some() {
                return Err(Error::Config(
                    "storage.postgres_ca_file is set but the connection string does not say \
                     sslmode=require"
                        .into(),
                ));
            }
            // The address connected to is `hostaddr` where it is given
            // (`host` then only names the server).
            let remote = config
                .get_hosts()
                .iter()
                .find_map(|h| match h {
                    Host::Tcp(name) if !is_loopback(name) => Some(name.clone()),
                    _ => None,
                })
                .or_else(|| {
                    config
                        .get_hostaddrs()
                        .iter()
                        .find(|a| !a.is_loopback())
                        .map(|a| a.to_string())
                });
            if let (Some(host), false) = (remote, options.allow_plaintext) {
                return Err(Error::Config(format!(
                    "the connection to the PostgreSQL host {host} would not be encrypted: add \
                     sslmode=require to storage.postgres_url (the database's certificate is \
                     checked against storage.postgres_ca_file, or the system's roots), or set \
                     storage.postgres_allow_plaintext = true for a network you trust"
                )));
            }
            return Ok(Tls::Plain);
        }
        let mut roots = rustls::RootCertStore::empty();
        match &options.ca_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    Error::io(
                        format!("reading storage.postgres_ca_file {}", path.display()),
                        e,
                    )
                })?;
                let certs = crate::service::tls::certificates(&pem).map_err(|e| {
                    Error::Config(format!("storage.postgres_ca_file {}: {e}", path.display()))
                })?;
                for cert in certs {
                    roots.add(cert).map_err(|e| {
                        Error::Config(format!(
                            "storage.postgres_ca_file {}: a certificate is not a usable trust \
                             anchor: {e}",
                            path.display()
                        ))
                    })?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for cert in found.certs {
                    // A system root rustls cannot use is passed over.
                    let _ = roots.add(cert);
                }
                if roots.is_empty() {
                    return Err(Error::Config(
                        "sslmode=require, but the system has no CA certificates: set \
                         storage.postgres_ca_file"
                            .into(),
                    ));
                }
            }
        }
        let client =
            rustls::ClientConfig::builder_with_provider(Arc::new(crate::service::tls::provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| Error::Config(format!("TLS to PostgreSQL: {e}")))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        Ok(Tls::Rustls(tokio_postgres_rustls::MakeRustlsConnect::new(
            client,
        )))
    }

    /// A pool manager over `config`.
    fn manager(&self, config: tokio_postgres::Config) -> Manager {
        let mc = || ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        match self {
            Tls::Plain => Manager::from_config(config, NoTls, mc()),
            Tls::Rustls(t) => Manager::from_config(config, t.clone(), mc()),
        }
    }

    /// A connection of its own (a session that holds a lock), its
    /// connection task spawned.
    async fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> std::result::Result<tokio_postgres::Client, tokio_postgres::Error> {
        match self {
            Tls::Plain => {
                let (client, connection) = config.connect(NoTls).await?;
                tokio::spawn(connection);
                Ok(client)
            }
            Tls::Rustls(t) => {
                let (client, connection) = config.connect(t.clone()).await?;
                tokio::spawn(connection);
                Ok(client)
            }
        }
    }
}

/// How long the first connection at start may take.
fn options_timeout(config: &tokio_postgres::Config) -> Duration {
    config
        .get_connect_timeout()
        .copied()
        .unwrap_or(Duration::from_secs(10))
        .saturating_mul(u32::try_from(config.get_hosts().len().max(1)).unwrap_or(1))
}

/// Whether a host name or address is this machine's loopback.
fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Tables of bytes in PostgreSQL.
pub struct PgStore {
    /// The driver's runtime; shut down in the background on drop (a store
    /// may be dropped on another runtime's worker).
    runtime: Option<tokio::runtime::Runtime>,
    pool: Pool,
    config: tokio_postgres::Config,
    /// How sessions of their own (the leader's, the appender's) connect.
    tls: Tls,
    /// The connection holding the leader lock, while this server leads.
    leader: std::sync::Mutex<Option<tokio_postgres::Client>>,
    /// The connection that takes the audit append lock (one audit writer
    /// per process uses it at a time).
    appender: std::sync::Mutex<Option<tokio_postgres::Client>>,
    sync_writes: bool,
    /// Where it connects, without credentials (for messages).
    target: String,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("target", &self.target)
            .field("sync_writes", &self.sync_writes)
            .finish_non_exhaustive()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The table's name in the database.
fn table_name(table: Table) -> &'static str {
    match table {
        Table::Meta => "vault_meta",
        Table::Collections => "vault_collections",
        Table::Records => "vault_records",
        Table::SubjectKeys => "vault_subject_keys",
        Table::Index => "vault_index",
        Table::Audit => "vault_audit",
        Table::SubjectRecords => "vault_subject_records",
        Table::Receipts => "vault_receipts",
    }
}

const KEYRING_TABLE: &str = "vault_keyring";

/// The session advisory lock whose holder leads the background jobs.
const LEADER_LOCK: i64 = 0x7661_756c_7400_0002;

/// The session advisory lock a server holds while it appends to the audit log.
const APPEND_LOCK: i64 = 0x7661_756c_7400_0003;

/// How long a server waits for the append lock before it appends without
/// it (its write is conditional on the log's head all the same).
const APPEND_LOCK_WAIT: Duration = Duration::from_secs(2);

/// The advisory lock that serialises creating the tables (two servers
/// starting at once on an empty database).
const SCHEMA_LOCK: i64 = 0x7661_756c_7400_0001;

/// The fences' epochs, one row per fence ever moved.
const FENCE_TABLE: &str = "vault_fences";

/// The first key of the two-key advisory locks of fences (the second is
/// the fence): a key space apart from the one-key locks above.
const FENCE_LOCKS: i32 = 0x7661_7566;

/// The first key of the transaction locks a holder's write takes (on a
/// connection other than its hold's) while it moves its fences on, and a
/// writer's commit tries shared: a writer never reads an epoch that a
/// holder's write in flight is moving on.
const FENCE_COMMIT_LOCKS: i32 = 0x7661_7567;

/// How long a fence hold waits for other holders, in all.
const FENCE_WAIT: Duration = Duration::from_secs(10);

/// The epochs of fences (`$1`) that ever moved, as `(f, epoch)` rows.
const READ_EPOCHS: &str = "SELECT f, epoch FROM vault_fences WHERE f = ANY($1)";

/// Moves fences (`$1`) on to their next epoch.
const BUMP_FENCES: &str = "INSERT INTO vault_fences AS t (f, epoch) \
     SELECT f, 1 FROM UNNEST($1::int4[]) AS f ON CONFLICT (f) DO UPDATE SET epoch = t.epoch + 1";

/// The smallest key greater than every key starting with `prefix`, or
/// `None` when there is none (a prefix of only `0xFF` bytes).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The advisory lock of a condition's key: 64 bits of its SHA-256.
fn condition_lock(table: Table, key: &[u8]) -> i64 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"vault/v1/pg-condition");
    h.update(table.name().as_bytes());
    h.update([0]);
    h.update(key);
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    i64::from_be_bytes(first)
}

/// A driver error as the vault's: a full disk says so; a lost or refused
/// connection is `UNAVAILABLE` (a failover in progress: try again); the
/// rest is a storage error whose detail goes to the log only.
fn pg_err(e: tokio_postgres::Error) -> Error {
    use tokio_postgres::error::SqlState;
    match e.code() {
        Some(c) if *c == SqlState::DISK_FULL => {
            tracing::warn!(error = %e, "storage full");
            Error::Unavailable(super::STORAGE_FULL.into())
        }
        Some(c)
            if *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW
                || *c == SqlState::READ_ONLY_SQL_TRANSACTION =>
        {
            tracing::warn!(error = %e, "the database is not taking writes");
            Error::Unavailable(UNREACHABLE.into())
        }
        // Lost to another transaction (the vault's own conditions aside):
        // nothing was written, try again.
        Some(c)
            if *c == SqlState::T_R_DEADLOCK_DETECTED
                || *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::LOCK_NOT_AVAILABLE =>
        {
            tracing::warn!(error = %e, "a write lost to another transaction");
            Error::Conflict
        }
        Some(_) => Error::Storage(e.to_string()),
        None if tls_failure(&e).is_some() => {
            // The reason goes to the log (and to the start's error), not
            // to clients.
            tracing::warn!(error = %e, "TLS to the database failed");
            Error::Unavailable(
                "TLS to the vault's database failed (the server log says why); try again".into(),
            )
        }
        None if e.is_closed() || e.as_db_error().is_none() => {
            tracing::warn!(error = %e, "the database connection failed");
            Error::Unavailable(UNREACHABLE.into())
        }
        None => Error::Storage(e.to_string()),
    }
}

/// The TLS error under a driver error, if it is one (a certificate that
/// does not verify, a handshake refused).
fn tls_failure(e: &tokio_postgres::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(t) = s.downcast_ref::<rustls::Error>() {
            return Some(t.to_string());
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if let Some(t) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(t.to_string());
            }
        }
        source = s.source();
    }
    None
}

/// What a request answers when the database cannot be reached.
const UNREACHABLE: &str =
    "the vault's database cannot be reached (a failover may be in progress); try again";

fn pool_err(e: deadpool_postgres::PoolError) -> Error {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_err(e),
        other => {
            tracing::warn!(error = %other, "no database connection");
            Error::Unavailable(UNREACHABLE.into())
        }
    }
}

/// Rows read by one query of [`Store::visit`].
const VISIT_CHUNK: i64 = 4096;

impl PgStore {
    /// Connects and creates the tables that are missing.
    pub fn open(options: &PgOptions) -> Result<Self> {
        // The driver's message may quote the string, password and all.
        let config: tokio_postgres::Config = options.url.parse().map_err(|_| {
            Error::Config(
                "the PostgreSQL connection string does not parse (libpq key-value or \
                 postgresql:// URL form)"
                    .into(),
            )
        })?;
        let mut config = config;
        // A database host that vanishes (no reset: a partition, a power
        // loss) is noticed in about 30 s rather than at the kernel's two
        // hours: the leader lock, the append lock and pooled connections
        // held to it are let go, and requests answer UNAVAILABLE.
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3)
            .tcp_user_timeout(Duration::from_secs(30));
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(options.connect_timeout);
        }
        let target = describe(&config);
        let tls = Tls::of(&config, options)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("vault-pg")
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the PostgreSQL driver's runtime", e))?;
        let manager = tls.manager(config.clone());
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(options.connect_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| Error::Config(format!("PostgreSQL pool: {e}")))?;
        if !options.sync_writes {
            tracing::warn!(
                "commits are acknowledged before the WAL is flushed: a crash can lose them"
            );
        }
        // A first connection, so that a TLS failure at start says why
        // (waited for as `run` waits: the caller may be on a runtime).
        {
            let (config, tls) = (config.clone(), tls.clone());
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            runtime.spawn(async move {
                let first =
                    tokio::time::timeout(options_timeout(&config), tls.connect(&config)).await;
                let _ = tx.send(match first {
                    Ok(Err(e)) => tls_failure(&e),
                    _ => None,
                });
            });
            if let Ok(Some(why)) = rx.recv() {
                return Err(Error::Unavailable(format!(
                    "TLS to the vault's database failed ({why}) at {target}: check \
                     storage.postgres_ca_file and the database's certificate"
                )));
            }
        }
        let store = PgStore {
            runtime: Some(runtime),
            pool,
            config,
            tls,
            leader: std::sync::Mutex::new(None),
            appender: std::sync::Mutex::new(None),
            sync_writes: options.sync_writes,
            target,
        };
        store.create_tables().map_err(|e| match e {
            Error::Unavailable(m) if m == UNREACHABLE => Error::Unavailable(format!(
                "cannot reach the vault's database at {}",
                store.target
            )),
            Error::Unavailable(m) => Error::Unavailable(format!("{m} (database {})", store.target)),
            Error::Storage(m) => Error::Storage(format!(
                "cannot set up the vault's tables at {}: {m}",
                store.target
            )),
            other => other,
        })?;
        Ok(store)
    }

    /// Runs `f` on the driver's runtime and waits for it.
    fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        let rt = self
            .runtime
            .as_ref()
            .ok_or_else(|| Error::Storage("the PostgreSQL store is closed".into()))?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv()
            .map_err(|_| Error::Storage("the PostgreSQL driver stopped".into()))?
    }

    fn create_tables(&self) -> Result<()> {
        let pool = self.pool.clone();
        self.run(async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let tx = client.transaction().await.map_err(pg_err)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
                .await
                .map_err(pg_err)?;
            let mut ddl = String::new();
            for t in Table::ALL {
                ddl.push_str(&format!(
                    "CREATE TABLE IF NOT EXISTS {} (k bytea PRIMARY KEY, v bytea NOT NULL);",
                    table_name(t)
                ));
            }
            ddl.push_str(&format!(
                "CREATE TABLE IF NOT EXISTS {KEYRING_TABLE} \
                 (id smallint PRIMARY KEY CHECK (id = 1), generation bigint NOT NULL, \
                 sealed bytea NOT NULL);"
            ));
            ddl.push_str(&format!(
                "CREATE TABLE IF NOT EXISTS {FENCE_TABLE} \
                 (f integer PRIMARY KEY, epoch bigint NOT NULL);"
            ));
            tx.batch_execute(&ddl).await.map_err(pg_err)?;
            tx.commit().await.map_err(pg_err)
        })
    }

    /// Vacuums `table` (outside any transaction).
    fn vacuum(&self, name: &'static str) -> Result<()> {
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(pool_err)?;
            client
                .batch_execute(&format!("VACUUM {name}"))
                .await
                .map_err(pg_err)
        })
    }

    /// `SELECT k, v` over `[start, end)` of `table`, in key order (or
    /// reversed), at most `limit` rows.
    fn range(
        &self,
        table: Table,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: Option<i64>,
        descending: bool,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let pool = self.pool.clone();
        let name = table_name(table);
        self.run(async move {
            let client = pool.get().await.map_err(pool_err)?;
            let order = if descending { "DESC" } else { "ASC" };
            let end_clause = if end.is_some() { "AND k < $2" } else { "" };
            let limit_clause = if limit.is_some() {
                if end.is_some() {
                    "LIMIT $3"
                } else {
                    "LIMIT $2"
                }
            } else {
                ""
            };
            let sql = format!(
                "SELECT k, v FROM {name} WHERE k >= $1 {end_clause} ORDER BY k {order} {limit_clause}"
            );
            let stmt = client.prepare_cached(&sql).await.map_err(pg_err)?;
            let rows = match (&end, &limit) {
                (Some(e), Some(l)) => client.query(&stmt, &[&start, e, l]).await,
                (Some(e), None) => client.query(&stmt, &[&start, e]).await,
                (None, Some(l)) => client.query(&stmt, &[&start, l]).await,
                (None, None) => client.query(&stmt, &[&start]).await,
            }
            .map_err(pg_err)?;
            rows.into_iter()
                .map(|r| Ok((r.try_get(0).map_err(pg_err)?, r.try_get(1).map_err(pg_err)?)))
                .collect()
        })
    }
}

/// `host:port,…/dbname` of a connection's configuration.
fn describe(config: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let ports = config.get_ports();
    let addrs = config.get_hostaddrs();
    let count = config.get_hosts().len().max(addrs.len());
    let hosts: Vec<String> = (0..count)
        .map(|i| {
            let host = match (config.get_hosts().get(i), addrs.get(i)) {
                (Some(Host::Tcp(name)), Some(addr)) => format!("{name} ({addr})"),
                (Some(Host::Tcp(name)), None) => name.clone(),
                (Some(Host::Unix(path)), _) => path.display().to_string(),
                (None, Some(addr)) => addr.to_string(),
                (None, None) => String::new(),
            };
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    format!(
        "{}/{}",
        hosts.join(","),
        config.get_dbname().unwrap_or("(default)")
    )
}

/// The last change of each key of a set, grouped by table: applying them
/// in any order equals applying the set's changes in order.
#[derive(Default)]
struct Changes {
    /// Per table: keys and their values.
    puts: Vec<(Keys, Keys)>,
    /// Per table: keys.
    deletes: Vec<Keys>,
}

/// Keys (or values) of one statement.
type Keys = Vec<Vec<u8>>;

fn final_changes(set: &WriteSet) -> Changes {
    use std::collections::HashMap;
    let mut last: HashMap<(usize, &[u8]), Option<&[u8]>> = HashMap::new();
    let mut order: Vec<(usize, &[u8])> = Vec::new();
    for op in set.ops() {
        let (t, k, v) = match op {
            Op::Put(t, k, v) => (*t, k.as_slice(), Some(v.as_slice())),
            Op::Delete(t, k) => (*t, k.as_slice(), None),
        };
        let slot = table_slot(t);
        if last.insert((slot, k), v).is_none() {
            order.push((slot, k));
        }
    }
    let mut changes = Changes {
        puts: vec![(Vec::new(), Vec::new()); Table::ALL.len()],
        deletes: vec![Vec::new(); Table::ALL.len()],
    };
    for (slot, k) in order {
        match last.get(&(slot, k)).copied().flatten() {
            Some(v) => {
                changes.puts[slot].0.push(k.to_vec());
                changes.puts[slot].1.push(v.to_vec());
            }
            None => changes.deletes[slot].push(k.to_vec()),
        }
    }
    changes
}

fn table_slot(table: Table) -> usize {
    Table::ALL.iter().position(|t| *t == table).unwrap_or(0)
}

impl Store for PgStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let pool = self.pool.clone();
        let key = key.to_vec();
        let sql = format!("SELECT v FROM {} WHERE k = $1", table_name(table));
        self.run(async move {
            let client = pool.get().await.map_err(pool_err)?;
            let stmt = client.prepare_cached(&sql).await.map_err(pg_err)?;
            let row = client.query_opt(&stmt, &[&key]).await.map_err(pg_err)?;
            row.map(|r| r.try_get(0).map_err(pg_err)).transpose()
        })
    }

    fn multi_get(&self, table: Table, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let pool = self.pool.clone();
        let wanted = keys.to_vec();
        let sql = format!("SELECT k, v FROM {} WHERE k = ANY($1)", table_name(table));
        let found = self.run(async move {
            let client = pool.get().await.map_err(pool_err)?;
            let stmt = client.prepare_cached(&sql).await.map_err(pg_err)?;
            let rows = client.query(&stmt, &[&wanted]).await.map_err(pg_err)?;
            rows.into_iter()
                .map(|r| {
                    Ok((
                        r.try_get::<_, Vec<u8>>(0).map_err(pg_err)?,
                        r.try_get::<_, Vec<u8>>(1).map_err(pg_err)?,
                    ))
                })
                .collect::<Result<std::collections::HashMap<_, _>>>()
        })?;
        Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
    }

    fn scan_prefix(&self, table: Table, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.range(table, prefix.to_vec(), prefix_end(prefix), None, false)
    }

    fn scan_from(
        &self,
        table: Table,
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.range(table, start.to_vec(), None, Some(limit), false)
    }

    fn visit(&self, table: Table, visit: &mut dyn FnMut(&[u8], &[u8])) -> Result<()> {
        let mut start = Vec::new();
        loop {
            let rows = self.range(table, start, None, Some(VISIT_CHUNK), false)?;
            let Some((last, _)) = rows.last() else {
                return Ok(());
            };
            // The next key after the last one read.
            let mut next = last.clone();
            next.push(0);
            for (k, v) in &rows {
                visit(k, v);
            }
            if rows.len() < VISIT_CHUNK as usize {
                return Ok(());
            }
            start = next;
        }
    }

    fn last_with_prefix(&self, table: Table, prefix: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        Ok(self
            .range(table, prefix.to_vec(), prefix_end(prefix), Some(1), true)?
            .pop())
    }

    fn write(&self, set: WriteSet) -> Result<()> {
        let synced = self.sync_writes || set.needs_sync();
        let changes = final_changes(&set);
        let conditions = set.conditions().to_vec();
        let keyring_generations = set.keyring_conditions().to_vec();
        let fences = set.fence_conditions().to_vec();
        let mut bumps = set.fence_bumps().to_vec();
        bumps.sort_unstable();
        bumps.dedup();
        let pool = self.pool.clone();
        self.run(async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let tx = read_committed(&mut client).await.map_err(pg_err)?;
            // Whatever the database's default: a synced write waits for the
            // WAL flush (and the synchronous standbys').
            tx.batch_execute(if synced {
                "SET LOCAL synchronous_commit = on"
            } else {
                "SET LOCAL synchronous_commit = off"
            })
            .await
            .map_err(pg_err)?;
            if let Some(first) = keyring_generations.first() {
                if keyring_generations.iter().any(|g| g != first) {
                    return Err(Error::Conflict);
                }
                check_keyring_generation(&tx, *first).await?;
            }
            // A holder's fences first: it waits only for writers' commits
            // in flight, before it holds any row they may wait for.
            if !bumps.is_empty() {
                bump_held_fences(&tx, &bumps).await?;
            }
            check_conditions(&tx, &conditions).await?;
            if !fences.is_empty() {
                check_fences(&tx, fences).await?;
            }
            for (slot, table) in Table::ALL.iter().enumerate() {
                let name = table_name(*table);
                let deletes = &changes.deletes[slot];
                if !deletes.is_empty() {
                    let stmt = tx
                        .prepare_cached(&format!("DELETE FROM {name} WHERE k = ANY($1)"))
                        .await
                        .map_err(pg_err)?;
                    tx.execute(&stmt, &[deletes]).await.map_err(pg_err)?;
                }
                let (keys, values) = &changes.puts[slot];
                if !keys.is_empty() {
                    let stmt = tx
                        .prepare_cached(&format!(
                            "INSERT INTO {name} (k, v) SELECT * FROM UNNEST($1::bytea[], $2::bytea[]) \
                             ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v"
                        ))
                        .await
                        .map_err(pg_err)?;
                    tx.execute(&stmt, &[keys, values]).await.map_err(pg_err)?;
                }
            }
            tx.commit().await.map_err(pg_err)
        })
    }

    fn shared(&self) -> bool {
        true
    }

    fn lead(&self) -> Result<bool> {
        let mut held = self.leader.lock().unwrap_or_else(|p| p.into_inner());
        let client = held.take();
        let config = self.config.clone();
        let tls = self.tls.clone();
        let timeout = Duration::from_secs(5);
        let (client, leads) = self.run(async move {
            // Still connected: still the leader (the lock lives as long as
            // its session).
            if let Some(client) = client {
                let alive = tokio::time::timeout(timeout, client.simple_query("SELECT 1")).await;
                if matches!(alive, Ok(Ok(_))) {
                    return Ok((Some(client), true));
                }
                tracing::warn!("lost the connection that held the leader lock");
            }
            let connected = tokio::time::timeout(timeout, tls.connect(&config)).await;
            let client = match connected {
                Ok(Ok(client)) => client,
                Ok(Err(e)) => return Err(pg_err(e)),
                Err(_) => return Err(Error::Unavailable(UNREACHABLE.into())),
            };
            // Pinged every second while it leads; a session whose server
            // vanished ends within a minute, and the lock with it.
            let _ = client
                .batch_execute("SET idle_session_timeout = '60s'")
                .await;
            let row = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])
                .await
                .map_err(pg_err)?;
            let leads: bool = row.try_get(0).map_err(pg_err)?;
            Ok((leads.then_some(client), leads))
        })?;
        *held = client;
        Ok(leads)
    }

    fn compact_range(&self, _table: Table, _start: &[u8], _end: &[u8]) -> Result<()> {
        // Nothing: PostgreSQL cannot rewrite a key range, a VACUUM of the
        // whole table under the caller's locks would stall it for as long,
        // and VACUUM wipes nothing anyway (the dead rows' space is reused,
        // and the WAL keeps them). Autovacuum reclaims the space;
        // SECURITY.md says what stays behind.
        Ok(())
    }

    fn lock_appends(&self) -> Result<bool> {
        let mut held = self.appender.lock().unwrap_or_else(|p| p.into_inner());
        let client = held.take();
        let config = self.config.clone();
        let tls = self.tls.clone();
        let client = self.run(async move {
            let client = match client {
                Some(c) if !c.is_closed() => c,
                _ => {
                    let c = tls.connect(&config).await.map_err(pg_err)?;
                    // A session whose client vanished ends (and its lock
                    // with it) within a minute, whatever the kernel does.
                    let _ = c.batch_execute("SET idle_session_timeout = '60s'").await;
                    c.batch_execute(&format!(
                        "SET lock_timeout = '{}ms'",
                        APPEND_LOCK_WAIT.as_millis()
                    ))
                    .await
                    .map_err(pg_err)?;
                    c
                }
            };
            // Waits in the database's queue (first come, first served), a
            // bounded time: a lock held by a server that is gone for good
            // must not stop every append.
            match client
                .execute("SELECT pg_advisory_lock($1)", &[&APPEND_LOCK])
                .await
            {
                Ok(_) => Ok((client, true)),
                Err(e)
                    if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) =>
                {
                    Ok((client, false))
                }
                Err(e) => Err(pg_err(e)),
            }
        })?;
        let (client, locked) = client;
        *held = Some(client);
        if !locked {
            tracing::warn!("the audit append lock stayed taken; appending without it");
        }
        Ok(locked)
    }

    fn unlock_appends(&self) {
        let mut held = self.appender.lock().unwrap_or_else(|p| p.into_inner());
        let Some(client) = held.take() else {
            return;
        };
        let unlocked = self.run(async move {
            client
                .execute("SELECT pg_advisory_unlock($1)", &[&APPEND_LOCK])
                .await
                .map_err(pg_err)?;
            Ok(client)
        });
        // A connection that failed to unlock is dropped: its session ends,
        // and the lock with it.
        *held = unlocked.ok();
    }

    fn resign(&self) {
        // Closing the session releases its advisory lock.
        self.leader.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    fn fence_epochs(&self, fences: &[u32]) -> Result<Vec<u64>> {
        let ids = fence_ids(fences)?;
        let pool = self.pool.clone();
        let stored = self.run(async move {
            let client = pool.get().await.map_err(pool_err)?;
            let stmt = client.prepare_cached(READ_EPOCHS).await.map_err(pg_err)?;
            let rows = client.query(&stmt, &[&ids]).await.map_err(pg_err)?;
            epochs_of(&rows)
        })?;
        Ok(fences
            .iter()
            .map(|f| stored.get(f).copied().unwrap_or(0))
            .collect())
    }

    fn hold_fences(&self, fences: &[u32]) -> Result<FenceHold> {
        if fences.is_empty() {
            return Ok(FenceHold::none());
        }
        let mut ids = fence_ids(fences)?;
        ids.sort_unstable();
        ids.dedup();
        let rt = self
            .runtime
            .as_ref()
            .ok_or_else(|| Error::Storage("the PostgreSQL store is closed".into()))?;
        let handle = rt.handle().clone();
        let pool = self.pool.clone();
        let held = self.run(async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let taken = async {
                // Session locks taken in a transaction outlive it; its
                // timeout does not.
                let tx = read_committed(&mut client).await?;
                tx.batch_execute(&format!(
                    "SET LOCAL statement_timeout = '{}ms'",
                    FENCE_WAIT.as_millis()
                ))
                .await?;
                // In ascending order (the array's): two holders never
                // wait for each other in a cycle.
                tx.execute(
                    "SELECT count(pg_advisory_lock($1, f)) FROM UNNEST($2::int4[]) AS f",
                    &[&FENCE_LOCKS, &ids],
                )
                .await?;
                tx.execute(BUMP_FENCES, &[&ids]).await?;
                let pid: i32 = tx
                    .query_one("SELECT pg_backend_pid()", &[])
                    .await?
                    .try_get(0)?;
                tx.commit().await?;
                Ok::<_, tokio_postgres::Error>(pid)
            }
            .await;
            match taken {
                Ok(pid) => Ok((client, ids, pid)),
                Err(e) => {
                    // The session may hold some of them: it ends.
                    drop(deadpool_postgres::Object::take(client));
                    if e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED) {
                        tracing::warn!("subject fences stayed held by another server");
                        Err(Error::Conflict)
                    } else {
                        Err(pg_err(e))
                    }
                }
            }
        })?;
        let (held, ids, pid) = held;
        Ok(FenceHold::new(u64::from(pid.unsigned_abs()), move || {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            handle.spawn(async move {
                // Moved on once more: a set made while they were held
                // fails even if the holder's own write did not happen.
                let released = async {
                    held.execute(BUMP_FENCES, &[&ids]).await?;
                    held.batch_execute("SELECT pg_advisory_unlock_all()").await
                }
                .await;
                if let Err(e) = released {
                    tracing::warn!(error = %e, "could not let go of subject fences; closing their session");
                    // Closing the session lets go of its locks.
                    drop(deadpool_postgres::Object::take(held));
                }
                let _ = tx.send(());
            });
            // Let go before the caller's own locks are: a write of this
            // server that comes next finds the fences free.
            let _ = rx.recv();
        }))
    }
}

/// A `READ COMMITTED` transaction, whatever the database's default: the
/// fence and condition checks rely on each statement seeing what
/// committed before it.
async fn read_committed(
    client: &mut deadpool_postgres::Object,
) -> std::result::Result<deadpool_postgres::Transaction<'_>, tokio_postgres::Error> {
    client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::ReadCommitted)
        .start()
        .await
}

/// Fences as the database's integers.
fn fence_ids(fences: &[u32]) -> Result<Vec<i32>> {
    fences
        .iter()
        .map(|&f| {
            if f <= super::INDEX_FENCE {
                i32::try_from(f).map_err(|_| Error::Integrity)
            } else {
                Err(Error::Storage(format!("fence {f} out of range")))
            }
        })
        .collect()
}

/// `(f, epoch)` rows as a map.
fn epochs_of(rows: &[tokio_postgres::Row]) -> Result<std::collections::HashMap<u32, u64>> {
    rows.iter()
        .map(|r| {
            let f: i32 = r.try_get(0).map_err(pg_err)?;
            let e: i64 = r.try_get(1).map_err(pg_err)?;
            match (u32::try_from(f), u64::try_from(e)) {
                (Ok(f), Ok(e)) => Ok((f, e)),
                _ => Err(Error::Storage(format!(
                    "a fence row out of range ({f}, {e})"
                ))),
            }
        })
        .collect()
}

/// Moves the fences of a set on, inside its transaction: first their
/// commit locks (exclusive, until the transaction ends: a writer that
/// checks them meanwhile fails, and one checking in flight is waited
/// for), then the bump, then, for a holder's set, that its hold's session
/// still holds the fences. In that order: should the hold's session end
/// after the check, a writer still cannot pass before this transaction
/// ends, and then finds the fences moved on. A bump without a holder (an
/// index-key rotation's, after its keyring save) is not checked.
async fn bump_held_fences(
    tx: &deadpool_postgres::Transaction<'_>,
    bumps: &[(u32, Option<u64>)],
) -> Result<()> {
    let all: Vec<u32> = bumps.iter().map(|(f, _)| *f).collect();
    let mut ids = fence_ids(&all)?;
    ids.sort_unstable();
    ids.dedup();
    let stmt = tx
        .prepare_cached("SELECT count(pg_advisory_xact_lock($1, f)) FROM UNNEST($2::int4[]) AS f")
        .await
        .map_err(pg_err)?;
    tx.execute(&stmt, &[&FENCE_COMMIT_LOCKS, &ids])
        .await
        .map_err(pg_err)?;
    let stmt = tx.prepare_cached(BUMP_FENCES).await.map_err(pg_err)?;
    tx.execute(&stmt, &[&ids]).await.map_err(pg_err)?;
    let mut holders: Vec<u64> = bumps.iter().filter_map(|(_, h)| *h).collect();
    holders.sort_unstable();
    holders.dedup();
    for holder in holders {
        let mine: Vec<u32> = bumps
            .iter()
            .filter(|(_, h)| *h == Some(holder))
            .map(|(f, _)| *f)
            .collect();
        let ids: Vec<i64> = fence_ids(&mine)?.into_iter().map(i64::from).collect();
        let pid = i32::try_from(holder)
            .map_err(|_| Error::Storage("a fence hold of another store".into()))?;
        let stmt = tx
            .prepare_cached(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                 AND classid::int8 = $1 AND objid::int8 = ANY($2::int8[]) AND objsubid = 2 \
                 AND pid = $3 AND mode = 'ExclusiveLock' AND granted",
            )
            .await
            .map_err(pg_err)?;
        let row = tx
            .query_one(&stmt, &[&i64::from(FENCE_LOCKS), &ids, &pid])
            .await
            .map_err(pg_err)?;
        let held: i64 = row.try_get(0).map_err(pg_err)?;
        if usize::try_from(held).ok() != Some(ids.len()) {
            tracing::warn!("a hold of subject fences was lost with its session; its write fails");
            return Err(Error::Conflict);
        }
    }
    Ok(())
}

/// Checks a set's fences inside its transaction: none held by another
/// server (each one's lock taken shared until the transaction ends, so no
/// holder starts before it does), then each at the epoch the set expects,
/// read in a statement of its own, after the locks: its snapshot holds the
/// commit of a holder that let go just before.
async fn check_fences(
    tx: &deadpool_postgres::Transaction<'_>,
    mut fences: Vec<(u32, u64)>,
) -> Result<()> {
    fences.sort_unstable();
    fences.dedup();
    // Two requests of a group made under two epochs of one fence.
    if fences.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(Error::Conflict);
    }
    let ids = fence_ids(&fences.iter().map(|(f, _)| *f).collect::<Vec<_>>())?;
    let stmt = tx
        .prepare_cached(
            "SELECT bool_and(pg_try_advisory_xact_lock_shared($1, f) \
             AND pg_try_advisory_xact_lock_shared($3, f)) FROM UNNEST($2::int4[]) AS f",
        )
        .await
        .map_err(pg_err)?;
    let row = tx
        .query_one(&stmt, &[&FENCE_LOCKS, &ids, &FENCE_COMMIT_LOCKS])
        .await
        .map_err(pg_err)?;
    let free: Option<bool> = row.try_get(0).map_err(pg_err)?;
    if free != Some(true) {
        return Err(Error::Conflict);
    }
    let stmt = tx.prepare_cached(READ_EPOCHS).await.map_err(pg_err)?;
    let stored = epochs_of(&tx.query(&stmt, &[&ids]).await.map_err(pg_err)?)?;
    if fences
        .iter()
        .any(|(f, e)| stored.get(f).copied().unwrap_or(0) != *e)
    {
        return Err(Error::Conflict);
    }
    Ok(())
}

/// Checks the stored keyring's generation inside a write's transaction,
/// holding the keyring row shared until it ends: a keyring save (an update
/// of that row) waits for the write, and a write that comes after the save
/// finds the new generation and fails.
async fn check_keyring_generation(
    tx: &deadpool_postgres::Transaction<'_>,
    generation: u64,
) -> Result<()> {
    let row = tx
        .query_opt(
            &format!("SELECT generation FROM {KEYRING_TABLE} WHERE id = 1 FOR SHARE"),
            &[],
        )
        .await
        .map_err(pg_err)?;
    let stored: Option<i64> = row.map(|r| r.try_get(0)).transpose().map_err(pg_err)?;
    if stored.and_then(|g| u64::try_from(g).ok()) != Some(generation) {
        return Err(Error::Conflict);
    }
    Ok(())
}

/// Checks a set's conditions inside its transaction: the advisory locks
/// of the conditions that expect a row absent (ascending; there is no row
/// to lock) held until the transaction ends, then each table's keys read
/// `FOR UPDATE` (rows that exist stay as read until the transaction ends,
/// whoever writes them; one deleted or changed meanwhile is read as it is
/// now). A set of thousands of conditions on rows that exist (a rotation
/// of a subject with many records) takes no lock of the database's lock
/// table for them.
async fn check_conditions(
    tx: &deadpool_postgres::Transaction<'_>,
    conditions: &[Condition],
) -> Result<()> {
    if conditions.is_empty() {
        return Ok(());
    }
    let mut locks: Vec<i64> = conditions
        .iter()
        .filter(|c| c.value.is_none())
        .map(|c| condition_lock(c.table, &c.key))
        .collect();
    locks.sort_unstable();
    locks.dedup();
    if !locks.is_empty() {
        let stmt = tx
            .prepare_cached("SELECT count(pg_advisory_xact_lock(l)) FROM UNNEST($1::int8[]) AS l")
            .await
            .map_err(pg_err)?;
        tx.execute(&stmt, &[&locks]).await.map_err(pg_err)?;
    }
    for table in Table::ALL {
        let mine: Vec<&Condition> = conditions.iter().filter(|c| c.table == table).collect();
        if mine.is_empty() {
            continue;
        }
        let mut keys: Vec<&[u8]> = mine.iter().map(|c| c.key.as_slice()).collect();
        keys.sort_unstable();
        keys.dedup();
        let stmt = tx
            .prepare_cached(&format!(
                "SELECT k, v FROM {} WHERE k = ANY($1) ORDER BY k FOR UPDATE",
                table_name(table)
            ))
            .await
            .map_err(pg_err)?;
        let rows = tx.query(&stmt, &[&keys]).await.map_err(pg_err)?;
        let mut now = std::collections::HashMap::with_capacity(rows.len());
        for r in &rows {
            let k: Vec<u8> = r.try_get(0).map_err(pg_err)?;
            let v: Vec<u8> = r.try_get(1).map_err(pg_err)?;
            now.insert(k, v);
        }
        if mine.iter().any(|c| now.get(&c.key) != c.value.as_ref()) {
            return Err(Error::Conflict);
        }
    }
    Ok(())
}

impl KeyringStore for PgStore {
    fn read(&self) -> Result<Option<Vec<u8>>> {
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(pool_err)?;
            let row = client
                .query_opt(
                    &format!("SELECT sealed FROM {KEYRING_TABLE} WHERE id = 1"),
                    &[],
                )
                .await
                .map_err(pg_err)?;
            row.map(|r| r.try_get(0).map_err(pg_err)).transpose()
        })
    }

    fn write(&self, sealed: &[u8], generation: u64) -> Result<()> {
        let pool = self.pool.clone();
        let sealed = sealed.to_vec();
        let generation = i64::try_from(generation)
            .map_err(|_| Error::Storage("keyring generation out of range".into()))?;
        self.run(async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let tx = read_committed(&mut client).await.map_err(pg_err)?;
            // Always synchronous: the keyring is what every record needs.
            tx.batch_execute("SET LOCAL synchronous_commit = on")
                .await
                .map_err(pg_err)?;
            // Only over the generation before: two servers changing the
            // keyring at once cannot both win (the loser reloads).
            let written = tx
                .execute(
                    &format!(
                        "INSERT INTO {KEYRING_TABLE} AS kr (id, generation, sealed) \
                         VALUES (1, $1, $2) ON CONFLICT (id) DO UPDATE \
                         SET generation = EXCLUDED.generation, sealed = EXCLUDED.sealed \
                         WHERE kr.generation = EXCLUDED.generation - 1"
                    ),
                    &[&generation, &sealed],
                )
                .await
                .map_err(pg_err)?;
            if written == 0 {
                return Err(Error::Conflict);
            }
            tx.commit().await.map_err(pg_err)
        })?;
        // The replaced row's tuple leaves the table's pages now rather than
        // at the next autovacuum (an erasure's old bucket epoch is in it),
        // where no transaction or standby still needs it. The save stands
        // whether or not this works.
        if let Err(e) = self.vacuum(KEYRING_TABLE) {
            tracing::warn!(error = %e, "could not vacuum the keyring table after a save");
        }
        Ok(())
    }

    fn generation(&self) -> Result<Option<u64>> {
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(pool_err)?;
            let row = client
                .query_opt(
                    &format!("SELECT generation FROM {KEYRING_TABLE} WHERE id = 1"),
                    &[],
                )
                .await
                .map_err(pg_err)?;
            row.map(|r| {
                let g: i64 = r.try_get(0).map_err(pg_err)?;
                u64::try_from(g).map_err(|_| Error::Storage("negative keyring generation".into()))
            })
            .transpose()
        })
    }

    fn describe(&self) -> String {
        format!("the {KEYRING_TABLE} table of {}", self.target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_bound_exactly_the_keys_of_the_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xFF, 0xFF]), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn the_last_change_of_each_key_wins() {
        let mut ws = WriteSet::new();
        ws.put(Table::Records, b"a".to_vec(), b"1".to_vec());
        ws.delete(Table::Records, b"a".to_vec());
        ws.put(Table::Records, b"b".to_vec(), b"1".to_vec());
        ws.put(Table::Records, b"b".to_vec(), b"2".to_vec());
        ws.put(Table::Audit, b"a".to_vec(), b"3".to_vec());
        let c = final_changes(&ws);
        let r = table_slot(Table::Records);
        assert_eq!(c.deletes[r], vec![b"a".to_vec()]);
        assert_eq!(c.puts[r], (vec![b"b".to_vec()], vec![b"2".to_vec()]));
        let a = table_slot(Table::Audit);
        assert_eq!(c.puts[a], (vec![b"a".to_vec()], vec![b"3".to_vec()]));
    }

    /// The TLS choice for `url` with `options` set by `set`.
    fn tls(url: &str, set: impl FnOnce(&mut PgOptions)) -> Result<&'static str> {
        let mut o = PgOptions::new(url);
        set(&mut o);
        let config: tokio_postgres::Config = url.parse().unwrap();
        Tls::of(&config, &o).map(|t| match t {
            Tls::Plain => "plain",
            Tls::Rustls(_) => "tls",
        })
    }

    fn config_error(r: Result<&'static str>) -> String {
        match r {
            Err(Error::Config(m)) => m,
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }

    #[test]
    fn a_plain_connection_is_refused_beyond_loopback_and_tls_verifies_against_the_ca() {
        // Loopback and Unix sockets may be plain.
        for url in [
            "host=127.0.0.1 user=v",
            "host=localhost user=v",
            "host=::1 user=v",
            "host=/run/postgresql user=v",
            "postgresql://v@127.0.0.1:5433/vault",
            "hostaddr=127.0.0.1 user=v",
        ] {
            assert_eq!(tls(url, |_| {}).unwrap(), "plain", "{url}");
        }
        // Another host: refused, naming it and what to do, unless allowed.
        for url in [
            "host=10.0.0.5 user=v",
            "host=127.0.0.1,db.example.eu user=v",
            "host=db.example.eu sslmode=prefer user=v",
            // The address connected to is hostaddr's.
            "host=localhost hostaddr=10.0.0.5 user=v",
            "hostaddr=10.0.0.5 user=v",
        ] {
            let m = config_error(tls(url, |_| {}));
            assert!(
                m.contains("would not be encrypted") && m.contains("sslmode=require"),
                "{m}"
            );
            assert_eq!(tls(url, |o| o.allow_plaintext = true).unwrap(), "plain");
        }
        // A CA file without sslmode=require says so.
        let m = config_error(tls("host=127.0.0.1 user=v", |o| {
            o.ca_file = Some("/nowhere/ca.pem".into())
        }));
        assert!(m.contains("sslmode=require"), "{m}");
        // With sslmode=require: the CA file is read and checked.
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.pem");
        std::fs::write(&bad, "not a certificate").unwrap();
        let m = config_error(tls("host=db.example.eu sslmode=require user=v", |o| {
            o.ca_file = Some(bad.clone())
        }));
        assert!(m.contains("bad.pem"), "{m}");
        match tls("host=db.example.eu sslmode=require user=v", |o| {
            o.ca_file = Some(dir.path().join("missing.pem"))
        }) {
            Err(Error::Io { context, .. }) => assert!(context.contains("missing.pem"), "{context}"),
            other => panic!("{other:?}"),
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, params.self_signed(&key).unwrap().pem()).unwrap();
        assert_eq!(
            tls("host=db.example.eu sslmode=require user=v", |o| o.ca_file =
                Some(ca.clone()))
            .unwrap(),
            "tls"
        );
    }

    #[test]
    fn options_never_print_the_connection_string() {
        let o = PgOptions::new("host=h user=u password=hunter2");
        assert!(!format!("{o:?}").contains("hunter2"));
    }
}
