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
use vault_server::service::{self, Authenticator, ServerTls};
use vault_server::vault::{OpenOptions, Vault};
use vault_server::{dev, Error};

/// jemalloc for every allocation of the process: Rust's, and RocksDB's too
/// (the crate's `unprefixed_malloc_on_supported_platforms` makes it the
/// process's `malloc`). glibc's allocator kept about a quarter more
/// resident memory than the vault had in use at 10^6 records (per-thread
/// arenas), beyond the bound of the configured caches.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The regional data vault: personal data encrypted field by field under
/// region-bound keys, served over gRPC.
// No `Debug`: the struct holds the development token.
#[derive(Parser)]
#[command(version, about)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["dev", "config"])))]
struct Cli {
    /// Development mode: a vault in a local folder, initialised (one share,
    /// kept in the folder) and unsealed automatically, with two development
    /// tokens: one for data (every role but custody) and one for custody.
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
    /// Dev mode: the development custodian's token (default: a random one).
    #[arg(
        long,
        env = "VAULT_DEV_CUSTODIAN_TOKEN",
        hide_env_values = true,
        requires = "dev"
    )]
    dev_custodian_token: Option<String>,
    /// Dev mode: allow a listen address other than loopback. A development
    /// vault speaks plaintext and prints its tokens: anyone who reaches the
    /// port can use them.
    #[arg(long, requires = "dev")]
    dev_listen_anywhere: bool,
    /// Serve metrics (Prometheus text format, `GET /metrics`, plain HTTP)
    /// on this address (overrides the configuration's `metrics_listen`).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Development mode: keep records, the audit log and the keyring in
    /// this PostgreSQL database (a libpq connection string) instead of
    /// RocksDB in the data folder. With --config, `[storage]` says.
    #[arg(
        long,
        value_name = "CONNINFO",
        env = "VAULT_POSTGRES_URL",
        hide_env_values = true,
        requires = "dev"
    )]
    dev_postgres_url: Option<String>,
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
    let mut metrics_listen = cli.metrics_listen;
    let (opts, listen, auth, tls, dev_tokens, allow_plaintext) = if let Some(path) = &cli.config {
        let config = Config::load(path)?;
        let opts = config.open_options().map_err(Error::Config)?;
        let auth = config.authenticator().map_err(Error::Config)?;
        // The certificate files are read and checked before anything else
        // starts, so a bad file stops the server with its name.
        let tls = config
            .tls_files()
            .map(|files| ServerTls::load(&files))
            .transpose()?;
        let listen = cli.listen.unwrap_or(config.listen);
        metrics_listen = metrics_listen.or(config.metrics_listen);
        vault_server::config::check_listener(listen, tls.is_some(), config.danger_allow_plaintext)
            .map_err(Error::Config)?;
        if config.danger_allow_plaintext {
            tracing::warn!(
                "danger_allow_plaintext = true: the port may speak plaintext on any address"
            );
        }
        if config.policy_file.is_none() {
            tracing::warn!(
                "no policy_file: the built-in role policy is in force (every role's \
                 operations, for any purpose, every field plain); set policy_file to \
                 restrict purposes and fields"
            );
        }
        if opts.postgres.is_none() && opts.keyring_file.starts_with(&opts.data_dir) {
            tracing::warn!(
                "the keyring file is inside the data folder: a copy of the folder then \
                 also holds the keyring of its day, which custodians' shares open, and \
                 with it the keys of subjects erased since; set keyring_file outside \
                 data_dir and back it up apart"
            );
        }
        (opts, listen, auth, tls, None, config.danger_allow_plaintext)
    } else {
        let region: Region = cli
            .region
            .parse()
            .map_err(|e| Error::Config(format!("--region: {e}")))?;
        let token = cli.dev_token.clone().unwrap_or_else(dev::random_token);
        let custodian = cli
            .dev_custodian_token
            .clone()
            .unwrap_or_else(dev::random_token);
        if token == custodian {
            return Err(Error::Config(
                "--dev-token and --dev-custodian-token must differ (custody and data access \
                 are separate duties)"
                    .into(),
            ));
        }
        let mut auth = Authenticator::new();
        auth.add_token(&token, dev::dev_principal());
        auth.add_token(&custodian, dev::dev_custodian());
        let listen = cli
            .listen
            .unwrap_or_else(|| DEV_LISTEN.parse().expect("constant address parses"));
        if !listen.ip().is_loopback() && !cli.dev_listen_anywhere {
            return Err(Error::Config(format!(
                "development mode listens on loopback only ({listen} is not): it speaks \
                 plaintext and prints its tokens; add --dev-listen-anywhere to expose it anyway"
            )));
        }
        let mut opts = OpenOptions::dev(&cli.data_dir, region);
        if let Some(url) = &cli.dev_postgres_url {
            opts.postgres = Some(vault_server::storage::PgOptions::new(url.clone()));
        }
        (
            opts,
            listen,
            auth,
            None,
            Some((token, custodian)),
            cli.dev_listen_anywhere,
        )
    };

    // SIGHUP is caught from now on (also while the store opens); reloads
    // start once the vault is open, so each one leaves an audit event.
    let hup = watch_sighup();
    // So are SIGINT and SIGTERM: a stop asked for at any time is graceful.
    let shutdown = shutdown_signal();
    let dev_mode = cli.dev;
    let vault = tokio::task::spawn_blocking(move || -> Result<_, Error> {
        if dev_mode {
            let vault = Vault::open_dev(opts)?;
            dev::seed(&*vault.engine()?)?;
            Ok(vault)
        } else {
            let vault = Vault::open(opts)?;
            if vault.hsm_sealed() {
                // Auto-unseal; a failure is logged, recorded and shown
                // below and by `operator status`: the vault stays sealed.
                let _ = vault.auto_unseal(&vault_server::policy::Caller::internal("auto-unseal"));
            }
            Ok(vault)
        }
    })
    .await
    .map_err(|e| Error::Config(format!("start-up task failed: {e}")))??;
    let vault = Arc::new(vault);
    tokio::spawn(reload_on_sighup(hup, Arc::clone(&vault)));
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
    if tls.is_none() && !addr.ip().is_loopback() {
        // Only with danger_allow_plaintext or --dev-listen-anywhere.
        tracing::warn!(
            %addr,
            "plaintext on a non-loopback address (allowed explicitly): tokens, shares and \
             values cross the network in the clear"
        );
    }
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
        if let Some(m) = &status.measurement {
            let _ = writeln!(
                out,
                "build measurement ({}, {}): {}",
                status.evidence,
                if status.attested {
                    "attested"
                } else {
                    "not attested"
                },
                hex::encode(m)
            );
        }
        if !status.initialized {
            let _ = writeln!(
                out,
                "vault is not initialised: run `vaultctl operator init --shares N --threshold M`"
            );
        } else if status.sealed && status.seal == "pkcs11" {
            let _ = writeln!(
                out,
                "vault is sealed: {}; once fixed, run `vaultctl operator unseal --hsm` or restart",
                status
                    .seal_message
                    .as_deref()
                    .unwrap_or("the HSM has not unsealed it")
            );
        } else if status.sealed {
            let _ = writeln!(
                out,
                "vault is sealed: {} of {} custodians run `vaultctl operator unseal`",
                status.threshold, status.shares
            );
        } else if status.seal == "pkcs11" {
            let _ = writeln!(
                out,
                "vault unsealed by the HSM ({})",
                status.seal_identity.as_deref().unwrap_or("")
            );
        }
        if let Some((token, custodian)) = &dev_tokens {
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
            let _ = writeln!(
                out,
                "custody (operator commands) has its own token: VAULT_CUSTODIAN_TOKEN={custodian}"
            );
        }
        let _ = out.flush();
    }

    let metrics = match metrics_listen {
        Some(at) => {
            let listener = TcpListener::bind(at)
                .await
                .map_err(|e| Error::io(format!("binding the metrics address {at}"), e))?;
            let bound = listener
                .local_addr()
                .map_err(|e| Error::io("reading the metrics address", e))?;
            if !bound.ip().is_loopback() {
                tracing::warn!(%bound, "metrics served in plaintext beyond loopback: they name principals, purposes and collections");
            }
            tracing::info!(%bound, "metrics listening");
            let _ = writeln!(
                std::io::stdout().lock(),
                "metrics on http://{bound}/metrics"
            );
            Some(tokio::spawn(service::serve_metrics(
                listener,
                Arc::clone(&vault),
                std::future::pending(),
            )))
        }
        None => None,
    };

    service::serve_with(
        listener,
        Arc::clone(&vault),
        Arc::new(auth),
        tls,
        service::ServeOptions {
            danger_allow_plaintext: allow_plaintext,
        },
        shutdown,
    )
    .await?;
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    // Stop background work and close the store off the reactor.
    let _ = tokio::task::spawn_blocking(move || drop(vault)).await;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = Option<()>;

/// Starts catching SIGHUP (whose default action would end the process).
fn watch_sighup() -> Hangups {
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(hup) => Some(hup),
            Err(e) => {
                tracing::error!(error = %e, "cannot watch SIGHUP; reload the policy through AdminService");
                None
            }
        }
    }
    #[cfg(not(unix))]
    None
}

/// Reloads the policy file on every SIGHUP. A file that does not parse is
/// refused (logged with its line) and the policy in force stays; either
/// way the reload is an audit event naming the policy in force.
async fn reload_on_sighup(hup: Hangups, vault: Arc<Vault>) {
    #[cfg(unix)]
    {
        let Some(mut hup) = hup else { return };
        while hup.recv().await.is_some() {
            let v = Arc::clone(&vault);
            let caller = vault_server::policy::Caller::internal("vault (SIGHUP)");
            match tokio::task::spawn_blocking(move || v.reload_policy(&caller)).await {
                Ok(Ok(loaded)) => {
                    tracing::info!(policy = %loaded.identity(), "policy reloaded (SIGHUP)")
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "policy reload refused; the policy in force stays")
                }
                Err(e) => tracing::error!(error = %e, "policy reload task failed"),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (hup, vault);
}

/// Completes on SIGINT or SIGTERM. The handlers are installed when this is
/// called, not when the future is first polled: a signal that arrives
/// right after the ready lines stops the server gracefully rather than
/// killing it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let (mut int, mut term) = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::interrupt()).ok(),
            signal(SignalKind::terminate()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let int = async {
                match &mut int {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let term = async {
                match &mut term {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = int => {},
                _ = term => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
