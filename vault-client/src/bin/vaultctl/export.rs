//! `subject export` and `subject verify-export`: a data subject's access
//! and portability bundle, written to a file with its detached signature,
//! and checked offline.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal as _, Read as _, Write as _};
use std::path::{Path, PathBuf};

use serde_json::json;
use vault_client::export::{verify_export, VerifiedExport};
use vault_client::ExportPart;
use zeroize::Zeroizing;

use super::audit::read_key;
use super::{connect, emit, printable, Cli, CliError};

/// The width of the progress bar, in characters.
const BAR_WIDTH: u64 = 20;
/// The longest signature file read (a statement and a few signature lines).
const MAX_SIGNATURE_FILE: u64 = 16 * 1024;

/// `FILE.sig`, the default place of a bundle's signature.
pub(crate) fn signature_path(bundle: &Path) -> PathBuf {
    let mut name = bundle.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

/// `[####......] 40% 400/1000 records`
fn bar(done: u64, total: u64) -> String {
    let percent = crate::percent(done, total);
    format!(
        "{} {percent}% {done}/{total} records",
        crate::bar(percent, BAR_WIDTH)
    )
}

/// `FILE.partial`: where FILE is written until it is complete.
fn partial(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// Gives the complete file at `from` its name `to`, which must not exist
/// (a link, not a rename: a rename would replace a file made meanwhile).
fn publish(from: &Path, to: &Path) -> Result<(), CliError> {
    std::fs::hard_link(from, to).map_err(|e| {
        CliError::Io(if e.kind() == std::io::ErrorKind::AlreadyExists {
            format!("{} exists; choose a new path", to.display())
        } else {
            format!("cannot name {} as {}: {e}", from.display(), to.display())
        })
    })?;
    std::fs::remove_file(from)
        .map_err(|e| CliError::Io(format!("cannot remove {}: {e}", from.display())))
}

/// A new file readable by its owner only (it holds personal data); an
/// existing file is never overwritten.
fn create_private(path: &Path) -> Result<File, CliError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map_err(|e| {
        CliError::Io(if e.kind() == std::io::ErrorKind::AlreadyExists {
            format!("{} exists; choose a new path", path.display())
        } else {
            format!("cannot create {}: {e}", path.display())
        })
    })
}

/// `subject export SUBJECT --out FILE [--signature SIG]`: streams the
/// bundle into a new file (synced), then writes the signature next to it.
/// A failed export leaves no bundle behind.
pub(crate) async fn export(
    cli: &Cli,
    subject: &str,
    out: &Path,
    signature: Option<&Path>,
) -> Result<(), CliError> {
    let sig_path = signature.map_or_else(|| signature_path(out), Path::to_path_buf);
    if sig_path == out {
        return Err(CliError::Usage(
            "--signature must name another file than --out".into(),
        ));
    }
    if sig_path.exists() {
        return Err(CliError::Io(format!(
            "{} exists; choose a new path",
            sig_path.display()
        )));
    }
    if out.exists() {
        return Err(CliError::Io(format!(
            "{} exists; choose a new path",
            out.display()
        )));
    }
    // Both files are written under `.partial` names and take their own
    // names only when complete: an export that fails or is cut short
    // leaves no file that looks finished.
    let (out_partial, sig_partial) = (partial(out), partial(&sig_path));
    let result = async {
        let mut file = create_private(&out_partial)?;
        let written = async {
            let mut stream = connect(cli).await?.export_subject(subject).await?;
            write_bundle(&mut stream, &mut file, &out_partial).await
        }
        .await?;
        let mut sig_file = create_private(&sig_partial)?;
        sig_file
            .write_all(written.2.as_bytes())
            .and_then(|()| sig_file.sync_all())
            .map_err(|e| CliError::Io(format!("cannot write {}: {e}", sig_partial.display())))?;
        publish(&sig_partial, &sig_path)?;
        if let Err(e) = publish(&out_partial, out) {
            let _ = std::fs::remove_file(&sig_path);
            return Err(e);
        }
        Ok(written)
    }
    .await;
    let (bytes, records, _signature) = match result {
        Ok(done) => done,
        Err(e) => {
            let _ = std::fs::remove_file(&out_partial);
            let _ = std::fs::remove_file(&sig_partial);
            return Err(e);
        }
    };
    if cli.json {
        emit(
            &json!({
                "subject": subject,
                "bundle": out.display().to_string(),
                "signature": sig_path.display().to_string(),
                "bytes": bytes,
                "records": records,
            })
            .to_string(),
        );
    } else {
        emit(&format!(
            "exported {records} records of {} ({bytes} bytes) to {}\nsignature: {}\ncheck it \
             with: vaultctl subject verify-export {} --public-key FILE",
            printable(subject),
            out.display(),
            sig_path.display(),
            out.display(),
        ));
    }
    Ok(())
}

/// Writes the chunks to `file` (drawing progress on stderr when it is a
/// terminal) and syncs it; returns the bytes, records and signature.
async fn write_bundle(
    stream: &mut vault_client::SubjectExportStream,
    file: &mut File,
    path: &Path,
) -> Result<(u64, u64, String), CliError> {
    let draw = std::io::stderr().is_terminal();
    let mut drawn = false;
    let (mut bytes, mut records) = (0u64, 0u64);
    let mut signature = None;
    let finish_line = |drawn: bool| {
        if drawn {
            eprintln!();
        }
    };
    loop {
        let part = match stream.next().await {
            Ok(Some(part)) => part,
            Ok(None) => break,
            Err(e) => {
                finish_line(drawn);
                return Err(e.into());
            }
        };
        match part {
            ExportPart::Chunk {
                bytes: chunk,
                records_done,
                records_total,
            } => {
                if let Err(e) = file.write_all(&chunk) {
                    finish_line(drawn);
                    return Err(CliError::Io(format!(
                        "cannot write {}: {e}",
                        path.display()
                    )));
                }
                bytes += chunk.len() as u64;
                records = records_done;
                if draw {
                    // \x1b[K clears what a longer earlier line left behind.
                    eprint!("\r{}\x1b[K", bar(records_done, records_total));
                    let _ = std::io::stderr().flush();
                    drawn = true;
                }
            }
            ExportPart::Signature(s) => signature = Some(s),
        }
    }
    finish_line(drawn);
    let signature = signature.ok_or_else(|| {
        CliError::Vault(vault_client::Error::Protocol(
            "the export ended without its signature".into(),
        ))
    })?;
    file.sync_all()
        .map_err(|e| CliError::Io(format!("cannot write {}: {e}", path.display())))?;
    Ok((bytes, records, signature))
}

/// Reads a whole file into a wiped buffer (a bundle holds personal data).
fn read_file(path: &Path, most: Option<u64>) -> Result<Zeroizing<Vec<u8>>, CliError> {
    let io_error = |e: std::io::Error| CliError::Io(format!("cannot read {}: {e}", path.display()));
    let file = File::open(path).map_err(io_error)?;
    let size = file.metadata().map_err(io_error)?.len();
    if most.is_some_and(|m| size > m) {
        return Err(CliError::Input(format!(
            "{} is larger than a signature file can be",
            path.display()
        )));
    }
    // Sized once, so reading never leaves a copy behind in freed memory.
    let mut buf = Zeroizing::new(Vec::with_capacity(size as usize + 1));
    file.take(size + 1)
        .read_to_end(&mut buf)
        .map_err(io_error)?;
    if buf.len() as u64 != size {
        return Err(CliError::Io(format!(
            "{} changed while it was read",
            path.display()
        )));
    }
    Ok(buf)
}

/// `subject verify-export FILE --public-key KEY [--signature SIG]`
/// (offline).
pub(crate) fn verify(
    cli: &Cli,
    bundle: &Path,
    public_key: &Path,
    signature: Option<&Path>,
) -> Result<(), CliError> {
    let key = read_key(public_key)?;
    let sig_path = signature.map_or_else(|| signature_path(bundle), Path::to_path_buf);
    let sig = read_file(&sig_path, Some(MAX_SIGNATURE_FILE))?;
    let data = read_file(bundle, None)?;
    let verified = verify_export(&data, &sig, &key)
        .map_err(|e| CliError::Unverified(format!("{} does not verify: {e}", bundle.display())))?;
    if cli.json {
        emit(&verified_json(&verified).to_string());
    } else {
        emit(&verified_text(&verified));
    }
    Ok(())
}

fn verified_json(v: &VerifiedExport) -> serde_json::Value {
    let s = &v.statement;
    json!({
        "valid": true,
        "origin": s.origin,
        "subject_id": v.subject_id,
        "subject_pseudonym": s.subject_pseudonym,
        "collections": v.collections,
        "records": s.records,
        "ledger_events": s.ledger_events,
        "ledger_tree_size": v.tree_size,
        "bytes": s.bytes,
        "sha256": hex::encode(s.sha256),
    })
}

fn verified_text(v: &VerifiedExport) -> String {
    let s = &v.statement;
    format!(
        "valid: signed by {}\nsubject: {} (pseudonym {})\nrecords: {} in {}\naccess ledger: {} \
         events, each proved in the checkpoint of {} events\nbundle: {} bytes, sha256 {}",
        printable(&s.origin),
        printable(&v.subject_id),
        s.subject_pseudonym,
        s.records,
        match v.collections.len() {
            0 => "no collection".to_owned(),
            _ => printable(&v.collections.join(", ")),
        },
        s.ledger_events,
        v.tree_size,
        s.bytes,
        hex::encode(s.sha256),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_bar_fills_and_never_overflows() {
        assert_eq!(bar(0, 10), "[....................] 0% 0/10 records");
        assert_eq!(bar(5, 10), "[##########..........] 50% 5/10 records");
        assert_eq!(bar(12, 10), "[####################] 100% 12/10 records");
        assert_eq!(bar(0, 0), "[####################] 100% 0/0 records");
    }

    #[test]
    fn the_signature_goes_next_to_the_bundle() {
        assert_eq!(
            signature_path(Path::new("/tmp/alice.json")),
            Path::new("/tmp/alice.json.sig")
        );
    }
}
