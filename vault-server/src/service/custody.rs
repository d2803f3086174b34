//! `vault.v1.OperatorService` and `vault.v1.SubjectService`: key custody
//! and erasure. Shares pass through here as text and are parsed into
//! zeroizing types at once; no share, key or subject id is logged.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use vault_proto::v1 as pb;
use vault_proto::v1::operator_service_server::OperatorService;
use vault_proto::v1::subject_service_server::SubjectService;
use zeroize::Zeroizing;

use super::auth::caller;
use super::vault::run_blocking;
use crate::engine::RootKeyInfo;
use crate::keys::{ErasureReceipt, KeyState};
use crate::Vault;

/// The custody API over one vault.
#[derive(Debug, Clone)]
pub struct OperatorApi {
    vault: Arc<Vault>,
    /// How the port is reached, for `Status`.
    transport: &'static str,
}

impl OperatorApi {
    /// The API over `vault`, served over `transport` (shown by `Status`).
    pub fn new(vault: Arc<Vault>, transport: &'static str) -> Self {
        OperatorApi { vault, transport }
    }
}

/// The data-subject API over one vault.
#[derive(Debug, Clone)]
pub struct SubjectApi {
    vault: Arc<Vault>,
}

impl SubjectApi {
    /// The API over `vault`.
    pub fn new(vault: Arc<Vault>) -> Self {
        SubjectApi { vault }
    }
}

fn key_state(s: KeyState) -> pb::KeyState {
    match s {
        KeyState::Active => pb::KeyState::Active,
        KeyState::Retired => pb::KeyState::Retired,
        KeyState::Destroyed => pb::KeyState::Destroyed,
    }
}

fn root_key(k: &RootKeyInfo) -> pb::RootKeyVersion {
    pb::RootKeyVersion {
        version: k.version,
        state: key_state(k.state) as i32,
        current: k.current,
        wrapped_subject_keys: k.wrapped_subject_keys,
        wraps: k.wraps,
    }
}

fn small(what: &str, n: u32) -> Result<u8, Status> {
    u8::try_from(n).map_err(|_| Status::invalid_argument(format!("{what} must be 1 to 255")))
}

fn receipt_to(r: &ErasureReceipt, public_key: [u8; 32]) -> pb::ErasureReceipt {
    pb::ErasureReceipt {
        body: r.body(),
        signature: r.signature.to_vec(),
        public_key: public_key.to_vec(),
        receipt_id: hex::encode(r.id),
        erased_at: Some(prost_types::Timestamp {
            seconds: i64::try_from(r.erased_at).unwrap_or(i64::MAX),
            nanos: 0,
        }),
        region: r.region.clone(),
        subject_pseudonym: hex::encode(r.subject),
        key_versions_destroyed: r.key_versions_destroyed,
        records_deleted: r.records_deleted,
    }
}

#[tonic::async_trait]
impl OperatorService for OperatorApi {
    async fn init(
        &self,
        req: Request<pb::InitRequest>,
    ) -> Result<Response<pb::InitResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let (shares, threshold) = (small("shares", r.shares)?, small("threshold", r.threshold)?);
        let vault = Arc::clone(&self.vault);
        let parts = run_blocking(move || vault.init(&caller, shares, threshold)).await?;
        // The response owns plain Strings (prost); the shares leave this
        // process once and are not kept.
        Ok(Response::new(pb::InitResponse {
            shares: parts.iter().map(|s| s.encode().to_string()).collect(),
            threshold: u32::from(threshold),
            region: self.vault.region().to_string(),
        }))
    }

    async fn unseal(
        &self,
        req: Request<pb::UnsealRequest>,
    ) -> Result<Response<pb::UnsealResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let allow_rollback = r.allow_keyring_rollback;
        let share = Zeroizing::new(r.share);
        let vault = Arc::clone(&self.vault);
        let p = run_blocking(move || vault.unseal_with(&caller, &share, allow_rollback)).await?;
        Ok(Response::new(pb::UnsealResponse {
            sealed: p.sealed,
            progress: u32::from(p.progress),
            threshold: u32::from(p.threshold),
        }))
    }

    async fn seal(
        &self,
        req: Request<pb::SealRequest>,
    ) -> Result<Response<pb::SealResponse>, Status> {
        let caller = caller(&req)?;
        let vault = Arc::clone(&self.vault);
        run_blocking(move || vault.seal(&caller)).await?;
        Ok(Response::new(pb::SealResponse {}))
    }

    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let caller = caller(&req)?;
        let vault = Arc::clone(&self.vault);
        let s = run_blocking(move || vault.status(&caller)).await?;
        Ok(Response::new(pb::StatusResponse {
            initialized: s.initialized,
            sealed: s.sealed,
            region: s.region.to_string(),
            threshold: u32::from(s.threshold),
            shares: u32::from(s.shares),
            progress: u32::from(s.progress),
            current_root_version: s
                .root_keys
                .iter()
                .find(|k| k.current)
                .map_or(0, |k| k.version),
            root_keys: s.root_keys.iter().map(root_key).collect(),
            signing_public_key: s.signing_public_key.map(|k| k.to_vec()).unwrap_or_default(),
            rotate_root_after_wraps: s.rotate_root_after_wraps,
            root_rotation_due: s.root_rotation_due,
            transport: self.transport.to_owned(),
        }))
    }

    async fn rotate_root_key(
        &self,
        req: Request<pb::RotateRootKeyRequest>,
    ) -> Result<Response<pb::RotateRootKeyResponse>, Status> {
        let caller = caller(&req)?;
        let engine = self.vault.engine()?;
        let version = run_blocking(move || engine.rotate_root(&caller)).await?;
        Ok(Response::new(pb::RotateRootKeyResponse { version }))
    }

    async fn rewrap_status(
        &self,
        req: Request<pb::RewrapStatusRequest>,
    ) -> Result<Response<pb::RewrapStatusResponse>, Status> {
        let caller = caller(&req)?;
        let engine = self.vault.engine()?;
        let p = run_blocking(move || engine.rewrap_status(&caller)).await?;
        Ok(Response::new(pb::RewrapStatusResponse {
            target_version: p.target_version,
            finished: p.finished,
            rewrapped: p.rewrapped,
            pending_at_start: p.pending_at_start,
            examined: p.examined,
            unreadable: p.unreadable,
            removed_erased: p.removed_erased,
        }))
    }

    async fn list_root_keys(
        &self,
        req: Request<pb::ListRootKeysRequest>,
    ) -> Result<Response<pb::ListRootKeysResponse>, Status> {
        let caller = caller(&req)?;
        let engine = self.vault.engine()?;
        let keys = run_blocking(move || engine.root_keys(&caller)).await?;
        Ok(Response::new(pb::ListRootKeysResponse {
            current_version: keys.iter().find(|k| k.current).map_or(0, |k| k.version),
            versions: keys.iter().map(root_key).collect(),
        }))
    }

    async fn retire_root_key(
        &self,
        req: Request<pb::RetireRootKeyRequest>,
    ) -> Result<Response<pb::RetireRootKeyResponse>, Status> {
        let caller = caller(&req)?;
        let version = req.into_inner().version;
        let engine = self.vault.engine()?;
        run_blocking(move || engine.retire_root(&caller, version)).await?;
        Ok(Response::new(pb::RetireRootKeyResponse {}))
    }

    async fn destroy_root_key(
        &self,
        req: Request<pb::DestroyRootKeyRequest>,
    ) -> Result<Response<pb::DestroyRootKeyResponse>, Status> {
        let caller = caller(&req)?;
        let version = req.into_inner().version;
        let engine = self.vault.engine()?;
        run_blocking(move || engine.destroy_root(&caller, version)).await?;
        Ok(Response::new(pb::DestroyRootKeyResponse {}))
    }

    async fn rotate_subject_key(
        &self,
        req: Request<pb::RotateSubjectKeyRequest>,
    ) -> Result<Response<pb::RotateSubjectKeyResponse>, Status> {
        let caller = caller(&req)?;
        let subject = req.into_inner().subject_id;
        let engine = self.vault.engine()?;
        let r = run_blocking(move || engine.rotate_subject(&caller, &subject)).await?;
        Ok(Response::new(pb::RotateSubjectKeyResponse {
            new_version: r.new_version,
            records: r.records,
            fields: r.fields,
        }))
    }
}

#[tonic::async_trait]
impl SubjectService for SubjectApi {
    async fn erase_subject(
        &self,
        req: Request<pb::EraseSubjectRequest>,
    ) -> Result<Response<pb::EraseSubjectResponse>, Status> {
        let caller = caller(&req)?;
        let subject = req.into_inner().subject_id;
        let engine = self.vault.engine()?;
        let (receipt, public_key) = run_blocking(move || {
            let r = engine.erase_subject(&caller, &subject)?;
            Ok((r, engine.signing_public_key()))
        })
        .await?;
        Ok(Response::new(pb::EraseSubjectResponse {
            receipt: Some(receipt_to(&receipt, public_key)),
        }))
    }

    async fn access_ledger(
        &self,
        req: Request<pb::AccessLedgerRequest>,
    ) -> Result<Response<pb::AccessLedgerResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let engine = self.vault.engine()?;
        let limit = match r.limit {
            0 => crate::engine::MAX_LEDGER_PAGE,
            n => n as usize,
        };
        let (ledger, verifier_key) = run_blocking(move || {
            let ledger =
                engine.access_ledger(&caller, &r.subject_id, r.from_index, limit, r.tree_size)?;
            Ok((ledger, engine.audit_verifier_key()))
        })
        .await?;
        Ok(Response::new(pb::AccessLedgerResponse {
            subject_pseudonym: hex::encode(ledger.pseudonym),
            checkpoint: ledger.checkpoint,
            entries: ledger
                .entries
                .into_iter()
                .map(|e| pb::LedgerEntry {
                    index: e.index,
                    event: e.event,
                    proof: e.proof.iter().map(|h| h.to_vec()).collect(),
                })
                .collect(),
            next_index: ledger.next.unwrap_or(0),
            verifier_key,
        }))
    }
}
