//! The vault over one data folder, and its custody states:
//!
//! ```text
//!   uninitialised ──init──▶ sealed ──unseal (M of N shares)──▶ unsealed
//!                             ▲                                   │
//!                             └──────────────seal─────────────────┘
//! ```
//!
//! The store is open in every state (it holds only ciphertext); the keys
//! exist only while unsealed, inside the [`Engine`]. Sealing closes the
//! engine, stops its background job and drops it: every key is zeroized as
//! its last holder lets go. The unseal key is never written anywhere in
//! clear: the custodians hold it as Shamir shares, or (the PKCS#11 seal)
//! an HSM key wraps it and the vault unseals itself; the custodians' shares
//! are then of a recovery key that opens nothing but authorises a rekey or
//! a move between seals. Before either releases the key, the release gate
//! checks this server's evidence against the keyring's approved builds.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;

use tokio::sync::watch;
use zeroize::Zeroizing;

use crate::attest::{release_gate, Evidence};
use crate::audit::{AuditLog, Event};
use crate::crypto::Key256;
use crate::engine::{Engine, EngineOptions, KeyringFile, RootKeyInfo, META_KEYRING_ID};
use crate::hsm::{self, HsmError, Pkcs11Config};
use crate::keys::seal::{recovery_check, Measurement, Seal, SealHeader};
use crate::keys::{
    check_split, split, write_secret_file, Custody, Keyring, KeyringError, Region, ShareCollector,
    ShareError, ShareRecipients, UnsealShare,
};
use crate::policy::{Caller, Operation};
use crate::storage::{
    KeyringPath, KeyringStore, PgOptions, PgStore, RocksStore, Store, StoreOptions, Table, WriteSet,
};
use crate::{Error, Result};

/// The development share's file name in a dev data folder.
pub const DEV_SHARE_FILE: &str = "dev-unseal.share";

/// How to open a vault.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// The data folder; RocksDB lives in its `db/` subfolder.
    pub data_dir: PathBuf,
    /// The region this server serves.
    pub region: Region,
    /// The keyring file (RocksDB; on PostgreSQL the keyring has a table
    /// of its own).
    pub keyring_file: PathBuf,
    /// Storage options (RocksDB).
    pub store: StoreOptions,
    /// Store records, the audit log and the keyring in PostgreSQL instead
    /// of RocksDB in the data folder.
    pub postgres: Option<PgOptions>,
    /// Engine options (limits, cache, re-wrap pace).
    pub engine: EngineOptions,
    /// The HSM (`[seal] type = "pkcs11"`): a new keyring's unseal key is
    /// wrapped by it, and a keyring so sealed is unsealed with it.
    pub pkcs11: Option<Pkcs11Config>,
    /// What this server presents to the key release gate.
    pub evidence: Evidence,
}

impl OpenOptions {
    /// Development defaults: everything in `data_dir`.
    pub fn dev(data_dir: &Path, region: Region) -> Self {
        OpenOptions {
            data_dir: data_dir.to_owned(),
            region,
            keyring_file: data_dir.join("keyring"),
            store: StoreOptions::default(),
            postgres: None,
            engine: EngineOptions::default(),
            pkcs11: None,
            evidence: Evidence::None,
        }
    }
}

/// What custodians see of the vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealStatus {
    /// Whether a keyring exists.
    pub initialized: bool,
    /// Whether the vault holds no keys.
    pub sealed: bool,
    /// The region.
    pub region: Region,
    /// Shares needed and made (0 before init).
    pub threshold: u8,
    /// Shares made.
    pub shares: u8,
    /// Shares given towards the next unseal.
    pub progress: u8,
    /// When unsealed: root key versions (not counted).
    pub root_keys: Vec<RootKeyInfo>,
    /// When unsealed: the public half of the signing key.
    pub signing_public_key: Option<[u8; 32]>,
    /// Keys a root key version may wrap before a rotation is asked for.
    pub rotate_root_after_wraps: u64,
    /// When unsealed: whether the current root key has wrapped that many.
    pub root_rotation_due: bool,
    /// How the unseal key is kept: `shamir` or `pkcs11` (empty before init).
    pub seal: String,
    /// Under the PKCS#11 seal: the HSM token and key.
    pub seal_identity: Option<String>,
    /// Why the last unseal by the HSM failed, while sealed.
    pub seal_message: Option<String>,
    /// The builds the key release gate lets through (none: the gate is off).
    pub approved_builds: Vec<Measurement>,
    /// What this server presents: `none` or `self-reported`.
    pub evidence: String,
    /// This server's measurement, if it presents one.
    pub measurement: Option<Measurement>,
    /// Whether a verified attestation document vouches for it.
    pub attested: bool,
    /// With Nitro evidence: the pinned root and the last enclave verified.
    pub attestation_identity: Option<String>,
}

/// Where an unseal stands after one share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnsealProgress {
    /// Whether the vault is still sealed.
    pub sealed: bool,
    /// Shares accepted towards this unseal (0 once unsealed).
    pub progress: u8,
    /// Shares needed.
    pub threshold: u8,
}

enum State {
    Uninitialised,
    Sealed {
        custody: Custody,
        collector: ShareCollector,
    },
    Unsealed {
        engine: Arc<Engine>,
        job: Option<JoinHandle<()>>,
    },
}

/// One regional vault: its store, and its keys while unsealed.
pub struct Vault {
    opts: OpenOptions,
    store: Arc<dyn Store>,
    /// Where the sealed keyring is kept.
    keyring: Arc<dyn KeyringStore>,
    state: Mutex<State>,
    /// The audit log: one per data folder, shared with every engine; it
    /// also records what happens while sealed (init, unseal, seal).
    audit: Arc<AuditLog>,
    /// The engine of the last unsealed session. After a seal, requests that
    /// started before it may still hold that engine; no new one is made
    /// until it is gone, so two engines never share the keyring file.
    last_engine: Mutex<Weak<Engine>>,
    sealed: watch::Sender<bool>,
    /// The rekey in progress, if any (only while unsealed).
    rekey: Mutex<Option<PendingRekey>>,
    /// Why the last unseal by the HSM failed (cleared once unsealed).
    seal_message: Mutex<Option<String>>,
    /// Seals asked for so far (raised under the state lock, sealed or
    /// not): an unseal that let go of the lock to wait for the evidence
    /// or the HSM does not start a session if a seal came meanwhile.
    seals: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("region", &self.opts.region)
            .field("sealed", &*self.sealed.borrow())
            .finish_non_exhaustive()
    }
}

/// Reads the stored keyring and opens it with `unseal_key`. Shares that
/// do not open it are an `INVALID_ARGUMENT` saying that `step`'s
/// (unseal, rekey) progress was reset.
fn open_keyring_file(
    keyring: &dyn KeyringStore,
    region: &Region,
    unseal_key: &Key256,
    step: &str,
) -> Result<Keyring> {
    let file = keyring
        .read()?
        .ok_or_else(|| Error::Config(format!("{} disappeared", keyring.describe())))?;
    match Keyring::unseal(&file, unseal_key, region) {
        Err(KeyringError::WrongUnsealKey) => {
            tracing::warn!(step, "the shares given do not open the keyring");
            Err(Error::InvalidArgument(format!(
                "the shares given do not open the keyring (one is wrong or forged); \
                     {step} progress was reset"
            )))
        }
        other => Ok(other?),
    }
}

impl Vault {
    /// Opens the data folder, sealed. Refuses a keyring of another region,
    /// and a data folder whose keyring is missing.
    pub fn open(opts: OpenOptions) -> Result<Vault> {
        std::fs::create_dir_all(&opts.data_dir).map_err(|e| {
            Error::io(
                format!("creating data folder {}", opts.data_dir.display()),
                e,
            )
        })?;
        let (store, keyring): (Arc<dyn Store>, Arc<dyn KeyringStore>) = match &opts.postgres {
            Some(pg) => {
                let store = Arc::new(PgStore::open(pg)?);
                (Arc::clone(&store) as Arc<dyn Store>, store)
            }
            None => (
                Arc::new(RocksStore::open(&opts.data_dir.join("db"), &opts.store)?),
                Arc::new(KeyringPath(opts.keyring_file.clone())),
            ),
        };
        let custody = match keyring.read()? {
            Some(file) => {
                let (region, custody) = Keyring::peek(&file)?;
                if region != opts.region {
                    return Err(KeyringError::WrongRegion {
                        keyring: region.to_string(),
                        configured: opts.region.to_string(),
                    }
                    .into());
                }
                Some(custody)
            }
            None => None,
        };
        // A folder of another format is refused at start, not at unseal.
        if store.get(Table::Meta, META_KEYRING_ID)?.is_some() {
            crate::engine::check_format(store.as_ref())?;
        }
        let state = match custody {
            Some(custody) => State::Sealed {
                custody,
                collector: ShareCollector::new(),
            },
            None => {
                if store.get(Table::Meta, META_KEYRING_ID)?.is_some() {
                    if opts.data_dir.join("keyring.v1").exists() {
                        return Err(Error::Config(format!(
                            "the data folder {} was made by an earlier development build \
                             (keyring format v1, with an unseal key file); start with a fresh folder",
                            opts.data_dir.display()
                        )));
                    }
                    return Err(Error::Config(format!(
                        "the vault's storage holds data but its keyring ({}) is missing; \
                         restore the keyring (a new one cannot read this data)",
                        keyring.describe()
                    )));
                }
                State::Uninitialised
            }
        };
        let audit = Arc::new(AuditLog::open(Arc::clone(&store))?);
        opts.engine.monitor.attach(&audit)?;
        Ok(Vault {
            opts,
            store,
            keyring,
            audit,
            state: Mutex::new(state),
            last_engine: Mutex::new(Weak::new()),
            sealed: watch::Sender::new(true),
            rekey: Mutex::new(None),
            seal_message: Mutex::new(None),
            seals: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Opens a development vault: initialised on first start with one
    /// share (1 of 1) kept in the data folder, and unsealed with it.
    pub fn open_dev(opts: OpenOptions) -> Result<Vault> {
        let share_file = opts.data_dir.join(DEV_SHARE_FILE);
        let vault = Vault::open(opts)?;
        let caller = Caller::internal("dev-mode");
        if !vault.seal_status().initialized {
            let shares = vault.init(&caller, 1, 1)?;
            let text = shares[0].encode();
            write_secret_file(&share_file, text.as_bytes())
                .map_err(|e| Error::io(format!("writing dev share {}", share_file.display()), e))?;
        }
        let text =
            Zeroizing::new(std::fs::read_to_string(&share_file).map_err(|e| {
                Error::io(format!("reading dev share {}", share_file.display()), e)
            })?);
        vault.unseal(&caller, &text)?;
        Ok(vault)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The access policy in force (shared with every engine of this vault).
    pub fn policy(&self) -> Arc<crate::policy::PolicyHandle> {
        Arc::clone(&self.opts.engine.policy)
    }

    /// The region this vault serves.
    pub fn region(&self) -> &Region {
        &self.opts.region
    }

    /// What the store holds in memory now (for sizing).
    pub fn storage_memory(&self) -> Result<crate::storage::StoreMemory> {
        self.store.memory()
    }

    /// The engine, while unsealed.
    pub fn engine(&self) -> Result<Arc<Engine>> {
        match &*self.state() {
            State::Unsealed { engine, .. } => Ok(Arc::clone(engine)),
            _ => Err(Error::Sealed),
        }
    }

    /// Records a custody or admin request (allowed, or refused with its
    /// error) in the audit log. A failure to record is logged; the
    /// operation's own result stands.
    pub fn record<T>(
        &self,
        caller: &Caller,
        operation: &str,
        detail: Option<String>,
        result: &Result<T>,
    ) {
        // Through the engine while unsealed, so it counts towards
        // checkpoints like every other event.
        let ev = Event::outcome(caller, operation, detail, result);
        if let Err(e) = self.append_event(ev) {
            tracing::error!(error = %e, operation, "audit event could not be written");
        }
    }

    /// Reads the policy file again (`AdminService.ReloadPolicy`, or the
    /// server on SIGHUP with an internal caller) and records the reload,
    /// done or refused, as an event that names the policy now in force by
    /// its source and the SHA-256 of its text. The caller is authorised by
    /// its callers (the admin service asks the policy first). On a shared
    /// store a policy reloaded while unsealed is handed to the other
    /// servers, which take it up within a second.
    pub fn reload_policy(&self, caller: &Caller) -> Result<Arc<crate::policy::Policy>> {
        let policy = self.opts.engine.policy.reload_then(|result, in_force| {
            let refused = if result.is_ok() { "" } else { "refused; " };
            let detail = format!("{refused}in force: {}", in_force.identity());
            self.record(caller, "reload_policy", Some(detail), result);
        })?;
        if let Ok(engine) = self.engine() {
            if let Err(e) = engine.publish_policy(&policy) {
                tracing::warn!(error = %e, "the reloaded policy could not be handed to the other servers");
            }
        }
        Ok(policy)
    }

    /// Budgets, lockouts and alerts (kept across seal and unseal).
    pub fn monitor(&self) -> &Arc<crate::monitor::Monitor> {
        &self.opts.engine.monitor
    }

    /// The audit log (open whether sealed or not).
    pub fn audit_log(&self) -> &Arc<AuditLog> {
        &self.audit
    }

    /// Appends an event with no changes: through the engine while
    /// unsealed (so it counts towards checkpoints), else directly.
    pub fn append_event(&self, ev: Event) -> Result<u64> {
        match self.engine() {
            Ok(engine) => engine.append_event(ev),
            Err(_) => self.audit.commit(WriteSet::new(), ev),
        }
    }

    /// [`Vault::append_event`] awaiting the commit without holding a
    /// thread (for the async request path).
    pub async fn append_event_async(&self, ev: Event) -> Result<u64> {
        match self.engine() {
            Ok(engine) => engine.append_event_async(ev).await,
            Err(_) => self.audit.commit_async(WriteSet::new(), ev).await,
        }
    }

    /// Follows sealed (true) / unsealed (false).
    pub fn watch_sealed(&self) -> watch::Receiver<bool> {
        self.sealed.subscribe()
    }

    /// Creates the keyring and splits its unseal key into `shares` shares,
    /// `threshold` of which unseal it. The vault stays sealed.
    pub fn init(&self, caller: &Caller, shares: u8, threshold: u8) -> Result<Vec<UnsealShare>> {
        Ok(self.init_with(caller, shares, threshold, None)?.clear)
    }

    /// [`Vault::init`]; with `recipients` (one per share), each share is
    /// encrypted to its custodian's age recipient before the keyring is
    /// written, and only the ciphertexts are returned.
    pub fn init_with(
        &self,
        caller: &Caller,
        shares: u8,
        threshold: u8,
        recipients: Option<&ShareRecipients>,
    ) -> Result<IssuedShares> {
        let result = self.init_unaudited(caller, shares, threshold, recipients);
        let sealed_to = recipients.map_or(String::new(), |r| {
            format!("; shares encrypted to {} age recipients", r.len())
        });
        let seal = match (&result, self.stored_sealing()) {
            (
                Ok(_),
                Ok(Some(SealHeader {
                    seal: Seal::Pkcs11(hsm),
                    ..
                })),
            ) => {
                // The HSM holds the key: unseal now, as at every start, in
                // this request (one event). A failure is shown by the
                // status; the shares are returned all the same.
                let unsealed = self.auto_unseal_unaudited(caller, false);
                format!(
                    "; PKCS#11 seal by {} (the shares are recovery shares); {}",
                    hsm.identity(),
                    match unsealed {
                        Ok(_) => "unsealed by the HSM".to_owned(),
                        Err(e) => format!("stays sealed: {e}"),
                    }
                )
            }
            _ => String::new(),
        };
        self.record(
            caller,
            "init",
            Some(format!("{threshold} of {shares} shares{sealed_to}{seal}")),
            &result,
        );
        result
    }

    /// The stored keyring's seal and approved builds (None before init).
    fn stored_sealing(&self) -> Result<Option<SealHeader>> {
        match self.keyring.read()? {
            Some(file) => Ok(Some(Keyring::peek_sealing(&file)?)),
            None => Ok(None),
        }
    }

    /// Whether the stored keyring is sealed by an HSM (the server then
    /// unseals itself at start).
    pub fn hsm_sealed(&self) -> bool {
        matches!(
            self.stored_sealing(),
            Ok(Some(SealHeader {
                seal: Seal::Pkcs11(_),
                ..
            }))
        )
    }

    fn init_unaudited(
        &self,
        caller: &Caller,
        shares: u8,
        threshold: u8,
        recipients: Option<&ShareRecipients>,
    ) -> Result<IssuedShares> {
        self.authorize_custody(caller)?;
        check_split(threshold, shares).map_err(share_error)?;
        check_recipients(recipients, shares)?;
        let mut state = self.state();
        if !matches!(*state, State::Uninitialised) {
            return Err(Error::FailedPrecondition(
                "the vault is already initialised".into(),
            ));
        }
        // Its event is written after the keyring: if the log were already
        // refusing writes, the shares would be shown with no record.
        self.audit.writable()?;
        let unseal_key = Key256::random();
        let (parts, seal) =
            self.new_split(&unseal_key, threshold, shares, self.opts.pkcs11.is_some())?;
        let custody = Custody {
            set_id: parts[0].set_id(),
            threshold,
            shares,
        };
        // Sealed to their custodians before the keyring exists: a failure
        // here changes nothing.
        let issued = issue(parts, recipients)?;
        let mut keyring = Keyring::generate(self.opts.region.clone(), custody);
        keyring.set_seal(seal);
        KeyringFile {
            store: Arc::clone(&self.keyring),
            unseal_key,
        }
        .save(&keyring)?;
        *state = State::Sealed {
            custody,
            collector: ShareCollector::new(),
        };
        tracing::info!(
            region = %self.opts.region,
            threshold,
            shares,
            principal = %caller.principal.name,
            "vault initialised"
        );
        Ok(issued)
    }

    /// The shares and the seal for a new `unseal_key`: its own shares
    /// (Shamir), or, with the HSM, the key wrapped inside it and the
    /// shares of a new recovery key.
    fn new_split(
        &self,
        unseal_key: &Key256,
        threshold: u8,
        shares: u8,
        with_hsm: bool,
    ) -> Result<(Vec<UnsealShare>, Seal)> {
        if !with_hsm {
            let parts = split(unseal_key, threshold, shares).map_err(share_error)?;
            return Ok((parts, Seal::Shamir));
        }
        let cfg = self.opts.pkcs11.as_ref().ok_or_else(|| {
            Error::FailedPrecondition(
                "this server has no PKCS#11 seal configured ([seal] type = \"pkcs11\")".into(),
            )
        })?;
        let recovery = Key256::random();
        let parts = split(&recovery, threshold, shares).map_err(share_error)?;
        let sealed = hsm::wrap(
            cfg,
            &self.opts.region,
            unseal_key,
            recovery_check(&recovery),
        )
        .map_err(|e| hsm_failed("the HSM did not wrap the unseal key", e))?;
        Ok((parts, Seal::Pkcs11(sealed)))
    }

    /// Unseals with the HSM that wraps the keyring's unseal key (at start,
    /// after init, or when a custodian gives no share), once the release
    /// gate lets this server's evidence through. Recorded as an `unseal`
    /// event, done or refused; a refusal also stays in the status. Refused
    /// (`INVALID_ARGUMENT`) for a keyring sealed with shares.
    pub fn auto_unseal(&self, caller: &Caller) -> Result<UnsealProgress> {
        self.auto_unseal_with(caller, false)
    }

    /// [`Vault::auto_unseal`]; with `allow_keyring_rollback`, a keyring
    /// older than the data folder has seen opens (disaster recovery), and
    /// the event says so.
    pub fn auto_unseal_with(
        &self,
        caller: &Caller,
        allow_keyring_rollback: bool,
    ) -> Result<UnsealProgress> {
        let result = self.auto_unseal_unaudited(caller, allow_keyring_rollback);
        let detail = self.auto_unseal_detail(&result);
        self.record(caller, "unseal", Some(detail), &result);
        result
    }

    /// What an unseal by the HSM did, for its event: the HSM, and why it
    /// stayed sealed (tokens, keys and measurements; never personal data).
    fn auto_unseal_detail(&self, result: &Result<UnsealProgress>) -> String {
        let rollback = self
            .engine()
            .ok()
            .and_then(|e| e.accepted_keyring_rollback());
        match (result, self.stored_sealing()) {
            (Err(e), _) => format!("by the HSM; {e}"),
            (
                Ok(_),
                Ok(Some(SealHeader {
                    seal: Seal::Pkcs11(hsm),
                    ..
                })),
            ) => match rollback {
                Some((keyring, folder)) => format!(
                    "unsealed by the HSM: {}; keyring rollback accepted: keyring generation \
                     {keyring}, the data folder had seen {folder}",
                    hsm.identity()
                ),
                None => format!("unsealed by the HSM: {}", hsm.identity()),
            },
            _ => "by the HSM".to_owned(),
        }
    }

    /// The HSM's unseal. The state lock is not held while the gate asks
    /// for evidence or the HSM unwraps (either may take a while): a status
    /// answers meanwhile, and an unseal that finished first wins.
    fn auto_unseal_unaudited(
        &self,
        caller: &Caller,
        allow_keyring_rollback: bool,
    ) -> Result<UnsealProgress> {
        self.authorize_custody(caller)?;
        let seals = self.seals_before_unseal()?;
        let file = self
            .keyring
            .read()?
            .ok_or_else(|| Error::Config(format!("{} disappeared", self.keyring.describe())))?;
        let sealing = Keyring::peek_sealing(&file)?;
        let Seal::Pkcs11(sealed) = &sealing.seal else {
            return Err(Error::InvalidArgument(
                "no share given: this vault's keyring is sealed with shares, not by an HSM".into(),
            ));
        };
        // From here on a failure is why this HSM-sealed vault stays
        // sealed: the status says it until the next unseal.
        let result = (|| {
            let cfg = self.opts.pkcs11.as_ref().ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "the keyring is sealed by the HSM {}; this server has no [seal] PKCS#11 \
                     settings",
                    sealed.identity()
                ))
            })?;
            self.release_gate(caller, &sealing)?;
            let unseal_key = hsm::unwrap(cfg, &self.opts.region, sealed)
                .map_err(|e| hsm_failed("the vault stays sealed", e))?;
            let keyring = match Keyring::unseal(&file, &unseal_key, &self.opts.region) {
                Err(KeyringError::WrongUnsealKey) => {
                    return Err(Error::FailedPrecondition(
                        "the vault stays sealed: the key the HSM unwrapped does not open the \
                         keyring (its file was altered)"
                            .into(),
                    ))
                }
                other => other?,
            };
            let mut state = self.state();
            let custody = self.sealed_custody(&state)?;
            self.no_seal_since(&state, seals)?;
            // The keyring opened is the one stored now (not an older copy
            // read before the wait).
            if self.keyring.read()?.as_deref() != Some(file.as_slice()) {
                return Err(Error::Unavailable(
                    "the keyring changed while the HSM unsealed it; unseal again".into(),
                ));
            }
            let file = KeyringFile {
                store: Arc::clone(&self.keyring),
                unseal_key,
            };
            self.start_session(&mut state, keyring, file, allow_keyring_rollback)?;
            Ok(custody)
        })();
        match result {
            Ok(custody) => {
                tracing::info!(region = %self.opts.region, hsm = %sealed.identity(), "vault unsealed by the HSM");
                Ok(UnsealProgress {
                    sealed: false,
                    progress: 0,
                    threshold: custody.threshold,
                })
            }
            Err(e) => {
                tracing::warn!(error = %e, "the vault stays sealed");
                // Said by the status only while it is so: not once another
                // unseal has won, nor for a moment's contention.
                let state = self.state();
                if matches!(&*state, State::Sealed { .. }) && !matches!(e, Error::Unavailable(_)) {
                    *self.seal_message.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(e.to_string());
                }
                Err(e)
            }
        }
    }

    /// The key release gate over the stored keyring's approved builds. A
    /// refusal's message (the measurement presented and how; no personal
    /// data) goes into the `unseal` event's detail.
    fn release_gate(&self, caller: &Caller, sealing: &SealHeader) -> Result<()> {
        let result = release_gate(sealing, &self.opts.evidence, &self.opts.region);
        if let Err(e) = &result {
            tracing::warn!(error = %e, principal = %caller.principal.name, "key release refused");
        }
        result
    }

    /// Checks that the vault is sealed (and free to unseal); returns the
    /// seals counted so far, for [`Vault::no_seal_since`].
    fn seals_before_unseal(&self) -> Result<u64> {
        let state = self.state();
        self.sealed_custody(&state)?;
        Ok(self.seals.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// With the state lock held (`_held`): refuses if a seal came since
    /// `before` (an unseal that waited for evidence or the HSM must not
    /// undo it).
    fn no_seal_since(&self, _held: &State, before: u64) -> Result<()> {
        if self.seals.load(std::sync::atomic::Ordering::SeqCst) != before {
            return Err(Error::Unavailable(
                "the vault was sealed while this unseal waited; unseal again".into(),
            ));
        }
        Ok(())
    }

    /// The custody of a sealed vault; an error in any other state, or
    /// while requests of the last session still run.
    fn sealed_custody(&self, state: &State) -> Result<Custody> {
        let custody = match state {
            State::Uninitialised => {
                return Err(Error::FailedPrecondition(
                    "the vault is not initialised; run `vaultctl operator init`".into(),
                ))
            }
            State::Unsealed { .. } => {
                return Err(Error::FailedPrecondition(ALREADY_UNSEALED.into()))
            }
            State::Sealed { custody, .. } => *custody,
        };
        if self
            .last_engine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .strong_count()
            > 0
        {
            return Err(Error::Unavailable(
                "requests of the previous unsealed session are still finishing; \
                 unseal again in a moment"
                    .into(),
            ));
        }
        Ok(custody)
    }

    /// Takes one share. Once the threshold is reached, opens the keyring
    /// and starts serving. Shares that together do not open the keyring
    /// reset the progress (which one was wrong cannot be told). No share
    /// (empty) asks the HSM instead ([`Vault::auto_unseal`]).
    pub fn unseal(&self, caller: &Caller, share: &str) -> Result<UnsealProgress> {
        self.unseal_with(caller, share, false)
    }

    /// [`Vault::unseal`]; with `allow_keyring_rollback`, the last share
    /// opens a keyring older than the data folder has seen (disaster
    /// recovery), and the unseal event says so with both generations.
    pub fn unseal_with(
        &self,
        caller: &Caller,
        share: &str,
        allow_keyring_rollback: bool,
    ) -> Result<UnsealProgress> {
        if share.trim().is_empty() {
            return self.auto_unseal_with(caller, allow_keyring_rollback);
        }
        let result = self.unseal_unaudited(caller, share, allow_keyring_rollback);
        let rollback = self
            .engine()
            .ok()
            .and_then(|e| e.accepted_keyring_rollback());
        let detail = match &result {
            // The gate's refusal says why, for the auditor.
            Err(Error::FailedPrecondition(m)) if m.starts_with(crate::attest::REFUSED) => {
                Some(m.clone())
            }
            _ => None,
        };
        let detail = detail.or_else(|| {
            result.as_ref().ok().map(|p| match rollback {
                _ if p.sealed => format!("share accepted: {} of {}", p.progress, p.threshold),
                Some((keyring, folder)) => format!(
                    "unsealed; keyring rollback accepted: keyring generation {keyring}, \
                 the data folder had seen {folder}"
                ),
                None => "unsealed".to_owned(),
            })
        });
        self.record(caller, "unseal", detail, &result);
        result
    }

    fn unseal_unaudited(
        &self,
        caller: &Caller,
        share: &str,
        allow_keyring_rollback: bool,
    ) -> Result<UnsealProgress> {
        self.authorize_custody(caller)?;
        let share = UnsealShare::parse(share).map_err(|e| refused(caller, e))?;
        let seals = self.seals_before_unseal()?;
        // Before any share is taken: the seal, and the release gate (not
        // under the state lock: evidence may take a while to get).
        let sealing = self.stored_sealing()?.unwrap_or_default();
        if let Seal::Pkcs11(sealed) = &sealing.seal {
            return Err(Error::InvalidArgument(format!(
                "this vault's unseal key is wrapped by the HSM {}: shares are recovery shares \
                 and open nothing; give no share to have the HSM unseal it \
                 (vaultctl operator unseal --hsm)",
                sealed.identity()
            )));
        }
        self.release_gate(caller, &sealing)?;
        let mut state = self.state();
        let custody = self.sealed_custody(&state)?;
        self.no_seal_since(&state, seals)?;
        let State::Sealed { collector, .. } = &mut *state else {
            return Err(Error::Sealed);
        };
        if !share.is_of(&custody) {
            return Err(refused(caller, ShareError::Foreign));
        }
        let progress = collector.add(share).map_err(|e| refused(caller, e))?;
        tracing::info!(
            progress = progress.have,
            threshold = progress.need,
            principal = %caller.principal.name,
            "unseal share accepted"
        );
        if progress.have < progress.need {
            return Ok(UnsealProgress {
                sealed: true,
                progress: progress.have,
                threshold: progress.need,
            });
        }
        let combined = collector.combine();
        collector.clear();
        let unseal_key = combined.map_err(share_error)?;
        let keyring = open_keyring_file(
            self.keyring.as_ref(),
            &self.opts.region,
            &unseal_key,
            "unseal",
        )?;
        // The gate decided on the header as read before the shares came
        // in; the keyring opened (and so authenticated) must say the same.
        if *keyring.sealing() != sealing {
            return Err(Error::FailedPrecondition(format!(
                "{}: the keyring's seal or approved builds changed while it was being \
                 unsealed; unseal again",
                crate::attest::REFUSED
            )));
        }
        let file = KeyringFile {
            store: Arc::clone(&self.keyring),
            unseal_key,
        };
        self.start_session(&mut state, keyring, file, allow_keyring_rollback)?;
        tracing::info!(region = %self.opts.region, "vault unsealed");
        Ok(UnsealProgress {
            sealed: false,
            progress: 0,
            threshold: custody.threshold,
        })
    }

    /// Drops every key: closes the engine and waits for its background
    /// job. Requests in flight finish with the engine they hold (a closed
    /// engine refuses further work); new ones are refused. Sealing a sealed
    /// vault changes nothing (its unseal progress stays).
    pub fn seal(&self, caller: &Caller) -> Result<()> {
        let result = self.seal_unaudited(caller);
        self.record(caller, "seal", None, &result);
        result
    }

    fn seal_unaudited(&self, caller: &Caller) -> Result<()> {
        self.authorize_custody(caller)?;
        // A rekey in progress ends with the session (its shares are
        // dropped); one swapping the unseal key now is waited for. (Lock
        // order: the rekey slot, then the state.)
        let mut rekey = self.rekey_slot();
        let mut state = self.state();
        self.seals.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let custody = match &*state {
            State::Uninitialised => {
                return Err(Error::FailedPrecondition(
                    "the vault is not initialised".into(),
                ))
            }
            State::Sealed { .. } => return Ok(()),
            State::Unsealed { engine, .. } => engine.keyring().custody(),
        };
        rekey.take();
        let previous = std::mem::replace(
            &mut *state,
            State::Sealed {
                custody,
                collector: ShareCollector::new(),
            },
        );
        self.sealed.send_replace(true);
        drop(state);
        if let State::Unsealed { engine, job } = previous {
            engine.close();
            if let Some(job) = job {
                if job.join().is_err() {
                    tracing::error!("the re-wrap job panicked");
                }
            }
        }
        tracing::info!(principal = %caller.principal.name, "vault sealed");
        Ok(())
    }

    /// Lifts `principal`'s lockout (custody role; sealed or not), and
    /// records it. False if it was not locked out.
    pub fn unlock(&self, caller: &Caller, principal: &str) -> Result<bool> {
        let result = self.authorize_custody(caller).and_then(|()| {
            if principal.is_empty() || principal.len() > 1024 {
                return Err(Error::InvalidArgument(
                    "principal must be 1 to 1024 bytes".into(),
                ));
            }
            Ok(self.monitor().lift(principal))
        });
        let detail = result
            .as_ref()
            .ok()
            .map(|lifted| format!("principal {principal}; was locked out: {lifted}"));
        self.record(caller, "unlock", detail, &result);
        result
    }

    /// Fails unless the policy in force lets `caller` perform key custody.
    fn authorize_custody(&self, caller: &Caller) -> Result<()> {
        self.opts
            .engine
            .policy
            .current()
            .authorize(caller, Operation::Custody, None)
    }

    /// Custody status.
    pub fn status(&self, caller: &Caller) -> Result<SealStatus> {
        let result = self.authorize_custody(caller).map(|()| self.seal_status());
        self.record(caller, "status", None, &result);
        result
    }

    /// Custody status, without an authorization check: for the server's
    /// own start-up lines.
    pub fn seal_status(&self) -> SealStatus {
        let state = self.state();
        let mut s = SealStatus {
            initialized: true,
            sealed: true,
            region: self.opts.region.clone(),
            threshold: 0,
            shares: 0,
            progress: 0,
            root_keys: Vec::new(),
            signing_public_key: None,
            rotate_root_after_wraps: self.opts.engine.rotate_root_after_wraps,
            root_rotation_due: false,
            seal: String::new(),
            seal_identity: None,
            seal_message: None,
            approved_builds: Vec::new(),
            evidence: self.opts.evidence.kind().to_owned(),
            measurement: self.opts.evidence.measurement(),
            attested: self.opts.evidence.attested(),
            attestation_identity: self.opts.evidence.identity(),
        };
        let sealing = match &*state {
            State::Unsealed { engine, .. } => Some(engine.keyring().sealing().clone()),
            State::Uninitialised => None,
            State::Sealed { .. } => match self.stored_sealing() {
                Ok(sealing) => sealing,
                Err(e) => {
                    s.seal_message = Some(format!("the stored keyring cannot be read: {e}"));
                    None
                }
            },
        };
        if let Some(sealing) = sealing {
            s.seal = sealing.seal.name().to_owned();
            if let Seal::Pkcs11(hsm) = &sealing.seal {
                s.seal_identity = Some(hsm.identity());
            }
            s.approved_builds = sealing.approved_builds.into_iter().collect();
        }
        if matches!(&*state, State::Sealed { .. }) && s.seal_message.is_none() {
            s.seal_message = self
                .seal_message
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
        }
        match &*state {
            State::Uninitialised => s.initialized = false,
            State::Sealed { custody, collector } => {
                s.threshold = custody.threshold;
                s.shares = custody.shares;
                s.progress = collector.progress().have;
            }
            State::Unsealed { engine, .. } => {
                let custody = engine.keyring().custody();
                s.sealed = false;
                s.threshold = custody.threshold;
                s.shares = custody.shares;
                s.root_keys = engine.root_versions();
                s.signing_public_key = Some(engine.signing_public_key());
                s.root_rotation_due = engine.root_rotation_due();
            }
        }
        s
    }

    /// Closes the engine (if unsealed) and waits for background work,
    /// before the store closes with the vault.
    fn shutdown(&self) {
        let previous = std::mem::replace(&mut *self.state(), State::Uninitialised);
        if let State::Unsealed { engine, job } = previous {
            engine.close();
            if let Some(job) = job {
                let _ = job.join();
            }
        }
        self.sealed.send_replace(true);
        // Alerts queued are written, and nothing holds the log after this.
        self.opts.engine.monitor.detach(&self.audit);
    }
}

/// Shares a split issued: in clear, or each sealed to its custodian's age
/// recipient (then `clear` is empty). `Debug` shows counts only.
pub struct IssuedShares {
    /// The shares in clear, when no recipients were given.
    pub clear: Vec<UnsealShare>,
    /// Else share i encrypted to recipient i (ASCII-armored age files).
    pub sealed: Vec<String>,
}

impl std::fmt::Debug for IssuedShares {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "IssuedShares(clear: {}, sealed: {})",
            self.clear.len(),
            self.sealed.len()
        )
    }
}

/// The new split a rekey makes: every call of one rekey names the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RekeyParams {
    /// New shares to make (N).
    pub shares: u8,
    /// New shares needed (M).
    pub threshold: u8,
    /// One age recipient per new share, or none (shares returned in clear).
    pub recipients: Option<ShareRecipients>,
    /// The seal after the rekey; `None` keeps the current one. Moving to
    /// the PKCS#11 seal needs the server's `[seal]` settings.
    pub seal: Option<SealKind>,
}

/// A seal to move to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealKind {
    /// Shares open the keyring.
    Shamir,
    /// The configured HSM wraps the unseal key.
    Pkcs11,
}

impl RekeyParams {
    fn describe(&self) -> String {
        let to = self.recipients.as_ref().map_or(String::new(), |r| {
            format!(", encrypted to {} age recipients", r.len())
        });
        let seal = match self.seal {
            None => "",
            Some(SealKind::Shamir) => "; seal: shamir",
            Some(SealKind::Pkcs11) => "; seal: pkcs11",
        };
        format!("{} of {} shares{to}{seal}", self.threshold, self.shares)
    }
}

/// Where a rekey stands after one share of the current set.
#[derive(Debug)]
pub struct RekeyProgress {
    /// Current shares accepted towards this rekey (0 once done).
    pub progress: u8,
    /// Current shares needed (the current threshold).
    pub required: u8,
    /// Once the last share is in: the new shares.
    pub done: Option<Rekeyed>,
}

/// A finished rekey.
#[derive(Debug)]
pub struct Rekeyed {
    /// The new shares (the old ones open nothing any more).
    pub shares: IssuedShares,
    /// New shares needed.
    pub threshold: u8,
    /// New shares made.
    pub total: u8,
    /// The keyring's generation after the rekey.
    pub keyring_generation: u64,
    /// True if the vault could not reopen its session after saving the
    /// rekeyed keyring: it is then sealed, and the new shares unseal it.
    pub sealed: bool,
}

/// A rekey in progress: the split it makes and the current shares given.
struct PendingRekey {
    /// The current share set the shares belong to.
    set_id: [u8; 16],
    params: RekeyParams,
    collector: ShareCollector,
}

/// Said to an unseal of an unsealed vault.
const ALREADY_UNSEALED: &str = "the vault is already unsealed";

/// How long a rekey waits for requests of the session it ends to finish.
const REKEY_DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

impl Vault {
    fn rekey_slot(&self) -> MutexGuard<'_, Option<PendingRekey>> {
        self.rekey.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Rekey: replaces the unseal key. Takes one share of the current set
    /// per call; every call names the same new split (`params`), which the
    /// first fixes. Once the current threshold is reached, the keyring
    /// (same keys, generation raised) is re-encrypted under a new random
    /// unseal key whose shares are returned (sealed to `params.recipients`
    /// if given), and the old shares open nothing any more. The vault must
    /// be unsealed; it briefly ends its session to swap the unseal key
    /// (requests during the swap answer "sealed") and serves on. One audit
    /// event per call, naming the new split and, at the end, the keyring
    /// generation; never a share.
    pub fn rekey(
        &self,
        caller: &Caller,
        share: &str,
        params: &RekeyParams,
    ) -> Result<RekeyProgress> {
        let result = self.rekey_unaudited(caller, share, params);
        let detail = match &result {
            Ok(RekeyProgress {
                done: Some(done), ..
            }) => format!(
                "rekeyed to {}; keyring generation {}{}",
                params.describe(),
                done.keyring_generation,
                if done.sealed {
                    "; the vault sealed itself (reopening failed): unseal with the new shares"
                } else {
                    ""
                }
            ),
            Ok(p) => format!(
                "share accepted: {} of {}; towards {}",
                p.progress,
                p.required,
                params.describe()
            ),
            Err(_) => format!("towards {}", params.describe()),
        };
        self.record(caller, "rekey", Some(detail), &result);
        result
    }

    /// Abandons the rekey in progress (its shares are dropped). Returns
    /// whether there was one.
    pub fn cancel_rekey(&self, caller: &Caller) -> Result<bool> {
        let result = self
            .authorize_custody(caller)
            .map(|()| self.rekey_slot().take().is_some());
        let detail = match result {
            Ok(true) => "cancelled",
            Ok(false) => "cancel: no rekey in progress",
            Err(_) => "cancel",
        };
        self.record(caller, "rekey", Some(detail.to_owned()), &result);
        if matches!(result, Ok(true)) {
            tracing::info!(principal = %caller.principal.name, "rekey cancelled");
        }
        result
    }

    fn rekey_unaudited(
        &self,
        caller: &Caller,
        share: &str,
        params: &RekeyParams,
    ) -> Result<RekeyProgress> {
        self.authorize_custody(caller)?;
        check_split(params.threshold, params.shares).map_err(share_error)?;
        check_recipients(params.recipients.as_ref(), params.shares)?;
        let share = UnsealShare::parse(share).map_err(|e| refused(caller, e))?;
        if params.seal == Some(SealKind::Pkcs11) && self.opts.pkcs11.is_none() {
            // Said at the first share, not after the last.
            return Err(Error::FailedPrecondition(
                "this server has no PKCS#11 seal configured ([seal] type = \"pkcs11\")".into(),
            ));
        }
        // Held to the end but for the HSM's wrap: a seal (which takes it
        // first too) waits for the swap below rather than finding the vault
        // sealed halfway.
        let mut slot = self.rekey_slot();
        let state = self.state();
        let engine = match &*state {
            State::Unsealed { engine, .. } => Arc::clone(engine),
            State::Uninitialised => {
                return Err(Error::FailedPrecondition(
                    "the vault is not initialised; run `vaultctl operator init`".into(),
                ))
            }
            State::Sealed { .. } => {
                return Err(Error::FailedPrecondition(
                    "the vault is sealed: unseal it first (a rekey re-encrypts the keyring \
                     it holds)"
                        .into(),
                ))
            }
        };
        let custody = engine.keyring().custody();
        if !share.is_of(&custody) {
            return Err(refused(caller, ShareError::Foreign));
        }
        if slot.as_ref().is_some_and(|p| p.set_id != custody.set_id) {
            *slot = None;
        }
        if let Some(p) = slot.as_ref() {
            if p.params != *params {
                let have = p.collector.progress().have;
                return Err(Error::FailedPrecondition(format!(
                    "another rekey is in progress (to {}; {have} of {} shares given): give \
                     the same --shares, --threshold and recipients, or cancel it \
                     (vaultctl operator rekey --cancel)",
                    p.params.describe(),
                    custody.threshold
                )));
            }
        }
        let pending = slot.get_or_insert_with(|| PendingRekey {
            set_id: custody.set_id,
            params: params.clone(),
            collector: ShareCollector::new(),
        });
        let progress = pending
            .collector
            .add(share)
            .map_err(|e| refused(caller, e))?;
        tracing::info!(
            progress = progress.have,
            threshold = progress.need,
            principal = %caller.principal.name,
            "rekey share accepted"
        );
        if progress.have < progress.need {
            return Ok(RekeyProgress {
                progress: progress.have,
                required: progress.need,
                done: None,
            });
        }
        // The last share: the rekey ends here, done or failed.
        let combined = pending.collector.combine();
        *slot = None;
        let combined = combined.map_err(share_error)?;
        // The shares are of the unseal key (Shamir), or of the recovery
        // key (PKCS#11), whose check the header keeps.
        let current_seal = engine.keyring().sealing().seal.clone();
        match &current_seal {
            Seal::Shamir => {
                open_keyring_file(self.keyring.as_ref(), &self.opts.region, &combined, "rekey")?;
            }
            Seal::Pkcs11(sealed) => {
                if !bool::from(subtle::ConstantTimeEq::ct_eq(
                    &recovery_check(&combined)[..],
                    &sealed.recovery_check[..],
                )) {
                    tracing::warn!("the recovery shares given do not combine to the recovery key");
                    return Err(Error::InvalidArgument(
                        "the shares given do not combine to this vault's recovery key (one is \
                         wrong or forged); rekey progress was reset"
                            .into(),
                    ));
                }
            }
        }
        drop(combined);
        let old_key = engine.unseal_key();
        // As for init: the new shares must not be issued unrecorded.
        self.audit.writable()?;
        let new_key = Key256::random();
        let with_hsm = match params.seal {
            None => matches!(current_seal, Seal::Pkcs11(_)),
            Some(kind) => kind == SealKind::Pkcs11,
        };
        // The HSM may take a while: requests, seals (which end the
        // session) and a new rekey's first shares go on meanwhile.
        let seals = self.seals.load(std::sync::atomic::Ordering::SeqCst);
        drop(state);
        drop(slot);
        let split = self.new_split(&new_key, params.threshold, params.shares, with_hsm);
        // Lock order: the rekey slot, then the state. After a seal nothing
        // changes.
        let _slot = self.rekey_slot();
        let mut state = self.state();
        if self.seals.load(std::sync::atomic::Ordering::SeqCst) != seals
            || !matches!(&*state, State::Unsealed { engine: e, .. } if Arc::ptr_eq(e, &engine))
        {
            return Err(Error::Unavailable(
                "the vault's session changed during the rekey; nothing changed: start again".into(),
            ));
        }
        let (parts, new_seal) = split?;
        let new_custody = Custody {
            set_id: parts[0].set_id(),
            threshold: params.threshold,
            shares: params.shares,
        };
        // Sealed to the custodians before anything changes.
        let issued = issue(parts, params.recipients.as_ref())?;

        // End the session: the engine saves the keyring under the old
        // unseal key, so no request of it may still run once the file is
        // rekeyed. Meanwhile the vault answers "sealed"; an unseal is
        // refused while the old engine lives, and a seal waits for the
        // state lock, which is taken again before the engine is let go.
        let previous = std::mem::replace(
            &mut *state,
            State::Sealed {
                custody,
                collector: ShareCollector::new(),
            },
        );
        drop(state);
        engine.close();
        if let State::Unsealed { engine: held, job } = previous {
            drop(held);
            if let Some(job) = job {
                if job.join().is_err() {
                    tracing::error!("the re-wrap job panicked");
                }
            }
        }
        let deadline = std::time::Instant::now() + REKEY_DRAIN;
        while Arc::strong_count(&engine) > 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let mut state = self.state();
        if Arc::strong_count(&engine) > 1 {
            // Nothing changed on disk; the old shares still unseal.
            self.sealed.send_replace(true);
            tracing::warn!("rekey abandoned: requests of the session did not finish in time");
            return Err(Error::Unavailable(
                "requests of the unsealed session did not finish in time; the vault sealed \
                 itself and nothing changed: unseal it and start the rekey again"
                    .into(),
            ));
        }
        let old_keyring = Keyring::clone(&engine.keyring());
        drop(engine);
        let mut keyring = old_keyring.clone();
        keyring.set_custody(new_custody);
        keyring.set_seal(new_seal);
        keyring.next_generation();
        let generation = keyring.generation();
        let new_file = KeyringFile {
            store: Arc::clone(&self.keyring),
            unseal_key: new_key,
        };
        if let Err(e) = new_file.save(&keyring) {
            let rekeyed_on_disk = self.keyring.read().ok().flatten().is_some_and(|f| {
                Keyring::unseal(&f, &new_file.unseal_key, &self.opts.region)
                    .is_ok_and(|k| k.same_state(&keyring))
            });
            if !rekeyed_on_disk {
                // The old keyring file stands: serve on under it.
                let old_file = KeyringFile {
                    store: Arc::clone(&self.keyring),
                    unseal_key: old_key,
                };
                if let Err(reopen) = self.start_session(&mut state, old_keyring, old_file, false) {
                    self.sealed.send_replace(true);
                    tracing::error!(
                        error = %reopen,
                        "after a failed rekey the vault could not reopen; it is sealed"
                    );
                }
                return Err(e);
            }
            tracing::error!(error = %e, "rekeyed keyring saved, but not confirmed durable");
        }
        drop(old_key);
        let sealed = match self.start_session(&mut state, keyring, new_file, false) {
            Ok(()) => false,
            Err(e) => {
                // The keyring is rekeyed: the new shares are the only way
                // in, so they are returned whatever happens here.
                *state = State::Sealed {
                    custody: new_custody,
                    collector: ShareCollector::new(),
                };
                self.sealed.send_replace(true);
                tracing::error!(
                    error = %e,
                    "the vault could not reopen after a rekey; it is sealed"
                );
                true
            }
        };
        tracing::info!(
            threshold = params.threshold,
            shares = params.shares,
            generation,
            encrypted = params.recipients.is_some(),
            principal = %caller.principal.name,
            "vault rekeyed"
        );
        Ok(RekeyProgress {
            progress: 0,
            required: params.threshold,
            done: Some(Rekeyed {
                shares: issued,
                threshold: params.threshold,
                total: params.shares,
                keyring_generation: generation,
                sealed,
            }),
        })
    }

    /// Opens an engine over `keyring` and serves with it (an unseal, or
    /// after a rekey).
    fn start_session(
        &self,
        state: &mut State,
        keyring: Keyring,
        file: KeyringFile,
        allow_keyring_rollback: bool,
    ) -> Result<()> {
        let custody = keyring.custody();
        let mut options = self.opts.engine.clone();
        options.accept_keyring_rollback = allow_keyring_rollback;
        let engine = Engine::with_audit(
            Arc::clone(&self.store),
            keyring,
            file,
            options,
            Arc::clone(&self.audit),
        )
        .map_err(|e| match e {
            // The keyring opened but does not belong to this data folder:
            // the custodians should hear why, not "internal error".
            Error::Keyring(k) => Error::FailedPrecondition(k.to_string()),
            e => e,
        })?;
        let engine = Arc::new(engine);
        *self.last_engine.lock().unwrap_or_else(|p| p.into_inner()) = Arc::downgrade(&engine);
        let worker = Arc::clone(&engine);
        let job = std::thread::Builder::new()
            .name("vault-background".into())
            .spawn(move || worker.run_background());
        match job {
            Ok(job) => {
                *state = State::Unsealed {
                    engine,
                    job: Some(job),
                };
                self.sealed.send_replace(false);
                *self.seal_message.lock().unwrap_or_else(|p| p.into_inner()) = None;
                Ok(())
            }
            Err(e) => {
                engine.close();
                *state = State::Sealed {
                    custody,
                    collector: ShareCollector::new(),
                };
                Err(Error::io("starting the re-wrap job", e))
            }
        }
    }
}

/// The shares to hand out: in clear, or sealed to their recipients.
fn issue(parts: Vec<UnsealShare>, recipients: Option<&ShareRecipients>) -> Result<IssuedShares> {
    match recipients {
        None => Ok(IssuedShares {
            clear: parts,
            sealed: Vec::new(),
        }),
        Some(r) => Ok(IssuedShares {
            clear: Vec::new(),
            sealed: r
                .seal(&parts)
                .map_err(|e| Error::InvalidArgument(e.to_string()))?,
        }),
    }
}

/// One recipient per share, if any are given.
fn check_recipients(recipients: Option<&ShareRecipients>, shares: u8) -> Result<()> {
    match recipients {
        Some(r) if r.len() != usize::from(shares) => Err(Error::InvalidArgument(format!(
            "{} recipients for {shares} shares: give exactly one recipient per share",
            r.len()
        ))),
        _ => Ok(()),
    }
}

impl Drop for Vault {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// An HSM failure, said with what it stopped.
fn hsm_failed(what: &str, e: HsmError) -> Error {
    Error::FailedPrecondition(format!("{what}: {e}"))
}

fn share_error(e: ShareError) -> Error {
    Error::InvalidArgument(e.to_string())
}

/// A refused unseal share: logged (why, and by whom; never the share) and
/// returned as an invalid argument.
fn refused(caller: &Caller, e: ShareError) -> Error {
    tracing::warn!(reason = %e, principal = %caller.principal.name, "unseal share refused");
    share_error(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_second_engine_while_the_last_one_lives() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::open_dev(OpenOptions::dev(dir.path(), "eu".parse().unwrap())).unwrap();
        let c = Caller::internal("t");
        let share = std::fs::read_to_string(dir.path().join(DEV_SHARE_FILE)).unwrap();
        // A request in flight holds the engine across the seal.
        let in_flight = vault.engine().unwrap();
        vault.seal(&c).unwrap();
        assert!(in_flight.is_closed());
        assert!(matches!(vault.engine(), Err(Error::Sealed)));
        assert!(matches!(
            vault.unseal(&c, &share),
            Err(Error::Unavailable(_))
        ));
        drop(in_flight);
        let p = vault.unseal(&c, &share).unwrap();
        assert!(!p.sealed);
        // Sealing twice is harmless; a sealed vault keeps its progress.
        vault.seal(&c).unwrap();
        vault.seal(&c).unwrap();
        assert!(vault.status(&c).unwrap().sealed);
    }

    #[test]
    fn a_folder_with_data_but_no_keyring_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let opts = OpenOptions::dev(dir.path(), "eu".parse().unwrap());
        drop(Vault::open_dev(opts.clone()).unwrap());
        std::fs::remove_file(&opts.keyring_file).unwrap();
        let err = Vault::open(opts).unwrap_err();
        assert!(err.to_string().contains("keyring"), "{err}");
    }

    /// A folder of an older format (one without the format marker: the
    /// first builds, which kept ids in clear) is refused at start with a
    /// message that says what to do, before any unseal.
    #[test]
    fn a_folder_of_another_format_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let opts = OpenOptions::dev(dir.path(), "eu".parse().unwrap());
        drop(Vault::open_dev(opts.clone()).unwrap());
        drop(Vault::open(opts.clone()).unwrap());
        let set_format = |value: Option<&[u8]>| {
            let store = RocksStore::open(&opts.data_dir.join("db"), &opts.store).unwrap();
            let mut ws = crate::storage::WriteSet::new();
            match value {
                Some(v) => ws.put(Table::Meta, crate::engine::META_FORMAT.to_vec(), v.to_vec()),
                None => ws.delete(Table::Meta, crate::engine::META_FORMAT.to_vec()),
            }
            store.write(ws).unwrap();
        };
        set_format(None);
        let err = Vault::open(opts.clone()).unwrap_err().to_string();
        assert!(
            err.contains("format 1") && err.contains("no migration"),
            "{err}"
        );
        set_format(Some(&3u32.to_be_bytes()));
        let err = Vault::open(opts.clone()).unwrap_err().to_string();
        assert!(err.contains("format 3"), "{err}");
        set_format(Some(b"x"));
        let err = Vault::open(opts).unwrap_err().to_string();
        assert!(err.contains("malformed"), "{err}");
    }
}
