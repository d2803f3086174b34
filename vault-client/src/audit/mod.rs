//! An independent, offline verifier of the vault's audit log (SECURITY.md,
//! "Audit log"): an auditor checks an export without trusting the vault's own
//! code.
//! Nothing here is shared with `vault-server`.
//!
//! An export directory holds:
//!
//! - `events.jsonl`: one event a line; line `i` (0-based), without its
//!   `\n`, is exactly the bytes of leaf `i` of the log's Merkle tree. Each
//!   event is a JSON object with at least `"index": i` and `"prev"`: the
//!   hex [`leaf_hash`] of event `i - 1` (64 zeros for event 0). The other
//!   keys (time, principal, purpose, …) are not checked.
//! - `checkpoints/`: files (any names) each a C2SP signed note whose text
//!   is a C2SP tlog checkpoint: origin, tree size, base64 root, one a
//!   line ([`Checkpoint`]), signed with Ed25519 by the vault's key
//!   ([`VerifierKey`], `<name>+<hex key id>+<base64 key>`).
//!
//! [`verify_export`] re-hashes every event (RFC 6962, [`leaf_hash`],
//! [`RootBuilder`]), follows the `prev` chain, checks every checkpoint's
//! signature and root, and reports the first [`Fault`] with the event
//! index it names:
//!
//! | kind | index named |
//! |------|-------------|
//! | `malformed` | the event that does not parse or lacks `index`/`prev` |
//! | `reordered_or_missing` | the position where an event is missing, the first moved event, or an inserted event (when the next one continues the chain from the one before it) |
//! | `modified` | the event whose bytes changed (the next `prev` does not match) |
//! | `bad_signature` | the first event not anchored by an earlier good checkpoint |
//! | `malformed_checkpoint` | likewise |
//! | `truncated` | the number of events (the first missing one) |
//! | `root_mismatch` | the first event after the previous good checkpoint (the detail names the range) |
//! | `inconsistent` | the first event after the previous good checkpoint |
//! | `no_checkpoint` | 0 |
//!
//! The Merkle functions are usable on their own: [`root_from_leaf_hashes`],
//! [`verify_inclusion`] and [`verify_consistency`] (RFC 9162 §2.1.3.2 and
//! §2.1.4.2), checked against vectors computed by an independent Python
//! implementation (`tests-data/rfc6962_vectors.py`).
//!
//! ```no_run
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use vault_client::audit::{verify_export, VerifierKey};
//!
//! let key: VerifierKey = std::fs::read_to_string("vault-eu.pub")?.parse()?;
//! let report = verify_export("audit-export".as_ref(), &key)?;
//! match &report.fault {
//!     None => println!("valid: {} events", report.events),
//!     Some(fault) => println!("invalid: {fault}"),
//! }
//! # Ok(()) }
//! ```

mod cosign;
mod ledger;
mod merkle;
pub(crate) mod note;
mod verify;

pub use self::cosign::{
    cosigned_message, cosigner_key_id, note_text, Refusal, WitnessKey, WitnessSigner,
    ALG_COSIGNATURE_V1, MAX_REFUSAL_REASON,
};
pub use self::ledger::{LedgerEntry, LedgerFault, LedgerPage};
pub use self::merkle::{
    empty_root, leaf_hash, node_hash, root_from_leaf_hashes, verify_consistency, verify_inclusion,
    Hash, ProofError, RootBuilder, LEAF_PREFIX, NODE_PREFIX,
};
pub use self::note::{key_id, open_note, Checkpoint, KeyError, NoteError, VerifierKey};
pub use self::verify::{
    check_witnesses, latest_note, read_checkpoints, verify_export, verify_export_trusting,
    verify_export_with_progress, verify_log, CheckpointFile, Fault, FaultKind, Progress, ReadError,
    Report, Witnessed, CHECKPOINTS_DIR, EVENTS_FILE,
};
