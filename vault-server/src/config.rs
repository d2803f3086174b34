//! The production configuration file (TOML).
//!
//! ```toml
//! region = "eu"
//! listen = "0.0.0.0:8200"
//! data_dir = "/var/lib/vault"
//! keyring_file = "/etc/vault/keyring"         # default: <data_dir>/keyring
//! danger_unsynced_writes = false            # default false: every write is WAL-synced
//! key_cache_capacity = 10000                 # subject key versions kept unwrapped
//!
//! [limits]                                   # all optional
//! max_record_bytes = 65536
//! max_batch_records = 500
//! max_batch_bytes = 4194304
//!
//! [rewrap]                                   # pace of the root-key re-wrap job; optional
//! batch_size = 1000
//! keys_per_second = 100000                   # 0: no limit
//!
//! [[tokens]]                                 # bearer tokens, stored as SHA-256 hex
//! principal = "billing-service"
//! sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! roles = ["reader", "writer"]
//!
//! [[tokens]]                                 # custodians hold custody tokens only
//! principal = "custodian-alice"
//! sha256 = "…"
//! roles = ["custodian"]
//! ```
//!
//! The server starts sealed; the unseal key is never in a file. Custodians
//! run `vaultctl operator init` once, then `vaultctl operator unseal` (M of
//! N) after every start. A token with the `custodian` role may not also hold
//! a data role (reader, writer, admin): custody and data access are
//! separate duties.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::engine::{EngineOptions, Limits, RewrapOptions};
use crate::keys::Region;
use crate::policy::{Principal, Role};
use crate::service::Authenticator;
use crate::storage::StoreOptions;
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
    /// Acknowledge writes before the WAL is synced: faster, but a power
    /// loss can lose acknowledged writes. For benchmarks only (default false).
    #[serde(default)]
    pub danger_unsynced_writes: bool,
    /// Subject key versions kept unwrapped in memory.
    #[serde(default = "default_cache")]
    pub key_cache_capacity: usize,
    /// Request limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Pace of the re-wrap job.
    #[serde(default)]
    pub rewrap: RewrapConfig,
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
        config.open_options()?;
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
        if self.rewrap.batch_size == Some(0) {
            return Err("rewrap.batch_size must be at least 1".into());
        }
        Ok(OpenOptions {
            data_dir: self.data_dir.clone(),
            region: self.region()?,
            keyring_file: self
                .keyring_file
                .clone()
                .unwrap_or_else(|| self.data_dir.join("keyring")),
            store: StoreOptions {
                sync_writes: !self.danger_unsynced_writes,
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
            },
        })
    }

    /// The authenticator holding the configured tokens.
    pub fn authenticator(&self) -> Result<Authenticator, String> {
        let mut auth = Authenticator::new();
        for (i, t) in self.tokens.iter().enumerate() {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(&t.sha256, &mut hash)
                .map_err(|_| format!("tokens[{i}].sha256: expected 64 hex digits"))?;
            if t.principal.trim().is_empty() {
                return Err(format!("tokens[{i}].principal is empty"));
            }
            let roles = t
                .roles
                .iter()
                .map(|r| r.parse::<Role>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("tokens[{i}].roles: {e}"))?;
            if roles.contains(&Role::Custodian)
                && roles
                    .iter()
                    .any(|r| matches!(r, Role::Reader | Role::Writer | Role::Admin))
            {
                return Err(format!(
                    "tokens[{i}]: the custodian role cannot be combined with reader, writer or admin \
                     (custody and data access are separate duties; give the custodian its own token)"
                ));
            }
            auth.add_token_hash(
                hash,
                Principal {
                    name: t.principal.clone(),
                    roles,
                },
            );
        }
        Ok(auth)
    }
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
    fn parses_and_defaults() {
        let c = Config::parse(GOOD).unwrap();
        assert!(!c.danger_unsynced_writes);
        let o = c.open_options().unwrap();
        assert_eq!(o.keyring_file, PathBuf::from("/tmp/v/keyring"));
        assert_eq!(o.engine.limits.max_batch_records, 500);
        assert_eq!(o.engine.rewrap, RewrapOptions::default());
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
        assert!(Config::parse(&GOOD.replace("[\"reader\"]", "[\"custodian\", \"dpo\"]")).is_ok());
        let e = Config::parse(&format!("{GOOD}\n[rewrap]\nbatch_size = 0\n")).unwrap_err();
        assert!(e.contains("batch_size"), "{e}");
        let e = Config::parse("region = \n").unwrap_err();
        assert!(e.contains("line 1"), "{e}");
    }
}
