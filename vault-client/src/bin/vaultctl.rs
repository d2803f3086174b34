//! `vaultctl`: the command line of the regional data vault.
//!
//! ```text
//! vaultctl [--addr URL] --token TOKEN [--purpose P] [--timeout SECS] [--json]
//!          [--ca FILE] [--cert FILE --key FILE] COMMAND
//!
//!   collection create NAME --field SPEC... [--region R] [--description D]
//!                     [--ttl SECONDS [--grace SECONDS]]
//!   collection create NAME --schema FILE.json [--region R] [--description D]
//!                     [--ttl SECONDS [--grace SECONDS]]
//!   collection list
//!   collection show NAME
//!   put COLLECTION ID --subject S --data JSON|-|@FILE
//!   get COLLECTION ID [--fields a,b,...]
//!   find COLLECTION FIELD VALUE [--fields a,b] [--limit N]
//!   delete COLLECTION ID
//!
//!   operator init --shares N --threshold M [--share-dir DIR]
//!                 [--recipient AGE1... | --recipients-file FILE]
//!   operator unseal [--share-file FILE] [--identity FILE]
//!                                              (else one line from stdin)
//!   operator rekey --shares N --threshold M [--share-file FILE] [--identity FILE]
//!                  [--recipient AGE1... | --recipients-file FILE] [--share-dir DIR]
//!   operator rekey --cancel
//!   operator seal
//!   operator status
//!   operator rotate root
//!   operator rotate index
//!   operator rotate subject SUBJECT
//!   operator rewrap-status [--wait]
//!   operator reindex-status [--wait]
//!   operator keys
//!   operator retire VERSION
//!   operator destroy VERSION
//!   subject erase SUBJECT
//!   subject export SUBJECT --out FILE [--signature SIG]
//!   subject verify-export FILE --public-key FILE [--signature SIG]
//!                                             (offline: no vault, no token)
//!
//!   policy check --principal P [--purpose X] [--collection C]
//!   policy reload
//!
//!   audit public-key
//!   audit export DIR
//!   audit proof INDEX [--size N] [--public-key FILE]
//!   audit tail [--from N] [--follow]
//!   audit verify DIR --public-key FILE [--witness-key FILE …] [--witnesses-needed K]
//!                                             (offline: no vault, no token)
//!   audit witness-key NAME --out FILE          (offline: a witness's key)
//!   audit witness --signing-key FILE --state FILE --public-key FILE [--once] [--interval S]
//! ```
//!
//! A field SPEC is `name:type:category[:indexed][:mask=F,L]`. The global
//! options may also come after the command and default to `VAULT_ADDR`,
//! `VAULT_TOKEN`, `VAULT_PURPOSE`, `VAULT_TIMEOUT`, `VAULT_CACERT`,
//! `VAULT_CLIENT_CERT` and `VAULT_CLIENT_KEY`. Over TLS (`https://`), `--ca`
//! names the CA of the vault's certificate (else the system's roots) and
//! `--cert`/`--key` present a client certificate (mutual TLS), which makes
//! the token optional. `policy check` checks the purpose of its own
//! command line only (`--purpose`), never `VAULT_PURPOSE`. `get` shows a
//! field the caller's policy withholds as `name: (redacted)` and a masked
//! value as `value (masked)`. Errors are one line
//! `error: <message>` on stderr and exit 1 (2 for a usage error); with
//! `--json` stdout also gets `{"error":{"kind":"...","message":"..."}}`.
//! The token is never printed, and unseal shares are never taken as
//! arguments. `audit verify` prints its verdict on stdout, one line
//! (`valid: …`, or `invalid: event I: KIND: …` and exit 1; with `--json`,
//! `{"valid", "events", "checkpoints", "fault"}`). `audit export` writes
//! what `audit verify` reads (`events.jsonl`, `checkpoints/NNNNNN.note`)
//! into a new or empty directory. `audit proof` prints `event I is
//! included in the tree of size S (root …)`, or `event I is not shown to be
//! included: …` and exit 1; without `--public-key` it checks the
//! checkpoint with the key the vault gives, and says so. `audit tail`
//! prints events as JSON lines (control characters escaped).

#![forbid(unsafe_code)]

#[path = "vaultctl/audit.rs"]
mod audit;
#[path = "vaultctl/custody.rs"]
mod custody;
#[path = "vaultctl/export.rs"]
mod export;
#[path = "vaultctl/policy.rs"]
mod policy;
#[path = "vaultctl/witness.rs"]
mod witness;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{
    ArgGroup, ArgMatches, Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand,
};
use serde_json::{json, Value as Json};
use vault_client::json::{fields_from_json, record_to_json};
use vault_client::{Collection, Error, FieldSchema, Record, VaultClient};

use crate::audit::AuditCommand;
use crate::custody::{OperatorCommand, SubjectCommand};
use crate::policy::PolicyCommand;

/// Talks to a regional data vault.
#[derive(Debug, Parser)]
#[command(name = "vaultctl", version)]
struct Cli {
    /// The vault's address (`http://host:port`; a bare `host:port` works too).
    #[arg(
        long,
        env = "VAULT_ADDR",
        default_value = "http://127.0.0.1:8200",
        global = true
    )]
    addr: String,

    /// The bearer token (prefer the VAULT_TOKEN variable: arguments are visible
    /// to other users of the machine). Required, unless --cert and --key present
    /// a client certificate.
    #[arg(long, env = "VAULT_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,

    /// Why you access the data (sent as x-vault-purpose), e.g. support-ticket.
    /// For `policy check`: the purpose to check (from the command line only).
    #[arg(long, env = "VAULT_PURPOSE", global = true)]
    purpose: Option<String>,

    /// Whether --purpose was on the command line rather than VAULT_PURPOSE.
    #[arg(skip)]
    purpose_on_command_line: bool,

    /// The deadline of each call, in seconds.
    #[arg(
        long,
        env = "VAULT_TIMEOUT",
        value_name = "SECS",
        default_value = "10",
        value_parser = parse_timeout,
        global = true
    )]
    timeout: Duration,

    /// Print machine-readable JSON on stdout, errors included.
    #[arg(long, global = true)]
    json: bool,

    /// The CA certificate (PEM) that signed the vault's TLS certificate
    /// (default: the system's trusted roots). Needs an https:// address; a
    /// bare host:port gets https://.
    #[arg(long, env = "VAULT_CACERT", value_name = "FILE", global = true)]
    ca: Option<PathBuf>,

    /// A client certificate (PEM) for mutual TLS, with --key; its principal
    /// is the caller's, and a token is then optional.
    #[arg(long, env = "VAULT_CLIENT_CERT", value_name = "FILE", global = true)]
    cert: Option<PathBuf>,

    /// The private key (PEM) of --cert.
    #[arg(long, env = "VAULT_CLIENT_KEY", value_name = "FILE", global = true)]
    key: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, list and show collections.
    #[command(subcommand)]
    Collection(CollectionCommand),

    /// Create or replace a record.
    Put {
        /// The collection.
        collection: String,
        /// The record id.
        id: String,
        /// The data subject (person) the record is about.
        #[arg(long)]
        subject: String,
        /// The fields as a JSON object of name to value; `-` reads stdin and
        /// `@FILE` reads a file. Bytes are base64, timestamps RFC 3339 or Unix
        /// seconds.
        #[arg(long, value_name = "JSON")]
        data: String,
    },

    /// Read a record.
    Get {
        /// The collection.
        collection: String,
        /// The record id.
        id: String,
        /// Only these fields (comma-separated or repeated); all if absent.
        #[arg(long, value_delimiter = ',', value_name = "FIELDS")]
        fields: Vec<String>,
    },

    /// Find the records whose indexed field equals a value (a string is
    /// compared trimmed and lower-cased), through the field's blind index
    /// (the `search` operation). Prints each record as `get` does, then a
    /// count (with --json: {"records": [...]}).
    Find {
        /// The collection.
        collection: String,
        /// An indexed field of the collection.
        field: String,
        /// The value, as text: a string as it is, an integer, a timestamp
        /// (RFC 3339 or Unix seconds), or base64 bytes.
        value: String,
        /// Only these fields (comma-separated or repeated); all if absent.
        #[arg(long, value_delimiter = ',', value_name = "FIELDS")]
        fields: Vec<String>,
        /// At most this many records (1 to 500).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },

    /// Delete a record (deleting an absent record is not an error).
    Delete {
        /// The collection.
        collection: String,
        /// The record id.
        id: String,
    },

    /// Key custody: init, unseal, seal, status, key rotation and retirement.
    #[command(subcommand)]
    Operator(OperatorCommand),

    /// Data-subject requests: erasure.
    #[command(subcommand)]
    Subject(SubjectCommand),

    /// The access policy: check what it grants a principal, reload it.
    #[command(subcommand)]
    Policy(PolicyCommand),

    /// The audit log: its verifier key, export, inclusion proofs, the latest
    /// events; verify an export offline.
    #[command(subcommand)]
    Audit(AuditCommand),

    /// The monitor's alerts (auditor role).
    #[command(subcommand)]
    Alerts(AlertsCommand),

    /// Honey records: decoys whose reading raises a critical alert.
    #[command(subcommand)]
    Honey(HoneyCommand),
}

#[derive(Debug, Subcommand)]
enum HoneyCommand {
    /// Plant decoy records in a collection (admin role); prints their ids.
    Create {
        /// The collection.
        collection: String,
        /// How many (1 to 100).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
        count: u32,
    },
}

#[derive(Debug, Subcommand)]
enum AlertsCommand {
    /// Print each alert as the vault raises it (budgets, lockouts, …), one
    /// line each (one JSON object with --json), until the vault seals or
    /// shuts down, or Ctrl-C.
    Watch,
}

#[derive(Debug, Subcommand)]
enum CollectionCommand {
    /// Create a collection from --field specs or a JSON schema file.
    Create(CreateArgs),
    /// List every collection.
    List,
    /// Show one collection's schema.
    Show {
        /// The collection.
        name: String,
    },
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("schema_source").required(true).args(["field", "schema"])))]
struct CreateArgs {
    /// The collection name.
    name: String,

    // Help text rather than a doc comment: rustdoc would read the brackets
    // as links.
    #[arg(
        long,
        value_name = "SPEC",
        help = "A field, as name:type:category[:indexed][:mask=F,L]; repeat for each \
                field. Types: string, int64, double, bool, bytes, timestamp. \
                Categories: identity, contact, financial, location, special, \
                behavioural, other"
    )]
    field: Vec<FieldSchema>,

    /// A JSON file of the collection:
    /// {"description": "...", "fields": [{"name": "email", "type": "string",
    /// "category": "contact", "indexed": true, "mask": {"keep_first": 1,
    /// "keep_last": 4}}]}.
    #[arg(long, value_name = "FILE", conflicts_with = "field")]
    schema: Option<PathBuf>,

    /// The region (default: the vault's own).
    #[arg(long)]
    region: Option<String>,

    /// A description for people.
    #[arg(long)]
    description: Option<String>,

    /// Records expire this many seconds after their last write: unreadable
    /// from then on, purged after the grace period.
    #[arg(long, value_name = "SECONDS")]
    ttl: Option<u64>,

    /// Seconds an expired record waits, unreadable, before it is purged
    /// (needs --ttl; default 0).
    #[arg(long, value_name = "SECONDS", requires = "ttl")]
    grace: Option<u64>,
}

impl Cli {
    /// Parses the command line (`args` starts with the program name).
    fn parse_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        Self::from_matches(&Self::command().try_get_matches_from(args)?)
    }

    /// The options of parsed `matches`, noting where --purpose came from.
    fn from_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut cli = Self::from_arg_matches(matches)?;
        cli.purpose_on_command_line =
            matches.value_source("purpose") == Some(ValueSource::CommandLine);
        Ok(cli)
    }
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .trim()
        .parse()
        .map_err(|_| "expected a number of seconds, e.g. 10 or 2.5".to_owned())?;
    if seconds.is_nan() || seconds <= 0.0 {
        return Err("the timeout must be more than 0 seconds".into());
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| "the timeout is too large".to_owned())
}

/// `done` of `total` in percent (100 when there is nothing to do).
fn percent(done: u64, total: u64) -> u64 {
    if total == 0 {
        return 100;
    }
    (u128::from(done.min(total)) * 100 / u128::from(total)) as u64
}

/// `[####....]`, `width` characters filled to `percent`.
fn bar(percent: u64, width: u64) -> String {
    let filled = percent.min(100) * width / 100;
    let bar: String = (0..width)
        .map(|i| if i < filled { '#' } else { '.' })
        .collect();
    format!("[{bar}]")
}

/// A failure of one command.
#[derive(Debug)]
enum CliError {
    /// The vault or the connection failed.
    Vault(Error),
    /// The command's input was bad (exit 1).
    Input(String),
    /// A file or stdin could not be read.
    Io(String),
    /// The command line was bad (exit 2).
    Usage(String),
    /// The vault's erasure receipt does not verify (exit 1).
    Unverified(String),
}

impl CliError {
    fn kind(&self) -> &'static str {
        match self {
            CliError::Vault(e) => e.kind(),
            CliError::Input(_) => "invalid_input",
            CliError::Io(_) => "io",
            CliError::Usage(_) => "usage",
            CliError::Unverified(_) => "invalid_receipt",
        }
    }

    fn message(&self) -> String {
        match self {
            CliError::Vault(e) if e.is_sealed() => {
                "the vault is sealed: unseal it with `vaultctl operator unseal` (custodians \
                 each give one share until the threshold is reached)"
                    .into()
            }
            CliError::Vault(e) => e.to_string(),
            CliError::Input(m) | CliError::Io(m) | CliError::Usage(m) | CliError::Unverified(m) => {
                m.clone()
            }
        }
    }

    fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Usage(_) => ExitCode::from(2),
            _ => ExitCode::FAILURE,
        }
    }
}

impl From<Error> for CliError {
    fn from(error: Error) -> Self {
        CliError::Vault(error)
    }
}

/// The text on one line: line breaks and other control characters become
/// spaces.
fn one_line(text: &str) -> String {
    let line: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    line
}

/// Escapes control characters, so stored data cannot move the terminal's
/// cursor or break the line-per-field layout.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn report(error: &CliError, json_output: bool) -> ExitCode {
    let message = one_line(&error.message());
    if json_output {
        let body = json!({"error": {"kind": error.kind(), "message": message}});
        emit(&body.to_string());
    }
    eprintln!("error: {message}");
    error.exit_code()
}

/// Whether `--json` is among the options (before a `--`), for reporting
/// usage errors that keep the command line from being parsed.
fn wants_json(args: &[OsString]) -> bool {
    args.iter()
        .skip(1)
        .take_while(|a| *a != "--")
        .any(|a| a == "--json")
}

/// The gist of a clap error on one line: its text up to the usage hint,
/// without the `error: ` prefix.
fn usage_message(rendered: &str) -> String {
    let gist = rendered
        .split("\n\n")
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ");
    let words: Vec<&str> = gist.split_whitespace().collect();
    words.join(" ")
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let cli = match Cli::parse_args(&args) {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line, like every other vaultctl error; --help has the rest.
            let message = usage_message(&e.render().to_string());
            if wants_json(&args) {
                let body = json!({"error": {"kind": "usage", "message": message}});
                emit(&body.to_string());
            }
            eprintln!("error: {message} (see vaultctl --help)");
            return ExitCode::from(2);
        }
    };

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return report(&CliError::Io(format!("cannot start: {e}")), cli.json),
    };
    match runtime.block_on(run(&cli)) {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        // A verification that ran and found a fault: its verdict is printed.
        Ok(Outcome::Failed) => ExitCode::FAILURE,
        Err(error) => report(&error, cli.json),
    }
}

async fn connect(cli: &Cli) -> Result<VaultClient, CliError> {
    let mut builder = VaultClient::builder(cli.addr.as_str()).timeout(cli.timeout);
    match (&cli.cert, &cli.key) {
        (Some(cert), Some(key)) => builder = builder.client_identity_files(cert, key),
        (None, None) => {}
        (Some(_), None) => {
            return Err(CliError::Usage(
                "--cert needs --key (or VAULT_CLIENT_KEY): the client certificate's private key"
                    .into(),
            ))
        }
        (None, Some(_)) => {
            return Err(CliError::Usage(
                "--key needs --cert (or VAULT_CLIENT_CERT): the client certificate".into(),
            ))
        }
    }
    match cli.token.as_deref() {
        Some(token) => builder = builder.token(token),
        None if cli.cert.is_some() => {}
        None => {
            return Err(CliError::Usage(
                "no token: set VAULT_TOKEN or pass --token".into(),
            ))
        }
    }
    if let Some(ca) = &cli.ca {
        builder = builder.ca_certificate_file(ca);
    }
    if let Some(purpose) = &cli.purpose {
        builder = builder.purpose(purpose.as_str());
    }
    Ok(builder.connect().await?)
}

/// Writes `text` to stdout ending with exactly one line break, whatever
/// it ends with (every command's output, `--json` or not, goes through
/// here), and flushes it; a closed pipe is not an error worth a message.
fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out
        .write_all(one_newline(text).as_bytes())
        .and_then(|()| out.flush());
}

/// `text` with its trailing line breaks replaced by exactly one.
fn one_newline(text: &str) -> String {
    format!("{}\n", text.trim_end_matches(['\n', '\r']))
}

/// How a command that ran to the end went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Success (exit 0).
    Done,
    /// It printed a negative verdict (exit 1).
    Failed,
}

async fn run(cli: &Cli) -> Result<Outcome, CliError> {
    match &cli.command {
        Command::Collection(CollectionCommand::Create(args)) => {
            let collection = collection_to_create(args)?;
            let vault = connect(cli).await?;
            let created = vault.create_collection(&collection).await?;
            if cli.json {
                emit(&collection_json(&created));
            } else {
                emit(&format!(
                    "created collection {} (region {}, {} field{})",
                    created.name,
                    display_region(&created.region),
                    created.fields.len(),
                    if created.fields.len() == 1 { "" } else { "s" }
                ));
            }
        }
        Command::Collection(CollectionCommand::List) => {
            let vault = connect(cli).await?;
            let collections = vault.collections().await?;
            if cli.json {
                emit(&json!({ "collections": collections }).to_string());
            } else {
                emit(&collections_table(&collections));
            }
        }
        Command::Collection(CollectionCommand::Show { name }) => {
            let vault = connect(cli).await?;
            let collection = vault.collection(name).await?;
            if cli.json {
                emit(&collection_json(&collection));
            } else {
                emit(&collection_text(&collection));
            }
        }
        Command::Put {
            collection,
            id,
            subject,
            data,
        } => {
            let data = read_data(data)?;
            let data: Json = serde_json::from_str(&data)
                .map_err(|e| CliError::Input(format!("--data is not valid JSON: {e}")))?;
            let vault = connect(cli).await?;
            let schema = vault.collection(collection).await?;
            let fields =
                fields_from_json(&schema, &data).map_err(|e| CliError::Input(e.to_string()))?;
            let mut record = Record::new(collection, id, subject);
            record.fields = fields;
            vault.put(&record).await?;
            if cli.json {
                emit(&json!({"collection": collection, "id": id, "stored": true}).to_string());
            } else {
                emit(&format!(
                    "stored {}/{}",
                    printable(collection),
                    printable(id)
                ));
            }
        }
        Command::Find {
            collection,
            field,
            value,
            fields,
            limit,
        } => {
            let vault = connect(cli).await?;
            let schema = vault.collection(collection).await?;
            let field_type = schema
                .fields
                .iter()
                .find(|f| &f.name == field)
                .map(|f| f.field_type)
                .ok_or_else(|| {
                    CliError::Input(format!(
                        "collection {} has no field {}",
                        printable(collection),
                        printable(field)
                    ))
                })?;
            // An integer stays a number (int64 and Unix seconds); anything
            // else is a string of the field's type.
            let json = match serde_json::from_str::<serde_json::Value>(value) {
                Ok(n @ serde_json::Value::Number(_)) => n,
                _ => serde_json::Value::String(value.clone()),
            };
            let value = vault_client::json::value_from_json(field, field_type, &json)
                .map_err(|e| CliError::Input(e.to_string()))?;
            let fields: Vec<&str> = fields
                .iter()
                .map(|f| f.trim())
                .filter(|f| !f.is_empty())
                .collect();
            let found = vault
                .find(collection, field, value, &fields, *limit)
                .await?;
            if cli.json {
                let records: Vec<serde_json::Value> = found.iter().map(record_to_json).collect();
                emit(&json!({ "records": records }).to_string());
            } else {
                let mut text: Vec<String> = found.iter().map(record_text).collect();
                text.push(format!(
                    "{} found",
                    if found.len() == 1 {
                        "1 record".to_owned()
                    } else {
                        format!("{} records", found.len())
                    }
                ));
                emit(&text.join("\n"));
            }
        }
        Command::Get {
            collection,
            id,
            fields,
        } => {
            let vault = connect(cli).await?;
            let fields: Vec<&str> = fields
                .iter()
                .map(|f| f.trim())
                .filter(|f| !f.is_empty())
                .collect();
            let record = vault.get_fields(collection, id, &fields).await?;
            if cli.json {
                emit(&record_to_json(&record).to_string());
            } else {
                emit(&record_text(&record));
            }
        }
        Command::Delete { collection, id } => {
            let vault = connect(cli).await?;
            let deleted = vault.delete(collection, id).await?;
            if cli.json {
                emit(&json!({ "deleted": deleted }).to_string());
            } else if deleted {
                emit(&format!(
                    "deleted {}/{}",
                    printable(collection),
                    printable(id)
                ));
            } else {
                emit(&format!(
                    "not found: {}/{}",
                    printable(collection),
                    printable(id)
                ));
            }
        }
        Command::Operator(command) => custody::run_operator(cli, command).await?,
        Command::Subject(command) => custody::run_subject(cli, command).await?,
        Command::Policy(command) => policy::run_policy(cli, command).await?,
        Command::Audit(command) => {
            if !audit::run_audit(cli, command).await? {
                return Ok(Outcome::Failed);
            }
        }
        Command::Honey(HoneyCommand::Create { collection, count }) => {
            let ids = connect(cli).await?.create_honey(collection, *count).await?;
            if cli.json {
                emit(&json!({"collection": collection, "record_ids": ids}).to_string());
            } else {
                let ids: Vec<String> = ids.iter().map(|i| printable(i)).collect();
                emit(&ids.join("\n"));
            }
        }
        Command::Alerts(AlertsCommand::Watch) => {
            let mut alerts = connect(cli).await?.watch_alerts().await?;
            // On stderr, so stdout holds alerts only: from here on, every
            // alert the vault raises is printed.
            eprintln!("watching alerts; Ctrl-C to stop");
            while let Some(alert) = alerts.next().await? {
                emit(&alert_line(&alert, cli.json));
            }
        }
    }
    Ok(Outcome::Done)
}

/// One alert as `alerts watch` prints it: a line of text, or a JSON object.
fn alert_line(alert: &vault_client::Alert, json_output: bool) -> String {
    if json_output {
        return serde_json::to_string(alert).unwrap_or_default();
    }
    let time = vault_client::Timestamp {
        seconds: i64::try_from(alert.time_ms / 1000).unwrap_or(i64::MAX),
        nanos: i32::try_from((alert.time_ms % 1000) * 1_000_000).unwrap_or(0),
    }
    .to_rfc3339();
    let mut line = format!(
        "{time} {} {} principal={}",
        alert.severity.to_uppercase(),
        alert.kind,
        alert.principal
    );
    if let Some(p) = &alert.purpose {
        line.push_str(&format!(" purpose={p}"));
    }
    line.push_str(&format!(": {}", alert.message));
    if alert.missed > 0 {
        line.push_str(&format!(
            " ({} alerts missed before this one)",
            alert.missed
        ));
    }
    // Everything here came from the vault: no control character reaches
    // the terminal.
    printable(&line)
}

/// The collection that `collection create` asks for.
fn collection_to_create(args: &CreateArgs) -> Result<Collection, CliError> {
    let mut collection = match &args.schema {
        Some(path) => {
            let text = read_file(path)?;
            let from_file: Collection = serde_json::from_str(&text)
                .map_err(|e| CliError::Input(format!("schema file {}: {e}", path.display())))?;
            if !from_file.name.is_empty() && from_file.name != args.name {
                return Err(CliError::Input(format!(
                    "schema file {} is for collection `{}`, not `{}`",
                    path.display(),
                    from_file.name,
                    args.name
                )));
            }
            from_file
        }
        None => Collection {
            fields: args.field.clone(),
            ..Collection::default()
        },
    };
    collection.name = args.name.clone();
    if let Some(region) = &args.region {
        collection.region = region.clone();
    }
    if let Some(description) = &args.description {
        collection.description = description.clone();
    }
    if let Some(ttl) = args.ttl {
        collection.retention = Some(vault_client::Retention {
            ttl_seconds: ttl,
            grace_seconds: args.grace.unwrap_or(0),
        });
    }
    let mut seen = BTreeSet::new();
    for field in &collection.fields {
        if !seen.insert(field.name.as_str()) {
            return Err(CliError::Input(format!(
                "field `{}` is defined twice",
                field.name
            )));
        }
    }
    Ok(collection)
}

/// The `--data` argument's JSON text: itself, stdin for `-`, a file for `@FILE`.
fn read_data(data: &str) -> Result<String, CliError> {
    if data == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CliError::Io(format!("cannot read the data from stdin: {e}")))?;
        Ok(text)
    } else if let Some(path) = data.strip_prefix('@') {
        read_file(Path::new(path))
    } else {
        Ok(data.to_owned())
    }
}

fn read_file(path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path)
        .map_err(|e| CliError::Io(format!("cannot read {}: {e}", path.display())))
}

fn display_region(region: &str) -> &str {
    if region.is_empty() {
        "-"
    } else {
        region
    }
}

fn collection_json(collection: &Collection) -> String {
    serde_json::to_value(collection)
        .map(|v| v.to_string())
        .unwrap_or_else(|e| {
            json!({"error": {"kind": "protocol", "message": e.to_string()}}).to_string()
        })
}

fn collection_text(collection: &Collection) -> String {
    let mut lines = vec![
        format!("collection: {}", printable(&collection.name)),
        format!("region: {}", printable(display_region(&collection.region))),
    ];
    if !collection.description.is_empty() {
        lines.push(format!(
            "description: {}",
            one_line(&collection.description)
        ));
    }
    if let Some(r) = &collection.retention {
        lines.push(format!(
            "retention: records expire {} s after their last write, purged {} s later",
            r.ttl_seconds, r.grace_seconds
        ));
    }
    lines.push(format!("fields ({}):", collection.fields.len()));
    lines.extend(collection.fields.iter().map(|f| format!("  {f}")));
    lines.join("\n")
}

fn collections_table(collections: &[Collection]) -> String {
    if collections.is_empty() {
        return "no collections".into();
    }
    let rows: Vec<[String; 4]> = collections
        .iter()
        .map(|c| {
            [
                printable(&c.name),
                printable(display_region(&c.region)),
                c.fields.len().to_string(),
                one_line(&c.description),
            ]
        })
        .collect();
    let header = ["NAME", "REGION", "FIELDS", "DESCRIPTION"].map(str::to_owned);
    let widths: Vec<usize> = (0..3)
        .map(|i| {
            rows.iter()
                .chain(std::iter::once(&header))
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    std::iter::once(&header)
        .chain(rows.iter())
        .map(|r| {
            format!(
                "{:w0$}  {:w1$}  {:>w2$}  {}",
                r[0],
                r[1],
                r[2],
                r[3],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2]
            )
            .trim_end()
            .to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A record for people: a header line, then one `name: value` line per
/// field in name order; a field the caller's policy withholds shows as
/// `name: (redacted)`, a masked value as `name: value (masked)`.
fn record_text(record: &Record) -> String {
    let mut lines = vec![format!(
        "{}/{} (subject {})",
        printable(&record.collection),
        printable(&record.id),
        printable(&record.subject_id)
    )];
    let names: BTreeSet<&str> = record
        .fields
        .keys()
        .chain(&record.redacted)
        .map(String::as_str)
        .collect();
    lines.extend(names.into_iter().map(|name| {
        let shown = match record.get(name) {
            Some(value) if record.is_masked(name) => {
                format!("{} (masked)", printable(&value.to_string()))
            }
            Some(value) => printable(&value.to_string()),
            None => "(redacted)".to_owned(),
        };
        format!("{}: {shown}", printable(name))
    }));
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;
    use vault_client::{DataCategory, FieldType, Timestamp};

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::parse_args(std::iter::once("vaultctl").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn create_with_field_specs() {
        let cli = parse(&[
            "--token",
            "t",
            "collection",
            "create",
            "users",
            "--field",
            "email:string:contact:indexed:mask=1,4",
            "--field",
            "birth_date:timestamp:identity",
            "--region",
            "eu",
        ])
        .unwrap();
        let Command::Collection(CollectionCommand::Create(args)) = &cli.command else {
            panic!("{cli:?}");
        };
        let collection = collection_to_create(args).unwrap();
        assert_eq!(
            collection,
            Collection::new("users")
                .region("eu")
                .field(
                    FieldSchema::new("email", FieldType::String, DataCategory::Contact)
                        .indexed()
                        .masked(1, 4)
                )
                .field(FieldSchema::new(
                    "birth_date",
                    FieldType::Timestamp,
                    DataCategory::Identity
                ))
        );
    }

    #[test]
    fn bad_field_specs_are_usage_errors() {
        for spec in [
            "email",
            "email:strng:contact",
            "email:string:contct",
            "email:string:contact:mask=1",
            "email:string:contact:uniq",
            "age:int64:identity:mask=1,1",
        ] {
            let err = parse(&["collection", "create", "users", "--field", spec]).unwrap_err();
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{spec}"
            );
            assert_eq!(err.exit_code(), 2);
        }
    }

    #[test]
    fn create_needs_exactly_one_schema_source() {
        assert!(parse(&["collection", "create", "users"]).is_err());
        assert!(parse(&[
            "collection",
            "create",
            "users",
            "--field",
            "a:string:other",
            "--schema",
            "x.json"
        ])
        .is_err());
    }

    #[test]
    fn duplicate_fields_are_refused() {
        let cli = parse(&[
            "collection",
            "create",
            "users",
            "--field",
            "a:string:other",
            "--field",
            "a:int64:other",
        ])
        .unwrap();
        let Command::Collection(CollectionCommand::Create(args)) = &cli.command else {
            panic!("{cli:?}");
        };
        assert!(
            matches!(collection_to_create(args), Err(CliError::Input(m)) if m.contains("twice"))
        );
    }

    #[test]
    fn global_options_anywhere() {
        let cli = parse(&[
            "get",
            "users",
            "u1",
            "--fields",
            "email,name",
            "--json",
            "--timeout",
            "2.5",
            "--addr",
            "10.0.0.1:8200",
        ])
        .unwrap();
        assert!(cli.json);
        assert_eq!(cli.timeout, Duration::from_millis(2500));
        assert_eq!(cli.addr, "10.0.0.1:8200");
        let Command::Get { fields, .. } = &cli.command else {
            panic!("{cli:?}");
        };
        assert_eq!(fields, &["email", "name"]);
        for bad in ["0", "-1", "soon", "NaN"] {
            assert!(
                parse(&["--timeout", bad, "collection", "list"]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn usage_errors_fit_one_line() {
        let err = parse(&["--token", "t", "get", "users"]).unwrap_err();
        assert_eq!(
            usage_message(&err.render().to_string()),
            "the following required arguments were not provided: <ID>"
        );
        let err = parse(&["collection", "create", "x", "--field", "a:text:other"]).unwrap_err();
        let message = usage_message(&err.render().to_string());
        assert!(
            message.starts_with("invalid value 'a:text:other' for '--field <SPEC>'"),
            "{message}"
        );
        assert!(!message.contains('\n'));
    }

    fn connect_error(args: &[&str]) -> String {
        let cli = parse(args).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        match runtime.block_on(connect(&cli)) {
            Err(e) => format!("{}: {}", e.kind(), e.message()),
            Ok(_) => panic!("connected with {args:?}"),
        }
    }

    #[test]
    fn tls_flags_are_checked_before_connecting() {
        let cli = parse(&[
            "--ca",
            "ca.pem",
            "--cert",
            "c.pem",
            "--key",
            "k.pem",
            "collection",
            "list",
        ])
        .unwrap();
        assert_eq!(cli.ca.as_deref(), Some(Path::new("ca.pem")));
        assert_eq!(cli.cert.as_deref(), Some(Path::new("c.pem")));
        assert_eq!(cli.key.as_deref(), Some(Path::new("k.pem")));

        let m = connect_error(&["--cert", "c.pem", "collection", "list"]);
        assert!(m.starts_with("usage: --cert needs --key"), "{m}");
        let m = connect_error(&["--key", "k.pem", "--token", "t", "collection", "list"]);
        assert!(m.starts_with("usage: --key needs --cert"), "{m}");
        let m = connect_error(&["collection", "list"]);
        assert!(m.starts_with("usage: no token"), "{m}");
        // Without a token, a client certificate will do; its files are read.
        let m = connect_error(&[
            "--addr",
            "127.0.0.1:1",
            "--cert",
            "/nonexistent/c.pem",
            "--key",
            "/nonexistent/k.pem",
            "collection",
            "list",
        ]);
        assert!(
            m.starts_with("invalid_input: invalid input: cannot read the client certificate file /nonexistent/c.pem"),
            "{m}"
        );
        let m = connect_error(&[
            "--token",
            "t",
            "--ca",
            "/nonexistent/ca.pem",
            "collection",
            "list",
        ]);
        assert!(m.contains("needs an https:// address"), "{m}");
    }

    #[test]
    fn json_flag_is_found_before_parsing() {
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(wants_json(&args(&["vaultctl", "get", "--json"])));
        assert!(!wants_json(&args(&["vaultctl", "get", "--", "--json"])));
        assert!(!wants_json(&args(&["vaultctl", "get"])));
    }

    #[test]
    fn the_token_is_not_in_the_help() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("VAULT_TOKEN"));
        // hide_env_values keeps a set VAULT_TOKEN out of --help.
        let token_arg = Cli::command()
            .get_arguments()
            .find(|a| a.get_id() == "token")
            .map(|a| a.is_hide_env_values_set());
        assert_eq!(token_arg, Some(true));
    }

    #[test]
    fn errors_are_one_line() {
        assert_eq!(one_line("a\nb\r\n"), "a b");
        assert_eq!(printable("x\x1b[2Jy\n"), "x\\u{1b}[2Jy\\n");
        let error = CliError::Vault(Error::NotFound("record users/u1".into()));
        assert_eq!(error.kind(), "not_found");
        assert_eq!(error.message(), "not found: record users/u1");
        assert_eq!(CliError::Usage("x".into()).kind(), "usage");
    }

    #[test]
    fn output_ends_with_exactly_one_line_break() {
        assert_eq!(one_newline(""), "\n");
        assert_eq!(one_newline("{}"), "{}\n");
        assert_eq!(one_newline("a\nb"), "a\nb\n");
        assert_eq!(one_newline("a\nb\n"), "a\nb\n");
        assert_eq!(one_newline("a\r\n\n\n"), "a\n");
    }

    #[test]
    fn a_sealed_vault_says_how_to_unseal() {
        let error = CliError::Vault(Error::from(tonic::Status::unavailable("vault is sealed")));
        assert_eq!(error.kind(), "unavailable");
        let message = error.message();
        assert!(message.starts_with("the vault is sealed"), "{message}");
        assert!(message.contains("vaultctl operator unseal"), "{message}");
        assert!(!message.contains('\n'));
        // Other unavailability keeps its own message.
        let error = CliError::Vault(Error::Unavailable("shutting down".into()));
        assert_eq!(error.message(), "vault unavailable: shutting down");
    }

    #[test]
    fn custody_command_lines() {
        let cli = parse(&["operator", "init", "--shares", "5", "--threshold", "3"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Operator(OperatorCommand::Init(_))
        ));
        for bad in [
            &["operator", "init", "--shares", "0", "--threshold", "1"][..],
            &["operator", "init", "--shares", "256", "--threshold", "1"],
            &["operator", "init", "--shares", "3", "--threshold", "0"],
            &["operator", "init", "--shares", "3"],
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
        // A share is never an argument.
        assert!(parse(&["operator", "unseal", "vault-share-v1:abcd"]).is_err());
        assert!(parse(&["operator", "unseal", "--share", "vault-share-v1:abcd"]).is_err());
        assert!(parse(&["operator", "unseal", "--share-file", "s.txt", "--json"]).is_ok());
        assert!(parse(&["operator", "unseal", "--allow-keyring-rollback"]).is_ok());
        for ok in [
            &["operator", "seal"][..],
            &["operator", "status"],
            &["operator", "rotate", "root"],
            &["operator", "rotate", "subject", "person-42"],
            &["operator", "rewrap-status", "--wait"],
            &["operator", "rotate", "index"],
            &["operator", "reindex-status", "--wait"],
            &["operator", "keys"],
            &["operator", "retire", "1"],
            &["operator", "destroy", "1"],
            &["subject", "erase", "person-42"],
        ] {
            assert!(parse(ok).is_ok(), "{ok:?}");
        }
        assert!(parse(&["operator", "retire", "one"]).is_err());
        assert!(parse(&["operator", "rotate"]).is_err());

        // Rekey: a split, or --cancel alone; recipients one way or the other.
        for ok in [
            &["operator", "rekey", "--shares", "3", "--threshold", "2"][..],
            &[
                "operator",
                "rekey",
                "--shares",
                "3",
                "--threshold",
                "2",
                "--share-file",
                "s.age",
                "--identity",
                "me.key",
                "--recipient",
                "age1x",
                "--recipient",
                "age1y",
                "--recipient",
                "age1z",
                "--share-dir",
                "d",
            ],
            &["operator", "rekey", "--cancel"],
            &[
                "operator",
                "unseal",
                "--share-file",
                "s.age",
                "--identity",
                "me.key",
            ],
            &[
                "operator",
                "init",
                "--shares",
                "2",
                "--threshold",
                "2",
                "--recipients-file",
                "r",
            ],
        ] {
            assert!(parse(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            &["operator", "rekey"][..],
            &["operator", "rekey", "--shares", "3"],
            &[
                "operator",
                "rekey",
                "--cancel",
                "--shares",
                "3",
                "--threshold",
                "2",
            ],
            &[
                "operator",
                "rekey",
                "--shares",
                "3",
                "--threshold",
                "2",
                "--recipient",
                "age1x",
                "--recipients-file",
                "r",
            ],
            &[
                "operator",
                "rekey",
                "--shares",
                "3",
                "--threshold",
                "2",
                "vault-share-v1:ab",
            ],
        ] {
            assert_eq!(parse(bad).unwrap_err().exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn record_output() {
        let record = Record::new("users", "u1", "s1")
            .with("name", "Ada\nLovelace")
            .with("birth_date", Timestamp::from_unix_seconds(0))
            .with("age", 36i64);
        assert_eq!(
            record_text(&record),
            "users/u1 (subject s1)\nage: 36\nbirth_date: 1970-01-01T00:00:00Z\nname: Ada\\nLovelace"
        );
    }

    /// A record as a policy-filtered read gives it.
    fn filtered_record() -> Record {
        let mut record = Record::new("users", "u1", "s1")
            .with("email", "a***@example.eu")
            .with("name", "Ada\nLovelace")
            .with("phone", "+33*******78");
        record.redacted = ["country", "birth_date"].map(String::from).into();
        record.masked = ["email", "phone"].map(String::from).into();
        record
    }

    #[test]
    fn redacted_and_masked_record_output() {
        let record = filtered_record();
        assert_eq!(
            record_text(&record),
            "users/u1 (subject s1)\nbirth_date: (redacted)\ncountry: (redacted)\n\
             email: a***@example.eu (masked)\nname: Ada\\nLovelace\nphone: +33*******78 (masked)"
        );
        assert_eq!(
            record_to_json(&record),
            json!({
                "collection": "users", "id": "u1", "subject_id": "s1",
                "fields": {"email": "a***@example.eu", "name": "Ada\nLovelace",
                           "phone": "+33*******78"},
                "redacted": ["birth_date", "country"],
                "masked": ["email", "phone"],
            })
        );
        // Only a redacted field: the header and that line.
        let mut only = Record::new("users", "u2", "s2");
        only.redacted.insert("email".into());
        assert_eq!(
            record_text(&only),
            "users/u2 (subject s2)\nemail: (redacted)"
        );
    }

    #[test]
    fn whole_records_show_as_before() {
        let record = Record::new("users", "u1", "s1")
            .with("email", "u1@example.eu")
            .with("country", "FR");
        assert_eq!(
            record_text(&record),
            "users/u1 (subject s1)\ncountry: FR\nemail: u1@example.eu"
        );
        assert_eq!(
            record_to_json(&record),
            json!({"collection": "users", "id": "u1", "subject_id": "s1",
                   "fields": {"country": "FR", "email": "u1@example.eu"}})
        );
        assert_eq!(
            record_text(&Record::new("users", "u2", "s2")),
            "users/u2 (subject s2)"
        );
    }

    #[test]
    fn policy_command_lines() {
        let cli = parse(&[
            "policy",
            "check",
            "--principal",
            "billing-service",
            "--purpose",
            "refund",
            "--collection",
            "payments",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Policy(PolicyCommand::Check(_))
        ));
        assert_eq!(cli.purpose.as_deref(), Some("refund"));
        assert!(cli.purpose_on_command_line);
        // --purpose before the command counts as the command line's too.
        let cli = parse(&["--purpose", "refund", "policy", "check", "--principal", "p"]).unwrap();
        assert!(cli.purpose_on_command_line);
        assert!(parse(&["policy", "check", "--principal", "p", "--json"]).is_ok());
        assert!(parse(&["policy", "reload"]).is_ok());
        assert!(parse(&["policy", "reload", "--json"]).is_ok());
        for bad in [
            &["policy", "check"][..],
            &["policy", "check", "--principal"],
            &["policy", "reload", "now"],
            &["policy"],
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn a_purpose_from_the_environment_is_not_the_command_lines() {
        // The same option under a variable of this test's own, so that no
        // other test sees it.
        const VAR: &str = "VAULTCTL_TEST_PURPOSE_FROM_ENV";
        std::env::set_var(VAR, "support-ticket");
        let command = Cli::command().mut_arg("purpose", |a| a.env(VAR));
        let args = ["vaultctl", "policy", "check", "--principal", "p"];
        let matches = command.clone().try_get_matches_from(args).unwrap();
        let cli = Cli::from_matches(&matches).unwrap();
        assert_eq!(cli.purpose.as_deref(), Some("support-ticket"));
        assert!(!cli.purpose_on_command_line);
        let matches = command
            .try_get_matches_from(args.iter().chain(&["--purpose", "refund"]))
            .unwrap();
        let cli = Cli::from_matches(&matches).unwrap();
        assert_eq!(cli.purpose.as_deref(), Some("refund"));
        assert!(cli.purpose_on_command_line);
        std::env::remove_var(VAR);
    }

    #[test]
    fn collection_output() {
        let collection = Collection::new("users")
            .region("eu")
            .description("People")
            .field(FieldSchema::new("email", FieldType::String, DataCategory::Contact).indexed());
        assert_eq!(
            collection_text(&collection),
            "collection: users\nregion: eu\ndescription: People\nfields (1):\n  email:string:contact:indexed"
        );
        let table = collections_table(&[collection, Collection::new("orders")]);
        assert_eq!(
            table,
            "NAME    REGION  FIELDS  DESCRIPTION\nusers   eu           1  People\norders  -            0"
        );
        assert_eq!(collections_table(&[]), "no collections");
    }

    #[test]
    fn schema_files() {
        let dir = std::env::temp_dir().join(format!("vaultctl-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("users.json");
        std::fs::write(
            &path,
            r#"{"name": "users", "description": "People",
                "fields": [{"name": "email", "type": "string", "category": "contact"}]}"#,
        )
        .unwrap();
        let path_arg = path.to_str().unwrap();
        let cli = parse(&["collection", "create", "users", "--schema", path_arg]).unwrap();
        let Command::Collection(CollectionCommand::Create(args)) = &cli.command else {
            panic!("{cli:?}");
        };
        let collection = collection_to_create(args).unwrap();
        assert_eq!(collection.description, "People");
        assert_eq!(collection.fields.len(), 1);

        let cli = parse(&["collection", "create", "people", "--schema", path_arg]).unwrap();
        let Command::Collection(CollectionCommand::Create(args)) = &cli.command else {
            panic!("{cli:?}");
        };
        assert!(
            matches!(collection_to_create(args), Err(CliError::Input(m)) if m.contains("`users`"))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
