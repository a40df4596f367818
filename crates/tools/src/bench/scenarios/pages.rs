//! `bench pages`: a job's items sent in pages, and items added to a job
//! while it runs (AddItems).
//!
//! - Upload: a job of `--items` (1,000,000) no-op items started with the
//!   CLI (`jobvisor start --count N`) through nginx with its default 1 MiB
//!   request body limit. The CLI sends the items in pages (512 KiB by
//!   default): the first starts the job open (StartJob), the others are
//!   added (AddItems), the last closing it; the job runs while the pages
//!   arrive. Timed: the CLI's whole run, from its start to the last page's
//!   answer. Beside it, straight to the server (no proxy could pass it):
//!   the same items in one StartJob.
//! - Growing: the same job of `--grow-items` items twice, each on a fresh
//!   server. Once started whole; once started open with `--initial` items
//!   while a feeder adds the rest at `--add-rate` items/s in pages of
//!   `--page-items`, the last page closing it. Items/s of each, from
//!   StartJob's answer to SUCCEEDED, and their ratio (target: the grown job
//!   within 10% of the whole one). The initial items are enough that the
//!   job never runs dry while the feeder adds (it would then wait for the
//!   feeder, not for the server).

use crate::bench::{Env, Setup, SleepJob, Summary, met, wait_done};
use anyhow::Context as _;
use jobvisor::pb;
use jobvisor_testkit::proxy::{Proxy, ProxySpec};
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct PagesOptions {
    /// Items of the job uploaded in pages through nginx.
    #[arg(long, default_value_t = 1_000_000)]
    pub items: u32,
    /// Items of the job started whole and grown while it runs.
    #[arg(long, default_value_t = 500_000)]
    pub grow_items: u32,
    /// Of those, the items the grown job starts with: enough that it does
    /// not run dry while the rest are added (the report says whether it
    /// did).
    #[arg(long, default_value_t = 400_000)]
    pub initial: u32,
    /// Items added per second while the grown job runs.
    #[arg(long, default_value_t = 10_000)]
    pub add_rate: u32,
    /// Items per AddItems page while it grows.
    #[arg(long, default_value_t = 1_000)]
    pub page_items: u32,
    #[arg(long, default_value_t = 64)]
    pub concurrency: u32,
}

/// Time to the last page of the upload under this is the target.
const UPLOAD_TARGET_SECONDS: f64 = 10.0;
/// The grown job's items/s over the whole one's at least this.
const GROW_TARGET_RATIO: f64 = 0.9;

#[derive(Debug, Clone, Serialize)]
pub struct Pages {
    pub items: u32,
    /// The CLI's run through nginx: every page sent and answered.
    pub upload_seconds: f64,
    /// Pages the CLI sent (StartJob and AddItems calls).
    pub upload_pages: u64,
    /// The same items in one StartJob, straight to the server.
    pub whole_start_seconds: f64,
    pub grow_items: u32,
    pub initial: u32,
    pub add_rate: u32,
    pub page_items: u32,
    pub concurrency: u32,
    /// The job started whole: items/s from StartJob's answer to SUCCEEDED.
    pub whole_items_per_second: f64,
    /// The job grown while it ran: the same.
    pub grown_items_per_second: f64,
    pub ratio: f64,
    /// The rate the feeder achieved (items added / time adding).
    pub achieved_add_rate: f64,
    /// AddItems call latency while the job ran.
    pub add_call: Summary,
    /// The fewest items the grown job had pending (before the page) when
    /// a page arrived: 0 means it ran dry, and waited for the feeder.
    pub min_backlog: u64,
    pub upload_met: bool,
    pub grow_met: bool,
}

impl Pages {
    pub fn human(&self) -> Vec<String> {
        vec![
            format!(
                "pages: {} items with `jobvisor start --count` through nginx (1 MiB body limit): {:.2} s to the last page ({} pages); one StartJob of them, direct: {:.2} s",
                self.items, self.upload_seconds, self.upload_pages, self.whole_start_seconds
            ),
            format!(
                "  growing: {} items, concurrency {}: started whole {:.0} items/s; started with {} and the rest added at {}/s in pages of {} ({:.0}/s achieved): {:.0} items/s ({:.2}×)",
                self.grow_items,
                self.concurrency,
                self.whole_items_per_second,
                self.initial,
                self.add_rate,
                self.page_items,
                self.achieved_add_rate,
                self.grown_items_per_second,
                self.ratio
            ),
            format!(
                "  AddItems while it ran: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} calls); fewest items pending when a page came: {}{}",
                self.add_call.p50_ms,
                self.add_call.p99_ms,
                self.add_call.max_ms,
                self.add_call.n,
                self.min_backlog,
                if self.min_backlog == 0 {
                    " (it ran dry: the feeder's pace, not the server's, set its time)"
                } else {
                    ""
                }
            ),
            format!(
                "  targets: last page within {UPLOAD_TARGET_SECONDS} s: {}; grown within 10% of whole: {}",
                met(self.upload_met),
                met(self.grow_met)
            ),
        ]
    }
}

pub async fn pages(setup: &Setup, opts: &PagesOptions) -> anyhow::Result<Pages> {
    anyhow::ensure!(
        opts.initial < opts.grow_items && opts.page_items > 0 && opts.add_rate > 0,
        "--initial must be below --grow-items, and --page-items and --add-rate above 0"
    );
    setup.note(format!("upload: {} items through nginx", opts.items));
    let (upload_seconds, upload_pages) = upload(setup, opts).await?;
    setup.note("the same items in one StartJob");
    let whole_start_seconds = whole_start(setup, opts).await?;
    setup.note(format!("growing: {} items started whole", opts.grow_items));
    let whole = run_whole(setup, opts).await?;
    setup.note(format!(
        "growing: {} items, {} added at {}/s",
        opts.grow_items,
        opts.grow_items - opts.initial,
        opts.add_rate
    ));
    let grown = run_grown(setup, opts).await?;
    let ratio = grown.items_per_second / whole;
    Ok(Pages {
        items: opts.items,
        upload_seconds,
        upload_pages,
        whole_start_seconds,
        grow_items: opts.grow_items,
        initial: opts.initial,
        add_rate: opts.add_rate,
        page_items: opts.page_items,
        concurrency: opts.concurrency,
        whole_items_per_second: whole,
        grown_items_per_second: grown.items_per_second,
        ratio,
        achieved_add_rate: grown.achieved_add_rate,
        add_call: grown.add_call,
        min_backlog: grown.min_backlog,
        upload_met: upload_seconds < UPLOAD_TARGET_SECONDS,
        grow_met: ratio >= GROW_TARGET_RATIO,
    })
}

/// The CLI's `start --count N` through nginx: its run, and the pages the
/// server saw (the job's ItemsAdded events, plus the StartJob).
async fn upload(setup: &Setup, opts: &PagesOptions) -> anyhow::Result<(f64, u64)> {
    let env = Env::start_setup(setup, &[], false).await?;
    let proxy = Proxy::start(&ProxySpec::new(env.spec.addr)).await?;
    let count = opts.items.to_string();
    let concurrency = opts.concurrency.to_string();
    let started = Instant::now();
    let out = tokio::process::Command::new(&setup.binary)
        .args([
            "start",
            "--name",
            "pages",
            "--count",
            &count,
            "--param",
            "duration_ms=0",
            "--param",
            "steps=1",
            "--concurrency",
            &concurrency,
            "--json",
            "--server",
        ])
        .arg(format!("http://{}", proxy.addr))
        .env_remove("JOBVISOR_SERVER")
        .env_remove("JOBVISOR_TOKEN")
        .output()
        .await
        .context("running the CLI")?;
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        out.status.success(),
        "the CLI failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("the CLI's JSON answer")?;
    let id = job["id"].as_str().context("the job's id")?.to_string();
    let pool = env.db.pool().await?;
    let added: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM job_events WHERE job_id = $1::uuid AND kind = 'items_added'",
    )
    .bind(&id)
    .fetch_one(&pool)
    .await?;
    let total: i64 = sqlx::query_scalar("SELECT total_items FROM jobs WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&pool)
        .await?;
    anyhow::ensure!(
        total == i64::from(opts.items),
        "the job holds {total} items, not {}",
        opts.items
    );
    pool.close().await;
    drop(proxy);
    env.finish().await;
    Ok((seconds, added as u64 + 1))
}

/// One StartJob of every item, straight to the server.
async fn whole_start(setup: &Setup, opts: &PagesOptions) -> anyhow::Result<f64> {
    let env = Env::start_setup(setup, &[], false).await?;
    let mut client = env.client().await?;
    let request = SleepJob::new("whole", opts.items, opts.concurrency, 0, 1).request();
    let started = Instant::now();
    client.start_job(request).await?;
    let seconds = started.elapsed().as_secs_f64();
    env.finish().await;
    Ok(seconds)
}

/// Items/s of the job started whole, from StartJob's answer to SUCCEEDED.
async fn run_whole(setup: &Setup, opts: &PagesOptions) -> anyhow::Result<f64> {
    let env = Env::start_setup(setup, &[], false).await?;
    let mut client = env.client().await?;
    let job = SleepJob::new("whole", opts.grow_items, opts.concurrency, 0, 1)
        .start(&mut client)
        .await?;
    let started = Instant::now();
    let done = wait_done(&mut client, &job.id, Duration::from_secs(900)).await?;
    let seconds = started.elapsed().as_secs_f64();
    ensure_all(&done, opts.grow_items)?;
    env.finish().await;
    Ok(f64::from(opts.grow_items) / seconds)
}

struct Grown {
    items_per_second: f64,
    achieved_add_rate: f64,
    add_call: Summary,
    min_backlog: u64,
}

/// The job started open with the initial items, the rest added at the
/// rate while it runs.
async fn run_grown(setup: &Setup, opts: &PagesOptions) -> anyhow::Result<Grown> {
    let env = Env::start_setup(setup, &[], false).await?;
    let mut client = env.client().await?;
    let mut request = SleepJob::new("grown", opts.initial, opts.concurrency, 0, 1).request();
    request.open = true;
    let job = client.start_job(request).await?.into_inner();
    let started = Instant::now();
    let feeder = {
        let mut client = client.clone();
        let (id, opts) = (job.id.clone(), opts.clone());
        tokio::spawn(async move { feed(&mut client, &id, &opts).await })
    };
    let done = wait_done(&mut client, &job.id, Duration::from_secs(900)).await?;
    let seconds = started.elapsed().as_secs_f64();
    let (adding, calls, min_backlog) = feeder.await.context("the feeder")??;
    ensure_all(&done, opts.grow_items)?;
    env.finish().await;
    Ok(Grown {
        items_per_second: f64::from(opts.grow_items) / seconds,
        achieved_add_rate: f64::from(opts.grow_items - opts.initial) / adding.as_secs_f64(),
        add_call: Summary::of(&calls),
        min_backlog,
    })
}

/// Adds the items after the initial ones at the rate, a page at a time;
/// the last page closes the job. Returns the time it took, each call's,
/// and the fewest items pending before a page.
async fn feed(
    client: &mut crate::bench::Client,
    id: &str,
    opts: &PagesOptions,
) -> anyhow::Result<(Duration, Vec<Duration>, u64)> {
    let every = Duration::from_secs_f64(f64::from(opts.page_items) / f64::from(opts.add_rate));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut calls = Vec::new();
    let mut min_backlog = u64::MAX;
    let mut next = opts.initial;
    while next < opts.grow_items {
        tick.tick().await;
        let end = (next + opts.page_items).min(opts.grow_items);
        let page = pb::AddItemsRequest {
            job_id: id.to_string(),
            items: (next..end).map(|i| format!("item-{i}")).collect(),
            request_id: format!("page-{next}"),
            close: end == opts.grow_items,
        };
        let at = Instant::now();
        let added = client.add_items(page).await?.into_inner();
        calls.push(at.elapsed());
        anyhow::ensure!(
            added.first_index == next && added.added == end - next,
            "page {next}..{end} answered {}+{}",
            added.first_index,
            added.added
        );
        let pending = added.job.and_then(|j| j.counts).map_or(0, |c| c.pending);
        min_backlog = min_backlog.min(pending.saturating_sub(u64::from(added.added)));
        next = end;
    }
    Ok((started.elapsed(), calls, min_backlog))
}

fn ensure_all(done: &pb::Job, items: u32) -> anyhow::Result<()> {
    let succeeded = done.counts.map(|c| c.succeeded).unwrap_or(0);
    anyhow::ensure!(
        done.state == pb::JobState::Succeeded as i32 && succeeded == u64::from(items),
        "the job ended {:?} with {succeeded} of {items} items succeeded",
        pb::JobState::try_from(done.state)
    );
    Ok(())
}
