//! The regional data vault: an engine that keeps every field of every record
//! encrypted under a region-bound key hierarchy, and the gRPC service over it.
//!
//! A request flows one way: [`service`] (decode, authenticate, validate) →
//! [`policy`] (who is calling, for what) → [`engine`] ([`keys`] + [`crypto`] +
//! [`storage`]) → [`service`] (encode). Nothing below `service` knows gRPC;
//! nothing above `storage` knows RocksDB.

#![forbid(unsafe_code)]

#[cfg(feature = "rocksdb")]
pub mod attest;
pub mod audit;
#[cfg(feature = "rocksdb")]
pub mod config;
pub mod crypto;
#[cfg(feature = "rocksdb")]
pub mod dev;
pub mod engine;
pub mod error;
#[cfg(any(test, fuzzing, feature = "fuzzing"))]
pub mod fuzzing;
#[cfg(feature = "rocksdb")]
pub mod hsm;
pub mod keys;
pub mod monitor;
pub mod policy;
#[cfg(feature = "rocksdb")]
pub mod service;
pub mod storage;
#[cfg(feature = "rocksdb")]
pub mod vault;

pub use engine::Engine;
pub use error::{Error, Result};
#[cfg(feature = "rocksdb")]
pub use vault::Vault;
