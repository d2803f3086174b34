//! `vaultctl audit witness` and `audit witness-key`: a witness of the
//! audit log, run by the auditor, not by the vault's operator.
//!
//! The witness has its own Ed25519 key (`witness-key` makes one) and its
//! own state file: the latest checkpoint it verified and cosigned. Each
//! round it asks the vault for its current checkpoint, checks the vault's
//! signature, and checks that the checkpoint extends the one in the state
//! (an RFC 6962 consistency proof, verified here); only then does it save
//! the checkpoint as its new state and hand the vault its cosignature (C2SP
//! tlog-cosignature v1). A checkpoint that does not extend the state (a
//! fork, a rollback, a rewritten history) is refused: the witness says so
//! on its output, keeps its state, and sends the vault a signed refusal,
//! which the vault raises as a critical alert.
//!
//! The state file is a signed checkpoint note, so `audit verify
//! --trusted-checkpoint` takes it as it is.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde_json::json;
use vault_client::audit::{
    note_text, verify_consistency, Checkpoint, Refusal, VerifierKey, WitnessSigner,
};
use vault_client::{Error, VaultClient};

use super::{connect, emit, one_line, printable, Cli, CliError};

/// The most a key or state file may hold.
const MAX_FILE: u64 = 64 * 1024;

#[derive(Debug, Args)]
pub(crate) struct WitnessKeyArgs {
    /// The witness's name: a schema-less URL that names it, such as
    /// `witness.auditor.example/eu` (no spaces, no `+`).
    name: String,

    /// The private key file to create (it must not exist; made readable by
    /// its owner only).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct WitnessArgs {
    /// The witness's private key file (from `audit witness-key`).
    #[arg(long, value_name = "FILE")]
    signing_key: PathBuf,

    /// The witness's state: the latest checkpoint it verified. It must
    /// exist, unless --init.
    #[arg(long, value_name = "FILE")]
    state: PathBuf,

    /// The first run: with no state file yet, trust the vault's current
    /// checkpoint (check its tree size against one obtained out of band)
    /// and create the state. Without it, a missing state file is an error,
    /// so a lost or unmounted state never silently starts trusting anew;
    /// with it, an existing one is (keep --init out of service files).
    #[arg(long)]
    init: bool,

    /// The vault's checkpoint verifier key (a file of one line, as `audit
    /// public-key` prints it), obtained out of band.
    #[arg(long, value_name = "FILE")]
    public_key: PathBuf,

    /// One round, then exit: 0 if the checkpoint was cosigned (or was
    /// already), 1 if it was refused.
    #[arg(long)]
    once: bool,

    /// Seconds between rounds (fractions allowed). Each round is audited
    /// like any request (a few events), so the vault signs a new checkpoint
    /// for every round.
    #[arg(long, value_name = "SECONDS", default_value = "60", value_parser = parse_interval)]
    interval: Duration,

    /// Cosign an unchanged checkpoint again once the witness's last
    /// cosignature on it is this many seconds old (so that its age shows the
    /// witness is alive).
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    refresh: u64,
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("not a number of seconds: {text}"))?;
    if !(0.05..=86_400.0).contains(&seconds) {
        return Err("the interval is 0.05 to 86400 seconds".into());
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Reads a small text file (a key or a checkpoint).
fn read_small(path: &Path, what: &str) -> Result<String, CliError> {
    let io =
        |e: std::io::Error| CliError::Io(format!("cannot read {what} {}: {e}", path.display()));
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(io)?
        .take(MAX_FILE + 1)
        .read_to_string(&mut text)
        .map_err(io)?;
    if text.len() as u64 > MAX_FILE {
        return Err(CliError::Input(format!(
            "{what} {} is larger than {MAX_FILE} bytes",
            path.display()
        )));
    }
    Ok(text)
}

/// `audit witness-key NAME --out FILE`: makes a key, prints its verifier
/// key.
pub(crate) fn witness_key(cli: &Cli, args: &WitnessKeyArgs) -> Result<(), CliError> {
    let signer = WitnessSigner::generate(&args.name)
        .map_err(|e| CliError::Input(format!("witness name {}: {e}", printable(&args.name))))?;
    write_private(&args.out, signer.to_text().as_bytes())?;
    let verifier = signer.verifier().to_string();
    if cli.json {
        emit(
            &json!({"verifier_key": verifier, "key_file": args.out.display().to_string()})
                .to_string(),
        );
    } else {
        emit(&verifier);
    }
    Ok(())
}

/// Creates `path` (which must not exist), readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| {
        CliError::Io(format!(
            "cannot create the key file {} (it must not exist): {e}",
            path.display()
        ))
    })?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| CliError::Io(format!("cannot write {}: {e}", path.display())))
}

/// Replaces `path` with `bytes`: written to a new file of a random name
/// beside it (never one that exists, nor a link), synced, renamed over.
fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    use std::io::Write as _;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{:016x}.tmp", rand::random::<u64>()));
    let tmp = PathBuf::from(tmp);
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        CliError::Io(format!("cannot write the state {}: {e}", path.display()))
    })
}

/// What the witness knows: the latest checkpoint it verified.
struct Seen {
    checkpoint: Checkpoint,
}

/// What one round did.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Cosigned a checkpoint: the first one seen (trusted on first use), or
    /// one shown to extend `from` (or the same one, again).
    Cosigned {
        checkpoint: Checkpoint,
        from: Option<u64>,
    },
    /// The checkpoint is the one already cosigned, recently enough.
    Unchanged { checkpoint: Checkpoint },
    /// The checkpoint was refused.
    Refused { size: Option<u64>, reason: String },
}

impl Outcome {
    fn text(&self) -> String {
        match self {
            Outcome::Cosigned {
                checkpoint,
                from: None,
            } => format!(
                "cosigned checkpoint of size {} (root {}), trusted on first use: there was no state",
                checkpoint.size,
                hex::encode(checkpoint.root)
            ),
            Outcome::Cosigned {
                checkpoint,
                from: Some(from),
            } => format!(
                "cosigned checkpoint of size {} (root {}), consistent with size {from}",
                checkpoint.size,
                hex::encode(checkpoint.root)
            ),
            Outcome::Unchanged { checkpoint } => format!(
                "checkpoint of size {} unchanged; cosigned recently",
                checkpoint.size
            ),
            Outcome::Refused { size, reason } => one_line(&format!(
                "REFUSED checkpoint{}: {reason}",
                size.map_or_else(String::new, |s| format!(" of size {s}"))
            )),
        }
    }

    fn json(&self) -> serde_json::Value {
        match self {
            Outcome::Cosigned { checkpoint, from } => json!({
                "event": "cosigned",
                "tree_size": checkpoint.size,
                "root": hex::encode(checkpoint.root),
                "previous_size": from,
            }),
            Outcome::Unchanged { checkpoint } => json!({
                "event": "unchanged",
                "tree_size": checkpoint.size,
                "root": hex::encode(checkpoint.root),
            }),
            Outcome::Refused { size, reason } => json!({
                "event": "refused",
                "tree_size": size,
                "reason": one_line(reason),
            }),
        }
    }
}

/// The witness and what it holds.
struct Witness {
    signer: WitnessSigner,
    vault_key: VerifierKey,
    state_path: PathBuf,
    seen: Option<Seen>,
    refresh: u64,
    /// The last checkpoint refused (its text), so that a vault that keeps
    /// serving it is reported once.
    refused: Option<String>,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Witness {
    fn load(args: &WitnessArgs) -> Result<Self, CliError> {
        let text = read_small(&args.signing_key, "the witness key file")?;
        let signer = WitnessSigner::from_text(&text).map_err(|e| {
            CliError::Input(format!(
                "witness key file {}: {e}",
                args.signing_key.display()
            ))
        })?;
        let vault_key: VerifierKey = read_small(&args.public_key, "the vault's public key file")?
            .parse()
            .map_err(|e| {
                CliError::Input(format!(
                    "public key file {}: {e}",
                    args.public_key.display()
                ))
            })?;
        let seen = match std::fs::metadata(&args.state) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && args.init => None,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CliError::Input(format!(
                    "the witness state {} does not exist: pass --init on the first run only \
                     (it trusts the vault's checkpoint of that moment)",
                    args.state.display()
                )))
            }
            Ok(_) if args.init => {
                return Err(CliError::Input(format!(
                    "the witness state {} exists: --init is for the first run only",
                    args.state.display()
                )))
            }
            _ => {
                let note = read_small(&args.state, "the witness state")?;
                let checkpoint = Checkpoint::open(note.as_bytes(), &vault_key).map_err(|e| {
                    CliError::Input(format!(
                        "the witness state {} is not a checkpoint signed by the vault's key: {e}",
                        args.state.display()
                    ))
                })?;
                Some(Seen { checkpoint })
            }
        };
        Ok(Witness {
            signer,
            vault_key,
            state_path: args.state.clone(),
            seen,
            refresh: args.refresh,
            refused: None,
        })
    }

    /// Why `checkpoint` (signed by the vault) cannot be cosigned, if it
    /// cannot; else the size it was shown to extend (`None`: no state).
    async fn check(
        &self,
        vault: &VaultClient,
        checkpoint: &Checkpoint,
    ) -> Result<Result<Option<u64>, String>, CliError> {
        let Some(seen) = &self.seen else {
            return Ok(Ok(None));
        };
        let old = &seen.checkpoint;
        if old.origin != checkpoint.origin {
            return Ok(Err(format!(
                "the checkpoint is for origin {:?}, the witness follows {:?}",
                checkpoint.origin, old.origin
            )));
        }
        if checkpoint.size < old.size {
            return Ok(Err(format!(
                "rollback: the vault's checkpoint has {} events, the witness verified {} before",
                checkpoint.size, old.size
            )));
        }
        if checkpoint.size == old.size {
            if checkpoint.root != old.root {
                return Ok(Err(format!(
                    "fork: the vault signed two different trees of {} events (root {}, and {} \
                     which the witness verified before)",
                    checkpoint.size,
                    hex::encode(checkpoint.root),
                    hex::encode(old.root)
                )));
            }
            return Ok(Ok(Some(old.size)));
        }
        if old.size == 0 {
            return Ok(Ok(Some(0)));
        }
        let proof = vault
            .audit_consistency_proof(old.size, checkpoint.size)
            .await?;
        Ok(verify_consistency(
            old.size,
            checkpoint.size,
            &proof,
            &old.root,
            &checkpoint.root,
        )
        .map(|()| Some(old.size))
        .map_err(|e| {
            format!(
                "fork or rewritten history: the tree of {} events does not extend the one \
                         of {} events the witness verified before: {e}",
                checkpoint.size, old.size
            )
        }))
    }

    /// Whether `note` carries this witness's cosignature, made less than
    /// `refresh` seconds ago.
    fn fresh(&self, note: &str) -> bool {
        self.signer
            .verifier()
            .cosignature_time(note.as_bytes())
            .is_ok_and(|t| now_secs().saturating_sub(t) < self.refresh)
    }

    /// One round against `vault`.
    async fn round(&mut self, vault: &VaultClient) -> Result<Outcome, CliError> {
        // The current checkpoint alone (no stored one is that large).
        let notes = vault.audit_checkpoints(u64::MAX).await?;
        let note = notes.last().ok_or_else(|| {
            CliError::Vault(Error::Protocol("the vault gave no checkpoint".into()))
        })?;
        let checkpoint = match Checkpoint::open(note.as_bytes(), &self.vault_key) {
            Ok(checkpoint) => checkpoint,
            Err(e) => {
                let size = Checkpoint::claimed_size(note.as_bytes());
                let reason = format!("the checkpoint is not signed by the vault's key: {e}");
                return Ok(self.refuse(vault, note, size, reason).await);
            }
        };
        let from = match self.check(vault, &checkpoint).await? {
            Ok(from) => from,
            Err(reason) => {
                return Ok(self
                    .refuse(vault, note, Some(checkpoint.size), reason)
                    .await)
            }
        };
        self.refused = None;
        if from == Some(checkpoint.size) && self.fresh(note) {
            return Ok(Outcome::Unchanged { checkpoint });
        }

        // The vault's note, without an older cosignature of this witness,
        // and this witness's cosignature of it now.
        let text = note_text(note.as_bytes())
            .map_err(|e| CliError::Vault(Error::Protocol(format!("the checkpoint: {e}"))))?;
        let own_lines = format!("\u{2014} {} ", self.signer.name());
        let mut cosigned = format!("{text}\n");
        for line in note[text.len() + 1..].lines() {
            if !line.starts_with(&own_lines) {
                cosigned.push_str(line);
                cosigned.push('\n');
            }
        }
        cosigned.push_str(&self.signer.cosign(text, now_secs()));
        // The state first: once a cosignature is out, the witness must never
        // cosign a tree that does not extend it.
        replace_file(&self.state_path, cosigned.as_bytes())?;
        self.seen = Some(Seen {
            checkpoint: checkpoint.clone(),
        });
        let (_, taken) = vault.add_cosignature(&cosigned).await?;
        if !taken.iter().any(|name| name == self.signer.name()) {
            // It holds a newer cosignature of this witness (a clock that
            // stepped back?): nothing was stored.
            return Err(CliError::Vault(Error::Protocol(format!(
                "the vault did not take the cosignature of checkpoint {}: it holds a newer one \
                 of this witness (is this machine's clock behind?)",
                checkpoint.size
            ))));
        }
        Ok(Outcome::Cosigned { checkpoint, from })
    }

    /// Refuses `note`: tells the vault (once per checkpoint), keeps the
    /// state.
    async fn refuse(
        &mut self,
        vault: &VaultClient,
        note: &str,
        size: Option<u64>,
        reason: String,
    ) -> Outcome {
        if self.refused.as_deref() != Some(note) {
            self.refused = Some(note.to_owned());
            if let Ok(text) = note_text(note.as_bytes()) {
                let refusal = Refusal::new(now_secs(), &reason, text);
                let signature = self.signer.sign_refusal(&refusal);
                if let Err(e) = vault
                    .report_refusal(self.signer.name(), &refusal, &signature)
                    .await
                {
                    eprintln!(
                        "witness: the vault did not take the refusal: {}",
                        one_line(&e.to_string())
                    );
                }
            }
        }
        Outcome::Refused { size, reason }
    }
}

fn print(cli: &Cli, outcome: &Outcome) {
    if cli.json {
        emit(&outcome.json().to_string());
    } else {
        emit(&outcome.text());
    }
}

/// `audit witness`: one round (`--once`), or rounds until interrupted.
/// `Ok(false)`: a checkpoint was refused in a `--once` run.
pub(crate) async fn witness(cli: &Cli, args: &WitnessArgs) -> Result<bool, CliError> {
    let mut witness = Witness::load(args)?;
    if args.once {
        let vault = connect(cli).await?;
        let outcome = witness.round(&vault).await?;
        print(cli, &outcome);
        return Ok(!matches!(outcome, Outcome::Refused { .. }));
    }
    eprintln!(
        "witness {} following the vault's audit log every {:?}; Ctrl-C to stop",
        printable(witness.signer.name()),
        args.interval
    );
    let mut vault: Option<VaultClient> = None;
    let mut last: Option<Outcome> = None;
    loop {
        let result = match &vault {
            Some(v) => witness.round(v).await,
            None => match connect(cli).await {
                Ok(v) => {
                    let result = witness.round(&v).await;
                    vault = Some(v);
                    result
                }
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(outcome) => {
                // A repeated verdict is not printed again.
                if last.as_ref() != Some(&outcome) {
                    print(cli, &outcome);
                }
                last = Some(outcome);
            }
            Err(CliError::Vault(e)) => {
                eprintln!("witness: {}; trying again", one_line(&e.to_string()));
                vault = None;
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            () = tokio::time::sleep(args.interval) => {}
            Ok(()) = tokio::signal::ctrl_c() => return Ok(true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_are_bounded() {
        assert_eq!(parse_interval("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_interval("0").is_err());
        assert!(parse_interval("x").is_err());
        assert!(parse_interval("100000").is_err());
    }

    #[test]
    fn outcomes_read_as_one_line() {
        let checkpoint = Checkpoint {
            origin: "o".into(),
            size: 9,
            root: [1; 32],
        };
        let text = Outcome::Cosigned {
            checkpoint: checkpoint.clone(),
            from: Some(4),
        }
        .text();
        assert!(
            text.contains("size 9") && text.contains("consistent with size 4"),
            "{text}"
        );
        let refused = Outcome::Refused {
            size: Some(3),
            reason: "rollback:\nx".into(),
        };
        assert!(!refused.text().contains('\n'));
        assert_eq!(refused.json()["event"], "refused");
    }
}
