//! apalis + apalis-postgres peer driver (public API only). run.sh copies it
//! into a throw-away crate in its temp directory (see Cargo.toml.in), builds
//! it there with its own CARGO_TARGET_DIR, and runs each mode in its own
//! process:
//!
//!   apalis-peer-bench enqueue --url URL --items N --concurrency C
//!     `PostgresStorage::setup` (migrations, untimed), then ONE
//!     `TaskSink::push_bulk` call for the N tasks (apalis-postgres buffers
//!     them and writes ONE multi-row `INSERT ... SELECT unnest(...)`);
//!     prints {"enqueue_seconds": ...}
//!   apalis-peer-bench work --url URL --items N --concurrency C --enqueue-seconds S
//!     one worker, `WorkerBuilder::concurrency(C)` (tower ConcurrencyLimit:
//!     C tasks in flight) over `PostgresStorage` with `Config::batch_size(C)`
//!     and otherwise default settings; the library acks each finished task
//!     (status 'Done', written in batches by its `handle_events`). The run
//!     ends when every handler has run, the worker has been stopped
//!     gracefully (which flushes the pending acks) and the database shows
//!     N rows 'Done'. Prints the result JSON line (same keys as
//!     `jobvisor-bench peer`).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use apalis::prelude::*;
use apalis_postgres::{Config, PgPool, PostgresStorage};

const QUEUE: &str = "peer-bench";

/// Per-item execution counts (saturating at 255), and how many items ran.
static COUNTS: OnceLock<Vec<AtomicU8>> = OnceLock::new();
static EXECUTED: AtomicUsize = AtomicUsize::new(0);

async fn noop(item: u64) -> Result<(), BoxDynError> {
    let counts = COUNTS.get().expect("counts initialised");
    let slot = counts
        .get(item as usize)
        .ok_or_else(|| format!("item {item} out of range"))?;
    if slot
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| c.checked_add(1))
        .unwrap_or(255)
        == 0
    {
        EXECUTED.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

fn vm_hwm_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line["VmHWM:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

async fn count_status(pool: &PgPool, status: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM apalis.jobs WHERE job_type = $1 AND status = $2",
    )
    .bind(QUEUE)
    .bind(status)
    .fetch_one(pool)
    .await
}

struct Opts {
    mode: String,
    url: String,
    items: usize,
    concurrency: usize,
    enqueue_seconds: f64,
}

fn parse_args() -> Result<Opts, String> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().ok_or("mode (enqueue|work) is required")?;
    let (mut url, mut items, mut concurrency, mut enqueue_seconds) = (None, None, None, 0.0);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--url" => url = Some(value),
            "--items" => items = Some(value.parse().map_err(|e| format!("--items: {e}"))?),
            "--concurrency" => {
                concurrency = Some(value.parse().map_err(|e| format!("--concurrency: {e}"))?)
            }
            "--enqueue-seconds" => {
                enqueue_seconds = value.parse().map_err(|e| format!("--enqueue-seconds: {e}"))?
            }
            _ => return Err(format!("unexpected argument {flag}")),
        }
    }
    Ok(Opts {
        mode,
        url: url.ok_or("--url is required")?,
        items: items.ok_or("--items is required")?,
        concurrency: concurrency.ok_or("--concurrency is required")?,
        enqueue_seconds,
    })
}

async fn enqueue(opts: &Opts) -> Result<(), BoxDynError> {
    let pool = PgPool::connect(&opts.url).await?;
    PostgresStorage::setup(&pool).await?;
    let config = Config::default().queue(QUEUE);
    let mut storage = PostgresStorage::<u64>::new(&pool).with_config(config);
    let tasks: Vec<u64> = (0..opts.items as u64).collect();
    let started = Instant::now();
    storage
        .push_bulk(tasks)
        .await
        .map_err(|e| format!("push_bulk failed: {e:?}"))?;
    let seconds = started.elapsed().as_secs_f64();
    let pending = count_status(&pool, "Pending").await?;
    if pending != opts.items as i64 {
        return Err(format!("expected {} pending tasks after push_bulk, found {pending}", opts.items).into());
    }
    println!(
        "{}",
        serde_json::json!({"enqueue_seconds": seconds, "bulk_api": "TaskSink::push_bulk"})
    );
    pool.close().await;
    Ok(())
}

async fn work(opts: &Opts) -> Result<(), BoxDynError> {
    let (items, concurrency) = (opts.items, opts.concurrency);
    COUNTS
        .set((0..items).map(|_| AtomicU8::new(0)).collect())
        .map_err(|_| "counts already set")?;
    // Connected before the clock starts; the worker's storage shares it, as
    // an apalis-postgres application would.
    let pool = PgPool::connect(&opts.url).await?;
    let probe = PgPool::connect(&opts.url).await?;

    let started = Instant::now();
    let config = Config::default().queue(QUEUE).batch_size(concurrency);
    let storage = PostgresStorage::<u64>::new(&pool).with_config(config);
    let worker = WorkerBuilder::new("peer-bench-worker")
        .backend(storage)
        .concurrency(concurrency)
        .build(noop);
    worker
        .run_until(async move {
            // Give up after 10 minutes; the checks below then report it.
            let deadline = Instant::now() + Duration::from_secs(600);
            while EXECUTED.load(Ordering::Relaxed) < items && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Ok::<(), std::io::Error>(())
        })
        .await
        .map_err(|e| format!("worker failed: {e}"))?;
    // The acks are written by the library (flushed at the latest by the
    // graceful stop above); wait (bounded) until the database shows them
    // all, and count that wait as run time.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut done = count_status(&probe, "Done").await?;
    while done < items as i64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
        done = count_status(&probe, "Done").await?;
    }
    let run_seconds = (done >= items as i64).then(|| started.elapsed().as_secs_f64());
    let rss = vm_hwm_mib();

    let counts = COUNTS.get().unwrap();
    let executed = EXECUTED.load(Ordering::Relaxed);
    let duplicates = counts.iter().filter(|c| c.load(Ordering::Relaxed) > 1).count();
    let missing = counts.iter().filter(|c| c.load(Ordering::Relaxed) == 0).count();
    let (rows, retried): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE attempts > 1) FROM apalis.jobs WHERE job_type = $1",
    )
    .bind(QUEUE)
    .fetch_one(&probe)
    .await?;

    let mut note = format!(
        "one worker, .concurrency({concurrency}), Config batch_size {concurrency}, other settings default; acks batched by the library"
    );
    if run_seconds.is_none() {
        note.push_str(&format!("; TIMED OUT with {done} rows Done"));
    }
    let line = serde_json::json!({
        "system": "apalis-postgres",
        "items": items,
        "concurrency": concurrency,
        "enqueue_seconds": round(opts.enqueue_seconds, 3),
        "run_seconds": run_seconds.map(|s| round(s, 3)),
        "items_per_second": run_seconds.map(|s| round(items as f64 / s, 1)),
        "rss_mib": rss.map(|r| round(r, 1)),
        "note": note,
        "version": format!(
            "apalis {} + apalis-postgres {}, rustc {}",
            option_env!("APALIS_VERSION").unwrap_or("?"),
            option_env!("APALIS_POSTGRES_VERSION").unwrap_or("?"),
            option_env!("PEER_RUSTC_VERSION").unwrap_or("?"),
        ),
        "bulk_enqueue": "TaskSink::push_bulk (one call)",
        "completed": done,
        "executed": executed,
        "duplicates": duplicates,
        "missing": missing,
        "job_rows": rows,
        "retried": retried,
        "verified": done == items as i64 && rows == items as i64 && executed == items
            && duplicates == 0 && missing == 0,
    });
    println!("{line}");
    probe.close().await;
    pool.close().await;
    Ok(())
}

#[tokio::main]
async fn main() {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("apalis-peer-bench: {e}");
            eprintln!("usage: apalis-peer-bench <enqueue|work> --url URL --items N --concurrency C [--enqueue-seconds S]");
            std::process::exit(2);
        }
    };
    let result = match opts.mode.as_str() {
        "enqueue" => enqueue(&opts).await,
        "work" => work(&opts).await,
        other => Err(format!("mode must be enqueue or work, not {other}").into()),
    };
    if let Err(e) = result {
        eprintln!("apalis-peer-bench {}: {e}", opts.mode);
        std::process::exit(1);
    }
}
