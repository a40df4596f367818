//! `jobvisor chaos`: runs one job through a real server process while
//! inflicting faults, and prints a one-line verdict (see `crate::chaos`).

use crate::chaos::{self, ChaosConfig, Fault};
use clap::Args;
use std::{process::ExitCode, time::Duration};

#[derive(Debug, Args)]
pub struct ChaosArgs {
    /// Items in the job.
    #[arg(long, default_value_t = 2000)]
    items: u32,
    /// Items processed at once.
    #[arg(long, default_value_t = 8)]
    concurrency: u32,
    /// Steps per item; each ends with a checkpoint.
    #[arg(long, default_value_t = 3)]
    steps: u32,
    /// Time per step.
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    step: Duration,
    /// Faults to inflict: kill, term, db-restart, backend-kill, each with
    /// a count, e.g. kill:5,term:2,db-restart:2,backend-kill:3.
    #[arg(long, default_value = "kill:5", value_parser = parse_schedule)]
    faults: Schedule,
    /// Shortest time between two faults.
    #[arg(long, default_value = "300ms", value_parser = humantime::parse_duration)]
    min_gap: Duration,
    /// Longest time between two faults.
    #[arg(long, default_value = "1500ms", value_parser = humantime::parse_duration)]
    max_gap: Duration,
    /// PostgreSQL to create the run's database in. Without it (or with
    /// db-restart faults) a throwaway cluster is created for the run.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Seed for the fault timing (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// The server's --shutdown-grace.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// Give up waiting for the job after this long.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Run the server with --pipelined-acks.
    #[arg(long)]
    pipelined_acks: bool,
}

/// A fault schedule as one command-line value.
#[derive(Debug, Clone)]
struct Schedule(Vec<(Fault, u32)>);

fn parse_schedule(raw: &str) -> Result<Schedule, String> {
    chaos::parse_schedule(raw).map(Schedule)
}

pub async fn run(args: ChaosArgs) -> anyhow::Result<ExitCode> {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let config = ChaosConfig {
        binary: std::env::current_exe()?,
        items: args.items,
        concurrency: args.concurrency,
        steps: args.steps,
        step: args.step,
        schedule: args.faults.0,
        gap: (args.min_gap, args.max_gap.max(args.min_gap)),
        admin_url: args.database_url,
        seed,
        grace: args.grace,
        timeout: args.timeout,
        server_args: if args.pipelined_acks {
            vec!["--pipelined-acks".into()]
        } else {
            vec![]
        },
    };
    let verdict = chaos::run(&config).await?;
    say!("{}", verdict.line());
    for (code, took) in &verdict.drains {
        say!("  SIGTERM drain: exit {code:?} in {took:.2?}");
    }
    for (code, took) in &verdict.outage_calls {
        say!("  call during database outage: {code} after {took:.2?}");
    }
    for problem in &verdict.problems {
        say!("  problem: {problem}");
    }
    if let Some(dir) = &verdict.kept {
        say!("  server log and execution log kept in {}", dir.display());
    }
    Ok(if verdict.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
