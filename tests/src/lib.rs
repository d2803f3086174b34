//! Support for the end-to-end tests: real vault servers on port 0 over
//! temporary data folders, reached through real sockets.

#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use vault_client::VaultClient;
use vault_server::service::{self, Authenticator};
use vault_server::vault::{OpenOptions, Vault};
use vault_server::{dev, Engine};

/// The development token of every test vault.
pub const TOKEN: &str = "test-root-token";

/// A vault server running in this process on 127.0.0.1:0.
#[derive(Debug)]
pub struct TestVault {
    /// The bound address.
    pub addr: SocketAddr,
    /// The vault, for its engine's counters.
    pub vault: Arc<Vault>,
    /// The data folder.
    pub data_dir: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<vault_server::Result<()>>>,
}

impl TestVault {
    /// Starts a dev-mode vault of `region` over `data_dir` (created if
    /// missing): initialised with one share and unsealed.
    pub async fn start(data_dir: &Path, region: &str) -> vault_server::Result<TestVault> {
        let opts = OpenOptions::dev(data_dir, region.parse().unwrap());
        let vault = tokio::task::spawn_blocking(move || {
            let vault = Vault::open_dev(opts)?;
            dev::seed(&*vault.engine()?)?;
            Ok::<_, vault_server::Error>(vault)
        })
        .await
        .unwrap()?;
        let mut auth = Authenticator::new();
        auth.add_token(TOKEN, dev::dev_principal());
        Self::serve(Arc::new(vault), auth, data_dir).await
    }

    /// Starts a dev-mode vault with the given options (data folder, region,
    /// engine options such as the re-wrap pace).
    pub async fn start_dev_with(opts: OpenOptions) -> vault_server::Result<TestVault> {
        let data_dir = opts.data_dir.clone();
        let vault = tokio::task::spawn_blocking(move || {
            let vault = Vault::open_dev(opts)?;
            dev::seed(&*vault.engine()?)?;
            Ok::<_, vault_server::Error>(vault)
        })
        .await
        .unwrap()?;
        let mut auth = Authenticator::new();
        auth.add_token(TOKEN, dev::dev_principal());
        Self::serve(Arc::new(vault), auth, &data_dir).await
    }

    /// Starts a vault as `vault-server --config` would: sealed (or not yet
    /// initialised), with the given options and tokens.
    pub async fn start_sealed(
        opts: OpenOptions,
        auth: Authenticator,
    ) -> vault_server::Result<TestVault> {
        let data_dir = opts.data_dir.clone();
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
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(service::serve(
            listener,
            Arc::clone(&vault),
            Arc::new(auth),
            async {
                let _ = rx.await;
            },
        ));
        Ok(TestVault {
            addr,
            vault,
            data_dir: data_dir.to_owned(),
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client with the development token.
    pub async fn client(&self) -> VaultClient {
        VaultClient::connect(self.url(), TOKEN).await.unwrap()
    }

    /// A client with another token.
    pub async fn client_with(&self, token: &str) -> VaultClient {
        VaultClient::connect(self.url(), token).await.unwrap()
    }

    /// The engine (the vault must be unsealed), for its counters.
    pub fn engine(&self) -> Arc<Engine> {
        self.vault.engine().unwrap()
    }

    /// Stops the server, waits for it to drain, and closes the store, so the
    /// data folder can be opened by someone else.
    pub async fn stop(self) {
        let vault = self.stop_serving().await;
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

/// The `vault-server` binary next to the test executable (built by
/// `cargo build --workspace --bins`, which the test command runs first).
pub fn server_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = dir.join("vault-server");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)",
        bin.display()
    );
    bin
}

/// The `vaultctl` binary, next to `vault-server` (built by the same
/// `cargo build --workspace --all-targets`).
pub fn vaultctl_binary() -> PathBuf {
    let bin = server_binary().with_file_name("vaultctl");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)",
        bin.display()
    );
    bin
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
