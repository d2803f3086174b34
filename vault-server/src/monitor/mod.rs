//! The monitor: detectors that act while a request is served, and the
//! alerts they raise.
//!
//! - **Budgets** (in the policy file): records and bytes returned per
//!   principal and purpose over a sliding window. A read that would go over
//!   is not served (`RESOURCE_EXHAUSTED`) and raises an alert.
//! - **Lockout** (in the server configuration; off in development mode): a principal refused
//!   (`PERMISSION_DENIED`) `after_denials` times within `window` is refused
//!   everything for `duration`, and an alert is raised; a custodian can
//!   lift it.
//!
//! Every alert goes to the live subscribers ([`Monitor::subscribe`], the
//! auditors' `Watch` stream) at once, and into the audit log as an event of
//! operation `alert` (its principal is the one the alert is about, its
//! detail the alert as JSON), written by a thread of the monitor's own so
//! that no request waits for it.
//!
//! The monitor's counts live in memory: a restart starts them afresh (a
//! lockout and the budgets' windows too).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use serde::Serialize;

pub mod metrics;

use crate::audit::{AuditLog, Event};
use crate::policy::{Budget, Caller};
use crate::storage::WriteSet;
use crate::{Error, Result};

/// Alerts kept for a subscriber that reads slowly; one that falls further
/// behind is told how many it missed.
const ALERT_BACKLOG: usize = 1024;
/// Each budget window is counted in this many slots (its precision).
const WINDOW_SLOTS: u64 = 60;
/// Past this many counters, expired ones are swept.
const SWEEP_ABOVE: usize = 10_000;
/// Witness refusals remembered, so that each is taken once.
pub const REFUSALS_KEPT: usize = 1024;

/// Where the monitor reads the time (milliseconds since the Unix epoch).
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A clock that moves only when told (for tests of windows and expiry).
#[derive(Debug)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock standing at `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        ManualClock(AtomicU64::new(now_ms))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// How serious an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Someone should look.
    Warning,
    /// Act now.
    Critical,
}

impl Severity {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// A read was refused: it would have gone over a budget.
    BudgetExceeded,
    /// A principal was locked out after repeated denials.
    Lockout,
    /// A record of a honey subject (a decoy no real workflow reads) was
    /// read.
    HoneyRead,
    /// A witness refused a checkpoint of this vault's log: a fork, a
    /// rollback or a rewritten history.
    WitnessRefused,
}

impl AlertKind {
    /// Its name (as in the JSON).
    pub fn name(self) -> &'static str {
        match self {
            AlertKind::BudgetExceeded => "budget_exceeded",
            AlertKind::Lockout => "lockout",
            AlertKind::HoneyRead => "honey_read",
            AlertKind::WitnessRefused => "witness_refused",
        }
    }
}

/// One alert. Never holds personal data: principals, purposes (policy
/// names), counts and limits only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alert {
    /// Its number since the monitor started (1, 2, …).
    pub seq: u64,
    /// When it was raised (milliseconds since the Unix epoch).
    pub time_ms: u64,
    /// How serious.
    pub severity: Severity,
    /// What about.
    pub kind: AlertKind,
    /// The principal it concerns.
    pub principal: String,
    /// The purpose stated, if one.
    pub purpose: Option<String>,
    /// What happened, in words (counts and limits).
    pub message: String,
}

impl Alert {
    /// An alert, numbered when raised.
    fn new(
        time_ms: u64,
        severity: Severity,
        kind: AlertKind,
        principal: &str,
        purpose: Option<&str>,
        message: String,
    ) -> Alert {
        Alert {
            seq: 0,
            time_ms,
            severity,
            kind,
            principal: principal.to_owned(),
            purpose: purpose.map(str::to_owned),
            message,
        }
    }
}

/// One principal's use of one budget now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetUse {
    /// The principal whose reads it counts.
    pub principal: String,
    /// The budget's principal: the same, or `*` (each principal counted
    /// on its own).
    pub budget_principal: String,
    /// The budget's purpose (`*`: every purpose together).
    pub purpose: String,
    /// The budget's window.
    pub window_secs: u64,
    /// Records and bytes returned within the window.
    pub records: u64,
    /// Bytes.
    pub bytes: u64,
    /// The budget's limits.
    pub records_limit: Option<u64>,
    /// Bytes limit.
    pub bytes_limit: Option<u64>,
}

/// Lockout settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockoutOptions {
    /// Denials within `window` that lock a principal out; 0: never.
    pub after_denials: u32,
    /// The window denials are counted in.
    pub window: Duration,
    /// How long a lockout lasts.
    pub duration: Duration,
}

/// Denials that lock a principal out when a configuration file does not
/// say (`[monitor] lockout_after_denials`).
pub const DEFAULT_LOCKOUT_AFTER_DENIALS: u32 = 20;

/// Lockout off (a development vault, and the vault in process, where a
/// developer's or a test's mistakes should not lock anyone out), with the
/// configuration's default window and duration. A configured server
/// locks out after [`DEFAULT_LOCKOUT_AFTER_DENIALS`] unless told otherwise.
impl Default for LockoutOptions {
    fn default() -> Self {
        LockoutOptions {
            after_denials: 0,
            window: Duration::from_secs(60),
            duration: Duration::from_secs(15 * 60),
        }
    }
}

/// What the server does on a critical alert, besides alerting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnCritical {
    /// Nothing more.
    #[default]
    Alert,
    /// Seal the vault at once (custodians unseal it again).
    Seal,
}

/// Monitor settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MonitorOptions {
    /// Lockout after repeated denials.
    pub lockout: LockoutOptions,
    /// The response to a critical alert.
    pub on_critical: OnCritical,
}

/// Records and bytes returned in one slot of a budget's window.
#[derive(Debug, Clone, Copy)]
struct Slot {
    index: u64,
    records: u64,
    bytes: u64,
}

/// The reads counted against budgets of one window length, for one
/// principal and one purpose (or every purpose, for a budget over `*`).
#[derive(Debug, Default)]
struct Usage {
    slots: VecDeque<Slot>,
}

impl Usage {
    /// Drops the slots that left the window; returns what remains. A slot
    /// goes only once all of it is older than the window (61 slots), so a
    /// read is never counted for less than the whole window.
    fn current(&mut self, slot_now: u64) -> (u64, u64) {
        while self
            .slots
            .front()
            .is_some_and(|s| s.index + WINDOW_SLOTS < slot_now)
        {
            self.slots.pop_front();
        }
        self.slots
            .iter()
            .fold((0, 0), |(r, b), s| (r + s.records, b + s.bytes))
    }

    fn add(&mut self, slot_now: u64, records: u64, bytes: u64) {
        match self.slots.back_mut() {
            Some(s) if s.index == slot_now => {
                s.records += records;
                s.bytes += bytes;
            }
            _ => self.slots.push_back(Slot {
                index: slot_now,
                records,
                bytes,
            }),
        }
    }
}

/// Who counts against which budget: the caller's principal, and the
/// budget's principal, purpose (`*`: every purpose together, so varying
/// the purpose does not escape it) and window. Budgets alike in all of
/// these share one count (one for records, one for bytes).
type UsageKey = (String, String, String, u64);

/// Warnings of one kind about one principal within this many
/// milliseconds of the last one sent are counted, not sent (critical
/// alerts always are).
const QUIET_MS: u64 = 10_000;

#[derive(Debug, Default)]
struct State {
    seq: u64,
    /// Recent denials (times) of principals not locked out.
    denials: HashMap<String, VecDeque<u64>>,
    /// Locked-out principals: until when.
    locked: HashMap<String, u64>,
    usage: HashMap<UsageKey, Usage>,
    /// The last warning sent per kind and principal, and how many like it
    /// were held back since.
    quiet: HashMap<(AlertKind, String), (u64, u64)>,
}

/// The monitor of one vault (shared by its engines, so a seal and unseal
/// keep its counts).
pub struct Monitor {
    opts: MonitorOptions,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    alerts: tokio::sync::broadcast::Sender<Alert>,
    metrics: metrics::Metrics,
    /// When the last checkpoint of a new tree size was signed: (size, ms).
    checkpointed: Mutex<Option<(u64, u64)>>,
    /// When a new cosignature was last taken from each witness
    /// (milliseconds, by this server's clock), by name.
    cosigned: Mutex<HashMap<String, u64>>,
    /// The signatures of the latest witness refusals taken (a refusal is
    /// taken once).
    refusals: Mutex<VecDeque<Vec<u8>>>,
    /// Whether any principal may be locked out (false: the request path
    /// skips the lock).
    any_locked: std::sync::atomic::AtomicBool,
    /// Where alert events go, once attached to a log.
    sink: Mutex<Option<Sink>>,
}

/// Alert events on their way to the alert writer thread, the log it
/// writes to, and the thread (joined when the vault closes).
struct Sink {
    tx: std::sync::mpsc::Sender<Event>,
    log: Weak<AuditLog>,
    thread: std::thread::JoinHandle<()>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl Default for Monitor {
    fn default() -> Self {
        Monitor::new(MonitorOptions::default(), Arc::new(SystemClock))
    }
}

impl Monitor {
    /// The time by the monitor's clock (ms since the Unix epoch): the
    /// vault's clock, which tests move.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// A monitor with these settings, reading `clock`.
    pub fn new(opts: MonitorOptions, clock: Arc<dyn Clock>) -> Self {
        Monitor {
            opts,
            clock,
            state: Mutex::new(State::default()),
            alerts: tokio::sync::broadcast::Sender::new(ALERT_BACKLOG),
            metrics: metrics::Metrics::new(),
            checkpointed: Mutex::new(None),
            cosigned: Mutex::new(HashMap::new()),
            refusals: Mutex::new(VecDeque::new()),
            any_locked: std::sync::atomic::AtomicBool::new(false),
            sink: Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Its settings.
    pub fn options(&self) -> &MonitorOptions {
        &self.opts
    }

    /// The counters exported as metrics.
    pub fn metrics(&self) -> &metrics::Metrics {
        &self.metrics
    }

    /// Notes a checkpoint signed over `size` events (its time is kept when
    /// the size is new).
    pub fn checkpointed(&self, size: u64) {
        let now = self.clock.now_ms();
        let mut last = self.checkpointed.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|(s, _)| s != size) {
            *last = Some((size, now));
        }
    }

    /// Seconds since the last checkpoint of a new size was signed by this
    /// server (none since it started: `None`).
    pub fn checkpoint_age_secs(&self) -> Option<u64> {
        let now = self.clock.now_ms();
        self.checkpointed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|(_, at)| now.saturating_sub(at) / 1000)
    }

    /// Notes a new cosignature taken from witness `name` now (only one
    /// newer than the one stored is taken, so a replayed one is not).
    pub fn cosigned(&self, name: &str) {
        let now = self.clock.now_ms();
        self.cosigned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), now);
    }

    /// Seconds since a new cosignature was last taken from witness `name`
    /// (none since this server started: `None`).
    pub fn cosignature_age_secs(&self, name: &str) -> Option<u64> {
        let now = self.clock.now_ms();
        self.cosigned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .map(|at| now.saturating_sub(*at) / 1000)
    }

    /// Whether the refusal signed `signature` is new (then it is
    /// remembered, with the latest [`REFUSALS_KEPT`] others: a refusal is
    /// valid for ten minutes, so a replay within them is caught).
    pub fn first_refusal(&self, signature: &[u8]) -> bool {
        let mut seen = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        if seen.iter().any(|s| s == signature) {
            return false;
        }
        if seen.len() == REFUSALS_KEPT {
            seen.pop_front();
        }
        seen.push_back(signature.to_vec());
        true
    }

    /// Raises the critical alert of a witness that refused a checkpoint
    /// (`message` says which and why); `caller` sent the refusal.
    pub fn witness_refused(&self, caller: &Caller, message: String) {
        let now = self.clock.now_ms();
        self.critical(now, AlertKind::WitnessRefused, caller, message);
    }

    /// Writes alert events to `log` from now on, from a thread of the
    /// monitor's own, which holds the log weakly and ends with it. A
    /// monitor serves one vault at a time: attaching it to a second log
    /// while the first is open is refused (attaching to the same log again
    /// changes nothing).
    pub fn attach(&self, log: &Arc<AuditLog>) -> Result<()> {
        let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(current) = sink.as_ref().and_then(|s| s.log.upgrade()) {
            if Arc::ptr_eq(&current, log) {
                return Ok(());
            }
            return Err(Error::Config(
                "this monitor already serves another open vault; give each vault its own".into(),
            ));
        }
        let (tx, rx) = std::sync::mpsc::channel::<Event>();
        let weak: Weak<AuditLog> = Arc::downgrade(log);
        let theirs = weak.clone();
        let thread = std::thread::Builder::new()
            .name("alert-writer".into())
            .spawn(move || {
                while let Ok(ev) = rx.recv() {
                    let Some(log) = theirs.upgrade() else {
                        tracing::error!(
                            "an alert was raised as its vault closed: it is not in the audit log"
                        );
                        return;
                    };
                    if let Err(e) = log.commit(WriteSet::new(), ev) {
                        tracing::error!(error = %e, "an alert could not be written to the audit log");
                    }
                }
            })
            .map_err(|e| Error::io("starting the alert writer thread", e))?;
        *sink = Some(Sink {
            tx,
            log: weak,
            thread,
        });
        Ok(())
    }

    /// Stops writing alerts to `log` (its vault closes): the alerts queued
    /// are written first, and the writer thread is gone when this returns,
    /// so it holds the log no longer.
    pub fn detach(&self, log: &Arc<AuditLog>) {
        let sink = {
            let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
            match sink.as_ref() {
                Some(s) if Weak::ptr_eq(&s.log, &Arc::downgrade(log)) => sink.take(),
                _ => None,
            }
        };
        if let Some(Sink { tx, thread, .. }) = sink {
            drop(tx);
            if thread.join().is_err() {
                tracing::error!("the alert writer thread panicked");
            }
        }
    }

    /// Live alerts from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Alert> {
        self.alerts.subscribe()
    }

    /// Raises an alert (numbered here): to subscribers at once, and to
    /// the audit log. A warning like one sent less than 10 s before (same
    /// kind, same principal) is held back and counted; the next one sent
    /// says how many were.
    fn raise(&self, state: &mut State, mut alert: Alert) {
        self.metrics.alert(alert.kind.name(), alert.severity.name());
        if alert.severity == Severity::Warning {
            if state.quiet.len() > SWEEP_ABOVE {
                let now = alert.time_ms;
                state
                    .quiet
                    .retain(|_, (last, _)| last.saturating_add(QUIET_MS) > now);
            }
            let key = (alert.kind, alert.principal.clone());
            match state.quiet.get_mut(&key) {
                Some((last, held)) if last.saturating_add(QUIET_MS) > alert.time_ms => {
                    *held += 1;
                    return;
                }
                Some((last, held)) => {
                    if *held > 0 {
                        alert.message.push_str(&format!(
                            " ({held} more like it held back since the last one sent)"
                        ));
                    }
                    *last = alert.time_ms;
                    *held = 0;
                }
                None => {
                    state.quiet.insert(key, (alert.time_ms, 0));
                }
            }
        }
        state.seq += 1;
        alert.seq = state.seq;
        tracing::warn!(
            severity = alert.severity.name(),
            kind = alert.kind.name(),
            principal = alert.principal,
            "{}",
            alert.message
        );
        // No subscriber is not an error.
        let _ = self.alerts.send(alert.clone());
        let mut ev = Event::new(&alert.principal, alert.purpose.as_deref(), "alert", None);
        ev.time_ms = alert.time_ms;
        // A struct of strings and numbers always encodes.
        ev.detail = serde_json::to_string(&alert).ok();
        let sent = self
            .sink
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|s| s.tx.send(ev).is_ok());
        if !sent {
            tracing::error!("an alert could not be queued for the audit log");
        }
    }

    /// Refuses a locked-out principal (`PERMISSION_DENIED`, saying until
    /// when and how to lift it). An expired lockout ends here.
    pub fn check_locked(&self, principal: &str) -> Result<()> {
        if !self.any_locked.load(Ordering::Acquire) {
            return Ok(());
        }
        let now = self.clock.now_ms();
        let mut state = self.lock();
        match state.locked.get(principal) {
            Some(&until) if until > now => Err(Error::PermissionDenied(format!(
                "principal {principal} is locked out for {} more seconds after repeated \
                 denied requests; a custodian can lift it (vaultctl operator unlock)",
                (until - now).div_ceil(1000)
            ))),
            Some(_) => {
                state.locked.remove(principal);
                self.any_locked
                    .store(!state.locked.is_empty(), Ordering::Release);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Counts a request of `principal` refused with `PERMISSION_DENIED`;
    /// the `after_denials`-th within the window locks it out.
    pub fn denied(&self, principal: &str, purpose: Option<&str>) {
        let lockout = &self.opts.lockout;
        if lockout.after_denials == 0 {
            return;
        }
        let now = self.clock.now_ms();
        let window = u64::try_from(lockout.window.as_millis()).unwrap_or(u64::MAX);
        let mut state = self.lock();
        if state
            .locked
            .get(principal)
            .is_some_and(|&until| until > now)
        {
            // Refusals while locked out do not lengthen it.
            return;
        }
        let times = state.denials.entry(principal.to_owned()).or_default();
        times.push_back(now);
        while times
            .front()
            .is_some_and(|&t| t.saturating_add(window) <= now)
        {
            times.pop_front();
        }
        let count = times.len();
        if count < lockout.after_denials as usize {
            return;
        }
        state.denials.remove(principal);
        let duration = u64::try_from(lockout.duration.as_millis()).unwrap_or(u64::MAX);
        state
            .locked
            .insert(principal.to_owned(), now.saturating_add(duration));
        self.any_locked.store(true, Ordering::Release);
        let message = format!(
            "principal {principal} locked out for {} s after {count} denied requests within {} s",
            lockout.duration.as_secs(),
            lockout.window.as_secs()
        );
        self.raise(
            &mut state,
            Alert::new(
                now,
                Severity::Warning,
                AlertKind::Lockout,
                principal,
                purpose,
                message,
            ),
        );
    }

    /// Raises the critical alert of a read that returned `records` records
    /// of honey subjects in `collection`.
    pub fn honey_read(&self, caller: &Caller, collection: &str, records: usize) {
        let now = self.clock.now_ms();
        let principal = caller.principal.name.as_str();
        let message = format!(
            "{records} honey record(s) of collection {collection} read by principal {principal}: \
             no real workflow reads them"
        );
        self.critical(now, AlertKind::HoneyRead, caller, message);
    }

    /// Raises a critical alert about `caller`.
    fn critical(&self, now: u64, kind: AlertKind, caller: &Caller, message: String) {
        let mut state = self.lock();
        self.raise(
            &mut state,
            Alert::new(
                now,
                Severity::Critical,
                kind,
                caller.principal.name.as_str(),
                caller.purpose.as_deref(),
                message,
            ),
        );
    }

    /// How much of each budget of `budgets` every principal that read
    /// under it has used in its window now (those with nothing in the
    /// window are left out). Budgets alike (principal, purpose, window)
    /// share one count: their row has the tightest limit of each kind.
    pub fn budget_use(&self, budgets: &[Budget]) -> Vec<BudgetUse> {
        // (principal, purpose, window) → (records, bytes) limits.
        type Limits = (Option<u64>, Option<u64>);
        let mut limits: HashMap<(&str, &str, u64), Limits> = HashMap::new();
        for b in budgets {
            let tightest = |a: Option<u64>, b: Option<u64>| match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let entry = limits
                .entry((b.principal.as_str(), b.purpose.as_str(), b.window_secs))
                .or_default();
            *entry = (tightest(entry.0, b.records), tightest(entry.1, b.bytes));
        }
        let now = self.clock.now_ms();
        let mut out = Vec::new();
        let mut state = self.lock();
        for ((principal, budget_principal, purpose, window), usage) in &mut state.usage {
            let Some(&(records_limit, bytes_limit)) =
                limits.get(&(budget_principal.as_str(), purpose.as_str(), *window))
            else {
                continue;
            };
            let (records, bytes) = usage.current(slot_of(now, window.saturating_mul(1000)));
            if (records, bytes) == (0, 0) {
                continue;
            }
            out.push(BudgetUse {
                principal: principal.clone(),
                budget_principal: budget_principal.clone(),
                purpose: purpose.clone(),
                window_secs: *window,
                records,
                bytes,
                records_limit,
                bytes_limit,
            });
        }
        drop(state);
        out.sort_by(|a, b| {
            (&a.principal, &a.budget_principal, &a.purpose, a.window_secs).cmp(&(
                &b.principal,
                &b.budget_principal,
                &b.purpose,
                b.window_secs,
            ))
        });
        out
    }

    /// Lifts `principal`'s lockout; false if it was not locked out.
    pub fn lift(&self, principal: &str) -> bool {
        let now = self.clock.now_ms();
        let mut state = self.lock();
        state.denials.remove(principal);
        let lifted = state
            .locked
            .remove(principal)
            .is_some_and(|until| until > now);
        self.any_locked
            .store(!state.locked.is_empty(), Ordering::Release);
        lifted
    }

    /// The principals locked out now, with the milliseconds left.
    pub fn lockouts(&self) -> Vec<(String, u64)> {
        let now = self.clock.now_ms();
        let state = self.lock();
        let mut out: Vec<_> = state
            .locked
            .iter()
            .filter(|(_, &until)| until > now)
            .map(|(p, &until)| (p.clone(), until - now))
            .collect();
        out.sort();
        out
    }

    /// Refuses a read by `caller` before anything is read if a budget that
    /// applies to it is used up: a caller over budget learns nothing, not
    /// even which ids exist.
    pub fn check_budgets(&self, budgets: &[Budget], caller: &Caller) -> Result<()> {
        self.charge(budgets, caller, 0, 0)
    }

    /// Counts a read of `records` records and `bytes` bytes by `caller`
    /// against every budget that applies, or refuses it (nothing counted,
    /// an alert raised) if it would take one over, or if one is used up.
    pub fn charge(
        &self,
        budgets: &[Budget],
        caller: &Caller,
        records: u64,
        bytes: u64,
    ) -> Result<()> {
        let principal = caller.principal.name.as_str();
        let purpose = caller.purpose.as_deref();
        let applying: Vec<&Budget> = budgets
            .iter()
            .filter(|b| b.applies(principal, purpose))
            .collect();
        if applying.is_empty() {
            return Ok(());
        }
        let now = self.clock.now_ms();
        let mut state = self.lock();
        if state.usage.len() > SWEEP_ABOVE {
            state.usage.retain(|(_, _, _, window), u| {
                let slot = slot_of(now, window.saturating_mul(1000));
                u.current(slot) != (0, 0)
            });
        }
        for b in &applying {
            let slot = slot_of(now, b.window_secs.saturating_mul(1000));
            let usage = state.usage.entry(usage_key(b, principal)).or_default();
            let (used_records, used_bytes) = usage.current(slot);
            // Over when this read takes it past the limit, or when it is
            // used up already (a read of nothing then is refused too).
            let over = |limit: Option<u64>, used: u64, more: u64| {
                limit.filter(|&l| used.saturating_add(more) > l || (more == 0 && used >= l))
            };
            let what = if let Some(l) = over(b.records, used_records, records) {
                Some(format!(
                    "{} records of {l} within {} s",
                    used_records.saturating_add(records),
                    b.window_secs
                ))
            } else {
                over(b.bytes, used_bytes, bytes).map(|l| {
                    format!(
                        "{} bytes of {l} within {} s",
                        used_bytes.saturating_add(bytes),
                        b.window_secs
                    )
                })
            };
            if let Some(what) = what {
                let message = format!(
                    "read refused: budget of principal {} for purpose {} (policy line {}): {what}",
                    b.principal, b.purpose, b.line
                );
                self.raise(
                    &mut state,
                    Alert::new(
                        now,
                        Severity::Warning,
                        AlertKind::BudgetExceeded,
                        principal,
                        purpose,
                        message,
                    ),
                );
                // No counts for the caller: they would say how many of the
                // ids asked for exist.
                let limits = [
                    b.records.map(|r| format!("{r} records")),
                    b.bytes.map(|n| format!("{n} bytes")),
                ]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" and ");
                return Err(Error::BudgetExceeded(format!(
                    "over the read budget of principal {principal} for purpose {} \
                     ({limits} per {} s); try again later",
                    b.purpose, b.window_secs
                )));
            }
        }
        let keys: std::collections::HashSet<UsageKey> =
            applying.iter().map(|b| usage_key(b, principal)).collect();
        for key in keys {
            let slot = slot_of(now, key.3.saturating_mul(1000));
            state
                .usage
                .entry(key)
                .or_default()
                .add(slot, records, bytes);
        }
        Ok(())
    }
}

fn usage_key(b: &Budget, principal: &str) -> UsageKey {
    (
        principal.to_owned(),
        b.principal.clone(),
        b.purpose.clone(),
        b.window_secs,
    )
}

/// The slot of `now` in windows of `window_ms`.
fn slot_of(now: u64, window_ms: u64) -> u64 {
    now / (window_ms / WINDOW_SLOTS).max(1)
}

#[cfg(test)]
mod tests;
