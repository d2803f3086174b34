//! The access policy: principals → roles, roles → rules, default deny.
//!
//! A policy file (TOML) looks like this:
//!
//! ```toml
//! # Which roles a principal holds. A principal listed here holds exactly
//! # these roles; one not listed keeps the roles its credential names
//! # (token or certificate configuration), resolved against this file.
//! [principals]
//! "billing-service" = ["billing"]
//! "spiffe://eu.example/support" = ["support"]
//!
//! [roles.billing]
//! description = "Charges customers"
//!
//! [[roles.billing.rules]]
//! collections = ["payments"]          # default: every collection ("*")
//! fields = ["iban", "amount_cents"]   # fields and/or categories; neither: every field
//! operations = ["read", "write"]      # read write delete search export erase custody audit admin
//! purposes = ["billing", "refund"]    # required for data operations; "*" for any
//! redaction = "masked"                # plain (default) | masked | redacted
//!
//! [[roles.support.rules]]
//! collections = ["users"]
//! categories = ["contact"]
//! operations = ["read"]
//! purposes = ["support-ticket"]
//! redaction = "masked"
//!
//! # Read budgets: records (and/or bytes of plaintext) returned per window.
//! [[budgets]]
//! principal = "billing-service"       # "*": each principal on its own
//! purpose = "billing"                 # default "*": every purpose together
//! window_seconds = 3600               # 1 to 2 592 000 (30 days)
//! records = 5000                      # and/or bytes = 10485760
//! ```
//!
//! Decisions:
//! - **Data operations** (read, write, delete, search, export, erase) need a
//!   stated purpose (`INVALID_ARGUMENT` without one) and a rule of one of the
//!   caller's roles that names the operation, the collection and the
//!   purpose (`PERMISSION_DENIED` otherwise).
//! - **Reads** show each field at the most open level any matching rule
//!   gives it (plain > masked > redacted). A field no rule covers is
//!   redacted. Redacted fields are never decrypted; masked ones are
//!   decrypted and masked inside the vault.
//! - **Writes** need a write rule covering every field written.
//! - **Custody, audit and admin** need a rule naming the operation; they
//!   take no purpose.
//! - **Budgets** refuse a read (`RESOURCE_EXHAUSTED`, with an alert) that
//!   would take the records or bytes returned to the caller over a budget
//!   that applies to it within the window (see `crate::monitor`).
//!
//! Anything not granted is denied.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;
use sha2::Digest;

use super::{Caller, Principal, Role};
use crate::engine::{shown, Collection, DataCategory};
use crate::{Error, Result};

/// What a caller does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// Read records.
    Read,
    /// Create or replace records.
    Write,
    /// Delete records.
    Delete,
    /// Search by blind index.
    Search,
    /// Export a subject's data.
    Export,
    /// Erase a subject.
    Erase,
    /// Key custody (unseal, rotate, retire, destroy).
    Custody,
    /// Read the audit log.
    Audit,
    /// Manage collections and the policy.
    Admin,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 9] = [
        Operation::Read,
        Operation::Write,
        Operation::Delete,
        Operation::Search,
        Operation::Export,
        Operation::Erase,
        Operation::Custody,
        Operation::Audit,
        Operation::Admin,
    ];

    /// Its name in policy files.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Write => "write",
            Operation::Delete => "delete",
            Operation::Search => "search",
            Operation::Export => "export",
            Operation::Erase => "erase",
            Operation::Custody => "custody",
            Operation::Audit => "audit",
            Operation::Admin => "admin",
        }
    }

    /// What it does, as a phrase after "may not".
    pub fn verb(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Write => "write",
            Operation::Delete => "delete",
            Operation::Search => "search",
            Operation::Export => "export",
            Operation::Erase => "erase subjects",
            Operation::Custody => "perform key custody",
            Operation::Audit => "read the audit log",
            Operation::Admin => "administer the vault",
        }
    }

    /// Whether it touches personal data (and so needs a purpose).
    pub fn is_data(self) -> bool {
        matches!(
            self,
            Operation::Read
                | Operation::Write
                | Operation::Delete
                | Operation::Search
                | Operation::Export
                | Operation::Erase
        )
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How much of a field a reader sees. Ordered from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Redaction {
    /// Not shown, not decrypted; the field is marked redacted.
    Redacted,
    /// Decrypted and masked inside the vault (the schema's mask).
    Masked,
    /// Shown as stored.
    #[default]
    Plain,
}

impl Redaction {
    /// Its name in policy files.
    pub fn name(self) -> &'static str {
        match self {
            Redaction::Redacted => "redacted",
            Redaction::Masked => "masked",
            Redaction::Plain => "plain",
        }
    }
}

impl fmt::Display for Redaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `"*"` or a set of names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Names {
    Any,
    Some(BTreeSet<String>),
}

impl Names {
    fn from_list(list: Option<Vec<String>>) -> Names {
        match list {
            None => Names::Any,
            Some(l) if l.iter().any(|n| n == "*") => Names::Any,
            Some(l) => Names::Some(l.into_iter().collect()),
        }
    }

    fn contains(&self, name: &str) -> bool {
        match self {
            Names::Any => true,
            Names::Some(s) => s.contains(name),
        }
    }

    fn shown(&self) -> String {
        match self {
            Names::Any => "*".into(),
            Names::Some(s) => s.iter().cloned().collect::<Vec<_>>().join(", "),
        }
    }
}

/// Which fields a rule covers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fields {
    all: bool,
    names: BTreeSet<String>,
    categories: BTreeSet<DataCategory>,
}

impl Fields {
    fn covers(&self, collection: &Collection, field: &str) -> bool {
        self.all
            || self.names.contains(field)
            || collection
                .field(field)
                .is_some_and(|f| self.categories.contains(&f.category))
    }
}

/// One rule of a role.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    collections: Names,
    fields: Fields,
    operations: BTreeSet<Operation>,
    /// `None`: the rule names no purpose (custody, audit and admin rules).
    purposes: Option<Names>,
    redaction: Redaction,
    /// Where it is in the policy file (for `policy check`).
    line: usize,
}

impl Rule {
    /// Whether the rule grants `op` on `collection`. Without a collection
    /// (erasing a subject, custody, reloading the policy) only a rule over
    /// every collection grants: a rule scoped to some collections must not
    /// reach beyond them.
    fn grants(&self, op: Operation, collection: Option<&str>) -> bool {
        self.operations.contains(&op)
            && match collection {
                Some(c) => self.collections.contains(c),
                None => self.collections == Names::Any,
            }
    }

    fn allows_purpose(&self, op: Operation, purpose: Option<&str>) -> bool {
        if !op.is_data() {
            return true;
        }
        match (&self.purposes, purpose) {
            (Some(p), Some(purpose)) => p.contains(purpose),
            _ => false,
        }
    }
}

/// A loaded policy.
#[derive(Debug, Clone)]
pub struct Policy {
    principals: HashMap<String, Vec<String>>,
    roles: BTreeMap<String, Vec<Rule>>,
    budgets: Vec<Budget>,
    /// Where it came from: a file, or the built-in role policy.
    source: String,
    /// SHA-256 of the file's text; none for the built-in policy.
    sha256: Option<[u8; 32]>,
    /// The text it was parsed from (empty for the built-in policy): what
    /// a server of a shared store hands the others.
    text: String,
}

/// What the vault itself may do: everything (see [`Caller::internal`]).
static INTERNAL_RULE: std::sync::LazyLock<Rule> = std::sync::LazyLock::new(|| Rule {
    collections: Names::Any,
    fields: Fields {
        all: true,
        names: BTreeSet::new(),
        categories: BTreeSet::new(),
    },
    operations: Operation::ALL.into_iter().collect(),
    purposes: Some(Names::Any),
    redaction: Redaction::Plain,
    line: 0,
});

/// A read budget: the records and bytes of plaintext a principal may be
/// returned for a purpose within a sliding window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// The principal, or `*` (each principal counted on its own).
    pub principal: String,
    /// The purpose, or `*` (every purpose of the principal together).
    pub purpose: String,
    /// The window, in seconds.
    pub window_secs: u64,
    /// Most records returned within the window.
    pub records: Option<u64>,
    /// Most bytes of plaintext returned within the window.
    pub bytes: Option<u64>,
    /// Where it is in the policy file.
    pub line: usize,
}

impl Budget {
    /// Whether it counts the reads of `principal` for `purpose`.
    pub fn applies(&self, principal: &str, purpose: Option<&str>) -> bool {
        (self.principal == "*" || self.principal == principal)
            && (self.purpose == "*" || purpose == Some(self.purpose.as_str()))
    }
}

/// The longest budget window (30 days).
const MAX_BUDGET_WINDOW_SECS: u64 = 30 * 24 * 3600;

// ---- the file format ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    principals: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    roles: BTreeMap<String, FileRole>,
    #[serde(default)]
    budgets: Vec<toml::Spanned<FileBudget>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBudget {
    principal: String,
    purpose: Option<String>,
    window_seconds: u64,
    records: Option<u64>,
    bytes: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRole {
    #[serde(default)]
    #[allow(dead_code)]
    description: String,
    #[serde(default)]
    rules: Vec<toml::Spanned<FileRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRule {
    collections: Option<Vec<String>>,
    fields: Option<Vec<String>>,
    categories: Option<Vec<DataCategory>>,
    operations: Vec<Operation>,
    purposes: Option<Vec<String>>,
    #[serde(default)]
    redaction: Redaction,
}

/// The 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(1, |t| t.bytes().filter(|&b| b == b'\n').count() + 1)
}

impl Policy {
    /// The built-in policy used without a policy file: the coarse roles of
    /// credentials, any purpose, every field plain.
    /// reader: read · writer: write, delete · admin: admin · custodian:
    /// custody · auditor: audit · dpo: read, export, erase.
    pub fn builtin() -> Policy {
        let rule = |ops: &[Operation]| Rule {
            collections: Names::Any,
            fields: Fields {
                all: true,
                names: BTreeSet::new(),
                categories: BTreeSet::new(),
            },
            operations: ops.iter().copied().collect(),
            purposes: Some(Names::Any),
            redaction: Redaction::Plain,
            line: 0,
        };
        let roles = Role::ALL
            .iter()
            .map(|r| {
                let ops: &[Operation] = match r {
                    Role::Reader => &[Operation::Read, Operation::Search],
                    Role::Writer => &[Operation::Write, Operation::Delete],
                    Role::Admin => &[Operation::Admin],
                    Role::Custodian => &[Operation::Custody],
                    Role::Auditor => &[Operation::Audit],
                    Role::Dpo => &[Operation::Read, Operation::Export, Operation::Erase],
                };
                (r.name().to_owned(), vec![rule(ops)])
            })
            .collect();
        Policy {
            principals: HashMap::new(),
            roles,
            budgets: Vec::new(),
            source: "built-in role policy".into(),
            sha256: None,
            text: String::new(),
        }
    }

    /// Parses a policy file's text. Errors name the line.
    pub fn parse(text: &str, source: &str) -> std::result::Result<Policy, String> {
        let doc: FileDoc = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(0, |s| line_of(text, s.start));
            let msg = e.message().trim_end().to_owned();
            if line > 0 {
                format!("line {line}: {msg}")
            } else {
                msg
            }
        })?;
        let mut roles = BTreeMap::new();
        for (name, role) in doc.roles {
            if name.trim().is_empty() || name == "*" {
                return Err(format!("role name {name:?} is not allowed"));
            }
            let mut rules = Vec::with_capacity(role.rules.len());
            for spanned in role.rules {
                let line = line_of(text, spanned.span().start);
                let r = spanned.into_inner();
                let err = |m: &str| format!("line {line}: role {name}: {m}");
                if r.operations.is_empty() {
                    return Err(err("a rule needs at least one operation"));
                }
                for (what, list) in [
                    ("collections", &r.collections),
                    ("fields", &r.fields),
                    ("purposes", &r.purposes),
                ] {
                    if list.as_ref().is_some_and(|l| l.is_empty()) {
                        return Err(err(&format!(
                            "{what} is empty; leave it out for every one, or use [\"*\"]"
                        )));
                    }
                }
                if r.categories.as_ref().is_some_and(|l| l.is_empty()) {
                    return Err(err("categories is empty; leave it out"));
                }
                if let Some(bad) = r.purposes.iter().flatten().find(|p| !valid_purpose(p)) {
                    return Err(err(&format!(
                        "purpose {bad:?} can never be stated: purposes are 1 to 128 printable \
                         ASCII characters without surrounding spaces"
                    )));
                }
                let data = r.operations.iter().any(|o| o.is_data());
                let purposes =
                    match (r.purposes, data) {
                        (None, true) => return Err(err(
                            "a rule with a data operation must name its purposes (\"*\" for any)",
                        )),
                        (Some(p), _) if p.is_empty() || p.iter().any(|s| s.trim().is_empty()) => {
                            return Err(err("purposes must be non-empty names"))
                        }
                        (p, _) => p.map(|p| Names::from_list(Some(p))),
                    };
                let names: BTreeSet<String> = r.fields.unwrap_or_default().into_iter().collect();
                let categories: BTreeSet<DataCategory> =
                    r.categories.unwrap_or_default().into_iter().collect();
                rules.push(Rule {
                    collections: Names::from_list(r.collections),
                    fields: Fields {
                        all: names.is_empty() && categories.is_empty() || names.contains("*"),
                        names,
                        categories,
                    },
                    operations: r.operations.into_iter().collect(),
                    purposes,
                    redaction: r.redaction,
                    line,
                });
            }
            roles.insert(name, rules);
        }
        // Custody and data access are separate duties: no role, and no
        // principal, holds both.
        for (name, rules) in &roles {
            if Duties::of(rules).mixed() {
                return Err(format!(
                    "role {name}: custody cannot be combined with data or admin operations \
                     (separate duties; make two roles for two principals)"
                ));
            }
        }
        for (principal, held) in &doc.principals {
            if let Some(role) = held.iter().find(|r| !roles.contains_key(*r)) {
                return Err(format!(
                    "principal {principal}: role {role} is not defined in this file"
                ));
            }
            check_duties(&roles, principal, held)?;
        }
        let budgets = doc
            .budgets
            .into_iter()
            .map(|spanned| {
                let line = line_of(text, spanned.span().start);
                parse_budget(spanned.into_inner(), line)
            })
            .collect::<std::result::Result<Vec<_>, String>>()?;
        Ok(Policy {
            principals: doc.principals.into_iter().collect(),
            roles,
            budgets,
            source: source.to_owned(),
            sha256: Some(sha2::Sha256::digest(text.as_bytes()).into()),
            text: text.to_owned(),
        })
    }

    /// The text it was parsed from (empty for the built-in policy).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Reads and parses a policy file.
    pub fn load(path: &Path) -> Result<Policy> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading policy {}", path.display()), e))?;
        Policy::parse(&text, &path.display().to_string())
            .map_err(|e| Error::InvalidArgument(format!("policy {}: {e}", path.display())))
    }

    /// The read budgets, in file order.
    pub fn budgets(&self) -> &[Budget] {
        &self.budgets
    }

    /// Where the policy came from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// What an audit event says of this policy: its source and the SHA-256
    /// of its text (an auditor holding the file can check it is the one).
    pub fn identity(&self) -> String {
        match &self.sha256 {
            Some(h) => format!("{} sha256:{}", self.source, hex::encode(h)),
            None => self.source.clone(),
        }
    }

    /// Fails unless every credential of the configuration (token or
    /// certificate principal, with the roles it names) keeps custody and
    /// data apart under this policy. A principal listed in the file holds
    /// the file's roles (checked when it parsed); one not listed holds its
    /// credential's roles, resolved against the file's definitions, and is
    /// checked here.
    pub fn check_credentials(&self, credentials: &[Principal]) -> std::result::Result<(), String> {
        for p in credentials {
            if self.principals.contains_key(&p.name) {
                continue;
            }
            let held: Vec<String> = p.roles.iter().map(|r| r.name().to_owned()).collect();
            check_duties(&self.roles, &p.name, &held)
                .map_err(|e| format!("{e}: its credential's roles resolve so under this policy"))?;
        }
        Ok(())
    }

    /// Fails with `PERMISSION_DENIED` when the caller's roles hold both
    /// custody and data access. The configuration and the policy refuse
    /// such credentials when they load; this check holds on every request
    /// whatever built the caller.
    fn separate_duties(&self, caller: &Caller) -> Result<()> {
        if caller.internal {
            return Ok(());
        }
        check_duties(&self.roles, &caller.principal.name, &self.roles_of(caller))
            .map_err(Error::PermissionDenied)
    }

    /// The role names a caller holds under this policy.
    pub fn roles_of(&self, caller: &Caller) -> Vec<String> {
        match self.principals.get(&caller.principal.name) {
            Some(roles) => roles.clone(),
            None => caller
                .principal
                .roles
                .iter()
                .map(|r| r.name().to_owned())
                .collect(),
        }
    }

    fn rules_of<'a>(&'a self, caller: &Caller) -> impl Iterator<Item = &'a Rule> + 'a {
        let roles = self.roles_of(caller);
        let internal = caller.internal.then_some(&*INTERNAL_RULE);
        roles
            .into_iter()
            .filter_map(|r| self.roles.get(&r))
            .flatten()
            .chain(internal)
    }

    /// Fails unless some rule of the caller's roles grants `op` (on
    /// `collection`, when given) for the caller's stated purpose.
    pub fn authorize(
        &self,
        caller: &Caller,
        op: Operation,
        collection: Option<&str>,
    ) -> Result<()> {
        self.separate_duties(caller)?;
        let purpose = purpose_of(caller, op)?;
        let mut granted_without_purpose = false;
        for rule in self.rules_of(caller) {
            if rule.grants(op, collection) {
                if rule.allows_purpose(op, purpose) {
                    return Ok(());
                }
                granted_without_purpose = true;
            }
        }
        Err(denied(caller, op, collection, granted_without_purpose))
    }

    /// Fails unless some rule of the caller's roles names `collection` (any
    /// operation, any purpose): enough to read its schema, which holds no
    /// personal data.
    pub fn authorize_schema(&self, caller: &Caller, collection: &str) -> Result<()> {
        self.separate_duties(caller)?;
        if self.rules_of(caller).any(|r| {
            r.collections.contains(collection)
                && r.operations
                    .iter()
                    .any(|o| o.is_data() || *o == Operation::Admin)
        }) {
            return Ok(());
        }
        Err(Error::PermissionDenied(format!(
            "principal {} may not see collection {}",
            caller.principal.name,
            shown(collection)
        )))
    }

    /// How the caller may see each field of `collection` when doing `op`
    /// (read or export): fields absent from the map are redacted. Fails
    /// when no rule grants `op` on the collection for the purpose.
    pub fn field_view(
        &self,
        caller: &Caller,
        op: Operation,
        collection: &Collection,
    ) -> Result<FieldView> {
        self.separate_duties(caller)?;
        let purpose = purpose_of(caller, op)?;
        let mut levels: BTreeMap<String, Redaction> = BTreeMap::new();
        let mut any = false;
        let mut granted_without_purpose = false;
        for rule in self.rules_of(caller) {
            if !rule.grants(op, Some(&collection.name)) {
                continue;
            }
            if !rule.allows_purpose(op, purpose) {
                granted_without_purpose = true;
                continue;
            }
            any = true;
            for f in &collection.fields {
                if rule.fields.covers(collection, &f.name) {
                    let level = levels.entry(f.name.clone()).or_insert(rule.redaction);
                    *level = (*level).max(rule.redaction);
                }
            }
        }
        if !any {
            return Err(denied(
                caller,
                op,
                Some(&collection.name),
                granted_without_purpose,
            ));
        }
        Ok(FieldView { levels })
    }

    /// Fails unless write rules for the caller's purpose cover every field
    /// in `fields` of `collection`.
    pub fn authorize_write<'a>(
        &self,
        caller: &Caller,
        collection: &Collection,
        fields: impl Iterator<Item = &'a str>,
    ) -> Result<()> {
        self.separate_duties(caller)?;
        let purpose = purpose_of(caller, Operation::Write)?;
        let rules: Vec<&Rule> = self
            .rules_of(caller)
            .filter(|r| r.grants(Operation::Write, Some(&collection.name)))
            .collect();
        if rules.is_empty() {
            return Err(denied(
                caller,
                Operation::Write,
                Some(&collection.name),
                false,
            ));
        }
        let rules: Vec<&Rule> = rules
            .into_iter()
            .filter(|r| r.allows_purpose(Operation::Write, purpose))
            .collect();
        if rules.is_empty() {
            return Err(denied(
                caller,
                Operation::Write,
                Some(&collection.name),
                true,
            ));
        }
        for field in fields {
            if !rules.iter().any(|r| r.fields.covers(collection, field)) {
                return Err(Error::PermissionDenied(format!(
                    "principal {} may not write field {} of collection {}",
                    caller.principal.name,
                    shown(field),
                    collection.name
                )));
            }
        }
        Ok(())
    }

    /// What a principal may do on a collection for a purpose, field by
    /// field: the auditor's view of the policy.
    pub fn explain(&self, caller: &Caller, collection: &Collection) -> Explanation {
        let purpose = caller.purpose.as_deref();
        let roles = self.roles_of(caller);
        let mut operations = Vec::new();
        for op in Operation::ALL {
            let rules: Vec<&Rule> = self
                .rules_of(caller)
                .filter(|r| r.grants(op, Some(&collection.name)) && r.allows_purpose(op, purpose))
                .collect();
            if rules.is_empty() {
                continue;
            }
            let fields = collection
                .fields
                .iter()
                .map(|f| {
                    let level = rules
                        .iter()
                        .filter(|r| r.fields.covers(collection, &f.name))
                        .map(|r| r.redaction)
                        .max();
                    let shown = match (op, level) {
                        (_, None) => FieldAccess::None,
                        (Operation::Read | Operation::Export, Some(l)) => FieldAccess::Read(l),
                        (_, Some(_)) => FieldAccess::Allowed,
                    };
                    (f.name.clone(), shown)
                })
                .collect();
            operations.push((op, fields));
        }
        Explanation {
            source: self.source.clone(),
            roles,
            operations,
        }
    }

    /// A one-line summary of each rule of the caller's roles, for `policy
    /// check` without a collection.
    pub fn rules_summary(&self, caller: &Caller) -> Vec<String> {
        let mut out = Vec::new();
        for role in self.roles_of(caller) {
            let Some(rules) = self.roles.get(&role) else {
                out.push(format!(
                    "role {role}: not defined by this policy (grants nothing)"
                ));
                continue;
            };
            for r in rules {
                let ops: Vec<&str> = r.operations.iter().map(|o| o.name()).collect();
                let fields = if r.fields.all {
                    "every field".to_owned()
                } else {
                    let mut parts: Vec<String> = r.fields.names.iter().cloned().collect();
                    parts.extend(
                        r.fields
                            .categories
                            .iter()
                            .map(|c| format!("category {c:?}").to_lowercase()),
                    );
                    parts.join(", ")
                };
                let purposes = r.purposes.as_ref().map_or("-".into(), Names::shown);
                let at = if r.line > 0 {
                    format!(" (line {})", r.line)
                } else {
                    String::new()
                };
                out.push(format!(
                    "role {role}{at}: {} on collections {} · fields {fields} · purposes {purposes} · {}",
                    ops.join(", "),
                    r.collections.shown(),
                    r.redaction
                ));
            }
        }
        out
    }
}

/// What a set of rules lets its holder do, as far as separation of duties
/// goes: key custody, and data access (reading, searching, exporting,
/// writing or deleting records, or administering the vault, which can
/// change the policy). Erasing a subject is neither: custodians may shred.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Duties {
    custody: bool,
    data: bool,
}

impl Duties {
    fn of<'a>(rules: impl IntoIterator<Item = &'a Rule>) -> Duties {
        let mut d = Duties::default();
        for rule in rules {
            for op in &rule.operations {
                match op {
                    Operation::Custody => d.custody = true,
                    Operation::Erase | Operation::Audit => {}
                    Operation::Read
                    | Operation::Write
                    | Operation::Delete
                    | Operation::Search
                    | Operation::Export
                    | Operation::Admin => d.data = true,
                }
            }
        }
        d
    }

    fn mixed(self) -> bool {
        self.custody && self.data
    }
}

/// Fails when `held` (role names; those `roles` does not define grant
/// nothing) gives `who` both custody and data access.
fn check_duties(
    roles: &BTreeMap<String, Vec<Rule>>,
    who: &str,
    held: &[String],
) -> std::result::Result<(), String> {
    if Duties::of(held.iter().filter_map(|r| roles.get(r)).flatten()).mixed() {
        return Err(format!(
            "principal {who}: holds both custody and data or admin roles (separate duties: \
             a credential that holds custody reads, searches, exports and writes no data)"
        ));
    }
    Ok(())
}

/// A budget of the policy file, checked.
fn parse_budget(b: FileBudget, line: usize) -> std::result::Result<Budget, String> {
    let err = |m: String| format!("line {line}: budget: {m}");
    if b.principal.trim().is_empty() || b.principal.trim() != b.principal {
        return Err(err(format!(
            "principal {:?} must be a principal's name or \"*\"",
            b.principal
        )));
    }
    let purpose = b.purpose.unwrap_or_else(|| "*".into());
    if !valid_purpose(&purpose) {
        return Err(err(format!(
            "purpose {purpose:?} can never be stated: purposes are 1 to 128 printable \
             ASCII characters without surrounding spaces"
        )));
    }
    if b.window_seconds == 0 || b.window_seconds > MAX_BUDGET_WINDOW_SECS {
        return Err(err(format!(
            "window_seconds must be 1 to {MAX_BUDGET_WINDOW_SECS} (30 days), not {}",
            b.window_seconds
        )));
    }
    if b.records.is_none() && b.bytes.is_none() {
        return Err(err("a budget needs records, bytes or both".into()));
    }
    if b.records == Some(0) || b.bytes == Some(0) {
        return Err(err(
            "a budget of 0 refuses every read; deny the read in a rule instead".into(),
        ));
    }
    Ok(Budget {
        principal: b.principal,
        purpose,
        window_secs: b.window_seconds,
        records: b.records,
        bytes: b.bytes,
        line,
    })
}

/// Whether a purpose in a policy file could ever be stated by a caller
/// (the `x-vault-purpose` rules), or is `"*"`.
fn valid_purpose(p: &str) -> bool {
    p == "*"
        || (!p.is_empty()
            && p.len() <= 128
            && p.trim() == p
            && p.chars().all(|c| c.is_ascii_graphic() || c == ' '))
}

fn purpose_of(caller: &Caller, op: Operation) -> Result<Option<&str>> {
    let purpose = caller.purpose.as_deref().filter(|p| !p.trim().is_empty());
    if op.is_data() && purpose.is_none() {
        return Err(Error::InvalidArgument(
            "a purpose is required: state it in the x-vault-purpose metadata \
             (vaultctl --purpose, VAULT_PURPOSE)"
                .into(),
        ));
    }
    Ok(purpose)
}

fn denied(caller: &Caller, op: Operation, collection: Option<&str>, purpose_only: bool) -> Error {
    let on = collection.map_or(String::new(), |c| format!(" on collection {}", shown(c)));
    if purpose_only {
        Error::PermissionDenied(format!(
            "principal {} may not {}{on} for purpose {}",
            caller.principal.name,
            op.verb(),
            caller.purpose.as_deref().unwrap_or("-")
        ))
    } else {
        Error::PermissionDenied(format!(
            "principal {} may not {}{on}",
            caller.principal.name,
            op.verb()
        ))
    }
}

/// How a reader sees each field of a collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldView {
    levels: BTreeMap<String, Redaction>,
}

impl FieldView {
    /// The level of one field (redacted when no rule covers it).
    pub fn level(&self, field: &str) -> Redaction {
        self.levels
            .get(field)
            .copied()
            .unwrap_or(Redaction::Redacted)
    }
}

/// What one operation allows on one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldAccess {
    /// Not covered: denied (reads show it redacted).
    None,
    /// Read or export at this level.
    Read(Redaction),
    /// Covered (write, delete, …).
    Allowed,
}

/// The answer of [`Policy::explain`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The policy's source.
    pub source: String,
    /// The caller's roles.
    pub roles: Vec<String>,
    /// Each granted operation, with every field's access.
    pub operations: Vec<(Operation, Vec<(String, FieldAccess)>)>,
}

/// The policy in force, replaceable at run time (reload) without dropping
/// connections: each request takes a snapshot.
#[derive(Debug)]
pub struct PolicyHandle {
    current: std::sync::RwLock<std::sync::Arc<Policy>>,
    file: Option<PathBuf>,
    /// The configuration's credentials, checked against every policy
    /// loaded (separation of duties).
    credentials: Vec<Principal>,
    /// Serialises reloads, so the file read last is the one in force.
    reloading: std::sync::Mutex<()>,
}

impl PolicyHandle {
    /// A handle on `policy`, reloadable from `file` when given.
    pub fn new(policy: Policy, file: Option<PathBuf>) -> Self {
        PolicyHandle {
            current: std::sync::RwLock::new(std::sync::Arc::new(policy)),
            file,
            credentials: Vec::new(),
            reloading: std::sync::Mutex::new(()),
        }
    }

    /// A handle whose policy, and every policy reloaded later, must keep
    /// custody and data apart for each of `credentials` (the configured
    /// tokens and certificate principals); refused otherwise.
    pub fn with_credentials(
        policy: Policy,
        file: Option<PathBuf>,
        credentials: Vec<Principal>,
    ) -> std::result::Result<Self, String> {
        policy.check_credentials(&credentials)?;
        let mut handle = Self::new(policy, file);
        handle.credentials = credentials;
        Ok(handle)
    }

    /// The built-in role policy, not reloadable.
    pub fn builtin() -> Self {
        Self::new(Policy::builtin(), None)
    }

    /// The policy in force.
    pub fn current(&self) -> std::sync::Arc<Policy> {
        std::sync::Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Reads the policy file again. A file that does not parse, or that
    /// would give a configured credential both custody and data access, is
    /// refused (with its error) and the policy in force stays.
    pub fn reload(&self) -> Result<std::sync::Arc<Policy>> {
        self.reload_then(|_, _| ())
    }

    /// [`PolicyHandle::reload`], then `then(result, policy in force)` while
    /// reloads are still held off: what `then` records (an audit event) is
    /// in the order the reloads took effect, and names the policy in force.
    pub fn reload_then(
        &self,
        then: impl FnOnce(&Result<std::sync::Arc<Policy>>, &Policy),
    ) -> Result<std::sync::Arc<Policy>> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.load_and_swap();
        then(&result, &self.current());
        result
    }

    /// Puts the policy of `text` (from `source`) in force, as a reload
    /// would: checked against the configuration's credentials first (a
    /// policy another server of a shared store took up). `then` runs as
    /// in [`PolicyHandle::reload_then`].
    pub fn install_then(
        &self,
        text: &str,
        source: &str,
        then: impl FnOnce(&Result<std::sync::Arc<Policy>>, &Policy),
    ) -> Result<std::sync::Arc<Policy>> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let result = Policy::parse(text, source)
            .and_then(|p| p.check_credentials(&self.credentials).map(|()| p))
            .map_err(|e| Error::InvalidArgument(format!("policy {source}: {e}")))
            .map(|policy| {
                let policy = std::sync::Arc::new(policy);
                *self.current.write().unwrap_or_else(|p| p.into_inner()) =
                    std::sync::Arc::clone(&policy);
                policy
            });
        then(&result, &self.current());
        result
    }

    fn load_and_swap(&self) -> Result<std::sync::Arc<Policy>> {
        let Some(file) = &self.file else {
            return Err(Error::FailedPrecondition(
                "no policy file is configured (the built-in role policy is in force)".into(),
            ));
        };
        let policy = Policy::load(file)?;
        policy
            .check_credentials(&self.credentials)
            .map_err(|e| Error::InvalidArgument(format!("policy {}: {e}", file.display())))?;
        let policy = std::sync::Arc::new(policy);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = std::sync::Arc::clone(&policy);
        Ok(policy)
    }
}

impl FromStr for Operation {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Operation::ALL
            .into_iter()
            .find(|o| o.name() == s)
            .ok_or_else(|| format!("unknown operation {s:?}"))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::engine::{FieldSchema, FieldType, Mask};
    use crate::policy::Principal;

    /// A policy file with principals, two roles, field and category rules
    /// and every redaction level (also the fuzz seed of `policy_file`).
    pub(crate) const POLICY: &str = r#"
[principals]
"billing-service" = ["billing"]
"support-agent" = ["support"]
"both" = ["billing", "support"]

[roles.billing]
description = "charges"

[[roles.billing.rules]]
collections = ["users"]
fields = ["email"]
operations = ["read", "write"]
purposes = ["billing"]
redaction = "plain"

[[roles.support.rules]]
collections = ["users"]
categories = ["contact"]
operations = ["read"]
purposes = ["support-ticket"]
redaction = "masked"

[[roles.support.rules]]
collections = ["users"]
fields = ["name"]
operations = ["read"]
purposes = ["support-ticket"]
redaction = "redacted"
"#;

    fn users() -> Collection {
        let f = |name: &str, category| FieldSchema {
            name: name.into(),
            field_type: FieldType::String,
            category,
            indexed: false,
            mask: Some(Mask {
                keep_first: 1,
                keep_last: 0,
            }),
        };
        Collection {
            name: "users".into(),
            region: "eu".into(),
            description: String::new(),
            retention: None,
            fields: vec![
                f("email", DataCategory::Contact),
                f("phone", DataCategory::Contact),
                f("name", DataCategory::Identity),
                f("country", DataCategory::Location),
            ],
        }
    }

    fn caller(name: &str, purpose: Option<&str>) -> Caller {
        Caller {
            principal: Principal {
                name: name.into(),
                roles: vec![],
            },
            purpose: purpose.map(str::to_owned),
            internal: false,
            request_id: None,
        }
    }

    #[test]
    fn field_levels_take_the_most_open_matching_rule() {
        let p = Policy::parse(POLICY, "test").unwrap();
        let c = users();
        let v = p
            .field_view(
                &caller("support-agent", Some("support-ticket")),
                Operation::Read,
                &c,
            )
            .unwrap();
        assert_eq!(v.level("email"), Redaction::Masked);
        assert_eq!(v.level("phone"), Redaction::Masked);
        assert_eq!(v.level("name"), Redaction::Redacted);
        assert_eq!(v.level("country"), Redaction::Redacted, "not covered");
        // Two roles: billing's plain email wins over support's masked one,
        // but only for billing's purpose.
        let both = p
            .field_view(&caller("both", Some("billing")), Operation::Read, &c)
            .unwrap();
        assert_eq!(both.level("email"), Redaction::Plain);
        assert_eq!(both.level("phone"), Redaction::Redacted);
    }

    #[test]
    fn purposes_and_default_deny() {
        let p = Policy::parse(POLICY, "test").unwrap();
        let c = users();
        assert!(matches!(
            p.field_view(&caller("support-agent", None), Operation::Read, &c),
            Err(Error::InvalidArgument(_))
        ));
        let e = p
            .field_view(
                &caller("support-agent", Some("marketing")),
                Operation::Read,
                &c,
            )
            .unwrap_err();
        assert!(e.to_string().contains("for purpose marketing"), "{e}");
        let e = p
            .authorize(
                &caller("support-agent", Some("support-ticket")),
                Operation::Delete,
                Some("users"),
            )
            .unwrap_err();
        assert!(matches!(e, Error::PermissionDenied(_)), "{e}");
        assert!(p
            .authorize(
                &caller("stranger", Some("x")),
                Operation::Read,
                Some("users")
            )
            .is_err());
        // Writes: every field must be covered.
        let b = caller("billing-service", Some("billing"));
        p.authorize_write(&b, &c, ["email"].into_iter()).unwrap();
        let e = p
            .authorize_write(&b, &c, ["email", "phone"].into_iter())
            .unwrap_err();
        assert!(e.to_string().contains("field phone"), "{e}");
        // Custody needs no purpose, but a rule.
        assert!(p.authorize(&b, Operation::Custody, None).is_err());
    }

    #[test]
    fn builtin_policy_follows_credential_roles() {
        let p = Policy::builtin();
        let mut c = Caller::internal("svc");
        c.internal = false;
        c.principal.roles = vec![Role::Reader];
        let v = p.field_view(&c, Operation::Read, &users()).unwrap();
        assert_eq!(v.level("name"), Redaction::Plain);
        assert!(p.authorize(&c, Operation::Write, Some("users")).is_err());
        c.purpose = None;
        assert!(matches!(
            p.authorize(&c, Operation::Read, Some("users")),
            Err(Error::InvalidArgument(_))
        ));
        c.principal.roles = vec![Role::Custodian];
        p.authorize(&c, Operation::Custody, None).unwrap();
    }

    #[test]
    fn rules_scoped_to_collections_grant_nothing_beyond_them() {
        let text = "[principals]\nm = [\"m\"]\n[[roles.m.rules]]\ncollections = [\"marketing\"]\noperations = [\"erase\", \"admin\"]\npurposes = [\"*\"]\n";
        let p = Policy::parse(text, "t").unwrap();
        let m = caller("m", Some("gdpr"));
        // Erasing a subject and reloading the policy span every collection.
        assert!(p.authorize(&m, Operation::Erase, None).is_err());
        assert!(p.authorize(&m, Operation::Admin, None).is_err());
        p.authorize(&m, Operation::Admin, Some("marketing"))
            .unwrap();
    }

    /// Whatever built the caller, one whose roles hold both custody and
    /// data access is refused every data and custody operation.
    #[test]
    fn a_caller_holding_both_duties_is_refused_everything() {
        let p = Policy::builtin();
        let mut c = caller("both", Some("billing"));
        c.principal.roles = vec![Role::Custodian, Role::Dpo];
        for op in [
            Operation::Read,
            Operation::Export,
            Operation::Custody,
            Operation::Erase,
        ] {
            let e = p.authorize(&c, op, Some("users")).unwrap_err();
            assert!(
                matches!(&e, Error::PermissionDenied(m) if m.contains("separate duties")),
                "{op}: {e}"
            );
        }
        assert!(p.field_view(&c, Operation::Read, &users()).is_err());
        assert!(p.authorize_schema(&c, "users").is_err());
        assert!(p
            .authorize_write(&c, &users(), ["email"].into_iter())
            .is_err());
        // Custody with audit, or with erasure alone, is allowed.
        c.principal.roles = vec![Role::Custodian, Role::Auditor];
        p.authorize(&c, Operation::Custody, None).unwrap();
        p.authorize(&c, Operation::Audit, None).unwrap();
        let file = Policy::parse(
            "[[roles.custodian.rules]]\noperations = [\"custody\", \"erase\"]\npurposes = [\"*\"]\n",
            "t",
        )
        .unwrap();
        c.principal.roles = vec![Role::Custodian];
        file.authorize(&c, Operation::Custody, None).unwrap();
        // Unlisted principals' credential roles resolve against the file.
        let mixed = Policy::parse(
            "[[roles.custodian.rules]]\noperations = [\"custody\"]\n\
             [[roles.auditor.rules]]\noperations = [\"read\"]\npurposes = [\"*\"]\n",
            "t",
        )
        .unwrap();
        c.principal.roles = vec![Role::Custodian, Role::Auditor];
        let e = mixed.check_credentials(&[c.principal.clone()]).unwrap_err();
        assert!(e.contains("separate duties"), "{e}");
        assert!(mixed.authorize(&c, Operation::Custody, None).is_err());
    }

    #[test]
    fn the_vault_itself_may_do_anything_but_no_credential_is_the_vault() {
        let p = Policy::parse(POLICY, "test").unwrap();
        let internal = Caller::internal("seed");
        p.authorize(&internal, Operation::Admin, Some("users"))
            .unwrap();
        p.authorize(&internal, Operation::Custody, None).unwrap();
        let mut outsider = internal.clone();
        outsider.internal = false;
        assert!(p
            .authorize(&outsider, Operation::Admin, Some("users"))
            .is_err());
    }

    #[test]
    fn bad_files_are_refused_with_a_line() {
        let cases = [
            ("[roles.a]\n[[roles.a.rules]]\noperations = [\"fly\"]\npurposes = [\"*\"]\n", "line 3"),
            ("[roles.a]\n[[roles.a.rules]]\noperations = [\"read\"]\n", "line 2"),
            ("[roles.a]\n[[roles.a.rules]]\noperations = []\n", "line 2"),
            ("[principals]\nx = [\"ghost\"]\n", "ghost"),
            ("[roles.a]\nbogus = 1\n", "line 2"),
            ("[roles.a]\n[[roles.a.rules]]\noperations = [\"read\"]\npurposes = [\"*\"]\nredaction = \"partly\"\n", "line 5"),
            ("[roles.a]\n[[roles.a.rules]]\noperations = [\"read\"]\npurposes = [\"*\"]\ncategories = [\"gossip\"]\n", "line 5"),
            ("not toml at all [", "line 1"),
            ("[roles.a]\n[[roles.a.rules]]\noperations = [\"read\"]\npurposes = [\"*\"]\nfields = []\n", "fields is empty"),
            ("[roles.a]\n[[roles.a.rules]]\noperations = [\"read\"]\npurposes = [\" billing\"]\n", "can never be stated"),
            ("[roles.a]\n[[roles.a.rules]]\noperations = [\"custody\", \"read\"]\npurposes = [\"*\"]\n", "separate duties"),
            ("[principals]\np = [\"a\", \"b\"]\n[[roles.a.rules]]\noperations = [\"custody\"]\n[[roles.b.rules]]\noperations = [\"write\"]\npurposes = [\"*\"]\n", "separate duties"),
        ];
        for (text, want) in cases {
            let e = Policy::parse(text, "t").unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn explain_shows_each_field() {
        let p = Policy::parse(POLICY, "test").unwrap();
        let e = p.explain(&caller("support-agent", Some("support-ticket")), &users());
        assert_eq!(e.roles, vec!["support".to_owned()]);
        assert_eq!(e.operations.len(), 1);
        let (op, fields) = &e.operations[0];
        assert_eq!(*op, Operation::Read);
        assert_eq!(
            fields[0],
            ("email".into(), FieldAccess::Read(Redaction::Masked))
        );
        assert_eq!(fields[3], ("country".into(), FieldAccess::None));
        assert!(!p.rules_summary(&caller("support-agent", None)).is_empty());
    }

    #[test]
    fn reload_keeps_the_old_policy_on_a_broken_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("policy.toml");
        std::fs::write(&file, POLICY).unwrap();
        let h = PolicyHandle::new(Policy::load(&file).unwrap(), Some(file.clone()));
        std::fs::write(&file, "[roles.x]\nnope = 1\n").unwrap();
        let e = h.reload().unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        assert!(h
            .current()
            .authorize(
                &caller("support-agent", Some("support-ticket")),
                Operation::Read,
                Some("users")
            )
            .is_ok());
        std::fs::write(&file, "").unwrap();
        h.reload().unwrap();
        assert!(h
            .current()
            .authorize(
                &caller("support-agent", Some("support-ticket")),
                Operation::Read,
                Some("users")
            )
            .is_err());
    }
}
