//! Support for the end-to-end tests: real vault servers on port 0 over
//! temporary data folders, reached through real sockets.

#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use vault_client::{ClientBuilder, VaultClient};
use vault_server::service::{self, Authenticator, ServerTls};
use vault_server::vault::{OpenOptions, Vault};
use vault_server::{dev, Engine};

/// The development token of every test vault: every role but custody.
pub const TOKEN: &str = "test-root-token";
/// The development custodian's token of every dev-mode test vault: custody
/// only (custody and data access are separate duties).
pub const CUSTODIAN_TOKEN: &str = "test-custodian-token";
/// The purpose test clients state (every data request needs one).
pub const PURPOSE: &str = "testing";

/// A vault server running in this process on 127.0.0.1:0.
#[derive(Debug)]
pub struct TestVault {
    /// The bound address.
    pub addr: SocketAddr,
    /// The vault, for its engine's counters.
    pub vault: Arc<Vault>,
    /// The data folder.
    pub data_dir: PathBuf,
    /// The CA certificate (PEM) of a TLS vault's certificate.
    tls_ca_pem: Option<String>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<vault_server::Result<()>>>,
    /// The audit log's size and requests begun when serving started.
    audit_start: (u64, u64),
}

/// The storage backend the end-to-end tests run on: RocksDB in each test's
/// data folder, unless `VAULT_TEST_BACKEND=postgres`, when every test vault
/// keeps its data in a database of its own on the PostgreSQL server that
/// `VAULT_TEST_POSTGRES` names (the libpq connection string of its
/// maintenance database; `scripts/test` starts one on loopback).
pub fn on_postgres() -> bool {
    std::env::var("VAULT_TEST_BACKEND").is_ok_and(|b| b == "postgres")
}

/// The connection string of the test PostgreSQL server's maintenance
/// database. Panics with what to do when it is not set.
pub fn postgres_server() -> String {
    std::env::var("VAULT_TEST_POSTGRES").unwrap_or_else(|_| {
        panic!(
            "VAULT_TEST_POSTGRES is not set: run scripts/test, or start a server with \
             scripts/pg-test-server start DIR and export what it prints"
        )
    })
}

/// The connection string of database `name` on the test server, created
/// if missing.
pub async fn postgres_database(name: &str) -> String {
    let server = postgres_server();
    let (client, connection) = tokio_postgres::connect(&server, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to the test PostgreSQL ({server}): {e}"));
    let conn = tokio::spawn(connection);
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .unwrap()
        .is_some();
    if !exists {
        if let Err(e) = client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
        {
            // Made meanwhile by another test of the same folder.
            let duplicate = e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE);
            assert!(duplicate, "creating database {name}: {e}");
        }
    }
    drop(client);
    let _ = conn.await;
    let base: Vec<&str> = server
        .split_whitespace()
        .filter(|kv| !kv.starts_with("dbname="))
        .collect();
    format!("{} dbname={name}", base.join(" "))
}

/// The database of the vault over `data_dir` (one per folder, so a vault
/// restarted over the same folder finds its data again).
pub async fn postgres_database_for(data_dir: &Path) -> String {
    use sha2::Digest as _;
    let path = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_owned());
    let digest = sha2::Sha256::digest(path.to_string_lossy().as_bytes());
    postgres_database(&format!("vt_{}", hex::encode(&digest[..12]))).await
}

/// Whether a test that needs PostgreSQL (several servers over one
/// database) is skipped: on the RocksDB run it is, and says so.
pub fn skip_without_postgres() -> bool {
    if !on_postgres() {
        eprintln!("needs PostgreSQL: runs in the PostgreSQL run of scripts/test");
    }
    !on_postgres()
}

/// Whether a test that reads or edits RocksDB's files in the data folder
/// directly is skipped (the PostgreSQL run): says so on stderr.
pub fn skip_on_postgres(why: &str) -> bool {
    if on_postgres() {
        eprintln!("skipped on PostgreSQL: {why}");
    }
    on_postgres()
}

/// The sealed keyring of the test vault over `data_dir`, as stored: its
/// file, or its row in PostgreSQL.
pub async fn stored_keyring(data_dir: &Path) -> Vec<u8> {
    if !on_postgres() {
        return std::fs::read(data_dir.join("keyring")).unwrap();
    }
    let url = postgres_database_for(data_dir).await;
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(connection);
    let row = client
        .query_one("SELECT sealed FROM vault_keyring WHERE id = 1", &[])
        .await
        .unwrap();
    drop(client);
    let _ = conn.await;
    row.get(0)
}

/// The store of a stopped test vault over `data_dir`, opened directly
/// (RocksDB in the folder, or its PostgreSQL database).
pub async fn raw_store(data_dir: &Path) -> Arc<dyn vault_server::storage::Store> {
    if on_postgres() {
        let url = postgres_database_for(data_dir).await;
        let pg = vault_server::storage::PgOptions::new(url);
        tokio::task::spawn_blocking(move || {
            Arc::new(vault_server::storage::PgStore::open(&pg).unwrap()) as Arc<_>
        })
        .await
        .unwrap()
    } else {
        let path = data_dir.join("db");
        Arc::new(vault_server::storage::RocksStore::open(&path, &Default::default()).unwrap())
    }
}

/// `opts` on the backend the tests run on ([`on_postgres`]).
pub async fn on_test_backend(mut opts: OpenOptions) -> OpenOptions {
    if on_postgres() && opts.postgres.is_none() {
        let url = postgres_database_for(&opts.data_dir).await;
        opts.postgres = Some(vault_server::storage::PgOptions::new(url));
    }
    opts
}

/// Opens a dev-mode vault (initialised with one share, unsealed) and
/// seeds its dev collection, off the reactor.
async fn open_seeded(opts: OpenOptions) -> vault_server::Result<Vault> {
    let opts = on_test_backend(opts).await;
    tokio::task::spawn_blocking(move || {
        let vault = Vault::open_dev(opts)?;
        dev::seed(&*vault.engine()?)?;
        Ok(vault)
    })
    .await
    .unwrap()
}

impl TestVault {
    /// Starts a dev-mode vault of `region` over `data_dir` (created if
    /// missing): initialised with one share and unsealed.
    pub async fn start(data_dir: &Path, region: &str) -> vault_server::Result<TestVault> {
        Self::start_dev_with(OpenOptions::dev(data_dir, region.parse().unwrap())).await
    }

    /// Starts a dev-mode vault of `region` over `data_dir` (initialised and
    /// unsealed) that speaks TLS, or mutual TLS, as `tls` says, with its
    /// tokens and certificate principals. Its [`TestVault::url`] is
    /// `https://127.0.0.1:PORT`.
    pub async fn start_tls(
        data_dir: &Path,
        region: &str,
        tls: TlsFixture,
    ) -> vault_server::Result<TestVault> {
        Self::start_tls_with(OpenOptions::dev(data_dir, region.parse().unwrap()), tls).await
    }

    /// [`TestVault::start_tls`] with the given options (an access policy,
    /// say).
    pub async fn start_tls_with(
        opts: OpenOptions,
        tls: TlsFixture,
    ) -> vault_server::Result<TestVault> {
        let data_dir = opts.data_dir.clone();
        let data_dir = data_dir.as_path();
        let vault = open_seeded(opts).await?;
        let mut vault =
            Self::serve_with(Arc::new(vault), tls.auth, Some(tls.server), data_dir).await?;
        vault.tls_ca_pem = Some(tls.ca_pem);
        Ok(vault)
    }

    /// Starts a dev-mode vault with the given options (data folder, region,
    /// engine options such as the re-wrap pace).
    pub async fn start_dev_with(opts: OpenOptions) -> vault_server::Result<TestVault> {
        let data_dir = opts.data_dir.clone();
        let vault = open_seeded(opts).await?;
        let mut auth = Authenticator::new();
        auth.add_token(TOKEN, dev::dev_principal());
        auth.add_token(CUSTODIAN_TOKEN, dev::dev_custodian());
        Self::serve(Arc::new(vault), auth, &data_dir).await
    }

    /// Starts a dev-mode vault with the given options that knows only the
    /// tokens of `auth`.
    pub async fn start_dev_with_auth(
        opts: OpenOptions,
        auth: Authenticator,
    ) -> vault_server::Result<TestVault> {
        let data_dir = opts.data_dir.clone();
        let vault = open_seeded(opts).await?;
        Self::serve(Arc::new(vault), auth, &data_dir).await
    }

    /// Starts a dev-mode vault of `region` over `data_dir` that knows only
    /// the tokens of `auth`.
    pub async fn start_dev_with_tokens(
        data_dir: &Path,
        region: &str,
        auth: Authenticator,
    ) -> vault_server::Result<TestVault> {
        let vault = open_seeded(OpenOptions::dev(data_dir, region.parse().unwrap())).await?;
        Self::serve(Arc::new(vault), auth, data_dir).await
    }

    /// Starts a vault as `vault-server --config` would: sealed (or not yet
    /// initialised), with the given options and tokens.
    pub async fn start_sealed(
        opts: OpenOptions,
        auth: Authenticator,
    ) -> vault_server::Result<TestVault> {
        let data_dir = opts.data_dir.clone();
        let opts = on_test_backend(opts).await;
        let vault = tokio::task::spawn_blocking(move || Vault::open(opts))
            .await
            .unwrap()?;
        Self::serve(Arc::new(vault), auth, &data_dir).await
    }

    async fn serve(
        vault: Arc<Vault>,
        auth: Authenticator,
        data_dir: &Path,
    ) -> vault_server::Result<TestVault> {
        Self::serve_with(vault, auth, None, data_dir).await
    }

    async fn serve_with(
        vault: Arc<Vault>,
        auth: Authenticator,
        tls: Option<ServerTls>,
        data_dir: &Path,
    ) -> vault_server::Result<TestVault> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let log = vault.audit_log();
        let audit_start = (log.size(), log.requests_begun());
        let task = tokio::spawn(service::serve_with_tls(
            listener,
            Arc::clone(&vault),
            Arc::new(auth),
            tls,
            async {
                let _ = rx.await;
            },
        ));
        Ok(TestVault {
            addr,
            vault,
            data_dir: data_dir.to_owned(),
            tls_ca_pem: None,
            shutdown: Some(tx),
            task: Some(task),
            audit_start,
        })
    }

    /// `http://127.0.0.1:PORT`, or `https://` for a TLS vault.
    pub fn url(&self) -> String {
        let scheme = if self.tls_ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// A client builder for this vault: its URL and, for a TLS vault, the CA
    /// of its certificate. No token, purpose or client certificate yet.
    pub fn client_builder(&self) -> ClientBuilder {
        let builder = VaultClient::builder(self.url());
        match &self.tls_ca_pem {
            Some(ca) => builder.ca_certificate_pem(ca.clone()),
            None => builder,
        }
    }

    /// A client with the development token.
    pub async fn client(&self) -> VaultClient {
        self.client_with(TOKEN).await
    }

    /// A client with the development custodian's token.
    pub async fn custodian(&self) -> VaultClient {
        self.client_with(CUSTODIAN_TOKEN).await
    }

    /// A client with another token (stating [`PURPOSE`]).
    pub async fn client_with(&self, token: &str) -> VaultClient {
        self.client_builder()
            .token(token)
            .purpose(PURPOSE)
            .connect()
            .await
            .unwrap()
    }

    /// The engine (the vault must be unsealed), for its counters.
    pub fn engine(&self) -> Arc<Engine> {
        self.vault.engine().unwrap()
    }

    /// Stops the server, waits for it to drain, and closes the store, so the
    /// data folder can be opened by someone else. First checks invariant
    /// 17 of ARCHITECTURE.md over everything the server served: every gRPC
    /// request left exactly one audit event (events carry their request's
    /// id; the vault's own work carries none).
    pub async fn stop(self) {
        self.stop_checked(false).await
    }

    /// [`TestVault::stop`] for a server that shared its audit log with
    /// others (one PostgreSQL database): the log holds their requests'
    /// events too, so it checks only that none of this server's is missing.
    pub async fn stop_beside_others(self) {
        self.stop_checked(true).await
    }

    async fn stop_checked(self, shared: bool) {
        let (from, begun_before) = self.audit_start;
        let vault = self.stop_serving().await;
        let (requests, events) = tokio::task::spawn_blocking({
            let vault = Arc::clone(&vault);
            move || request_events(&vault, from, begun_before)
        })
        .await
        .unwrap();
        if shared {
            assert!(
                events >= requests,
                "gRPC requests served ({requests}) vs audit events with a request id ({events})"
            );
        } else {
            assert_eq!(
                events, requests,
                "gRPC requests served vs audit events with a request id"
            );
        }
        // A seal on a critical alert (its own blocking task) may still be
        // letting go of the vault after it announced the seal.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while Arc::strong_count(&vault) > 1 && std::time::Instant::now() < deadline {
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(
            Arc::strong_count(&vault),
            1,
            "the server still holds the vault"
        );
        tokio::task::spawn_blocking(move || drop(vault))
            .await
            .unwrap();
    }

    /// Stops the server and waits for it to drain; returns the vault, which
    /// engine work of requests that their clients gave up on may still hold
    /// on the runtime's blocking pool.
    pub async fn stop_serving(mut self) -> Arc<Vault> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
        self.vault
    }
}

/// The requests a vault served since its log had `begun_before` requests
/// begun, and the distinct request ids of the events from index `from`;
/// panics if two events carry the same request id.
fn request_events(vault: &Vault, from: u64, begun_before: u64) -> (u64, u64) {
    let log = vault.audit_log();
    let mut seen = std::collections::HashSet::new();
    let mut at = from;
    loop {
        let page = log.events(at, 1000).unwrap();
        if page.is_empty() {
            break;
        }
        for bytes in &page {
            let ev: serde_json::Value = serde_json::from_slice(bytes).unwrap();
            let id = ev["request_id"].as_str().unwrap_or_default();
            assert!(
                id.is_empty() || seen.insert(id.to_owned()),
                "two audit events for request {id}: {ev}"
            );
        }
        at += page.len() as u64;
    }
    (log.requests_begun() - begun_before, seen.len() as u64)
}

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct CertAndKey {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PEM, PKCS#8).
    pub key_pem: String,
}

impl CertAndKey {
    /// Writes `NAME.pem` and `NAME.key` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }
}

/// A small PKI made for one test: a CA, a server certificate for
/// 127.0.0.1 and localhost, and client certificates on demand (by URI SAN or
/// CN, expired, or from another CA).
#[derive(Debug)]
pub struct Pki {
    ca: Issuer<'static, KeyPair>,
    ca_pem: String,
    server: CertAndKey,
}

impl Pki {
    /// A new CA (named `name`) and its server certificate.
    pub fn new(name: &str) -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_pem = params.self_signed(&key).unwrap().pem();
        let ca = Issuer::new(params, key);
        let server = Self::issue(
            &ca,
            vec![
                SanType::IpAddress("127.0.0.1".parse().unwrap()),
                SanType::DnsName("localhost".try_into().unwrap()),
            ],
            Some("vault test server"),
            ExtendedKeyUsagePurpose::ServerAuth,
            false,
        );
        Pki { ca, ca_pem, server }
    }

    /// The CA certificate (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The server's certificate, for 127.0.0.1 and localhost.
    pub fn server(&self) -> &CertAndKey {
        &self.server
    }

    /// A client certificate whose first URI SAN is `uri`, with the common
    /// name `cn` if given.
    pub fn client_uri(&self, uri: &str, cn: Option<&str>) -> CertAndKey {
        Self::issue(
            &self.ca,
            vec![SanType::URI(uri.try_into().unwrap())],
            cn,
            ExtendedKeyUsagePurpose::ClientAuth,
            false,
        )
    }

    /// A client certificate with the common name `cn` and no SAN.
    pub fn client_cn(&self, cn: &str) -> CertAndKey {
        Self::issue(
            &self.ca,
            Vec::new(),
            Some(cn),
            ExtendedKeyUsagePurpose::ClientAuth,
            false,
        )
    }

    /// A client certificate for `uri` that expired in 2021.
    pub fn expired_client(&self, uri: &str) -> CertAndKey {
        Self::issue(
            &self.ca,
            vec![SanType::URI(uri.try_into().unwrap())],
            None,
            ExtendedKeyUsagePurpose::ClientAuth,
            true,
        )
    }

    fn issue(
        ca: &Issuer<'static, KeyPair>,
        sans: Vec<SanType>,
        cn: Option<&str>,
        usage: ExtendedKeyUsagePurpose,
        expired: bool,
    ) -> CertAndKey {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans;
        params.distinguished_name = DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, ca).unwrap();
        CertAndKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// How [`TestVault::start_tls`] serves: its TLS configuration, the CA that
/// clients verify it with, and who may call.
#[derive(Debug)]
pub struct TlsFixture {
    /// The server's TLS configuration.
    pub server: ServerTls,
    /// The CA certificate (PEM) of the server's certificate.
    pub ca_pem: String,
    /// Tokens and certificate principals.
    pub auth: Authenticator,
}

impl TlsFixture {
    /// Mutual TLS: `pki`'s server certificate; client certificates of
    /// `pki`'s CA required.
    pub fn mutual(pki: &Pki, auth: Authenticator) -> TlsFixture {
        Self::with_client_ca(pki, Some(pki.ca_pem().as_bytes().to_vec()), auth)
    }

    /// TLS without client certificates: tokens authenticate.
    pub fn server_only(pki: &Pki, auth: Authenticator) -> TlsFixture {
        Self::with_client_ca(pki, None, auth)
    }

    fn with_client_ca(pki: &Pki, client_ca: Option<Vec<u8>>, auth: Authenticator) -> TlsFixture {
        let server = ServerTls::from_pem(
            pki.server().cert_pem.clone(),
            pki.server().key_pem.clone(),
            client_ca,
        )
        .unwrap();
        TlsFixture {
            server,
            ca_pem: pki.ca_pem().to_owned(),
            auth,
        }
    }
}

/// The workspace binary `name` next to the test executable (built by
/// `cargo build --workspace --all-targets`, which the test command runs
/// first).
fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --locked --workspace --all-targets` first \
         (scripts/test does; a narrower build rebuilds RocksDB)",
        bin.display()
    );
    bin
}

/// The `vault-server` binary.
pub fn server_binary() -> PathBuf {
    workspace_binary("vault-server")
}

/// The `vault-bench` load generator.
pub fn bench_binary() -> PathBuf {
    workspace_binary("vault-bench")
}

/// The `vaultctl` binary.
pub fn vaultctl_binary() -> PathBuf {
    workspace_binary("vaultctl")
}

/// A [`TestVault`] on a single-threaded runtime of its own thread, which a
/// test can freeze: while frozen the kernel still accepts connections and
/// bytes, but the server answers nothing. Deadline tests use it to get a
/// deterministic timeout from the real server, with no sleeps.
#[derive(Debug)]
pub struct FreezableVault {
    url: String,
    commands: Option<tokio::sync::mpsc::UnboundedSender<Freeze>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A request to freeze: acknowledged on `frozen`, then the server's thread
/// blocks on `thaw`.
#[derive(Debug)]
struct Freeze {
    frozen: oneshot::Sender<()>,
    thaw: std::sync::mpsc::Receiver<()>,
}

/// Keeps a [`FreezableVault`] frozen; dropping it thaws the server.
#[derive(Debug)]
pub struct Frozen {
    _thaw: std::sync::mpsc::Sender<()>,
}

impl FreezableVault {
    /// Starts a dev-mode vault of `region` over `data_dir` in a thread of its own.
    pub async fn start(data_dir: &Path, region: &str) -> FreezableVault {
        let (url_tx, url_rx) = oneshot::channel();
        let (commands, mut requests) = tokio::sync::mpsc::unbounded_channel::<Freeze>();
        let data_dir = data_dir.to_owned();
        let region = region.to_owned();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let vault = runtime.block_on(async move {
                let vault = TestVault::start(&data_dir, &region).await.unwrap();
                let _ = url_tx.send(vault.url());
                while let Some(freeze) = requests.recv().await {
                    let _ = freeze.frozen.send(());
                    // Blocks the runtime's only thread: no task of the
                    // server runs until the thaw.
                    let _ = freeze.thaw.recv();
                }
                vault.stop_serving().await
            });
            // Requests that timed out while the server was frozen may still
            // run on the blocking pool; dropping the runtime waits for them.
            drop(runtime);
            assert_eq!(
                Arc::strong_count(&vault),
                1,
                "the server still holds the vault"
            );
        });
        let url = url_rx.await.expect("the vault's thread failed to start it");
        FreezableVault {
            url,
            commands: Some(commands),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Freezes the server; it stays frozen until the returned guard drops.
    pub async fn freeze(&self) -> Frozen {
        let (frozen_tx, frozen_rx) = oneshot::channel();
        let (thaw_tx, thaw_rx) = std::sync::mpsc::channel();
        self.commands
            .as_ref()
            .unwrap()
            .send(Freeze {
                frozen: frozen_tx,
                thaw: thaw_rx,
            })
            .unwrap();
        frozen_rx.await.unwrap();
        Frozen { _thaw: thaw_tx }
    }

    /// Stops the server (thaw it first) and waits for its thread.
    pub async fn stop(mut self) {
        drop(self.commands.take());
        let thread = self.thread.take().unwrap();
        let joined = tokio::task::spawn_blocking(move || thread.join())
            .await
            .unwrap();
        if let Err(panic) = joined {
            std::panic::resume_unwind(panic);
        }
    }
}

/// The `vault-server` binary running `--dev` as a child process on
/// 127.0.0.1:0: for tests that kill it, or that must see whether it
/// panicked (its stderr is kept).
#[derive(Debug)]
pub struct ChildVault {
    child: tokio::process::Child,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// What it wrote to stderr so far.
    stderr: Arc<std::sync::Mutex<String>>,
    /// The task reading stderr: it ends when the child does.
    stderr_reader: JoinHandle<()>,
}

impl ChildVault {
    /// Starts `vault-server --dev` over `data_dir` (created, or reopened if
    /// it holds a dev vault), with `token` as its development token, and
    /// waits until it prints its address and token.
    pub async fn start(data_dir: &Path, token: &str) -> ChildVault {
        Self::start_with_env(data_dir, token, &[]).await
    }

    /// [`ChildVault::start`] with extra environment variables (such as
    /// `RUST_LOG`).
    pub async fn start_with_env(data_dir: &Path, token: &str, env: &[(&str, &str)]) -> ChildVault {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
        let mut command = tokio::process::Command::new(server_binary());
        if on_postgres() {
            command.env("VAULT_POSTGRES_URL", postgres_database_for(data_dir).await);
        }
        let mut child = command
            .envs(env.iter().copied())
            .args(["--dev", "--listen", "127.0.0.1:0", "--dev-token", token])
            .args(["--dev-custodian-token", CUSTODIAN_TOKEN])
            .arg("--data-dir")
            .arg(data_dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start vault-server");
        let stderr = Arc::new(std::sync::Mutex::new(String::new()));
        let mut err = child.stderr.take().expect("stderr");
        let kept = Arc::clone(&stderr);
        let stderr_reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = err.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                kept.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut addr = None;
        // A vault that never says it is ready fails the test, not hangs it.
        let ready = tokio::time::timeout(std::time::Duration::from_secs(120), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.strip_prefix("vault-server listening on ") {
                    addr = rest.split_whitespace().next().and_then(|a| a.parse().ok());
                }
                if line.starts_with("export VAULT_TOKEN=") {
                    break;
                }
            }
        })
        .await;
        if ready.is_err() {
            addr = None;
            let _ = child.start_kill();
        }
        // Keep reading, so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let Some(addr) = addr else {
            let status = child.wait().await;
            panic!(
                "vault-server did not start ({status:?}); its stderr:\n{}",
                stderr.lock().unwrap()
            );
        };
        ChildVault {
            child,
            addr,
            stderr,
            stderr_reader,
        }
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What the child wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the child with SIGKILL and waits for it; panics if it had
    /// exited before (a clean exit or a crash). Returns all it wrote to
    /// stderr.
    pub async fn kill(mut self) -> String {
        use std::os::unix::process::ExitStatusExt;
        self.child.start_kill().expect("SIGKILL");
        let status = self.child.wait().await.expect("wait for the killed vault");
        let _ = (&mut self.stderr_reader).await;
        let stderr = self.stderr();
        assert_eq!(
            status.signal(),
            Some(9),
            "the vault exited before the kill: {status}; stderr:\n{stderr}"
        );
        stderr
    }
}
