//! `vault.v1.AuditService`: the audit log for auditors (events, signed
//! checkpoints, proofs, the verifier key). Needs the `audit` operation.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use vault_proto::v1 as pb;
use vault_proto::v1::audit_service_server::AuditService;

use super::auth::caller;
use super::vault::run_blocking;
use crate::audit::{AuditLog, MAX_PAGE_BYTES};
use crate::engine::WitnessRefusal;
use crate::policy::{Caller, Operation};
use crate::{Engine, Vault};

/// Most events in one response (or one message of a follow stream).
const MAX_EVENTS: u32 = 1000;
/// Most stored checkpoints in one response (besides the current one).
const MAX_CHECKPOINTS: usize = 1000;
/// The most bytes of a checkpoint a witness sends (a checkpoint with the
/// lines of its 16 witnesses at most is about 2 KiB).
const MAX_NOTE_BYTES: usize = 16 * 1024;
/// The most `tree_size` takes in an encoded response: a tag and a 10-byte
/// varint.
const TREE_SIZE_BYTES: usize = 11;

/// Events from `from` for one response (of `Events`, or one message of
/// `Follow`), and the log's size: at most `limit` events, and the response
/// encoded in at most [`MAX_PAGE_BYTES`] (4 MiB, the access ledger's budget
/// too: half the 8 MiB this server sends, far below what vault-client
/// accepts). Each event costs its tag, length prefix and bytes. A single
/// event larger than that is sent alone, never skipped.
fn events_response(
    log: &AuditLog,
    from: u64,
    limit: usize,
) -> crate::Result<pb::AuditEventsResponse> {
    let events = log.events_page(from, limit, MAX_PAGE_BYTES - TREE_SIZE_BYTES, |len| {
        1 + prost::length_delimiter_len(len) + len
    })?;
    Ok(pb::AuditEventsResponse {
        events,
        tree_size: log.size(),
    })
}

/// The auditor API over one vault (unsealed: checkpoints are signed).
#[derive(Debug, Clone)]
pub struct AuditApi {
    vault: Arc<Vault>,
    /// True once the server is shutting down: follow streams end.
    stopping: watch::Receiver<bool>,
}

impl AuditApi {
    /// The API over `vault`; follow streams end when `stopping` turns true.
    pub fn new(vault: Arc<Vault>, stopping: watch::Receiver<bool>) -> Self {
        AuditApi { vault, stopping }
    }

    fn authorized(&self, caller: &Caller) -> Result<Arc<Engine>, Status> {
        let engine = self.vault.engine()?;
        engine.policy().authorize(caller, Operation::Audit, None)?;
        Ok(engine)
    }
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn events(
        &self,
        req: Request<pb::AuditEventsRequest>,
    ) -> Result<Response<pb::AuditEventsResponse>, Status> {
        let engine = self.authorized(&caller(&req)?)?;
        let r = req.into_inner();
        let limit = r.limit.clamp(1, MAX_EVENTS) as usize;
        let page = run_blocking(move || events_response(engine.audit(), r.from, limit)).await?;
        Ok(Response::new(page))
    }

    type FollowStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::AuditEventsResponse, Status>> + Send>>;

    async fn follow(
        &self,
        req: Request<pb::AuditEventsRequest>,
    ) -> Result<Response<Self::FollowStream>, Status> {
        let engine = self.authorized(&caller(&req)?)?;
        drop(engine);
        let log = Arc::clone(self.vault.audit_log());
        let mut next = req.into_inner().from;
        let mut grown = log.watch_size();
        let mut stopping = self.stopping.clone();
        let mut sealed = self.vault.watch_sealed();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                // Marked seen before reading: an append after the read
                // wakes the wait below.
                grown.borrow_and_update();
                let reader = Arc::clone(&log);
                let page =
                    run_blocking(move || events_response(&reader, next, MAX_EVENTS as usize)).await;
                match page {
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    Ok(page) if !page.events.is_empty() => {
                        next += page.events.len() as u64;
                        if tx.send(Ok(page)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Ok(_) => {}
                }
                // The guards `wait_for` returns are dropped inside the
                // select: only which branch won leaves it.
                let sealed_now = tokio::select! {
                    changed = grown.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        false
                    }
                    _ = stopping.wait_for(|s| *s) => return,
                    r = sealed.wait_for(|s| *s) => r.is_ok(),
                    () = tx.closed() => return,
                };
                if sealed_now {
                    let _ = tx.send(Err(Status::unavailable("vault is sealed"))).await;
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type WatchStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::Alert, Status>> + Send>>;

    async fn watch(
        &self,
        req: Request<pb::WatchAlertsRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let engine = self.authorized(&caller(&req)?)?;
        drop(engine);
        // Subscribed before answering: every alert raised after the call
        // was accepted reaches the stream.
        let mut alerts = self.vault.monitor().subscribe();
        let mut stopping = self.stopping.clone();
        let mut sealed = self.vault.watch_sealed();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut missed = 0u64;
            loop {
                // Alerts first: the one that made the vault seal is sent
                // before the stream ends. The guards `wait_for` returns are
                // dropped inside the select.
                let next = tokio::select! {
                    biased;
                    r = alerts.recv() => match r {
                        Ok(alert) => Some(alert),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            missed += n;
                            None
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                    _ = stopping.wait_for(|s| *s) => return,
                    r = sealed.wait_for(|s| *s) => {
                        if r.is_err() {
                            return;
                        }
                        let _ = tx.try_send(Err(Status::unavailable("vault is sealed")));
                        return;
                    }
                    () = tx.closed() => return,
                };
                if let Some(alert) = next {
                    let msg = alert_to(alert, std::mem::take(&mut missed));
                    // A client that stops reading does not hold up shutdown.
                    let sent = tokio::select! {
                        r = tx.send(Ok(msg)) => r.is_ok(),
                        _ = stopping.wait_for(|s| *s) => false,
                    };
                    if !sent {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn checkpoints(
        &self,
        req: Request<pb::CheckpointsRequest>,
    ) -> Result<Response<pb::CheckpointsResponse>, Status> {
        let engine = self.authorized(&caller(&req)?)?;
        let from = req.into_inner().from_size;
        let (checkpoints, more) = run_blocking(move || {
            let current = engine.checkpoint()?;
            engine
                .audit()
                .checkpoint_page(from, MAX_CHECKPOINTS, current)
        })
        .await?;
        Ok(Response::new(pb::CheckpointsResponse { checkpoints, more }))
    }

    async fn inclusion_proof(
        &self,
        req: Request<pb::InclusionProofRequest>,
    ) -> Result<Response<pb::ProofResponse>, Status> {
        let engine = self.authorized(&caller(&req)?)?;
        let r = req.into_inner();
        let hashes =
            run_blocking(move || engine.audit().inclusion_proof(r.index, r.tree_size)).await?;
        Ok(Response::new(pb::ProofResponse {
            hashes: hashes.iter().map(|h| h.to_vec()).collect(),
        }))
    }

    async fn consistency_proof(
        &self,
        req: Request<pb::ConsistencyProofRequest>,
    ) -> Result<Response<pb::ProofResponse>, Status> {
        let engine = self.authorized(&caller(&req)?)?;
        let r = req.into_inner();
        let hashes =
            run_blocking(move || engine.audit().consistency_proof(r.old_size, r.new_size)).await?;
        Ok(Response::new(pb::ProofResponse {
            hashes: hashes.iter().map(|h| h.to_vec()).collect(),
        }))
    }

    async fn add_cosignature(
        &self,
        req: Request<pb::AddCosignatureRequest>,
    ) -> Result<Response<pb::AddCosignatureResponse>, Status> {
        let engine = self.authorized(&caller(&req)?)?;
        let note = req.into_inner().checkpoint;
        if note.len() > MAX_NOTE_BYTES {
            return Err(Status::invalid_argument(format!(
                "a cosigned checkpoint is at most {MAX_NOTE_BYTES} bytes"
            )));
        }
        let (tree_size, taken) = run_blocking(move || engine.add_cosignatures(&note)).await?;
        Ok(Response::new(pb::AddCosignatureResponse {
            tree_size,
            witnesses: taken.into_iter().map(|(name, _)| name).collect(),
        }))
    }

    async fn report_refusal(
        &self,
        req: Request<pb::ReportRefusalRequest>,
    ) -> Result<Response<pb::ReportRefusalResponse>, Status> {
        let caller = caller(&req)?;
        let engine = self.authorized(&caller)?;
        let r = req.into_inner();
        if r.checkpoint.len() > MAX_NOTE_BYTES {
            return Err(Status::invalid_argument(format!(
                "a refused checkpoint is at most {MAX_NOTE_BYTES} bytes"
            )));
        }
        let refusal = WitnessRefusal {
            time: r.time,
            reason: r.reason,
            checkpoint: r.checkpoint,
            signature: r.signature,
        };
        engine.witness_refused(&caller, &r.witness, &refusal)?;
        Ok(Response::new(pb::ReportRefusalResponse {}))
    }

    async fn public_key(
        &self,
        req: Request<pb::AuditPublicKeyRequest>,
    ) -> Result<Response<pb::AuditPublicKeyResponse>, Status> {
        let engine = self.authorized(&caller(&req)?)?;
        Ok(Response::new(pb::AuditPublicKeyResponse {
            verifier_key: engine.audit_verifier_key(),
            origin: engine.audit_origin(),
        }))
    }
}

/// An alert as `AuditService.Watch` sends it.
fn alert_to(a: crate::monitor::Alert, missed: u64) -> pb::Alert {
    pb::Alert {
        seq: a.seq,
        time_ms: a.time_ms,
        severity: a.severity.name().to_owned(),
        kind: a.kind.name().to_owned(),
        principal: a.principal,
        purpose: a.purpose,
        message: a.message,
        missed,
    }
}
