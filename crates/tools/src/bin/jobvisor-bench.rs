//! `jobvisor-bench`: runs the benchmark scenarios against a fresh database
//! and a real server process, and prints a table and one JSON line each.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use jobvisor_tools::bench::{self, median, scenarios};
use serde_json::json;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "jobvisor-bench", version, about)]
struct BenchArgs {
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
    Control(scenarios::control::ControlOptions),
    /// 10,000 jobs running at once in one server: server RSS per live job,
    /// and control latency compared with a few jobs running.
    ManyJobs(scenarios::many_jobs::ManyJobsOptions),
    /// 1,000 WatchJob streams on one running job: delivery latency, gap-free
    /// streams, and the job's throughput with and without them.
    Watchers(scenarios::watchers::WatchersOptions),
    /// The dashboard's jobs list (GET /v1/jobs, pages of 50) with 100,000
    /// stored jobs: first page, filtered, next pages; p99 of each.
    ListJobs(scenarios::list_jobs::ListJobsOptions),
    /// A job of 1,000,000 items started with the CLI in pages through nginx
    /// (time to the last page), and a job grown by AddItems while it runs
    /// against the same job started whole (items/s).
    Pages(scenarios::pages::PagesOptions),
    /// PostgreSQL's CPU per item through the store's batch function alone,
    /// at several batch sizes: what an item costs and what a commit costs.
    StoreCost(scenarios::store_cost::StoreCostOptions),
    /// SIGKILL of a server running 1,000 jobs and restart: time to serve,
    /// and until every job has an item running again.
    Recovery(scenarios::recovery::RecoveryOptions),
    /// A job of 1,000,000 items against one of 100,000, in one sitting:
    /// StartJob time and items/s of each, and their ratio.
    Scale(scenarios::scale::ScaleOptions),
    /// 10,000,000 items through jobs of 100,000 on a server with a
    /// retention: items/s per minute, first against last, and the items
    /// table's sizes after the first million and at the end.
    Soak(scenarios::soak::SoakOptions),
    /// The same job of no-op items in the server and in a worker process
    /// (remote executor, as many slots as the job's concurrency): items/s
    /// of each and the ratio.
    RemoteThroughput(scenarios::remote::throughput::RemoteThroughputOptions),
    /// On an idle server: StartJob → the assignment at a worker, and
    /// PauseJob(IMMEDIATE) / CancelJob → the interrupt at the worker.
    RemoteLatency(scenarios::remote::latency::RemoteLatencyOptions),
    /// SIGKILL of a worker process holding an item → the item's assignment
    /// at another worker.
    RemoteRedelivery(scenarios::remote::redelivery::RemoteRedeliveryOptions),
    /// The same no-op job in the server and in one Python worker process
    /// (clients/python), and PauseJob(IMMEDIATE) / CancelJob → `stopping`
    /// seen in the Python handler.
    PythonWorker(scenarios::remote::python::PythonWorkerOptions),
    /// A worker process for the remote scenarios (they start it).
    #[command(hide = true)]
    RemoteWorker(scenarios::remote::WorkerOptions),
    /// The peer comparison's workload (bench/peers/run.sh calls this).
    Peer {
        #[arg(long, default_value_t = 20_000)]
        items: u32,
        #[arg(long, default_value_t = 16)]
        concurrency: u32,
    },
}

async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if let Scenario::RemoteWorker(opts) = &args.scenario {
        scenarios::remote::worker_main(opts).await?;
        return Ok(ExitCode::SUCCESS);
    }
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
    let setup = bench_setup(&binary, &args.database_url, args.json, &server_args);
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
                        "throughput: {} items, concurrency {}: start {:.3}s, run {:.3}s, {:.0} items/s end to end ({:.0}/s after start), peak RSS {:.1} MiB; CPU per item: PostgreSQL {:.1} µs storing, {:.1} µs running, server {:.1} µs running",
                        r.items,
                        r.concurrency,
                        r.start_seconds,
                        r.run_seconds,
                        r.items_per_second,
                        r.run_items_per_second,
                        r.rss_mib,
                        r.pg_start_us_per_item,
                        r.pg_run_us_per_item,
                        r.server_run_us_per_item
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
        Scenario::Control(opts) => {
            let r = scenarios::control(&setup, &opts).await?;
            report(args.json, "control", &r.human(), &r, &context);
        }
        Scenario::ManyJobs(opts) => {
            let r = scenarios::many_jobs(&setup, &opts).await?;
            report(args.json, "many-jobs", &r.human(), &r, &context);
        }
        Scenario::Watchers(opts) => {
            let mut pairs = Vec::new();
            for n in 1..=opts.runs {
                if opts.runs > 1 {
                    setup.note(format!("pair {n} of {}", opts.runs));
                }
                let r = scenarios::watchers(&setup, &opts).await?;
                report(args.json, "watchers", &r.human(), &r, &context);
                pairs.push(r);
            }
            if pairs.len() > 1 {
                let s = scenarios::watchers::WatchersSummary::of(&pairs);
                report(args.json, "watchers-summary", &s.human(), &s, &context);
            }
        }
        Scenario::ListJobs(opts) => {
            let r = scenarios::list_jobs(&setup, &opts).await?;
            report(args.json, "list-jobs", &r.human(), &r, &context);
        }
        Scenario::StoreCost(opts) => {
            let r = scenarios::store_cost(&args.database_url, &opts).await?;
            report(args.json, "store-cost", &r.human(), &r, &context);
        }
        Scenario::Pages(opts) => {
            let r = scenarios::pages(&setup, &opts).await?;
            report(args.json, "pages", &r.human(), &r, &context);
        }
        Scenario::Recovery(opts) => {
            let r = scenarios::recovery(&setup, &opts).await?;
            report(args.json, "recovery", &r.human(), &r, &context);
        }
        Scenario::Scale(opts) => {
            let r = scenarios::scale(&setup, &opts).await?;
            report(args.json, "scale", &r.human(), &r, &context);
        }
        Scenario::Soak(opts) => {
            let r = scenarios::soak(&setup, &opts).await?;
            report(args.json, "soak", &r.human(), &r, &context);
        }
        Scenario::RemoteThroughput(opts) => {
            let r = scenarios::remote::throughput(&setup, &opts).await?;
            report(args.json, "remote-throughput", &r.human(), &r, &context);
        }
        Scenario::RemoteLatency(opts) => {
            let r = scenarios::remote::latency(&setup, &opts).await?;
            report(args.json, "remote-latency", &r.human(), &r, &context);
        }
        Scenario::RemoteRedelivery(opts) => {
            let r = scenarios::remote::redelivery(&setup, &opts).await?;
            report(args.json, "remote-redelivery", &r.human(), &r, &context);
        }
        Scenario::PythonWorker(opts) => {
            let r = scenarios::remote::python(&setup, &opts).await?;
            report(args.json, "python-worker", &r.human(), &r, &context);
        }
        Scenario::RemoteWorker(_) => unreachable!("handled above"),
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

/// Prints a scenario's table (unless `json`) and its JSON line.
fn report(
    json: bool,
    scenario: &str,
    human: &[String],
    result: &impl serde::Serialize,
    context: &bench::Context,
) {
    if !json {
        for line in human {
            println!("{line}");
        }
    }
    println!(
        "{}",
        json!({"scenario": scenario, "result": result, "context": context})
    );
}

/// The run's setup for the scenarios that take one.
fn bench_setup(
    binary: &std::path::Path,
    database_url: &str,
    json: bool,
    server_args: &[&str],
) -> bench::Setup {
    bench::Setup {
        binary: binary.to_path_buf(),
        admin_url: database_url.to_string(),
        server_args: server_args.iter().map(|a| a.to_string()).collect(),
        progress: !json,
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(BenchArgs::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
