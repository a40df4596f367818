//! End-to-end tests, one binary: the real server on an ephemeral port (in
//! this process through `harness`, or as the `jobvisor` binary where a
//! test needs a process: signals, logs, OTLP, the Python and Node
//! examples), a fresh PostgreSQL database per test, the generated gRPC
//! client. Also the property tests of everything that parses caller input.

mod add_items;
mod cancel_items;
mod control;
mod controls;
mod dashboard;
mod deletion;
mod discovery;
mod dry_run;
mod embedded;
mod embedding;
mod errors;
mod exec;
mod exec_confinement;
mod executors;
mod hammer;
mod harness;
mod hostile;
mod http;
mod lifecycle;
mod node;
mod panics;
mod properties;
mod python;
mod rate_limit;
mod remote_worker;
mod retry_delay;
mod run_job;
mod scheduled;
mod security;
mod slow_readers;
mod telemetry;
mod waiting;
mod watch;
mod workers;
