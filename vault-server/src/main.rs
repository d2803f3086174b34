//! `vault-server`: the regional data vault.
//!
//! `vault-server --dev` runs a development vault in a local folder;
//! `vault-server --config vault.toml` is the production form.

#![forbid(unsafe_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio::net::TcpListener;
use vault_server::config::Config;
use vault_server::keys::Region;
use vault_server::policy::PolicyHandle;
use vault_server::service::{self, Authenticator, ServerTls};
use vault_server::vault::{OpenOptions, Vault};
use vault_server::{dev, Error};

/// The regional data vault: personal data encrypted field by field under
/// region-bound keys, served over gRPC.
// No `Debug`: the struct holds the development token.
#[derive(Parser)]
#[command(version, about)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["dev", "config"])))]
struct Cli {
    /// Development mode: a vault in a local folder, initialised (one share,
    /// kept in the folder) and unsealed automatically, with a development
    /// token that holds every role.
    #[arg(long)]
    dev: bool,
    /// Production mode: read this TOML configuration file. The server starts
    /// sealed; custodians unseal it with `vaultctl operator unseal`.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen address (overrides the configuration file). Port 0 picks a free port.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Dev mode: the data folder.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "vault-data",
        requires = "dev"
    )]
    data_dir: PathBuf,
    /// Dev mode: the region this vault serves.
    #[arg(long, default_value = "eu", requires = "dev")]
    region: String,
    /// Dev mode: the development token (default: a random one).
    #[arg(
        long,
        env = "VAULT_DEV_TOKEN",
        hide_env_values = true,
        requires = "dev"
    )]
    dev_token: Option<String>,
}

const DEV_LISTEN: &str = "127.0.0.1:8200";

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vault-server: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), Error> {
    let (opts, listen, auth, tls, dev_token) = if let Some(path) = &cli.config {
        let config = Config::load(path)?;
        let opts = config.open_options().map_err(Error::Config)?;
        let auth = config.authenticator().map_err(Error::Config)?;
        // The certificate files are read and checked before anything else
        // starts, so a bad file stops the server with its name.
        let tls = config
            .tls_files()
            .map(|files| ServerTls::load(&files))
            .transpose()?;
        (opts, cli.listen.unwrap_or(config.listen), auth, tls, None)
    } else {
        let region: Region = cli
            .region
            .parse()
            .map_err(|e| Error::Config(format!("--region: {e}")))?;
        let token = cli.dev_token.clone().unwrap_or_else(dev::random_token);
        let mut auth = Authenticator::new();
        auth.add_token(&token, dev::dev_principal());
        let listen = cli
            .listen
            .unwrap_or_else(|| DEV_LISTEN.parse().expect("constant address parses"));
        (
            OpenOptions::dev(&cli.data_dir, region),
            listen,
            auth,
            None,
            Some(token),
        )
    };

    // Reloads follow SIGHUP from now on (also while the store opens).
    tokio::spawn(reload_on_sighup(Arc::clone(&opts.engine.policy)));
    let dev_mode = cli.dev;
    let vault = tokio::task::spawn_blocking(move || -> Result<_, Error> {
        if dev_mode {
            let vault = Vault::open_dev(opts)?;
            dev::seed(&*vault.engine()?)?;
            Ok(vault)
        } else {
            Vault::open(opts)
        }
    })
    .await
    .map_err(|e| Error::Config(format!("start-up task failed: {e}")))??;
    let vault = Arc::new(vault);
    let region = vault.region().clone();
    let status = vault.seal_status();

    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| Error::io(format!("binding {listen}"), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("reading the bound address", e))?;
    let transport = match &tls {
        None => "plaintext",
        Some(tls) if tls.requires_client_certificates() => "mutual TLS",
        Some(_) => "TLS",
    };
    tracing::info!(%addr, %region, transport, "vault listening");
    {
        // Plain stdout lines for people and scripts; the token appears only here.
        let mut out = std::io::stdout().lock();
        match &tls {
            None => {
                let _ = writeln!(out, "vault-server listening on {addr} (region {region})");
            }
            Some(_) => {
                let _ = writeln!(
                    out,
                    "vault-server listening on {addr} (region {region}, {transport})"
                );
            }
        }
        if !status.initialized {
            let _ = writeln!(
                out,
                "vault is not initialised: run `vaultctl operator init --shares N --threshold M`"
            );
        } else if status.sealed {
            let _ = writeln!(
                out,
                "vault is sealed: {} of {} custodians run `vaultctl operator unseal`",
                status.threshold, status.shares
            );
        }
        if let Some(token) = &dev_token {
            let _ = writeln!(
                out,
                "development mode: data in {}, do not use in production",
                cli.data_dir.display()
            );
            let _ = writeln!(
                out,
                "unsealed with the one share in {} (after `vaultctl operator seal`, unseal with --share-file)",
                cli.data_dir.join(vault_server::vault::DEV_SHARE_FILE).display()
            );
            let _ = writeln!(out, "export VAULT_ADDR=http://{addr}");
            let _ = writeln!(out, "export VAULT_TOKEN={token}");
            let _ = writeln!(out, "export VAULT_PURPOSE=development");
        }
        let _ = out.flush();
    }

    service::serve_with_tls(
        listener,
        Arc::clone(&vault),
        Arc::new(auth),
        tls,
        shutdown_signal(),
    )
    .await?;
    // Stop background work and close the store off the reactor.
    let _ = tokio::task::spawn_blocking(move || drop(vault)).await;
    tracing::info!("stopped");
    Ok(())
}

/// Reloads the policy file on every SIGHUP. A file that does not parse is
/// refused (logged with its line) and the policy in force stays.
async fn reload_on_sighup(policy: Arc<PolicyHandle>) {
    #[cfg(unix)]
    {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(hup) => hup,
            Err(e) => {
                tracing::error!(error = %e, "cannot watch SIGHUP; reload the policy through AdminService");
                return;
            }
        };
        while hup.recv().await.is_some() {
            let p = Arc::clone(&policy);
            match tokio::task::spawn_blocking(move || p.reload()).await {
                Ok(Ok(loaded)) => {
                    tracing::info!(source = loaded.source(), "policy reloaded (SIGHUP)")
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "policy reload refused; the policy in force stays")
                }
                Err(e) => tracing::error!(error = %e, "policy reload task failed"),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = policy;
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
