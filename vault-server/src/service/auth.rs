//! Authentication of callers, as a plain tonic interceptor: by client
//! certificate (mutual TLS) or by bearer token.
//!
//! - A connection that presented a client certificate (the TLS layer has
//!   verified it against the configured client CAs) is its principal's: the
//!   name comes from the certificate ([`certificate_principal`]: first URI
//!   SAN, else CN) and the roles from [`Authenticator::roles_of`]. A bearer
//!   token sent as well must be valid and bound to the same principal, or the
//!   request is refused; it adds no roles.
//! - Without a client certificate, the bearer token decides: its principal
//!   and roles.
//!
//! Tokens are kept as SHA-256 hashes only; a request's token is hashed and
//! looked up. (Timing of the map lookup reveals at most something about a
//! hash of the presented token, not about any valid token.) A token may
//! expire or be revoked; such a token is refused with its own message, so
//! its holder knows to get a new one.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;
use tonic::transport::CertificateDer;
use tonic::{Request, Status};

use super::requests::RequestMark;
use super::tls::certificate_principal;
use crate::monitor::Monitor;
use crate::policy::{Caller, Principal, Role};

/// Metadata key of the stated purpose.
pub const PURPOSE_HEADER: &str = "x-vault-purpose";
const MAX_PURPOSE_CHARS: usize = 128;

/// The SHA-256 of a bearer token, as stored in configuration.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// What a token grants: a principal with its roles, until it expires or is
/// revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenGrant {
    /// The principal the token stands for, with the token's roles.
    pub principal: Principal,
    /// The token is refused from this instant on.
    pub expires_at: Option<SystemTime>,
    /// The token is refused ("token revoked").
    pub revoked: bool,
}

impl TokenGrant {
    /// A grant that neither expires nor is revoked.
    pub fn new(principal: Principal) -> Self {
        TokenGrant {
            principal,
            expires_at: None,
            revoked: false,
        }
    }
}

/// Known tokens (by hash) and the principals they stand for; the roles of
/// principals that authenticate by client certificate.
#[derive(Default)]
pub struct Authenticator {
    tokens: HashMap<[u8; 32], TokenGrant>,
    certificate_roles: HashMap<String, Vec<Role>>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("tokens", &self.tokens.len())
            .field("certificate_principals", &self.certificate_roles.len())
            .finish()
    }
}

impl Authenticator {
    /// No tokens and no certificate principals: every request is refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accepts the token whose SHA-256 is `hash` as `principal`.
    pub fn add_token_hash(&mut self, hash: [u8; 32], principal: Principal) {
        self.add_token_grant(hash, TokenGrant::new(principal));
    }

    /// Accepts `token` as `principal` (the token itself is not kept).
    pub fn add_token(&mut self, token: &str, principal: Principal) {
        self.add_token_hash(hash_token(token), principal);
    }

    /// Knows the token whose SHA-256 is `hash` with its grant (expiry,
    /// revocation).
    pub fn add_token_grant(&mut self, hash: [u8; 32], grant: TokenGrant) {
        self.tokens.insert(hash, grant);
    }

    /// Gives `roles` to the principal `name` when it authenticates with a
    /// client certificate.
    pub fn add_certificate_principal(&mut self, name: impl Into<String>, roles: Vec<Role>) {
        self.certificate_roles.insert(name.into(), roles);
    }

    /// The roles of a principal that authenticated by client certificate;
    /// `None` if the configuration does not know it: a certificate principal
    /// must be configured (`[[principals]]`, possibly with no roles), even
    /// when the policy file gives it its roles
    /// ([`crate::policy::Policy::roles_of`]).
    pub fn roles_of(&self, principal: &str) -> Option<Vec<Role>> {
        self.certificate_roles.get(principal).cloned()
    }

    /// Every role a principal's credentials carry (its certificate roles and
    /// those of tokens bound to it), for the policy check.
    pub fn credential_roles(&self, principal: &str) -> Vec<Role> {
        let mut roles: Vec<Role> = self
            .certificate_roles
            .get(principal)
            .cloned()
            .unwrap_or_default();
        let now = SystemTime::now();
        for grant in self.tokens.values() {
            let live = !grant.revoked && grant.expires_at.is_none_or(|t| now < t);
            if live && grant.principal.name == principal {
                roles.extend(grant.principal.roles.iter().copied());
            }
        }
        roles.sort();
        roles.dedup();
        roles
    }

    /// The caller of a request without a client certificate, from its
    /// metadata: the bearer token decides.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        self.authenticate_at(metadata, None, SystemTime::now())
    }

    /// The caller of a request from its metadata and the client certificate
    /// chain its connection presented (already verified by TLS), if any.
    pub fn authenticate_with_certificates(
        &self,
        metadata: &MetadataMap,
        peer_certs: Option<&[CertificateDer<'_>]>,
    ) -> Result<Caller, Status> {
        self.authenticate_at(metadata, peer_certs, SystemTime::now())
    }

    fn authenticate_at(
        &self,
        metadata: &MetadataMap,
        peer_certs: Option<&[CertificateDer<'_>]>,
        now: SystemTime,
    ) -> Result<Caller, Status> {
        let token_principal = match bearer_token(metadata)? {
            Some(token) => Some(self.token_principal(token, now)?),
            None => None,
        };
        let principal = match peer_certs.and_then(<[_]>::first) {
            Some(cert) => {
                let name = certificate_principal(cert).map_err(Status::unauthenticated)?;
                if let Some(by_token) = &token_principal {
                    if by_token.name != name {
                        tracing::warn!(
                            certificate = %name,
                            token = %by_token.name,
                            "refused: the bearer token is bound to another principal than the client certificate"
                        );
                        return Err(Status::unauthenticated(
                            "the bearer token is bound to another principal than the client certificate",
                        ));
                    }
                }
                let roles = self.roles_of(&name).ok_or_else(|| {
                    Status::permission_denied(format!(
                        "principal {name} (from the client certificate) has no roles in this vault"
                    ))
                })?;
                Principal { name, roles }
            }
            None => {
                token_principal.ok_or_else(|| Status::unauthenticated("missing bearer token"))?
            }
        };
        Ok(Caller {
            principal,
            purpose: purpose(metadata)?,
            internal: false,
            request_id: None,
        })
    }

    /// The principal of a known, live token.
    fn token_principal(&self, token: &str, now: SystemTime) -> Result<Principal, Status> {
        let grant = self
            .tokens
            .get(&hash_token(token))
            .ok_or_else(|| Status::unauthenticated("invalid token"))?;
        if grant.revoked {
            tracing::warn!(principal = %grant.principal.name, "refused a revoked token");
            return Err(Status::unauthenticated("token revoked"));
        }
        if grant.expires_at.is_some_and(|at| now >= at) {
            tracing::info!(principal = %grant.principal.name, "refused an expired token");
            return Err(Status::unauthenticated("token expired"));
        }
        Ok(grant.principal.clone())
    }
}

/// The bearer token of a request, if it sent an `authorization` header.
fn bearer_token(metadata: &MetadataMap) -> Result<Option<&str>, Status> {
    let Some(header) = metadata.get("authorization") else {
        return Ok(None);
    };
    header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(Some)
        .ok_or_else(|| {
            Status::unauthenticated("malformed authorization header; expected \"Bearer <token>\"")
        })
}

/// The stated purpose of a request, if any.
fn purpose(metadata: &MetadataMap) -> Result<Option<String>, Status> {
    let Some(v) = metadata.get(PURPOSE_HEADER) else {
        return Ok(None);
    };
    let p = v
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|p| {
            p.chars().count() <= MAX_PURPOSE_CHARS
                && p.chars().all(|c| c.is_ascii_graphic() || c == ' ')
        })
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "{PURPOSE_HEADER} must be at most {MAX_PURPOSE_CHARS} printable ASCII characters"
            ))
        })?;
    Ok((!p.is_empty()).then(|| p.to_owned()))
}

/// The interceptor: authenticates (by the connection's client certificate
/// and the bearer token), refuses a principal the monitor locked out (with
/// a monitor: every service but custody, which M-of-N shares guard and
/// which must stay open to seal the vault and lift lockouts), and puts the
/// [`Caller`] in the request's extensions, with the request's id from the
/// audit layer.
pub fn interceptor(
    auth: Arc<Authenticator>,
    lockout: Option<Arc<Monitor>>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut req: Request<()>| {
        let certs = req.peer_certs();
        let mut caller = auth
            .authenticate_with_certificates(req.metadata(), certs.as_deref().map(Vec::as_slice))?;
        if let Some(mark) = req.extensions().get::<Arc<RequestMark>>() {
            mark.authenticated(&caller.principal.name, caller.purpose.as_deref());
            caller.request_id = Some(mark.id.clone());
        }
        if let Some(monitor) = &lockout {
            monitor.check_locked(&caller.principal.name)?;
        }
        req.extensions_mut().insert(caller);
        Ok(req)
    }
}

/// The caller the interceptor attached to a request.
pub fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("request was not authenticated"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;

    fn auth() -> Authenticator {
        let mut a = Authenticator::new();
        a.add_token(
            "s3cret-token",
            Principal {
                name: "svc".into(),
                roles: vec![Role::Reader],
            },
        );
        a
    }

    fn md(pairs: &[(&'static str, &str)]) -> MetadataMap {
        let mut m = MetadataMap::new();
        for (k, v) in pairs {
            m.insert(*k, v.parse().unwrap());
        }
        m
    }

    #[test]
    fn accepts_known_token_with_purpose() {
        let c = auth()
            .authenticate(&md(&[
                ("authorization", "Bearer s3cret-token"),
                (PURPOSE_HEADER, "billing"),
            ]))
            .unwrap();
        assert_eq!(c.principal.name, "svc");
        assert_eq!(c.purpose.as_deref(), Some("billing"));
    }

    #[test]
    fn refuses_bad_credentials() {
        let a = auth();
        for m in [
            md(&[]),
            md(&[("authorization", "s3cret-token")]),
            md(&[("authorization", "Bearer ")]),
            md(&[("authorization", "Bearer wrong")]),
            md(&[("authorization", "Basic s3cret-token")]),
        ] {
            assert_eq!(
                a.authenticate(&m).unwrap_err().code(),
                tonic::Code::Unauthenticated
            );
        }
        let long = "x".repeat(200);
        let m = md(&[
            ("authorization", "Bearer s3cret-token"),
            (PURPOSE_HEADER, &long),
        ]);
        assert_eq!(
            a.authenticate(&m).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn debug_shows_no_hashes() {
        assert_eq!(
            format!("{:?}", auth()),
            "Authenticator { tokens: 1, certificate_principals: 0 }"
        );
    }

    fn principal(name: &str, roles: &[Role]) -> Principal {
        Principal {
            name: name.into(),
            roles: roles.to_vec(),
        }
    }

    fn message(r: Result<Caller, Status>) -> (tonic::Code, String) {
        let e = r.unwrap_err();
        (e.code(), e.message().to_owned())
    }

    #[test]
    fn expired_and_revoked_tokens_are_refused_by_name() {
        let now = SystemTime::now();
        let mut a = auth();
        let mut live = TokenGrant::new(principal("svc", &[Role::Reader]));
        live.expires_at = Some(now + Duration::from_secs(60));
        a.add_token_grant(hash_token("live"), live);
        let mut expired = TokenGrant::new(principal("svc", &[Role::Reader]));
        expired.expires_at = Some(now);
        a.add_token_grant(hash_token("expired"), expired);
        let mut revoked = TokenGrant::new(principal("svc", &[Role::Reader]));
        revoked.revoked = true;
        a.add_token_grant(hash_token("revoked"), revoked);

        let at = |token: &str, now| a.authenticate_at(&md(&[("authorization", token)]), None, now);
        assert_eq!(at("Bearer live", now).unwrap().principal.name, "svc");
        assert_eq!(
            message(at("Bearer live", now + Duration::from_secs(60))),
            (tonic::Code::Unauthenticated, "token expired".into())
        );
        assert_eq!(
            message(at("Bearer expired", now)),
            (tonic::Code::Unauthenticated, "token expired".into())
        );
        assert_eq!(
            message(at("Bearer revoked", now)),
            (tonic::Code::Unauthenticated, "token revoked".into())
        );
    }

    /// A self-signed certificate (the interceptor sees certificates that
    /// TLS has verified already; here only their names matter).
    fn cert(uri: Option<&str>, cn: Option<&str>) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        if let Some(uri) = uri {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI(uri.try_into().unwrap()));
        }
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn a_client_certificate_names_the_principal() {
        const BILLING: &str = "spiffe://eu.example/billing-service";
        let mut a = auth();
        a.add_certificate_principal(BILLING, vec![Role::Reader, Role::Writer]);
        a.add_certificate_principal("svc", vec![Role::Admin]);
        a.add_token(
            "billing-token",
            principal(BILLING, &[Role::Reader, Role::Writer, Role::Admin]),
        );
        let billing = [cert(Some(BILLING), Some("ignored-cn"))];
        let by_cn = [cert(None, Some("svc"))];
        let now = SystemTime::now();

        // The certificate alone: its URI SAN, the roles of [[principals]].
        let c = a
            .authenticate_at(&md(&[(PURPOSE_HEADER, "invoicing")]), Some(&billing), now)
            .unwrap();
        assert_eq!(
            c.principal,
            principal(BILLING, &[Role::Reader, Role::Writer])
        );
        assert_eq!(c.purpose.as_deref(), Some("invoicing"));
        // CN when there is no URI SAN.
        let c = a.authenticate_at(&md(&[]), Some(&by_cn), now).unwrap();
        assert_eq!(c.principal, principal("svc", &[Role::Admin]));

        // A token of the same principal is accepted and adds no role.
        let c = a
            .authenticate_at(
                &md(&[("authorization", "Bearer billing-token")]),
                Some(&billing),
                now,
            )
            .unwrap();
        assert_eq!(
            c.principal,
            principal(BILLING, &[Role::Reader, Role::Writer])
        );
        // A token of another principal, or an unknown one, is refused.
        let (code, m) = message(a.authenticate_at(
            &md(&[("authorization", "Bearer s3cret-token")]),
            Some(&billing),
            now,
        ));
        assert_eq!(code, tonic::Code::Unauthenticated);
        assert!(m.contains("another principal"), "{m}");
        assert_eq!(
            message(a.authenticate_at(
                &md(&[("authorization", "Bearer nope")]),
                Some(&billing),
                now
            )),
            (tonic::Code::Unauthenticated, "invalid token".into())
        );
        assert_eq!(
            message(a.authenticate_at(&md(&[("authorization", "nope")]), Some(&billing), now)).0,
            tonic::Code::Unauthenticated
        );

        // A verified certificate of a principal without roles here.
        let stranger = [cert(Some("spiffe://eu.example/stranger"), None)];
        let (code, m) = message(a.authenticate_at(&md(&[]), Some(&stranger), now));
        assert_eq!(code, tonic::Code::PermissionDenied);
        assert!(m.contains("spiffe://eu.example/stranger"), "{m}");
        // A certificate that names nobody.
        let (code, m) = message(a.authenticate_at(&md(&[]), Some(&[cert(None, None)]), now));
        assert_eq!(code, tonic::Code::Unauthenticated);
        assert!(m.contains("names no principal"), "{m}");
    }
}
