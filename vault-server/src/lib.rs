//! The regional data vault: an engine that keeps every field of every record
//! encrypted under a region-bound key hierarchy, and the gRPC service over it.
//!
//! A request flows one way: [`service`] (decode, authenticate, validate) →
//! [`policy`] (who is calling, for what) → [`engine`] ([`keys`] + [`crypto`] +
//! [`storage`]) → [`service`] (encode). Nothing below `service` knows gRPC;
//! nothing above `storage` knows RocksDB.

#![forbid(unsafe_code)]

pub mod audit;
pub mod config;
pub mod crypto;
pub mod dev;
pub mod engine;
pub mod error;
pub mod keys;
pub mod policy;
pub mod service;
pub mod storage;
pub mod vault;

pub use engine::Engine;
pub use error::{Error, Result};
pub use vault::Vault;
