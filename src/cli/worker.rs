//! `jobvisor worker`: a worker process for a server's remote executor that
//! runs a program for every item, in the `exec` protocol, on this machine
//! (see the command's help). The program is the worker's: a job's params
//! reach it as `JOBVISOR_PARAM_<KEY>` variables and cannot choose another.

use super::client::Conn;
use crate::{
    domain::FieldViolation,
    executor::{
        Executor, ItemHandler, PrepareError,
        exec::{CommandPolicy, ExecExecutor, ExecSettings},
    },
    worker::{Connect, Status, Worker},
};
use anyhow::{Context, bail};
use clap::Args;
use std::{collections::BTreeMap, io::Write as _, process::ExitCode, sync::Arc, time::Duration};

#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    conn: Conn,
    /// The remote executor whose items this worker runs: one the server
    /// declares with `serve --remote-executor NAME` (repeat to serve
    /// several with the same program).
    #[arg(long = "executor", required = true)]
    executors: Vec<String>,
    /// How many items run at once (1 to 1024).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    slots: u32,
    /// The name the server's logs show (default host:pid).
    #[arg(long)]
    name: Option<String>,
    /// Stop an item's program (SIGTERM) after it has run this long, and
    /// fail the attempt (retryable). Default: no limit.
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// How long a program has after SIGTERM (pause, cancel, drain,
    /// timeout) before its process group gets SIGKILL.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    kill_grace: Duration,
    /// Exit codes that fail an item for good (no retry), comma-separated.
    #[arg(long, default_value = "100", value_delimiter = ',')]
    permanent_exit_codes: Vec<i32>,
    /// The program to run for each item, and its arguments.
    #[arg(last = true, required = true, value_name = "PROGRAM")]
    command: Vec<String>,
}

/// The prefix of the variables that carry a job's params.
const PARAM_PREFIX: &str = "JOBVISOR_PARAM_";

pub async fn run(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let telemetry = crate::telemetry::init(crate::telemetry::LogFormat::Text)?;
    let executor = Arc::new(ProgramExecutor::new(&args)?);
    let endpoint = args.conn.endpoint()?;
    let url = endpoint.uri().to_string().trim_end_matches('/').to_string();
    let mut connect = Connect::new(endpoint);
    if let Some(token) = args.conn.token()? {
        connect = connect.with_token(&token)?;
    }
    let mut executors = args.executors.iter();
    let first = executors.next().expect("clap requires one");
    let mut worker = Worker::new(connect, first.clone(), executor.clone()).slots(args.slots);
    for name in executors {
        worker = worker.executor(name.clone(), executor.clone());
    }
    if let Some(name) = &args.name {
        worker = worker.name(name.clone());
    }
    let serving = format!(
        "executor {} with {} slot{}",
        args.executors.join(", "),
        args.slots,
        if args.slots == 1 { "" } else { "s" }
    );
    let worker = worker.on_status(move |status| status_line(status, &url, &serving));
    let result = worker.run(super::serve::shutdown_signal()).await;
    telemetry.shutdown();
    result?;
    Ok(ExitCode::SUCCESS)
}

/// One line on stderr for each change of the connection.
fn status_line(status: &Status, url: &str, serving: &str) {
    let line = match status {
        Status::Connected {
            server,
            session,
            resumed,
            lost,
        } => {
            let mut line = format!(
                "connected to {url} (server {}, session {session}); serving {serving}",
                if server.is_empty() { "-" } else { server }
            );
            if *resumed > 0 || *lost > 0 {
                line.push_str(&format!(
                    "; {resumed} item(s) in flight resumed, {lost} taken back by the server"
                ));
            }
            line
        }
        Status::Reconnecting {
            why,
            retry_in,
            in_flight,
        } => format!(
            "not connected to {url} ({why}); retrying in {} with {in_flight} item(s) in flight",
            humantime::format_duration(Duration::from_millis(retry_in.as_millis() as u64))
        ),
        Status::Draining { in_flight } => {
            format!("draining: no new items; waiting for {in_flight} item(s) in flight to stop")
        }
        Status::Stopped => "drained; stopped".to_string(),
    };
    // Standard error gone (a closed terminal) is no reason to stop working.
    let _ = writeln!(std::io::stderr(), "jobvisor worker: {line}");
}

/// `exec`, allowed to run exactly the worker's program; a job's params
/// become `JOBVISOR_PARAM_<KEY>` variables.
struct ProgramExecutor {
    exec: ExecExecutor,
    /// The `exec` params every job gets (program, arguments, limits).
    base: BTreeMap<String, String>,
}

impl ProgramExecutor {
    fn new(args: &WorkerArgs) -> anyhow::Result<ProgramExecutor> {
        let (program, program_args) = args.command.split_first().expect("clap requires one");
        // A relative path (./work.sh) is taken from the directory the
        // worker starts in, once.
        let program = if program.contains('/') && !program.starts_with('/') {
            std::path::absolute(program)
                .with_context(|| format!("cannot find {program}"))?
                .display()
                .to_string()
        } else {
            program.clone()
        };
        let settings = ExecSettings {
            commands: CommandPolicy::Only(vec![program.clone()]),
            // The program is the worker's own: it gets the worker's
            // environment, except the worker's own settings (its token).
            env_pass: std::env::vars_os()
                .filter_map(|(name, _)| name.into_string().ok())
                .filter(|name| !name.starts_with("JOBVISOR_"))
                .collect(),
            allow_env: Vec::new(),
            cwd_root: None,
        };
        let exec = ExecExecutor::new(&settings).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut base = BTreeMap::from([
            ("command".to_string(), program.clone()),
            (
                "args".to_string(),
                serde_json::to_string(program_args).expect("strings serialize"),
            ),
            (
                "kill_grace".to_string(),
                humantime::format_duration(args.kill_grace).to_string(),
            ),
            (
                "permanent_exit_codes".to_string(),
                args.permanent_exit_codes
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        ]);
        if let Some(timeout) = args.timeout {
            base.insert(
                "timeout".into(),
                humantime::format_duration(timeout).to_string(),
            );
        }
        let executor = ProgramExecutor { exec, base };
        // The worker's own settings are checked now, not on the first item.
        if let Err(e) = executor.prepare(&BTreeMap::new()) {
            bail!("cannot run {program}: {e}");
        }
        Ok(executor)
    }
}

impl Executor for ProgramExecutor {
    fn prepare(
        &self,
        params: &BTreeMap<String, String>,
    ) -> Result<Arc<dyn ItemHandler>, PrepareError> {
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        let mut from: BTreeMap<String, &str> = BTreeMap::new();
        let mut bad = Vec::new();
        for (key, value) in params {
            let var = param_var(key);
            if value.contains('\0') {
                bad.push(FieldViolation::new(
                    format!("params[{key}]"),
                    "contains a NUL byte, which an environment variable cannot hold",
                ));
            } else if let Some(other) = from.insert(var.clone(), key) {
                bad.push(FieldViolation::new(
                    format!("params[{key}]"),
                    format!("params[{other}] and params[{key}] would both be {var}"),
                ));
            } else {
                env.insert(var, value.clone());
            }
        }
        if !bad.is_empty() {
            return Err(PrepareError::Invalid(bad));
        }
        let mut exec_params = self.base.clone();
        exec_params.insert(
            "env".into(),
            serde_json::to_string(&env).expect("strings serialize"),
        );
        self.exec.prepare(&exec_params)
    }
}

/// The variable a param is given in: `JOBVISOR_PARAM_` and the key
/// upper-cased, every character other than a letter or digit made `_`.
fn param_var(key: &str) -> String {
    let mut var = String::from(PARAM_PREFIX);
    var.extend(key.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    var
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_become_variables_and_collisions_are_named() {
        assert_eq!(param_var("lang"), "JOBVISOR_PARAM_LANG");
        assert_eq!(param_var("out.dir-2"), "JOBVISOR_PARAM_OUT_DIR_2");
        let executor = ProgramExecutor {
            exec: ExecExecutor::new(&ExecSettings {
                commands: CommandPolicy::Only(vec!["/bin/sh".into()]),
                ..ExecSettings::default()
            })
            .unwrap(),
            base: BTreeMap::from([("command".to_string(), "/bin/sh".to_string())]),
        };
        let params = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(executor.prepare(&params(&[("lang", "de")])).is_ok());
        match executor.prepare(&params(&[("a-b", "1"), ("a_b", "2")])) {
            Err(PrepareError::Invalid(bad)) => {
                assert_eq!(bad.len(), 1);
                assert!(
                    bad[0].description.contains("JOBVISOR_PARAM_A_B"),
                    "{}",
                    bad[0].description
                );
            }
            _ => panic!("two params for one variable must be refused"),
        }
    }
}
