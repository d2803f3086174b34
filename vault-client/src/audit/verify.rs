//! The offline verification of an exported audit log: the events' hash
//! chain and Merkle roots against the signed checkpoints.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Map, Value as Json};

use super::cosign::WitnessKey;
use super::merkle::{leaf_hash, Hash, RootBuilder};
use super::note::{Checkpoint, NoteError, VerifierKey};

/// The events file of an export directory.
pub const EVENTS_FILE: &str = "events.jsonl";

/// The checkpoints folder of an export directory.
pub const CHECKPOINTS_DIR: &str = "checkpoints";

/// The most bytes a checkpoint file may have (a checkpoint is a few
/// hundred bytes).
const MAX_CHECKPOINT_BYTES: u64 = 64 * 1024;

/// What is wrong with a log; [`FaultKind::as_str`] gives the stable name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FaultKind {
    /// Event `index` is not a JSON object with a `u64` `index` and a
    /// 64-hex-digit `prev`.
    Malformed,
    /// Event `index` is not the one that belongs there: an event is
    /// missing at this position, or events were moved; or the event at
    /// `index` was inserted (the next one continues the chain from the one
    /// before it).
    ReorderedOrMissing,
    /// Event `index`'s bytes changed: the next event's `prev` is not its
    /// leaf hash.
    Modified,
    /// A checkpoint is not signed by the verifier key, or its signature by
    /// that key does not verify. `index`: the first event it would anchor.
    BadSignature,
    /// A checkpoint file is not a signed tlog checkpoint.
    MalformedCheckpoint,
    /// A checkpoint has more leaves than the log has events. `index`: the
    /// number of events.
    Truncated,
    /// The root of a checkpoint's first `size` events is not its root.
    /// `index`: the first event after the previous good checkpoint.
    RootMismatch,
    /// Two checkpoints disagree: another origin, or the same size with
    /// another root (a fork).
    Inconsistent,
    /// No checkpoint: nothing anchors the log.
    NoCheckpoint,
    /// No checkpoint is cosigned by as many of the witness keys as
    /// required (`index` 0).
    NotWitnessed,
}

impl FaultKind {
    /// The snake_case name: `malformed`, `reordered_or_missing`,
    /// `modified`, `bad_signature`, `malformed_checkpoint`, `truncated`,
    /// `root_mismatch`, `inconsistent`, `no_checkpoint` or
    /// `not_witnessed`.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Malformed => "malformed",
            FaultKind::ReorderedOrMissing => "reordered_or_missing",
            FaultKind::Modified => "modified",
            FaultKind::BadSignature => "bad_signature",
            FaultKind::MalformedCheckpoint => "malformed_checkpoint",
            FaultKind::Truncated => "truncated",
            FaultKind::RootMismatch => "root_mismatch",
            FaultKind::Inconsistent => "inconsistent",
            FaultKind::NoCheckpoint => "no_checkpoint",
            FaultKind::NotWitnessed => "not_witnessed",
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The first fault found in a log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fault {
    /// The (0-based) index of the event the fault names; for a checkpoint
    /// fault, the first event not anchored by an earlier good checkpoint.
    pub index: u64,
    /// What is wrong.
    pub kind: FaultKind,
    /// In words, one line.
    pub detail: String,
}

impl Fault {
    fn new(index: u64, kind: FaultKind, detail: impl Into<String>) -> Self {
        Self {
            index,
            kind,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "event {}: {}: {}", self.index, self.kind, self.detail)
    }
}

/// The outcome of verifying a log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The number of events (lines) in the log.
    pub events: u64,
    /// The number of checkpoint files.
    pub checkpoints: usize,
    /// The first fault, if any.
    pub fault: Option<Fault>,
    /// The largest good checkpoint, when the log is valid.
    #[serde(skip)]
    pub latest: Option<Checkpoint>,
    /// The largest checkpoint the witnesses cosigned, when they were
    /// checked ([`check_witnesses`]).
    pub witnessed: Option<Witnessed>,
}

/// The largest checkpoint enough witnesses cosigned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Witnessed {
    /// Its tree size: the events it covers are witnessed.
    pub tree_size: u64,
    /// The names of the witnesses whose cosignatures verify on it.
    pub witnesses: Vec<String>,
    /// The events after it (signed by the vault alone, if at all).
    pub unwitnessed_events: u64,
}

/// How far in the future a cosignature's time may be (clocks differ).
const FUTURE_SLACK_SECS: u64 = 600;

/// Checks, on a valid `report`, that a checkpoint among `files` (the
/// export's own, which the report verified: not checkpoints the auditor
/// trusted from elsewhere) is cosigned by at least `needed` of `witnesses`
/// (distinct public keys; a cosignature whose time is more than ten
/// minutes after `now`, in seconds since the Unix epoch, does not count),
/// and, with `max_unwitnessed`, that at most that many events follow it.
/// Sets `report.witnessed` to the largest such checkpoint, or the fault
/// `not_witnessed`. A report that is already invalid is left as it is.
pub fn check_witnesses(
    report: &mut Report,
    files: &[CheckpointFile],
    key: &VerifierKey,
    witnesses: &[WitnessKey],
    needed: usize,
    max_unwitnessed: Option<u64>,
    now: u64,
) {
    if !report.is_valid() {
        return;
    }
    // One key under two names is one witness.
    let mut distinct: Vec<&WitnessKey> = Vec::new();
    for witness in witnesses {
        if !distinct
            .iter()
            .any(|w| w.public_key() == witness.public_key())
        {
            distinct.push(witness);
        }
    }
    let mut best: Option<Witnessed> = None;
    let mut most = 0;
    for file in files {
        let Ok(checkpoint) = Checkpoint::open(&file.bytes, key) else {
            continue;
        };
        let names: Vec<String> = distinct
            .iter()
            .filter(|w| {
                w.cosignature_time(&file.bytes)
                    .is_ok_and(|t| t <= now.saturating_add(FUTURE_SLACK_SECS))
            })
            .map(|w| w.name().to_owned())
            .collect();
        most = most.max(names.len());
        if names.len() >= needed && best.as_ref().is_none_or(|b| b.tree_size < checkpoint.size) {
            best = Some(Witnessed {
                tree_size: checkpoint.size,
                witnesses: names,
                unwitnessed_events: report.events.saturating_sub(checkpoint.size),
            });
        }
    }
    if let (Some(best), Some(most)) = (&best, max_unwitnessed) {
        if best.unwitnessed_events > most {
            report.fault = Some(Fault::new(
                best.tree_size,
                FaultKind::NotWitnessed,
                format!(
                    "the last {} events (from {}) are after the largest witnessed checkpoint; \
                     at most {most} may be",
                    best.unwitnessed_events, best.tree_size
                ),
            ));
        }
    }
    if best.is_none() {
        report.fault = Some(Fault::new(
            0,
            FaultKind::NotWitnessed,
            format!(
                "no checkpoint is cosigned by {needed} of the {} witness key(s) (at most {most} \
                 on one)",
                distinct.len()
            ),
        ));
    }
    report.witnessed = best;
}

impl Report {
    /// Whether the log verified: no fault.
    pub fn is_valid(&self) -> bool {
        self.fault.is_none()
    }

    /// `{"valid": bool, "events": n, "checkpoints": k, "fault": {"index",
    /// "kind", "detail"} | null}`, and `"witnessed": {"tree_size",
    /// "witnesses"}` when witnesses were checked and enough cosigned.
    pub fn to_json(&self) -> Json {
        let mut json = serde_json::json!({
            "valid": self.is_valid(),
            "events": self.events,
            "checkpoints": self.checkpoints,
            "fault": self.fault,
        });
        if let Some(witnessed) = &self.witnessed {
            json["witnessed"] = serde_json::json!(witnessed);
        }
        json
    }
}

/// How far verification is, for a progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Events read so far.
    pub events: u64,
    /// Bytes of the events file read so far.
    pub bytes: u64,
}

/// A failure to read the export (as opposed to a fault in the log).
#[derive(Debug, thiserror::Error)]
#[error("cannot read {}: {source}", path.display())]
pub struct ReadError {
    /// The file or folder.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: io::Error,
}

/// One checkpoint file, as read from the export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointFile {
    /// Its name, for messages.
    pub name: String,
    /// Its bytes: a signed note.
    pub bytes: Vec<u8>,
}

/// Reads the checkpoint files of `dir/checkpoints` (every regular file; a
/// missing folder has none).
pub fn read_checkpoints(dir: &Path) -> Result<Vec<CheckpointFile>, ReadError> {
    let folder = dir.join(CHECKPOINTS_DIR);
    let read_error = |path: &Path, source| ReadError {
        path: path.to_owned(),
        source,
    };
    let entries = match std::fs::read_dir(&folder) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(read_error(&folder, e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| read_error(&folder, e))?;
        let path = entry.path();
        let metadata = std::fs::metadata(&path).map_err(|e| read_error(&path, e))?;
        if !metadata.is_file() {
            continue;
        }
        if metadata.len() > MAX_CHECKPOINT_BYTES {
            // Not a checkpoint; kept (empty) so that it is reported.
            files.push(CheckpointFile {
                name: entry.file_name().to_string_lossy().into_owned(),
                bytes: Vec::new(),
            });
            continue;
        }
        let bytes = std::fs::read(&path).map_err(|e| read_error(&path, e))?;
        files.push(CheckpointFile {
            name: entry.file_name().to_string_lossy().into_owned(),
            bytes,
        });
    }
    Ok(files)
}

/// Verifies the export in `dir` (`events.jsonl` and `checkpoints/`)
/// against `key`; see [`verify_log`].
pub fn verify_export(dir: &Path, key: &VerifierKey) -> Result<Report, ReadError> {
    verify_export_with_progress(dir, key, |_| {})
}

/// [`verify_export`], calling `progress` now and then while reading the
/// events.
pub fn verify_export_with_progress(
    dir: &Path,
    key: &VerifierKey,
    progress: impl FnMut(Progress),
) -> Result<Report, ReadError> {
    verify_export_trusting(dir, key, &[], progress)
}

/// [`verify_export_with_progress`], checking the export against
/// `trusted` checkpoints too: ones the auditor saved from an earlier
/// verification (or got from a witness). They are checked like the
/// export's own, so an export that forks from one (another root at its
/// size) fails as `root_mismatch` or `inconsistent`, and one that rolls it
/// back (fewer events than it names) as `truncated`. Name them so that
/// faults say which they are (`trusted …`).
pub fn verify_export_trusting(
    dir: &Path,
    key: &VerifierKey,
    trusted: &[CheckpointFile],
    progress: impl FnMut(Progress),
) -> Result<Report, ReadError> {
    let mut checkpoints = read_checkpoints(dir)?;
    checkpoints.extend(trusted.iter().cloned());
    let path = dir.join(EVENTS_FILE);
    let file = File::open(&path).map_err(|source| ReadError {
        path: path.clone(),
        source,
    })?;
    verify_log(BufReader::new(file), &checkpoints, key, progress)
        .map_err(|source| ReadError { path, source })
}

/// The signed note of `report`'s latest good checkpoint among `files` (the
/// export's and the trusted ones), to keep as the next run's trusted one.
pub fn latest_note<'a>(
    report: &Report,
    files: impl IntoIterator<Item = &'a CheckpointFile>,
    key: &VerifierKey,
) -> Option<&'a [u8]> {
    let latest = report.latest.as_ref()?;
    files
        .into_iter()
        .find(|f| Checkpoint::open(&f.bytes, key).as_ref() == Ok(latest))
        .map(|f| f.bytes.as_slice())
}

/// A checkpoint file, opened as far as it goes, in the order it is checked.
#[derive(Debug, Clone)]
struct Pending<'a> {
    /// The size it states (unverified; 0 if it states none), its sort key.
    claimed_size: u64,
    name: &'a str,
    opened: Result<Checkpoint, NoteError>,
}

/// The running state of a verification.
struct Verifier<'a> {
    checkpoints: Vec<Pending<'a>>,
    /// The next checkpoint to check.
    next: usize,
    /// The last good checkpoint.
    good: Option<Checkpoint>,
    tree: RootBuilder,
}

impl Verifier<'_> {
    /// The first event no good checkpoint anchors yet.
    fn anchored(&self) -> u64 {
        self.good.as_ref().map_or(0, |c| c.size)
    }

    /// Checks every checkpoint that states at most `events` leaves, now
    /// that the first `events` events are in the tree (all of them, at the
    /// end of the log: `at_end`).
    fn check_checkpoints(&mut self, events: u64, at_end: bool) -> Option<Fault> {
        while let Some(pending) = self.checkpoints.get(self.next) {
            if pending.claimed_size > events && !at_end {
                return None;
            }
            self.next += 1;
            let from = self.anchored();
            let name = pending.name;
            let checkpoint = match &pending.opened {
                Ok(checkpoint) => checkpoint,
                Err(e @ (NoteError::NotSigned(_) | NoteError::BadSignature(_))) => {
                    return Some(Fault::new(
                        from,
                        FaultKind::BadSignature,
                        format!("checkpoint {name} (size {}): {e}", pending.claimed_size),
                    ));
                }
                Err(e) => {
                    return Some(Fault::new(
                        from,
                        FaultKind::MalformedCheckpoint,
                        format!("checkpoint {name}: {e}"),
                    ));
                }
            };
            let size = checkpoint.size;
            if let Some(good) = &self.good {
                if good.origin != checkpoint.origin {
                    return Some(Fault::new(
                        from,
                        FaultKind::Inconsistent,
                        format!(
                            "checkpoint {name} (size {size}) is for origin {:?}, an earlier one for {:?}",
                            checkpoint.origin, good.origin
                        ),
                    ));
                }
            }
            if size > events {
                return Some(Fault::new(
                    events,
                    FaultKind::Truncated,
                    format!(
                        "checkpoint {name} is signed for {size} events, the log has {events}: \
                         events {events}..{} are missing",
                        size - 1
                    ),
                ));
            }
            if self.tree.root() != checkpoint.root {
                let fault = match &self.good {
                    Some(good) if good.size == size => Fault::new(
                        from,
                        FaultKind::Inconsistent,
                        format!(
                            "two checkpoints of size {size} with different roots (a fork); \
                             {name} does not match the events"
                        ),
                    ),
                    _ => Fault::new(
                        from,
                        FaultKind::RootMismatch,
                        format!(
                            "the first {size} events do not have the root of checkpoint \
                             {name}: an event in {from}..{} was changed, inserted or removed",
                            size.saturating_sub(1)
                        ),
                    ),
                };
                return Some(fault);
            }
            self.good = Some(checkpoint.clone());
        }
        None
    }
}

/// One event's fields that the verifier checks.
struct EventHeader {
    index: u64,
    prev: Hash,
}

/// Reads `index` and `prev` of one leaf; `Err` says what is malformed.
fn parse_event(leaf: &[u8]) -> Result<EventHeader, String> {
    let object: Map<String, Json> =
        serde_json::from_slice(leaf).map_err(|e| format!("not a JSON object: {e}"))?;
    let index = object
        .get("index")
        .ok_or("no `index`")?
        .as_u64()
        .ok_or("`index` is not an unsigned integer")?;
    let prev = object
        .get("prev")
        .ok_or("no `prev`")?
        .as_str()
        .ok_or("`prev` is not a string")?;
    let prev: Hash = (prev.len() == 64)
        .then(|| hex::decode(prev).ok())
        .flatten()
        .and_then(|p| p.try_into().ok())
        .ok_or("`prev` is not 64 hex digits")?;
    Ok(EventHeader { index, prev })
}

/// How often (in events) `progress` is called.
const PROGRESS_EVERY: u64 = 4096;

/// Verifies a log: `events` holds one event a line (the line without its
/// `\n` is the leaf), `checkpoints` the signed checkpoint notes; only
/// checkpoint signature lines by `key` count.
///
/// Event `i` must be a JSON object with `"index": i` and `"prev"`, the hex
/// leaf hash of event `i - 1` (64 zeros for the first). Checkpoints are
/// taken in the order of the size they state; each must be signed by
/// `key`, state the origin of the first, have at most as many leaves as
/// the log has events, and have the RFC 6962 root of the log's first
/// `size` events. At least one checkpoint is needed.
///
/// The first fault, in the order of the events, is reported (a checkpoint
/// is checked once the events before it are, including the `prev` of the
/// event after it); reading goes on to count the events. Errors are I/O
/// errors only.
pub fn verify_log<R: BufRead>(
    events: R,
    checkpoints: &[CheckpointFile],
    key: &VerifierKey,
    progress: impl FnMut(Progress),
) -> io::Result<Report> {
    verify_opened(events, open_checkpoints(checkpoints, key), progress)
}

/// Opens every checkpoint file with `key`, in the order they are checked:
/// by the size they state, then by name.
fn open_checkpoints<'a>(checkpoints: &'a [CheckpointFile], key: &VerifierKey) -> Vec<Pending<'a>> {
    let mut pending: Vec<Pending<'_>> = checkpoints
        .iter()
        .map(|file| Pending {
            claimed_size: Checkpoint::claimed_size(&file.bytes).unwrap_or(0),
            name: &file.name,
            opened: Checkpoint::open(&file.bytes, key),
        })
        .collect();
    pending.sort_by(|a, b| {
        a.claimed_size
            .cmp(&b.claimed_size)
            .then_with(|| a.name.cmp(b.name))
    });
    pending
}

/// [`verify_log`] with the checkpoints opened.
fn verify_opened<R: BufRead>(
    mut events: R,
    pending: Vec<Pending<'_>>,
    mut progress: impl FnMut(Progress),
) -> io::Result<Report> {
    let files = pending.len();
    let mut verifier = Verifier {
        checkpoints: pending,
        next: 0,
        good: None,
        tree: RootBuilder::new(),
    };

    let mut fault: Option<Fault> = None;
    let mut count: u64 = 0;
    let mut bytes: u64 = 0;
    // Leaf hashes of events i - 1 and i - 2.
    let mut previous: Hash = [0; 32];
    let mut before_previous: Hash = [0; 32];
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = events.read_until(b'\n', &mut line)?;
        if read == 0 {
            break;
        }
        bytes += read as u64;
        let i = count;
        count += 1;
        if count.is_multiple_of(PROGRESS_EVERY) {
            progress(Progress {
                events: count,
                bytes,
            });
        }
        if fault.is_some() {
            continue;
        }
        let leaf = line.strip_suffix(b"\n").unwrap_or(&line);

        // A fault of this event that names it (index i), or the one
        // before (i - 1), which the checkpoints of size i must not hide.
        let event_fault = match parse_event(leaf) {
            Err(why) => Some(Fault::new(i, FaultKind::Malformed, why)),
            Ok(event) if event.index != i => {
                // The event of the position before (i - 1) was inserted, if
                // this one continues the chain from the one before it.
                if i >= 1 && event.index == i - 1 && event.prev == before_previous {
                    let from = match i {
                        1 => "the start".to_owned(),
                        _ => format!("event {}", i - 2),
                    };
                    Some(Fault::new(
                        i - 1,
                        FaultKind::ReorderedOrMissing,
                        format!(
                            "event {} was inserted: the next event says index {} and \
                             continues the chain from {from}",
                            i - 1,
                            i - 1,
                        ),
                    ))
                } else {
                    Some(Fault::new(
                        i,
                        FaultKind::ReorderedOrMissing,
                        format!(
                            "the event at position {i} says index {}: an event is missing \
                             here or events were moved",
                            event.index
                        ),
                    ))
                }
            }
            Ok(event) if event.prev != previous => Some(if i == 0 {
                Fault::new(
                    0,
                    FaultKind::Modified,
                    "event 0's `prev` is not 64 zeros: its bytes changed",
                )
            } else {
                Fault::new(
                    i - 1,
                    FaultKind::Modified,
                    format!(
                        "event {}'s leaf hash is not the `prev` of event {i}: its bytes changed",
                        i - 1
                    ),
                )
            }),
            Ok(_) => None,
        };
        match event_fault {
            Some(f) if f.index < i => fault = Some(f),
            other => {
                fault = verifier.check_checkpoints(i, false).or(other);
            }
        }
        if fault.is_some() {
            continue;
        }
        let hash = leaf_hash(leaf);
        verifier.tree.push(hash);
        before_previous = previous;
        previous = hash;
    }
    progress(Progress {
        events: count,
        bytes,
    });

    if fault.is_none() {
        fault = verifier.check_checkpoints(count, true);
    }
    if fault.is_none() && verifier.good.is_none() {
        fault = Some(Fault::new(
            0,
            FaultKind::NoCheckpoint,
            "no signed checkpoint anchors the log",
        ));
    }
    let latest = if fault.is_none() { verifier.good } else { None };
    Ok(Report {
        events: count,
        checkpoints: files,
        fault,
        latest,
        witnessed: None,
    })
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use ed25519_dalek::SigningKey;
    use serde_json::json;

    use super::super::merkle::root_from_leaf_hashes;
    use super::super::note::tests::{signature_line, signed, signing_key, verifier};
    use super::*;

    const ORIGIN: &str = "vault.example/eu/audit";
    const KEY_NAME: &str = "vault-eu";

    /// An exported log, built with this module's own hashing.
    #[derive(Clone)]
    struct Log {
        key: SigningKey,
        /// The events, one JSON object each (no newline).
        lines: Vec<String>,
        checkpoints: Vec<CheckpointFile>,
    }

    fn event(i: u64, prev: &Hash) -> Json {
        json!({
            "index": i,
            "prev": hex::encode(prev),
            "time": format!("2025-01-01T00:00:{:02}Z", i % 60),
            "principal": "spiffe://eu.example/support",
            "purpose": "support-ticket",
            "operation": if i.is_multiple_of(3) { "put" } else { "get" },
            "collection": "users",
            "record": hex::encode(leaf_hash(&i.to_be_bytes())),
            "fields": ["email", "name"],
            "decision": "allow",
            "bytes": 100 + i,
        })
    }

    /// Rewrites every event's `index` and `prev` so that the chain holds.
    fn rechain(lines: &mut [String]) {
        let mut prev = [0u8; 32];
        for (i, line) in lines.iter_mut().enumerate() {
            let mut object: Map<String, Json> = serde_json::from_str(line).unwrap();
            object.insert("index".into(), json!(i));
            object.insert("prev".into(), json!(hex::encode(prev)));
            *line = Json::Object(object).to_string();
            prev = leaf_hash(line.as_bytes());
        }
    }

    fn root_of(lines: &[String]) -> Hash {
        let hashes: Vec<Hash> = lines.iter().map(|l| leaf_hash(l.as_bytes())).collect();
        root_from_leaf_hashes(&hashes)
    }

    impl Log {
        /// `events` chained events, checkpoints signed at `sizes`.
        fn new(events: u64, sizes: &[u64]) -> Self {
            let mut lines = Vec::new();
            let mut prev = [0u8; 32];
            for i in 0..events {
                let line = event(i, &prev).to_string();
                prev = leaf_hash(line.as_bytes());
                lines.push(line);
            }
            let mut log = Self {
                key: signing_key(),
                lines,
                checkpoints: Vec::new(),
            };
            for &size in sizes {
                log.sign(size);
            }
            log
        }

        fn checkpoint(&self, size: u64) -> Checkpoint {
            Checkpoint {
                origin: ORIGIN.into(),
                size,
                root: root_of(&self.lines[..size as usize]),
            }
        }

        /// Adds a checkpoint of the first `size` events, signed by the key.
        fn sign(&mut self, size: u64) {
            let note = signed(&self.checkpoint(size), KEY_NAME, &self.key);
            self.add(&format!("checkpoint-{size:08}"), note.into_bytes());
        }

        fn add(&mut self, name: &str, bytes: Vec<u8>) {
            self.checkpoints.retain(|c| c.name != name);
            self.checkpoints.push(CheckpointFile {
                name: name.into(),
                bytes,
            });
        }

        fn events_file(&self) -> String {
            self.lines.iter().map(|l| format!("{l}\n")).collect()
        }

        fn verify_bytes(&self, events: &[u8]) -> Report {
            let key = verifier(KEY_NAME, &self.key);
            verify_log(Cursor::new(events), &self.checkpoints, &key, |_| {}).unwrap()
        }

        fn verify(&self) -> Report {
            self.verify_bytes(self.events_file().as_bytes())
        }

        /// The fault, which there must be.
        fn fault(&self) -> Fault {
            let report = self.verify();
            match report.fault {
                Some(fault) => fault,
                None => panic!("no fault: {report:?}"),
            }
        }

        fn edit(&mut self, i: usize, key: &str, value: Json) {
            let mut object: Map<String, Json> = serde_json::from_str(&self.lines[i]).unwrap();
            object.insert(key.into(), value);
            self.lines[i] = Json::Object(object).to_string();
        }
    }

    fn assert_fault(fault: &Fault, index: u64, kind: FaultKind) {
        assert_eq!((fault.index, fault.kind), (index, kind), "{fault}");
        assert!(!fault.detail.contains('\n'), "{fault}");
    }

    #[test]
    fn an_untouched_log_verifies() {
        let log = Log::new(20, &[5, 10, 15, 20]);
        let report = log.verify();
        assert_eq!(report.fault, None);
        assert!(report.is_valid());
        assert_eq!(report.events, 20);
        assert_eq!(report.checkpoints, 4);
        assert_eq!(report.latest, Some(log.checkpoint(20)));
        assert_eq!(
            report.to_json(),
            json!({"valid": true, "events": 20, "checkpoints": 4, "fault": null})
        );

        // Events after the last checkpoint, checkpoints in any order and
        // under any names, one of size 0, a duplicate, a witness's
        // signature besides the vault's: all fine.
        let mut log = Log::new(23, &[20, 0, 7, 20]);
        let body = log.checkpoint(7).body();
        let witness = signing_key();
        let cosigned = format!(
            "{body}\n{}{}",
            signature_line("witness.example", &witness, &body),
            signature_line(KEY_NAME, &log.key, &body)
        );
        log.add("zzz", cosigned.into_bytes());
        let report = log.verify();
        assert_eq!(report.fault, None, "{report:?}");
        assert_eq!(report.events, 23);
        assert_eq!(report.latest.map(|c| c.size), Some(20));

        // The last line without its newline is the same leaf.
        let file = log.events_file();
        assert!(log.verify_bytes(file.trim_end().as_bytes()).is_valid());

        // An empty log with a checkpoint of size 0.
        assert!(Log::new(0, &[0]).verify().is_valid());
        assert!(Log::new(1, &[1]).verify().is_valid());
    }

    #[test]
    fn a_changed_event_is_named() {
        for (changed, checkpoints) in [
            (7, &[5, 10, 15, 20][..]),
            (0, &[5, 10, 15, 20]),
            // The last event before a checkpoint: the next event's `prev`
            // names it before the checkpoint's root is compared.
            (9, &[5, 10, 15, 20]),
            (4, &[5, 10, 15, 20]),
            // After the last checkpoint, the chain still catches it.
            (17, &[5, 10, 15]),
        ] {
            let mut log = Log::new(20, checkpoints);
            log.edit(changed, "purpose", json!("marketing"));
            assert_fault(&log.fault(), changed as u64, FaultKind::Modified);
        }

        // The very last event has no successor: only its checkpoint sees
        // it, and names the range since the previous good one.
        let mut log = Log::new(20, &[5, 10, 15, 20]);
        log.edit(19, "decision", json!("deny"));
        let fault = log.fault();
        assert_fault(&fault, 15, FaultKind::RootMismatch);
        assert!(fault.detail.contains("15..19"), "{fault}");

        // Its `prev` changed, event 0 itself.
        let mut log = Log::new(5, &[5]);
        log.edit(0, "prev", json!(hex::encode([1u8; 32])));
        assert_fault(&log.fault(), 0, FaultKind::Modified);

        // Whitespace is a change of bytes too.
        let mut log = Log::new(6, &[6]);
        log.lines[2] = log.lines[2].replacen(',', ", ", 1);
        assert_fault(&log.fault(), 2, FaultKind::Modified);
    }

    #[test]
    fn a_deleted_event_is_named() {
        for deleted in [0, 7, 10, 14] {
            let mut log = Log::new(20, &[5, 10, 15, 20]);
            log.lines.remove(deleted);
            assert_fault(&log.fault(), deleted as u64, FaultKind::ReorderedOrMissing);
        }
        // The last one: the file is shorter than its checkpoint.
        let mut log = Log::new(20, &[5, 10, 15, 20]);
        log.lines.pop();
        assert_fault(&log.fault(), 19, FaultKind::Truncated);
    }

    #[test]
    fn reordered_events_are_named() {
        for (a, b) in [(4, 12), (6, 7), (0, 19), (10, 11)] {
            let mut log = Log::new(20, &[5, 10, 15, 20]);
            log.lines.swap(a, b);
            assert_fault(&log.fault(), a as u64, FaultKind::ReorderedOrMissing);
        }
        // Moved later: the first moved position.
        let mut log = Log::new(20, &[5, 10, 15, 20]);
        let moved = log.lines.remove(3);
        log.lines.insert(8, moved);
        assert_fault(&log.fault(), 3, FaultKind::ReorderedOrMissing);
    }

    #[test]
    fn a_truncated_tail_is_named() {
        for keep in [17, 15, 11, 0] {
            let mut log = Log::new(20, &[5, 10, 15, 20]);
            log.lines.truncate(keep);
            // However many checkpoints it falls short of: the first
            // missing event.
            let fault = log.fault();
            assert_fault(&fault, keep as u64, FaultKind::Truncated);
            assert!(
                fault.detail.contains(&format!("the log has {keep}")),
                "{fault}"
            );
        }
    }

    #[test]
    fn an_inserted_forged_event_is_named() {
        // Inserted and re-chained: index and prev of every later event
        // rewritten, so that only a checkpoint can tell. Right after a
        // checkpoint, the index is the inserted position.
        for (inserted, index) in [(10, 10), (0, 0), (15, 15)] {
            let mut log = Log::new(20, &[5, 10, 15, 20]);
            log.lines.insert(inserted, event(0, &[0; 32]).to_string());
            rechain(&mut log.lines);
            let fault = log.fault();
            assert_fault(&fault, index, FaultKind::RootMismatch);
        }
        // Within a checkpoint's range: the range's first event, and the
        // range in the detail.
        let mut log = Log::new(20, &[5, 10, 15, 20]);
        log.lines.insert(12, event(0, &[0; 32]).to_string());
        rechain(&mut log.lines);
        let fault = log.fault();
        assert_fault(&fault, 10, FaultKind::RootMismatch);
        assert!(fault.detail.contains("10..14"), "{fault}");

        // Inserted with a correct index and prev, the rest left as it was:
        // the next event continues from the one before, so the inserted
        // position is named.
        for inserted in [0usize, 3, 10, 19, 20] {
            let mut log = Log::new(20, &[5, 10, 15, 20]);
            let prev = match inserted {
                0 => [0; 32],
                _ => leaf_hash(log.lines[inserted - 1].as_bytes()),
            };
            let mut forged = event(inserted as u64, &prev);
            forged["operation"] = json!("forged");
            log.lines.insert(inserted, forged.to_string());
            if inserted == 20 {
                // After the last event, it is just a new event that no
                // checkpoint covers yet.
                let report = log.verify();
                assert!(report.is_valid(), "{report:?}");
                assert_eq!(report.latest.map(|c| c.size), Some(20));
                continue;
            }
            let fault = log.fault();
            assert_fault(&fault, inserted as u64, FaultKind::ReorderedOrMissing);
            assert!(fault.detail.contains("inserted"), "{fault}");
        }
    }

    #[test]
    fn a_checkpoint_signed_by_another_key_is_named() {
        let mut log = Log::new(20, &[5, 10, 15, 20]);
        let other = signing_key();
        // Same key name, another key: re-signed by someone else.
        let forged = signed(&log.checkpoint(10), KEY_NAME, &other);
        log.add("checkpoint-00000010", forged.into_bytes());
        let fault = log.fault();
        assert_fault(&fault, 5, FaultKind::BadSignature);
        assert!(fault.detail.contains("size 10"), "{fault}");

        // Another key name only.
        let mut log = Log::new(20, &[5, 10, 15, 20]);
        let forged = signed(&log.checkpoint(15), "impostor", &other);
        log.add("checkpoint-00000015", forged.into_bytes());
        assert_fault(&log.fault(), 10, FaultKind::BadSignature);

        // A changed size in a signed checkpoint.
        let mut log = Log::new(20, &[5, 10]);
        let note = signed(&log.checkpoint(10), KEY_NAME, &log.key).replacen("\n10\n", "\n12\n", 1);
        log.add("checkpoint-00000010", note.into_bytes());
        let fault = log.fault();
        assert_fault(&fault, 5, FaultKind::BadSignature);
        assert!(fault.detail.contains("size 12"), "{fault}");

        // A forged checkpoint past the end is a bad signature, not a
        // truncation.
        let mut log = Log::new(20, &[5, 10, 15, 20]);
        let mut future = log.checkpoint(20);
        future.size = 30;
        log.add("future", signed(&future, KEY_NAME, &other).into_bytes());
        assert_fault(&log.fault(), 20, FaultKind::BadSignature);
    }

    #[test]
    fn checkpoints_must_agree() {
        // Another origin.
        let mut log = Log::new(20, &[5, 10]);
        let mut elsewhere = log.checkpoint(15);
        elsewhere.origin = "vault.example/us/audit".into();
        log.add("x", signed(&elsewhere, KEY_NAME, &log.key).into_bytes());
        assert_fault(&log.fault(), 10, FaultKind::Inconsistent);

        // Two signed checkpoints of one size with different roots.
        let mut log = Log::new(20, &[5, 10]);
        let mut fork = log.checkpoint(10);
        fork.root = [7; 32];
        log.add("fork", signed(&fork, KEY_NAME, &log.key).into_bytes());
        let fault = log.fault();
        assert_fault(&fault, 10, FaultKind::Inconsistent);
        assert!(fault.detail.contains("fork"), "{fault}");

        // A root that is nobody's.
        let mut log = Log::new(20, &[5]);
        let mut wrong = log.checkpoint(10);
        wrong.root = [7; 32];
        log.add("wrong", signed(&wrong, KEY_NAME, &log.key).into_bytes());
        assert_fault(&log.fault(), 5, FaultKind::RootMismatch);
    }

    #[test]
    fn no_checkpoint_no_anchor() {
        let log = Log::new(20, &[]);
        let report = log.verify();
        assert_fault(report.fault.as_ref().unwrap(), 0, FaultKind::NoCheckpoint);
        assert_eq!(report.checkpoints, 0);
        assert_eq!(report.events, 20);
        assert_fault(&Log::new(0, &[]).fault(), 0, FaultKind::NoCheckpoint);
        // Checkpoints, none of them by the key.
        let mut log = Log::new(20, &[]);
        let other = signing_key();
        log.add(
            "x",
            signed(&log.checkpoint(20), KEY_NAME, &other).into_bytes(),
        );
        assert_fault(&log.fault(), 0, FaultKind::BadSignature);
    }

    #[test]
    fn malformed_events_and_checkpoints() {
        for (line, why) in [
            ("not json", "not a JSON object"),
            ("", "not a JSON object"),
            ("[1, 2]", "not a JSON object"),
            (r#"{"prev": "00"}"#, "no `index`"),
            (r#"{"index": -3, "prev": "00"}"#, "`index` is not"),
            (r#"{"index": "3", "prev": "00"}"#, "`index` is not"),
            (r#"{"index": 3.5, "prev": "00"}"#, "`index` is not"),
            (r#"{"index": 3}"#, "no `prev`"),
            (r#"{"index": 3, "prev": 7}"#, "`prev` is not a string"),
            (r#"{"index": 3, "prev": "00"}"#, "64 hex digits"),
        ] {
            let mut log = Log::new(6, &[3, 6]);
            log.lines[3] = line.into();
            let fault = log.fault();
            assert_fault(&fault, 3, FaultKind::Malformed);
            assert!(fault.detail.contains(why), "{line}: {fault}");
        }
        let mut zs = Log::new(6, &[6]);
        zs.edit(3, "prev", json!("z".repeat(64)));
        assert_fault(&zs.fault(), 3, FaultKind::Malformed);

        // Not UTF-8.
        let log = Log::new(6, &[6]);
        let mut bytes = log.events_file().into_bytes();
        let second_line = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
        bytes[second_line + 1] = 0xff;
        let report = log.verify_bytes(&bytes);
        assert_fault(report.fault.as_ref().unwrap(), 1, FaultKind::Malformed);

        // A checkpoint file that is not a signed note.
        let mut log = Log::new(6, &[3, 6]);
        log.add("garbage", b"hello\n".to_vec());
        assert_fault(&log.fault(), 0, FaultKind::MalformedCheckpoint);
        // Signed, but not a checkpoint.
        let mut log = Log::new(6, &[3, 6]);
        let text = "hello\n";
        let note = format!("{text}\n{}", signature_line(KEY_NAME, &log.key, text));
        log.add("hello", note.into_bytes());
        assert_fault(&log.fault(), 0, FaultKind::MalformedCheckpoint);
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let log = Log::new(6, &[3, 6]);
        let file = log.events_file().into_bytes();
        // The signatures checked once.
        let key = verifier(KEY_NAME, &log.key);
        let opened = open_checkpoints(&log.checkpoints, &key);
        let verify =
            |bytes: &[u8]| verify_opened(Cursor::new(bytes), opened.clone(), |_| {}).unwrap();
        assert!(verify(&file).is_valid());
        for i in 0..file.len() {
            for bit in [0x01, 0x20, 0x80] {
                let mut bytes = file.clone();
                bytes[i] ^= bit;
                assert!(!verify(&bytes).is_valid(), "byte {i} ^ {bit:#x}");
            }
        }
        // Cut anywhere but the last newline: a fault.
        for len in 0..file.len() - 1 {
            assert!(!verify(&file[..len]).is_valid(), "{len}");
        }
    }

    #[test]
    fn events_after_the_first_fault_are_counted() {
        let mut log = Log::new(20, &[5, 10, 15, 20]);
        log.lines[2] = "garbage".into();
        let report = log.verify();
        assert_eq!(report.events, 20);
        assert_eq!(report.checkpoints, 4);
        assert_eq!(report.latest, None);
        let fault = report.fault.clone().unwrap();
        assert_eq!(
            report.to_json(),
            json!({"valid": false, "events": 20, "checkpoints": 4,
                   "fault": {"index": 2, "kind": "malformed", "detail": fault.detail}})
        );
        assert!(
            fault.to_string().starts_with("event 2: malformed: "),
            "{fault}"
        );
    }

    #[test]
    fn progress_is_reported() {
        let log = Log::new(10_000, &[10_000]);
        let file = log.events_file();
        let key = verifier(KEY_NAME, &log.key);
        let mut calls = Vec::new();
        let report = verify_log(Cursor::new(&file), &log.checkpoints, &key, |p| {
            calls.push(p)
        })
        .unwrap();
        assert!(report.is_valid());
        assert_eq!(calls.len(), 3);
        assert_eq!(
            calls.last(),
            Some(&Progress {
                events: 10_000,
                bytes: file.len() as u64
            })
        );
        assert!(calls.windows(2).all(|w| w[0].bytes < w[1].bytes));
    }

    #[test]
    fn an_export_directory() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::new(12, &[4, 12]);
        let key = verifier(KEY_NAME, &log.key);
        // No events file: an error, not a fault.
        let error = verify_export(dir.path(), &key).unwrap_err();
        assert!(error.to_string().contains("events.jsonl"), "{error}");

        std::fs::write(dir.path().join(EVENTS_FILE), log.events_file()).unwrap();
        // No checkpoints folder: no checkpoint.
        let report = verify_export(dir.path(), &key).unwrap();
        assert_eq!(report.fault.map(|f| f.kind), Some(FaultKind::NoCheckpoint));

        let folder = dir.path().join(CHECKPOINTS_DIR);
        std::fs::create_dir(&folder).unwrap();
        std::fs::create_dir(folder.join("a-folder")).unwrap();
        for file in &log.checkpoints {
            std::fs::write(folder.join(&file.name), &file.bytes).unwrap();
        }
        let report = verify_export(dir.path(), &key).unwrap();
        assert!(report.is_valid(), "{report:?}");
        assert_eq!(report.checkpoints, 2);
        assert_eq!(report.events, 12);
    }

    #[test]
    fn witnesses_must_cosign_a_checkpoint_k_of_n() {
        use super::super::cosign::{note_text, WitnessSigner};
        let mut log = Log::new(12, &[5, 12]);
        let w1 = WitnessSigner::generate("witness.example/w1").unwrap();
        let w2 = WitnessSigner::generate("witness.example/w2").unwrap();
        let keys = [w1.verifier(), w2.verifier()];
        let vault = verifier(KEY_NAME, &log.key);
        let check = |log: &Log, needed: usize| {
            let mut report = log.verify();
            assert!(report.is_valid(), "{report:?}");
            check_witnesses(
                &mut report,
                &log.checkpoints,
                &vault,
                &keys,
                needed,
                None,
                2_000,
            );
            report
        };

        // No cosignature: not witnessed.
        let report = check(&log, 1);
        assert_eq!(report.fault.unwrap().kind, FaultKind::NotWitnessed);

        // w1 cosigns size 5, both cosign size 12.
        let cosign = |log: &mut Log, size: u64, signers: &[&WitnessSigner], time: u64| {
            let name = format!("checkpoint-{size:08}");
            let file = log.checkpoints.iter().find(|c| c.name == name).unwrap();
            let mut note = String::from_utf8(file.bytes.clone()).unwrap();
            let text = note_text(note.as_bytes()).unwrap().to_owned();
            for signer in signers {
                note.push_str(&signer.cosign(&text, time));
            }
            log.add(&name, note.into_bytes());
        };
        cosign(&mut log, 5, &[&w1], 1_000);
        let report = check(&log, 1);
        assert_eq!(
            report.witnessed,
            Some(Witnessed {
                tree_size: 5,
                witnesses: vec!["witness.example/w1".into()],
                unwitnessed_events: 7,
            })
        );
        // At most 7 events after the witnessed checkpoint: met; 6: not.
        for (most, valid) in [(7, true), (6, false)] {
            let mut report = log.verify();
            check_witnesses(
                &mut report,
                &log.checkpoints,
                &vault,
                &keys,
                1,
                Some(most),
                2_000,
            );
            assert_eq!(report.is_valid(), valid, "{report:?}");
        }
        assert_eq!(check(&log, 2).fault.unwrap().kind, FaultKind::NotWitnessed);
        cosign(&mut log, 12, &[&w1, &w2], 1_500);
        let report = check(&log, 2);
        assert_eq!(report.witnessed.as_ref().unwrap().tree_size, 12);
        assert_eq!(report.to_json()["witnessed"]["tree_size"], 12);

        // A witness listed twice counts once; a cosignature dated far in the
        // future does not count.
        let mut report = log.verify();
        let twice = [
            w1.verifier(),
            WitnessKey::new("witness.example/w1-again", &w1.verifier().public_key()).unwrap(),
        ];
        check_witnesses(
            &mut report,
            &log.checkpoints,
            &vault,
            &twice,
            2,
            None,
            2_000,
        );
        assert_eq!(report.fault.unwrap().kind, FaultKind::NotWitnessed);
        let mut future = Log::new(5, &[5]);
        cosign(&mut future, 5, &[&w1], 10_000);
        let mut report = future.verify();
        let vault = verifier(KEY_NAME, &future.key);
        check_witnesses(
            &mut report,
            &future.checkpoints,
            &vault,
            &keys,
            1,
            None,
            2_000,
        );
        assert_eq!(report.fault.unwrap().kind, FaultKind::NotWitnessed);
    }
}
