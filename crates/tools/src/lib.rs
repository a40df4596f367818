//! jobvisor's tools, built apart from the service so that neither the
//! server binary nor the library that embedders link carries them:
//! the benchmark scenarios ([`bench`], `jobvisor-bench`) and the fault
//! injection runner ([`chaos`], `jobvisor-chaos`). Both drive a real
//! `jobvisor serve` process, the binary built beside them.
#![forbid(unsafe_code)]

pub mod bench;
pub mod chaos;
