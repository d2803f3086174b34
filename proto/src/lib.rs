//! Wire contract `vault.v1` of the regional data vault: the messages and
//! services generated from `proto/vault/v1/*.proto`, and the encoded file
//! descriptor set that the server registers for gRPC reflection.
//!
//! Only `vault-server`'s `service` module and `vault-client` import this crate.

#![forbid(unsafe_code)]

/// Package `vault.v1`.
#[allow(missing_docs, missing_debug_implementations, clippy::all)]
pub mod v1 {
    tonic::include_proto!("vault.v1");

    /// The encoded `FileDescriptorSet` of `vault.v1`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("vault_v1_descriptor");
}
