//! A stand-in for the program that asks a Nitro enclave's NSM for an
//! attestation document (`[attestation] nitro_document_command`):
//! `test-nsm DIR PCR0` signs one under the test root that `TestNsm::save`
//! wrote to DIR, for the nonce and user data the vault passes
//! (`VAULT_ATTEST_NONCE`, `VAULT_ATTEST_USER_DATA`, hex), with PCR0 (hex),
//! and writes it to stdout. This machine has no enclave; the vault's verifier
//! is what the tests exercise.

use std::io::Write;
use std::process::ExitCode;

use vault_server::attest::nitro::testing::{Claims, TestNsm};

fn main() -> ExitCode {
    match run() {
        Ok(doc) => {
            let mut out = std::io::stdout().lock();
            if out.write_all(&doc).and_then(|()| out.flush()).is_err() {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("test-nsm: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<Vec<u8>, String> {
    let var = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
    let hex_var = |name: &str| hex::decode(var(name)?).map_err(|_| format!("{name} is not hex"));
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, pcr0] = args.as_slice() else {
        return Err("usage: test-nsm DIR PCR0".into());
    };
    let nsm = TestNsm::load(std::path::Path::new(dir))
        .map_err(|e| format!("loading the test NSM: {e}"))?;
    let pcr0: [u8; 48] = hex::decode(pcr0)
        .map_err(|_| "PCR0 is not hex".to_owned())?
        .try_into()
        .map_err(|_| "PCR0 is not 48 bytes".to_owned())?;
    let timestamp_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_millis() as u64;
    Ok(nsm.document(&Claims {
        pcr0,
        timestamp_ms,
        nonce: hex_var("VAULT_ATTEST_NONCE")?,
        user_data: hex_var("VAULT_ATTEST_USER_DATA")?,
    }))
}
