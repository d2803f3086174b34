//! `vaultctl audit …`: the auditor's side of the audit log.
//!
//! `audit verify` checks an exported log offline with the client's own,
//! independent implementation ([`vault_client::audit`]): it needs no vault,
//! no token and no trust in the vault's code, only the vault's checkpoint
//! verifier key, obtained out of band.

use std::io::{IsTerminal as _, Read as _, Write as _};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use vault_client::audit::{
    verify_export_with_progress, Progress, Report, VerifierKey, EVENTS_FILE,
};

use super::{emit, one_line, Cli, CliError};

/// An events file at least this large gets a progress bar (on a terminal).
const LARGE_LOG_BYTES: u64 = 8 * 1024 * 1024;

/// The width of the progress bar, in characters.
const BAR_WIDTH: u64 = 20;

/// The most a verifier key file may hold (a key is about 60 characters).
const MAX_KEY_FILE: u64 = 4096;

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Verify an exported audit log offline: every event's hash chain, and
    /// its Merkle roots against the checkpoints signed by --public-key.
    /// Prints one line: `valid: …` (exit 0) or `invalid: event I: KIND: …`
    /// (exit 1), naming the first fault.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The export directory: events.jsonl and checkpoints/.
    dir: PathBuf,

    /// The vault's checkpoint verifier key, a file of one line
    /// `<name>+<key id hex>+<base64 key>` (C2SP signed-note key).
    #[arg(long, value_name = "FILE")]
    public_key: PathBuf,
}

pub(crate) fn run_audit(cli: &Cli, command: &AuditCommand) -> Result<bool, CliError> {
    match command {
        AuditCommand::Verify(args) => {
            let key = read_key(&args.public_key)?;
            let report = verify(&args.dir, &key)?;
            if cli.json {
                emit(&report.to_json().to_string());
            } else {
                emit(&report_text(&report));
            }
            Ok(report.is_valid())
        }
    }
}

fn read_key(path: &Path) -> Result<VerifierKey, CliError> {
    let io_error = |e: std::io::Error| {
        CliError::Io(format!(
            "cannot read the public key file {}: {e}",
            path.display()
        ))
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(io_error)?
        .take(MAX_KEY_FILE)
        .read_to_string(&mut text)
        .map_err(io_error)?;
    text.parse()
        .map_err(|e| CliError::Input(format!("public key file {}: {e}", path.display())))
}

/// Verifies, with a progress bar on stderr when it is a terminal and the
/// log is large.
fn verify(dir: &Path, key: &VerifierKey) -> Result<Report, CliError> {
    let total = std::fs::metadata(dir.join(EVENTS_FILE))
        .map(|m| m.len())
        .unwrap_or(0);
    let draw = total >= LARGE_LOG_BYTES && std::io::stderr().is_terminal();
    let mut shown: Option<u64> = None;
    let result = verify_export_with_progress(dir, key, |progress| {
        if !draw {
            return;
        }
        let percent = percent(progress.bytes, total);
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
    result.map_err(|e| CliError::Io(e.to_string()))
}

fn percent(done: u64, total: u64) -> u64 {
    if total == 0 {
        return 100;
    }
    (u128::from(done.min(total)) * 100 / u128::from(total)) as u64
}

fn progress_bar(progress: &Progress, total: u64) -> String {
    let percent = percent(progress.bytes, total);
    let filled = percent * BAR_WIDTH / 100;
    let bar: String = (0..BAR_WIDTH)
        .map(|i| if i < filled { '#' } else { '.' })
        .collect();
    format!("[{bar}] {percent}% {} events verified", progress.events)
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
    fn progress_bar_text() {
        let progress = Progress {
            events: 1000,
            bytes: 50,
        };
        assert_eq!(
            progress_bar(&progress, 100),
            "[##########..........] 50% 1000 events verified"
        );
        assert_eq!(percent(5, 0), 100);
        assert_eq!(percent(200, 100), 100);
        assert_eq!(percent(u64::MAX - 1, u64::MAX), 99);
    }
}
