//! End-to-end tests: the real server on an ephemeral port, a fresh
//! PostgreSQL database per test, the generated gRPC client.

mod control;
mod controls;
mod deletion;
mod discovery;
mod embedded;
mod errors;
mod exec;
mod exec_confinement;
mod executors;
mod hammer;
mod harness;
mod hostile;
mod lifecycle;
mod panics;
mod rate_limit;
mod retry_delay;
mod scheduled;
mod slow_readers;
mod watch;
