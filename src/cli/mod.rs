//! The `jobvisor` command line: `serve` runs the service; the other
//! subcommands are a client of any running server.

#[macro_use]
mod stdout;
mod client;
mod not_grpc;
mod output;
mod pages;
mod serve;
mod token;
mod worker;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// jobvisor: run long batch jobs you can pause, resume, cancel and watch
/// without losing work.
#[derive(Debug, Parser)]
#[command(name = "jobvisor", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve(Box<serve::ServeArgs>),
    /// Start a job.
    Start(client::StartArgs),
    /// Run the job of --name: start it if no job of that name is live,
    /// resume it if it is paused, or say it is already running. One job
    /// per name, however many run at once.
    Run(client::StartArgs),
    /// Add items to a job that has not ended, in pages (AddItems); with
    /// --close, the last page closes a job started --open.
    Add(client::AddArgs),
    /// Close a job started --open: it ends once its items are done.
    Close(client::JobArgs),
    /// Pause a job (graceful unless --immediate).
    Pause(client::PauseArgs),
    /// Resume a paused job.
    Resume(client::JobArgs),
    /// Cancel a job.
    Cancel(client::CancelArgs),
    /// Cancel chosen items of a job that has not ended, by index or by
    /// range (--from, --to), leaving the others alone: pending ones end
    /// at once, running ones are interrupted.
    CancelItems(client::CancelItemsArgs),
    /// Run the failed items of a failed job again.
    Retry(client::JobArgs),
    /// Change how many items a job runs at once.
    Scale(client::ScaleArgs),
    /// Change a job's rate limit on item starts (0: none).
    Rate(client::RateArgs),
    /// Delete an ended job with its items and events (a job that has not
    /// ended is refused: cancel it first).
    Delete(client::JobArgs),
    /// Pause, resume or cancel many jobs at once (by label and/or id).
    /// Exit code 5 if any job refused.
    Control(client::BulkArgs),
    /// Show a job.
    Get(client::JobArgs),
    /// List jobs, newest first.
    List(client::ListArgs),
    /// List a job's items with their state, attempts and errors.
    Items(client::ItemsArgs),
    /// Make bearer tokens for a server's --auth-tokens file.
    Token(token::TokenArgs),
    /// Follow a job until it ends: a progress bar on a terminal, JSON lines
    /// otherwise. Exit code: 0 succeeded, 3 failed, 4 cancelled.
    Watch(client::WatchArgs),
    /// Run the items of a server's remote executor on this machine: a
    /// program per item, in the exec protocol.
    ///
    /// Connects to --server, serves --executor NAME (which the server
    /// declares with `serve --remote-executor NAME`), and runs PROGRAM for
    /// every item it is given, at most --slots at once. The program is
    /// this worker's: a job cannot choose another one, nor its arguments.
    ///
    /// What the program gets: the item on stdin and in JOBVISOR_ITEM;
    /// JOBVISOR_ITEM_INDEX, JOBVISOR_ATTEMPT (from 1), JOBVISOR_JOB_ID;
    /// JOBVISOR_CHECKPOINT, the item's last checkpoint (absent when it has
    /// none): continue from it. Each of the job's params as
    /// JOBVISOR_PARAM_<KEY>, the key upper-cased and every character other
    /// than a letter or digit made `_` (`--param lang=de` gives
    /// JOBVISOR_PARAM_LANG=de). This worker's environment, without its own
    /// JOBVISOR_* settings (its token stays here). This worker's working
    /// directory.
    ///
    /// What it reports, one line each on stdout: `@checkpoint <text>`
    /// (saved on the server before the program reads on), `@progress
    /// <fraction>` or `@progress <done>/<total>`, `@result <text>`,
    /// `@retry-after <wait>`. Other output is kept as the item's log tail,
    /// shown in its error if it fails.
    ///
    /// How it ends: exit 0 succeeded; an exit code of
    /// --permanent-exit-codes (100) failed for good; any other exit or a
    /// signal is retried. On a pause, a cancel or this worker's drain its
    /// process group gets SIGTERM, then SIGKILL after --kill-grace; the
    /// item keeps its last checkpoint.
    ///
    /// SIGTERM or Ctrl-C drains: the server sends nothing more, the items
    /// in flight are stopped (SIGTERM) and go back to pending with their
    /// checkpoints, and the worker exits once they have. A broken
    /// connection is retried; the items in flight keep running and are
    /// reported when it is back. Status lines go to standard error.
    Worker(worker::WorkerArgs),
}

/// Parses the command line and runs it.
pub async fn run() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(*args).await.map(|_| ExitCode::SUCCESS),
        Command::Start(args) => client::start(args).await,
        Command::Run(args) => client::run(args).await,
        Command::Add(args) => client::add(args).await,
        Command::Close(args) => client::close(args).await,
        Command::Pause(args) => client::pause(args).await,
        Command::Resume(args) => client::resume(args).await,
        Command::Cancel(args) => client::cancel(args).await,
        Command::CancelItems(args) => client::cancel_items(args).await,
        Command::Retry(args) => client::retry(args).await,
        Command::Scale(args) => client::scale(args).await,
        Command::Rate(args) => client::rate(args).await,
        Command::Delete(args) => client::delete(args).await,
        Command::Control(args) => client::bulk(args).await,
        Command::Get(args) => client::get(args).await,
        Command::List(args) => client::list(args).await,
        Command::Items(args) => client::items(args).await,
        Command::Watch(args) => client::watch(args).await,
        Command::Token(args) => token::run(args),
        Command::Worker(args) => worker::run(args).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
