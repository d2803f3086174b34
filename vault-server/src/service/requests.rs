//! One audit event per gRPC request (ARCHITECTURE.md, invariant 17), whatever
//! the request reaches: a tower layer around every service, health and
//! reflection included.
//!
//! Each request gets a random id (the `x-vault-request-id` header of its
//! response). The interceptor copies it into the [`Caller`], so the event
//! the engine writes for the request carries it, and the audit log counts
//! the events written under it. When the response is ready and the request
//! has no event yet — it was refused before any handler ran (no or bad
//! credentials, a malformed message, a sealed vault) or it reached a
//! service that records nothing itself (health, reflection) — the layer
//! writes one, from the method's name and the response's gRPC status. If
//! that write fails, the response is replaced by `UNAVAILABLE`: no audit,
//! no answer. (A handler whose own event failed has answered accordingly:
//! data requests fail closed; a custody change already made keeps its
//! answer, and the log refuses all writes from then on.)
//!
//! Each request runs to its end in a task of its own, so one whose client
//! goes away (or whose deadline passes) still leaves its event.
//!
//! [`Caller`]: crate::policy::Caller

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use prost::Message;
use tonic::codegen::http;
use tonic::codegen::Service;
use tonic::{Code, Status};

use crate::audit::Event;
use crate::Vault;

/// What the interceptor's refusal of a locked-out principal says (see
/// `Monitor::check_locked`).
const LOCKED_OUT: &str = "is locked out for";

/// The response header naming a request's id (its audit event's
/// `request_id`).
pub const REQUEST_ID_HEADER: &str = "x-vault-request-id";

/// What the layer tells the rest of the stack about a request (a request
/// extension).
#[derive(Debug)]
pub struct RequestMark {
    /// The request's id.
    pub id: String,
    /// Who the interceptor authenticated, and their stated purpose.
    who: OnceLock<(String, Option<String>)>,
}

impl RequestMark {
    /// Records who the interceptor authenticated (the first call counts).
    pub fn authenticated(&self, principal: &str, purpose: Option<&str>) {
        let _ = self
            .who
            .set((principal.to_owned(), purpose.map(str::to_owned)));
    }
}

/// The layer (see the module docs).
#[derive(Debug, Clone)]
pub struct RequestAudit {
    vault: Arc<Vault>,
    /// `/package.Service/Method` of every method served: only these names
    /// go into the log (a path is whatever the client sent).
    methods: Arc<HashSet<String>>,
}

impl RequestAudit {
    /// The layer over `vault`, knowing the methods of these encoded
    /// `FileDescriptorSet`s.
    pub fn new(vault: Arc<Vault>, descriptor_sets: &[&[u8]]) -> Self {
        let mut methods = HashSet::new();
        for set in descriptor_sets {
            // Sets compiled into this binary; one that does not decode only
            // makes its methods show as "<unknown method>".
            let Ok(set) = prost_types::FileDescriptorSet::decode(*set) else {
                tracing::error!("a compiled-in descriptor set does not decode");
                continue;
            };
            for file in set.file {
                for service in &file.service {
                    for method in &service.method {
                        methods.insert(format!(
                            "/{}.{}/{}",
                            file.package(),
                            service.name(),
                            method.name()
                        ));
                    }
                }
            }
        }
        RequestAudit {
            vault,
            methods: Arc::new(methods),
        }
    }

    /// The operation name an event gives the request at `path`.
    fn operation(&self, path: &str) -> String {
        if self.methods.contains(path) {
            path.trim_start_matches('/').to_owned()
        } else {
            "<unknown method>".to_owned()
        }
    }
}

impl<S> tower_layer::Layer<S> for RequestAudit {
    type Service = Audited<S>;

    fn layer(&self, inner: S) -> Audited<S> {
        Audited {
            inner,
            audit: self.clone(),
        }
    }
}

/// A service whose every request leaves exactly one audit event.
#[derive(Debug, Clone)]
pub struct Audited<S> {
    inner: S,
    audit: RequestAudit,
}

impl<S, B> Service<http::Request<B>> for Audited<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // The clone is not ready; the ready one serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let audit = self.audit.clone();
        let guard = audit.vault.audit_log().begin_request();
        let mark = Arc::new(RequestMark {
            id: guard.id().to_owned(),
            who: OnceLock::new(),
        });
        let operation = audit.operation(req.uri().path());
        let started = std::time::Instant::now();
        req.extensions_mut().insert(Arc::clone(&mark));
        // The request runs in a task of its own: if its caller's future is
        // dropped (the client went away, or its `grpc-timeout` ran out,
        // which tonic enforces outside this layer), the request still
        // finishes and leaves its event.
        let task = tokio::spawn(async move {
            // A handler that panics (engine work runs inline in this task)
            // answers INTERNAL and still leaves the request's one event.
            let mut response = match CatchPanic(Box::pin(inner.call(req))).await {
                Ok(response) => response?,
                Err(()) => {
                    tracing::error!(operation, "a request handler panicked");
                    Status::internal("internal error").into_http()
                }
            };
            client_faults_are_invalid_arguments(&mut response);
            let monitor = audit.vault.monitor();
            let code = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("0")
                .to_owned();
            monitor
                .metrics()
                .request(&operation, &code, started.elapsed().as_secs_f64());
            if let Some(reason) = refusal(&code, &response) {
                monitor.metrics().denied(reason);
            }
            // A refusal counts towards the caller's lockout.
            if code == "7" {
                if let Some((principal, purpose)) = mark.who.get() {
                    monitor.denied(principal, purpose.as_deref());
                }
            }
            let events = guard.finish();
            if events.attempted == 0 {
                let ev = fallback_event(&mark, &operation, &response);
                if audit.vault.append_event_async(ev).await.is_err() {
                    tracing::error!(
                        operation,
                        "the audit event of a request could not be written; refusing it"
                    );
                    response =
                        Status::unavailable("the audit log is unavailable: the request is refused")
                            .into_http();
                }
            } else if events.written == 0 {
                // The handler's own event failed. A handler that returns
                // data failed closed already; one whose effect happened
                // outside the store (a keyring change) keeps its answer:
                // replacing it would hide what was done (init's shares).
                tracing::error!(operation, "a request's audit event could not be written");
            } else if events.written > 1 {
                tracing::error!(
                    operation,
                    events = events.written,
                    "a request was recorded more than once"
                );
            }
            if let Ok(v) = http::HeaderValue::from_str(&mark.id) {
                response.headers_mut().insert(REQUEST_ID_HEADER, v);
            }
            Ok(response)
        });
        Box::pin(async move {
            match task.await {
                Ok(result) => result,
                Err(_) => Ok(Status::internal("internal error").into_http()),
            }
        })
    }
}

/// A future whose panic comes back as `Err(())` instead of unwinding
/// through the task that polls it.
struct CatchPanic<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchPanic<F> {
    type Output = Result<F::Output, ()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.get_mut().0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(())),
        }
    }
}

/// tonic answers a request body it cannot read with `INTERNAL`: a
/// message that does not decode, no message, a truncated frame, a
/// compressed flag without an encoding or an unknown flag. That is the
/// client's fault, not the server's, and an operator's alerts on
/// `INTERNAL` should not fire for it: such an answer becomes
/// `INVALID_ARGUMENT`, with tonic's message. (The gRPC compression spec
/// asks for `INTERNAL` on the compressed-flag case; the vault answers it
/// like every other malformed frame.) Only these messages of tonic's are
/// rewritten; every other `INTERNAL` is kept.
fn client_faults_are_invalid_arguments(response: &mut http::Response<tonic::body::Body>) {
    const CLIENT_FAULTS: &[&str] = &[
        "failed to decode Protobuf message",
        "protocol error: received message with",
        "Missing request message.",
        "Unexpected EOF decoding stream.",
    ];
    let headers = response.headers_mut();
    if headers.get("grpc-status").map(http::HeaderValue::as_bytes) != Some(b"13") {
        return;
    }
    let Some(message) = headers.get("grpc-message") else {
        return;
    };
    let message = percent_encoding::percent_decode(message.as_bytes()).decode_utf8_lossy();
    if CLIENT_FAULTS.iter().any(|p| message.starts_with(p)) {
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
    }
}

/// The gRPC message of a response, decoded.
fn message(response: &http::Response<tonic::body::Body>) -> String {
    response
        .headers()
        .get("grpc-message")
        .map(|m| {
            percent_encoding::percent_decode(m.as_bytes())
                .decode_utf8_lossy()
                .into_owned()
        })
        .unwrap_or_default()
}

/// Why a request was refused, for the metrics: `None` unless it was
/// (`PERMISSION_DENIED`, `UNAUTHENTICATED`, or a read over budget).
fn refusal(code: &str, response: &http::Response<tonic::body::Body>) -> Option<&'static str> {
    match code {
        "7" if message(response).contains(LOCKED_OUT) => Some("locked out"),
        "7" => Some("permission denied"),
        "16" => Some("unauthenticated"),
        "8" if message(response).starts_with("over the read budget") => Some("budget exceeded"),
        _ => None,
    }
}

/// The event of a request no handler recorded: who (if authenticated),
/// the method, and the outcome its response's gRPC status gives.
fn fallback_event(
    mark: &RequestMark,
    operation: &str,
    response: &http::Response<tonic::body::Body>,
) -> Event {
    let (principal, purpose) = match mark.who.get() {
        Some((p, purpose)) => (p.as_str(), purpose.as_deref()),
        None => ("unauthenticated", None),
    };
    let mut ev = Event::new(principal, purpose, operation, Some(&mark.id));
    // A gRPC status in the headers: a "trailers-only" error response.
    // Without one the call went on (its status comes in the trailers).
    let status = response
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().ok().and_then(|s| s.parse::<i32>().ok()));
    match status {
        None | Some(Some(0)) => {}
        Some(code) => {
            let code = code.map_or(Code::Unknown, Code::from);
            ev.decision = match code {
                Code::Unauthenticated | Code::PermissionDenied => "denied",
                _ => "failed",
            }
            .into();
            // A lockout is named as such (the interceptor's own message:
            // it holds no value); other messages stay out of the log.
            let locked_out =
                code == Code::PermissionDenied && message(response).contains(LOCKED_OUT);
            ev.reason = Some(
                if locked_out {
                    "locked out"
                } else {
                    code_kind(code)
                }
                .to_owned(),
            );
        }
    }
    ev
}

/// The reason an event gives a gRPC status code (as `audit::kind_of` words
/// the vault's own errors).
fn code_kind(code: Code) -> &'static str {
    match code {
        Code::InvalidArgument => "invalid argument",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::Unauthenticated => "unauthenticated",
        Code::ResourceExhausted => "limit exceeded",
        Code::FailedPrecondition => "failed precondition",
        Code::Unavailable => "unavailable",
        Code::Unimplemented => "unimplemented",
        Code::Cancelled => "cancelled",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::OutOfRange => "out of range",
        Code::DataLoss => "integrity check failed",
        _ => "internal error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response_with(status: Option<&str>) -> http::Response<tonic::body::Body> {
        let mut r = http::Response::new(tonic::body::Body::empty());
        if let Some(s) = status {
            r.headers_mut().insert("grpc-status", s.parse().unwrap());
        }
        r
    }

    #[test]
    fn a_panicking_handler_future_becomes_an_error_not_an_unwind() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let ok = rt.block_on(CatchPanic(Box::pin(async { 7 })));
        assert_eq!(ok, Ok(7));
        let panicked = rt.block_on(CatchPanic(Box::pin(async {
            tokio::task::yield_now().await;
            panic!("a handler bug");
        })));
        assert_eq!(panicked, Err::<(), ()>(()));
    }

    #[test]
    fn undecodable_requests_are_invalid_arguments_and_our_internal_errors_stay() {
        let mut r = Status::internal("failed to decode Protobuf message: invalid wire type")
            .into_http::<tonic::body::Body>();
        client_faults_are_invalid_arguments(&mut r);
        assert_eq!(r.headers()["grpc-status"], "3");
        assert!(r.headers()["grpc-message"]
            .to_str()
            .unwrap()
            .contains("decode"));
        for kept in ["internal error", "Error encoding: x", "a new handler's own"] {
            let mut r = Status::internal(kept).into_http::<tonic::body::Body>();
            client_faults_are_invalid_arguments(&mut r);
            assert_eq!(r.headers()["grpc-status"], "13", "{kept}");
        }
        for fault in [
            "protocol error: received message with compressed-flag but no grpc-encoding was specified",
            "Missing request message.",
            "Unexpected EOF decoding stream.",
        ] {
            let mut r = Status::internal(fault).into_http::<tonic::body::Body>();
            client_faults_are_invalid_arguments(&mut r);
            assert_eq!(r.headers()["grpc-status"], "3", "{fault}");
        }
        let mut r = Status::not_found("x").into_http::<tonic::body::Body>();
        client_faults_are_invalid_arguments(&mut r);
        assert_eq!(r.headers()["grpc-status"], "5");
        let mut r = response_with(None);
        client_faults_are_invalid_arguments(&mut r);
        assert!(r.headers().get("grpc-status").is_none());
    }

    #[test]
    fn fallback_events_follow_the_status_and_the_authenticated_caller() {
        let mark = RequestMark {
            id: "00ff".into(),
            who: OnceLock::new(),
        };
        let ev = fallback_event(&mark, "grpc.health.v1.Health/Check", &response_with(None));
        assert_eq!(
            (ev.principal.as_str(), ev.decision.as_str(), ev.reason),
            ("unauthenticated", "allowed", None)
        );
        assert_eq!(ev.request_id, "00ff");
        let ev = fallback_event(&mark, "x", &response_with(Some("16")));
        assert_eq!(
            (ev.decision.as_str(), ev.reason.as_deref()),
            ("denied", Some("unauthenticated"))
        );
        mark.authenticated("svc", Some("billing"));
        mark.authenticated("other", None);
        let ev = fallback_event(&mark, "x", &response_with(Some("14")));
        assert_eq!(
            (
                ev.principal.as_str(),
                ev.purpose.as_deref(),
                ev.decision.as_str(),
                ev.reason.as_deref()
            ),
            ("svc", Some("billing"), "failed", Some("unavailable"))
        );
        let mut locked = Status::permission_denied(
            "principal svc is locked out for 12 more seconds after repeated denied requests",
        )
        .into_http::<tonic::body::Body>();
        let ev = fallback_event(&mark, "x", &locked);
        assert_eq!(
            (ev.decision.as_str(), ev.reason.as_deref()),
            ("denied", Some("locked out"))
        );
        locked.headers_mut().remove("grpc-message");
        let ev = fallback_event(&mark, "x", &locked);
        assert_eq!(ev.reason.as_deref(), Some("permission denied"));
        for garbage in ["abc", "", "99999999999"] {
            let ev = fallback_event(&mark, "x", &response_with(Some(garbage)));
            assert_eq!(ev.decision, "failed", "{garbage:?}");
        }
    }
}
