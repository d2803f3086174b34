//! `vault.v1.AdminService`: reload the access policy, and show what it
//! grants a principal (the auditor's view).

use std::sync::Arc;

use tonic::{Request, Response, Status};
use vault_proto::v1 as pb;
use vault_proto::v1::admin_service_server::AdminService;

use super::auth::caller;
use super::vault::run_blocking;
use crate::policy::{Caller, FieldAccess, Operation, PolicyHandle, Principal, Role};
use crate::Vault;

/// Resolves a principal name to the roles its credentials carry (tokens,
/// certificate principals), for `CheckPolicy`.
pub type RoleLookup = Arc<dyn Fn(&str) -> Vec<Role> + Send + Sync>;

/// The admin API.
#[derive(Clone)]
pub struct AdminApi {
    vault: Arc<Vault>,
    policy: Arc<PolicyHandle>,
    roles: RoleLookup,
}

impl std::fmt::Debug for AdminApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminApi").finish_non_exhaustive()
    }
}

impl AdminApi {
    /// The API over `vault` and its policy.
    pub fn new(vault: Arc<Vault>, policy: Arc<PolicyHandle>, roles: RoleLookup) -> Self {
        AdminApi {
            vault,
            policy,
            roles,
        }
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn create_honey(
        &self,
        req: Request<pb::CreateHoneyRequest>,
    ) -> Result<Response<pb::CreateHoneyResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let engine = self.vault.engine()?;
        let record_ids =
            run_blocking(move || engine.create_honey(&caller, &r.collection, r.count as usize))
                .await?;
        Ok(Response::new(pb::CreateHoneyResponse { record_ids }))
    }

    async fn reload_policy(
        &self,
        req: Request<pb::ReloadPolicyRequest>,
    ) -> Result<Response<pb::ReloadPolicyResponse>, Status> {
        let caller = caller(&req)?;
        let allowed = self
            .policy
            .current()
            .authorize(&caller, Operation::Admin, None);
        if allowed.is_err() {
            let vault = Arc::clone(&self.vault);
            let who = caller.clone();
            let refused = Err::<(), _>(crate::Error::PermissionDenied(String::new()));
            run_blocking(move || {
                vault.record(&who, "reload_policy", None, &refused);
                Ok(())
            })
            .await?;
        }
        allowed?;
        let vault = Arc::clone(&self.vault);
        let who = caller.clone();
        let loaded = run_blocking(move || vault.reload_policy(&who)).await?;
        tracing::info!(source = loaded.source(), principal = %caller.principal.name, "policy reloaded");
        Ok(Response::new(pb::ReloadPolicyResponse {
            source: loaded.source().to_owned(),
        }))
    }

    async fn check_policy(
        &self,
        req: Request<pb::CheckPolicyRequest>,
    ) -> Result<Response<pb::CheckPolicyResponse>, Status> {
        let caller = caller(&req)?;
        let policy = self.policy.current();
        let allowed = policy
            .authorize(&caller, Operation::Admin, None)
            .or_else(|_| policy.authorize(&caller, Operation::Audit, None));
        let recorded = allowed
            .as_ref()
            .map(|_| ())
            .map_err(|_| crate::Error::PermissionDenied(String::new()));
        let (vault, who) = (Arc::clone(&self.vault), caller.clone());
        run_blocking(move || {
            vault.record(&who, "check_policy", None, &recorded);
            Ok(())
        })
        .await?;
        allowed?;
        let r = req.into_inner();
        if r.principal.trim().is_empty() {
            return Err(Status::invalid_argument("principal is missing"));
        }
        let subject = Caller {
            principal: Principal {
                roles: (self.roles)(&r.principal),
                name: r.principal,
            },
            purpose: Some(r.purpose.trim().to_owned()).filter(|p| !p.is_empty()),
            internal: false,
            request_id: None,
        };
        let mut out = pb::CheckPolicyResponse {
            source: policy.source().to_owned(),
            roles: policy.roles_of(&subject),
            ..Default::default()
        };
        if r.collection.is_empty() {
            out.rules = policy.rules_summary(&subject);
        } else {
            let engine = self.vault.engine()?;
            let collection = engine.collection_schema(&r.collection)?;
            let explained = policy.explain(&subject, &collection);
            out.operations = explained
                .operations
                .into_iter()
                .map(|(op, fields)| pb::OperationAccess {
                    operation: op.name().to_owned(),
                    fields: fields
                        .into_iter()
                        .map(|(field, access)| pb::FieldAccess {
                            field,
                            access: match access {
                                FieldAccess::None
                                    if matches!(op, Operation::Read | Operation::Export) =>
                                {
                                    "redacted".to_owned()
                                }
                                FieldAccess::None => "denied".to_owned(),
                                FieldAccess::Read(level) => level.name().to_owned(),
                                FieldAccess::Allowed => "allowed".to_owned(),
                            },
                        })
                        .collect(),
                })
                .collect();
        }
        Ok(Response::new(out))
    }
}
