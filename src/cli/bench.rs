//! `jobvisor bench`: runs the benchmark scenarios against a fresh database
//! and a real server process, and prints a table and one JSON line each.

use crate::bench::{self, median, scenarios};
use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::json;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    scenario: Scenario,
    /// PostgreSQL to create the benchmark databases in.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        global = true,
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    /// Print only the JSON lines.
    #[arg(long, global = true)]
    json: bool,
    /// Run the server with --pipelined-acks.
    #[arg(long, global = true)]
    pipelined_acks: bool,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// One job of no-op items, from StartJob to SUCCEEDED: items/s and RSS.
    Throughput {
        #[arg(long, default_value_t = 100_000)]
        items: u32,
        #[arg(long, default_value_t = 64)]
        concurrency: u32,
        /// Repeat and report the median run.
        #[arg(long, default_value_t = 1)]
        runs: u32,
    },
    /// PauseJob/ResumeJob/CancelJob latency (call → response, call →
    /// effect), on an idle server and under the throughput load.
    Control {
        /// Pause/resume rounds per phase.
        #[arg(long, default_value_t = 200)]
        rounds: u32,
        /// Jobs cancelled per phase.
        #[arg(long, default_value_t = 50)]
        cancels: u32,
        /// Items of each load job (one runs at a time during the loaded phase).
        #[arg(long, default_value_t = 100_000)]
        load_items: u32,
        #[arg(long, default_value_t = 64)]
        load_concurrency: u32,
        /// Measure on the idle server only.
        #[arg(long)]
        idle_only: bool,
    },
    /// The peer comparison's workload (bench/peers/run.sh calls this).
    Peer {
        #[arg(long, default_value_t = 20_000)]
        items: u32,
        #[arg(long, default_value_t = 16)]
        concurrency: u32,
    },
}

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let binary = bench::this_binary()?;
    let server_args: Vec<&str> = if args.pipelined_acks {
        vec!["--pipelined-acks"]
    } else {
        vec![]
    };
    let context = bench::Context::read(&args.database_url)
        .await
        .context("reading the PostgreSQL settings")?;
    if !args.json {
        let settings: Vec<String> = context
            .settings
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!(
            "# {} cores, PostgreSQL {} ({})",
            context.cores,
            context.postgres,
            settings.join(", ")
        );
    }
    match args.scenario {
        Scenario::Throughput {
            items,
            concurrency,
            runs,
        } => {
            let mut results = Vec::new();
            for _ in 0..runs.max(1) {
                let r = scenarios::throughput(
                    &binary,
                    &args.database_url,
                    items,
                    concurrency,
                    &server_args,
                )
                .await?;
                if !args.json {
                    println!(
                        "throughput: {} items, concurrency {}: start {:.3}s, run {:.3}s, {:.0} items/s end to end ({:.0}/s after start), peak RSS {:.1} MiB",
                        r.items,
                        r.concurrency,
                        r.start_seconds,
                        r.run_seconds,
                        r.items_per_second,
                        r.run_items_per_second,
                        r.rss_mib
                    );
                }
                results.push(r);
            }
            let rates: Vec<f64> = results.iter().map(|r| r.items_per_second).collect();
            let best = results
                .iter()
                .min_by(|a, b| {
                    (a.items_per_second - median(&rates))
                        .abs()
                        .total_cmp(&(b.items_per_second - median(&rates)).abs())
                })
                .expect("at least one run");
            println!(
                "{}",
                json!({"scenario": "throughput", "runs": results.len(), "median": best,
                       "all_items_per_second": rates, "context": context})
            );
        }
        Scenario::Control {
            rounds,
            cancels,
            load_items,
            load_concurrency,
            idle_only,
        } => {
            let setup = bench::Setup {
                binary: binary.clone(),
                admin_url: args.database_url.clone(),
                server_args: server_args.iter().map(|a| a.to_string()).collect(),
                progress: !args.json,
            };
            let opts = scenarios::control::ControlOptions {
                rounds,
                cancels,
                load_items,
                load_concurrency,
                idle_only,
            };
            let r = scenarios::control(&setup, &opts).await?;
            if !args.json {
                for line in r.human() {
                    println!("{line}");
                }
            }
            println!(
                "{}",
                json!({"scenario": "control", "result": r, "context": context})
            );
        }
        Scenario::Peer { items, concurrency } => {
            let r = scenarios::throughput(
                &binary,
                &args.database_url,
                items,
                concurrency,
                &server_args,
            )
            .await?;
            println!(
                "{}",
                json!({"system": if args.pipelined_acks { "jobvisor-pipelined" } else { "jobvisor" },
                       "items": items, "concurrency": concurrency,
                       "enqueue_seconds": r.start_seconds, "run_seconds": r.run_seconds,
                       "items_per_second": r.run_items_per_second, "rss_mib": r.rss_mib,
                       "note": "enqueue = StartJob storing every item; run = from StartJob's answer to SUCCEEDED"})
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
