//! Benches of the regional data vault. The criterion and one-shot benches
//! live in `benches/` (`cargo bench --workspace --bench NAME`); the load
//! generator `vault-bench` (`src/bin/vault-bench.rs`) drives a running
//! vault over gRPC beside its baselines, with the pieces here.

#![forbid(unsafe_code)]

pub mod load;
pub mod postgres;
pub mod report;

/// The bare gRPC echo service: the transport baseline.
pub mod echo {
    #![allow(missing_docs, missing_debug_implementations, clippy::all)]
    tonic::include_proto!("vaultbench.v1");
}

/// The echo service: answers every message with itself.
#[derive(Debug, Default, Clone, Copy)]
pub struct EchoService;

#[tonic::async_trait]
impl echo::echo_server::Echo for EchoService {
    async fn echo(
        &self,
        request: tonic::Request<echo::EchoMessage>,
    ) -> Result<tonic::Response<echo::EchoMessage>, tonic::Status> {
        Ok(tonic::Response::new(request.into_inner()))
    }
}
