//! The gRPC adapter: the only module that knows `vault-proto`. It
//! authenticates, decodes, calls the engine on the blocking pool and encodes.
//! `grpc.health.v1` and server reflection are always registered. The port
//! is plaintext HTTP/2 unless a [`ServerTls`] is given (TLS, or mutual TLS
//! with client CAs).

mod admin;
mod audit;
mod auth;
mod convert;
mod custody;
mod metrics;
mod requests;
pub(crate) mod tls;
mod vault;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tonic::service::interceptor::InterceptedService;
use tonic_health::ServingStatus;
use vault_proto::v1::admin_service_server::AdminServiceServer;
use vault_proto::v1::audit_service_server::AuditServiceServer;
use vault_proto::v1::operator_service_server::OperatorServiceServer;
use vault_proto::v1::subject_service_server::SubjectServiceServer;
use vault_proto::v1::vault_service_server::VaultServiceServer;

pub use admin::{AdminApi, RoleLookup};
pub use audit::AuditApi;
pub use auth::{hash_token, Authenticator, TokenGrant, PURPOSE_HEADER};
pub use custody::{OperatorApi, SubjectApi};
pub use metrics::serve_metrics;
pub use requests::{RequestAudit, REQUEST_ID_HEADER};
pub use tls::{certificate_principal, ServerTls, TlsFiles};
pub use vault::VaultApi;

use crate::{Error, Result, Vault};

/// The gRPC service name, as health checks know it.
pub const SERVICE_NAME: &str = "vault.v1.VaultService";
/// The data services; health reports them NOT_SERVING while sealed.
const DATA_SERVICES: [&str; 4] = [
    "",
    SERVICE_NAME,
    "vault.v1.SubjectService",
    "vault.v1.AuditService",
];
/// Largest request or response message accepted.
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

/// Reports the data services NOT_SERVING while `down` (sealed, or the audit
/// log refusing writes), SERVING otherwise.
async fn set_data_health(health: &tonic_health::server::HealthReporter, down: bool) {
    let status = if down {
        ServingStatus::NotServing
    } else {
        ServingStatus::Serving
    };
    for name in DATA_SERVICES {
        health.set_service_status(name, status).await;
    }
}

/// Serves the vault in plaintext on `listener` until `shutdown` completes,
/// then drains in-flight requests and returns. Health follows the seal and
/// the audit log: the data services are SERVING only while the vault is
/// unsealed and its audit log takes writes; the operator service is always
/// SERVING (it is how a vault is unsealed).
pub async fn serve(
    listener: TcpListener,
    vault: Arc<Vault>,
    auth: Arc<Authenticator>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    serve_with_tls(listener, vault, auth, None, shutdown).await
}

/// How the server is run, beyond its listener, vault, credentials and TLS.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServeOptions {
    /// Plaintext was allowed on an address other than loopback (the
    /// configuration's `danger_allow_plaintext`, or dev mode's
    /// `--dev-listen-anywhere`); `operator status` says so.
    pub danger_allow_plaintext: bool,
}

/// As [`serve`], over TLS when `tls` is given. With client CAs, a
/// connection without a valid client certificate fails its handshake and
/// reaches no service (health and reflection included); a request's client
/// certificate then names its principal (see [`Authenticator`]).
pub async fn serve_with_tls(
    listener: TcpListener,
    vault: Arc<Vault>,
    auth: Arc<Authenticator>,
    tls: Option<ServerTls>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    serve_with(
        listener,
        vault,
        auth,
        tls,
        ServeOptions::default(),
        shutdown,
    )
    .await
}

/// As [`serve_with_tls`], with options.
pub async fn serve_with(
    listener: TcpListener,
    vault: Arc<Vault>,
    auth: Arc<Authenticator>,
    tls: Option<ServerTls>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let transport = match &tls {
        Some(tls) if tls.requires_client_certificates() => "mutual TLS",
        Some(_) => "TLS",
        None if options.danger_allow_plaintext => "plaintext (allowed on any address)",
        None => "plaintext (loopback)",
    };
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = &tls {
        server = server
            .tls_config(tls.server_config())
            .map_err(|e| Error::Config(format!("tls: {e}")))?;
    }
    // Every request, to any service, leaves one audit event.
    let mut server = server.layer(RequestAudit::new(
        Arc::clone(&vault),
        &[
            vault_proto::v1::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        ],
    ));
    let (health, health_service) = tonic_health::server::health_reporter();
    for always in ["vault.v1.OperatorService", "vault.v1.AdminService"] {
        health
            .set_service_status(always, ServingStatus::Serving)
            .await;
    }
    // The status as of now is set before serving starts; a task follows
    // every change after that. The data services are down while the vault
    // is sealed, and while its audit log refuses writes (after a failed
    // write, a full disk say: no request could be served).
    let mut sealed = vault.watch_sealed();
    let mut refusing = vault.audit_log().watch_refusing();
    let now = *sealed.borrow_and_update() || *refusing.borrow_and_update();
    set_data_health(&health, now).await;
    let follower = {
        let health = health.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = sealed.changed() => if r.is_err() { break },
                    r = refusing.changed() => if r.is_err() { break },
                }
                let now = *sealed.borrow_and_update() || *refusing.borrow_and_update();
                set_data_health(&health, now).await;
            }
        })
    };

    let sealer = seal_on_critical(&vault);

    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(vault_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Config(format!("reflection: {e}")))?;

    let api = VaultServiceServer::new(VaultApi::new(Arc::clone(&vault)))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let api = InterceptedService::new(
        api,
        auth::interceptor(Arc::clone(&auth), Some(Arc::clone(vault.monitor()))),
    );
    let operator = InterceptedService::new(
        OperatorServiceServer::new(OperatorApi::new(Arc::clone(&vault), transport)),
        // Custody stays open to a locked-out principal: shares guard it, and
        // a custodian must be able to seal and to lift lockouts.
        auth::interceptor(Arc::clone(&auth), None),
    );
    let subjects = InterceptedService::new(
        SubjectServiceServer::new(SubjectApi::new(Arc::clone(&vault)))
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        auth::interceptor(Arc::clone(&auth), Some(Arc::clone(vault.monitor()))),
    );
    let lookup = {
        let auth = Arc::clone(&auth);
        Arc::new(move |name: &str| auth.credential_roles(name)) as admin::RoleLookup
    };
    let admin = InterceptedService::new(
        AdminServiceServer::new(AdminApi::new(Arc::clone(&vault), vault.policy(), lookup)),
        auth::interceptor(Arc::clone(&auth), Some(Arc::clone(vault.monitor()))),
    );
    let (stopping, stopping_rx) = tokio::sync::watch::channel(false);
    let audit = InterceptedService::new(
        AuditServiceServer::new(AuditApi::new(Arc::clone(&vault), stopping_rx))
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        auth::interceptor(auth, Some(Arc::clone(vault.monitor()))),
    );

    let incoming = TcpListenerStream::new(listener).map(|conn| {
        if let Ok(stream) = &conn {
            // Small request/response pairs: no Nagle delay.
            let _ = stream.set_nodelay(true);
        }
        conn
    });

    let served = server
        .add_service(health_service)
        .add_service(reflection)
        .add_service(api)
        .add_service(operator)
        .add_service(subjects)
        .add_service(admin)
        .add_service(audit)
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            // Long-lived streams end, so the drain below can finish.
            stopping.send_replace(true);
            follower.abort();
            if let Some(sealer) = sealer {
                sealer.abort();
            }
            set_data_health(&health, true).await;
            tracing::info!("shutting down: draining in-flight requests");
        })
        .await
        .map_err(|e| Error::Serve(e.to_string()));
    served
}

/// With `[monitor] on_critical = "seal"`: a task that seals the vault on
/// every critical alert (a sealed vault stays sealed; custodians unseal it).
fn seal_on_critical(vault: &Arc<Vault>) -> Option<tokio::task::JoinHandle<()>> {
    let monitor = vault.monitor();
    if monitor.options().on_critical != crate::monitor::OnCritical::Seal {
        return None;
    }
    let mut alerts = monitor.subscribe();
    let vault = Arc::clone(vault);
    Some(tokio::spawn(async move {
        loop {
            let critical = match alerts.recv().await {
                Ok(alert) => alert.severity == crate::monitor::Severity::Critical,
                // Missed alerts may have been critical: seal to be safe.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            if !critical || *vault.watch_sealed().borrow() {
                continue;
            }
            tracing::error!("a critical alert: sealing the vault (on_critical = \"seal\")");
            let v = Arc::clone(&vault);
            let sealed = tokio::task::spawn_blocking(move || {
                v.seal(&crate::policy::Caller::internal("monitor"))
            })
            .await;
            if !matches!(sealed, Ok(Ok(()))) {
                tracing::error!("sealing on a critical alert failed");
            }
        }
    }))
}
