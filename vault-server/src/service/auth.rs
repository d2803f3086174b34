//! Bearer-token authentication, as a plain tonic interceptor.
//!
//! Tokens are kept as SHA-256 hashes only; a request's token is hashed and
//! looked up. (Timing of the map lookup reveals at most something about a
//! hash of the presented token, not about any valid token.)

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

use crate::policy::{Caller, Principal};

/// Metadata key of the stated purpose.
pub const PURPOSE_HEADER: &str = "x-vault-purpose";
const MAX_PURPOSE_CHARS: usize = 128;

/// The SHA-256 of a bearer token, as stored in configuration.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Known tokens (by hash) and the principals they stand for.
#[derive(Default)]
pub struct Authenticator {
    tokens: HashMap<[u8; 32], Principal>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

impl Authenticator {
    /// No tokens: every request is refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accepts the token whose SHA-256 is `hash` as `principal`.
    pub fn add_token_hash(&mut self, hash: [u8; 32], principal: Principal) {
        self.tokens.insert(hash, principal);
    }

    /// Accepts `token` as `principal` (the token itself is not kept).
    pub fn add_token(&mut self, token: &str, principal: Principal) {
        self.add_token_hash(hash_token(token), principal);
    }

    /// The caller of a request, from its metadata.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        let header = metadata
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("missing bearer token"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Status::unauthenticated(
                    "malformed authorization header; expected \"Bearer <token>\"",
                )
            })?;
        let principal = self
            .tokens
            .get(&hash_token(token))
            .ok_or_else(|| Status::unauthenticated("invalid token"))?
            .clone();
        let purpose = match metadata.get(PURPOSE_HEADER) {
            None => None,
            Some(v) => {
                let p = v
                    .to_str()
                    .ok()
                    .map(str::trim)
                    .filter(|p| p.chars().count() <= MAX_PURPOSE_CHARS && p.chars().all(|c| c.is_ascii_graphic() || c == ' '))
                    .ok_or_else(|| {
                        Status::invalid_argument(format!(
                            "{PURPOSE_HEADER} must be at most {MAX_PURPOSE_CHARS} printable ASCII characters"
                        ))
                    })?;
                (!p.is_empty()).then(|| p.to_owned())
            }
        };
        Ok(Caller { principal, purpose })
    }
}

/// The interceptor: authenticates and puts the [`Caller`] in the request's extensions.
pub fn interceptor(
    auth: Arc<Authenticator>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut req: Request<()>| {
        let caller = auth.authenticate(req.metadata())?;
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
    use super::*;
    use crate::policy::Role;

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
        assert_eq!(format!("{:?}", auth()), "Authenticator { tokens: 1 }");
    }
}
