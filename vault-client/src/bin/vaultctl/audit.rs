//! `vaultctl audit …`: the auditor's side of the audit log.
//!
//! `audit verify` checks an exported log offline with the client's own,
//! independent implementation ([`vault_client::audit`]): it needs no vault,
//! no token and no trust in the vault's code, only the vault's checkpoint
//! verifier key, obtained out of band.
//!
//! The others ask the vault (`AuditService`, the `audit` operation):
//! `public-key` prints its verifier key, `export` writes the log into a
//! directory that `verify` reads, `proof` checks one event's inclusion
//! proof locally, and `tail` prints the latest events (`--follow`: one
//! streaming request). `ledger` (the
//! `export` operation, for data-protection officers) lists the events about
//! one data subject, each proved to be in a signed checkpoint.

use std::fs::File;
use std::io::{BufReader, BufWriter, IsTerminal as _, Read as _, Write as _};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::json;
use vault_client::audit::{
    check_witnesses, latest_note, leaf_hash, read_checkpoints, verify_consistency,
    verify_inclusion, verify_log, Checkpoint, CheckpointFile, Progress, Report, VerifierKey,
    WitnessKey, CHECKPOINTS_DIR, EVENTS_FILE,
};
use vault_client::{Error, VaultClient};

use super::{connect, emit, one_line, printable, Cli, CliError};

/// An events file at least this large gets a progress bar (on a terminal).
const LARGE_LOG_BYTES: u64 = 8 * 1024 * 1024;

/// The width of the progress bar, in characters.
const BAR_WIDTH: u64 = 20;

/// The most a verifier key file may hold (a key is about 60 characters).
const MAX_KEY_FILE: u64 = 4096;

/// Events asked for in one call (the most the vault sends; it sends fewer
/// when they would pass 4 MiB, and the next call starts after the last
/// one received).
const PAGE: u32 = 1000;

/// How many of the latest events `tail` shows without --from.
const TAIL_DEFAULT: u64 = 20;

/// The note of `proof` when the checkpoint key came from the vault itself.
const UNPINNED_NOTE: &str =
    "checkpoint verified with the key the server gave; pin it with --public-key";

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Verify an exported audit log offline: every event's hash chain, and
    /// its Merkle roots against the checkpoints signed by --public-key.
    /// Prints one line: `valid: …` (exit 0) or `invalid: event I: KIND: …`
    /// (exit 1), naming the first fault.
    Verify(VerifyArgs),

    /// Print the vault's checkpoint verifier key, one line, to save for
    /// `audit verify --public-key` (with --json: {"verifier_key", "origin"}).
    /// Check it against a copy obtained out of band.
    PublicKey,

    /// Export the audit log into a new or empty directory: events.jsonl and
    /// checkpoints/NNNNNN.note, as `audit verify` reads them.
    Export(ExportArgs),

    /// Check that one event is in the log: fetch it, its inclusion proof
    /// and a signed checkpoint, and verify the proof locally. Prints
    /// `event I is included in the tree of size S (root …)`, or exits 1.
    Proof(ProofArgs),

    /// Print audit events as JSON lines, from --from (default: the last 20).
    Tail(TailArgs),

    /// Make a witness's key: writes the private key file (--out, owner
    /// only) and prints the verifier key, for the vault's `[audit]
    /// witnesses` and for `audit verify --witness-key`.
    WitnessKey(super::witness::WitnessKeyArgs),

    /// Witness the audit log (run by the auditor): each round, check the
    /// vault's current checkpoint against the last one verified (state
    /// file; an RFC 6962 consistency proof), then cosign it and hand the
    /// vault the cosignature. A fork or rollback is refused, printed, and
    /// reported to the vault as a critical alert. Runs until interrupted,
    /// or one round with --once (exit 1 if refused).
    Witness(super::witness::WitnessArgs),

    /// A data subject's access ledger: who read, wrote or erased their
    /// data, when, for which purpose. Every event is checked locally: its
    /// inclusion proof in a checkpoint signed by --public-key (or the
    /// vault's key), and that it names the subject. Exits 1 if one fails.
    Ledger(LedgerArgs),
}

#[derive(Debug, Args)]
pub(crate) struct LedgerArgs {
    /// The data subject's id.
    subject: String,

    /// The verifier key to check checkpoints with (a file of one line, as
    /// `audit public-key` prints); without it, the key the vault gives.
    #[arg(long, value_name = "FILE")]
    public_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    /// The directory to create (or an empty one).
    dir: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct ProofArgs {
    /// The event's index (its line in events.jsonl, from 0).
    index: u64,

    /// The size of the tree to prove it in: a signed checkpoint of that
    /// size must exist (default: the latest checkpoint). The latest
    /// checkpoint is then also checked to extend it.
    #[arg(long, value_name = "N")]
    size: Option<u64>,

    /// The verifier key to check checkpoints with (a file of one line, as
    /// `audit public-key` prints); without it, the key the vault gives.
    #[arg(long, value_name = "FILE")]
    public_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct TailArgs {
    /// The index of the first event to print (default: the last 20).
    #[arg(long, value_name = "N")]
    from: Option<u64>,

    /// Keep printing new events as they are appended (one streaming
    /// request) until interrupted.
    #[arg(long)]
    follow: bool,
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The export directory: events.jsonl and checkpoints/.
    dir: PathBuf,

    /// The vault's checkpoint verifier key, a file of one line
    /// `<name>+<key id hex>+<base64 key>` (C2SP signed-note key).
    #[arg(long, value_name = "FILE")]
    public_key: PathBuf,

    /// A signed checkpoint seen before (repeatable): the export must
    /// extend it. A history that forks from it or rolls it back fails.
    #[arg(long, value_name = "FILE")]
    trusted_checkpoint: Vec<PathBuf>,

    /// The auditor's state: the latest checkpoint verified so far, trusted
    /// like --trusted-checkpoint if the file exists, and replaced by the
    /// export's latest once it verifies.
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,

    /// A witness's verifier key (a file of one line, as `audit
    /// witness-key` prints it; repeatable): a checkpoint must be cosigned
    /// by --witnesses-needed of them.
    #[arg(long, value_name = "FILE")]
    witness_key: Vec<PathBuf>,

    /// How many of the --witness-key witnesses must cosign one checkpoint
    /// (default: all of them).
    #[arg(long, value_name = "K", requires = "witness_key")]
    witnesses_needed: Option<usize>,

    /// With --witness-key: fail if more than N events follow the largest
    /// checkpoint the witnesses cosigned (default: any number; the verdict
    /// says how many).
    #[arg(long, value_name = "N", requires = "witness_key")]
    max_unwitnessed: Option<u64>,
}

/// Runs one `audit` command; `Ok(false)`: it printed a negative verdict.
pub(crate) async fn run_audit(cli: &Cli, command: &AuditCommand) -> Result<bool, CliError> {
    match command {
        AuditCommand::Verify(args) => {
            // Offline: no connection, no token.
            let key = read_key(&args.public_key)?;
            let mut trusted = Vec::new();
            for path in &args.trusted_checkpoint {
                trusted.push(trusted_file(path, "trusted checkpoint")?);
            }
            if let Some(state) = args.state.as_ref().filter(|p| p.exists()) {
                trusted.push(trusted_file(state, "trusted state")?);
            }
            let mut witnesses = Vec::new();
            for path in &args.witness_key {
                let key = read_witness_key(path)?;
                // One key given twice (or under two names) is one witness.
                if !witnesses
                    .iter()
                    .any(|w: &WitnessKey| w.public_key() == key.public_key())
                {
                    witnesses.push(key);
                }
            }
            let needed = args.witnesses_needed.unwrap_or(witnesses.len());
            if !witnesses.is_empty() && !(1..=witnesses.len()).contains(&needed) {
                return Err(CliError::Usage(format!(
                    "--witnesses-needed is 1 to the number of distinct --witness-key ({})",
                    witnesses.len()
                )));
            }
            let (mut report, exported) = verify(&args.dir, &key, &trusted)?;
            if !witnesses.is_empty() {
                // The export's own checkpoints only (those just verified):
                // a cosignature the auditor kept from before witnesses
                // nothing of this export's newer events.
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                check_witnesses(
                    &mut report,
                    &exported,
                    &key,
                    &witnesses,
                    needed,
                    args.max_unwitnessed,
                    now,
                );
            }
            if let (Some(state), true) = (&args.state, report.is_valid()) {
                save_state(state, &exported, &trusted, &report, &key)?;
            }
            if cli.json {
                emit(&report.to_json().to_string());
            } else {
                emit(&report_text(&report));
            }
            Ok(report.is_valid())
        }
        AuditCommand::WitnessKey(args) => {
            super::witness::witness_key(cli, args)?;
            Ok(true)
        }
        AuditCommand::Witness(args) => super::witness::witness(cli, args).await,
        AuditCommand::PublicKey => {
            let vault = connect(cli).await?;
            let (verifier_key, origin) = vault.audit_public_key().await?;
            if cli.json {
                emit(&json!({"verifier_key": verifier_key, "origin": origin}).to_string());
            } else {
                // It parsed as a key: one line of printable characters.
                emit(&printable(&verifier_key));
            }
            Ok(true)
        }
        AuditCommand::Export(args) => {
            let (events, checkpoints) = export(cli, &args.dir).await?;
            if cli.json {
                // The path as text: a path that is not UTF-8 cannot go
                // into JSON as it is.
                let dir = args.dir.display().to_string();
                emit(
                    &json!({"events": events, "checkpoints": checkpoints, "dir": dir}).to_string(),
                );
            } else {
                emit(&export_text(events, checkpoints, &args.dir));
            }
            Ok(true)
        }
        AuditCommand::Proof(args) => {
            let verdict = proof(cli, args).await?;
            if cli.json {
                emit(&verdict.to_json().to_string());
            } else {
                emit(&verdict.text());
            }
            Ok(verdict.holds())
        }
        AuditCommand::Ledger(args) => {
            let ledger = ledger(cli, args).await?;
            if cli.json {
                emit(&ledger.to_json().to_string());
            } else {
                emit(&ledger.text());
            }
            Ok(ledger.failure.is_none())
        }
        AuditCommand::Tail(args) => {
            let vault = connect(cli).await?;
            if args.follow {
                tokio::select! {
                    result = tail(&vault, args) => result?,
                    // Interrupted: the lines printed stand.
                    Ok(()) = tokio::signal::ctrl_c() => {}
                }
            } else {
                tail(&vault, args).await?;
            }
            Ok(true)
        }
    }
}

/// Refuses an export directory that exists and holds anything.
fn check_export_dir(dir: &Path) -> Result<(), CliError> {
    match std::fs::read_dir(dir).map(|mut entries| entries.next().is_none()) {
        Ok(true) => Ok(()),
        Ok(false) => Err(CliError::Input(format!(
            "{} is not empty: export into a new or empty directory",
            dir.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CliError::Io(format!("cannot use {}: {e}", dir.display()))),
    }
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> CliError + '_ {
    move |e| CliError::Io(format!("cannot write {}: {e}", path.display()))
}

/// The file name of the `i`th checkpoint of an export.
fn checkpoint_file_name(i: usize) -> String {
    format!("{i:06}.note")
}

/// Exports the log into `dir`; returns how many events and checkpoints it
/// wrote. The checkpoints are fetched first (the vault signs one of the
/// log as it is), then the events, at least up to the latest checkpoint.
async fn export(cli: &Cli, dir: &Path) -> Result<(u64, usize), CliError> {
    check_export_dir(dir)?;
    let vault = connect(cli).await?;
    let checkpoints = vault.audit_checkpoints(0).await?;
    let covered = checkpoints
        .last()
        .and_then(|note| Checkpoint::claimed_size(note.as_bytes()))
        .unwrap_or(0);

    let notes_dir = dir.join(CHECKPOINTS_DIR);
    std::fs::create_dir_all(&notes_dir).map_err(io_error(&notes_dir))?;
    let events_path = dir.join(EVENTS_FILE);
    let file = File::create(&events_path).map_err(io_error(&events_path))?;
    let mut out = BufWriter::new(file);

    let draw = std::io::stderr().is_terminal();
    let mut shown: Option<u64> = None;
    let mut written = 0u64;
    // The log's size when the export began: events after it are taken if
    // they come with a page, not waited for.
    let mut target: Option<u64> = None;
    loop {
        let page = vault.audit_events(written, PAGE).await?;
        let target = *target.get_or_insert(covered.max(page.tree_size));
        if page.events.is_empty() {
            break;
        }
        for event in &page.events {
            if event.contains(&b'\n') {
                return Err(CliError::Vault(Error::Protocol(format!(
                    "audit event {written} holds a line break: {EVENTS_FILE} cannot hold it"
                ))));
            }
            out.write_all(event)
                .and_then(|()| out.write_all(b"\n"))
                .map_err(io_error(&events_path))?;
            written += 1;
        }
        if draw {
            let percent = crate::percent(written, target);
            if shown != Some(percent) {
                shown = Some(percent);
                eprint!("\r{}\x1b[K", export_bar(written, target));
                let _ = std::io::stderr().flush();
            }
        }
        if written >= target {
            break;
        }
    }
    if shown.is_some() {
        eprint!("\r\x1b[K");
        let _ = std::io::stderr().flush();
    }
    let file = out
        .into_inner()
        .map_err(|e| io_error(&events_path)(e.into_error()))?;
    file.sync_all().map_err(io_error(&events_path))?;

    for (i, note) in checkpoints.iter().enumerate() {
        let path = notes_dir.join(checkpoint_file_name(i));
        std::fs::write(&path, note).map_err(io_error(&path))?;
    }
    if written < covered {
        return Err(CliError::Vault(Error::Protocol(format!(
            "the vault gave {written} events but its latest checkpoint covers {covered}: the \
             export in {} is incomplete",
            dir.display()
        ))));
    }
    Ok((written, checkpoints.len()))
}

fn export_text(events: u64, checkpoints: usize, dir: &Path) -> String {
    format!(
        "exported {} and {} to {}",
        plural(events, "event"),
        plural(checkpoints as u64, "checkpoint"),
        printable(&dir.display().to_string())
    )
}

fn export_bar(done: u64, total: u64) -> String {
    let percent = crate::percent(done, total);
    format!(
        "{} {percent}% {done} of {total} events exported",
        bar(percent)
    )
}

/// What `audit proof` found.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ProofVerdict {
    index: u64,
    /// The checkpoint the event was proved against, if one verified.
    checkpoint: Option<Checkpoint>,
    /// The latest checkpoint, when it is larger than the one proved
    /// against and was shown to extend it.
    extended_by: Option<Checkpoint>,
    /// Whether the checkpoint key was the user's rather than the vault's.
    key_pinned: bool,
    /// Why the event is not shown to be included (None: it is).
    failure: Option<String>,
}

impl ProofVerdict {
    fn holds(&self) -> bool {
        self.failure.is_none()
    }

    fn text(&self) -> String {
        let mut lines = Vec::new();
        match (&self.failure, &self.checkpoint) {
            (None, Some(checkpoint)) => {
                lines.push(format!(
                    "event {} is included in the tree of size {} (root {})",
                    self.index,
                    checkpoint.size,
                    hex::encode(checkpoint.root)
                ));
                if let Some(latest) = &self.extended_by {
                    lines.push(format!(
                        "the latest checkpoint (size {}, root {}) extends that tree",
                        latest.size,
                        hex::encode(latest.root)
                    ));
                }
            }
            (failure, _) => lines.push(one_line(&format!(
                "event {} is not shown to be included: {}",
                self.index,
                failure.as_deref().unwrap_or("no checkpoint")
            ))),
        }
        if !self.key_pinned {
            lines.push(UNPINNED_NOTE.to_owned());
        }
        lines.join("\n")
    }

    fn to_json(&self) -> serde_json::Value {
        let checkpoint = |c: &Option<Checkpoint>| {
            c.as_ref().map(
                |c| json!({"origin": c.origin, "tree_size": c.size, "root": hex::encode(c.root)}),
            )
        };
        json!({
            "included": self.holds(),
            "index": self.index,
            "tree_size": self.checkpoint.as_ref().map(|c| c.size),
            "root": self.checkpoint.as_ref().map(|c| hex::encode(c.root)),
            "checkpoint": checkpoint(&self.checkpoint),
            "extended_by": checkpoint(&self.extended_by),
            "key_pinned": self.key_pinned,
            "note": (!self.key_pinned).then_some(UNPINNED_NOTE),
            "reason": self.failure.as_deref().map(one_line),
        })
    }
}

/// Lists a few sizes of checkpoints, for a message.
fn sizes_text(notes: &[String]) -> String {
    const SHOWN: usize = 5;
    let sizes: Vec<String> = notes
        .iter()
        .filter_map(|n| Checkpoint::claimed_size(n.as_bytes()))
        .take(SHOWN)
        .map(|s| s.to_string())
        .collect();
    match sizes.len() {
        0 => "none".into(),
        n if notes.len() > n => format!("{}, …", sizes.join(", ")),
        _ => sizes.join(", "),
    }
}

async fn proof(cli: &Cli, args: &ProofArgs) -> Result<ProofVerdict, CliError> {
    let index = args.index;
    if let Some(size) = args.size.filter(|&size| index >= size) {
        return Err(CliError::Input(format!(
            "event {index} is not in a tree of size {size} (events 0 to size - 1)"
        )));
    }
    let pinned = args.public_key.as_deref().map(read_key).transpose()?;
    let vault = connect(cli).await?;
    let page = vault.audit_events(index, 1).await?;
    let Some(event) = page.events.into_iter().next() else {
        return Err(CliError::Input(format!(
            "there is no event {index}: the log has {}",
            plural(page.tree_size, "event")
        )));
    };
    let key_pinned = pinned.is_some();
    let key = match pinned {
        Some(key) => key,
        None => server_key(&vault).await?,
    };
    let mut verdict = ProofVerdict {
        index,
        checkpoint: None,
        extended_by: None,
        key_pinned,
        failure: None,
    };

    // The checkpoints of the tree asked for and larger; the last is the
    // current one.
    let notes = vault
        .audit_checkpoints(args.size.unwrap_or(page.tree_size))
        .await?;
    let latest_note = notes.last();
    let note = match args.size {
        None => latest_note.ok_or_else(|| {
            CliError::Vault(Error::Protocol("the vault gave no checkpoint".into()))
        })?,
        Some(size) => notes
            .iter()
            .find(|n| Checkpoint::claimed_size(n.as_bytes()) == Some(size))
            .ok_or_else(|| {
                CliError::Input(format!(
                    "the vault has no checkpoint of size {size}; of that size or more: {}",
                    sizes_text(&notes)
                ))
            })?,
    };
    let checkpoint = match Checkpoint::open(note.as_bytes(), &key) {
        Ok(checkpoint) => checkpoint,
        Err(e) => {
            let size = Checkpoint::claimed_size(note.as_bytes())
                .map_or_else(String::new, |s| format!(" of size {s}"));
            verdict.failure = Some(format!("the checkpoint{size} does not verify: {e}"));
            return Ok(verdict);
        }
    };
    if index >= checkpoint.size {
        // Only if the vault's checkpoint is older than the event it gave.
        verdict.failure = Some(format!(
            "the latest checkpoint (size {}) does not cover event {index}",
            checkpoint.size
        ));
        return Ok(verdict);
    }
    let hashes = vault.audit_inclusion_proof(index, checkpoint.size).await?;
    let included = verify_inclusion(
        &leaf_hash(&event),
        index,
        checkpoint.size,
        &hashes,
        &checkpoint.root,
    );
    let (size, root) = (checkpoint.size, checkpoint.root);
    verdict.checkpoint = Some(checkpoint);
    if let Err(e) = included {
        verdict.failure = Some(format!(
            "the inclusion proof in the tree of size {size} does not verify: {e}"
        ));
        return Ok(verdict);
    }

    // With --size: the latest checkpoint must extend the tree proved in.
    if let (Some(_), Some(latest_note)) = (args.size, latest_note) {
        if Checkpoint::claimed_size(latest_note.as_bytes()).is_some_and(|s| s > size) {
            let latest = match Checkpoint::open(latest_note.as_bytes(), &key) {
                Ok(latest) => latest,
                Err(e) => {
                    verdict.failure = Some(format!("the latest checkpoint does not verify: {e}"));
                    return Ok(verdict);
                }
            };
            let hashes = vault.audit_consistency_proof(size, latest.size).await?;
            if let Err(e) = verify_consistency(size, latest.size, &hashes, &root, &latest.root) {
                verdict.failure = Some(format!(
                    "event {index} is in the tree of size {size}, but the latest checkpoint \
                     (size {}) does not extend it: {e}",
                    latest.size
                ));
                return Ok(verdict);
            }
            verdict.extended_by = Some(latest);
        }
    }
    Ok(verdict)
}

/// What `audit ledger` found.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LedgerReport {
    pseudonym: String,
    /// The events, each as stored.
    events: Vec<Vec<u8>>,
    /// The tree sizes of the checkpoints the pages were proved in.
    checkpoint_sizes: Vec<u64>,
    key_pinned: bool,
    /// The first fault, if one page did not verify.
    failure: Option<String>,
}

impl LedgerReport {
    fn text(&self) -> String {
        let mut lines: Vec<String> = self.events.iter().map(|e| ledger_line(e)).collect();
        let sizes = self
            .checkpoint_sizes
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        lines.push(match &self.failure {
            None => format!(
                "{} about subject {} (pseudonym), each proved in a signed checkpoint (tree size {sizes})",
                plural(self.events.len() as u64, "event"),
                printable(&self.pseudonym)
            ),
            Some(why) => one_line(&format!("the ledger does not verify: {why}")),
        });
        if !self.key_pinned {
            lines.push(UNPINNED_NOTE.to_owned());
        }
        lines.join("\n")
    }

    fn to_json(&self) -> serde_json::Value {
        let events: Vec<serde_json::Value> = self
            .events
            .iter()
            .map(|e| serde_json::from_slice(e).unwrap_or(serde_json::Value::Null))
            .collect();
        json!({
            "verified": self.failure.is_none(),
            "subject_pseudonym": self.pseudonym,
            "events": events,
            "checkpoint_sizes": self.checkpoint_sizes,
            "key_pinned": self.key_pinned,
            "note": (!self.key_pinned).then_some(UNPINNED_NOTE),
            "reason": self.failure.as_deref().map(one_line),
        })
    }
}

/// One ledger event as a line: when, who, for what, what, the outcome.
fn ledger_line(event: &[u8]) -> String {
    let Ok(ev) = serde_json::from_slice::<serde_json::Value>(event) else {
        return event_line(event);
    };
    let text = |key: &str| ev[key].as_str().unwrap_or("-").to_owned();
    let when = ev["time_ms"].as_u64().map_or_else(
        || "-".to_owned(),
        |ms| {
            vault_client::Timestamp {
                seconds: i64::try_from(ms / 1000).unwrap_or(i64::MAX),
                nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
            }
            .to_rfc3339()
        },
    );
    let fields = ev["fields"]
        .as_array()
        .map(|f| {
            f.iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(",")
        })
        .filter(|f| !f.is_empty())
        .unwrap_or_else(|| "-".into());
    let mut line = format!(
        "#{} {when} {} purpose={} {} collection={} fields={} {}",
        ev["index"].as_u64().unwrap_or_default(),
        text("principal"),
        text("purpose"),
        text("operation"),
        text("collection"),
        fields,
        text("decision"),
    );
    if let Some(reason) = ev["reason"].as_str() {
        line.push_str(&format!(" ({reason})"));
    }
    event_line(line.as_bytes())
}

/// Fetches every page of a subject's ledger and verifies each, all in the
/// tree of the first page's checkpoint.
async fn ledger(cli: &Cli, args: &LedgerArgs) -> Result<LedgerReport, CliError> {
    let pinned = args.public_key.as_deref().map(read_key).transpose()?;
    let vault = connect(cli).await?;
    let mut page = vault.access_ledger(&args.subject, 0, 0, 0).await?;
    // Without a pinned key, the one the vault sent with the page (a DPO
    // holds no `audit` operation to ask for it apart).
    let key_pinned = pinned.is_some();
    let key = match pinned {
        Some(key) => key,
        None => parse_vault_key(&page.verifier_key)?,
    };
    let mut report = LedgerReport {
        pseudonym: page.subject_pseudonym.clone(),
        events: Vec::new(),
        checkpoint_sizes: Vec::new(),
        key_pinned,
        failure: None,
    };
    let checkpoint = match page.verify(&key) {
        Ok(checkpoint) => checkpoint,
        Err(fault) => {
            report.failure = Some(fault.to_string());
            return Ok(report);
        }
    };
    report.checkpoint_sizes.push(checkpoint.size);
    loop {
        let next = page.next_index;
        report
            .events
            .extend(page.entries.into_iter().map(|e| e.event));
        let Some(next) = next else {
            return Ok(report);
        };
        page = vault
            .access_ledger(&args.subject, next, 0, checkpoint.size)
            .await?;
        // The same tree (its note may have gained a witness's cosignature
        // between pages).
        match page.verify(&key) {
            Err(fault) => {
                report.failure = Some(fault.to_string());
                return Ok(report);
            }
            Ok(tree) if tree != checkpoint || page.subject_pseudonym != report.pseudonym => {
                report.failure = Some(
                    "the vault changed the subject's pseudonym or the tree between pages".into(),
                );
                return Ok(report);
            }
            Ok(_) => {}
        }
    }
}

/// A verifier key the vault sent.
fn parse_vault_key(text: &str) -> Result<VerifierKey, CliError> {
    text.parse().map_err(|e| {
        CliError::Vault(Error::Protocol(format!(
            "the vault's verifier key does not parse: {e}"
        )))
    })
}

/// The vault's own verifier key.
async fn server_key(vault: &VaultClient) -> Result<VerifierKey, CliError> {
    let (text, _origin) = vault.audit_public_key().await?;
    parse_vault_key(&text)
}

/// An event as one line of text: its JSON with every control character
/// escaped (`\u00XX`), so a stored string cannot drive the terminal.
fn event_line(event: &[u8]) -> String {
    let text = String::from_utf8_lossy(event);
    let mut line = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            line.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            line.push(c);
        }
    }
    line
}

/// Prints events from --from (or the last 20) to the end of the log; with
/// --follow, then streams new ones (one request however long it runs). A
/// closed stdout ends it quietly.
async fn tail(vault: &VaultClient, args: &TailArgs) -> Result<(), CliError> {
    let mut next = match args.from {
        Some(from) => from,
        None => vault
            .audit_events(0, 1)
            .await?
            .tree_size
            .saturating_sub(TAIL_DEFAULT),
    };
    if args.follow {
        let mut stream = vault.audit_follow(next).await?;
        while let Some(page) = stream.next().await? {
            if !print_events(&page.events) {
                return Ok(());
            }
        }
        return Err(CliError::Vault(Error::Unavailable(
            "the vault ended the stream (it is shutting down or was sealed)".into(),
        )));
    }
    loop {
        let page = vault.audit_events(next, PAGE).await?;
        if !print_events(&page.events) {
            return Ok(());
        }
        next += page.events.len() as u64;
        if page.events.is_empty() || next >= page.tree_size {
            return Ok(());
        }
    }
}

/// Prints events one line each; false once stdout is closed.
fn print_events(events: &[Vec<u8>]) -> bool {
    let mut out = std::io::stdout().lock();
    events.iter().all(|event| {
        writeln!(out, "{}", event_line(event))
            .and_then(|()| out.flush())
            .is_ok()
    })
}

fn read_witness_key(path: &Path) -> Result<WitnessKey, CliError> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_KEY_FILE + 1).read_to_string(&mut text))
        .map_err(|e| {
            CliError::Io(format!(
                "cannot read the witness key file {}: {e}",
                path.display()
            ))
        })?;
    text.parse()
        .map_err(|e| CliError::Input(format!("witness key file {}: {e}", path.display())))
}

pub(crate) fn read_key(path: &Path) -> Result<VerifierKey, CliError> {
    let io_error = |e: std::io::Error| {
        CliError::Io(format!(
            "cannot read the public key file {}: {e}",
            path.display()
        ))
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(io_error)?
        .take(MAX_KEY_FILE + 1)
        .read_to_string(&mut text)
        .map_err(io_error)?;
    if text.len() as u64 > MAX_KEY_FILE {
        return Err(CliError::Input(format!(
            "public key file {} is too large to be a verifier key",
            path.display()
        )));
    }
    text.parse()
        .map_err(|e| CliError::Input(format!("public key file {}: {e}", path.display())))
}

/// Verifies, with a progress bar on stderr when it is a terminal and the
/// log is large.
/// The most a checkpoint file may hold (a note is a few hundred bytes).
const MAX_CHECKPOINT_FILE: u64 = 64 * 1024;

/// A checkpoint the auditor trusts, read from `path`.
fn trusted_file(path: &Path, what: &str) -> Result<CheckpointFile, CliError> {
    let read = || -> std::io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        std::fs::File::open(path)?
            .take(MAX_CHECKPOINT_FILE + 1)
            .read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    let bytes = read().map_err(|e| CliError::Io(format!("{what} {}: {e}", path.display())))?;
    if bytes.len() as u64 > MAX_CHECKPOINT_FILE {
        return Err(CliError::Input(format!(
            "{what} {}: larger than {MAX_CHECKPOINT_FILE} bytes; not a checkpoint",
            path.display()
        )));
    }
    Ok(CheckpointFile {
        name: format!("{what} {}", path.display()),
        bytes,
    })
}

/// Replaces the state file with the latest checkpoint verified (written
/// beside it, then renamed over it).
fn save_state(
    state: &Path,
    exported: &[CheckpointFile],
    trusted: &[CheckpointFile],
    report: &Report,
    key: &VerifierKey,
) -> Result<(), CliError> {
    let Some(note) = latest_note(report, exported.iter().chain(trusted), key) else {
        return Ok(());
    };
    let mut tmp = state.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, note)
        .and_then(|()| std::fs::rename(&tmp, state))
        .map_err(|e| CliError::Io(format!("writing the state {}: {e}", state.display())))
}

/// Verifies the export in `dir` (with `trusted` checkpoints too); returns
/// the report and the export's checkpoint files, read once, as verified.
fn verify(
    dir: &Path,
    key: &VerifierKey,
    trusted: &[CheckpointFile],
) -> Result<(Report, Vec<CheckpointFile>), CliError> {
    let exported = read_checkpoints(dir).map_err(|e| CliError::Io(e.to_string()))?;
    let mut all = exported.clone();
    all.extend(trusted.iter().cloned());
    let path = dir.join(EVENTS_FILE);
    let events = File::open(&path)
        .map_err(|e| CliError::Io(format!("cannot read {}: {e}", path.display())))?;
    let total = events.metadata().map(|m| m.len()).unwrap_or(0);
    let draw = total >= LARGE_LOG_BYTES && std::io::stderr().is_terminal();
    let mut shown: Option<u64> = None;
    let result = verify_log(BufReader::new(events), &all, key, |progress| {
        if !draw {
            return;
        }
        let percent = crate::percent(progress.bytes, total);
        if shown != Some(percent) {
            shown = Some(percent);
            eprint!("\r{}\x1b[K", progress_bar(&progress, total));
            let _ = std::io::stderr().flush();
        }
    });
    if shown.is_some() {
        // The bar goes; the verdict stands alone.
        eprint!("\r\x1b[K");
        let _ = std::io::stderr().flush();
    }
    let report =
        result.map_err(|e| CliError::Io(format!("cannot read {}: {e}", path.display())))?;
    Ok((report, exported))
}

/// `[####....]`, filled to `percent`.
fn bar(percent: u64) -> String {
    crate::bar(percent, BAR_WIDTH)
}

fn progress_bar(progress: &Progress, total: u64) -> String {
    let percent = crate::percent(progress.bytes, total);
    format!(
        "{} {percent}% {} events verified",
        bar(percent),
        progress.events
    )
}

fn plural(n: u64, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

/// The one-line verdict.
fn report_text(report: &Report) -> String {
    match (&report.fault, &report.latest) {
        (Some(fault), _) => one_line(&format!("invalid: {fault}")),
        (None, latest) => {
            let mut text = format!(
                "valid: {}, {}",
                plural(report.events, "event"),
                plural(report.checkpoints as u64, "checkpoint")
            );
            if let Some(latest) = latest {
                text.push_str(&format!(
                    "; latest checkpoint: size {}, root {}, origin {}",
                    latest.size,
                    hex::encode(latest.root),
                    latest.origin
                ));
                let uncovered = report.events.saturating_sub(latest.size);
                if uncovered > 0 {
                    text.push_str(&format!(
                        "; the last {} not yet covered by a checkpoint",
                        plural(uncovered, "event")
                    ));
                }
            }
            if let Some(witnessed) = &report.witnessed {
                text.push_str(&format!(
                    "; witnessed up to size {} by {}",
                    witnessed.tree_size,
                    witnessed.witnesses.join(", ")
                ));
                if witnessed.unwitnessed_events > 0 {
                    text.push_str(&format!(
                        " (the last {} not witnessed)",
                        plural(witnessed.unwitnessed_events, "event")
                    ));
                }
            }
            one_line(&text)
        }
    }
}

#[cfg(test)]
mod tests {
    use vault_client::audit::{Checkpoint, Fault, FaultKind};

    use super::*;

    fn report(fault: Option<Fault>, latest: Option<Checkpoint>) -> Report {
        Report {
            events: 23,
            checkpoints: 4,
            fault,
            latest,
            witnessed: None,
        }
    }

    #[test]
    fn verdicts_are_one_line() {
        let latest = Checkpoint {
            origin: "vault.example/eu/audit".into(),
            size: 20,
            root: [0xab; 32],
        };
        assert_eq!(
            report_text(&report(None, Some(latest.clone()))),
            format!(
                "valid: 23 events, 4 checkpoints; latest checkpoint: size 20, root {}, \
                 origin vault.example/eu/audit; the last 3 events not yet covered by a checkpoint",
                "ab".repeat(32)
            )
        );
        let all = Report {
            events: 20,
            ..report(None, Some(latest))
        };
        assert!(report_text(&all).ends_with("origin vault.example/eu/audit"));
        let witnessed = Report {
            witnessed: Some(vault_client::audit::Witnessed {
                tree_size: 20,
                witnesses: vec!["w.example/1".into(), "w.example/2".into()],
                unwitnessed_events: 0,
            }),
            ..all
        };
        assert!(report_text(&witnessed)
            .ends_with("; witnessed up to size 20 by w.example/1, w.example/2"));
        let fault = Fault {
            index: 7,
            kind: FaultKind::Modified,
            detail: "event 7's leaf hash\nis not".into(),
        };
        assert_eq!(
            report_text(&report(Some(fault), None)),
            "invalid: event 7: modified: event 7's leaf hash is not"
        );
    }

    #[test]
    fn command_line() {
        use crate::Command;
        let cli = Cli::parse_args([
            "vaultctl",
            "audit",
            "verify",
            "export",
            "--public-key",
            "vault-eu.pub",
            "--json",
        ])
        .unwrap();
        assert!(cli.json);
        let Command::Audit(AuditCommand::Verify(args)) = &cli.command else {
            panic!("{cli:?}");
        };
        assert_eq!(args.dir, Path::new("export"));
        assert_eq!(args.public_key, Path::new("vault-eu.pub"));
        for bad in [
            &["vaultctl", "audit", "verify", "export"][..],
            &["vaultctl", "audit", "verify", "--public-key", "k"],
            &["vaultctl", "audit"],
        ] {
            assert_eq!(Cli::parse_args(bad).unwrap_err().exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn online_command_lines() {
        use crate::Command;
        let parse = |args: &[&str]| Cli::parse_args(["vaultctl", "audit"].iter().chain(args));
        let cli = parse(&["proof", "42", "--size", "100", "--public-key", "k.pub"]).unwrap();
        let Command::Audit(AuditCommand::Proof(args)) = &cli.command else {
            panic!("{cli:?}");
        };
        assert_eq!(
            (args.index, args.size, args.public_key.as_deref()),
            (42, Some(100), Some(Path::new("k.pub")))
        );
        let cli = parse(&["proof", "0"]).unwrap();
        let Command::Audit(AuditCommand::Proof(args)) = &cli.command else {
            panic!("{cli:?}");
        };
        assert_eq!((args.size, args.public_key.is_none()), (None, true));

        let cli = parse(&["tail", "--from", "7", "--follow", "--json"]).unwrap();
        let Command::Audit(AuditCommand::Tail(args)) = &cli.command else {
            panic!("{cli:?}");
        };
        assert_eq!((args.from, args.follow), (Some(7), true));
        let cli = parse(&["tail"]).unwrap();
        let Command::Audit(AuditCommand::Tail(args)) = &cli.command else {
            panic!("{cli:?}");
        };
        assert_eq!((args.from, args.follow), (None, false));

        let cli = parse(&["export", "out"]).unwrap();
        let Command::Audit(AuditCommand::Export(args)) = &cli.command else {
            panic!("{cli:?}");
        };
        assert_eq!(args.dir, Path::new("out"));
        assert!(matches!(
            parse(&["public-key", "--json"]).unwrap().command,
            Command::Audit(AuditCommand::PublicKey)
        ));
        for bad in [
            &["proof"][..],
            &["proof", "-1"],
            &["proof", "x"],
            &["proof", "1", "--size", "many"],
            &["tail", "--from", "-3"],
            &["export"],
            &["public-key", "extra"],
        ] {
            assert_eq!(parse(bad).unwrap_err().exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn events_print_as_one_safe_line() {
        let event = br#"{"index":3,"reason":"a\nb","principal":"ada"}"#;
        assert_eq!(event_line(event), String::from_utf8_lossy(event));
        // Raw control characters (a DEL, a C1 CSI, a newline) are escaped the
        // JSON way, so the line stays valid JSON and inert on a terminal.
        let line = event_line("{\"r\":\"x\u{7f}\u{9b}2J\ny\"}".as_bytes());
        assert_eq!(line, r#"{"r":"x\u007f\u009b2J\u000ay"}"#);
        let back: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back["r"], "x\u{7f}\u{9b}2J\ny");
        assert_eq!(event_line(b"{\"a\":\"\xff\"}"), "{\"a\":\"\u{fffd}\"}");
    }

    #[test]
    fn ledger_lines_and_reports() {
        let event = br#"{"index":7,"time_ms":1700000000250,"principal":"billing","purpose":"invoicing","operation":"read","collection":"users","fields":["email","name"],"decision":"allowed"}"#;
        assert_eq!(
            ledger_line(event),
            "#7 2023-11-14T22:13:20.250Z billing purpose=invoicing read collection=users \
             fields=email,name allowed"
        );
        let refused = br#"{"index":8,"principal":"x\u001b[2J","operation":"read","fields":[],"decision":"denied","reason":"permission denied"}"#;
        assert_eq!(
            ledger_line(refused),
            "#8 - x\\u001b[2J purpose=- read collection=- fields=- denied (permission denied)"
        );
        let mut report = LedgerReport {
            pseudonym: "ab12".into(),
            events: vec![event.to_vec()],
            checkpoint_sizes: vec![9],
            key_pinned: true,
            failure: None,
        };
        assert!(report.text().ends_with(
            "1 event about subject ab12 (pseudonym), each proved in a signed checkpoint (tree size 9)"
        ));
        report.failure = Some("event 7 is not proved to be in the log: bad".into());
        report.key_pinned = false;
        let text = report.text();
        assert!(
            text.contains("the ledger does not verify: event 7"),
            "{text}"
        );
        assert!(text.ends_with(UNPINNED_NOTE), "{text}");
        assert_eq!(report.to_json()["verified"], false);
        assert_eq!(report.to_json()["events"][0]["index"], 7);
    }

    #[test]
    fn export_output() {
        assert_eq!(
            export_text(1234, 3, Path::new("audit-2024")),
            "exported 1234 events and 3 checkpoints to audit-2024"
        );
        assert_eq!(
            export_text(1, 1, Path::new("a\nb")),
            "exported 1 event and 1 checkpoint to a\\nb"
        );
        assert_eq!(checkpoint_file_name(0), "000000.note");
        assert_eq!(checkpoint_file_name(1234), "001234.note");
        assert_eq!(
            export_bar(250, 1000),
            "[#####...............] 25% 250 of 1000 events exported"
        );
        assert_eq!(
            export_bar(0, 0),
            "[####################] 100% 0 of 0 events exported"
        );
    }

    #[test]
    fn exports_go_to_new_or_empty_directories() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_export_dir(dir.path()).is_ok());
        assert!(check_export_dir(&dir.path().join("new/deeper")).is_ok());
        std::fs::write(dir.path().join("events.jsonl"), "").unwrap();
        assert!(matches!(
            check_export_dir(dir.path()),
            Err(CliError::Input(m)) if m.ends_with("is not empty: export into a new or empty directory")
        ));
        assert!(matches!(
            check_export_dir(&dir.path().join("events.jsonl")),
            Err(CliError::Io(m)) if m.starts_with("cannot use ")
        ));
    }

    fn checkpoint(size: u64) -> Checkpoint {
        Checkpoint {
            origin: "vault/eu/01".into(),
            size,
            root: [0xcd; 32],
        }
    }

    #[test]
    fn proof_verdicts() {
        let root = "cd".repeat(32);
        let mut verdict = ProofVerdict {
            index: 4,
            checkpoint: Some(checkpoint(9)),
            extended_by: None,
            key_pinned: true,
            failure: None,
        };
        assert!(verdict.holds());
        assert_eq!(
            verdict.text(),
            format!("event 4 is included in the tree of size 9 (root {root})")
        );
        let json = verdict.to_json();
        assert_eq!(json["included"], true);
        assert_eq!(json["tree_size"], 9);
        assert_eq!(json["root"], root.as_str());
        assert_eq!(json["key_pinned"], true);
        assert!(json["note"].is_null() && json["reason"].is_null());

        verdict.key_pinned = false;
        verdict.extended_by = Some(checkpoint(12));
        assert_eq!(
            verdict.text(),
            format!(
                "event 4 is included in the tree of size 9 (root {root})\n\
                 the latest checkpoint (size 12, root {root}) extends that tree\n\
                 checkpoint verified with the key the server gave; pin it with --public-key"
            )
        );
        assert_eq!(verdict.to_json()["note"], UNPINNED_NOTE);
        assert_eq!(verdict.to_json()["extended_by"]["tree_size"], 12);

        verdict.extended_by = None;
        verdict.failure = Some("the inclusion proof\ndoes not verify".into());
        assert!(!verdict.holds());
        assert_eq!(
            verdict.text().lines().next(),
            Some("event 4 is not shown to be included: the inclusion proof does not verify")
        );
        assert_eq!(verdict.to_json()["included"], false);

        let unsigned = ProofVerdict {
            checkpoint: None,
            key_pinned: true,
            ..verdict
        };
        assert_eq!(unsigned.to_json()["tree_size"], serde_json::Value::Null);
    }

    #[test]
    fn checkpoint_sizes_for_a_message() {
        let note = |size: u64| {
            format!(
                "vault/eu/01\n{size}\n{}\n\n— vault/eu/01 AAAAAAA=\n",
                "A".repeat(43) + "="
            )
        };
        assert_eq!(sizes_text(&[]), "none");
        let notes: Vec<String> = (10..13).map(note).collect();
        assert_eq!(sizes_text(&notes), "10, 11, 12");
        let notes: Vec<String> = (10..17).map(note).collect();
        assert_eq!(sizes_text(&notes), "10, 11, 12, 13, 14, …");
    }

    #[test]
    fn progress_bar_text() {
        let progress = Progress {
            events: 1000,
            bytes: 50,
        };
        assert_eq!(
            progress_bar(&progress, 100),
            "[##########..........] 50% 1000 events verified"
        );
        assert_eq!(crate::percent(5, 0), 100);
        assert_eq!(crate::percent(200, 100), 100);
        assert_eq!(crate::percent(u64::MAX - 1, u64::MAX), 99);
    }
}
