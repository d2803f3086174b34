//! `vault.v1.OperatorService` and `vault.v1.SubjectService`: key custody
//! and erasure. Shares pass through here as text and are parsed into
//! zeroizing types at once; no share, key or subject id is logged.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use vault_proto::v1 as pb;
use vault_proto::v1::operator_service_server::OperatorService;
use vault_proto::v1::subject_service_server::SubjectService;
use zeroize::Zeroizing;

use super::auth::caller;
use super::vault::run_blocking;
use crate::engine::RootKeyInfo;
use crate::keys::seal::Measurement;
use crate::keys::{ErasureReceipt, KeyState, ShareRecipients};
use crate::vault::{RekeyParams, SealKind};
use crate::Engine;
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

/// The recipients a request names, if any, checked: one age X25519
/// recipient per share.
fn recipients(list: &[String], shares: u8) -> Result<Option<ShareRecipients>, Status> {
    if list.is_empty() {
        return Ok(None);
    }
    ShareRecipients::parse(list, shares)
        .map(Some)
        .map_err(|e| Status::invalid_argument(e.to_string()))
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
        shred_bucket: u32::from(r.shredded.bucket),
        shred_epoch_destroyed: r.shredded.epoch,
        keys_rewrapped: r.shredded.keys_rewrapped,
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
        let to = recipients(&r.recipients, shares)?;
        let vault = Arc::clone(&self.vault);
        let issued =
            run_blocking(move || vault.init_with(&caller, shares, threshold, to.as_ref())).await?;
        // The response owns plain Strings (prost); the shares leave this
        // process once and are not kept. With recipients, only their
        // ciphertexts leave it.
        Ok(Response::new(pb::InitResponse {
            shares: issued
                .clear
                .iter()
                .map(|s| s.encode().to_string())
                .collect(),
            threshold: u32::from(threshold),
            region: self.vault.region().to_string(),
            encrypted_shares: issued.sealed,
        }))
    }

    async fn rekey(
        &self,
        req: Request<pb::RekeyRequest>,
    ) -> Result<Response<pb::RekeyResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let share = Zeroizing::new(r.share);
        let vault = Arc::clone(&self.vault);
        if r.cancel {
            let custody = run_blocking(move || {
                vault.cancel_rekey(&caller)?;
                Ok(vault.seal_status())
            })
            .await?;
            return Ok(Response::new(pb::RekeyResponse {
                required: u32::from(custody.threshold),
                ..Default::default()
            }));
        }
        let (shares, threshold) = (small("shares", r.shares)?, small("threshold", r.threshold)?);
        let params = RekeyParams {
            shares,
            threshold,
            recipients: recipients(&r.recipients, shares)?,
            seal: match r.seal.as_str() {
                "" => None,
                "shamir" => Some(SealKind::Shamir),
                "pkcs11" => Some(SealKind::Pkcs11),
                other => {
                    return Err(Status::invalid_argument(format!(
                        "seal must be \"shamir\", \"pkcs11\" or empty (keep the current \
                         one), not {other:?}"
                    )))
                }
            },
        };
        let p = run_blocking(move || vault.rekey(&caller, &share, &params)).await?;
        let mut response = pb::RekeyResponse {
            complete: p.done.is_some(),
            progress: u32::from(p.progress),
            required: u32::from(p.required),
            ..Default::default()
        };
        if let Some(done) = p.done {
            response.shares = done
                .shares
                .clear
                .iter()
                .map(|s| s.encode().to_string())
                .collect();
            response.encrypted_shares = done.shares.sealed;
            response.threshold = u32::from(done.threshold);
            response.share_count = u32::from(done.total);
            response.keyring_generation = done.keyring_generation;
            response.sealed = done.sealed;
        }
        Ok(Response::new(response))
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

    async fn unlock(
        &self,
        req: Request<pb::UnlockRequest>,
    ) -> Result<Response<pb::UnlockResponse>, Status> {
        let caller = caller(&req)?;
        let principal = req.into_inner().principal;
        let vault = Arc::clone(&self.vault);
        let was_locked = run_blocking(move || vault.unlock(&caller, &principal)).await?;
        Ok(Response::new(pb::UnlockResponse { was_locked }))
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
            seal: s.seal,
            seal_identity: s.seal_identity.unwrap_or_default(),
            seal_message: s.seal_message.unwrap_or_default(),
            approved_builds: s.approved_builds.iter().map(|m| m.to_vec()).collect(),
            evidence: s.evidence,
            measurement: s.measurement.map(|m| m.to_vec()).unwrap_or_default(),
            attested: s.attested,
            attestation_identity: s.attestation_identity.unwrap_or_default(),
        }))
    }

    async fn approve_build(
        &self,
        req: Request<pb::ApproveBuildRequest>,
    ) -> Result<Response<pb::ApproveBuildResponse>, Status> {
        let caller = caller(&req)?;
        let m = req.into_inner().measurement;
        let (changed, approved) = self.change_build(caller, &m, Engine::approve_build).await?;
        Ok(Response::new(pb::ApproveBuildResponse {
            changed,
            approved,
        }))
    }

    async fn revoke_build(
        &self,
        req: Request<pb::RevokeBuildRequest>,
    ) -> Result<Response<pb::RevokeBuildResponse>, Status> {
        let caller = caller(&req)?;
        let m = req.into_inner().measurement;
        let (changed, approved) = self.change_build(caller, &m, Engine::revoke_build).await?;
        Ok(Response::new(pb::RevokeBuildResponse { changed, approved }))
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

    async fn rotate_index_key(
        &self,
        req: Request<pb::RotateIndexKeyRequest>,
    ) -> Result<Response<pb::RotateIndexKeyResponse>, Status> {
        let caller = caller(&req)?;
        let engine = self.vault.engine()?;
        let version = run_blocking(move || engine.rotate_index_key(&caller)).await?;
        Ok(Response::new(pb::RotateIndexKeyResponse { version }))
    }

    async fn reindex_status(
        &self,
        req: Request<pb::ReindexStatusRequest>,
    ) -> Result<Response<pb::ReindexStatusResponse>, Status> {
        let caller = caller(&req)?;
        let engine = self.vault.engine()?;
        let p = run_blocking(move || engine.reindex_status(&caller)).await?;
        Ok(Response::new(pb::ReindexStatusResponse {
            target_version: p.target_version,
            finished: p.finished,
            examined: p.examined,
            reindexed: p.reindexed,
            skipped: p.skipped,
            unreadable: p.unreadable,
            total_at_start: p.total_at_start,
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

/// How long an export waits for a client that stopped reading before it
/// gives up (and releases the engine).
const EXPORT_STALL: Duration = Duration::from_secs(30);

/// Sends one message of an export stream. A client that stops reading
/// must not hold the engine (and its keys) open: the send waits at most
/// [`EXPORT_STALL`] for room, and not at all once the vault seals.
fn send_export(
    runtime: &tokio::runtime::Handle,
    tx: &tokio::sync::mpsc::Sender<Result<pb::ExportSubjectResponse, Status>>,
    engine: &crate::engine::Engine,
    message: Result<pb::ExportSubjectResponse, Status>,
) -> crate::Result<()> {
    let permit = runtime.block_on(async {
        let deadline = tokio::time::Instant::now() + EXPORT_STALL;
        loop {
            match tokio::time::timeout(Duration::from_millis(250), tx.reserve()).await {
                Ok(Ok(permit)) => return Ok(permit),
                Ok(Err(_)) => return Err(crate::Error::Unavailable("the client went away".into())),
                Err(_) if engine.is_closed() => {
                    return Err(crate::Error::Unavailable("the vault sealed".into()))
                }
                Err(_) if tokio::time::Instant::now() >= deadline => {
                    return Err(crate::Error::Unavailable(
                        "the client stopped reading the export".into(),
                    ))
                }
                Err(_) => {}
            }
        }
    })?;
    permit.send(message);
    Ok(())
}

#[tonic::async_trait]
impl SubjectService for SubjectApi {
    type ExportSubjectStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::ExportSubjectResponse, Status>> + Send>,
    >;

    async fn export_subject(
        &self,
        req: Request<pb::ExportSubjectRequest>,
    ) -> Result<Response<Self::ExportSubjectStream>, Status> {
        let caller = caller(&req)?;
        let subject = req.into_inner().subject_id;
        let engine = self.vault.engine()?;
        // Authorised and on record before the response starts: a refusal
        // is the call's status, and the request's event is the export's.
        let plan = {
            let engine = Arc::clone(&engine);
            run_blocking(move || engine.begin_export(&caller, &subject)).await?
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let total = plan.records_total();
            // A client that stops reading must not hold the engine (and its
            // keys) open: each chunk waits at most EXPORT_STALL for room,
            // and not at all once the vault seals.
            let mut sink = |mut chunk: crate::engine::ExportChunk| {
                let message = pb::ExportSubjectResponse {
                    chunk: std::mem::take(&mut *chunk.bytes),
                    records_done: chunk.records_done,
                    records_total: chunk.records_total,
                    signature: String::new(),
                };
                send_export(&runtime, &tx, &engine, Ok(message))
            };
            let last = match engine.write_export(plan, &mut sink) {
                Ok(summary) => Ok(pb::ExportSubjectResponse {
                    chunk: Vec::new(),
                    records_done: summary.records,
                    records_total: total,
                    signature: summary.signature,
                }),
                Err(e) => Err(Status::from(e)),
            };
            let _ = send_export(&runtime, &tx, &engine, last);
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

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

impl OperatorApi {
    /// Approves or revokes (`change`) the build `measurement` names; returns
    /// whether anything changed and how many builds are approved now.
    async fn change_build(
        &self,
        caller: crate::policy::Caller,
        measurement_bytes: &[u8],
        change: fn(&Engine, &crate::policy::Caller, Measurement) -> crate::Result<bool>,
    ) -> Result<(bool, u32), Status> {
        let m = measurement(measurement_bytes)?;
        let engine = self.vault.engine()?;
        run_blocking(move || {
            let changed = change(&engine, &caller, m)?;
            let approved = engine.keyring().sealing().approved_builds.len();
            Ok((changed, u32::try_from(approved).unwrap_or(u32::MAX)))
        })
        .await
    }
}

/// A build's measurement from the wire: exactly 48 bytes.
fn measurement(bytes: &[u8]) -> Result<Measurement, Status> {
    bytes.try_into().map_err(|_| {
        Status::invalid_argument(format!(
            "measurement must be 48 bytes (SHA-384, e.g. a Nitro enclave's PCR0), not {}",
            bytes.len()
        ))
    })
}
