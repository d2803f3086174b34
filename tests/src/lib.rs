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
use vault_server::engine::{self, OpenOptions};
use vault_server::service::{self, Authenticator};
use vault_server::{dev, Engine};

/// The development token of every test vault.
pub const TOKEN: &str = "test-root-token";

/// A vault server running in this process on 127.0.0.1:0.
#[derive(Debug)]
pub struct TestVault {
    /// The bound address.
    pub addr: SocketAddr,
    /// The engine, for counters.
    pub engine: Arc<Engine>,
    /// The data folder.
    pub data_dir: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<vault_server::Result<()>>>,
}

impl TestVault {
    /// Starts a dev-mode vault of `region` over `data_dir` (created if missing).
    pub async fn start(data_dir: &Path, region: &str) -> vault_server::Result<TestVault> {
        let opts = OpenOptions::dev(data_dir, region.parse().unwrap());
        let engine = tokio::task::spawn_blocking(move || {
            let engine = engine::open(&opts)?;
            dev::seed(&engine)?;
            Ok::<_, vault_server::Error>(engine)
        })
        .await
        .unwrap()?;
        let engine = Arc::new(engine);
        let mut auth = Authenticator::new();
        auth.add_token(TOKEN, dev::dev_principal());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(service::serve(
            listener,
            Arc::clone(&engine),
            Arc::new(auth),
            async {
                let _ = rx.await;
            },
        ));
        Ok(TestVault {
            addr,
            engine,
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

    /// Stops the server, waits for it to drain, and closes the store, so the
    /// data folder can be opened by someone else.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
        let engine = self.engine;
        assert_eq!(
            Arc::strong_count(&engine),
            1,
            "the server still holds the engine"
        );
        drop(engine);
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
