//! The access policy as `AdminService` shows it: what a principal may do
//! and see ([`VaultClient::check_policy`](crate::VaultClient::check_policy)).
//!
//! Operation names and access levels are kept as the vault sends them
//! (`read`, `write`, …; `plain`, `masked`, `redacted`, `allowed`,
//! `denied`), so that a newer vault's words pass through unchanged.

use serde::Serialize;

/// What the policy in force grants one principal for one purpose
/// ([`VaultClient::check_policy`](crate::VaultClient::check_policy)).
///
/// Serialises as `{"source", "roles", "operations": [{"operation",
/// "fields": [{"field", "access"}]}], "rules"}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct PolicyCheck {
    /// Where the policy in force came from (its file, or the built-in role
    /// policy).
    pub source: String,
    /// The roles the principal holds under this policy.
    pub roles: Vec<String>,
    /// With a collection: each operation granted on it for the purpose, and
    /// how it treats every field of the collection. Empty without one.
    pub operations: Vec<OperationAccess>,
    /// Without a collection: one line per rule of the principal's roles.
    /// Empty with one.
    pub rules: Vec<String>,
}

impl PolicyCheck {
    /// The access that `operation` grants, if it is granted at all.
    pub fn operation(&self, operation: &str) -> Option<&OperationAccess> {
        self.operations.iter().find(|o| o.operation == operation)
    }
}

/// One operation granted on a collection, field by field.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct OperationAccess {
    /// `read`, `write`, `delete`, `search`, `export`, `erase`, `custody`,
    /// `audit` or `admin`.
    pub operation: String,
    /// Every field of the collection, in schema order.
    pub fields: Vec<FieldAccess>,
}

impl OperationAccess {
    /// The access to `field` (`plain`, `masked`, `redacted`, `allowed` or
    /// `denied`), if the collection has it.
    pub fn access(&self, field: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|f| f.field == field)
            .map(|f| f.access.as_str())
    }
}

/// How one operation treats one field.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct FieldAccess {
    /// The field name.
    pub field: String,
    /// For `read` and `export`: `plain`, `masked` or `redacted` (not
    /// decrypted at all). For other operations: `allowed` or `denied`.
    pub access: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        let check = PolicyCheck {
            source: "policy.toml".into(),
            roles: vec!["support".into()],
            operations: vec![OperationAccess {
                operation: "read".into(),
                fields: vec![
                    FieldAccess {
                        field: "email".into(),
                        access: "masked".into(),
                    },
                    FieldAccess {
                        field: "country".into(),
                        access: "redacted".into(),
                    },
                ],
            }],
            rules: Vec::new(),
        };
        let read = check.operation("read").unwrap();
        assert_eq!(read.access("email"), Some("masked"));
        assert_eq!(read.access("country"), Some("redacted"));
        assert_eq!(read.access("phone"), None);
        assert!(check.operation("write").is_none());
    }
}
