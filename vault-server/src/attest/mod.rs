//! The key release gate: what this server says it is, and whether the
//! keyring's approved builds include it.
//!
//! Once custodians approve a build (`vaultctl operator approve-build`),
//! the unseal key is released, by shares or by the HSM, only to a server
//! whose evidence names an approved measurement and this region. In a
//! Nitro enclave the evidence is an attestation document ([`nitro`]):
//! signed by AWS's chain, made for a nonce the gate draws each time,
//! carrying PCR0 (the image's measurement) and the region the enclave's
//! code claims. On a host without a trusted execution environment the only
//! evidence is self-reported: the SHA-384 of the server's own executable,
//! which a modified build can lie about. It is never called attested.

use std::collections::VecDeque;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

pub mod nitro;

use rand::RngCore;
use sha2::{Digest, Sha384};

use crate::keys::seal::{Measurement, SealHeader};
use crate::keys::Region;
use crate::{Error, Result};

/// What this server presents before a key is released to it.
#[derive(Debug, Clone)]
pub enum Evidence {
    /// Nothing: the gate refuses once any build is approved.
    None,
    /// The SHA-384 of this server's executable, as it reports it itself
    /// (no TEE): not attested.
    SelfReported(Measurement),
    /// Nitro Enclaves attestation documents, fresh for each release.
    Nitro(Arc<NitroEvidence>),
}

/// Where attestation documents come from: the Nitro Secure Module in an
/// enclave (a test NSM in the tests).
pub trait DocumentSource: Send + Sync {
    /// A document binding `nonce` and `user_data`.
    fn document(&self, nonce: &[u8], user_data: &[u8]) -> std::result::Result<Vec<u8>, String>;
}

/// Documents from a program run for each release: inside a Nitro enclave,
/// one that asks the NSM (`/dev/nsm`) for an attestation document. It gets
/// the nonce and the user data in hexadecimal in `VAULT_ATTEST_NONCE` and
/// `VAULT_ATTEST_USER_DATA` and writes the document's bytes (COSE_Sign1,
/// at most 16 KiB) to stdout; a non-zero exit is a refusal, its stderr's
/// first line the reason. It has `timeout` in all.
#[derive(Debug, Clone)]
pub struct CommandSource {
    /// The program (an absolute path) and its arguments.
    pub argv: Vec<String>,
    /// How long it may take, output included (10 s from the configuration).
    pub timeout: Duration,
}

/// How long a document command may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

impl DocumentSource for CommandSource {
    fn document(&self, nonce: &[u8], user_data: &[u8]) -> std::result::Result<Vec<u8>, String> {
        use std::os::unix::process::CommandExt;
        use std::process::{Command, Stdio};
        let (program, args) = self
            .argv
            .split_first()
            .ok_or("the document command is empty")?;
        // Its own process group, so a timeout kills what it started too;
        // nothing of the server's environment but the two values.
        let mut child = Command::new(program)
            .args(args)
            .env_clear()
            .env("VAULT_ATTEST_NONCE", hex::encode(nonce))
            .env("VAULT_ATTEST_USER_DATA", hex::encode(user_data))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("the document command {program} did not start: {e}"))?;
        let deadline = std::time::Instant::now() + self.timeout;
        // Both pipes are drained on threads (past their limit into the
        // void), so the program never blocks on a full pipe.
        let drain = |pipe: Option<Box<dyn Read + Send>>, limit: u64| {
            let (tx, rx) = std::sync::mpsc::channel();
            if let Some(mut pipe) = pipe {
                std::thread::spawn(move || {
                    let mut kept = Vec::new();
                    let _ = (&mut pipe).take(limit).read_to_end(&mut kept);
                    let _ = std::io::copy(&mut pipe, &mut std::io::sink());
                    let _ = tx.send(kept);
                });
            } else {
                let _ = tx.send(Vec::new());
            }
            rx
        };
        let limit = nitro::MAX_DOCUMENT_BYTES as u64 + 1;
        let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _), limit);
        let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _), 4096);
        let kill = |child: &mut std::process::Child| {
            // The whole group: the program and whatever it started.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        };
        let timed_out = || {
            format!(
                "the document command {program} took more than {} s",
                self.timeout.as_secs_f32()
            )
        };
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(None) => {
                    kill(&mut child);
                    return Err(timed_out());
                }
                Err(e) => {
                    kill(&mut child);
                    return Err(format!("waiting for the document command: {e}"));
                }
            }
        };
        let left = |now: std::time::Instant| deadline.saturating_duration_since(now);
        let Ok(out) = stdout.recv_timeout(left(std::time::Instant::now())) else {
            // Its output is held open by something it started.
            kill(&mut child);
            return Err(timed_out());
        };
        if !status.success() {
            let err = stderr
                .recv_timeout(left(std::time::Instant::now()))
                .unwrap_or_default();
            let why: String = String::from_utf8_lossy(&err)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .chars()
                .take(200)
                .map(|c| if c.is_control() { '?' } else { c })
                .collect();
            return Err(format!(
                "the document command {program} failed ({status}): {why}"
            ));
        }
        if out.len() > nitro::MAX_DOCUMENT_BYTES {
            return Err(format!(
                "the document command {program} wrote more than {} bytes",
                nitro::MAX_DOCUMENT_BYTES
            ));
        }
        Ok(out)
    }
}

/// How old a document may be when the gate checks it.
pub const MAX_DOCUMENT_AGE: Duration = Duration::from_secs(300);
/// How far ahead of this server's clock a document's time may be.
const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Nonces remembered, to name a replayed document as such.
const NONCES_KEPT: usize = 1024;

/// Nitro evidence: the verifier (its pinned root), the document source,
/// the nonces drawn so far and the last measurement verified.
pub struct NitroEvidence {
    verifier: nitro::NitroVerifier,
    source: Box<dyn DocumentSource>,
    issued: Mutex<VecDeque<[u8; 32]>>,
    last: Mutex<Option<Measurement>>,
    /// The module id of the last verified document.
    module: Mutex<Option<String>>,
}

impl std::fmt::Debug for NitroEvidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NitroEvidence")
            .field("verifier", &self.verifier)
            .finish_non_exhaustive()
    }
}

impl NitroEvidence {
    /// Documents from `source`, verified against `verifier`'s root.
    pub fn new(verifier: nitro::NitroVerifier, source: Box<dyn DocumentSource>) -> NitroEvidence {
        NitroEvidence {
            verifier,
            source,
            issued: Mutex::new(VecDeque::new()),
            last: Mutex::new(None),
            module: Mutex::new(None),
        }
    }

    fn last(&self) -> Option<Measurement> {
        *self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Draws a nonce, asks for a document and checks it: chain, signature,
    /// this nonce, age, region claim. Returns PCR0, verified.
    fn attest(&self, region: &Region, now: SystemTime) -> std::result::Result<Measurement, String> {
        let mut nonce = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let claim = region_claim(region);
        let document = self
            .source
            .document(&nonce, &claim)
            .map_err(|e| format!("no attestation document could be had: {e}"))?;
        let issued_before = {
            let mut issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
            let before: Vec<[u8; 32]> = issued.iter().copied().collect();
            if issued.len() >= NONCES_KEPT {
                issued.pop_front();
            }
            issued.push_back(nonce);
            before
        };
        let att = self.verifier.verify(&document).map_err(|e| e.to_string())?;
        if att.nonce != nonce {
            if issued_before.iter().any(|n| n[..] == att.nonce[..]) {
                return Err(
                    "the attestation document carries a nonce drawn for an earlier \
                            release (a re-used, replayed document)"
                        .into(),
                );
            }
            return Err("the attestation document does not carry this release's nonce".into());
        }
        let now_ms = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let max_age = MAX_DOCUMENT_AGE.as_millis() as u64;
        if att.timestamp_ms.saturating_add(max_age) < now_ms {
            return Err(format!(
                "the attestation document has expired: made {} s ago, more than {} s",
                (now_ms - att.timestamp_ms) / 1000,
                MAX_DOCUMENT_AGE.as_secs()
            ));
        }
        if att.timestamp_ms > now_ms.saturating_add(CLOCK_SKEW.as_millis() as u64) {
            return Err("the attestation document is dated ahead of this server's clock".into());
        }
        if att.user_data != claim {
            let shown: String = String::from_utf8_lossy(&att.user_data)
                .chars()
                .take(64)
                .map(|c| if c.is_control() { '?' } else { c })
                .collect();
            return Err(format!(
                "the attestation document claims \"{shown}\"; this server serves region {region} \
                 (a wrong region claim)"
            ));
        }
        // Attested, approved or not: the status shows it.
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(att.pcr0);
        let module: String = att
            .module_id
            .chars()
            .take(64)
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        *self.module.lock().unwrap_or_else(|p| p.into_inner()) = Some(module);
        Ok(att.pcr0)
    }
}

/// How every refusal of the gate begins.
pub const REFUSED: &str = "key release refused";

/// The user data an enclave's vault puts in its documents.
pub fn region_claim(region: &Region) -> Vec<u8> {
    format!("vault-region={region}").into_bytes()
}

impl Evidence {
    /// The SHA-384 of the running executable.
    pub fn self_reported() -> Result<Evidence> {
        let exe =
            std::env::current_exe().map_err(|e| Error::io("finding the server's executable", e))?;
        let mut f = std::fs::File::open(&exe)
            .map_err(|e| Error::io(format!("reading {}", exe.display()), e))?;
        let mut h = Sha384::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f
                .read(&mut buf)
                .map_err(|e| Error::io(format!("reading {}", exe.display()), e))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(Evidence::SelfReported(h.finalize().into()))
    }

    /// `none`, `self-reported` or `nitro`.
    pub fn kind(&self) -> &'static str {
        match self {
            Evidence::None => "none",
            Evidence::SelfReported(_) => "self-reported",
            Evidence::Nitro(_) => "nitro",
        }
    }

    /// The measurement this server presents, if any (Nitro: the last
    /// PCR0 verified, none before the first release).
    pub fn measurement(&self) -> Option<Measurement> {
        match self {
            Evidence::None => None,
            Evidence::SelfReported(m) => Some(*m),
            Evidence::Nitro(n) => n.last(),
        }
    }

    /// With Nitro: the pinned root's SHA-256, and the enclave (module id)
    /// of the last verified document.
    pub fn identity(&self) -> Option<String> {
        let Evidence::Nitro(n) = self else {
            return None;
        };
        let module = n.module.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Some(format!(
            "root sha256:{}{}",
            hex::encode(n.verifier.root_fingerprint()),
            module.map_or(String::new(), |m| format!("; enclave {m}"))
        ))
    }

    /// Whether a TEE vouches for the measurement: only a verified Nitro
    /// document; never self-reported evidence.
    pub fn attested(&self) -> bool {
        match self {
            Evidence::Nitro(n) => n.last().is_some(),
            _ => false,
        }
    }
}

/// The gate: Ok when no build is approved, or when `evidence` names an
/// approved measurement for `region`. The refusal says which measurement
/// was presented and how (`FAILED_PRECONDITION`).
pub fn release_gate(sealing: &SealHeader, evidence: &Evidence, region: &Region) -> Result<()> {
    if sealing.approved_builds.is_empty() {
        return Ok(());
    }
    let n = sealing.approved_builds.len();
    match evidence {
        Evidence::None => Err(Error::FailedPrecondition(format!(
            "{REFUSED}: {n} builds are approved and this server presents no \
             evidence of its build ([attestation] evidence = \"none\")"
        ))),
        Evidence::SelfReported(m) if sealing.approved_builds.contains(m) => Ok(()),
        Evidence::SelfReported(m) => Err(Error::FailedPrecondition(format!(
            "{REFUSED}: this server's build (measurement {}, self-reported) is not \
             among the {n} approved builds",
            hex::encode(m)
        ))),
        Evidence::Nitro(nitro) => {
            let pcr0 = nitro.attest(region, SystemTime::now()).map_err(|e| {
                // Attested only by the last document, verified.
                *nitro.last.lock().unwrap_or_else(|p| p.into_inner()) = None;
                Error::FailedPrecondition(format!("{REFUSED}: {e}"))
            })?;
            if !sealing.approved_builds.contains(&pcr0) {
                return Err(Error::FailedPrecondition(format!(
                    "{REFUSED}: this enclave's image (PCR0 {}, attested) is not among \
                     the {n} approved builds (an unknown measurement)",
                    hex::encode(pcr0)
                )));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(script: &str, timeout_ms: u64) -> std::result::Result<Vec<u8>, String> {
        CommandSource {
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            timeout: Duration::from_millis(timeout_ms),
        }
        .document(&[0xab; 4], b"vault-region=eu")
    }

    #[test]
    fn the_document_command_gets_the_nonce_and_nothing_else_of_the_environment() {
        let out = run(
            "printf '%s %s %s' \"$VAULT_ATTEST_NONCE\" \"$VAULT_ATTEST_USER_DATA\" \"${HOME:-none}\"",
            5000,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("abababab {} none", hex::encode("vault-region=eu"))
        );
    }

    #[test]
    fn a_failing_slow_or_verbose_document_command_is_refused_with_why() {
        let e = run("echo 'no NSM here' >&2; exit 3", 5000).unwrap_err();
        assert!(e.contains("failed") && e.contains("no NSM here"), "{e}");
        // More than a pipe holds: drained, then refused for its size.
        let e = run("/usr/bin/head -c 200000 /dev/zero", 5000).unwrap_err();
        assert!(e.contains("wrote more than 16384 bytes"), "{e}");
        let started = std::time::Instant::now();
        let e = run("/bin/sleep 5", 100).unwrap_err();
        assert!(e.contains("took more than"), "{e}");
        // Gone, while something it started still holds its output: the
        // deadline holds all the same.
        let e = run("/bin/sleep 5 & exit 0", 100).unwrap_err();
        assert!(e.contains("took more than"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(4));
        let e = CommandSource {
            argv: vec!["/nonexistent/nsm".into()],
            timeout: COMMAND_TIMEOUT,
        }
        .document(&[1], b"x")
        .unwrap_err();
        assert!(e.contains("did not start"), "{e}");
    }
}
