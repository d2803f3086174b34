//! The audit log (SECURITY.md, "Audit log"): one event per audited request,
//! appended to an RFC 6962 Merkle tree whose heads the vault signs as
//! checkpoints.
//!
//! - **Events** are JSON objects (no values, ever: pseudonyms of record and
//!   subject ids, field names, decision, bytes returned). Each carries its
//!   `index` and `prev`, the leaf hash of the event before it, so a verifier
//!   names the first event that was changed, removed or moved.
//! - **Fail closed.** A write's event goes into the write's own `WriteSet`
//!   (one atomic, synced batch); a read's event is written, synced, before
//!   any plaintext is returned. If the event cannot be written, the request
//!   fails. Appends are group-committed in order (indices are dense and in
//!   commit order; concurrent requests share one synced write).
//! - **Stored** in `Table::Audit`: `e ‖ u64 index` → event bytes (the leaf),
//!   `c ‖ u64 size` → signed checkpoint (see [`checkpoint`]), and the
//!   subject index for access ledgers, `s ‖ pseudonym ‖ u64 index` → empty,
//!   written in the same batch as its event (`i` → how many events it
//!   covers). The index is not part of the tree: a ledger proves that each
//!   event it lists is in the log, not that none is missing (a full export
//!   shows that).
//!
//! - **The Merkle tree** is stored too, as tiles ([`tiles`], the C2SP
//!   tlog-tiles layout): `t ‖ u8 level ‖ u64 tile` → 256 hashes, each full
//!   tile in the batch of the event that completes it. Only the tree's
//!   right edge (the partial tiles, under 8 KiB a level) is in memory;
//!   proofs read the tiles. A log from before the tiles gets them at open.

pub mod checkpoint;
pub mod merkle;
pub mod tiles;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

use crate::policy::Caller;
use crate::storage::{Store, Table, WriteSet};
use crate::{Error, Result};
use merkle::{Frontier, Hash};

/// The event format this build writes.
pub const EVENT_V1: u8 = 1;
const EVENT_PREFIX: u8 = b'e';
const CHECKPOINT_PREFIX: u8 = b'c';
/// `s ‖ subject pseudonym ‖ u64 index` → empty: the subject index.
const SUBJECT_PREFIX: u8 = b's';
/// `i` → u64: the subject index covers the events below this.
const INDEXED_KEY: &[u8] = b"i";
/// `t ‖ u8 level ‖ u64 tile` → a full Merkle tile.
const TILE_PREFIX: u8 = b't';
/// `h` → u64 size ‖ the newest event's leaf hash: the head of a log other
/// servers append to too (written by every group on a shared store).
const HEAD_KEY: &[u8] = b"h";

/// Releases the store's audit append lock when dropped.
struct AppendLock<'a>(&'a dyn Store);

impl Drop for AppendLock<'_> {
    fn drop(&mut self) {
        self.0.unlock_appends();
    }
}

/// A group numbered after the log's end ([`AuditLog::number`]): its batch,
/// and what the log becomes once the batch is written.
struct Numbered {
    merged: WriteSet,
    hashes: Vec<Hash>,
    indices: Vec<u64>,
    /// The tree's right edge after the group, if it completed a tile.
    edge: Option<tiles::Edge>,
    /// The newest leaf hash after the group.
    last: Hash,
}

impl Numbered {
    /// Moves the log's end in `state` past the written group.
    fn apply(state: &mut State, hashes: &[Hash], edge: Option<tiles::Edge>, last: Hash) {
        for h in hashes {
            state.frontier.push(*h);
        }
        match edge {
            Some(grown) => state.edge = grown,
            None => {
                // No tile completes: nothing to store.
                let mut none = Vec::new();
                for h in hashes {
                    state.edge.push(*h, &mut none);
                }
                debug_assert!(none.is_empty());
            }
        }
        state.last = last;
    }
}

/// The `h` row of a log of `size` events whose newest has leaf hash `last`.
/// A failed write to the shared store, as each of the `n` requests of its
/// group answers it (a failed condition is `Conflict`: `ABORTED`).
fn failed_all(e: &Error, n: usize) -> Vec<Result<u64>> {
    if !matches!(e, Error::Conflict) {
        tracing::warn!(error = %e, "audit write to the shared store failed");
    }
    (0..n)
        .map(|_| {
            Err(match e {
                Error::Unavailable(m) => Error::Unavailable(m.clone()),
                Error::Conflict => Error::Conflict,
                Error::Integrity => Error::Integrity,
                other => Error::Storage(other.to_string()),
            })
        })
        .collect()
}

fn head_row(size: u64, last: &Hash) -> Vec<u8> {
    let mut v = size.to_be_bytes().to_vec();
    v.extend_from_slice(last);
    v
}

/// Most bytes of events in one page the vault sends: a page of
/// `AuditService.Events`, one message of `AuditService.Follow`, a page of
/// an access ledger. Half the gRPC message limit (8 MiB), so that framing
/// and proofs fit beside them; far below what vault-client accepts.
pub const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// Events read from the store at a time while filling a page.
const SCAN_CHUNK: usize = 128;

/// One audited request. Field order is the JSON order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Event {
    /// Format version.
    pub v: u8,
    /// Position in the log.
    pub index: u64,
    /// Hex leaf hash of the event before (64 zeros for the first).
    pub prev: String,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The id of the gRPC request (hex; the `x-vault-request-id` header
    /// of its response), or empty for the vault's own work.
    pub request_id: String,
    /// Who asked.
    pub principal: String,
    /// The stated purpose.
    pub purpose: Option<String>,
    /// The operation (`read`, `write`, …, or a custody verb).
    pub operation: String,
    /// The collection, if one; for a batch across collections, each one,
    /// comma-separated in request order.
    pub collection: Option<String>,
    /// Pseudonyms (keyed hashes, hex) of the record ids asked for (found
    /// or not, allowed or not; at most a batch's limit of them).
    pub records: Vec<String>,
    /// Pseudonyms (hex) of the subjects touched.
    pub subjects: Vec<String>,
    /// Field names returned (reads) or written.
    pub fields: Vec<String>,
    /// `allowed`, `denied` or `failed`.
    pub decision: String,
    /// Why, when not allowed (an error kind and message; never a value).
    pub reason: Option<String>,
    /// Plaintext bytes returned to the caller.
    pub bytes: u64,
    /// What a custody or admin operation did (versions, counts, receipt id).
    pub detail: Option<String>,
}

impl Event {
    /// A new event of `principal` doing `operation`, allowed, stamped now.
    /// `request_id` names the gRPC request it records (none: the vault's
    /// own work, or an in-process caller).
    pub fn new(
        principal: &str,
        purpose: Option<&str>,
        operation: &str,
        request_id: Option<&str>,
    ) -> Event {
        Event {
            time_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            request_id: request_id.unwrap_or_default().to_owned(),
            principal: principal.to_owned(),
            purpose: purpose.map(str::to_owned),
            operation: operation.to_owned(),
            decision: "allowed".into(),
            ..Event::default()
        }
    }

    /// A new event of `caller`'s request doing `operation`, allowed.
    pub fn of(caller: &Caller, operation: &str) -> Event {
        Event::new(
            &caller.principal.name,
            caller.purpose.as_deref(),
            operation,
            caller.request_id.as_deref(),
        )
    }

    /// The event of a request whose outcome is known: allowed with
    /// `detail`, or refused with the error's kind.
    pub fn outcome<T>(
        caller: &Caller,
        operation: &str,
        detail: Option<String>,
        result: &Result<T>,
    ) -> Event {
        let mut ev = Event::of(caller, operation);
        ev.detail = detail;
        match result {
            Ok(_) => ev,
            Err(e) => ev.refused(e),
        }
    }

    /// Marks the event refused (`denied` for authorisation, else `failed`)
    /// with the error's kind as its reason. It keeps the pseudonyms of the
    /// records and subjects asked for, and drops the fields and bytes.
    pub fn refused(mut self, e: &Error) -> Event {
        self.decision = match e {
            Error::PermissionDenied(_) | Error::Unauthenticated(_) | Error::BudgetExceeded(_) => {
                "denied"
            }
            _ => "failed",
        }
        .into();
        // The kind only: messages can repeat what the caller sent (a
        // mistyped name may be personal data), and the log is forever.
        self.reason = Some(kind_of(e).to_owned());
        // The pseudonyms of what was asked for stay: probing for ids must
        // show to the auditor. Nothing was returned or written.
        self.fields.clear();
        self.bytes = 0;
        self
    }
}

/// The kind of an error, as audit events record it.
fn kind_of(e: &Error) -> &'static str {
    match e {
        Error::InvalidArgument(_) => "invalid argument",
        Error::LimitExceeded(_) => "limit exceeded",
        Error::BudgetExceeded(_) => "budget exceeded",
        Error::NotFound(_) => "not found",
        Error::AlreadyExists(_) => "already exists",
        Error::WrongRegion { .. } => "wrong region",
        Error::FailedPrecondition(_) => "failed precondition",
        Error::SubjectErased => "subject erased",
        Error::Integrity => "integrity check failed",
        Error::Unauthenticated(_) => "unauthenticated",
        Error::PermissionDenied(_) => "permission denied",
        Error::Sealed => "sealed",
        Error::Unavailable(_) => "unavailable",
        Error::Conflict => "conflict",
        _ => "internal error",
    }
}

fn event_key(index: u64) -> Vec<u8> {
    let mut k = vec![EVENT_PREFIX];
    k.extend_from_slice(&index.to_be_bytes());
    k
}

fn subject_key(pseudonym: &[u8; 32], index: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(41);
    k.push(SUBJECT_PREFIX);
    k.extend_from_slice(pseudonym);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// Adds the subject index rows of event `index` to `ws`.
fn index_subjects(ws: &mut WriteSet, index: u64, subjects: &[String]) {
    for subject in subjects {
        let mut pseudonym = [0u8; 32];
        if hex::decode_to_slice(subject, &mut pseudonym).is_ok() {
            ws.put(Table::Audit, subject_key(&pseudonym, index), Vec::new());
        }
    }
}

fn tile_key(level: u8, index: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(10);
    k.push(TILE_PREFIX);
    k.push(level);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

fn checkpoint_key(size: u64) -> Vec<u8> {
    let mut k = vec![CHECKPOINT_PREFIX];
    k.extend_from_slice(&size.to_be_bytes());
    k
}

#[derive(Debug, Default)]
struct State {
    frontier: Frontier,
    /// The Merkle tree's right edge (the rest is in stored tiles).
    edge: tiles::Edge,
    /// The leaf hash of the newest event (zeros before the first).
    last: Hash,
    /// A write failed: no more appends until the vault reopens the log.
    failed: bool,
    /// The storage was full when it failed: later refusals say so too.
    full: bool,
    /// On a shared store: the stored `h` row (the log's size and newest
    /// leaf hash) as this log last wrote or read it. Every group is written
    /// only if the row still holds it: the database orders the appends of
    /// every server, and a log that lost events and grew again elsewhere
    /// is told apart by its hash.
    head: Option<Vec<u8>>,
}

/// A group written to a shared store: its indices, leaf hashes, the
/// tree's right edge if the group completed a tile, and its last hash.
type Appended = (Vec<u64>, Vec<Hash>, Option<tiles::Edge>, Hash);

/// How often a group is retried after other servers appended first
/// before the request fails (`ABORTED`).
const SHARED_APPEND_ATTEMPTS: usize = 64;

/// Tiles written per batch when the open stores missing ones (one under
/// test, so that a test sees any write made before the checks end).
const TILE_BATCH: usize = if cfg!(test) { 1 } else { 1024 };

/// Tiles recomputed at open, checked against the stored ones.
#[derive(Default)]
struct TileCheck {
    /// Tiles the store lacks (a log from before the tiles), in the order
    /// the events complete them: stored only once the whole log has passed
    /// its checks.
    missing: Vec<(u8, u64)>,
    /// A store error on the way (it ends the open as it is).
    error: Option<Error>,
}

impl TileCheck {
    /// Checks the `completed` tiles against the store: a stored tile that
    /// differs from the events is damage; a missing one is noted.
    fn check(
        &mut self,
        store: &Arc<dyn Store>,
        completed: &mut Vec<tiles::FullTile>,
    ) -> std::result::Result<(), &'static str> {
        for tile in completed.drain(..) {
            // Read once: 8 KiB a tile, 39 000 tiles at 10^7 events, which
            // would fill the block cache that serves requests.
            match store.get_uncached(Table::Audit, &tile_key(tile.level, tile.index)) {
                Ok(Some(stored)) if stored == tile.encode() => {}
                Ok(Some(_)) => return Err("a stored Merkle tile does not match the events"),
                Ok(None) => self.missing.push((tile.level, tile.index)),
                Err(e) => {
                    self.error.get_or_insert(e);
                }
            }
        }
        Ok(())
    }
}

/// Why the log refuses a write after a failed one (`UNAVAILABLE`).
fn refusal(state: &State) -> String {
    if state.full {
        format!(
            "{} (the audit log refuses writes until then)",
            crate::storage::STORAGE_FULL
        )
    } else {
        "the audit log refuses writes after a failed write; restart the vault".into()
    }
}

/// What a request holds while its batch waits to be written.
pub type Hold = Box<dyn std::any::Any + Send>;

/// What a queued request hears back.
#[derive(Debug)]
enum Answer {
    /// Its event was written (its index), or its group failed.
    Done(Result<u64>),
    /// The previous leader is done: this request writes the next group.
    Lead,
}

/// Who waits for a queued request's answer: a thread (a blocking
/// [`AuditLog::commit`], parked) or a task ([`AuditLog::commit_async`]).
#[derive(Debug)]
enum Waiter {
    Thread(std::thread::Thread),
    Task(std::task::Waker),
}

#[derive(Debug, Default)]
struct SlotState {
    answer: Option<Answer>,
    /// What the request holds until its batch is written (its subjects'
    /// locks): dropped with the final answer, by whoever writes the group,
    /// so even a request whose future was dropped holds them till then.
    hold: Option<Hold>,
    /// The answer was handed over: the waiter may take it.
    woken: bool,
    waiter: Option<Waiter>,
}

/// Where a queued request waits. Answering takes two steps: the writer
/// sets each answer of its group ([`Slot::set`]), then wakes each waiter
/// ([`Slot::wake`]): the writer thread wakes its last group only once it
/// has let go of the log, since a caller that hears back may drop it (and
/// with it the store, which a test may then reopen).
#[derive(Debug, Default)]
struct Slot {
    state: Mutex<SlotState>,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the answer; the waiter takes it once woken. A final answer
    /// lets go of what the request held.
    fn set(&self, a: Answer) {
        let held = {
            let mut s = self.lock();
            let held = matches!(a, Answer::Done(_)).then(|| s.hold.take());
            s.answer = Some(a);
            held
        };
        drop(held);
    }

    /// Wakes the waiter (if it waits yet: else it finds the answer).
    fn wake(&self) {
        let waiter = {
            let mut s = self.lock();
            s.woken = true;
            s.waiter.take()
        };
        match waiter {
            Some(Waiter::Thread(t)) => t.unpark(),
            Some(Waiter::Task(w)) => w.wake(),
            None => {}
        }
    }

    /// Sets the answer and wakes the waiter.
    fn answer(&self, a: Answer) {
        self.set(a);
        self.wake();
    }

    /// The answer, if one was handed over; else registers `waiter`.
    fn take(&self, waiter: impl FnOnce() -> Waiter) -> Option<Answer> {
        let mut s = self.lock();
        if s.woken {
            if let Some(a) = s.answer.take() {
                s.woken = false;
                return Some(a);
            }
        }
        s.waiter = Some(waiter());
        None
    }

    /// Blocks the thread until an answer is handed over.
    fn wait(&self) -> Answer {
        loop {
            if let Some(a) = self.take(|| Waiter::Thread(std::thread::current())) {
                return a;
            }
            std::thread::park();
        }
    }
}

/// Requests waiting to be written, and who writes them.
///
/// Until the first [`AuditLog::commit_async`], blocking callers lead in
/// turn (leader/follower: the first to find no leader writes a group and
/// hands the lead to the next queued request). From then on one writer
/// thread of the log's own writes every group, and every caller, blocking
/// or not, only queues and waits.
#[derive(Debug, Default)]
struct Queue {
    pending: Vec<(WriteSet, Event, Arc<Slot>)>,
    /// A group is being written (by a leading caller or the writer).
    leader: bool,
    /// The writer thread, once started.
    writer: Option<Arc<WriterSignal>>,
    /// The writer waits for work (so whoever queues must wake it).
    writer_idle: bool,
}

/// How the writer thread is woken: work was queued, or the log is gone.
/// The thread holds this and a weak reference to the log, never a strong
/// one while idle, so it keeps neither the log nor its store alive.
#[derive(Debug, Default)]
struct WriterSignal {
    state: Mutex<WriterWake>,
    ready: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct WriterWake {
    work: bool,
    closed: bool,
}

impl WriterSignal {
    fn lock(&self) -> MutexGuard<'_, WriterWake> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn notify(&self, f: impl FnOnce(&mut WriterWake)) {
        f(&mut self.lock());
        self.ready.notify_one();
    }

    /// Waits for work; false once the log is gone.
    fn wait(&self) -> bool {
        let mut s = self.lock();
        while !s.work && !s.closed {
            s = self.ready.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.work = false;
        !s.closed
    }
}

/// The body of the writer thread: writes queued groups until the log is
/// dropped. Holds the log (strongly) only while it writes.
fn writer_thread(log: std::sync::Weak<AuditLog>, signal: Arc<WriterSignal>) {
    while signal.wait() {
        let Some(log) = log.upgrade() else {
            return;
        };
        let last = log.write_queued();
        drop(log);
        for slot in last {
            slot.wake();
        }
    }
}

/// A commit queued by [`AuditLog::commit_async`]: resolves to its answer.
/// Its request runs to its end in a task of its own (see
/// `service::requests`), so it is polled to completion; were it dropped,
/// its queued write would still be made.
struct Queued {
    slot: Arc<Slot>,
}

impl std::future::Future for Queued {
    type Output = Result<u64>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<u64>> {
        match self.slot.take(|| Waiter::Task(cx.waker().clone())) {
            Some(Answer::Done(r)) => std::task::Poll::Ready(r),
            // Only blocking callers are handed the lead, and only before
            // the writer started; this one was queued after.
            Some(Answer::Lead) => std::task::Poll::Ready(Err(Error::Storage(
                "the audit log handed the lead to a queued task".into(),
            ))),
            None => std::task::Poll::Pending,
        }
    }
}

/// The audit log of one data folder. Its `Debug` shows the size only:
/// queued writes hold record and subject keys.
pub struct AuditLog {
    store: Arc<dyn Store>,
    state: Mutex<State>,
    queue: Mutex<Queue>,
    /// gRPC requests in flight (by request id): their events so far.
    requests: Mutex<HashMap<String, RequestEvents>>,
    /// gRPC requests begun since the log was opened.
    requests_begun: AtomicU64,
    /// The log's size, for followers.
    grown: tokio::sync::watch::Sender<u64>,
    /// Whether the log refuses writes (after a failed one), for health.
    refusing: tokio::sync::watch::Sender<bool>,
    /// Held while a checkpoint is signed and stored, so they are stored in
    /// order without holding up commits.
    checkpointing: Mutex<()>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("AuditLog")
            .field("size", &s.frontier.size())
            .field("failed", &s.failed)
            .finish_non_exhaustive()
    }
}

/// Held by a group-commit leader while it writes: dropped only if the write
/// panics, it fails the group and everyone queued, stops the log (as a
/// failed write does) and gives up the lead, so no request waits forever.
struct LeaderGuard<'a> {
    log: &'a AuditLog,
    slots: Vec<Arc<Slot>>,
    /// Set once the write returned: the drop then does nothing.
    done: bool,
}

impl Drop for LeaderGuard<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.log.lock().failed = true;
        self.log.refusing.send_replace(true);
        let queued = {
            let mut q = self.log.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.leader = false;
            std::mem::take(&mut q.pending)
        };
        let failed = || {
            Answer::Done(Err(Error::Storage(
                "an audit write panicked; the audit log refuses writes until the vault restarts"
                    .into(),
            )))
        };
        for slot in self.slots.drain(..) {
            slot.answer(failed());
        }
        for (_, _, slot) in queued {
            slot.answer(failed());
        }
    }
}

impl Drop for AuditLog {
    /// Stops the writer thread (if one started).
    fn drop(&mut self) {
        let q = self.queue.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(signal) = q.writer.take() {
            signal.notify(|w| w.closed = true);
        }
    }
}

/// The events of one gRPC request so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestEvents {
    /// Events the request tried to write (whatever became of them).
    pub attempted: u32,
    /// Of those, the ones written.
    pub written: u32,
}

/// Follows one gRPC request's events (see [`AuditLog::begin_request`]).
/// Dropped unfinished (its client went away), it stops following.
#[derive(Debug)]
pub struct RequestGuard {
    log: Arc<AuditLog>,
    id: String,
}

impl RequestGuard {
    /// The request's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Stops following: the request's events.
    pub fn finish(self) -> RequestEvents {
        self.log.end_request(&self.id)
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.log.end_request(&self.id);
    }
}

impl AuditLog {
    /// Opens the log in `store`, re-hashing every stored event. A gap in
    /// the indices, or an event whose `index` or `prev` does not fit, is an
    /// integrity failure: the vault does not append to a broken log.
    pub fn open(store: Arc<dyn Store>) -> Result<Self> {
        // One pass checks the log: checkpoint rows (`c…`) sort before event
        // rows (`e…`), so every checkpoint is known before the events it
        // covers are hashed. Each must still match the log: an edited or
        // truncated history is refused, not signed over. (A second pass
        // stores the tiles a log from before the tiles lacks.)
        let mut state = State::default();
        let mut signed = std::collections::VecDeque::new();
        let mut failure = None;
        // The tiles the events complete: each checked against the stored
        // one, or noted if missing.
        let mut completed = Vec::new();
        let mut tile_check = TileCheck::default();
        let check = |state: &State, signed: &mut std::collections::VecDeque<_>| {
            while let Some(&Some((size, root))) = signed.front() {
                if size != state.frontier.size() {
                    break;
                }
                signed.pop_front();
                if state.frontier.root() != root {
                    return Some("the audit log no longer matches a checkpoint it signed");
                }
            }
            None
        };
        store.visit(Table::Audit, &mut |k, v| {
            if failure.is_some() {
                return;
            }
            match k.first() {
                Some(&CHECKPOINT_PREFIX) => signed.push_back(checkpoint::parse(v)),
                Some(&EVENT_PREFIX) => {
                    if let Some(why) = check(&state, &mut signed) {
                        failure = Some(why);
                        return;
                    }
                    let expected = state.frontier.size();
                    let ok = k.len() == 9
                        && k[1..] == expected.to_be_bytes()
                        && serde_json::from_slice::<Event>(v).is_ok_and(|e| {
                            e.index == expected && e.prev == hex::encode(state.last)
                        });
                    if !ok {
                        failure = Some("an event does not follow the one before");
                        return;
                    }
                    let h = merkle::leaf_hash(v);
                    state.frontier.push(h);
                    state.last = h;
                    state.edge.push(h, &mut completed);
                    if let Err(why) = tile_check.check(&store, &mut completed) {
                        failure = Some(why);
                    }
                }
                _ => {}
            }
        })?;
        let failure = failure.or_else(|| check(&state, &mut signed)).or_else(|| {
            (!signed.is_empty())
                .then_some("a checkpoint is unreadable, or covers more than the log holds")
        });
        if let Some(why) = failure {
            tracing::error!(
                size = state.frontier.size(),
                why,
                "the audit log in the data folder is damaged"
            );
            return Err(Error::Integrity);
        }
        if let Some(e) = tile_check.error {
            return Err(e);
        }
        // Only now, the log known whole: a log that fails its checks
        // leaves no tile derived from it behind.
        if !tile_check.missing.is_empty() {
            Self::store_missing_tiles(&store, &tile_check.missing)?;
            tracing::warn!(
                tiles = tile_check.missing.len(),
                "stored the Merkle tiles the audit log lacked"
            );
        }
        let size = state.frontier.size();
        if store.shared() {
            // Other servers may have appended since the scan: their tiles
            // and index rows stand; the log catches up below.
            let indexed = store.get(Table::Audit, INDEXED_KEY)?;
            let covered = indexed
                .as_deref()
                .and_then(|v| <[u8; 8]>::try_from(v).ok())
                .map_or(0, u64::from_be_bytes);
            if covered < size {
                Self::reindex(&store, size)?;
            }
        } else {
            Self::drop_tiles_past(&store, &state.edge)?;
            Self::reindex(&store, size)?;
        }
        let log = AuditLog {
            store,
            state: Mutex::new(state),
            queue: Mutex::new(Queue::default()),
            requests: Mutex::new(HashMap::new()),
            requests_begun: AtomicU64::new(0),
            grown: tokio::sync::watch::Sender::new(size),
            refusing: tokio::sync::watch::Sender::new(false),
            checkpointing: Mutex::new(()),
        };
        if log.store.shared() {
            let mut state = log.lock();
            log.catch_up(&mut state)?;
        }
        Ok(log)
    }

    /// On a shared store: takes in the events other servers appended since
    /// this log last wrote or read (each checked to follow the one before),
    /// so that its size, root, checkpoints and proofs are the database's.
    /// Nothing to do on a store of its own.
    pub fn refresh(&self) -> Result<()> {
        if !self.store.shared() {
            return Ok(());
        }
        let mut state = self.lock();
        self.catch_up(&mut state)
    }

    fn catch_up(&self, state: &mut State) -> Result<()> {
        let result = self.catch_up_checked(state);
        if matches!(result, Err(Error::Integrity)) {
            // A log that does not extend what this server has seen: no
            // more appends here until the vault restarts (and re-checks it).
            state.failed = true;
            self.refusing.send_replace(true);
        }
        result
    }

    fn catch_up_checked(&self, state: &mut State) -> Result<()> {
        let stored = self.store.get(Table::Audit, HEAD_KEY)?;
        let (target, head_hash) = match stored.as_deref() {
            None => (0, [0u8; 32]),
            Some(v) if v.len() == 40 => {
                let mut size = [0u8; 8];
                size.copy_from_slice(&v[..8]);
                let mut hash = [0u8; 32];
                hash.copy_from_slice(&v[8..]);
                (u64::from_be_bytes(size), hash)
            }
            Some(_) => return Err(Error::Integrity),
        };
        let mut at = state.frontier.size();
        if target < at {
            tracing::error!(
                stored = target,
                ours = at,
                "the shared audit log is shorter than this server has seen"
            );
            return Err(Error::Integrity);
        }
        while at < target {
            let want = usize::try_from(target - at).unwrap_or(usize::MAX).min(1024);
            let rows = self.store.scan_from(Table::Audit, &event_key(at), want)?;
            let mut none = Vec::new();
            let mut took = 0;
            for (k, v) in rows
                .iter()
                .take_while(|(k, _)| k.first() == Some(&EVENT_PREFIX))
            {
                let follows = k.len() == 9
                    && k[1..] == at.to_be_bytes()
                    && serde_json::from_slice::<Event>(v)
                        .is_ok_and(|e| e.index == at && e.prev == hex::encode(state.last));
                if !follows {
                    tracing::error!(
                        index = at,
                        "an event another server appended does not follow the one before"
                    );
                    return Err(Error::Integrity);
                }
                let h = merkle::leaf_hash(v);
                state.frontier.push(h);
                // Full tiles were stored with the events that completed them.
                state.edge.push(h, &mut none);
                none.clear();
                state.last = h;
                at += 1;
                took += 1;
                if at == target {
                    break;
                }
            }
            if took == 0 {
                return Err(Error::Integrity);
            }
        }
        if target > 0 && head_hash != state.last {
            tracing::error!(
                size = target,
                "the shared audit log's head does not end in the events this server has"
            );
            return Err(Error::Integrity);
        }
        state.head = stored;
        self.grown.send_replace(state.frontier.size());
        Ok(())
    }

    /// Recomputes the tree from the events, already checked, and stores
    /// the `missing` tiles (in the order the events complete them), in
    /// batches.
    fn store_missing_tiles(store: &Arc<dyn Store>, missing: &[(u8, u64)]) -> Result<()> {
        let mut edge = tiles::Edge::default();
        let mut completed = Vec::new();
        let mut next = missing.iter().peekable();
        let mut ws = WriteSet::new();
        let mut error = None;
        store.visit(Table::Audit, &mut |k, v| {
            if error.is_some() || next.peek().is_none() || k.first() != Some(&EVENT_PREFIX) {
                return;
            }
            edge.push(merkle::leaf_hash(v), &mut completed);
            for tile in completed.drain(..) {
                if next.peek() == Some(&&(tile.level, tile.index)) {
                    next.next();
                    ws.put(
                        Table::Audit,
                        tile_key(tile.level, tile.index),
                        tile.encode(),
                    );
                }
            }
            if ws.ops().len() >= TILE_BATCH {
                if let Err(e) = store.write(std::mem::take(&mut ws)) {
                    error = Some(e);
                }
            }
        })?;
        if let Some(e) = error {
            return Err(e);
        }
        if next.peek().is_some() {
            // The events were checked a moment ago: they cannot have changed.
            return Err(Error::Storage(
                "the audit log changed while its missing tiles were stored".into(),
            ));
        }
        if !ws.is_empty() {
            store.write(ws)?;
        }
        Ok(())
    }

    /// Deletes stored tiles past the end of the log (a log whose tail was
    /// cut): an append must never find a stale tile in its place.
    fn drop_tiles_past(store: &Arc<dyn Store>, edge: &tiles::Edge) -> Result<()> {
        for level in 0..8u8 {
            let full = edge
                .size()
                .checked_shr(tiles::HEIGHT * (u32::from(level) + 1))
                .unwrap_or_default();
            loop {
                let rows = store.scan_from(Table::Audit, &tile_key(level, full), 1024)?;
                let mut ws = WriteSet::new();
                let of_level = |k: &Vec<u8>| k.get(..2) == Some(&[TILE_PREFIX, level][..]);
                for (k, _) in rows.into_iter().take_while(|(k, _)| of_level(k)) {
                    ws.delete(Table::Audit, k);
                }
                if ws.is_empty() {
                    break;
                }
                tracing::warn!(level, "dropped Merkle tiles past the end of the audit log");
                store.write(ws)?;
            }
        }
        Ok(())
    }

    /// Brings the subject index to the log's `size` events: indexes the
    /// events it does not cover yet (a log from before the index), in
    /// batches, and drops rows of events past the end (a log whose tail was
    /// cut), so a ledger never points at another event.
    fn reindex(store: &Arc<dyn Store>, size: u64) -> Result<()> {
        const BATCH: usize = 10_000;
        let indexed = store
            .get(Table::Audit, INDEXED_KEY)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map_or(0, u64::from_be_bytes);
        if indexed > size {
            let mut ws = WriteSet::new();
            for (k, _) in store.scan_prefix(Table::Audit, &[SUBJECT_PREFIX])? {
                let past_end = k.len() == 41
                    && u64::from_be_bytes(k[33..].try_into().unwrap_or([0xff; 8])) >= size;
                if past_end {
                    ws.delete(Table::Audit, k);
                }
            }
            ws.put(
                Table::Audit,
                INDEXED_KEY.to_vec(),
                size.to_be_bytes().to_vec(),
            );
            store.write(ws)?;
            tracing::warn!(
                indexed,
                size,
                "dropped subject index rows past the end of the audit log"
            );
            return Ok(());
        }
        let mut at = indexed;
        while at < size {
            let rows = store.scan_from(Table::Audit, &event_key(at), BATCH)?;
            let mut ws = WriteSet::new();
            for (k, v) in rows
                .iter()
                .take_while(|(k, _)| k.first() == Some(&EVENT_PREFIX))
            {
                let index = u64::from_be_bytes(k[1..].try_into().map_err(|_| Error::Integrity)?);
                if let Ok(e) = serde_json::from_slice::<Event>(v) {
                    index_subjects(&mut ws, index, &e.subjects);
                }
                at = index + 1;
            }
            if rows.is_empty() {
                return Err(Error::Integrity);
            }
            ws.put(
                Table::Audit,
                INDEXED_KEY.to_vec(),
                at.to_be_bytes().to_vec(),
            );
            store.write(ws)?;
        }
        if indexed < size {
            tracing::info!(from = indexed, to = size, "indexed audit events by subject");
        }
        Ok(())
    }

    /// Starts following the events of a gRPC request, under a new random
    /// request id: the service layer checks, when the request ends, that it
    /// had exactly one event.
    pub fn begin_request(self: &Arc<Self>) -> RequestGuard {
        let mut raw = [0u8; 8];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut raw);
        let id = hex::encode(raw);
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), RequestEvents::default());
        self.requests_begun.fetch_add(1, Ordering::Relaxed);
        RequestGuard {
            log: Arc::clone(self),
            id,
        }
    }

    fn end_request(&self, id: &str) -> RequestEvents {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
            .unwrap_or_default()
    }

    /// Fails if the log refuses writes (after a failed write), so that an
    /// operation whose effect lies outside the store can refuse first.
    pub fn writable(&self) -> Result<()> {
        let s = self.lock();
        if s.failed {
            return Err(Error::Unavailable(refusal(&s)));
        }
        Ok(())
    }

    /// gRPC requests begun since the log was opened.
    pub fn requests_begun(&self) -> u64 {
        self.requests_begun.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `event` and writes it with `ws` in one atomic, synced batch.
    /// Returns the event's index. If the write fails nothing is appended.
    ///
    /// Group commit: requests that arrive while a write is in flight are
    /// queued; the next leader takes them all, numbers their events in
    /// order, and writes them (each with its own changes) in one synced
    /// batch. One fsync serves many requests; if it fails, all of them fail.
    ///
    /// This blocks the calling thread: call it off the async runtime (the
    /// request path uses [`AuditLog::commit_async`]). Both share one queue,
    /// so indices stay dense and in commit order whoever commits.
    pub fn commit(&self, ws: WriteSet, event: Event) -> Result<u64> {
        let request = (!event.request_id.is_empty()).then(|| event.request_id.clone());
        let result = self.commit_unfollowed(ws, event);
        self.count(request, &result);
        result
    }

    /// [`AuditLog::commit`] without holding a thread while the batch is
    /// written: queues the write for the log's writer thread (started on
    /// first use, stopped when the log is dropped) and awaits its answer,
    /// which arrives once the batch is synced (or failed). The writer takes
    /// everything queued as one group: it never waits for a group to fill.
    pub async fn commit_async(self: &Arc<Self>, ws: WriteSet, event: Event) -> Result<u64> {
        self.commit_async_holding(ws, event, None).await
    }

    /// [`AuditLog::commit_async`] for a request that holds locks until its
    /// batch is written: `hold` is dropped right after the write (or its
    /// failure), by the writer, even if this future is dropped first (its
    /// write is made all the same).
    pub async fn commit_async_holding(
        self: &Arc<Self>,
        ws: WriteSet,
        event: Event,
        hold: Option<Hold>,
    ) -> Result<u64> {
        let request = (!event.request_id.is_empty()).then(|| event.request_id.clone());
        let result = match self.queue_for_writer(ws, event, hold) {
            Ok(queued) => queued.await,
            Err(e) => Err(e),
        };
        self.count(request, &result);
        result
    }

    /// Counts a commit towards the events of the gRPC request it records.
    fn count(&self, request: Option<String>, result: &Result<u64>) {
        if let Some(id) = request {
            if let Some(n) = self
                .requests
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_mut(&id)
            {
                n.attempted += 1;
                n.written += u32::from(result.is_ok());
            }
        }
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a write for the writer thread, starting it if need be.
    fn queue_for_writer(
        self: &Arc<Self>,
        ws: WriteSet,
        event: Event,
        hold: Option<Hold>,
    ) -> Result<Queued> {
        let slot = Arc::new(Slot::default());
        slot.lock().hold = hold;
        let wake = {
            let mut q = self.queue();
            if q.writer.is_none() {
                let signal = Arc::new(WriterSignal::default());
                let (log, theirs) = (Arc::downgrade(self), Arc::clone(&signal));
                std::thread::Builder::new()
                    .name("audit-writer".into())
                    .spawn(move || writer_thread(log, theirs))
                    .map_err(|e| Error::io("starting the audit writer thread", e))?;
                q.writer = Some(signal);
                q.writer_idle = true;
            }
            q.pending.push((ws, event, Arc::clone(&slot)));
            Self::writer_to_wake(&mut q)
        };
        if let Some(signal) = wake {
            signal.notify(|w| w.work = true);
        }
        Ok(Queued { slot })
    }

    /// The writer thread, if it waits for work and may write now (no
    /// leading caller is writing): marked busy, for the caller to wake
    /// once it let go of the queue.
    fn writer_to_wake(q: &mut Queue) -> Option<Arc<WriterSignal>> {
        if q.writer_idle && !q.leader && !q.pending.is_empty() {
            q.writer_idle = false;
            q.writer.clone()
        } else {
            None
        }
    }

    fn commit_unfollowed(&self, ws: WriteSet, event: Event) -> Result<u64> {
        let slot = Arc::new(Slot::default());
        let (mut lead, wake) = {
            let mut q = self.queue();
            q.pending.push((ws, event, Arc::clone(&slot)));
            if q.writer.is_some() {
                (false, Self::writer_to_wake(&mut q))
            } else {
                (!std::mem::replace(&mut q.leader, true), None)
            }
        };
        if let Some(signal) = wake {
            signal.notify(|w| w.work = true);
        }
        loop {
            if lead {
                // One group per turn, then hand the lead on: no request
                // waits behind an endless stream of others.
                let group = std::mem::take(&mut self.queue().pending);
                for written in self.write_guarded(group) {
                    written.wake();
                }
                let wake = {
                    let mut q = self.queue();
                    match q.pending.first() {
                        // The writer thread started meanwhile: it takes
                        // over from here.
                        _ if q.writer.is_some() => {
                            q.leader = false;
                            Self::writer_to_wake(&mut q)
                        }
                        Some((_, _, next)) => {
                            next.answer(Answer::Lead);
                            None
                        }
                        None => {
                            q.leader = false;
                            None
                        }
                    }
                };
                if let Some(signal) = wake {
                    signal.notify(|w| w.work = true);
                }
            }
            match slot.wait() {
                Answer::Done(r) => return r,
                Answer::Lead => lead = true,
            }
        }
    }

    /// Writes one group (see [`AuditLog::write_group`]); should the write
    /// panic, nobody is left waiting ([`LeaderGuard`]). Returns the group's
    /// slots, answered, for the writer to wake.
    fn write_guarded(&self, group: Vec<(WriteSet, Event, Arc<Slot>)>) -> Vec<Arc<Slot>> {
        let mut guard = LeaderGuard {
            log: self,
            slots: group.iter().map(|(_, _, s)| Arc::clone(s)).collect(),
            done: false,
        };
        self.write_group(group);
        guard.done = true;
        std::mem::take(&mut guard.slots)
    }

    /// The writer thread's turn: writes one group after another while
    /// requests are queued (each group is everything queued when it is
    /// taken), waking each group's waiters as soon as the next group is
    /// taken. Returns the last group's slots, answered, for the thread to
    /// wake once it let go of the log. A write that panics fails its group
    /// and everyone queued and stops the log ([`LeaderGuard`]); the writer
    /// lives on, so what comes later is refused rather than left waiting.
    fn write_queued(&self) -> Vec<Arc<Slot>> {
        let mut written: Vec<Arc<Slot>> = Vec::new();
        let mut leading = false;
        loop {
            let group = {
                let mut q = self.queue();
                if leading {
                    q.leader = false;
                }
                // A leading caller (queued before the writer started) is
                // writing: it wakes the writer when it is done.
                if q.leader || q.pending.is_empty() {
                    q.writer_idle = true;
                    return written;
                }
                q.leader = true;
                leading = true;
                std::mem::take(&mut q.pending)
            };
            for slot in written.drain(..) {
                slot.wake();
            }
            written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.write_guarded(group)
            }))
            .unwrap_or_default();
        }
    }

    /// Writes one group of queued requests as one batch and hands each its
    /// result.
    /// Numbers `events` after the log's end in `state` (index and `prev`
    /// of each) and gathers one batch: each request's writes, each event,
    /// its subject index rows, the `i` row, and the tiles the group
    /// completes. Nothing in `state` changes until [`Numbered::apply`].
    fn number(state: &State, events: impl Iterator<Item = (WriteSet, Event)>) -> Numbered {
        let mut merged = WriteSet::new();
        let mut hashes = Vec::new();
        let mut indices = Vec::new();
        let mut prev = state.last;
        let first = state.frontier.size();
        for (k, (ws, mut event)) in events.enumerate() {
            let index = first + k as u64;
            event.v = EVENT_V1;
            event.index = index;
            event.prev = hex::encode(prev);
            // Encoding a plain struct of strings and numbers cannot fail.
            let bytes = serde_json::to_vec(&event).unwrap_or_default();
            prev = merkle::leaf_hash(&bytes);
            hashes.push(prev);
            merged.append(ws);
            merged.put(Table::Audit, event_key(index), bytes);
            index_subjects(&mut merged, index, &event.subjects);
            indices.push(index);
        }
        merged.put(
            Table::Audit,
            INDEXED_KEY.to_vec(),
            (first + indices.len() as u64).to_be_bytes().to_vec(),
        );
        // The tiles this group completes go in its batch; the edge they
        // leave replaces the log's once the batch is written.
        let mut edge = None;
        if state.edge.completes_a_tile(hashes.len() as u64) {
            let mut grown = state.edge.clone();
            let mut full = Vec::new();
            for h in &hashes {
                grown.push(*h, &mut full);
            }
            for tile in full {
                merged.put(
                    Table::Audit,
                    tile_key(tile.level, tile.index),
                    tile.encode(),
                );
            }
            edge = Some(grown);
        }
        Numbered {
            merged,
            hashes,
            indices,
            edge,
            last: prev,
        }
    }

    fn write_group(&self, group: Vec<(WriteSet, Event, Arc<Slot>)>) {
        if self.store.shared() {
            return self.write_shared_group(group);
        }
        let mut state = self.lock();
        if state.failed {
            let why = refusal(&state);
            drop(state);
            for (_, _, slot) in group {
                slot.set(Answer::Done(Err(Error::Unavailable(why.clone()))));
            }
            return;
        }
        let (events, slots): (Vec<_>, Vec<_>) = group
            .into_iter()
            .map(|(ws, event, slot)| ((ws, event), slot))
            .unzip();
        let Numbered {
            merged,
            hashes,
            indices,
            edge,
            last,
        } = Self::number(&state, events.into_iter());
        match self.store.write(merged) {
            Ok(()) => {
                Numbered::apply(&mut state, &hashes, edge, last);
                self.grown.send_replace(state.frontier.size());
                drop(state);
                for (index, slot) in indices.into_iter().zip(slots) {
                    slot.set(Answer::Done(Ok(index)));
                }
            }
            Err(e) => {
                // The batch may still be replayed from the WAL at the next
                // start: appending more under the same indices now could
                // overwrite it. The log takes no more writes until reopened.
                state.failed = true;
                self.refusing.send_replace(true);
                state.full =
                    matches!(&e, Error::Unavailable(m) if m == crate::storage::STORAGE_FULL);
                drop(state);
                tracing::error!(error = %e, "audit write failed; the audit log refuses writes until the vault restarts");
                for slot in slots {
                    // A full disk keeps its own, clear error.
                    let each = match &e {
                        Error::Unavailable(m) => Error::Unavailable(m.clone()),
                        other => Error::Storage(other.to_string()),
                    };
                    slot.set(Answer::Done(Err(each)));
                }
            }
        }
    }

    /// [`AuditLog::write_group`] on a store other servers append to: the
    /// group is numbered after the stored log and written only if no other
    /// server appended meanwhile (the condition on `i`); otherwise the log
    /// takes in their events and numbers the group again. A failed write
    /// fails the group but not the log: whether it was written after all,
    /// the next group's condition finds out.
    fn write_shared_group(&self, group: Vec<(WriteSet, Event, Arc<Slot>)>) {
        let mut state = self.lock();
        if state.failed {
            let why = refusal(&state);
            drop(state);
            for (_, _, slot) in group {
                slot.set(Answer::Done(Err(Error::Unavailable(why.clone()))));
            }
            return;
        }
        // Other servers wait while this group is numbered and written (the
        // write's condition still guards it should the lock be lost).
        let outcomes: Vec<Result<u64>> = match self.store.lock_appends() {
            Err(e) => failed_all(&e, group.len()),
            Ok(locked) => {
                // Let go of the lock however this ends, a panic included.
                let _unlock = locked.then_some(AppendLock(self.store.as_ref()));
                match self.append_locked(&mut state, &group) {
                    Ok(appended) => self
                        .appended(&mut state, appended)
                        .into_iter()
                        .map(Ok)
                        .collect(),
                    // A condition of one request failed: each is written
                    // alone, so that only the requests whose own
                    // conditions fail do.
                    Err(Error::Conflict) if group.len() > 1 => group
                        .iter()
                        .map(|one| {
                            match self.append_locked(&mut state, std::slice::from_ref(one)) {
                                Ok(appended) => Ok(self.appended(&mut state, appended)[0]),
                                Err(e) => failed_all(&e, 1).remove(0),
                            }
                        })
                        .collect(),
                    Err(e) => failed_all(&e, group.len()),
                }
            }
        };
        drop(state);
        for ((_, _, slot), outcome) in group.into_iter().zip(outcomes) {
            slot.set(Answer::Done(outcome));
        }
    }

    /// Takes a group written to the shared store into `state`; returns its
    /// events' indices.
    fn appended(&self, state: &mut State, (indices, hashes, edge, last): Appended) -> Vec<u64> {
        Numbered::apply(state, &hashes, edge, last);
        state.head = Some(head_row(state.frontier.size(), &last));
        self.grown.send_replace(state.frontier.size());
        indices
    }

    /// Numbers and writes a group holding the append lock: takes in what
    /// the others appended, then writes; should the write's condition fail
    /// all the same (the lock lost with its connection), takes in what
    /// came meanwhile and tries again.
    fn append_locked(
        &self,
        state: &mut State,
        group: &[(WriteSet, Event, Arc<Slot>)],
    ) -> Result<Appended> {
        self.catch_up(state)?;
        for _ in 0..SHARED_APPEND_ATTEMPTS {
            let events = group
                .iter()
                .map(|(ws, event, _)| (ws.clone(), event.clone()));
            let Numbered {
                mut merged,
                hashes,
                indices,
                edge,
                last,
            } = Self::number(state, events);
            merged.expect(Table::Audit, HEAD_KEY.to_vec(), state.head.clone());
            merged.put(
                Table::Audit,
                HEAD_KEY.to_vec(),
                head_row(state.frontier.size() + group.len() as u64, &last),
            );
            match self.store.write(merged) {
                Ok(()) => {
                    return Ok((indices, hashes, edge, last));
                }
                Err(Error::Conflict) => {
                    let before = state.head.clone();
                    self.catch_up(state)?;
                    if state.head == before {
                        // Not another server's append: a condition of a
                        // request of the group failed. The group fails
                        // (its requests answer ABORTED; they may retry).
                        return Err(Error::Conflict);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict)
    }

    /// Follows whether the log refuses writes (true after a failed write,
    /// until the vault restarts): the data services' health follows it.
    pub fn watch_refusing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.refusing.subscribe()
    }

    /// Follows the log's size as events are appended.
    pub fn watch_size(&self) -> tokio::sync::watch::Receiver<u64> {
        self.grown.subscribe()
    }

    /// How many events.
    pub fn size(&self) -> u64 {
        self.refresh_or_log();
        self.lock().frontier.size()
    }

    /// The tree head now.
    pub fn root(&self) -> (u64, Hash) {
        self.refresh_or_log();
        let s = self.lock();
        (s.frontier.size(), s.frontier.root())
    }

    /// [`AuditLog::refresh`], its failure logged: the log answers with
    /// what it has.
    fn refresh_or_log(&self) {
        if let Err(e) = self.refresh() {
            tracing::warn!(error = %e, "could not take in other servers' audit events");
        }
    }

    /// Up to `limit` events from `from`, as stored (the leaves).
    pub fn events(&self, from: u64, limit: usize) -> Result<Vec<Vec<u8>>> {
        let rows = self
            .store
            .scan_from(Table::Audit, &event_key(from), limit)?;
        Ok(rows
            .into_iter()
            .take_while(|(k, _)| k.first() == Some(&EVENT_PREFIX))
            .map(|(_, v)| v)
            .collect())
    }

    /// A page of events from `from`: at most `limit`, and only as many as
    /// fit in `budget` bytes when each counts `cost(event length)`, but
    /// at least one if there is one: an event larger than the budget
    /// travels alone rather than never. Reads the store a chunk at a time,
    /// so a page of large events does not read `limit` of them.
    pub fn events_page(
        &self,
        from: u64,
        limit: usize,
        budget: usize,
        cost: impl Fn(usize) -> usize,
    ) -> Result<Vec<Vec<u8>>> {
        let mut page: Vec<Vec<u8>> = Vec::new();
        let mut used = 0usize;
        while page.len() < limit {
            let want = (limit - page.len()).min(SCAN_CHUNK);
            let chunk = self.events(from + page.len() as u64, want)?;
            let got = chunk.len();
            for event in chunk {
                used = used.saturating_add(cost(event.len()));
                if !page.is_empty() && used > budget {
                    return Ok(page);
                }
                page.push(event);
            }
            if got < want {
                break;
            }
        }
        Ok(page)
    }

    /// A reader of the tree's stored tiles and a copy of its right edge,
    /// for proofs in trees of up to `size` events: proofs are computed
    /// outside the log's lock, so they never hold up commits (full tiles
    /// never change once stored).
    fn tree_reader(&self, size: u64) -> Result<tiles::Reader<impl tiles::Fetch + '_>> {
        if size > self.lock().edge.size() {
            self.refresh_or_log();
        }
        let edge = {
            let s = self.lock();
            if size > s.edge.size() {
                return Err(Error::InvalidArgument(format!(
                    "the log has only {} events",
                    s.edge.size()
                )));
            }
            s.edge.clone()
        };
        let store = &self.store;
        Ok(tiles::Reader::new(edge, move |level, index| {
            store.get(Table::Audit, &tile_key(level, index))
        }))
    }

    /// The inclusion proof of event `index` in the tree of `size` events.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>> {
        let mut proofs = self.inclusion_proofs(&[index], size)?;
        proofs.pop().ok_or(Error::Integrity)
    }

    /// The events naming `pseudonym` in `subjects`, from index `from` and
    /// below `below`: at most `limit` (index, event) pairs, oldest first.
    pub fn subject_events(
        &self,
        pseudonym: &[u8; 32],
        from: u64,
        below: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>> {
        let rows = self
            .store
            .scan_from(Table::Audit, &subject_key(pseudonym, from), limit)?;
        let mut out = Vec::new();
        for (k, _) in rows {
            if k.len() != 41 || k[0] != SUBJECT_PREFIX || k[1..33] != pseudonym[..] {
                break;
            }
            let index = u64::from_be_bytes(k[33..].try_into().map_err(|_| Error::Integrity)?);
            if index >= below {
                break;
            }
            let event = self
                .store
                .get(Table::Audit, &event_key(index))?
                .ok_or(Error::Integrity)?;
            // The index is outside the tree: trust only what the event says.
            let names = serde_json::from_slice::<Event>(&event).is_ok_and(|e| {
                e.index == index && e.subjects.iter().any(|s| *s == hex::encode(pseudonym))
            });
            if names {
                out.push((index, event));
            }
        }
        Ok(out)
    }

    /// Inclusion proofs of several events in the tree of `size` events
    /// (one tile reader for all, so a page reads each tile about once).
    pub fn inclusion_proofs(&self, indices: &[u64], size: u64) -> Result<Vec<Vec<Hash>>> {
        let mut tree = self.tree_reader(size)?;
        let mut sub_root = |start, len| tree.range_root(start, len);
        indices
            .iter()
            .map(|&index| {
                merkle::inclusion_path(index, size, &mut sub_root)?.ok_or_else(|| {
                    Error::InvalidArgument("index is not below the tree size".into())
                })
            })
            .collect()
    }

    /// The consistency proof between trees of `old` and `new` events.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>> {
        let mut tree = self.tree_reader(new)?;
        merkle::consistency_path(old, new, &mut |start, len| tree.range_root(start, len))?
            .ok_or_else(|| Error::InvalidArgument("need 1 <= old size <= new size".into()))
    }

    /// A signed checkpoint of the log now: the stored one if the log has
    /// not grown since, else a new one, stored.
    pub fn checkpoint(&self, origin: &str, key: &SigningKey) -> Result<String> {
        // Checkpoints are stored in order (sizes only grow, and one is
        // made at a time); commits go on meanwhile.
        let _one_at_a_time = self.checkpointing.lock().unwrap_or_else(|p| p.into_inner());
        let (size, root) = self.root();
        if let Some(note) = self.store.get(Table::Audit, &checkpoint_key(size))? {
            // Never hand out a stored note that no longer matches the log.
            if checkpoint::parse(&note).map(|(_, r)| r) != Some(root) {
                return Err(Error::Integrity);
            }
            return String::from_utf8(note).map_err(|_| Error::Integrity);
        }
        let note = checkpoint::sign(origin, size, &root, key);
        let mut ws = WriteSet::new();
        ws.put(
            Table::Audit,
            checkpoint_key(size),
            note.clone().into_bytes(),
        );
        // Another server may sign the same size meanwhile (and witnesses
        // cosign it): its stored note stands.
        ws.expect(Table::Audit, checkpoint_key(size), None);
        match self.store.write(ws) {
            Err(Error::Conflict) => self.stored_checkpoint(size)?.ok_or(Error::Conflict),
            other => other.map(|()| note),
        }
    }

    /// Adds the witnesses' cosignatures in `submitted` (a checkpoint this
    /// log stored, with cosignature lines) to the stored checkpoint of its
    /// size, so that it is served with them from now on. Returns the
    /// tree size and each cosignature taken (witness name, time).
    pub fn add_cosignatures(
        &self,
        submitted: &str,
        witnesses: &[checkpoint::WitnessKey],
        now_secs: u64,
    ) -> Result<(u64, Vec<(String, u64)>)> {
        let size = checkpoint::parse(submitted.as_bytes())
            .map(|(size, _)| size)
            .ok_or_else(|| Error::InvalidArgument("not a checkpoint".into()))?;
        let _one_at_a_time = self.checkpointing.lock().unwrap_or_else(|p| p.into_inner());
        let stored = self
            .stored_checkpoint(size)?
            .ok_or_else(|| Error::NotFound(format!("no checkpoint of size {size}")))?;
        let (note, taken) =
            checkpoint::merge_cosignatures(&stored, submitted, witnesses, now_secs)?;
        if !taken.is_empty() {
            let mut ws = WriteSet::new();
            ws.put(Table::Audit, checkpoint_key(size), note.into_bytes());
            // Only over the note merged into: another server's merge of
            // other cosignatures meanwhile is not undone (the witness
            // submits again).
            ws.expect(
                Table::Audit,
                checkpoint_key(size),
                Some(stored.into_bytes()),
            );
            self.store.write(ws)?;
        }
        Ok((size, taken))
    }

    /// The stored checkpoint of tree size `size`, if there is one.
    pub fn stored_checkpoint(&self, size: u64) -> Result<Option<String>> {
        self.store
            .get(Table::Audit, &checkpoint_key(size))?
            .map(|note| String::from_utf8(note).map_err(|_| Error::Integrity))
            .transpose()
    }

    /// A page of checkpoints for auditors: at most `limit` stored ones of
    /// size ≥ `from_size`, then `current` (if not already last); and
    /// whether stored ones between the page and `current` were left out.
    pub fn checkpoint_page(
        &self,
        from_size: u64,
        limit: usize,
        current: String,
    ) -> Result<(Vec<String>, bool)> {
        // Only those below the current one: a checkpoint stored since it
        // was signed would otherwise come after it.
        let current_size = checkpoint::parse(current.as_bytes()).map_or(0, |(size, _)| size);
        // None can lie between `from_size` and the current one if it is not
        // below it (a witness asks for the current one alone): no scan.
        let mut page = if from_size < current_size {
            self.checkpoints(from_size, limit + 1)?
        } else {
            Vec::new()
        };
        page.retain(|note| {
            checkpoint::parse(note.as_bytes()).is_some_and(|(s, _)| s < current_size)
        });
        let more = page.len() > limit;
        page.truncate(limit);
        if page.last() != Some(&current) {
            page.push(current);
        }
        Ok((page, more))
    }

    /// Stored checkpoints of size ≥ `from_size`, in order, at most `limit`.
    pub fn checkpoints(&self, from_size: u64, limit: usize) -> Result<Vec<String>> {
        let rows = self
            .store
            .scan_from(Table::Audit, &checkpoint_key(from_size), limit)?;
        rows.into_iter()
            .take_while(|(k, _)| k.first() == Some(&CHECKPOINT_PREFIX))
            .map(|(_, v)| String::from_utf8(v).map_err(|_| Error::Integrity))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{RocksStore, StoreOptions};

    fn store(dir: &std::path::Path) -> Arc<dyn Store> {
        Arc::new(RocksStore::open(dir, &StoreOptions::default()).unwrap())
    }

    /// The log in `s`, opened, with `n` more events of `op` appended.
    fn log_with(s: &Arc<dyn Store>, n: usize, op: &str) -> AuditLog {
        let log = AuditLog::open(Arc::clone(s)).unwrap();
        for _ in 0..n {
            log.commit(WriteSet::new(), event(op)).unwrap();
        }
        log
    }

    fn event(op: &str) -> Event {
        Event {
            principal: "p".into(),
            operation: op.into(),
            decision: "allowed".into(),
            ..Event::default()
        }
    }

    #[test]
    fn appends_chain_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let log = AuditLog::open(Arc::clone(&s)).unwrap();
        for i in 0..5 {
            assert_eq!(log.commit(WriteSet::new(), event("read")).unwrap(), i);
        }
        let (size, root) = log.root();
        let events = log.events(0, 100).unwrap();
        assert_eq!(events.len(), 5);
        let second: Event = serde_json::from_slice(&events[1]).unwrap();
        assert_eq!(second.prev, hex::encode(merkle::leaf_hash(&events[0])));
        let key = SigningKey::from_bytes(&[3; 32]);
        let note = log.checkpoint("vault.eu/t", &key).unwrap();
        assert_eq!(log.checkpoint("vault.eu/t", &key).unwrap(), note);
        drop(log);
        let log = AuditLog::open(Arc::clone(&s)).unwrap();
        assert_eq!(log.root(), (size, root));
        assert_eq!(log.checkpoints(0, 10).unwrap(), vec![note.clone()]);
        assert_eq!(log.inclusion_proof(2, 5).unwrap().len(), 3);
        assert!(log.inclusion_proof(5, 5).is_err());
        assert!(log.consistency_proof(2, 9).is_err());
        // Editing the newest event (no later event chains to it) or dropping
        // events a checkpoint covers: the signed checkpoint no longer fits.
        let mut ws = WriteSet::new();
        let mut last = events[4].clone();
        last[5] ^= 1;
        ws.put(Table::Audit, event_key(4), last);
        s.write(ws).unwrap();
        drop(log);
        assert!(matches!(
            AuditLog::open(Arc::clone(&s)),
            Err(Error::Integrity)
        ));
        let mut ws = WriteSet::new();
        ws.put(Table::Audit, event_key(4), events[4].clone());
        s.write(ws).unwrap();
        let log = AuditLog::open(Arc::clone(&s)).unwrap();
        let mut ws = WriteSet::new();
        ws.delete(Table::Audit, event_key(4));
        s.write(ws).unwrap();
        drop(log);
        assert!(matches!(
            AuditLog::open(Arc::clone(&s)),
            Err(Error::Integrity)
        ));
        let mut ws = WriteSet::new();
        ws.put(Table::Audit, event_key(4), events[4].clone());
        s.write(ws).unwrap();
        let log = AuditLog::open(Arc::clone(&s)).unwrap();
        // A raw edit of a stored event is caught at open.
        let mut ws = WriteSet::new();
        let mut edited = events[2].clone();
        edited[5] ^= 1;
        ws.put(Table::Audit, event_key(2), edited);
        s.write(ws).unwrap();
        drop(log);
        assert!(matches!(AuditLog::open(s), Err(Error::Integrity)));
    }

    #[test]
    fn a_refused_log_leaves_no_tiles_behind() {
        // A log of 600 events from before the tiles, signed at 600, whose
        // events someone replaced with another consistent history: every
        // event follows the one before, only the checkpoint refuses it.
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let log = log_with(&s, 600, "read");
        log.checkpoint("o", &SigningKey::from_bytes(&[3; 32]))
            .unwrap();
        drop(log);
        let rows = |s: &Arc<dyn Store>, prefix: u8| s.scan_prefix(Table::Audit, &[prefix]).unwrap();
        let true_tiles = rows(&s, TILE_PREFIX);
        let true_events = rows(&s, EVENT_PREFIX);
        assert_eq!(true_tiles.len(), 2);
        let other_dir = tempfile::tempdir().unwrap();
        let other = store(other_dir.path());
        drop(log_with(&other, 600, "export"));
        let mut ws = WriteSet::new();
        for (k, _) in &true_tiles {
            ws.delete(Table::Audit, k.clone());
        }
        for (k, v) in rows(&other, EVENT_PREFIX) {
            ws.put(Table::Audit, k, v);
        }
        s.write(ws).unwrap();
        assert!(matches!(
            AuditLog::open(Arc::clone(&s)),
            Err(Error::Integrity)
        ));
        // The forged history's tiles were computed, but not stored: the
        // true events, put back, open and get their own.
        assert!(rows(&s, TILE_PREFIX).is_empty());
        let mut ws = WriteSet::new();
        for (k, v) in true_events {
            ws.put(Table::Audit, k, v);
        }
        s.write(ws).unwrap();
        let log = AuditLog::open(Arc::clone(&s)).unwrap();
        assert_eq!(log.size(), 600);
        assert_eq!(rows(&s, TILE_PREFIX), true_tiles);
    }

    #[test]
    fn the_tree_is_stored_as_tiles_rebuilt_checked_and_trimmed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let log = log_with(&s, 600, "read");
        let tile_rows = || s.scan_prefix(Table::Audit, &[TILE_PREFIX]).unwrap();
        let check = |log: &AuditLog, n: usize| {
            let leaves: Vec<Hash> = log
                .events(0, 1000)
                .unwrap()
                .iter()
                .map(|e| merkle::leaf_hash(e))
                .collect();
            assert_eq!(leaves.len(), n);
            assert_eq!(log.root(), (n as u64, merkle::root(&leaves)));
            for (i, size) in [(0, n), (255, 256), (256, n), (n - 1, n), (100, 513), (7, 9)] {
                assert_eq!(
                    log.inclusion_proof(i as u64, size as u64).unwrap(),
                    merkle::inclusion_proof(&leaves[..size], i).unwrap(),
                    "inclusion {i} in {size}"
                );
            }
            for (old, new) in [(1, n), (256, 512), (300, n), (n, n), (3, 7)] {
                assert_eq!(
                    log.consistency_proof(old as u64, new as u64).unwrap(),
                    merkle::consistency_proof(&leaves[..new], old).unwrap(),
                    "consistency {old} to {new}"
                );
            }
            assert!(log.inclusion_proof(0, n as u64 + 1).is_err());
            assert!(log.consistency_proof(0, 5).is_err());
        };
        // Two full tiles of leaf hashes are stored; the rest is the edge.
        let first = tile_rows();
        assert_eq!(first.len(), 2);
        assert_eq!(first[1].0, tile_key(0, 1));
        assert_eq!(first[1].1.len(), tiles::TILE_BYTES);
        check(&log, 600);
        // Proofs come from the stored tiles: one edited under a running
        // vault changes them, so they fail against the signed root.
        let mut ws = WriteSet::new();
        let mut edited = first[0].1.clone();
        edited[40] ^= 1;
        ws.put(Table::Audit, tile_key(0, 0), edited);
        s.write(ws).unwrap();
        let events = log.events(0, 600).unwrap();
        let leaves: Vec<Hash> = events.iter().map(|e| merkle::leaf_hash(e)).collect();
        assert_ne!(
            log.inclusion_proof(0, 600).unwrap(),
            merkle::inclusion_proof(&leaves, 0).unwrap()
        );
        let mut ws = WriteSet::new();
        ws.put(Table::Audit, tile_key(0, 0), first[0].1.clone());
        s.write(ws).unwrap();
        drop(log);
        // A log from before the tiles gets them at open.
        let mut ws = WriteSet::new();
        for (k, _) in tile_rows() {
            ws.delete(Table::Audit, k);
        }
        s.write(ws).unwrap();
        let log = AuditLog::open(Arc::clone(&s)).unwrap();
        assert_eq!(tile_rows(), first);
        check(&log, 600);
        drop(log);
        // A stored tile that does not fit the events: refused at open.
        let mut ws = WriteSet::new();
        let mut edited = first[0].1.clone();
        edited[40] ^= 1;
        ws.put(Table::Audit, tile_key(0, 0), edited);
        s.write(ws).unwrap();
        assert!(matches!(
            AuditLog::open(Arc::clone(&s)),
            Err(Error::Integrity)
        ));
        let mut ws = WriteSet::new();
        ws.put(Table::Audit, tile_key(0, 0), first[0].1.clone());
        s.write(ws).unwrap();
        // The tail cut below the second tile (no checkpoint covered it):
        // the tile goes too, and new events make a new one.
        let mut ws = WriteSet::new();
        for i in 300..600 {
            ws.delete(Table::Audit, event_key(i));
        }
        s.write(ws).unwrap();
        let log = AuditLog::open(Arc::clone(&s)).unwrap();
        assert_eq!(log.size(), 300);
        assert_eq!(tile_rows(), first[..1]);
        for _ in 0..300 {
            let mut ev = event("write");
            ev.principal = "another".into();
            log.commit(WriteSet::new(), ev).unwrap();
        }
        check(&log, 600);
        let second = tile_rows();
        assert_eq!(second.len(), 2);
        assert_ne!(second[1], first[1]);
        drop(log);
        let log = AuditLog::open(s).unwrap();
        check(&log, 600);
    }

    #[test]
    fn the_subject_index_is_written_with_events_and_rebuilt_for_old_logs() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let log = AuditLog::open(Arc::clone(&s)).unwrap();
        let alice = hex::encode([0xa1; 32]);
        let bob = hex::encode([0xb0; 32]);
        for i in 0..6u64 {
            let mut ev = event("read");
            ev.subjects = match i % 3 {
                0 => vec![alice.clone()],
                1 => vec![alice.clone(), bob.clone()],
                _ => vec!["not hex".into()],
            };
            log.commit(WriteSet::new(), ev).unwrap();
        }
        let indices = |log: &AuditLog, who: u8, from: u64, below: u64| -> Vec<u64> {
            log.subject_events(&[who; 32], from, below, 100)
                .unwrap()
                .into_iter()
                .map(|(i, _)| i)
                .collect()
        };
        assert_eq!(indices(&log, 0xa1, 0, 6), [0, 1, 3, 4]);
        assert_eq!(indices(&log, 0xa1, 2, 4), [3]);
        assert_eq!(indices(&log, 0xb0, 0, 6), [1, 4]);
        assert!(indices(&log, 0xff, 0, 6).is_empty());
        // A log written before the index: its rows are rebuilt at open.
        drop(log);
        let mut ws = WriteSet::new();
        for (k, _) in s.scan_prefix(Table::Audit, &[SUBJECT_PREFIX]).unwrap() {
            ws.delete(Table::Audit, k);
        }
        ws.delete(Table::Audit, INDEXED_KEY.to_vec());
        s.write(ws).unwrap();
        let log = AuditLog::open(Arc::clone(&s)).unwrap();
        assert_eq!(indices(&log, 0xa1, 0, 6), [0, 1, 3, 4]);
        assert_eq!(indices(&log, 0xb0, 0, 6), [1, 4]);
        // The tail cut off (no checkpoint covered it): the index rows of
        // the lost events go at open, so new events are not misattributed.
        drop(log);
        let mut ws = WriteSet::new();
        ws.delete(Table::Audit, event_key(5));
        ws.delete(Table::Audit, event_key(4));
        s.write(ws).unwrap();
        let log = AuditLog::open(Arc::clone(&s)).unwrap();
        assert_eq!(log.size(), 4);
        assert!(s
            .get(Table::Audit, &subject_key(&[0xa1; 32], 4))
            .unwrap()
            .is_none());
        let mut ev = event("read");
        ev.subjects = vec![bob.clone()];
        log.commit(WriteSet::new(), ev).unwrap();
        assert_eq!(indices(&log, 0xa1, 0, 9), [0, 1, 3]);
        assert_eq!(indices(&log, 0xb0, 0, 9), [1, 4]);
    }

    #[test]
    fn pages_stop_at_the_byte_budget_but_never_come_back_empty() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(store(dir.path())).unwrap();
        for i in 0..300u64 {
            let mut ev = event("read");
            // Every tenth event is large.
            if i % 10 == 0 {
                ev.records = vec![hex::encode([7; 32]); 100];
            }
            log.commit(WriteSet::new(), ev).unwrap();
        }
        let all = log.events(0, 1000).unwrap();
        assert_eq!(all.len(), 300);
        let large = all[0].len();
        let small = all[1].len();
        assert!(large > 6000 && small < 300, "{large} {small}");
        let cost = |n: usize| n + 3;
        // No budget: `limit` events, across several store reads.
        assert_eq!(
            log.events_page(0, 1000, usize::MAX, cost).unwrap(),
            all,
            "past the end: what there is"
        );
        assert_eq!(
            log.events_page(5, 200, usize::MAX, cost).unwrap(),
            all[5..205]
        );
        // A budget: pages as long as fit, resumed where they stopped, and
        // together the whole log.
        let budget = 2 * large + 20 * small;
        let mut from = 0;
        let mut pages = 0;
        while from < 300 {
            let page = log.events_page(from, 1000, budget, cost).unwrap();
            let bytes: usize = page.iter().map(|e| cost(e.len())).sum();
            assert!(bytes <= budget, "{bytes} > {budget}");
            let next = all.get(from as usize + page.len());
            assert!(next.is_none_or(|e| bytes + cost(e.len()) > budget));
            assert_eq!(page, all[from as usize..from as usize + page.len()]);
            from += page.len() as u64;
            pages += 1;
        }
        assert!(pages > 5, "{pages}");
        // A budget below one event: one at a time, never none.
        assert_eq!(log.events_page(0, 1000, 10, cost).unwrap(), all[..1]);
        assert_eq!(log.events_page(299, 1000, 0, cost).unwrap(), all[299..]);
        assert!(log.events_page(300, 1000, 0, cost).unwrap().is_empty());
    }

    #[test]
    fn checkpoints_come_in_pages_ending_with_the_current_one() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(store(dir.path())).unwrap();
        let key = SigningKey::from_bytes(&[3; 32]);
        let mut notes = Vec::new();
        for _ in 0..5 {
            log.commit(WriteSet::new(), event("read")).unwrap();
            notes.push(log.checkpoint("o", &key).unwrap());
        }
        let current = notes[4].clone();
        let page = |from, limit| log.checkpoint_page(from, limit, current.clone()).unwrap();
        assert_eq!(page(0, 10), (notes.clone(), false));
        assert_eq!(page(0, 4), (notes.clone(), false), "the 5th is the current");
        assert_eq!(
            page(0, 2),
            (
                vec![notes[0].clone(), notes[1].clone(), current.clone()],
                true
            )
        );
        assert_eq!(
            page(3, 2),
            (
                vec![notes[2].clone(), notes[3].clone(), current.clone()],
                false
            )
        );
        assert_eq!(page(9, 2), (vec![current.clone()], false));
        assert_eq!(page(u64::MAX, 1000), (vec![current.clone()], false));
    }

    #[test]
    fn concurrent_commits_are_grouped_dense_and_chained() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let log = Arc::new(AuditLog::open(Arc::clone(&s)).unwrap());
        let indices: Vec<u64> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let log = Arc::clone(&log);
                    scope.spawn(move || {
                        (0..50)
                            .map(|_| log.commit(WriteSet::new(), event("read")).unwrap())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let mut sorted = indices.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..400).collect::<Vec<_>>(), "dense, each once");
        drop(log);
        // Reopening re-checks every index and prev link.
        let log = AuditLog::open(s).unwrap();
        assert_eq!(log.size(), 400);
    }
}
