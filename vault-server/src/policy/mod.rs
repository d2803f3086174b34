//! Who is calling and why, and what they may do: a principal carries the
//! coarse roles of its credential; the access policy (`rules.rs`) resolves
//! roles to rules over collections, fields, operations, purposes and
//! redaction levels.

mod rules;

use std::fmt;
use std::str::FromStr;

#[cfg(test)]
pub(crate) use rules::tests::POLICY as TEST_POLICY;
pub use rules::{
    Budget, Explanation, FieldAccess, FieldView, Operation, Policy, PolicyHandle, Redaction,
};

/// A coarse permission held by a principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Read records and schemas.
    Reader,
    /// Create, replace and delete records.
    Writer,
    /// Create collections.
    Admin,
    /// Key custody (unseal, rotate).
    Custodian,
    /// Read the audit log.
    Auditor,
    /// Answer data-subject requests.
    Dpo,
}

impl Role {
    /// Every role; the development principal holds them all.
    pub const ALL: [Role; 6] = [
        Role::Reader,
        Role::Writer,
        Role::Admin,
        Role::Custodian,
        Role::Auditor,
        Role::Dpo,
    ];

    /// The role's name in configuration files.
    pub fn name(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Admin => "admin",
            Role::Custodian => "custodian",
            Role::Auditor => "auditor",
            Role::Dpo => "dpo",
        }
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown role {s:?} (known: reader, writer, admin, custodian, auditor, dpo)"
                )
            })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An authenticated caller identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The principal's name (e.g. `billing-service`).
    pub name: String,
    /// The roles it holds.
    pub roles: Vec<Role>,
}

/// Who is calling, and for what purpose. Every engine operation takes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The authenticated principal.
    pub principal: Principal,
    /// The stated purpose of the request (`x-vault-purpose`), if any.
    pub purpose: Option<String>,
    /// The vault itself (dev-mode seeding and unsealing, tests, benches):
    /// every operation is allowed. No credential ever yields an internal
    /// caller; only [`Caller::internal`] makes one.
    pub internal: bool,
    /// The gRPC request this call serves (its audit event carries it);
    /// none for in-process callers.
    pub request_id: Option<String>,
}

impl Caller {
    /// A caller with every role, for in-process use (tests, benches, dev seeding).
    pub fn internal(name: &str) -> Self {
        Caller {
            principal: Principal {
                name: name.to_owned(),
                roles: Role::ALL.to_vec(),
            },
            purpose: Some("internal".to_owned()),
            internal: true,
            request_id: None,
        }
    }

    /// Fails with `PermissionDenied` unless the principal holds `role`.
    /// (The policy decides in the server; this is for tests.)
    #[cfg(test)]
    pub fn require(&self, role: Role) -> crate::Result<()> {
        if self.principal.roles.contains(&role) {
            Ok(())
        } else {
            Err(crate::Error::PermissionDenied(format!(
                "principal {} lacks the {} role",
                self.principal.name, role
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_and_require() {
        for r in Role::ALL {
            assert_eq!(r.name().parse::<Role>().unwrap(), r);
        }
        assert!("root".parse::<Role>().is_err());
        let c = Caller {
            principal: Principal {
                name: "svc".into(),
                roles: vec![Role::Reader],
            },
            purpose: None,
            internal: false,
            request_id: None,
        };
        assert!(c.require(Role::Reader).is_ok());
        assert!(matches!(
            c.require(Role::Writer),
            Err(crate::Error::PermissionDenied(_))
        ));
    }
}
