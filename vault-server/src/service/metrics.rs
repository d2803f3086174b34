//! The metrics listener: `GET /metrics` answers the monitor's counters and
//! the vault's state in the Prometheus (OpenMetrics) text format, over
//! plain HTTP/1.1 on a port of its own. No authentication: it holds no
//! personal data (see `monitor::metrics`), but it does name principals,
//! purposes and collections; keep the port on a network the operators
//! trust.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::monitor::metrics::Snapshot;
use crate::{Result, Vault};

/// The content type of the OpenMetrics text format.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The vault's state now, for the gauges.
fn snapshot(vault: &Vault) -> Snapshot {
    let monitor = vault.monitor();
    let mut now = Snapshot {
        sealed: *vault.watch_sealed().borrow(),
        audit_size: vault.audit_log().size(),
        checkpoint_age_secs: monitor.checkpoint_age_secs(),
        lockouts: monitor.lockouts().len() as u64,
        ..Snapshot::default()
    };
    if let Ok(engine) = vault.engine() {
        let versions = engine.root_versions();
        now.root_version = versions.iter().find(|k| k.current).map(|k| k.version);
        now.root_wraps = versions.iter().map(|k| (k.version, k.wraps)).collect();
        now.budget_use = monitor.budget_use(engine.policy().budgets());
        now.cosignature_age_secs = engine
            .witness_names()
            .into_iter()
            .map(|name| {
                let age = monitor.cosignature_age_secs(&name);
                (name, age)
            })
            .collect();
        let job = engine.rewrap_progress();
        if !job.finished {
            now.rewrap_left = job.pending_at_start.saturating_sub(job.rewrapped);
        }
    }
    now
}

fn answer(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

async fn handle(
    vault: Arc<Vault>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let text = "text/plain; charset=utf-8";
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let body = vault.monitor().metrics().encode(&snapshot(&vault));
            answer(StatusCode::OK, CONTENT_TYPE, body)
        }
        (_, "/metrics") => answer(
            StatusCode::METHOD_NOT_ALLOWED,
            text,
            "only GET /metrics\n".into(),
        ),
        _ => answer(StatusCode::NOT_FOUND, text, "only GET /metrics\n".into()),
    })
}

/// Serves `GET /metrics` of `vault` on `listener` until `shutdown`
/// completes.
pub async fn serve_metrics(
    listener: TcpListener,
    vault: Arc<Vault>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let vault = Arc::clone(&vault);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(Arc::clone(&vault), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics connection ended with an error");
            }
        });
    }
}
