//! jobvisor: a gRPC service that runs long batch jobs and lets any client
//! start, pause, resume, cancel and watch them without losing work.
//!
//! Layers, one direction: [`api`] (tonic glue) → [`engine`] (actors) →
//! [`store`] (sqlx) → [`domain`] (pure). See DESIGN.md.
#![forbid(unsafe_code)]

pub mod domain;
