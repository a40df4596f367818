//! What jobvisor's test suites and its tools share, written once: fresh
//! PostgreSQL databases ([`db`]), real `jobvisor serve` processes
//! ([`process`]) and a real nginx in front of one ([`proxy`]). The
//! in-process server harness stays with the end-to-end tests
//! (`tests/e2e/harness.rs`), which are its only users.
#![forbid(unsafe_code)]

pub mod db;
pub mod process;
pub mod proxy;

/// The `jobvisor` server binary beside the running executable (the tools
/// and the tests are built into the same target directory), or
/// `JOBVISOR_BIN` when set.
pub fn server_binary() -> anyhow::Result<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("JOBVISOR_BIN") {
        return Ok(path.into());
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| anyhow::anyhow!("{} has no directory", exe.display()))?;
    // Test executables live one level down, in target/<profile>/deps.
    if dir.ends_with("deps") {
        dir = dir.parent().unwrap_or(dir);
    }
    let server = dir.join(format!("jobvisor{}", std::env::consts::EXE_SUFFIX));
    if !server.exists() {
        anyhow::bail!(
            "the jobvisor server binary is not at {}: build it (cargo build --release) \
             or set JOBVISOR_BIN",
            server.display()
        );
    }
    Ok(server)
}
