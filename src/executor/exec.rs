//! `exec`: runs a program for every item, in its own process group.
//!
//! What the program gets:
//! - the item on stdin (then stdin is closed), and in `JOBVISOR_ITEM`;
//! - `JOBVISOR_ITEM_INDEX`, `JOBVISOR_ATTEMPT` (from 1), `JOBVISOR_JOB_ID`,
//!   and `JOBVISOR_CHECKPOINT` with the last saved checkpoint (absent when
//!   there is none), so a resumed item continues where it stopped;
//! - with tracing on, the item's trace context in `TRACEPARENT` (and
//!   `TRACESTATE`; `B3` or `X_B3_*` with `OTEL_PROPAGATORS=b3`/`b3multi`).
//!
//! What it reports, one line each on stdout (see [`super::protocol`]):
//! `@checkpoint <text>`, `@progress <fraction>` or `@progress <done>/<total>`,
//! `@result <text>`, `@retry-after <wait>`. Any other output (stdout or
//! stderr) is kept as the item's log tail and shown in its error if it
//! fails.
//!
//! How it ends: exit 0 = succeeded; an exit code listed in
//! `permanent_exit_codes` (default 100) = failed without retry; any other
//! exit, a signal, or the timeout = a retryable failure. On an immediate
//! pause, a cancel or a shutdown the process group gets SIGTERM, then
//! SIGKILL after `kill_grace`; the item keeps its last checkpoint. The
//! group is killed too if the worker running it dies.
//!
//! What the server allows (programs, environment, working directory) is
//! in [`policy`]; a program never sees the server's own environment.

mod policy;

pub use policy::{CommandPolicy, DEFAULT_ENV_PASS, ExecSettings, ExecSetupError, is_refused_env};

use super::{
    Executor, ItemContext, ItemError, ItemHandler, Params, PrepareError,
    protocol::{Line, LogTail, parse_line},
};
use crate::domain::FieldViolation;
use async_trait::async_trait;
use policy::Confinement;
use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{ExitStatus, Stdio},
    sync::Arc,
    time::Duration,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::Command,
    time::Instant,
};

const KNOWN: &[&str] = &[
    "command",
    "args",
    "cwd",
    "env",
    "timeout",
    "kill_grace",
    "permanent_exit_codes",
    "log_tail_bytes",
];

/// How long to wait for the output of a program that has exited (its
/// children may hold the pipes open).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// The longest `kill_grace`: a program that ignores SIGTERM holds its
/// job in PAUSING or CANCELLING at most this long.
pub const MAX_KILL_GRACE: Duration = Duration::from_secs(10 * 60);

/// The longest `timeout` of one attempt.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);

/// The `exec` executor, with what its server allows.
#[derive(Debug, Clone)]
pub struct ExecExecutor {
    confinement: Arc<Confinement>,
}

impl ExecExecutor {
    /// Applies the operator's settings, reading the server's environment
    /// now: the allowed commands are resolved on its `PATH`, the passed
    /// variables' values kept. Fails if a setting cannot be used.
    pub fn new(settings: &ExecSettings) -> Result<ExecExecutor, ExecSetupError> {
        let confinement = Confinement::new(settings, &|name| std::env::var_os(name))?;
        Ok(ExecExecutor {
            confinement: Arc::new(confinement),
        })
    }
}

/// A job's parsed `exec` params.
#[derive(Debug, Clone)]
pub struct Exec {
    pub command: String,
    pub args: Vec<String>,
    /// As given; [`ExecExecutor`] checks it against the server's rules.
    pub cwd: Option<String>,
    pub env: BTreeMap<String, String>,
    pub timeout: Option<Duration>,
    pub kill_grace: Duration,
    pub permanent_exit_codes: Vec<i32>,
    pub log_tail_bytes: usize,
}

impl Exec {
    pub fn parse(params: &BTreeMap<String, String>) -> Result<Exec, Vec<FieldViolation>> {
        let mut p = Params::new(params, KNOWN);
        let command = p.get("command").unwrap_or_default().to_string();
        if command.trim().is_empty() {
            p.invalid("command", "is required: the program to run for each item");
        }
        let args = match p.get("args") {
            None => Vec::new(),
            Some(raw) => serde_json::from_str::<Vec<String>>(raw).unwrap_or_else(|_| {
                p.invalid(
                    "args",
                    r#"must be a JSON array of strings, e.g. ["-v","--fast"]"#,
                );
                Vec::new()
            }),
        };
        let env = match p.get("env") {
            None => BTreeMap::new(),
            Some(raw) => {
                serde_json::from_str::<BTreeMap<String, String>>(raw).unwrap_or_else(|_| {
                    p.invalid(
                        "env",
                        r#"must be a JSON object of strings, e.g. {"LANG":"C"}"#,
                    );
                    BTreeMap::new()
                })
            }
        };
        let cwd = p.get("cwd").map(String::from);
        let mut duration = |key: &str, default: Option<Duration>, max: Duration| match p.get(key) {
            None => default,
            Some(raw) => match humantime::parse_duration(raw.trim()) {
                Ok(d) if d > max => {
                    p.invalid(
                        key,
                        format!(
                            "{raw:?} is longer than the limit of {}",
                            humantime::format_duration(max)
                        ),
                    );
                    default
                }
                Ok(d) if !d.is_zero() => Some(d),
                _ => {
                    p.invalid(key, format!("{raw:?} is not a duration like 30s or 5m"));
                    default
                }
            },
        };
        let timeout = duration("timeout", None, MAX_TIMEOUT);
        let kill_grace = duration("kill_grace", Some(Duration::from_secs(5)), MAX_KILL_GRACE)
            .unwrap_or(Duration::from_secs(5));
        let permanent_exit_codes = match p.get("permanent_exit_codes") {
            None => vec![100],
            Some(raw) => raw
                .split(',')
                .map(|c| c.trim().parse::<i32>())
                .collect::<Result<Vec<_>, _>>()
                .unwrap_or_else(|_| {
                    p.invalid(
                        "permanent_exit_codes",
                        "must be exit codes separated by commas",
                    );
                    vec![100]
                }),
        };
        let log_tail_bytes = p.parse_or("log_tail_bytes", 4096usize, "a number of bytes");
        if !(256..=1024 * 1024).contains(&log_tail_bytes) {
            p.invalid("log_tail_bytes", "must be between 256 and 1048576");
        }
        p.finish()?;
        Ok(Exec {
            command,
            args,
            cwd,
            env,
            timeout,
            kill_grace,
            permanent_exit_codes,
            log_tail_bytes,
        })
    }
}

impl Executor for ExecExecutor {
    fn prepare(
        &self,
        params: &BTreeMap<String, String>,
    ) -> Result<Arc<dyn ItemHandler>, PrepareError> {
        let exec = Exec::parse(params)?;
        let program = self
            .confinement
            .program(&exec.command)
            .map_err(PrepareError::Forbidden)?;
        let mut bad = self.confinement.check_env(&exec.env);
        let cwd = self
            .confinement
            .cwd(exec.cwd.as_deref())
            .unwrap_or_else(|v| {
                bad.push(v);
                None
            });
        if !bad.is_empty() {
            return Err(PrepareError::Invalid(bad));
        }
        Ok(Arc::new(Launch {
            exec,
            program,
            cwd,
            confinement: self.confinement.clone(),
        }))
    }
}

/// A job's program, checked against its server's rules: what each item
/// runs.
#[derive(Debug)]
struct Launch {
    exec: Exec,
    /// What is executed: an allowed command's absolute path, or (any
    /// command allowed) the command as given, looked up on the `PATH` the
    /// program gets.
    program: PathBuf,
    cwd: Option<PathBuf>,
    confinement: Arc<Confinement>,
}

/// Kills the process group when dropped, unless told the process is gone:
/// the program never outlives its item, even if the worker dies.
struct GroupGuard {
    pgid: Option<rustix::process::Pid>,
}

impl GroupGuard {
    fn signal(&self, signal: rustix::process::Signal) {
        if let Some(pgid) = self.pgid {
            // ESRCH (already gone) is fine.
            let _ = rustix::process::kill_process_group(pgid, signal);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.signal(rustix::process::Signal::KILL);
    }
}

/// Why the program was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Requested,
    TimedOut,
    LeaseLost,
}

#[async_trait]
impl ItemHandler for Launch {
    async fn run(&self, ctx: &mut ItemContext) -> Result<(), ItemError> {
        let exec = &self.exec;
        let mut command = Command::new(&self.program);
        command
            // The program sees the name it was asked for, as if looked up.
            .arg0(&exec.command)
            .args(&exec.args)
            // Nothing of the server's own environment (its database URL,
            // its tokens) unless the operator passes it.
            .env_clear()
            .envs(self.confinement.base_env().iter().map(|(k, v)| (k, v)))
            .envs(&exec.env)
            .env("JOBVISOR_ITEM", ctx.payload())
            .env("JOBVISOR_ITEM_INDEX", ctx.index().to_string())
            .env("JOBVISOR_ATTEMPT", ctx.attempt().to_string())
            .env("JOBVISOR_JOB_ID", ctx.job_id().to_string())
            .env_remove("JOBVISOR_CHECKPOINT")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(checkpoint) = ctx.checkpoint() {
            command.env(
                "JOBVISOR_CHECKPOINT",
                String::from_utf8_lossy(checkpoint).into_owned(),
            );
        }
        if let Some(cwd) = &self.cwd {
            command.current_dir(cwd);
        }
        // The item's trace context (TRACEPARENT…), so the program's own
        // spans join the item's trace; never one inherited from the server.
        for (name, value) in crate::telemetry::propagation::current_span_environment() {
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
        let mut child = command.spawn().map_err(|e| {
            let what = format!("cannot run {:?}: {e}", exec.command);
            match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                    ItemError::Permanent(what)
                }
                _ => ItemError::Retryable(what),
            }
        })?;
        let guard = GroupGuard {
            pgid: child
                .id()
                .and_then(|id| rustix::process::Pid::from_raw(id as i32)),
        };

        // The item on stdin, then EOF. A program that does not read stdin
        // closes it early: that is not an error.
        if let Some(mut stdin) = child.stdin.take() {
            let payload = ctx.payload().as_bytes().to_vec();
            tokio::spawn(async move {
                let _ = stdin.write_all(&payload).await;
                let _ = stdin.shutdown().await;
            });
        }
        let mut stdout = child.stdout.take().map(|s| BufReader::new(s).lines());
        let mut stderr = child.stderr.take().map(|s| BufReader::new(s).lines());
        let mut tail = LogTail::new(exec.log_tail_bytes);
        let timeout_at = exec.timeout.map(|t| Instant::now() + t);
        let mut kill_at: Option<Instant> = None;
        let mut stopped: Option<Stop> = None;
        let mut status: Option<ExitStatus> = None;
        let mut drain_until: Option<Instant> = None;
        let far = || Instant::now() + Duration::from_secs(86_400 * 365);

        loop {
            if status.is_some() && stdout.is_none() && stderr.is_none() {
                break;
            }
            if let Some(until) = drain_until
                && Instant::now() >= until
            {
                break;
            }
            tokio::select! {
                line = next_line(&mut stdout) => match line {
                    Some(line) => match parse_line(&line) {
                        Line::Checkpoint(text) => {
                            if ctx.save_checkpoint(text.into_bytes()).await.is_err()
                                && stopped.is_none()
                            {
                                // Lost our claim: stop now, nothing more counts.
                                stopped = Some(Stop::LeaseLost);
                                guard.signal(rustix::process::Signal::KILL);
                            }
                        }
                        Line::Progress(fraction) => ctx.set_progress(fraction),
                        Line::Result(text) => ctx.set_result(text),
                        Line::RetryAfter(wait) => ctx.set_retry_after(wait),
                        Line::Skip(why) => ctx.skip(why),
                        Line::Count(name, n) => {
                            if let Err(why) = ctx.count(&name, n) {
                                tail.push(&format!("[jobvisor] {why}: {line}"));
                            }
                        }
                        Line::Invalid(why) => tail.push(&format!("[jobvisor] {why}: {line}")),
                        Line::Output => tail.push(&line),
                    },
                    None => stdout = None,
                },
                line = next_line(&mut stderr) => match line {
                    Some(line) => tail.push(&line),
                    None => stderr = None,
                },
                exit = child.wait(), if status.is_none() => {
                    status = Some(exit.map_err(|e| ItemError::Retryable(format!("waiting for the program: {e}")))?);
                    drain_until = Some(Instant::now() + DRAIN_AFTER_EXIT);
                }
                _ = ctx.stopped(), if stopped.is_none() && status.is_none() => {
                    stopped = Some(Stop::Requested);
                    guard.signal(rustix::process::Signal::TERM);
                    kill_at = Some(Instant::now() + exec.kill_grace);
                }
                _ = tokio::time::sleep_until(timeout_at.unwrap_or_else(far)),
                    if timeout_at.is_some() && stopped.is_none() && status.is_none() => {
                    stopped = Some(Stop::TimedOut);
                    guard.signal(rustix::process::Signal::TERM);
                    kill_at = Some(Instant::now() + exec.kill_grace);
                }
                _ = tokio::time::sleep_until(kill_at.unwrap_or_else(far)), if kill_at.is_some() => {
                    guard.signal(rustix::process::Signal::KILL);
                    kill_at = None;
                }
            }
        }
        // Whatever is left of the group (children holding pipes) goes now.
        drop(guard);
        let status = match status {
            Some(s) => s,
            None => child
                .wait()
                .await
                .map_err(|e| ItemError::Retryable(format!("waiting for the program: {e}")))?,
        };
        exec.outcome(status, stopped, &tail)
    }
}

impl Exec {
    fn outcome(
        &self,
        status: ExitStatus,
        stopped: Option<Stop>,
        tail: &LogTail,
    ) -> Result<(), ItemError> {
        use std::os::unix::process::ExitStatusExt;
        let with_tail = |what: String| {
            if tail.is_empty() {
                what
            } else {
                format!("{what}; output:\n{}", tail.text())
            }
        };
        match stopped {
            Some(Stop::Requested | Stop::LeaseLost) => return Err(ItemError::Interrupted),
            Some(Stop::TimedOut) => {
                let limit = self.timeout.map(humantime::format_duration);
                return Err(ItemError::Retryable(with_tail(format!(
                    "timed out after {}",
                    limit.map(|d| d.to_string()).unwrap_or_default()
                ))));
            }
            None => {}
        }
        match (status.code(), status.signal()) {
            (Some(0), _) => Ok(()),
            (Some(code), _) if self.permanent_exit_codes.contains(&code) => Err(
                ItemError::Permanent(with_tail(format!("exited with code {code}"))),
            ),
            (Some(code), _) => Err(ItemError::Retryable(with_tail(format!(
                "exited with code {code}"
            )))),
            (None, Some(signal)) => Err(ItemError::Retryable(with_tail(format!(
                "killed by signal {signal}"
            )))),
            (None, None) => Err(ItemError::Retryable(with_tail("ended abnormally".into()))),
        }
    }
}

/// The next line of an optional stream; pending forever once it is gone,
/// so `select!` ignores it.
async fn next_line<R>(lines: &mut Option<tokio::io::Lines<R>>) -> Option<String>
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    match lines {
        Some(l) => match l.next_line().await {
            Ok(Some(line)) => Some(line),
            // EOF or unreadable (not UTF-8 is read lossily by nobody: end it).
            _ => None,
        },
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_and_names_bad_params() {
        let ok = Exec::parse(&params(&[
            ("command", "python3"),
            ("args", r#"["work.py","--fast"]"#),
            ("env", r#"{"LANG":"C"}"#),
            ("timeout", "30s"),
            ("permanent_exit_codes", "100, 101"),
        ]))
        .unwrap();
        assert_eq!(ok.args, ["work.py", "--fast"]);
        assert_eq!(ok.timeout, Some(Duration::from_secs(30)));
        assert_eq!(ok.permanent_exit_codes, [100, 101]);
        assert_eq!(ok.kill_grace, Duration::from_secs(5));

        let bad = Exec::parse(&params(&[
            ("args", "-v"),
            ("timeout", "soon"),
            ("env", "[]"),
        ]))
        .unwrap_err();
        let fields: Vec<_> = bad.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "params[command]",
                "params[args]",
                "params[env]",
                "params[timeout]"
            ]
        );
    }

    #[test]
    fn durations_are_bounded() {
        let bad = Exec::parse(&params(&[
            ("command", "sleep"),
            ("kill_grace", "100000000000days"),
            ("timeout", "31days"),
        ]))
        .unwrap_err();
        let fields: Vec<_> = bad.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["params[timeout]", "params[kill_grace]"]);
        assert!(bad[1].description.contains("10m"), "{}", bad[1].description);
        let ok = Exec::parse(&params(&[
            ("command", "sleep"),
            ("kill_grace", "10m"),
            ("timeout", "30days"),
        ]))
        .unwrap();
        assert_eq!(
            (ok.kill_grace, ok.timeout),
            (MAX_KILL_GRACE, Some(MAX_TIMEOUT))
        );
    }

    #[test]
    fn the_command_policy_is_enforced() {
        let exec = ExecExecutor::new(&ExecSettings {
            commands: CommandPolicy::Only(vec!["/usr/bin/true".into()]),
            ..ExecSettings::default()
        })
        .unwrap();
        assert!(
            exec.prepare(&params(&[("command", "/usr/bin/true")]))
                .is_ok()
        );
        match exec.prepare(&params(&[("command", "rm")])) {
            Err(PrepareError::Forbidden(why)) => assert!(why.contains("not allowed"), "{why}"),
            _ => panic!("rm must be forbidden"),
        }
        match exec.prepare(&params(&[
            ("command", "/usr/bin/true"),
            ("env", r#"{"LD_PRELOAD":"/tmp/x.so"}"#),
            ("cwd", "relative"),
        ])) {
            Err(PrepareError::Invalid(bad)) => {
                let fields: Vec<_> = bad.iter().map(|v| v.field.as_str()).collect();
                assert_eq!(fields, ["params[env]", "params[cwd]"]);
            }
            _ => panic!("LD_PRELOAD and a relative cwd must be refused"),
        }
    }
}
