//! `vaultctl operator …` and `vaultctl subject …`: key custody.
//!
//! Unseal shares never travel through the command line (shell history,
//! `ps`): `init` and `rekey` print them or write them to files of mode
//! 0600, and `unseal` and `rekey` read one from a file or stdin. With age
//! recipients (`--recipient`, `--recipients-file`) the vault encrypts each
//! share to its custodian and vaultctl only ever sees ciphertexts; a
//! custodian opens theirs with `--identity`, here, just before sending it.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{BufRead, IsTerminal as _, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use serde::Serialize;
use serde_json::{json, Value as Json};
use vault_client::sealed_share::{self, Identities};
use vault_client::{
    ErasureReceipt, Initialized, ReceiptBody, ReindexProgress, RekeyProgress, RewrapProgress,
    RootKeyInfo, RootKeys, SealStatus, SubjectKeyRotation, UnsealProgress, UnsealShare,
};
use zeroize::Zeroizing;

use super::{connect, emit, printable, Cli, CliError};

/// How often `rewrap-status --wait` and `reindex-status --wait` ask the
/// vault.
const REWRAP_POLL: Duration = Duration::from_millis(200);

/// The width of the `--wait` progress bars, in characters.
const BAR_WIDTH: u64 = 10;

/// The most a share file or a share line may hold: a share is about 130
/// characters; anything this long is the wrong file.
const MAX_SHARE_INPUT: u64 = 4096;

#[derive(Debug, Subcommand)]
pub(crate) enum OperatorCommand {
    /// Create the keyring and split its unseal key into shares, shown once.
    Init(InitArgs),

    /// Hand in one unseal share, read from --share-file or stdin (never from
    /// the command line); or, with --hsm, have the vault unseal itself with
    /// its HSM (a keyring under the PKCS#11 seal), as it does at start.
    Unseal {
        #[command(flatten)]
        share: ShareArgs,
        /// Ask the HSM instead of giving a share.
        #[arg(long, conflicts_with_all = ["share_file", "identity"])]
        hsm: bool,
        /// Disaster recovery: accept a keyring older than the data folder
        /// has seen (a restored keyring backup brings destroyed keys back
        /// and forgets erasures made since). Recorded in the audit log.
        #[arg(long)]
        allow_keyring_rollback: bool,
    },

    /// Replace the unseal key (rekey): each custodian hands in one current
    /// share, naming the same new split; the last one gets the new shares,
    /// and the old shares open nothing any more.
    Rekey(RekeyArgs),

    /// Seal the vault: it drops every key from memory and serves no data
    /// until it is unsealed again.
    Seal,

    /// Show whether the vault is initialised and sealed, and its root keys.
    Status,

    /// Rotate the root key or one subject's key.
    #[command(subcommand)]
    Rotate(RotateCommand),

    /// Show the progress of re-wrapping subject keys after a root key
    /// rotation.
    RewrapStatus {
        /// Poll until the job is finished, with a progress bar on stderr.
        #[arg(long)]
        wait: bool,
    },

    /// Show the progress of rebuilding the blind index after an index key
    /// rotation.
    ReindexStatus {
        /// Poll until the rebuild is finished (and the old index key
        /// destroyed), with a progress bar on stderr.
        #[arg(long)]
        wait: bool,
    },

    /// List the root key versions, their states and the subject keys each
    /// wraps.
    Keys,

    /// Retire a root key version: it no longer unwraps subject keys.
    Retire {
        /// The root key version.
        version: u32,
    },

    /// Destroy a retired root key version: its bytes leave the keyring.
    Destroy {
        /// The root key version.
        version: u32,
    },

    /// Lift a principal's lockout (set by the monitor after repeated denied
    /// requests).
    Unlock {
        /// The principal.
        principal: String,
    },

    /// Approve a build: from the next unseal on, the unseal key is released
    /// only to a server presenting an approved build's measurement (the
    /// server prints its own at start; `operator status` shows it).
    ApproveBuild {
        /// The measurement: 96 hexadecimal digits (SHA-384).
        measurement: String,
    },

    /// Revoke an approved build (from the next unseal on).
    RevokeBuild {
        /// The measurement: 96 hexadecimal digits (SHA-384).
        measurement: String,
    },
}

#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// How many shares to make (1 to 255), one per custodian.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=255))]
    shares: u32,

    /// How many shares unseal the vault (1 to N).
    #[arg(long, value_name = "M", value_parser = clap::value_parser!(u32).range(1..=255))]
    threshold: u32,

    /// Write the shares to DIR/share-1.txt … share-N.txt (share-I.age when
    /// encrypted; mode 0600, never overwriting; DIR is created if missing)
    /// instead of printing them.
    #[arg(long, value_name = "DIR")]
    share_dir: Option<PathBuf>,

    #[command(flatten)]
    recipients: RecipientArgs,
}

/// Where a share handed in comes from.
#[derive(Debug, Args)]
pub(crate) struct ShareArgs {
    /// A file holding one share (as `operator init --share-dir` writes
    /// it). Without it, one line is read from stdin (with --identity: the
    /// whole encrypted share).
    #[arg(long, value_name = "FILE")]
    share_file: Option<PathBuf>,
    /// An age identity file (`AGE-SECRET-KEY-1…`, as `age-keygen` writes
    /// it) that opens an encrypted share (from `--recipient`); the share is
    /// decrypted here and sent to the vault.
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
}

/// The custodians' age recipients, one per new share.
#[derive(Debug, Args)]
pub(crate) struct RecipientArgs {
    /// Encrypt the shares to the custodians' age X25519 recipients
    /// (`age1…`): once per share, in order; share I goes to the I-th.
    #[arg(
        long = "recipient",
        value_name = "AGE1…",
        conflicts_with = "recipients_file"
    )]
    recipient: Vec<String>,
    /// A file of age recipients, one per line (`#` comments allowed), one
    /// per share, in order.
    #[arg(long, value_name = "FILE")]
    recipients_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct RekeyArgs {
    /// How many new shares to make (1 to 255).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=255),
          required_unless_present = "cancel")]
    shares: Option<u32>,

    /// How many new shares unseal the vault (1 to N; 1 only with 1 share).
    #[arg(long, value_name = "M", value_parser = clap::value_parser!(u32).range(1..=255),
          required_unless_present = "cancel")]
    threshold: Option<u32>,

    #[command(flatten)]
    share: ShareArgs,

    #[command(flatten)]
    recipients: RecipientArgs,

    /// Where the last custodian's call writes the new shares (as init's
    /// --share-dir); reserved on every call, kept only by the last.
    #[arg(long, value_name = "DIR")]
    share_dir: Option<PathBuf>,

    /// Move the keyring to another seal with this rekey: `shamir` (the
    /// new shares open it) or `pkcs11` (the server's configured HSM wraps
    /// the new unseal key; the new shares are recovery shares).
    #[arg(long, value_parser = ["shamir", "pkcs11"])]
    seal: Option<String>,

    /// Abandon the rekey in progress (the shares given are dropped).
    #[arg(long, conflicts_with_all = ["shares", "threshold", "share_dir", "share_file", "identity", "recipient", "recipients_file", "seal"])]
    cancel: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum RotateCommand {
    /// Make a new root key version current; subject keys are re-wrapped in
    /// the background (see `operator rewrap-status`).
    Root,
    /// Make a new blind-index key version current; the index is rebuilt
    /// under it in the background, and the old version destroyed once it
    /// is done (see `operator reindex-status`).
    Index,
    /// Give one subject a new key and re-encrypt the subject's records.
    Subject {
        /// The data subject.
        subject: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum SubjectCommand {
    /// Crypto-shred a data subject: destroy its keys, delete its records,
    /// and check the vault's signed receipt.
    Erase {
        /// The data subject.
        subject: String,
    },
    /// Export everything the vault holds of a data subject (an access or
    /// portability request): one JSON bundle with every record and the
    /// subject's access ledger, and its signature by the vault's audit key
    /// in FILE.sig.
    Export {
        /// The data subject.
        subject: String,
        /// The bundle's file (new; readable by its owner only).
        #[arg(long)]
        out: PathBuf,
        /// Where the signature goes (default: FILE.sig).
        #[arg(long)]
        signature: Option<PathBuf>,
    },
    /// Check an exported bundle offline: its signature by the vault's
    /// audit key, its counts, and every access-ledger event's inclusion
    /// proof.
    VerifyExport {
        /// The bundle.
        file: PathBuf,
        /// The vault's audit verifier key (`audit public-key` prints it).
        #[arg(long)]
        public_key: PathBuf,
        /// The signature (default: FILE.sig).
        #[arg(long)]
        signature: Option<PathBuf>,
    },
}

pub(crate) async fn run_operator(cli: &Cli, command: &OperatorCommand) -> Result<(), CliError> {
    match command {
        OperatorCommand::Init(args) => init(cli, args).await,
        OperatorCommand::Rekey(args) => rekey(cli, args).await,
        OperatorCommand::Unseal {
            hsm: true,
            allow_keyring_rollback,
            ..
        } => {
            let progress = connect(cli)
                .await?
                .unseal_with_hsm(*allow_keyring_rollback)
                .await?;
            if cli.json {
                emit(&unseal_json(&progress).to_string());
            } else {
                emit(&unseal_text(&progress));
            }
            Ok(())
        }
        OperatorCommand::ApproveBuild { measurement } => {
            let m = parse_measurement(measurement)?;
            let (changed, approved) = connect(cli).await?.approve_build(&m).await?;
            if cli.json {
                emit(&json!({"measurement": hex::encode(m), "changed": changed, "approved": approved}).to_string());
            } else if changed {
                emit(&format!(
                    "build {} approved ({approved} approved); from the next unseal on, the key \
                     is released only to an approved build",
                    hex::encode(m)
                ));
            } else {
                emit(&format!("build {} was approved already", hex::encode(m)));
            }
            Ok(())
        }
        OperatorCommand::RevokeBuild { measurement } => {
            let m = parse_measurement(measurement)?;
            let (changed, approved) = connect(cli).await?.revoke_build(&m).await?;
            if cli.json {
                emit(&json!({"measurement": hex::encode(m), "changed": changed, "approved": approved}).to_string());
            } else if changed {
                emit(&format!(
                    "build {} revoked ({approved} approved{})",
                    hex::encode(m),
                    if approved == 0 {
                        "; the release gate is off"
                    } else {
                        ""
                    }
                ));
            } else {
                emit(&format!("build {} was not approved", hex::encode(m)));
            }
            Ok(())
        }
        OperatorCommand::Unseal {
            share,
            allow_keyring_rollback,
            ..
        } => {
            let share = read_share(share)?;
            let vault = connect(cli).await?;
            let progress = vault.unseal_with(&share, *allow_keyring_rollback).await?;
            drop(share);
            if cli.json {
                emit(&unseal_json(&progress).to_string());
            } else {
                emit(&unseal_text(&progress));
            }
            Ok(())
        }
        OperatorCommand::Seal => {
            connect(cli).await?.seal().await?;
            if cli.json {
                emit(&json!({"sealed": true}).to_string());
            } else {
                emit("sealed");
            }
            Ok(())
        }
        OperatorCommand::Unlock { principal } => {
            let was_locked = connect(cli).await?.unlock(principal).await?;
            if cli.json {
                emit(&json!({"principal": principal, "was_locked": was_locked}).to_string());
            } else if was_locked {
                emit(&format!("lockout of {} lifted", printable(principal)));
            } else {
                emit(&format!("{} was not locked out", printable(principal)));
            }
            Ok(())
        }
        OperatorCommand::Status => {
            let status = connect(cli).await?.status().await?;
            if cli.json {
                emit(&status_json(&status).to_string());
            } else {
                emit(&status_text(&status));
            }
            Ok(())
        }
        OperatorCommand::Rotate(RotateCommand::Root) => {
            let version = connect(cli).await?.rotate_root_key().await?;
            if cli.json {
                emit(&json!({ "version": version }).to_string());
            } else {
                emit(&format!(
                    "root key version {version} is now current; subject keys are re-wrapped \
                     in the background (vaultctl operator rewrap-status --wait)"
                ));
            }
            Ok(())
        }
        OperatorCommand::Rotate(RotateCommand::Index) => {
            let version = connect(cli).await?.rotate_index_key().await?;
            if cli.json {
                emit(&json!({ "version": version }).to_string());
            } else {
                emit(&format!(
                    "index key version {version} is now current; the blind index is rebuilt \
                     in the background and the old version destroyed when it is done \
                     (vaultctl operator reindex-status --wait)"
                ));
            }
            Ok(())
        }
        OperatorCommand::Rotate(RotateCommand::Subject { subject }) => {
            let rotation = connect(cli).await?.rotate_subject_key(subject).await?;
            if cli.json {
                emit(&rotation_json(subject, &rotation).to_string());
            } else {
                emit(&rotation_text(subject, &rotation));
            }
            Ok(())
        }
        OperatorCommand::RewrapStatus { wait } => {
            let vault = connect(cli).await?;
            let progress = if *wait {
                wait_for_job(|| vault.rewrap_status()).await?
            } else {
                vault.rewrap_status().await?
            };
            if cli.json {
                emit(&rewrap_json(&progress).to_string());
            } else {
                emit(&rewrap_text(&progress));
            }
            Ok(())
        }
        OperatorCommand::ReindexStatus { wait } => {
            let vault = connect(cli).await?;
            let progress = if *wait {
                wait_for_job(|| vault.reindex_status()).await?
            } else {
                vault.reindex_status().await?
            };
            if cli.json {
                emit(&reindex_json(&progress).to_string());
            } else {
                emit(&reindex_text(&progress));
            }
            Ok(())
        }
        OperatorCommand::Keys => {
            let keys = connect(cli).await?.root_keys().await?;
            if cli.json {
                emit(&root_keys_json(&keys).to_string());
            } else {
                emit(&root_keys_table(&keys));
            }
            Ok(())
        }
        OperatorCommand::Retire { version } => {
            connect(cli).await?.retire_root_key(*version).await?;
            key_state_changed(cli, *version, "retired");
            Ok(())
        }
        OperatorCommand::Destroy { version } => {
            connect(cli).await?.destroy_root_key(*version).await?;
            key_state_changed(cli, *version, "destroyed");
            Ok(())
        }
    }
}

pub(crate) async fn run_subject(cli: &Cli, command: &SubjectCommand) -> Result<(), CliError> {
    match command {
        SubjectCommand::Erase { subject } => {
            let receipt = connect(cli).await?.erase_subject(subject).await?;
            receipt.verify().map_err(|e| {
                CliError::Unverified(format!(
                    "the vault reports the subject erased, but its {e}; do not rely on this \
                     receipt"
                ))
            })?;
            // verify() decoded the body already, so this cannot fail.
            let body = ReceiptBody::decode(&receipt.body)
                .map_err(|e| CliError::Unverified(e.to_string()))?;
            if cli.json {
                emit(&receipt_json(&receipt, &body).to_string());
            } else {
                emit(&receipt_text(&receipt, &body));
            }
            Ok(())
        }
        SubjectCommand::Export {
            subject,
            out,
            signature,
        } => crate::export::export(cli, subject, out, signature.as_deref()).await,
        SubjectCommand::VerifyExport {
            file,
            public_key,
            signature,
        } => crate::export::verify(cli, file, public_key, signature.as_deref()),
    }
}

fn key_state_changed(cli: &Cli, version: u32, state: &str) {
    if cli.json {
        emit(&json!({ "version": version, "state": state }).to_string());
    } else {
        emit(&format!("root key version {version} {state}"));
    }
}

/// Checks a new split on the command line.
fn check_split(shares: u32, threshold: u32) -> Result<(), CliError> {
    if threshold > shares {
        return Err(CliError::Usage(format!(
            "--threshold {threshold} is more than --shares {shares}: the vault could never be \
             unsealed"
        )));
    }
    if threshold == 1 && shares > 1 {
        return Err(CliError::Usage(format!(
            "--threshold 1 with --shares {shares} would make every share the whole unseal key; \
             use a threshold of 2 or more (or a single share)"
        )));
    }
    Ok(())
}

/// The recipients named (`--recipient` or `--recipients-file`), checked:
/// one per share.
fn recipients_of(args: &RecipientArgs, shares: u32) -> Result<Vec<String>, CliError> {
    let list = match &args.recipients_file {
        Some(path) => {
            let file = File::open(path)
                .map_err(|e| CliError::Io(format!("cannot read {}: {e}", path.display())))?;
            let mut text = String::new();
            file.take(sealed_share::MAX_KEY_FILE + 1)
                .read_to_string(&mut text)
                .map_err(|e| CliError::Io(format!("cannot read {}: {e}", path.display())))?;
            sealed_share::parse_recipients(&text)
                .map_err(|e| CliError::Input(format!("{}: {e}", path.display())))?
        }
        None => args
            .recipient
            .iter()
            .enumerate()
            .map(|(i, r)| {
                sealed_share::check_recipient(r).map_err(|_| {
                    CliError::Usage(format!(
                        "--recipient number {} is not an age X25519 recipient (age1…)",
                        i + 1
                    ))
                })
            })
            .collect::<Result<_, _>>()?,
    };
    if !list.is_empty() && list.len() != shares as usize {
        return Err(CliError::Usage(format!(
            "{} recipients for {shares} shares: give exactly one recipient per share",
            list.len()
        )));
    }
    Ok(list)
}

/// Reserves the share files before the vault makes the shares, so a share
/// never lacks a place to go.
fn reserve(
    dir: Option<&Path>,
    count: u32,
    encrypted: bool,
) -> Result<Option<ShareFiles>, CliError> {
    dir.map(|dir| ShareFiles::create(dir, count, if encrypted { "age" } else { "txt" }))
        .transpose()
}

async fn init(cli: &Cli, args: &InitArgs) -> Result<(), CliError> {
    check_split(args.shares, args.threshold)?;
    let recipients = recipients_of(&args.recipients, args.shares)?;
    let files = reserve(
        args.share_dir.as_deref(),
        args.shares,
        !recipients.is_empty(),
    )?;
    let (initialized, status) = match connect_and_init(cli, args, &recipients).await {
        Ok(done) => done,
        Err(e) => {
            if let Some(files) = files {
                files.discard();
            }
            return Err(e);
        }
    };
    let mut header = serde_json::Map::new();
    header.insert("region".into(), json!(initialized.region));
    header.insert("threshold".into(), json!(initialized.threshold));
    deliver(
        cli,
        files,
        &init_note(&initialized, status.as_ref()),
        &header,
        &initialized.shares,
        &initialized.encrypted_shares,
    )
}

/// Hands out new shares (of init or rekey): into the reserved files, or on
/// stdout. Clear shares come with a warning; encrypted ones are safe to
/// show, each opens only with its custodian's identity.
fn deliver(
    cli: &Cli,
    files: Option<ShareFiles>,
    note: &str,
    header: &serde_json::Map<String, Json>,
    clear: &[UnsealShare],
    sealed: &[String],
) -> Result<(), CliError> {
    let encrypted = !sealed.is_empty();
    let Some(files) = files else {
        if !cli.json {
            eprintln!("{note}");
            if encrypted {
                eprintln!(
                    "the shares below are each encrypted to one custodian's age recipient, in \
                     the order given; send each to its custodian"
                );
            } else {
                eprintln!(
                    "warning: the shares below are shown once and never again; give each to a \
                     different custodian and keep no other copy"
                );
            }
        }
        print_shares(cli.json, header, clear, sealed);
        return Ok(());
    };
    let texts: Vec<&str> = if encrypted {
        sealed.iter().map(String::as_str).collect()
    } else {
        clear.iter().map(UnsealShare::expose_secret).collect()
    };
    match files.write(&texts) {
        Ok(paths) => {
            if cli.json {
                let mut out = header.clone();
                out.insert(
                    "share_files".into(),
                    json!(paths
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()),
                );
                emit(&Json::Object(out).to_string());
            } else {
                eprintln!("{note}");
                if encrypted {
                    eprintln!(
                        "each file is encrypted to one custodian's age recipient: send it to \
                         that custodian"
                    );
                } else {
                    eprintln!(
                        "warning: give each file to a different custodian, then delete it \
                         here; the shares are not shown again"
                    );
                }
                for path in &paths {
                    emit(&printable(&path.display().to_string()));
                }
            }
            Ok(())
        }
        Err(e) => {
            // The vault keeps no copy: the shares must not be lost with the
            // files.
            print_shares(cli.json, header, clear, sealed);
            Err(CliError::Io(format!(
                "{}; the shares were printed on stdout instead: give each to a different \
                 custodian, they are not shown again",
                e.message()
            )))
        }
    }
}

async fn connect_and_init(
    cli: &Cli,
    args: &InitArgs,
    recipients: &[String],
) -> Result<(Initialized, Option<SealStatus>), CliError> {
    let vault = connect(cli).await?;
    let initialized = vault
        .init_with_recipients(args.shares, args.threshold, recipients)
        .await?;
    // What the seal made of it (an HSM unseals at once); the shares are
    // delivered whatever this says.
    let status = vault.status().await.ok();
    Ok((initialized, status))
}

async fn rekey(cli: &Cli, args: &RekeyArgs) -> Result<(), CliError> {
    if args.cancel {
        connect(cli).await?.cancel_rekey().await?;
        if cli.json {
            emit(&json!({"cancelled": true}).to_string());
        } else {
            emit("no rekey in progress any more (the shares given were dropped)");
        }
        return Ok(());
    }
    let (Some(shares), Some(threshold)) = (args.shares, args.threshold) else {
        return Err(CliError::Usage(
            "give --shares and --threshold (or --cancel)".into(),
        ));
    };
    check_split(shares, threshold)?;
    let recipients = recipients_of(&args.recipients, shares)?;
    let share = read_share(&args.share)?;
    let files = reserve(args.share_dir.as_deref(), shares, !recipients.is_empty())?;
    let mut seal = None;
    let result = match connect(cli).await {
        Ok(vault) => {
            let result = vault
                .rekey_to_seal(
                    &share,
                    shares,
                    threshold,
                    &recipients,
                    args.seal.as_deref().unwrap_or(""),
                )
                .await
                .map_err(CliError::from);
            if result.as_ref().is_ok_and(|p| p.complete) {
                seal = vault.status().await.ok().map(|s| s.seal);
            }
            result
        }
        Err(e) => Err(e),
    };
    drop(share);
    let progress = match result {
        Ok(p) if p.complete => p,
        other => {
            if let Some(files) = files {
                files.discard();
            }
            let p = other?;
            if cli.json {
                emit(
                    &json!({"complete": false, "progress": p.progress, "required": p.required})
                        .to_string(),
                );
            } else {
                emit(&format!(
                    "rekey: {} of {} shares given (towards {threshold} of {shares})",
                    p.progress, p.required
                ));
            }
            return Ok(());
        }
    };
    deliver(
        cli,
        files,
        &rekey_note(&progress, seal.as_deref()),
        &rekey_header(&progress),
        &progress.shares,
        &progress.encrypted_shares,
    )
}

fn rekey_note(p: &RekeyProgress, seal: Option<&str>) -> String {
    let what = if seal == Some("pkcs11") {
        "new recovery shares authorise a rekey (the HSM unseals the vault)"
    } else {
        "new shares unseal it"
    };
    let mut note = format!(
        "rekeyed the vault: any {} of these {} {what}; the old shares open nothing any more \
         (keyring generation {})",
        p.threshold, p.share_count, p.keyring_generation
    );
    if p.sealed {
        note.push_str("; the vault could not reopen and is sealed: unseal it with the new shares");
    }
    note
}

fn rekey_header(p: &RekeyProgress) -> serde_json::Map<String, Json> {
    let mut header = serde_json::Map::new();
    header.insert("complete".into(), json!(true));
    header.insert("threshold".into(), json!(p.threshold));
    header.insert("share_count".into(), json!(p.share_count));
    header.insert("keyring_generation".into(), json!(p.keyring_generation));
    header.insert("sealed".into(), json!(p.sealed));
    header
}

fn init_note(initialized: &Initialized, status: Option<&SealStatus>) -> String {
    let count = initialized
        .shares
        .len()
        .max(initialized.encrypted_shares.len());
    let region = printable(&initialized.region);
    match status {
        Some(s) if s.seal == "pkcs11" => format!(
            "initialized the vault (region {region}) with the PKCS#11 seal ({}): {}; any {} of \
             these {count} recovery shares authorise a rekey or a move between seals (they do \
             not unseal it)",
            printable(s.seal_identity.as_deref().unwrap_or("")),
            match (&s.seal_message, s.sealed) {
                (_, false) => "the vault unsealed itself".to_owned(),
                (Some(m), true) => format!("it stays sealed: {}", printable(m)),
                (None, true) => "it is sealed".to_owned(),
            },
            initialized.threshold,
        ),
        _ => format!(
            "initialized the vault (region {region}): any {} of these {count} shares unseal it",
            initialized.threshold,
        ),
    }
}

/// Prints the shares on stdout: clear ones one per line, encrypted ones
/// (ASCII-armored age files) one after the other; or as the header's
/// fields with `shares` (clear) or `encrypted_shares`.
fn print_shares(
    json_output: bool,
    header: &serde_json::Map<String, Json>,
    clear: &[UnsealShare],
    sealed: &[String],
) {
    let mut out = std::io::stdout().lock();
    if json_output {
        // Serialised straight to stdout: no owned copy of the shares.
        let _ = serde_json::to_writer(&mut out, &SharesJson::new(header, clear, sealed));
        let _ = writeln!(out);
    } else if sealed.is_empty() {
        for share in clear {
            let _ = writeln!(out, "{}", share.expose_secret());
        }
    } else {
        for armored in sealed {
            let _ = writeln!(out, "{}", armored.trim_end());
        }
    }
    let _ = out.flush();
}

/// New shares in JSON, borrowing them.
#[derive(Serialize)]
struct SharesJson<'a> {
    #[serde(flatten)]
    header: &'a serde_json::Map<String, Json>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    shares: Vec<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    encrypted_shares: &'a [String],
}

impl<'a> SharesJson<'a> {
    fn new(
        header: &'a serde_json::Map<String, Json>,
        clear: &'a [UnsealShare],
        sealed: &'a [String],
    ) -> Self {
        Self {
            header,
            shares: clear.iter().map(UnsealShare::expose_secret).collect(),
            encrypted_shares: sealed,
        }
    }
}

/// `share-1.txt` … `share-N.txt` in a folder, created empty (mode 0600,
/// never over an existing file) before the shares exist.
#[derive(Debug)]
struct ShareFiles {
    dir: PathBuf,
    files: Vec<(PathBuf, File)>,
}

impl ShareFiles {
    /// Creates the folder if missing (mode 0700) and the `count` files
    /// `share-I.EXT`; if one exists or cannot be made, removes those it
    /// made and fails.
    fn create(dir: &Path, count: u32, ext: &str) -> Result<Self, CliError> {
        let mut builder = DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(dir)
            .map_err(|e| CliError::Io(format!("cannot create {}: {e}", dir.display())))?;

        let mut files = Self {
            dir: dir.to_owned(),
            files: Vec::new(),
        };
        for i in 1..=count {
            let path = dir.join(format!("share-{i}.{ext}"));
            let mut options = OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            match options.open(&path) {
                Ok(file) => files.files.push((path, file)),
                Err(e) => {
                    files.discard();
                    return Err(CliError::Io(
                        if e.kind() == std::io::ErrorKind::AlreadyExists {
                            format!(
                                "{} exists: refusing to overwrite a share file (choose an \
                                 empty --share-dir)",
                                path.display()
                            )
                        } else {
                            format!("cannot create {}: {e}", path.display())
                        },
                    ));
                }
            }
        }
        Ok(files)
    }

    /// Writes one share (clear or encrypted) per file, each followed by a
    /// newline, and makes them durable; returns the paths.
    fn write(self, shares: &[&str]) -> Result<Vec<PathBuf>, CliError> {
        if shares.len() != self.files.len() {
            return Err(CliError::Vault(vault_client::Error::Protocol(format!(
                "the vault returned {} shares, not the {} asked for",
                shares.len(),
                self.files.len()
            ))));
        }
        let mut paths = Vec::with_capacity(self.files.len());
        for ((path, mut file), share) in self.files.into_iter().zip(shares) {
            file.write_all(share.trim_end().as_bytes())
                .and_then(|()| file.write_all(b"\n"))
                .and_then(|()| file.sync_all())
                .map_err(|e| CliError::Io(format!("cannot write {}: {e}", path.display())))?;
            paths.push(path);
        }
        // The new directory entries must be durable too.
        #[cfg(unix)]
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| CliError::Io(format!("cannot sync {}: {e}", self.dir.display())))?;
        Ok(paths)
    }

    /// Removes the (still empty) files.
    fn discard(self) {
        for (path, file) in self.files {
            drop(file);
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Reads the share handed in: from `--share-file` or stdin, decrypted with
/// `--identity` if given.
fn read_share(args: &ShareArgs) -> Result<UnsealShare, CliError> {
    match (&args.identity, &args.share_file) {
        (None, Some(path)) => read_share_file(path),
        (None, None) => read_share_from_stdin(),
        (Some(identity), source) => {
            let identities = read_identities(identity)?;
            let (sealed, name) = match source {
                Some(path) => {
                    let file = File::open(path).map_err(|e| {
                        CliError::Io(format!("cannot read {}: {e}", path.display()))
                    })?;
                    (
                        read_bounded(file, &path.display().to_string())?,
                        path.display().to_string(),
                    )
                }
                None => {
                    if std::io::stdin().is_terminal() {
                        eprintln!("Paste the encrypted share, then end with Ctrl-D:");
                    }
                    (
                        read_bounded(std::io::stdin().lock(), "stdin")?,
                        "stdin".to_owned(),
                    )
                }
            };
            if !sealed_share::is_sealed(&sealed) {
                return Err(CliError::Input(format!(
                    "{name} is not an age-encrypted share (--identity opens the share files of \
                     `operator init --recipient`; give a clear share without it)"
                )));
            }
            sealed_share::open(&sealed, &identities)
                .map_err(|e| CliError::Input(format!("{name}: {e}")))
        }
    }
}

/// Reads an encrypted share (bounded).
fn read_bounded(input: impl std::io::Read, name: &str) -> Result<Vec<u8>, CliError> {
    let mut bytes = Vec::with_capacity(1024);
    input
        .take(sealed_share::MAX_SEALED_SHARE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| CliError::Io(format!("cannot read {name}: {e}")))?;
    if bytes.len() as u64 > sealed_share::MAX_SEALED_SHARE {
        return Err(CliError::Input(format!(
            "{name} is too large to be an encrypted unseal share"
        )));
    }
    Ok(bytes)
}

/// Reads an age identity file (secret: kept in a zeroizing buffer, never
/// echoed).
fn read_identities(path: &Path) -> Result<Identities, CliError> {
    let file = File::open(path)
        .map_err(|e| CliError::Io(format!("cannot read {}: {e}", path.display())))?;
    let mut text = Zeroizing::new(String::with_capacity(1024));
    file.take(sealed_share::MAX_KEY_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| CliError::Io(format!("cannot read {}: {e}", path.display())))?;
    Identities::parse(&text).map_err(|e| CliError::Input(format!("{}: {e}", path.display())))
}

/// Reads the one share that `path` holds.
fn read_share_file(path: &Path) -> Result<UnsealShare, CliError> {
    let file = File::open(path)
        .map_err(|e| CliError::Io(format!("cannot read {}: {e}", path.display())))?;
    let mut text = Zeroizing::new(String::with_capacity(1024));
    file.take(MAX_SHARE_INPUT + 1)
        .read_to_string(&mut text)
        .map_err(|e| CliError::Io(format!("cannot read {}: {e}", path.display())))?;
    if text.len() as u64 > MAX_SHARE_INPUT {
        return Err(CliError::Input(format!(
            "{} is too large to be an unseal share",
            path.display()
        )));
    }
    if sealed_share::is_sealed(text.as_bytes()) {
        return Err(CliError::Input(format!(
            "{} is an age-encrypted share: give your identity file with --identity",
            path.display()
        )));
    }
    let mut lines = text.lines().map(str::trim).filter(|line| !line.is_empty());
    let share = lines
        .next()
        .ok_or_else(|| CliError::Input(format!("{} holds no unseal share", path.display())))?;
    if lines.next().is_some() {
        return Err(CliError::Input(format!(
            "{} holds more than one line: give one share per file",
            path.display()
        )));
    }
    Ok(UnsealShare::new(share))
}

/// Reads one share from stdin, prompting on stderr if stdin is a terminal.
fn read_share_from_stdin() -> Result<UnsealShare, CliError> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("Unseal share: ");
        let _ = std::io::stderr().flush();
    }
    read_share_line(&mut stdin.lock())
}

/// Reads one line and takes it as a share.
fn read_share_line(input: &mut impl BufRead) -> Result<UnsealShare, CliError> {
    let mut line = Zeroizing::new(String::with_capacity(1024));
    input
        .take(MAX_SHARE_INPUT + 1)
        .read_line(&mut line)
        .map_err(|e| CliError::Io(format!("cannot read the unseal share from stdin: {e}")))?;
    if line.len() as u64 > MAX_SHARE_INPUT {
        return Err(CliError::Input(
            "the line on stdin is too long to be an unseal share".into(),
        ));
    }
    let share = UnsealShare::new(line.as_str());
    if share.is_empty() {
        return Err(CliError::Input(
            "no unseal share on stdin (give one line, or use --share-file)".into(),
        ));
    }
    Ok(share)
}

fn unseal_text(progress: &UnsealProgress) -> String {
    if progress.sealed {
        format!(
            "sealed: {} of {} shares given",
            progress.progress, progress.threshold
        )
    } else {
        "unsealed".into()
    }
}

fn unseal_json(progress: &UnsealProgress) -> Json {
    json!({
        "sealed": progress.sealed,
        "progress": progress.progress,
        "threshold": progress.threshold,
    })
}

fn yes_no(value: bool) -> &'static str {
    if value {
        "yes"
    } else {
        "no"
    }
}

fn status_text(status: &SealStatus) -> String {
    let mut lines = vec![
        format!("initialized: {}", yes_no(status.initialized)),
        format!("sealed: {}", yes_no(status.sealed)),
        format!(
            "region: {}",
            printable(super::display_region(&status.region))
        ),
    ];
    if status.initialized {
        lines.push(format!("threshold: {}", status.threshold));
        lines.push(format!("shares: {}", status.shares));
        if status.sealed {
            lines.push(format!(
                "unseal progress: {} of {} shares given",
                status.progress, status.threshold
            ));
        }
    }
    match status.current_root_version {
        Some(version) => lines.push(format!("current root version: {version}")),
        None => lines.push("current root version: -".into()),
    }
    if !status.root_keys.is_empty() {
        lines.push("root keys:".into());
        lines.extend(status.root_keys.iter().map(|key| {
            format!(
                "  v{}: {}{}, {} keys wrapped",
                key.version,
                key.state,
                if key.current { " (current)" } else { "" },
                key.wraps
            )
        }));
    }
    if status.rotate_root_after_wraps > 0 {
        lines.push(format!(
            "rotate root after: {} wraps",
            status.rotate_root_after_wraps
        ));
    }
    if status.root_rotation_due {
        lines.push(
            "ROOT ROTATION DUE: the current root key has wrapped that many keys; \
             run `vaultctl operator rotate root`"
                .into(),
        );
    }
    if let Some(key) = &status.signing_public_key {
        lines.push(format!("receipt signing key: {}", hex::encode(key)));
    }
    if !status.transport.is_empty() {
        lines.push(format!("transport: {}", printable(&status.transport)));
    }
    if !status.seal.is_empty() {
        lines.push(format!("seal: {}", printable(&status.seal)));
    }
    if let Some(id) = &status.seal_identity {
        lines.push(format!("hsm: {}", printable(id)));
    }
    if let Some(message) = &status.seal_message {
        lines.push(format!("stays sealed: {}", printable(message)));
    }
    if !status.evidence.is_empty() {
        let how = match (status.evidence.as_str(), status.attested) {
            ("none", _) => "none".to_owned(),
            (kind, true) => format!("{} (attested, as the server reports it)", printable(kind)),
            (kind, false) => format!("{} (not attested: no TEE vouches for it)", printable(kind)),
        };
        lines.push(format!("evidence: {how}"));
    }
    if let Some(id) = &status.attestation_identity {
        lines.push(format!("attestation: {}", printable(id)));
    }
    if let Some(m) = &status.measurement {
        lines.push(format!("measurement: {}", hex::encode(m)));
    }
    if status.seal.is_empty() {
        // Not initialised (or a server from before seals).
    } else if status.approved_builds.is_empty() {
        lines.push("approved builds: none (the key release gate is off)".into());
    } else {
        lines.push(format!("approved builds: {}", status.approved_builds.len()));
        lines.extend(
            status
                .approved_builds
                .iter()
                .map(|m| format!("  {}", hex::encode(m))),
        );
        lines.push(format!(
            "this build approved: {}",
            yes_no(status.measurement_approved() == Some(true))
        ));
    }
    lines.join("\n")
}

fn root_key_json(key: &RootKeyInfo) -> Json {
    json!({
        "version": key.version,
        "state": key.state.as_str(),
        "current": key.current,
        "wrapped_subject_keys": key.wrapped_subject_keys,
        "wraps": key.wraps,
    })
}

fn status_json(status: &SealStatus) -> Json {
    json!({
        "initialized": status.initialized,
        "sealed": status.sealed,
        "region": status.region,
        "threshold": status.threshold,
        "shares": status.shares,
        "progress": status.progress,
        "current_root_version": status.current_root_version,
        "root_keys": status.root_keys.iter().map(|key| json!({
            "version": key.version,
            "state": key.state.as_str(),
            "current": key.current,
            "wraps": key.wraps,
        })).collect::<Vec<_>>(),
        "signing_public_key": status.signing_public_key.map(hex::encode),
        "rotate_root_after_wraps": status.rotate_root_after_wraps,
        "root_rotation_due": status.root_rotation_due,
        "transport": status.transport,
        "seal": status.seal,
        "seal_identity": status.seal_identity,
        "seal_message": status.seal_message,
        "evidence": status.evidence,
        "attested": status.attested,
        "attestation_identity": status.attestation_identity,
        "measurement": status.measurement.map(hex::encode),
        "approved_builds": status.approved_builds.iter().map(hex::encode).collect::<Vec<_>>(),
        "measurement_approved": status.measurement_approved(),
    })
}

/// A build measurement from its hex form: 48 bytes (96 digits).
fn parse_measurement(text: &str) -> Result<[u8; 48], CliError> {
    let bytes = hex::decode(text.trim()).map_err(|_| {
        CliError::Usage(
            "a measurement is 96 hexadecimal digits (SHA-384; the server prints its own at start)"
                .into(),
        )
    })?;
    let n = bytes.len();
    bytes.try_into().map_err(|_| {
        CliError::Usage(format!(
            "a measurement is 48 bytes (96 hexadecimal digits); this one is {n}"
        ))
    })
}

fn root_keys_json(keys: &RootKeys) -> Json {
    json!({
        "current_version": keys.current_version,
        "versions": keys.versions.iter().map(root_key_json).collect::<Vec<_>>(),
    })
}

fn root_keys_table(keys: &RootKeys) -> String {
    if keys.versions.is_empty() {
        return "no root keys".into();
    }
    let header = ["VERSION", "STATE", "CURRENT", "SUBJECT KEYS"].map(str::to_owned);
    let rows: Vec<[String; 4]> = keys
        .versions
        .iter()
        .map(|key| {
            [
                key.version.to_string(),
                key.state.to_string(),
                if key.current { "*" } else { "" }.to_owned(),
                key.wrapped_subject_keys.to_string(),
            ]
        })
        .collect();
    let width = |i: usize| {
        rows.iter()
            .chain(std::iter::once(&header))
            .map(|row| row[i].len())
            .max()
            .unwrap_or(0)
    };
    let (w0, w1, w2, w3) = (width(0), width(1), width(2), width(3));
    std::iter::once(&header)
        .chain(rows.iter())
        .map(|r| format!("{:>w0$}  {:w1$}  {:w2$}  {:>w3$}", r[0], r[1], r[2], r[3]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `[#####.....] 52% 5200/10000 re-wrapped`
fn progress_bar(progress: &RewrapProgress) -> String {
    let percent = progress.percent();
    format!(
        "{} {percent}% {}/{} re-wrapped",
        crate::bar(percent.into(), BAR_WIDTH),
        progress.rewrapped,
        progress.pending_at_start
    )
}

/// `[###.......] 25% 100/400 records examined`
fn reindex_bar(progress: &ReindexProgress) -> String {
    let percent = progress.percent();
    format!(
        "{} {percent}% {}/{} records examined",
        crate::bar(percent.into(), BAR_WIDTH),
        progress.examined,
        progress.total_at_start
    )
}

/// The progress of a background job, as `--wait` follows it.
trait JobProgress {
    /// Whether the job is done.
    fn finished(&self) -> bool;
    /// Its progress bar.
    fn bar(&self) -> String;
}

impl JobProgress for RewrapProgress {
    fn finished(&self) -> bool {
        self.finished
    }
    fn bar(&self) -> String {
        progress_bar(self)
    }
}

impl JobProgress for ReindexProgress {
    fn finished(&self) -> bool {
        self.finished
    }
    fn bar(&self) -> String {
        reindex_bar(self)
    }
}

/// Polls until a background job (the re-wrap, the index rebuild) is
/// finished, drawing its progress on stderr when stderr is a terminal.
async fn wait_for_job<P, F, Fut>(mut poll: F) -> Result<P, CliError>
where
    P: JobProgress,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = vault_client::Result<P>>,
{
    let draw = std::io::stderr().is_terminal();
    let mut drawn = false;
    loop {
        let progress = match poll().await {
            Ok(progress) => progress,
            Err(e) => {
                if drawn {
                    eprintln!();
                }
                return Err(e.into());
            }
        };
        if draw {
            // \x1b[K clears what a longer earlier line left behind.
            eprint!("\r{}\x1b[K", progress.bar());
            let _ = std::io::stderr().flush();
            drawn = true;
        }
        if progress.finished() {
            if drawn {
                eprintln!();
            }
            return Ok(progress);
        }
        tokio::time::sleep(REWRAP_POLL).await;
    }
}

fn rewrap_text(progress: &RewrapProgress) -> String {
    [
        format!("target root version: {}", progress.target_version),
        format!("finished: {}", yes_no(progress.finished)),
        format!(
            "re-wrapped: {} of {} ({}%)",
            progress.rewrapped,
            progress.pending_at_start,
            progress.percent()
        ),
        format!("examined: {}", progress.examined),
    ]
    .into_iter()
    .chain((progress.unreadable > 0).then(|| {
        format!(
            "unreadable (left under their old root version): {}",
            progress.unreadable
        )
    }))
    .chain(
        (progress.removed_erased > 0)
            .then(|| format!("erased subjects' keys removed: {}", progress.removed_erased)),
    )
    .collect::<Vec<_>>()
    .join("\n")
}

fn rewrap_json(progress: &RewrapProgress) -> Json {
    json!({
        "target_version": progress.target_version,
        "finished": progress.finished,
        "rewrapped": progress.rewrapped,
        "pending_at_start": progress.pending_at_start,
        "examined": progress.examined,
        "unreadable": progress.unreadable,
        "removed_erased": progress.removed_erased,
    })
}

fn reindex_text(progress: &ReindexProgress) -> String {
    [
        format!("target index key version: {}", progress.target_version),
        format!("finished: {}", yes_no(progress.finished)),
        format!(
            "examined: {} of {} records ({}%)",
            progress.examined,
            progress.total_at_start,
            progress.percent()
        ),
        format!("re-indexed: {}", progress.reindexed),
    ]
    .into_iter()
    .chain((progress.skipped > 0).then(|| {
        format!(
            "skipped (erased subjects' records, rows without a record): {}",
            progress.skipped
        )
    }))
    .chain((progress.unreadable > 0).then(|| {
        format!(
            "unreadable (their older rows removed): {}",
            progress.unreadable
        )
    }))
    .collect::<Vec<_>>()
    .join("\n")
}

fn reindex_json(progress: &ReindexProgress) -> Json {
    json!({
        "target_version": progress.target_version,
        "finished": progress.finished,
        "examined": progress.examined,
        "reindexed": progress.reindexed,
        "skipped": progress.skipped,
        "unreadable": progress.unreadable,
        "total_at_start": progress.total_at_start,
    })
}

fn rotation_text(subject: &str, rotation: &SubjectKeyRotation) -> String {
    format!(
        "subject {}: key version {}; {} record{} ({} field value{}) re-encrypted",
        printable(subject),
        rotation.new_version,
        rotation.records,
        if rotation.records == 1 { "" } else { "s" },
        rotation.fields,
        if rotation.fields == 1 { "" } else { "s" },
    )
}

fn rotation_json(subject: &str, rotation: &SubjectKeyRotation) -> Json {
    json!({
        "subject_id": subject,
        "new_version": rotation.new_version,
        "records": rotation.records,
        "fields": rotation.fields,
    })
}

/// A verified receipt for people; `body` is its decoded body.
fn receipt_text(receipt: &ErasureReceipt, body: &ReceiptBody) -> String {
    [
        "subject erased".to_owned(),
        format!("receipt id: {}", hex::encode(body.receipt_id)),
        format!("erased at: {}", receipt.erased_at),
        format!("region: {}", printable(&body.region)),
        format!("keyring id: {}", hex::encode(body.keyring_id)),
        format!("subject pseudonym: {}", hex::encode(body.subject_pseudonym)),
        format!("key versions destroyed: {}", body.key_versions_destroyed),
        format!("records deleted: {}", body.records_deleted),
        format!("shred bucket: {}", body.shred_bucket),
        format!("bucket key epoch destroyed: {}", body.shred_epoch_destroyed),
        format!("other keys re-wrapped: {}", body.keys_rewrapped),
        format!("public key: {}", hex::encode(&receipt.public_key)),
        "receipt signature: verified".to_owned(),
    ]
    .join("\n")
}

/// A verified receipt as JSON: every field, the bytes as hex.
fn receipt_json(receipt: &ErasureReceipt, body: &ReceiptBody) -> Json {
    json!({
        "receipt_id": hex::encode(body.receipt_id),
        "erased_at": receipt.erased_at.to_rfc3339(),
        "region": body.region,
        "keyring_id": hex::encode(body.keyring_id),
        "subject_pseudonym": hex::encode(body.subject_pseudonym),
        "key_versions_destroyed": body.key_versions_destroyed,
        "records_deleted": body.records_deleted,
        "shred_bucket": body.shred_bucket,
        "shred_epoch_destroyed": body.shred_epoch_destroyed,
        "keys_rewrapped": body.keys_rewrapped,
        "body": hex::encode(&receipt.body),
        "signature": hex::encode(&receipt.signature),
        "public_key": hex::encode(&receipt.public_key),
        "verified": true,
    })
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use vault_client::{KeyState, Timestamp};

    use super::*;

    fn initialized(count: usize) -> Initialized {
        Initialized {
            region: "eu".into(),
            threshold: 2,
            shares: (1..=count)
                .map(|i| UnsealShare::new(format!("vault-share-v1:{i:02x}")))
                .collect(),
            encrypted_shares: Vec::new(),
        }
    }

    fn texts(init: &Initialized) -> Vec<&str> {
        init.shares.iter().map(UnsealShare::expose_secret).collect()
    }

    #[test]
    fn share_files_are_private_and_never_overwritten() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("new").join("shares");
        let files = ShareFiles::create(&dir, 3, "txt").unwrap();
        let paths = files.write(&texts(&initialized(3))).unwrap();
        assert_eq!(
            paths,
            (1..=3)
                .map(|i| dir.join(format!("share-{i}.txt")))
                .collect::<Vec<_>>()
        );
        for (i, path) in paths.iter().enumerate() {
            let text = std::fs::read_to_string(path).unwrap();
            assert_eq!(text, format!("vault-share-v1:{:02x}\n", i + 1));
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                let mode = std::fs::metadata(path).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{}", path.display());
            }
            // What init writes, unseal reads.
            assert_eq!(
                read_share_file(path).unwrap().expose_secret(),
                format!("vault-share-v1:{:02x}", i + 1)
            );
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "the new folder is private: {mode:o}");
        }

        // A second init into the same folder is refused, and leaves the
        // first shares as they were.
        match ShareFiles::create(&dir, 3, "txt") {
            Err(CliError::Io(message)) => {
                assert!(message.contains("share-1.txt"), "{message}");
                assert!(message.contains("refusing to overwrite"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            std::fs::read_to_string(&paths[0]).unwrap(),
            "vault-share-v1:01\n"
        );
    }

    #[test]
    fn a_refused_share_dir_keeps_nothing_it_made() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("share-3.txt"), "old").unwrap();
        assert!(matches!(
            ShareFiles::create(tmp.path(), 4, "txt"),
            Err(CliError::Io(m)) if m.contains("share-3.txt")
        ));
        // share-1 and share-2 were made and removed again; share-3 is untouched.
        let mut names: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["share-3.txt"]);
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("share-3.txt")).unwrap(),
            "old"
        );

        // Discarding reserved files (init failed) removes them.
        let files = ShareFiles::create(&tmp.path().join("d"), 2, "txt").unwrap();
        files.discard();
        assert_eq!(std::fs::read_dir(tmp.path().join("d")).unwrap().count(), 0);
    }

    #[test]
    fn a_share_count_mismatch_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let files = ShareFiles::create(tmp.path(), 3, "txt").unwrap();
        assert!(matches!(
            files.write(&texts(&initialized(2))),
            Err(CliError::Vault(vault_client::Error::Protocol(m))) if m.contains("2 shares")
        ));
    }

    #[test]
    fn share_files_hold_exactly_one_share() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("share.txt");
        std::fs::write(&path, "\n  vault-share-v1:abcd  \r\n\n").unwrap();
        assert_eq!(
            read_share_file(&path).unwrap().expose_secret(),
            "vault-share-v1:abcd"
        );
        std::fs::write(&path, "vault-share-v1:ab\nvault-share-v1:cd\n").unwrap();
        assert!(matches!(
            read_share_file(&path),
            Err(CliError::Input(m)) if m.contains("more than one line")
        ));
        std::fs::write(&path, " \n").unwrap();
        assert!(matches!(
            read_share_file(&path),
            Err(CliError::Input(m)) if m.contains("no unseal share")
        ));
        std::fs::write(&path, "a".repeat(5000)).unwrap();
        assert!(matches!(
            read_share_file(&path),
            Err(CliError::Input(m)) if m.contains("too large")
        ));
        assert!(matches!(
            read_share_file(&tmp.path().join("missing.txt")),
            Err(CliError::Io(m)) if m.contains("missing.txt")
        ));
    }

    #[test]
    fn stdin_gives_one_line() {
        let mut input = Cursor::new("vault-share-v1:abcd\r\nvault-share-v1:ef01\n");
        assert_eq!(
            read_share_line(&mut input).unwrap().expose_secret(),
            "vault-share-v1:abcd"
        );
        // Only the first line was consumed.
        assert_eq!(
            read_share_line(&mut input).unwrap().expose_secret(),
            "vault-share-v1:ef01"
        );
        assert_eq!(
            read_share_line(&mut Cursor::new("vault-share-v1:ab"))
                .unwrap()
                .expose_secret(),
            "vault-share-v1:ab"
        );
        for empty in ["", "\n", "   \n"] {
            assert!(
                matches!(
                    read_share_line(&mut Cursor::new(empty)),
                    Err(CliError::Input(m)) if m.contains("no unseal share")
                ),
                "{empty:?}"
            );
        }
        assert!(matches!(
            read_share_line(&mut Cursor::new("b".repeat(5000))),
            Err(CliError::Input(m)) if m.contains("too long")
        ));
    }

    #[test]
    fn init_json_shapes() {
        let init = initialized(2);
        let mut header = serde_json::Map::new();
        header.insert("region".into(), json!("eu"));
        header.insert("threshold".into(), json!(2));
        assert_eq!(
            serde_json::to_value(SharesJson::new(&header, &init.shares, &[])).unwrap(),
            json!({
                "region": "eu",
                "threshold": 2,
                "shares": ["vault-share-v1:01", "vault-share-v1:02"],
            })
        );
        let sealed = vec!["-----BEGIN AGE ENCRYPTED FILE-----\n…".to_owned()];
        assert_eq!(
            serde_json::to_value(SharesJson::new(&header, &[], &sealed)).unwrap(),
            json!({"region": "eu", "threshold": 2, "encrypted_shares": sealed})
        );
    }

    #[test]
    fn splits_and_recipients_are_checked_before_the_vault_is_asked() {
        assert!(check_split(3, 2).is_ok());
        assert!(matches!(check_split(2, 3), Err(CliError::Usage(m)) if m.contains("more than")));
        assert!(matches!(
            check_split(3, 1),
            Err(CliError::Usage(m)) if m.contains("every share the whole unseal key")
        ));
        assert!(check_split(1, 1).is_ok());
        let a = age::x25519::Identity::generate().to_public().to_string();
        let b = age::x25519::Identity::generate().to_public().to_string();
        let args = |recipient: Vec<String>| RecipientArgs {
            recipient,
            recipients_file: None,
        };
        assert_eq!(
            recipients_of(&args(vec![]), 3).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            recipients_of(&args(vec![a.clone(), b.clone()]), 2).unwrap(),
            vec![a.clone(), b.clone()]
        );
        assert!(matches!(
            recipients_of(&args(vec![a.clone()]), 2),
            Err(CliError::Usage(m)) if m.contains("one recipient per share")
        ));
        assert!(matches!(
            recipients_of(&args(vec![a.clone(), "age1nope".into()]), 2),
            Err(CliError::Usage(m)) if m.contains("number 2")
        ));
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("custodians.txt");
        std::fs::write(&file, format!("# ops team\n{a}\n\n{b}\n")).unwrap();
        let from_file = RecipientArgs {
            recipient: vec![],
            recipients_file: Some(file.clone()),
        };
        assert_eq!(recipients_of(&from_file, 2).unwrap(), vec![a, b]);
        std::fs::write(&file, "age1bad\n").unwrap();
        assert!(matches!(
            recipients_of(&from_file, 1),
            Err(CliError::Input(m)) if m.contains("line 1")
        ));
    }

    #[test]
    fn encrypted_share_files_need_the_identity() {
        let id = age::x25519::Identity::generate();
        let other = age::x25519::Identity::generate();
        let tmp = tempfile::tempdir().unwrap();
        let sealed = {
            use std::io::Write as _;
            let r = id.to_public();
            let e = age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient))
                .unwrap();
            let mut out = Vec::new();
            let armor =
                age::armor::ArmoredWriter::wrap_output(&mut out, age::armor::Format::AsciiArmor)
                    .unwrap();
            let mut w = e.wrap_output(armor).unwrap();
            w.write_all(b"vault-share-v1:abcd\n").unwrap();
            w.finish().unwrap().finish().unwrap();
            out
        };
        let share_file = tmp.path().join("share-1.age");
        std::fs::write(&share_file, &sealed).unwrap();
        let id_file = tmp.path().join("me.key");
        let other_file = tmp.path().join("other.key");
        use age::secrecy::ExposeSecret as _;
        std::fs::write(
            &id_file,
            format!("# mine\n{}\n", id.to_string().expose_secret()),
        )
        .unwrap();
        std::fs::write(&other_file, other.to_string().expose_secret()).unwrap();
        let args = |identity: Option<&Path>| ShareArgs {
            share_file: Some(share_file.clone()),
            identity: identity.map(Path::to_owned),
        };
        assert_eq!(
            read_share(&args(Some(&id_file))).unwrap().expose_secret(),
            "vault-share-v1:abcd"
        );
        assert!(matches!(
            read_share(&args(None)),
            Err(CliError::Input(m)) if m.contains("--identity")
        ));
        assert!(matches!(
            read_share(&args(Some(&other_file))),
            Err(CliError::Input(m)) if m.contains("another custodian")
        ));
        // A clear share with --identity is a mistake worth naming.
        std::fs::write(&share_file, "vault-share-v1:abcd\n").unwrap();
        assert!(matches!(
            read_share(&args(Some(&id_file))),
            Err(CliError::Input(m)) if m.contains("not an age-encrypted share")
        ));
        // A damaged identity file is named by line, never echoed.
        std::fs::write(&other_file, "AGE-SECRET-KEY-1SECRETSECRET\n").unwrap();
        match read_share(&args(Some(&other_file))) {
            Err(CliError::Input(m)) => {
                assert!(m.contains("line 1") && !m.contains("SECRETSECRET"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unseal_output() {
        let sealed = UnsealProgress {
            sealed: true,
            progress: 2,
            threshold: 3,
        };
        assert_eq!(unseal_text(&sealed), "sealed: 2 of 3 shares given");
        assert_eq!(
            unseal_json(&sealed),
            json!({"sealed": true, "progress": 2, "threshold": 3})
        );
        let open = UnsealProgress {
            sealed: false,
            progress: 0,
            threshold: 3,
        };
        assert_eq!(unseal_text(&open), "unsealed");
    }

    fn keys() -> Vec<RootKeyInfo> {
        vec![
            RootKeyInfo {
                version: 1,
                state: KeyState::Destroyed,
                current: false,
                wrapped_subject_keys: 0,
                wraps: 4,
            },
            RootKeyInfo {
                version: 2,
                state: KeyState::Retired,
                current: false,
                wrapped_subject_keys: 0,
                wraps: 0,
            },
            RootKeyInfo {
                version: 3,
                state: KeyState::Active,
                current: true,
                wrapped_subject_keys: 10_000,
                wraps: 10_004,
            },
        ]
    }

    #[test]
    fn status_output() {
        let status = SealStatus {
            initialized: true,
            sealed: false,
            region: "eu".into(),
            threshold: 2,
            shares: 3,
            progress: 0,
            current_root_version: Some(3),
            root_keys: keys(),
            signing_public_key: Some([0xab; 32]),
            rotate_root_after_wraps: 10_000,
            root_rotation_due: true,
            transport: "mutual TLS".into(),
            seal: "pkcs11".into(),
            seal_identity: Some("token \"vault-eu\" (serial 7), key \"k\" (id 01)".into()),
            seal_message: None,
            approved_builds: vec![[0xcd; 48]],
            evidence: "self-reported".into(),
            measurement: Some([0xef; 48]),
            attested: false,
            attestation_identity: None,
        };
        assert_eq!(
            status_text(&status),
            format!(
                "initialized: yes\nsealed: no\nregion: eu\nthreshold: 2\nshares: 3\n\
                 current root version: 3\nroot keys:\n\
                 \x20 v1: destroyed, 4 keys wrapped\n  v2: retired, 0 keys wrapped\n  \
                 v3: active (current), 10004 keys wrapped\n\
                 rotate root after: 10000 wraps\n\
                 ROOT ROTATION DUE: the current root key has wrapped that many keys; \
                 run `vaultctl operator rotate root`\n\
                 receipt signing key: {}\ntransport: mutual TLS\nseal: pkcs11\n\
                 hsm: token \"vault-eu\" (serial 7), key \"k\" (id 01)\n\
                 evidence: self-reported (not attested: no TEE vouches for it)\n\
                 measurement: {}\napproved builds: 1\n  {}\nthis build approved: no",
                "ab".repeat(32),
                "ef".repeat(48),
                "cd".repeat(48),
            )
        );
        assert_eq!(
            status_json(&status),
            json!({
                "initialized": true,
                "sealed": false,
                "region": "eu",
                "threshold": 2,
                "shares": 3,
                "progress": 0,
                "current_root_version": 3,
                "root_keys": [
                    {"version": 1, "state": "destroyed", "current": false, "wraps": 4},
                    {"version": 2, "state": "retired", "current": false, "wraps": 0},
                    {"version": 3, "state": "active", "current": true, "wraps": 10004},
                ],
                "signing_public_key": "ab".repeat(32),
                "rotate_root_after_wraps": 10000,
                "root_rotation_due": true,
                "transport": "mutual TLS",
                "seal": "pkcs11",
                "seal_identity": "token \"vault-eu\" (serial 7), key \"k\" (id 01)",
                "seal_message": null,
                "evidence": "self-reported",
                "attested": false,
                "attestation_identity": null,
                "measurement": "ef".repeat(48),
                "approved_builds": ["cd".repeat(48)],
                "measurement_approved": false,
            })
        );

        let sealed = SealStatus {
            initialized: true,
            sealed: true,
            region: "eu".into(),
            threshold: 2,
            shares: 3,
            progress: 1,
            ..SealStatus::default()
        };
        assert_eq!(
            status_text(&sealed),
            "initialized: yes\nsealed: yes\nregion: eu\nthreshold: 2\nshares: 3\n\
             unseal progress: 1 of 2 shares given\ncurrent root version: -"
        );
        let json = status_json(&sealed);
        assert_eq!(json["current_root_version"], Json::Null);
        assert_eq!(json["signing_public_key"], Json::Null);
        assert_eq!(json["root_keys"], json!([]));

        let fresh = SealStatus {
            sealed: true,
            ..SealStatus::default()
        };
        assert_eq!(
            status_text(&fresh),
            "initialized: no\nsealed: yes\nregion: -\ncurrent root version: -"
        );
    }

    #[test]
    fn keys_output() {
        let keys = RootKeys {
            current_version: 3,
            versions: keys(),
        };
        assert_eq!(
            root_keys_table(&keys),
            "VERSION  STATE      CURRENT  SUBJECT KEYS\n\
             \x20     1  destroyed                      0\n\
             \x20     2  retired                        0\n\
             \x20     3  active     *               10000"
        );
        assert_eq!(
            root_keys_json(&keys),
            json!({
                "current_version": 3,
                "versions": [
                    {"version": 1, "state": "destroyed", "current": false, "wrapped_subject_keys": 0, "wraps": 4},
                    {"version": 2, "state": "retired", "current": false, "wrapped_subject_keys": 0, "wraps": 0},
                    {"version": 3, "state": "active", "current": true, "wrapped_subject_keys": 10000, "wraps": 10004},
                ],
            })
        );
        assert_eq!(root_keys_table(&RootKeys::default()), "no root keys");
    }

    fn rewrap(rewrapped: u64, finished: bool) -> RewrapProgress {
        RewrapProgress {
            target_version: 3,
            finished,
            rewrapped,
            pending_at_start: 10_000,
            examined: rewrapped + 100,
            unreadable: 0,
            removed_erased: 0,
        }
    }

    #[test]
    fn rewrap_output() {
        assert_eq!(
            progress_bar(&rewrap(5_200, false)),
            "[#####.....] 52% 5200/10000 re-wrapped"
        );
        assert_eq!(
            progress_bar(&rewrap(0, false)),
            "[..........] 0% 0/10000 re-wrapped"
        );
        assert_eq!(
            progress_bar(&rewrap(10_000, true)),
            "[##########] 100% 10000/10000 re-wrapped"
        );
        assert_eq!(
            rewrap_text(&rewrap(5_200, false)),
            "target root version: 3\nfinished: no\nre-wrapped: 5200 of 10000 (52%)\nexamined: 5300"
        );
        assert_eq!(
            rewrap_json(&rewrap(10_000, true)),
            json!({
                "target_version": 3,
                "finished": true,
                "rewrapped": 10000,
                "pending_at_start": 10000,
                "examined": 10100,
                "unreadable": 0,
                "removed_erased": 0,
            })
        );
    }

    #[tokio::test]
    async fn waiting_polls_until_finished() {
        let mut answers = vec![
            Ok(rewrap(10_000, true)),
            Ok(rewrap(5_000, false)),
            Ok(rewrap(0, false)),
        ];
        let mut polls = 0;
        let last = wait_for_job(|| {
            polls += 1;
            let answer = answers.pop().unwrap();
            async move { answer }
        })
        .await
        .unwrap();
        assert_eq!(polls, 3);
        assert!(last.finished);

        let failed = wait_for_job::<RewrapProgress, _, _>(|| async {
            Err(vault_client::Error::Unavailable("vault is sealed".into()))
        })
        .await;
        assert!(matches!(failed, Err(CliError::Vault(e)) if e.is_sealed()));
    }

    fn reindex(examined: u64, finished: bool) -> ReindexProgress {
        ReindexProgress {
            target_version: 2,
            finished,
            examined,
            reindexed: examined.saturating_sub(3),
            skipped: 0,
            unreadable: 0,
            total_at_start: 400,
        }
    }

    #[test]
    fn reindex_output() {
        assert_eq!(
            reindex_bar(&reindex(100, false)),
            "[##........] 25% 100/400 records examined"
        );
        assert_eq!(
            reindex_bar(&reindex(400, true)),
            "[##########] 100% 400/400 records examined"
        );
        assert_eq!(
            reindex_text(&reindex(100, false)),
            "target index key version: 2\nfinished: no\nexamined: 100 of 400 records (25%)\n\
             re-indexed: 97"
        );
        let odd = ReindexProgress {
            skipped: 2,
            unreadable: 1,
            ..reindex(400, true)
        };
        assert_eq!(
            reindex_text(&odd),
            "target index key version: 2\nfinished: yes\nexamined: 400 of 400 records (100%)\n\
             re-indexed: 397\nskipped (erased subjects' records, rows without a record): 2\n\
             unreadable (their older rows removed): 1"
        );
        assert_eq!(
            reindex_json(&odd),
            json!({
                "target_version": 2,
                "finished": true,
                "examined": 400,
                "reindexed": 397,
                "skipped": 2,
                "unreadable": 1,
                "total_at_start": 400,
            })
        );
    }

    #[tokio::test]
    async fn waiting_for_the_rebuild_polls_until_finished() {
        let mut answers = vec![Ok(reindex(400, true)), Ok(reindex(100, false))];
        let last = wait_for_job(|| {
            let answer = answers.pop().unwrap();
            async move { answer }
        })
        .await
        .unwrap();
        assert!(last.finished);
        assert!(answers.is_empty());
    }

    #[test]
    fn rotation_output() {
        let rotation = SubjectKeyRotation {
            new_version: 4,
            records: 1,
            fields: 5,
        };
        assert_eq!(
            rotation_text("person-42", &rotation),
            "subject person-42: key version 4; 1 record (5 field values) re-encrypted"
        );
        assert_eq!(
            rotation_json("person-42", &rotation),
            json!({"subject_id": "person-42", "new_version": 4, "records": 1, "fields": 5})
        );
    }

    fn receipt() -> (ErasureReceipt, ReceiptBody) {
        let body = ReceiptBody {
            receipt_id: [0x11; 16],
            erased_at: 1_700_000_000,
            region: "eu".into(),
            keyring_id: [0x22; 16],
            subject_pseudonym: [0x33; 32],
            key_versions_destroyed: 2,
            records_deleted: 12,
            shred_bucket: 517,
            shred_epoch_destroyed: 3,
            keys_rewrapped: 1,
        };
        let receipt = ErasureReceipt {
            body: vec![1, 2, 3],
            signature: vec![0x44; 64],
            public_key: vec![0x55; 32],
            receipt_id: hex::encode(body.receipt_id),
            erased_at: Timestamp::from_unix_seconds(1_700_000_000),
            region: "eu".into(),
            subject_pseudonym: hex::encode(body.subject_pseudonym),
            key_versions_destroyed: 2,
            records_deleted: 12,
            shred_bucket: 517,
            shred_epoch_destroyed: 3,
            keys_rewrapped: 1,
        };
        (receipt, body)
    }

    #[test]
    fn receipt_output() {
        let (receipt, body) = receipt();
        let text = receipt_text(&receipt, &body);
        assert_eq!(
            text,
            format!(
                "subject erased\nreceipt id: {}\nerased at: 2023-11-14T22:13:20Z\nregion: eu\n\
                 keyring id: {}\nsubject pseudonym: {}\nkey versions destroyed: 2\n\
                 records deleted: 12\nshred bucket: 517\nbucket key epoch destroyed: 3\n\
                 other keys re-wrapped: 1\npublic key: {}\nreceipt signature: verified",
                "11".repeat(16),
                "22".repeat(16),
                "33".repeat(32),
                "55".repeat(32)
            )
        );
        assert_eq!(
            receipt_json(&receipt, &body),
            json!({
                "receipt_id": "11".repeat(16),
                "erased_at": "2023-11-14T22:13:20Z",
                "region": "eu",
                "keyring_id": "22".repeat(16),
                "subject_pseudonym": "33".repeat(32),
                "key_versions_destroyed": 2,
                "records_deleted": 12,
                "shred_bucket": 517,
                "shred_epoch_destroyed": 3,
                "keys_rewrapped": 1,
                "body": "010203",
                "signature": "44".repeat(64),
                "public_key": "55".repeat(32),
                "verified": true,
            })
        );
    }
}
