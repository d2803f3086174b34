//! `vaultctl policy …`: reload the vault's access policy, and show what it
//! grants a principal.
//!
//! The purpose that `policy check` checks is the `--purpose` of its own
//! command line only: `VAULT_PURPOSE` is the caller's own purpose, and an
//! auditor's environment must not change the answer unseen.

use clap::{Args, Subcommand};
use serde_json::{json, Value as Json};
use vault_client::PolicyCheck;

use super::{connect, emit, printable, Cli, CliError};

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
    /// Show what the policy in force grants a principal: its roles and,
    /// with --collection, each operation granted for --purpose and how it
    /// treats every field; without, the rules of its roles.
    Check(CheckArgs),

    /// Make the vault read its policy file again (as SIGHUP does); a file
    /// that does not parse is refused and the policy in force stays.
    Reload,
}

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// The principal: a token's principal name, or a client certificate's
    /// (its first URI SAN, else its subject CN).
    #[arg(long)]
    principal: String,

    /// The collection to show field by field; without it, the rules of the
    /// principal's roles.
    #[arg(long)]
    collection: Option<String>,
}

pub(crate) async fn run_policy(cli: &Cli, command: &PolicyCommand) -> Result<(), CliError> {
    match command {
        PolicyCommand::Check(args) => {
            // The global --purpose, when given on the command line, is the
            // purpose checked (see the module docs).
            let purpose = cli
                .purpose
                .as_deref()
                .filter(|_| cli.purpose_on_command_line);
            let check = connect(cli)
                .await?
                .check_policy(&args.principal, purpose, args.collection.as_deref())
                .await?;
            if cli.json {
                emit(&check_json(&check).to_string());
            } else {
                emit(&check_text(&check, args.collection.is_some()));
            }
            Ok(())
        }
        PolicyCommand::Reload => {
            let source = connect(cli).await?.reload_policy().await?;
            if cli.json {
                emit(&json!({ "source": source }).to_string());
            } else {
                emit(&format!("policy reloaded from {}", printable(&source)));
            }
            Ok(())
        }
    }
}

/// `policy check` in JSON: the whole answer,
/// `{"source", "roles", "operations": [{"operation", "fields": [{"field",
/// "access"}]}], "rules"}`.
fn check_json(check: &PolicyCheck) -> Json {
    serde_json::to_value(check)
        .unwrap_or_else(|e| json!({"error": {"kind": "protocol", "message": e.to_string()}}))
}

/// `policy check` for people:
///
/// ```text
/// policy: /etc/vault/policy.toml
/// roles: support
/// read:
///   email    masked
///   country  redacted
/// ```
///
/// With a collection, one block per operation granted, its fields aligned
/// (`no operations granted` if there is none); without one, the rule lines
/// (`no rules` if there is none).
fn check_text(check: &PolicyCheck, with_collection: bool) -> String {
    let roles = if check.roles.is_empty() {
        "-".to_owned()
    } else {
        check
            .roles
            .iter()
            .map(|r| printable(r))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut lines = vec![
        format!("policy: {}", printable(&check.source)),
        format!("roles: {roles}"),
    ];
    if with_collection && check.operations.is_empty() {
        lines.push("no operations granted".into());
    }
    let width = check
        .operations
        .iter()
        .flat_map(|o| &o.fields)
        .map(|f| printable(&f.field).chars().count())
        .max()
        .unwrap_or(0);
    for operation in &check.operations {
        lines.push(format!("{}:", printable(&operation.operation)));
        lines.extend(operation.fields.iter().map(|f| {
            format!("  {:width$}  {}", printable(&f.field), printable(&f.access))
                .trim_end()
                .to_owned()
        }));
    }
    if !with_collection && check.rules.is_empty() {
        lines.push("no rules".into());
    }
    lines.extend(check.rules.iter().map(|r| printable(r)));
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use vault_client::{FieldAccess, OperationAccess};

    use super::*;

    fn field(field: &str, access: &str) -> FieldAccess {
        FieldAccess {
            field: field.into(),
            access: access.into(),
        }
    }

    fn support_on_users() -> PolicyCheck {
        PolicyCheck {
            source: "/etc/vault/policy.toml".into(),
            roles: vec!["support".into(), "billing".into()],
            operations: vec![
                OperationAccess {
                    operation: "read".into(),
                    fields: vec![
                        field("email", "masked"),
                        field("name", "plain"),
                        field("birth_date", "redacted"),
                    ],
                },
                OperationAccess {
                    operation: "write".into(),
                    fields: vec![
                        field("email", "allowed"),
                        field("name", "denied"),
                        field("birth_date", "denied"),
                    ],
                },
            ],
            rules: Vec::new(),
        }
    }

    #[test]
    fn check_with_a_collection() {
        assert_eq!(
            check_text(&support_on_users(), true),
            "policy: /etc/vault/policy.toml\nroles: support, billing\n\
             read:\n  email       masked\n  name        plain\n  birth_date  redacted\n\
             write:\n  email       allowed\n  name        denied\n  birth_date  denied"
        );
        let nothing = PolicyCheck {
            source: "built-in role policy".into(),
            ..PolicyCheck::default()
        };
        assert_eq!(
            check_text(&nothing, true),
            "policy: built-in role policy\nroles: -\nno operations granted"
        );
    }

    #[test]
    fn check_without_a_collection() {
        let check = PolicyCheck {
            source: "policy.toml".into(),
            roles: vec!["support".into()],
            operations: Vec::new(),
            rules: vec![
                "role support (line 12): read on collections users · fields category contact \
                 · purposes support-ticket · masked"
                    .into(),
                "role ghost: not defined by this policy\n(grants nothing)".into(),
            ],
        };
        assert_eq!(
            check_text(&check, false),
            "policy: policy.toml\nroles: support\n\
             role support (line 12): read on collections users · fields category contact \
             · purposes support-ticket · masked\n\
             role ghost: not defined by this policy\\n(grants nothing)"
        );
        let none = PolicyCheck {
            source: "policy.toml".into(),
            ..PolicyCheck::default()
        };
        assert_eq!(
            check_text(&none, false),
            "policy: policy.toml\nroles: -\nno rules"
        );
    }

    #[test]
    fn check_json_is_the_whole_answer() {
        assert_eq!(
            check_json(&support_on_users()),
            json!({
                "source": "/etc/vault/policy.toml",
                "roles": ["support", "billing"],
                "operations": [
                    {"operation": "read", "fields": [
                        {"field": "email", "access": "masked"},
                        {"field": "name", "access": "plain"},
                        {"field": "birth_date", "access": "redacted"},
                    ]},
                    {"operation": "write", "fields": [
                        {"field": "email", "access": "allowed"},
                        {"field": "name", "access": "denied"},
                        {"field": "birth_date", "access": "denied"},
                    ]},
                ],
                "rules": [],
            })
        );
        assert_eq!(
            check_json(&PolicyCheck::default()),
            json!({"source": "", "roles": [], "operations": [], "rules": []})
        );
    }

    #[test]
    fn names_cannot_move_the_cursor() {
        let check = PolicyCheck {
            source: "p\x1b[2J".into(),
            roles: vec!["r\n".into()],
            operations: vec![OperationAccess {
                operation: "read".into(),
                fields: vec![field("a\tb", "plain"), field("c", "")],
            }],
            rules: Vec::new(),
        };
        assert_eq!(
            check_text(&check, true),
            "policy: p\\u{1b}[2J\nroles: r\\n\nread:\n  a\\tb  plain\n  c"
        );
    }
}
