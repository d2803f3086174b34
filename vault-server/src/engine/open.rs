//! Opening a vault: the data folder, the keyring file and the unseal key.

use std::path::{Path, PathBuf};

use super::{Engine, Limits};
use crate::crypto::Key256;
use crate::keys::{
    format_unseal_key, parse_unseal_key, write_secret_file, Keyring, KeyringError, Region,
};
use crate::storage::{RocksStore, Store, StoreOptions, Table};
use crate::{Error, Result};

/// Where the unseal key comes from. (M-of-N custody replaces the key file
/// outside development.)
#[derive(Debug, Clone)]
pub enum UnsealSource {
    /// A file holding the key as 64 hex digits.
    KeyFile(PathBuf),
}

/// How to open (or create) a vault.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// The data folder; RocksDB lives in its `db/` subfolder.
    pub data_dir: PathBuf,
    /// The region this server serves.
    pub region: Region,
    /// The keyring file.
    pub keyring_file: PathBuf,
    /// The unseal key.
    pub unseal: UnsealSource,
    /// Make the keyring (and the unseal key file, if missing) when there is
    /// no keyring yet and the data folder holds no data.
    pub create_if_missing: bool,
    /// Storage options.
    pub store: StoreOptions,
    /// Request limits.
    pub limits: Limits,
    /// Subject key versions kept unwrapped in memory.
    pub key_cache_capacity: usize,
}

impl OpenOptions {
    /// Development defaults: everything in `data_dir`, created on first start.
    pub fn dev(data_dir: &Path, region: Region) -> Self {
        OpenOptions {
            data_dir: data_dir.to_owned(),
            region,
            keyring_file: data_dir.join("keyring.v1"),
            unseal: UnsealSource::KeyFile(data_dir.join("dev-unseal.key")),
            create_if_missing: true,
            store: StoreOptions::default(),
            limits: Limits::default(),
            key_cache_capacity: 10_000,
        }
    }
}

/// Opens the vault: unseals the keyring (refusing one of another region),
/// opens the store and checks that the two belong together.
pub fn open(opts: &OpenOptions) -> Result<Engine> {
    let UnsealSource::KeyFile(key_file) = &opts.unseal;
    let keyring = if opts.keyring_file.exists() {
        let file = std::fs::read(&opts.keyring_file).map_err(|e| {
            Error::io(
                format!("reading keyring {}", opts.keyring_file.display()),
                e,
            )
        })?;
        let region = Keyring::peek_region(&file)?;
        if region != opts.region {
            return Err(KeyringError::WrongRegion {
                keyring: region.to_string(),
                configured: opts.region.to_string(),
            }
            .into());
        }
        let unseal_key = read_unseal_key(key_file)?;
        Some(Keyring::unseal(&file, &unseal_key, &opts.region)?)
    } else {
        None
    };

    std::fs::create_dir_all(&opts.data_dir).map_err(|e| {
        Error::io(
            format!("creating data folder {}", opts.data_dir.display()),
            e,
        )
    })?;
    let store = RocksStore::open(&opts.data_dir.join("db"), &opts.store)?;

    let keyring = match keyring {
        Some(k) => k,
        None if !opts.create_if_missing => {
            return Err(Error::Config(format!(
                "no keyring at {}; start once with --init to create one",
                opts.keyring_file.display()
            )))
        }
        None => {
            if store.get(Table::Meta, b"keyring_id")?.is_some() {
                return Err(Error::Config(format!(
                    "the data folder holds data but its keyring {} is missing; refusing to make a new one",
                    opts.keyring_file.display()
                )));
            }
            let unseal_key = if key_file.exists() {
                read_unseal_key(key_file)?
            } else {
                let k = Key256::random();
                write_secret_file(key_file, format_unseal_key(&k).as_bytes()).map_err(|e| {
                    Error::io(format!("writing unseal key {}", key_file.display()), e)
                })?;
                k
            };
            let keyring = Keyring::generate(opts.region.clone());
            write_secret_file(&opts.keyring_file, &keyring.seal(&unseal_key)).map_err(|e| {
                Error::io(
                    format!("writing keyring {}", opts.keyring_file.display()),
                    e,
                )
            })?;
            tracing::info!(region = %opts.region, keyring = %opts.keyring_file.display(), "keyring created");
            keyring
        }
    };
    Engine::new(
        Box::new(store),
        keyring,
        opts.limits.clone(),
        opts.key_cache_capacity,
    )
}

fn read_unseal_key(path: &Path) -> Result<Key256> {
    let text = zeroize::Zeroizing::new(
        std::fs::read(path)
            .map_err(|e| Error::io(format!("reading unseal key {}", path.display()), e))?,
    );
    Ok(parse_unseal_key(&text)?)
}
