//! The key release gate: what this server says it is, and whether the
//! keyring's approved builds include it.
//!
//! Once custodians approve a build (`vaultctl operator approve-build`),
//! the unseal key is released, by shares or by the HSM, only to a server
//! whose evidence names an approved measurement and this region. On a
//! host without a trusted execution environment the only evidence is
//! self-reported: the SHA-384 of the server's own executable, which a
//! modified build can lie about. It is never called attested.

use std::io::Read;

use sha2::{Digest, Sha384};

use crate::keys::seal::{Measurement, SealHeader};
use crate::keys::Region;
use crate::{Error, Result};

/// What this server presents before a key is released to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evidence {
    /// Nothing: the gate refuses once any build is approved.
    None,
    /// The SHA-384 of this server's executable, as it reports it itself
    /// (no TEE): not attested.
    SelfReported(Measurement),
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

    /// `none` or `self-reported`.
    pub fn kind(&self) -> &'static str {
        match self {
            Evidence::None => "none",
            Evidence::SelfReported(_) => "self-reported",
        }
    }

    /// The measurement this server presents, if any.
    pub fn measurement(&self) -> Option<&Measurement> {
        match self {
            Evidence::None => None,
            Evidence::SelfReported(m) => Some(m),
        }
    }

    /// Whether a TEE vouches for the measurement (never, for
    /// self-reported evidence).
    pub fn attested(&self) -> bool {
        false
    }
}

/// The gate: Ok when no build is approved, or when `evidence` names an
/// approved measurement for `region`. The refusal says which measurement
/// was presented and how (`FAILED_PRECONDITION`).
pub fn release_gate(sealing: &SealHeader, evidence: &Evidence, _region: &Region) -> Result<()> {
    if sealing.approved_builds.is_empty() {
        return Ok(());
    }
    let n = sealing.approved_builds.len();
    match evidence {
        Evidence::None => Err(Error::FailedPrecondition(format!(
            "key release refused: {n} builds are approved and this server presents no \
             evidence of its build ([attestation] evidence = \"none\")"
        ))),
        Evidence::SelfReported(m) if sealing.approved_builds.contains(m) => Ok(()),
        Evidence::SelfReported(m) => Err(Error::FailedPrecondition(format!(
            "key release refused: this server's build (measurement {}, self-reported) is not \
             among the {n} approved builds",
            hex::encode(m)
        ))),
    }
}
