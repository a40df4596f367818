//! jobvisor: a gRPC service that runs long batch jobs and lets any client
//! start, pause, resume, cancel and watch them without losing work.
//!
//! Layers, one direction: [`api`] (tonic glue) → [`engine`] (actors) →
//! [`store`] (sqlx) → [`domain`] (pure). [`executor`] holds the per-item
//! work the engine runs; [`worker`] is the client side of the worker
//! protocol, running that work in a process of its own. See docs/DESIGN.md.
#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod domain;
pub mod engine;
pub mod executor;
pub mod metrics;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod worker;

/// The API as generated from `proto/jobvisor/v1/jobvisor.proto`: messages,
/// the `JobService` client and server.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("jobvisor.v1");

    /// The encoded descriptors that server reflection serves.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("jobvisor_descriptor");
}
