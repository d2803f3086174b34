//! The production configuration file (TOML).
//!
//! ```toml
//! region = "eu"
//! listen = "0.0.0.0:8200"
//! data_dir = "/var/lib/vault"
//! keyring_file = "/etc/vault/keyring"         # default: <data_dir>/keyring
//! policy_file = "/etc/vault/policy.toml"     # default: the built-in role policy; reloaded on SIGHUP
//! danger_unsynced_writes = false            # default false: every write is WAL-synced
//! danger_allow_plaintext = false            # default false: without [tls], loopback only
//! key_cache_capacity = 10000                 # subject key versions kept unwrapped
//! block_cache_mib = 256                      # RocksDB's block cache, shared by all tables
//! metrics_listen = "127.0.0.1:9464"          # optional: GET /metrics (Prometheus text, plain HTTP)
//!
//! [limits]                                   # all optional
//! max_record_bytes = 65536
//! max_batch_records = 500                   # at most 10000
//! max_batch_bytes = 4194304
//!
//! [rewrap]                                   # pace of the root-key re-wrap job; optional
//! batch_size = 50
//! keys_per_second = 10000                    # 0: no limit
//!
//! [reindex]                                  # pace of the blind-index rebuild after an
//! batch_size = 100                           # index-key rotation; optional
//! rows_per_second = 5000                     # index rows examined; 0: no limit
//!
//! [storage]                                  # optional; default: RocksDB in data_dir/db
//! backend = "postgres"                       # "rocksdb" (default) or "postgres"
//! postgres_url = "host=10.0.0.5,10.0.0.6 port=5432 user=vault dbname=vault target_session_attrs=read-write"
//! postgres_pool_size = 16                    # connections per server
//! postgres_ca_file = "/etc/vault/pg-ca.pem"   # with sslmode=require in postgres_url;
//!                                            # else the system's roots
//! postgres_allow_plaintext = false           # true: no TLS to a host that is not loopback
//!
//! [retention]                                # collections' time to live; optional
//! sweep_interval_seconds = 60                # how often expired records are purged; 0: never
//!
//! [audit]                                    # when audit checkpoints are signed; optional
//! checkpoint_every_events = 1000             # 0: not by count
//! checkpoint_interval_ms = 60000             # if the log grew; 0: not by time
//! witnesses = ["witness.auditor.example/eu+1a2b3c4d+BH…"]  # whose cosignatures it takes
//!
//! [keys]                                     # optional
//! rotate_root_after_wraps = 2147483648       # ask for a root rotation after this many
//!                                            # wraps under one version (at most 2^32)
//!
//! [monitor]                                  # optional
//! lockout_after_denials = 20                 # PERMISSION_DENIED answers that lock a
//!                                            # principal out; 0: never
//! lockout_window_seconds = 60                # counted within this window
//! lockout_seconds = 900                      # for this long (a custodian can lift it)
//! on_critical = "alert"                      # or "seal": seal the vault on a critical
//!                                            # alert (a honey record read)
//!
//! [tls]                                      # optional; without it the port is plaintext
//! cert_file = "/etc/vault/server.pem"        # PEM chain, the server's certificate first
//! key_file = "/etc/vault/server.key"         # PEM private key (PKCS#8, PKCS#1 or SEC1)
//! client_ca_file = "/etc/vault/clients-ca.pem"   # optional: mutual TLS; every connection
//!                                            # must present a client certificate signed by it
//!
//! [[principals]]                             # client-certificate principals and their roles
//! name = "spiffe://eu.example/billing-service"   # the certificate's first URI SAN, else its CN
//! roles = ["reader", "writer"]
//!
//! [[tokens]]                                 # bearer tokens, stored as SHA-256 hex
//! principal = "billing-service"
//! sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! roles = ["reader", "writer"]
//! expires_at = "2027-01-01T00:00:00Z"        # optional, RFC 3339: refused from then on
//!
//! [[tokens]]                                 # custodians hold custody tokens only
//! principal = "custodian-alice"
//! sha256 = "…"
//! roles = ["custodian"]
//! revoked = true                             # optional: refused as "token revoked"
//! ```
//!
//! The server starts sealed; the unseal key is never in a file. Custodians
//! run `vaultctl operator init` once, then `vaultctl operator unseal` (M of
//! N) after every start. A token or principal with the `custodian` role may
//! not also hold a role that reads or writes data (reader, writer, admin,
//! dpo): custody and data access are separate duties. With a policy file,
//! the roles a credential names are resolved against the file and checked
//! the same way, at start and at every reload.
//!
//! Over mutual TLS a request's principal is its client certificate's, with
//! the roles of its `[[principals]]` entry; a bearer token sent as well must
//! be bound to that same principal (and adds no role). Without a client
//! certificate, the bearer token decides, as in plaintext mode.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Deserializer};

use crate::audit::checkpoint::WitnessKey;
use crate::engine::{
    CheckpointOptions, EngineOptions, Limits, ReindexOptions, RewrapOptions,
    DEFAULT_ROTATE_AFTER_WRAPS, NIST_RANDOM_NONCE_LIMIT,
};
use crate::keys::Region;
use crate::monitor::{
    LockoutOptions, Monitor, MonitorOptions, OnCritical, SystemClock, DEFAULT_LOCKOUT_AFTER_DENIALS,
};
use crate::policy::{Policy, PolicyHandle, Principal, Role};
use crate::service::{Authenticator, TlsFiles, TokenGrant};
use crate::storage::{PgOptions, StoreOptions};
use crate::vault::OpenOptions;
use crate::{Error, Result};

/// The parsed configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The region this vault serves.
    pub region: String,
    /// Listen address.
    pub listen: SocketAddr,
    /// Data folder.
    pub data_dir: PathBuf,
    /// Keyring file; default `<data_dir>/keyring`.
    pub keyring_file: Option<PathBuf>,
    /// The access policy file (TOML; see `policy/rules.rs`). Without it
    /// the built-in role policy applies: credential roles, any purpose,
    /// every field plain. Reloaded on SIGHUP and by `AdminService`.
    pub policy_file: Option<PathBuf>,
    /// Listen in plaintext (no `[tls]`) on an address other than loopback,
    /// e.g. behind a TLS-terminating proxy on the same host. Without it
    /// such a listener is refused. Logged at start; `operator status`
    /// shows it.
    #[serde(default)]
    pub danger_allow_plaintext: bool,
    /// Acknowledge writes before the WAL is synced: faster, but a power
    /// loss can lose acknowledged writes. For benchmarks only (default false).
    #[serde(default)]
    pub danger_unsynced_writes: bool,
    /// Subject key versions kept unwrapped in memory.
    #[serde(default = "default_cache")]
    pub key_cache_capacity: usize,
    /// MiB of RocksDB's block cache (shared by all tables; default 256).
    pub block_cache_mib: Option<usize>,
    /// Request limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Pace of the re-wrap job.
    #[serde(default)]
    pub rewrap: RewrapConfig,
    /// Pace of the blind-index rebuild.
    #[serde(default)]
    pub reindex: ReindexConfig,
    /// Where records, the audit log and the keyring are stored.
    #[serde(default)]
    pub storage: StorageConfig,
    /// The retention sweeper.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Audit checkpoints.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Root key use.
    #[serde(default)]
    pub keys: KeysConfig,
    /// Detectors: lockout.
    #[serde(default)]
    pub monitor: MonitorConfig,
    /// How a new keyring's unseal key is kept (shares, or an HSM).
    #[serde(default)]
    pub seal: SealConfig,
    /// What this server presents to the key release gate.
    #[serde(default)]
    pub attestation: AttestationConfig,
    /// Where to serve metrics (`GET /metrics`), if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// TLS on the gRPC port; plaintext without it.
    pub tls: Option<TlsConfig>,
    /// Principals that authenticate by client certificate, with their roles.
    #[serde(default)]
    pub principals: Vec<PrincipalConfig>,
    /// Bearer tokens.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
}

fn default_cache() -> usize {
    10_000
}

/// `[limits]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most plaintext bytes per record.
    pub max_record_bytes: Option<usize>,
    /// Most records per batch.
    pub max_batch_records: Option<usize>,
    /// Most plaintext bytes per batch.
    pub max_batch_bytes: Option<usize>,
}

/// `[rewrap]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewrapConfig {
    /// Subject keys per batch.
    pub batch_size: Option<usize>,
    /// Most subject keys per second; 0 for no limit.
    pub keys_per_second: Option<u64>,
}

/// `[storage]`.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// `rocksdb` (the default) or `postgres`.
    pub backend: Option<BackendConfig>,
    /// The PostgreSQL connection string (libpq key-value or URL form).
    pub postgres_url: Option<String>,
    /// Connections each server keeps to PostgreSQL.
    pub postgres_pool_size: Option<usize>,
    /// The CA certificates (PEM) the database's certificate must chain to
    /// (with `sslmode=require` in the connection string).
    pub postgres_ca_file: Option<PathBuf>,
    /// Allows a plain connection to a host other than loopback.
    pub postgres_allow_plaintext: Option<bool>,
}

impl std::fmt::Debug for StorageConfig {
    // The connection string may hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageConfig")
            .field("backend", &self.backend)
            .field("postgres_pool_size", &self.postgres_pool_size)
            .field("postgres_ca_file", &self.postgres_ca_file)
            .field("postgres_allow_plaintext", &self.postgres_allow_plaintext)
            .finish_non_exhaustive()
    }
}

/// A storage backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendConfig {
    /// RocksDB in the data folder.
    Rocksdb,
    /// PostgreSQL, shared by every server of the region.
    Postgres,
}

/// Most connections a server keeps to PostgreSQL.
const MAX_POSTGRES_POOL: usize = 1024;

impl StorageConfig {
    /// The PostgreSQL options, when that is the backend.
    fn postgres(
        &self,
        sync_writes: bool,
        keyring_file_set: bool,
    ) -> Result<Option<PgOptions>, String> {
        match (self.backend, &self.postgres_url) {
            (None | Some(BackendConfig::Rocksdb), None) => {
                for (set, key) in [
                    (self.postgres_pool_size.is_some(), "postgres_pool_size"),
                    (self.postgres_ca_file.is_some(), "postgres_ca_file"),
                    (
                        self.postgres_allow_plaintext.is_some(),
                        "postgres_allow_plaintext",
                    ),
                ] {
                    if set {
                        return Err(format!(
                            "storage.{key} is set but the backend is not postgres"
                        ));
                    }
                }
                Ok(None)
            }
            (None | Some(BackendConfig::Rocksdb), Some(_)) => {
                Err("storage.postgres_url is set but storage.backend is not \"postgres\"".into())
            }
            (Some(BackendConfig::Postgres), None) => {
                Err("storage.backend = \"postgres\" needs storage.postgres_url".into())
            }
            (Some(BackendConfig::Postgres), Some(_)) if keyring_file_set => Err(
                "keyring_file does not apply to storage.backend = \"postgres\": the keyring \
                 is kept in the database's vault_keyring table (SECURITY.md says what that means \
                 for copies of the database)"
                    .into(),
            ),
            (Some(BackendConfig::Postgres), Some(url)) => {
                if url.parse::<tokio_postgres::Config>().is_err() {
                    // The driver's message may quote the string, password and all.
                    return Err(
                        "storage.postgres_url is not a PostgreSQL connection string \
                                (key-value or postgresql:// URL form)"
                            .into(),
                    );
                }
                let mut o = PgOptions::new(url.clone());
                o.sync_writes = sync_writes;
                if let Some(n) = self.postgres_pool_size {
                    if n == 0 || n > MAX_POSTGRES_POOL {
                        return Err(format!(
                            "storage.postgres_pool_size must be 1 to {MAX_POSTGRES_POOL}"
                        ));
                    }
                    o.pool_size = n;
                }
                o.ca_file = self.postgres_ca_file.clone();
                o.allow_plaintext = self.postgres_allow_plaintext.unwrap_or(false);
                Ok(Some(o))
            }
        }
    }
}

/// `[retention]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Seconds between sweeps for expired records; 0: never.
    pub sweep_interval_seconds: Option<u64>,
}

/// `[reindex]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReindexConfig {
    /// Index rows per batch.
    pub batch_size: Option<usize>,
    /// Most index rows per second; 0 for no limit.
    pub rows_per_second: Option<u64>,
}

/// The most `limits.max_batch_records`.
const MAX_BATCH_RECORDS: usize = 10_000;

/// The most witness keys `audit.witnesses` lists.
const MAX_WITNESSES: usize = 16;

/// The longest `audit.checkpoint_interval_ms`: one day.
const MAX_CHECKPOINT_INTERVAL_MS: u64 = 86_400_000;

/// Most MiB of block cache a configuration may ask for (1 TiB).
const MAX_BLOCK_CACHE_MIB: usize = 1 << 20;

/// `[audit]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// A checkpoint after every this many events; 0: not by count.
    pub checkpoint_every_events: Option<u64>,
    /// A checkpoint every this many milliseconds if the log grew; 0: not
    /// by time.
    pub checkpoint_interval_ms: Option<u64>,
    /// The witnesses whose cosignatures of checkpoints the vault takes:
    /// C2SP verifier keys `<name>+<hex key id>+<base64(0x04 ‖ key)>`, as
    /// `vaultctl audit witness-key` prints them (at most 16).
    #[serde(default)]
    pub witnesses: Vec<String>,
}

/// `[keys]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// Keys a root key version may wrap before the vault asks for a root
    /// rotation; at most 2^32 (NIST SP 800-38D's bound for random nonces),
    /// default 2^31.
    pub rotate_root_after_wraps: Option<u64>,
}

/// `[seal]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealConfig {
    /// `shamir` (default: the unseal key split among custodians) or
    /// `pkcs11` (wrapped by a key in an HSM; the vault unseals itself).
    #[serde(rename = "type", default)]
    pub kind: SealKindConfig,
    /// The PKCS#11 module, e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub pkcs11_library: Option<PathBuf>,
    /// The HSM token's label.
    pub token_label: Option<String>,
    /// The wrapping key's label (made on the token at init if absent;
    /// default `vault-unseal`).
    pub key_label: Option<String>,
    /// A file holding the token's user PIN (read at start).
    pub pin_file: Option<PathBuf>,
}

/// `[seal] type`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SealKindConfig {
    /// Shares.
    #[default]
    Shamir,
    /// An HSM, through PKCS#11.
    Pkcs11,
}

/// `[attestation]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationConfig {
    /// `self-reported` (default: the SHA-384 of the server's executable,
    /// with no TEE to vouch for it), `nitro` or `none`.
    pub evidence: Option<EvidenceConfig>,
    /// With `nitro`: the program that asks the enclave's NSM for a document
    /// (see `attest::CommandSource`), and its arguments.
    pub nitro_document_command: Option<Vec<String>>,
    /// With `nitro`: the root the documents must chain to (PEM); default
    /// AWS's Nitro Enclaves root G1, built in.
    pub nitro_root_file: Option<PathBuf>,
}

/// `[attestation] evidence`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum EvidenceConfig {
    /// No evidence: the gate refuses once a build is approved.
    None,
    /// The executable's SHA-384, self-reported.
    SelfReported,
    /// Nitro Enclaves attestation documents.
    Nitro,
}

impl AttestationConfig {
    /// The evidence this server presents; the Nitro settings only with
    /// `nitro`, and then the command is required.
    pub fn evidence(&self) -> Result<crate::attest::Evidence, String> {
        use crate::attest::{nitro::NitroVerifier, CommandSource, Evidence, NitroEvidence};
        let nitro = self.evidence == Some(EvidenceConfig::Nitro);
        if !nitro && (self.nitro_document_command.is_some() || self.nitro_root_file.is_some()) {
            return Err(
                "attestation.nitro_document_command and nitro_root_file apply only to \
                 attestation.evidence = \"nitro\""
                    .into(),
            );
        }
        match self.evidence {
            Some(EvidenceConfig::None) => Ok(Evidence::None),
            Some(EvidenceConfig::SelfReported) | None => {
                Evidence::self_reported().map_err(|e| e.to_string())
            }
            Some(EvidenceConfig::Nitro) => {
                let argv = self.nitro_document_command.clone().unwrap_or_default();
                if argv.first().is_none_or(|p| p.is_empty()) {
                    return Err("attestation.evidence = \"nitro\" needs \
                                attestation.nitro_document_command (the program that asks \
                                the NSM for a document)"
                        .into());
                }
                if !argv.first().is_some_and(|p| Path::new(p).is_absolute()) {
                    return Err(
                        "attestation.nitro_document_command must start with an absolute path \
                         (it runs with an empty environment)"
                            .into(),
                    );
                }
                let verifier = match &self.nitro_root_file {
                    None => NitroVerifier::aws(),
                    Some(path) => {
                        let pem = std::fs::read_to_string(path).map_err(|e| {
                            format!("attestation.nitro_root_file {}: {e}", path.display())
                        })?;
                        NitroVerifier::from_pem(&pem)
                    }
                }
                .map_err(|e| format!("attestation.nitro_root_file: {e}"))?;
                Ok(Evidence::Nitro(std::sync::Arc::new(NitroEvidence::new(
                    verifier,
                    Box::new(CommandSource {
                        argv,
                        timeout: crate::attest::COMMAND_TIMEOUT,
                    }),
                ))))
            }
        }
    }
}

impl SealConfig {
    /// The HSM to use, when `type = "pkcs11"`: every setting but the key
    /// label is required, and the PIN file must hold a PIN.
    pub fn pkcs11(&self) -> Result<Option<crate::hsm::Pkcs11Config>, String> {
        let set = [
            ("pkcs11_library", self.pkcs11_library.is_some()),
            ("token_label", self.token_label.is_some()),
            ("key_label", self.key_label.is_some()),
            ("pin_file", self.pin_file.is_some()),
        ];
        if self.kind == SealKindConfig::Shamir {
            if let Some((name, _)) = set.iter().find(|(_, s)| *s) {
                return Err(format!(
                    "seal.{name} applies only to seal.type = \"pkcs11\""
                ));
            }
            return Ok(None);
        }
        let need = |name: &str| format!("seal.type = \"pkcs11\" needs seal.{name}");
        let library = self
            .pkcs11_library
            .clone()
            .ok_or_else(|| need("pkcs11_library"))?;
        let token_label = self
            .token_label
            .clone()
            .ok_or_else(|| need("token_label"))?;
        if token_label.is_empty() || token_label.len() > 32 {
            return Err("seal.token_label must be 1 to 32 bytes (a PKCS#11 token label)".into());
        }
        let key_label = self
            .key_label
            .clone()
            .unwrap_or_else(|| "vault-unseal".to_owned());
        if key_label.is_empty() || key_label.len() > 128 {
            return Err("seal.key_label must be 1 to 128 bytes".into());
        }
        let pin_file = self.pin_file.as_ref().ok_or_else(|| need("pin_file"))?;
        let pin = zeroize::Zeroizing::new(
            std::fs::read_to_string(pin_file)
                .map_err(|e| format!("seal.pin_file {}: {e}", pin_file.display()))?,
        );
        let pin = pin.trim_end_matches(['\n', '\r']);
        if pin.is_empty() {
            return Err(format!("seal.pin_file {} is empty", pin_file.display()));
        }
        Ok(Some(crate::hsm::Pkcs11Config {
            library,
            token_label,
            pin: pin.to_owned().into(),
            key_label,
        }))
    }
}

/// `[monitor]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorConfig {
    /// Denials within the window that lock a principal out; 0: never.
    pub lockout_after_denials: Option<u32>,
    /// The window denials are counted in, in seconds.
    pub lockout_window_seconds: Option<u64>,
    /// How long a lockout lasts, in seconds.
    pub lockout_seconds: Option<u64>,
    /// `alert` (the default) or `seal`: seal the vault on a critical alert.
    pub on_critical: Option<OnCriticalConfig>,
}

/// `[monitor] on_critical`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnCriticalConfig {
    /// Alert only.
    Alert,
    /// Alert, and seal the vault.
    Seal,
}

/// The most denials a lockout may wait for (each is remembered until the
/// window passes).
const MAX_LOCKOUT_DENIALS: u32 = 10_000;

/// The longest lockout window and lockout (one week).
const MAX_LOCKOUT_SECONDS: u64 = 7 * 24 * 3600;

/// `[tls]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate chain (PEM).
    pub cert_file: PathBuf,
    /// The server's private key (PEM).
    pub key_file: PathBuf,
    /// CA certificates (PEM) of client certificates; when set, every
    /// connection must present one signed by them (mutual TLS).
    pub client_ca_file: Option<PathBuf>,
}

/// One `[[principals]]` entry: a principal that authenticates by client
/// certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalConfig {
    /// The name its certificates carry: the first URI SAN (whole, e.g.
    /// `spiffe://eu.example/billing-service`), else the subject CN.
    pub name: String,
    /// Roles: reader, writer, admin, custodian, auditor, dpo.
    pub roles: Vec<String>,
}

/// One `[[tokens]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The principal the token stands for.
    pub principal: String,
    /// SHA-256 of the token, 64 hex digits (`printf %s "$TOKEN" | sha256sum`).
    pub sha256: String,
    /// Roles: reader, writer, admin, custodian, auditor, dpo.
    pub roles: Vec<String>,
    /// When the token stops working: RFC 3339 with an offset
    /// (`"2027-01-01T00:00:00Z"`; a TOML date-time with an offset works too).
    #[serde(default, deserialize_with = "text_or_datetime")]
    pub expires_at: Option<String>,
    /// A revoked token is refused ("token revoked").
    #[serde(default)]
    pub revoked: bool,
}

/// A string, or a TOML date-time as its RFC 3339 text.
fn text_or_datetime<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match toml::Value::deserialize(d)? {
        toml::Value::String(s) => Ok(Some(s)),
        toml::Value::Datetime(dt) => Ok(Some(dt.to_string())),
        other => Err(serde::de::Error::custom(format!(
            "expected an RFC 3339 time such as \"2027-01-01T00:00:00Z\", found a {}",
            other.type_str()
        ))),
    }
}

/// An RFC 3339 time with an offset, as an instant.
fn parse_instant(text: &str) -> Result<SystemTime, String> {
    time::OffsetDateTime::parse(text.trim(), &time::format_description::well_known::Rfc3339)
        .map(SystemTime::from)
        .map_err(|e| {
            format!("{text:?} is not an RFC 3339 time with an offset such as 2027-01-01T00:00:00Z ({e})")
        })
}

/// Parses role names; refuses custody combined with data access.
fn parse_roles(what: &str, names: &[String]) -> Result<Vec<Role>, String> {
    let roles = names
        .iter()
        .map(|r| r.parse::<Role>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what}.roles: {e}"))?;
    separate_duties(what, &roles)?;
    Ok(roles)
}

/// Refuses custody combined with a role that reads or writes data.
fn separate_duties(what: &str, roles: &[Role]) -> Result<(), String> {
    if roles.contains(&Role::Custodian)
        && roles
            .iter()
            .any(|r| matches!(r, Role::Reader | Role::Writer | Role::Admin | Role::Dpo))
    {
        return Err(format!(
            "{what}: the custodian role cannot be combined with reader, writer, admin or dpo \
             (custody and data access are separate duties; give the custodian its own credential)"
        ));
    }
    Ok(())
}

impl Config {
    /// Reads and parses a configuration file; errors name the file and line.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading configuration {}", path.display()), e))?;
        Self::parse(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// Parses configuration text.
    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        config.region()?;
        config.authenticator()?;
        config.credentials()?;
        config.open_options()?;
        check_listener(
            config.listen,
            config.tls.is_some(),
            config.danger_allow_plaintext,
        )?;
        Ok(config)
    }

    /// The region, checked.
    pub fn region(&self) -> Result<Region, String> {
        self.region.parse().map_err(|e| format!("region: {e}"))
    }

    /// The vault's open options.
    pub fn open_options(&self) -> Result<OpenOptions, String> {
        let d = Limits::default();
        let r = RewrapOptions::default();
        let x = ReindexOptions::default();
        let c = CheckpointOptions::default();
        let rotate_root_after_wraps = self
            .keys
            .rotate_root_after_wraps
            .unwrap_or(DEFAULT_ROTATE_AFTER_WRAPS);
        if !(1..=NIST_RANDOM_NONCE_LIMIT).contains(&rotate_root_after_wraps) {
            return Err(format!(
                "keys.rotate_root_after_wraps must be 1 to {NIST_RANDOM_NONCE_LIMIT} (2^32, \
                 NIST SP 800-38D's bound on random nonces per key)"
            ));
        }
        // Every audit event names the pseudonyms of a batch's ids (about
        // 67 bytes each): the cap keeps the largest event far inside one
        // page of the audit API.
        if self
            .limits
            .max_batch_records
            .is_some_and(|n| !(1..=MAX_BATCH_RECORDS).contains(&n))
        {
            return Err(format!(
                "limits.max_batch_records must be 1 to {MAX_BATCH_RECORDS}"
            ));
        }
        if self.rewrap.batch_size == Some(0) {
            return Err("rewrap.batch_size must be at least 1".into());
        }
        if self.reindex.batch_size == Some(0) {
            return Err("reindex.batch_size must be at least 1".into());
        }
        if self
            .block_cache_mib
            .is_some_and(|mib| !(8..=MAX_BLOCK_CACHE_MIB).contains(&mib))
        {
            return Err(format!(
                "block_cache_mib must be 8 to {MAX_BLOCK_CACHE_MIB}"
            ));
        }
        if self
            .audit
            .checkpoint_interval_ms
            .is_some_and(|ms| ms > MAX_CHECKPOINT_INTERVAL_MS)
        {
            return Err(format!(
                "audit.checkpoint_interval_ms must be at most {MAX_CHECKPOINT_INTERVAL_MS} (one day)"
            ));
        }
        if self.audit.witnesses.len() > MAX_WITNESSES {
            return Err(format!(
                "audit.witnesses lists at most {MAX_WITNESSES} witness keys"
            ));
        }
        let mut witnesses = Vec::new();
        for (i, text) in self.audit.witnesses.iter().enumerate() {
            let key: WitnessKey = text
                .parse()
                .map_err(|e| format!("audit.witnesses[{i}]: {e}"))?;
            if witnesses.contains(&key) {
                return Err(format!("audit.witnesses[{i}] is listed twice"));
            }
            witnesses.push(key);
        }
        let l = LockoutOptions::default();
        let lockout = LockoutOptions {
            after_denials: self
                .monitor
                .lockout_after_denials
                .unwrap_or(DEFAULT_LOCKOUT_AFTER_DENIALS),
            window: self
                .monitor
                .lockout_window_seconds
                .map_or(l.window, std::time::Duration::from_secs),
            duration: self
                .monitor
                .lockout_seconds
                .map_or(l.duration, std::time::Duration::from_secs),
        };
        if lockout.after_denials > MAX_LOCKOUT_DENIALS {
            return Err(format!(
                "monitor.lockout_after_denials must be at most {MAX_LOCKOUT_DENIALS} (0: never)"
            ));
        }
        for (name, value) in [
            ("lockout_window_seconds", lockout.window),
            ("lockout_seconds", lockout.duration),
        ] {
            if value.is_zero() || value.as_secs() > MAX_LOCKOUT_SECONDS {
                return Err(format!(
                    "monitor.{name} must be 1 to {MAX_LOCKOUT_SECONDS} (one week)"
                ));
            }
        }
        let evidence = self.attestation.evidence()?;
        Ok(OpenOptions {
            pkcs11: self.seal.pkcs11()?,
            evidence,
            data_dir: self.data_dir.clone(),
            region: self.region()?,
            keyring_file: self
                .keyring_file
                .clone()
                .unwrap_or_else(|| self.data_dir.join("keyring")),
            postgres: self
                .storage
                .postgres(!self.danger_unsynced_writes, self.keyring_file.is_some())?,
            store: StoreOptions {
                sync_writes: !self.danger_unsynced_writes,
                block_cache_bytes: self
                    .block_cache_mib
                    .map_or(crate::storage::DEFAULT_BLOCK_CACHE_BYTES, |mib| mib << 20),
            },
            engine: EngineOptions {
                limits: Limits {
                    max_record_bytes: self.limits.max_record_bytes.unwrap_or(d.max_record_bytes),
                    max_batch_records: self.limits.max_batch_records.unwrap_or(d.max_batch_records),
                    max_batch_bytes: self.limits.max_batch_bytes.unwrap_or(d.max_batch_bytes),
                },
                key_cache_capacity: self.key_cache_capacity,
                rewrap: RewrapOptions {
                    batch_size: self.rewrap.batch_size.unwrap_or(r.batch_size),
                    keys_per_second: self.rewrap.keys_per_second.unwrap_or(r.keys_per_second),
                },
                reindex: ReindexOptions {
                    batch_size: self.reindex.batch_size.unwrap_or(x.batch_size),
                    rows_per_second: self.reindex.rows_per_second.unwrap_or(x.rows_per_second),
                },
                policy: std::sync::Arc::new(self.policy()?),
                checkpoints: CheckpointOptions {
                    every_events: self.audit.checkpoint_every_events.unwrap_or(c.every_events),
                    interval: self
                        .audit
                        .checkpoint_interval_ms
                        .map_or(c.interval, std::time::Duration::from_millis),
                },
                accept_keyring_rollback: false,
                rotate_root_after_wraps,
                monitor: std::sync::Arc::new(Monitor::new(
                    MonitorOptions {
                        lockout,
                        on_critical: match self.monitor.on_critical {
                            Some(OnCriticalConfig::Seal) => OnCritical::Seal,
                            Some(OnCriticalConfig::Alert) | None => OnCritical::Alert,
                        },
                    },
                    std::sync::Arc::new(SystemClock),
                )),
                witnesses,
                retention_sweep_interval: self.retention.sweep_interval_seconds.map_or(
                    crate::engine::DEFAULT_SWEEP_INTERVAL,
                    std::time::Duration::from_secs,
                ),
            },
        })
    }

    /// The access policy: the policy file's, or the built-in role policy.
    /// A file that does not parse is refused with its line number.
    pub fn policy(&self) -> Result<PolicyHandle, String> {
        match &self.policy_file {
            None => Ok(PolicyHandle::builtin()),
            Some(path) => {
                let policy = Policy::load(path).map_err(|e| e.to_string())?;
                PolicyHandle::with_credentials(policy, Some(path.clone()), self.credentials()?)
                    .map_err(|e| format!("policy {}: {e}", path.display()))
            }
        }
    }

    /// The `[tls]` files, if the port is to speak TLS. (They are read and
    /// checked by [`ServerTls::load`](crate::service::ServerTls::load).)
    pub fn tls_files(&self) -> Option<TlsFiles> {
        self.tls.as_ref().map(|t| TlsFiles {
            cert_file: t.cert_file.clone(),
            key_file: t.key_file.clone(),
            client_ca_file: t.client_ca_file.clone(),
        })
    }

    /// Every principal the configured credentials (tokens and certificate
    /// principals) stand for, with the roles of all its credentials
    /// together: one principal holds custody and data through no pair of
    /// credentials either.
    fn credentials(&self) -> Result<Vec<Principal>, String> {
        let mut merged: std::collections::BTreeMap<&str, Vec<Role>> = Default::default();
        for (i, t) in self.tokens.iter().enumerate() {
            let roles = parse_roles(&format!("tokens[{i}]"), &t.roles)?;
            merged.entry(&t.principal).or_default().extend(roles);
        }
        for (i, p) in self.principals.iter().enumerate() {
            let roles = parse_roles(&format!("principals[{i}]"), &p.roles)?;
            merged.entry(&p.name).or_default().extend(roles);
        }
        merged
            .into_iter()
            .map(|(name, mut roles)| {
                roles.sort();
                roles.dedup();
                separate_duties(&format!("principal {name} (all its credentials)"), &roles)?;
                Ok(Principal {
                    name: name.to_owned(),
                    roles,
                })
            })
            .collect()
    }

    /// The authenticator holding the configured tokens and certificate
    /// principals.
    pub fn authenticator(&self) -> Result<Authenticator, String> {
        let mut auth = Authenticator::new();
        let mut seen = std::collections::HashSet::new();
        for (i, t) in self.tokens.iter().enumerate() {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(&t.sha256, &mut hash)
                .map_err(|_| format!("tokens[{i}].sha256: expected 64 hex digits"))?;
            // A second entry for one token would silently win over the first
            // (un-revoking it, say).
            if !seen.insert(hash) {
                return Err(format!(
                    "tokens[{i}].sha256: the same token is configured twice"
                ));
            }
            if t.principal.trim().is_empty() {
                return Err(format!("tokens[{i}].principal is empty"));
            }
            let roles = parse_roles(&format!("tokens[{i}]"), &t.roles)?;
            let expires_at = t
                .expires_at
                .as_deref()
                .map(parse_instant)
                .transpose()
                .map_err(|e| format!("tokens[{i}].expires_at: {e}"))?;
            auth.add_token_grant(
                hash,
                TokenGrant {
                    principal: Principal {
                        name: t.principal.clone(),
                        roles,
                    },
                    expires_at,
                    revoked: t.revoked,
                },
            );
        }
        if !self.principals.is_empty()
            && self.tls.as_ref().is_none_or(|t| t.client_ca_file.is_none())
        {
            return Err(
                "[[principals]] authenticate by client certificate: set tls.client_ca_file \
                 (mutual TLS) or remove them"
                    .into(),
            );
        }
        let mut seen = HashSet::new();
        for (i, p) in self.principals.iter().enumerate() {
            if p.name.trim().is_empty() || p.name.chars().any(char::is_control) {
                return Err(format!(
                    "principals[{i}].name must be non-empty, without control characters"
                ));
            }
            if !seen.insert(p.name.as_str()) {
                return Err(format!("principals[{i}]: {} is listed twice", p.name));
            }
            let roles = parse_roles(&format!("principals[{i}]"), &p.roles)?;
            auth.add_certificate_principal(p.name.clone(), roles);
        }
        Ok(auth)
    }
}

/// Refuses a plaintext listener on an address other than loopback unless
/// the configuration allows it explicitly.
pub fn check_listener(listen: SocketAddr, tls: bool, allow_plaintext: bool) -> Result<(), String> {
    if tls || allow_plaintext || listen.ip().is_loopback() {
        return Ok(());
    }
    Err(format!(
        "refusing to listen in plaintext on {listen}, which is not a loopback address: \
         tokens, unseal shares and values would cross the network in the clear; configure \
         [tls], or set danger_allow_plaintext = true (e.g. behind a TLS-terminating proxy \
         on the same host)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
region = "eu"
listen = "127.0.0.1:0"
data_dir = "/tmp/v"
[[tokens]]
principal = "svc"
sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
roles = ["reader"]
"#;

    #[test]
    fn the_seal_and_the_evidence_are_configured_whole_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pin = dir.path().join("pin");
        std::fs::write(&pin, "1234\n").unwrap();
        let with = |section: &str| {
            Config::parse(&format!("{GOOD}\n{section}\n")).and_then(|c| c.open_options())
        };
        let shamir = with("").unwrap();
        assert!(shamir.pkcs11.is_none());
        assert_eq!(shamir.evidence.kind(), "self-reported");
        assert!(shamir.evidence.measurement().is_some());
        assert!(!shamir.evidence.attested());
        let none = with("[attestation]\nevidence = \"none\"").unwrap();
        assert!(matches!(none.evidence, crate::attest::Evidence::None));
        let table = |extra: &str| {
            format!(
                "[seal]\ntype = \"pkcs11\"\npkcs11_library = \"/usr/lib/softhsm/libsofthsm2.so\"\n\
                 token_label = \"vault-eu\"\npin_file = {:?}\n{extra}",
                pin.display().to_string()
            )
        };
        let hsm = with(&table("")).unwrap().pkcs11.unwrap();
        assert_eq!(hsm.token_label, "vault-eu");
        assert_eq!(hsm.key_label, "vault-unseal");
        assert!(!format!("{hsm:?}").contains("1234"), "the PIN never shows");
        let e = with("[seal]\ntype = \"pkcs11\"").unwrap_err();
        assert!(e.contains("needs seal.pkcs11_library"), "{e}");
        let e = with("[seal]\ntoken_label = \"x\"").unwrap_err();
        assert!(e.contains("applies only to seal.type = \"pkcs11\""), "{e}");
        let e = with(&table("key_label = \"\"")).unwrap_err();
        assert!(e.contains("seal.key_label"), "{e}");
        let e = with(&table("").replace("vault-eu", &"x".repeat(33))).unwrap_err();
        assert!(e.contains("seal.token_label"), "{e}");
        std::fs::write(&pin, "\n").unwrap();
        let e = with(&table("")).unwrap_err();
        assert!(e.contains("is empty"), "{e}");
        std::fs::remove_file(&pin).unwrap();
        let e = with(&table("")).unwrap_err();
        assert!(e.contains("seal.pin_file"), "{e}");
        let e = with("[seal]\ntype = \"kms\"").unwrap_err();
        assert!(e.contains("kms"), "{e}");
        let e = with("[attestation]\nevidence = \"nitro-please\"").unwrap_err();
        assert!(e.contains("nitro-please"), "{e}");
        let e = with("[attestation]\nevidence = \"nitro\"").unwrap_err();
        assert!(
            e.contains("needs attestation.nitro_document_command"),
            "{e}"
        );
        let e = with("[attestation]\nnitro_document_command = [\"x\"]").unwrap_err();
        assert!(
            e.contains("apply only to attestation.evidence = \"nitro\""),
            "{e}"
        );
        let e = with("[attestation]\nevidence = \"nitro\"\nnitro_document_command = [\"x\"]")
            .unwrap_err();
        assert!(e.contains("absolute path"), "{e}");
        let nitro =
            with("[attestation]\nevidence = \"nitro\"\nnitro_document_command = [\"/x\"]").unwrap();
        assert_eq!(nitro.evidence.kind(), "nitro");
        assert!(!nitro.evidence.attested() && nitro.evidence.measurement().is_none());
        let e = with(&format!(
            "[attestation]\nevidence = \"nitro\"\nnitro_document_command = [\"/x\"]\n\
             nitro_root_file = {:?}",
            pin.display().to_string()
        ))
        .unwrap_err();
        assert!(e.contains("attestation.nitro_root_file"), "{e}");
    }

    #[test]
    fn the_storage_backend_is_rocksdb_unless_postgres_is_asked_for_whole() {
        let with = |section: &str| {
            Config::parse(&format!("{GOOD}\n[storage]\n{section}\n")).and_then(|c| c.open_options())
        };
        assert!(Config::parse(GOOD)
            .unwrap()
            .open_options()
            .unwrap()
            .postgres
            .is_none());
        assert!(with("backend = \"rocksdb\"").unwrap().postgres.is_none());
        let pg = with(
            "backend = \"postgres\"\npostgres_url = \"host=a,b port=5432 user=v password=hunter2 \
             dbname=vault target_session_attrs=read-write\"\npostgres_pool_size = 4",
        )
        .unwrap()
        .postgres
        .unwrap();
        assert_eq!((pg.pool_size, pg.sync_writes), (4, true));
        assert_eq!((pg.ca_file.as_deref(), pg.allow_plaintext), (None, false));
        let pg = with(
            "backend = \"postgres\"\npostgres_url = \"host=a sslmode=require\"\n\
             postgres_ca_file = \"/etc/pg-ca.pem\"\npostgres_allow_plaintext = true",
        )
        .unwrap()
        .postgres
        .unwrap();
        assert_eq!(
            (pg.ca_file.as_deref(), pg.allow_plaintext),
            (Some(Path::new("/etc/pg-ca.pem")), true)
        );
        let apart = Config::parse(&format!(
            "keyring_file = \"/k\"\n{GOOD}\n[storage]\nbackend = \"postgres\"\npostgres_url = \"host=a\"\n"
        ))
        .and_then(|c| c.open_options())
        .unwrap_err();
        assert!(apart.contains("keyring_file does not apply"), "{apart}");
        let err = |section: &str| with(section).unwrap_err();
        assert!(err("backend = \"postgres\"").contains("needs storage.postgres_url"));
        assert!(err("postgres_url = \"host=a\"").contains("backend is not"));
        assert!(err("postgres_pool_size = 3").contains("not postgres"));
        assert!(err("postgres_ca_file = \"/etc/ca.pem\"").contains("not postgres"));
        assert!(err("postgres_allow_plaintext = true").contains("not postgres"));
        assert!(err("backend = \"mysql\"").contains("backend"));
        let bad =
            err("backend = \"postgres\"\npostgres_url = \"host=a password=hunter2 nonsense\"");
        assert!(bad.contains("not a PostgreSQL connection string"), "{bad}");
        assert!(!bad.contains("hunter2"), "{bad}");
        assert!(
            err("backend = \"postgres\"\npostgres_url = \"host=a\"\npostgres_pool_size = 0")
                .contains("1 to 1024")
        );
        // The connection string never shows in the configuration's Debug.
        let c = Config::parse(&format!(
            "{GOOD}\n[storage]\nbackend = \"postgres\"\npostgres_url = \"host=a password=hunter2\"\n"
        ))
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn parses_and_defaults() {
        let c = Config::parse(GOOD).unwrap();
        assert!(!c.danger_unsynced_writes);
        let o = c.open_options().unwrap();
        assert_eq!(o.keyring_file, PathBuf::from("/tmp/v/keyring"));
        assert_eq!(o.engine.limits.max_batch_records, 500);
        assert_eq!(o.engine.rewrap, RewrapOptions::default());
        assert_eq!(o.engine.reindex, ReindexOptions::default());
        assert_eq!(
            o.engine.retention_sweep_interval,
            crate::engine::DEFAULT_SWEEP_INTERVAL
        );
        let swept = Config::parse(&format!(
            "{GOOD}\n[retention]\nsweep_interval_seconds = 5\n"
        ))
        .unwrap();
        assert_eq!(
            swept
                .open_options()
                .unwrap()
                .engine
                .retention_sweep_interval,
            std::time::Duration::from_secs(5)
        );
        assert!(Config::parse(&format!("{GOOD}\n[retention]\nsweep = 5\n")).is_err());
        let paced = Config::parse(&format!(
            "{GOOD}\n[reindex]\nbatch_size = 7\nrows_per_second = 0\n"
        ))
        .unwrap();
        assert_eq!(
            paced.open_options().unwrap().engine.reindex,
            ReindexOptions {
                batch_size: 7,
                rows_per_second: 0
            }
        );
        assert_eq!(o.engine.checkpoints, CheckpointOptions::default());
        let c = Config::parse(&format!(
            "{GOOD}\n[audit]\ncheckpoint_every_events = 0\ncheckpoint_interval_ms = 250\n"
        ))
        .unwrap();
        let o = c.open_options().unwrap().engine.checkpoints;
        assert_eq!(
            (o.every_events, o.interval),
            (0, std::time::Duration::from_millis(250))
        );
        let e = Config::parse(&format!(
            "{GOOD}\n[audit]\ncheckpoint_interval_ms = 100000000000\n"
        ))
        .unwrap_err();
        assert!(e.contains("one day"), "{e}");
        let e = Config::parse(&format!("{GOOD}\n[audit]\ncheckpoint_every = 5\n")).unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn witness_keys_are_checked_when_loaded() {
        use base64::Engine as _;
        use sha2::Digest as _;
        let public = ed25519_dalek::SigningKey::from_bytes(&[5; 32])
            .verifying_key()
            .to_bytes();
        let mut h = sha2::Sha256::new();
        h.update(b"w.example/eu\n\x04");
        h.update(public);
        let mut blob = vec![4u8];
        blob.extend_from_slice(&public);
        let key = format!(
            "w.example/eu+{}+{}",
            hex::encode(&h.finalize()[..4]),
            base64::engine::general_purpose::STANDARD.encode(blob)
        );
        let with = |list: &str| Config::parse(&format!("{GOOD}\n[audit]\nwitnesses = [{list}]\n"));
        let c = with(&format!("\"{key}\"")).unwrap();
        let witnesses = c.open_options().unwrap().engine.witnesses;
        assert_eq!(witnesses.len(), 1);
        assert_eq!(witnesses[0].name(), "w.example/eu");
        let e = with(&format!("\"{key}\", \"{key}\"")).unwrap_err();
        assert!(e.contains("listed twice"), "{e}");
        let e = with("\"w+00000000+AAAA\"").unwrap_err();
        assert!(e.contains("audit.witnesses[0]"), "{e}");
        // Another name: the key id is no longer the key's.
        let e = with(&format!(
            "\"{}\"",
            key.replacen("w.example/eu", "w.example/fr", 1)
        ))
        .unwrap_err();
        assert!(e.contains("key id"), "{e}");
        let many = vec![format!("\"{key}\""); 17].join(", ");
        let e = with(&many).unwrap_err();
        assert!(e.contains("at most 16"), "{e}");
    }

    #[test]
    fn plaintext_listens_on_loopback_only_unless_allowed() {
        let public = GOOD.replace("127.0.0.1:0", "0.0.0.0:8200");
        let e = Config::parse(&public).unwrap_err();
        assert!(
            e.contains("refusing to listen in plaintext on 0.0.0.0:8200"),
            "{e}"
        );
        assert!(e.contains("danger_allow_plaintext"), "{e}");
        let allowed = Config::parse(&format!("danger_allow_plaintext = true\n{public}")).unwrap();
        assert!(allowed.danger_allow_plaintext);
        assert!(Config::parse(&GOOD.replace("127.0.0.1:0", "[::1]:0")).is_ok());
        assert!(!Config::parse(GOOD).unwrap().danger_allow_plaintext);
        // What --listen overrides is checked the same way.
        let any: SocketAddr = "0.0.0.0:0".parse().unwrap();
        assert!(check_listener(any, false, false).is_err());
        assert!(check_listener(any, true, false).is_ok());
        assert!(check_listener(any, false, true).is_ok());
    }

    /// A policy file resolves the roles that credentials name: one that
    /// would give a configured token both custody and data access is
    /// refused at start and at reload (the policy in force stays).
    #[test]
    fn a_policy_file_cannot_give_a_credential_both_duties() {
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("policy.toml");
        let custody_and_audit = "[[roles.custodian.rules]]\noperations = [\"custody\"]\n\
                                 [[roles.auditor.rules]]\noperations = [\"audit\"]\n";
        std::fs::write(&policy, custody_and_audit).unwrap();
        let text = format!(
            "policy_file = {:?}\n{}",
            policy.display().to_string(),
            GOOD.replace("[\"reader\"]", "[\"custodian\", \"auditor\"]")
        );
        let config = Config::parse(&text).unwrap();
        let handle = config.policy().unwrap();
        // The file's "auditor" role now reads data: the token would hold both.
        let mixed = format!(
            "{custody_and_audit}[[roles.auditor.rules]]\noperations = [\"read\"]\npurposes = [\"*\"]\n"
        );
        std::fs::write(&policy, &mixed).unwrap();
        let e = handle.reload().unwrap_err().to_string();
        assert!(
            e.contains("principal svc") && e.contains("separate duties"),
            "{e}"
        );
        let caller = crate::policy::Caller {
            principal: Principal {
                name: "svc".into(),
                roles: vec![Role::Custodian, Role::Auditor],
            },
            purpose: Some("x".into()),
            internal: false,
            request_id: None,
        };
        assert_eq!(handle.current().roles_of(&caller), ["custodian", "auditor"]);
        assert!(handle
            .current()
            .authorize(&caller, crate::policy::Operation::Custody, None)
            .is_ok());
        let e = Config::parse(&text).unwrap_err();
        assert!(
            e.contains("principal svc") && e.contains("separate duties"),
            "{e}"
        );
        // Listing the principal in the file with one duty settles it.
        std::fs::write(
            &policy,
            format!("[principals]\nsvc = [\"custodian\"]\n{mixed}"),
        )
        .unwrap();
        assert!(Config::parse(&text).is_ok());
    }

    #[test]
    fn lockout_is_on_by_default_and_configurable() {
        let monitor = |text: &str| {
            let c = Config::parse(text).unwrap();
            c.open_options().unwrap().engine.monitor.options().clone()
        };
        let d = monitor(GOOD).lockout;
        assert_eq!(
            (d.after_denials, d.window.as_secs(), d.duration.as_secs()),
            (20, 60, 900)
        );
        let set = format!(
            "{GOOD}\n[monitor]\nlockout_after_denials = 0\nlockout_window_seconds = 10\nlockout_seconds = 30\n"
        );
        let l = monitor(&set).lockout;
        assert_eq!(
            (l.after_denials, l.window.as_secs(), l.duration.as_secs()),
            (0, 10, 30)
        );
        for bad in [
            "lockout_window_seconds = 0",
            "lockout_seconds = 604801",
            "lockout_after_denials = 10001",
        ] {
            let e = Config::parse(&format!("{GOOD}\n[monitor]\n{bad}\n")).unwrap_err();
            assert!(e.contains("monitor.lockout"), "{bad}: {e}");
        }
        let e = Config::parse(&format!("{GOOD}\n[monitor]\nlockout_after = 3\n")).unwrap_err();
        assert!(e.contains("lockout_after"), "{e}");
        assert_eq!(monitor(GOOD).on_critical, OnCritical::Alert);
        let seal = format!("{GOOD}\n[monitor]\non_critical = \"seal\"\n");
        assert_eq!(monitor(&seal).on_critical, OnCritical::Seal);
        let e =
            Config::parse(&format!("{GOOD}\n[monitor]\non_critical = \"panic\"\n")).unwrap_err();
        assert!(e.contains("unknown variant"), "{e}");
    }

    #[test]
    fn errors_are_clear() {
        let e = Config::parse(&GOOD.replace("region = \"eu\"", "region = \"EU!\"")).unwrap_err();
        assert!(e.contains("region"), "{e}");
        let e = Config::parse(&GOOD.replace("reader", "root")).unwrap_err();
        assert!(e.contains("unknown role"), "{e}");
        let e = Config::parse(&GOOD.replace("9f86", "zz86")).unwrap_err();
        assert!(e.contains("sha256"), "{e}");
        let e = Config::parse(&format!("{GOOD}\nbogus = 1\n")).unwrap_err();
        assert!(e.contains("bogus"), "{e}");
        let e = Config::parse(&GOOD.replace("[\"reader\"]", "[\"custodian\", \"reader\"]"))
            .unwrap_err();
        assert!(e.contains("separate duties"), "{e}");
        let e =
            Config::parse(&GOOD.replace("[\"reader\"]", "[\"custodian\", \"dpo\"]")).unwrap_err();
        assert!(e.contains("separate duties"), "{e}");
        assert!(
            Config::parse(&GOOD.replace("[\"reader\"]", "[\"custodian\", \"auditor\"]")).is_ok()
        );
        // Nor through two credentials of one principal.
        let second = GOOD
            .split("[[tokens]]")
            .nth(1)
            .unwrap()
            .replace("9f86", "0f86")
            .replace("[\"reader\"]", "[\"custodian\"]");
        let e = Config::parse(&format!("{GOOD}[[tokens]]{second}")).unwrap_err();
        assert!(
            e.contains("principal svc (all its credentials)") && e.contains("separate duties"),
            "{e}"
        );
        for bad in ["0", "7", "1048577"] {
            let e = Config::parse(&format!("block_cache_mib = {bad}\n{GOOD}"))
                .and_then(|c| c.open_options().map(|_| ()))
                .unwrap_err();
            assert!(e.contains("block_cache_mib must be 8 to 1048576"), "{e}");
        }
        let small = Config::parse(&format!("block_cache_mib = 64\n{GOOD}")).unwrap();
        assert_eq!(
            small.open_options().unwrap().store.block_cache_bytes,
            64 << 20
        );
        let default = Config::parse(GOOD).unwrap().open_options().unwrap();
        assert_eq!(
            default.store.block_cache_bytes,
            crate::storage::DEFAULT_BLOCK_CACHE_BYTES
        );
        for bad in ["0", "10001"] {
            let e = Config::parse(&format!("{GOOD}\n[limits]\nmax_batch_records = {bad}\n"))
                .unwrap_err();
            assert!(e.contains("max_batch_records must be 1 to 10000"), "{e}");
        }
        for bad in ["0", "4294967297"] {
            let e = Config::parse(&format!(
                "{GOOD}\n[keys]\nrotate_root_after_wraps = {bad}\n"
            ))
            .unwrap_err();
            assert!(e.contains("rotate_root_after_wraps"), "{e}");
        }
        let c = Config::parse(&format!(
            "{GOOD}\n[keys]\nrotate_root_after_wraps = 4294967296\n"
        ))
        .unwrap();
        assert_eq!(
            c.open_options().unwrap().engine.rotate_root_after_wraps,
            1 << 32
        );
        let e = Config::parse(&format!("{GOOD}\n[rewrap]\nbatch_size = 0\n")).unwrap_err();
        assert!(e.contains("batch_size"), "{e}");
        let e = Config::parse(&format!("{GOOD}\n[reindex]\nbatch_size = 0\n")).unwrap_err();
        assert!(e.contains("reindex.batch_size"), "{e}");
        let e = Config::parse("region = \n").unwrap_err();
        assert!(e.contains("line 1"), "{e}");
    }

    const TLS: &str = r#"
[tls]
cert_file = "/etc/vault/server.pem"
key_file = "/etc/vault/server.key"
client_ca_file = "/etc/vault/clients-ca.pem"

[[principals]]
name = "spiffe://eu.example/billing-service"
roles = ["reader", "writer"]

[[principals]]
name = "custodian-alice"
roles = ["custodian"]
"#;

    #[test]
    fn tls_and_certificate_principals() {
        let c = Config::parse(&format!("{GOOD}{TLS}")).unwrap();
        let files = c.tls_files().unwrap();
        assert_eq!(files.cert_file, PathBuf::from("/etc/vault/server.pem"));
        assert_eq!(
            files.client_ca_file,
            Some(PathBuf::from("/etc/vault/clients-ca.pem"))
        );
        let auth = c.authenticator().unwrap();
        assert_eq!(
            auth.roles_of("spiffe://eu.example/billing-service"),
            Some(vec![Role::Reader, Role::Writer])
        );
        assert_eq!(
            auth.roles_of("custodian-alice"),
            Some(vec![Role::Custodian])
        );
        assert_eq!(auth.roles_of("svc"), None);
        assert!(Config::parse(GOOD).unwrap().tls_files().is_none());

        // Server TLS without client CAs is fine; principals then are not.
        let no_mtls = TLS.replace("client_ca_file = \"/etc/vault/clients-ca.pem\"\n", "");
        let e = Config::parse(&format!("{GOOD}{no_mtls}")).unwrap_err();
        assert!(e.contains("tls.client_ca_file"), "{e}");
        let server_only = no_mtls.split("[[principals]]").next().unwrap().to_owned();
        let c = Config::parse(&format!("{GOOD}{server_only}")).unwrap();
        assert_eq!(c.tls_files().unwrap().client_ca_file, None);

        let e = Config::parse(&format!(
            "{GOOD}{}",
            TLS.replace("[\"custodian\"]", "[\"custodian\", \"admin\"]")
        ))
        .unwrap_err();
        assert!(
            e.contains("principals[1]") && e.contains("separate duties"),
            "{e}"
        );
        let e = Config::parse(&format!(
            "{GOOD}{}",
            TLS.replace("custodian-alice", "spiffe://eu.example/billing-service")
        ))
        .unwrap_err();
        assert!(e.contains("listed twice"), "{e}");
        let e =
            Config::parse(&format!("{GOOD}{}", TLS.replace("key_file", "keyfile"))).unwrap_err();
        assert!(e.contains("keyfile"), "{e}");
        let e = Config::parse(&format!(
            "{GOOD}{}",
            TLS.replace("\"reader\", \"writer\"", "\"root\"")
        ))
        .unwrap_err();
        assert!(
            e.contains("principals[0].roles") && e.contains("unknown role"),
            "{e}"
        );
    }

    #[test]
    fn token_expiry_and_revocation() {
        let with = |extra: &str| Config::parse(&format!("{GOOD}{extra}\n"));
        for ok in [
            "expires_at = \"2027-01-01T00:00:00Z\"",
            "expires_at = \"2027-01-01T02:00:00+02:00\"",
            "expires_at = 2027-01-01T00:00:00Z",
            "revoked = true",
        ] {
            assert!(with(ok).is_ok(), "{ok}");
        }
        let c = with("expires_at = 2027-01-01T01:00:00+01:00").unwrap();
        assert_eq!(
            c.tokens[0].expires_at.as_deref(),
            Some("2027-01-01T01:00:00+01:00")
        );
        for bad in [
            "expires_at = \"2027-01-01\"",
            "expires_at = \"next year\"",
            "expires_at = 2027-01-01T00:00:00",
            "expires_at = 2027-01-01",
        ] {
            let e = with(bad).unwrap_err();
            assert!(
                e.contains("tokens[0].expires_at") && e.contains("RFC 3339"),
                "{bad}: {e}"
            );
        }
        let e = with("expires_at = 5").unwrap_err();
        assert!(e.contains("RFC 3339"), "{e}");
        let e = with("revoked = \"yes\"").unwrap_err();
        assert!(e.contains("revoked"), "{e}");
    }
}
