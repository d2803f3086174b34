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
use crate::policy::{Caller, Operation};
use crate::{Engine, Vault};

/// Most events in one response.
const MAX_EVENTS: u32 = 1000;
/// Most stored checkpoints in one response (besides the current one).
const MAX_CHECKPOINTS: usize = 1000;

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
        let (events, tree_size) = run_blocking(move || {
            let events = engine.audit().events(r.from, limit)?;
            Ok((events, engine.audit().size()))
        })
        .await?;
        Ok(Response::new(pb::AuditEventsResponse { events, tree_size }))
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
                let page = run_blocking(move || {
                    Ok((reader.events(next, MAX_EVENTS as usize)?, reader.size()))
                })
                .await;
                match page {
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    Ok((events, tree_size)) if !events.is_empty() => {
                        next += events.len() as u64;
                        let page = pb::AuditEventsResponse { events, tree_size };
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
