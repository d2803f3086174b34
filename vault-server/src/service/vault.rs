//! The `vault.v1.VaultService` implementation: decode, hand to the engine,
//! encode.
//!
//! The record calls run their engine work inline on the async runtime
//! (short: checks, point reads, AES-GCM) and await the audit commit
//! without holding a thread; the engine moves a call that would wait for
//! long (a subject lock an erasure holds, a new subject key to store) to
//! the blocking pool itself. Batches larger than [`INLINE_BATCH`] and the
//! collection calls run on the blocking pool.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use vault_proto::v1 as pb;
use vault_proto::v1::vault_service_server::VaultService;

use super::auth::caller;
use super::convert::{collection_from, collection_to, record_from, record_to, value_from};
use crate::{Engine, Vault};

/// The data-plane API over one vault. Every call needs it unsealed.
#[derive(Debug, Clone)]
pub struct VaultApi {
    vault: Arc<Vault>,
}

impl VaultApi {
    /// The API over `vault`.
    pub fn new(vault: Arc<Vault>) -> Self {
        VaultApi { vault }
    }

    /// Runs blocking engine work on the blocking pool, never on a reactor
    /// thread; `UNAVAILABLE` while the vault is sealed.
    async fn blocking<T, F>(&self, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&Engine) -> crate::Result<T> + Send + 'static,
    {
        let engine = self.vault.engine()?;
        run_blocking(move || f(&engine)).await
    }
}

/// Runs `f` on the blocking pool and maps its error to a status.
pub(super) async fn run_blocking<T, F>(f: F) -> Result<T, Status>
where
    T: Send + 'static,
    F: FnOnce() -> crate::Result<T> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(Status::from),
        Err(e) => {
            tracing::error!(error = %e, "engine task failed");
            Err(Status::internal("internal error"))
        }
    }
}

/// Most records of a batch call that runs inline on the async runtime; a
/// larger batch (up to the batch limit, 500) runs on the blocking pool, so
/// that its encryption or decryption does not hold up a runtime thread.
pub const INLINE_BATCH: usize = 64;

fn missing(what: &str) -> Status {
    Status::invalid_argument(format!("{what} is missing"))
}

#[tonic::async_trait]
impl VaultService for VaultApi {
    async fn create_collection(
        &self,
        req: Request<pb::CreateCollectionRequest>,
    ) -> Result<Response<pb::CreateCollectionResponse>, Status> {
        let caller = caller(&req)?;
        let c = collection_from(
            req.into_inner()
                .collection
                .ok_or_else(|| missing("collection"))?,
        )?;
        let c = self
            .blocking(move |e| e.create_collection(&caller, c))
            .await?;
        Ok(Response::new(pb::CreateCollectionResponse {
            collection: Some(collection_to(&c)),
        }))
    }

    async fn get_collection(
        &self,
        req: Request<pb::GetCollectionRequest>,
    ) -> Result<Response<pb::GetCollectionResponse>, Status> {
        let caller = caller(&req)?;
        let name = req.into_inner().name;
        let c = self.blocking(move |e| e.collection(&caller, &name)).await?;
        Ok(Response::new(pb::GetCollectionResponse {
            collection: Some(collection_to(&c)),
        }))
    }

    async fn list_collections(
        &self,
        req: Request<pb::ListCollectionsRequest>,
    ) -> Result<Response<pb::ListCollectionsResponse>, Status> {
        let caller = caller(&req)?;
        let all = self.blocking(move |e| e.list_collections(&caller)).await?;
        Ok(Response::new(pb::ListCollectionsResponse {
            collections: all.iter().map(|c| collection_to(c)).collect(),
        }))
    }

    async fn put_record(
        &self,
        req: Request<pb::PutRecordRequest>,
    ) -> Result<Response<pb::PutRecordResponse>, Status> {
        let caller = caller(&req)?;
        let record = record_from(req.into_inner().record.ok_or_else(|| missing("record"))?)?;
        let engine = self.vault.engine()?;
        engine.put_records_async(&caller, vec![record]).await?;
        Ok(Response::new(pb::PutRecordResponse {}))
    }

    async fn get_record(
        &self,
        req: Request<pb::GetRecordRequest>,
    ) -> Result<Response<pb::GetRecordResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let engine = self.vault.engine()?;
        let record = engine
            .get_record_async(&caller, &r.collection, &r.id, &r.fields)
            .await?;
        Ok(Response::new(pb::GetRecordResponse {
            record: Some(record_to(record)),
        }))
    }

    async fn find_records(
        &self,
        req: Request<pb::FindRecordsRequest>,
    ) -> Result<Response<pb::FindRecordsResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let value = r
            .value
            .ok_or_else(|| Status::invalid_argument("no value to find"))
            .and_then(|v| value_from(v, &r.field))?;
        let limit = match r.limit {
            0 => 100,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        };
        // Like batches: up to INLINE_BATCH records on the runtime, more on
        // the blocking pool (each hit is a read and a decryption).
        let found = if limit <= INLINE_BATCH {
            let engine = self.vault.engine()?;
            engine
                .find_records_async(&caller, &r.collection, &r.field, &value, &r.fields, limit)
                .await?
        } else {
            self.blocking(move |e| {
                e.find_records(&caller, &r.collection, &r.field, &value, &r.fields, limit)
            })
            .await?
        };
        Ok(Response::new(pb::FindRecordsResponse {
            records: found.into_iter().map(record_to).collect(),
        }))
    }

    async fn batch_put_records(
        &self,
        req: Request<pb::BatchPutRecordsRequest>,
    ) -> Result<Response<pb::BatchPutRecordsResponse>, Status> {
        let caller = caller(&req)?;
        let records = req
            .into_inner()
            .records
            .into_iter()
            .map(record_from)
            .collect::<Result<Vec<_>, _>>()?;
        let written = if records.len() <= INLINE_BATCH {
            let engine = self.vault.engine()?;
            engine.put_records_async(&caller, records).await?
        } else {
            self.blocking(move |e| e.put_records(&caller, records))
                .await?
        };
        Ok(Response::new(pb::BatchPutRecordsResponse {
            // Bounded by the batch limit.
            written: u32::try_from(written).unwrap_or(u32::MAX),
        }))
    }

    async fn batch_get_records(
        &self,
        req: Request<pb::BatchGetRecordsRequest>,
    ) -> Result<Response<pb::BatchGetRecordsResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let (records, missing_ids) = if r.ids.len() <= INLINE_BATCH {
            let engine = self.vault.engine()?;
            engine
                .get_records_async(&caller, &r.collection, &r.ids, &r.fields)
                .await?
        } else {
            self.blocking(move |e| e.get_records(&caller, &r.collection, &r.ids, &r.fields))
                .await?
        };
        Ok(Response::new(pb::BatchGetRecordsResponse {
            records: records.into_iter().map(record_to).collect(),
            missing_ids,
        }))
    }

    async fn delete_record(
        &self,
        req: Request<pb::DeleteRecordRequest>,
    ) -> Result<Response<pb::DeleteRecordResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let engine = self.vault.engine()?;
        let deleted = engine
            .delete_record_async(&caller, &r.collection, &r.id)
            .await?;
        Ok(Response::new(pb::DeleteRecordResponse { deleted }))
    }
}
