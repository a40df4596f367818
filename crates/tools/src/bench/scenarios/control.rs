//! `bench control`: how long control calls take, on an idle server and
//! while the throughput workload runs on the same server.
//!
//! Each phase: rounds of PauseJob (graceful) + ResumeJob on one job of
//! slow items, then CancelJob on small running jobs started one at a time
//! (call→response, and call→CANCELLED seen on a WatchJob stream opened
//! before the call), plus the server's own `jobvisor_control_effect_seconds`
//! histogram over the phase. Under load, the controlled jobs are separate
//! from the load job, which is not disturbed; its items/s over the phase
//! is reported.

use crate::bench::{
    Client, Env, Rng, Setup, SleepJob, bucket_row,
    calls::{self, CancelSummary, PauseResumeSummary},
    get_job, header, is_terminal, met,
    prom::{BucketEstimate, Histogram},
};
use serde::Serialize;
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

#[derive(Debug, Clone, clap::Args)]
pub struct ControlOptions {
    /// Pause/resume rounds per phase.
    #[arg(long, default_value_t = 200)]
    pub rounds: u32,
    /// Jobs cancelled per phase (enough that the p99 is not simply the
    /// slowest one).
    #[arg(long, default_value_t = 200)]
    pub cancels: u32,
    /// Items of each load job (one runs at a time during the loaded phase;
    /// big enough that no StartJob of the next one falls in it).
    #[arg(long, default_value_t = 400_000)]
    pub load_items: u32,
    #[arg(long, default_value_t = 64)]
    pub load_concurrency: u32,
    /// Measure on the idle server only.
    #[arg(long)]
    pub idle_only: bool,
}

/// The job paused and resumed: slow items, enough not to end during the run.
pub fn slow_job() -> SleepJob {
    SleepJob::new("control-slow", 5000, 4, 100, 1)
}

/// The jobs cancelled: a few items of 60 s in 100 ms steps, two at once.
pub fn victim_job() -> SleepJob {
    SleepJob::new("control-victim", 4, 2, 60_000, 600)
}

/// One phase's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    #[serde(flatten)]
    pub pause_resume: PauseResumeSummary,
    pub cancel: CancelSummary,
    /// The server's `jobvisor_control_effect_seconds` over the phase, as
    /// bucket upper bounds: pause = call → claims stopped, cancel = call →
    /// workers stopped.
    pub server_pause_effect: BucketEstimate,
    pub server_cancel_effect: BucketEstimate,
    /// The server's `jobvisor_rpc_duration_seconds` over the phase, per
    /// method: from the request's arrival to its response, the part of the
    /// client's call → response that the server spends.
    pub server_pause_rpc: BucketEstimate,
    pub server_resume_rpc: BucketEstimate,
    pub server_cancel_rpc: BucketEstimate,
    pub seconds: f64,
}

impl Phase {
    fn worst_p99(&self) -> f64 {
        calls::worst_p99(&self.pause_resume, &self.cancel)
    }

    fn rows(&self, label: &str) -> Vec<String> {
        let mut rows = calls::rows(label, &self.pause_resume, &self.cancel);
        rows.extend([
            bucket_row(
                &format!("{label} server: pause effect"),
                &self.server_pause_effect,
            ),
            bucket_row(
                &format!("{label} server: cancel effect"),
                &self.server_cancel_effect,
            ),
            bucket_row(
                &format!("{label} server: PauseJob handled"),
                &self.server_pause_rpc,
            ),
            bucket_row(
                &format!("{label} server: ResumeJob handled"),
                &self.server_resume_rpc,
            ),
            bucket_row(
                &format!("{label} server: CancelJob handled"),
                &self.server_cancel_rpc,
            ),
        ]);
        rows
    }
}

/// The load during the loaded phase.
#[derive(Debug, Clone, Serialize)]
pub struct LoadFigures {
    pub items_per_job: u32,
    pub concurrency: u32,
    /// Load jobs started (one after the other) during the scenario.
    pub jobs: u32,
    /// Items of the load jobs that ended during the loaded phase.
    pub items_during_phase: u64,
    pub items_per_second: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Control {
    pub rounds: u32,
    pub cancels: u32,
    pub slow_job: String,
    pub victim_job: String,
    pub idle: Phase,
    pub loaded: Option<Phase>,
    pub load: Option<LoadFigures>,
    pub target_idle_p99_ms: f64,
    pub target_loaded_p99_ms: f64,
    /// Every client-side p99 (pause, resume, cancel response and effect)
    /// under the target.
    pub idle_met: bool,
    pub loaded_met: Option<bool>,
}

const TARGET_IDLE_MS: f64 = 5.0;
const TARGET_LOADED_MS: f64 = 20.0;

impl Control {
    pub fn human(&self) -> Vec<String> {
        let mut out = vec![format!(
            "control: {} pause/resume rounds on a job of {}; {} cancels of jobs of {}",
            self.rounds, self.slow_job, self.cancels, self.victim_job
        )];
        out.push(header("call → response unless said"));
        out.extend(self.idle.rows("idle"));
        if let (Some(loaded), Some(load)) = (&self.loaded, &self.load) {
            out.extend(loaded.rows("loaded"));
            out.push(format!(
                "  load: {:.0} items/s during the loaded phase ({:.1} s; jobs of {} no-op items, concurrency {}; {} load job(s))",
                load.items_per_second,
                loaded.seconds,
                load.items_per_job,
                load.concurrency,
                load.jobs
            ));
        }
        out.push(format!(
            "  targets: p99 < {TARGET_IDLE_MS} ms idle: {} (worst p99 {:.2} ms){}",
            met(self.idle_met),
            self.idle.worst_p99(),
            match (&self.loaded, self.loaded_met) {
                (Some(l), Some(ok)) => format!(
                    "; p99 < {TARGET_LOADED_MS} ms under load: {} (worst p99 {:.2} ms)",
                    met(ok),
                    l.worst_p99()
                ),
                _ => String::new(),
            }
        ));
        out
    }
}

pub async fn control(setup: &Setup, opts: &ControlOptions) -> anyhow::Result<Control> {
    let env = Env::start_setup(setup, &[], true).await?;
    let result = run(setup, &env, opts).await;
    env.finish().await;
    result
}

async fn run(setup: &Setup, env: &Env, opts: &ControlOptions) -> anyhow::Result<Control> {
    let mut client = env.client().await?;
    let mut rng = Rng::seeded();
    let slow = slow_job();
    let slow_id = slow.start(&mut client).await?.id;
    calls::wait_job(&mut client, &slow_id, Duration::from_secs(30), |j| {
        j.counts.as_ref().is_some_and(|c| c.running > 0)
    })
    .await?;

    setup.note("idle phase");
    let idle = phase(env, &mut client, &slow_id, opts, &mut rng).await?;

    let (loaded, load) = if opts.idle_only {
        (None, None)
    } else {
        setup.note("loaded phase");
        let job = SleepJob::new("control-load", opts.load_items, opts.load_concurrency, 0, 1);
        let load = Load::start(env.client().await?, job);
        // Let the load run at full speed before measuring.
        let ramp = Instant::now();
        while load.ended(&mut client).await? < u64::from(opts.load_items / 20).min(2000)
            && ramp.elapsed() < Duration::from_secs(10)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let before = load.ended(&mut client).await?;
        let loaded = phase(env, &mut client, &slow_id, opts, &mut rng).await;
        let after = load.ended(&mut client).await;
        let jobs = load.stop(&mut client).await;
        let loaded = loaded?;
        let during = after? - before;
        let figures = LoadFigures {
            items_per_job: opts.load_items,
            concurrency: opts.load_concurrency,
            jobs: jobs?,
            items_during_phase: during,
            items_per_second: during as f64 / loaded.seconds,
        };
        (Some(loaded), Some(figures))
    };
    calls::cancel_quietly(&mut client, &slow_id).await;

    Ok(Control {
        rounds: opts.rounds,
        cancels: opts.cancels,
        slow_job: slow.describe(),
        victim_job: victim_job().describe(),
        idle_met: idle.worst_p99() < TARGET_IDLE_MS,
        loaded_met: loaded.as_ref().map(|l| l.worst_p99() < TARGET_LOADED_MS),
        idle,
        loaded,
        load,
        target_idle_p99_ms: TARGET_IDLE_MS,
        target_loaded_p99_ms: TARGET_LOADED_MS,
    })
}

/// One phase: pause/resume rounds on `slow`, then the cancels, with the
/// server's histogram over the same span.
async fn phase(
    env: &Env,
    client: &mut Client,
    slow: &str,
    opts: &ControlOptions,
    rng: &mut Rng,
) -> anyhow::Result<Phase> {
    let before = env.scrape().await?;
    let started = Instant::now();
    let pause_resume = calls::pause_resume(client, &[slow.to_string()], opts.rounds, rng).await?;
    let cancels = calls::cancel_victims(client, &victim_job(), opts.cancels).await?;
    let seconds = started.elapsed().as_secs_f64();
    // The server records a cancel's effect just after committing it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = env.scrape().await?;
    // A server histogram over the phase (the scrape after minus the one
    // before), as bucket bounds.
    let over_phase = |name: &str, label: (&str, &str)| {
        Histogram::parse(&after, name, &[label])
            .since(&Histogram::parse(&before, name, &[label]))
            .estimate()
    };
    let effect = |op: &str| over_phase("jobvisor_control_effect_seconds", ("op", op));
    let handled = |method: &str| {
        let method = format!("jobvisor.v1.JobService/{method}");
        over_phase("jobvisor_rpc_duration_seconds", ("method", &method))
    };
    Ok(Phase {
        pause_resume: pause_resume.summary(),
        cancel: cancels.summary(),
        server_pause_effect: effect("pause"),
        server_cancel_effect: effect("cancel"),
        server_pause_rpc: handled("PauseJob"),
        server_resume_rpc: handled("ResumeJob"),
        server_cancel_rpc: handled("CancelJob"),
        seconds,
    })
}

/// The throughput workload in the background: one job of no-op items at a
/// time, the next started when one ends, until stopped.
struct Load {
    state: Arc<Mutex<LoadState>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

#[derive(Default)]
struct LoadState {
    /// Items of the load jobs that have ended.
    ended_items: u64,
    /// The one running now.
    current: Option<String>,
    jobs: u32,
}

impl Load {
    fn start(mut client: Client, job: SleepJob) -> Load {
        let state = Arc::new(Mutex::new(LoadState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (state, stop) = (state.clone(), stop.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    let id = job.start(&mut client).await?.id;
                    {
                        let mut s = state.lock().expect("load state");
                        s.current = Some(id.clone());
                        s.jobs += 1;
                    }
                    while !stop.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        let j = get_job(&mut client, &id).await?;
                        if is_terminal(j.state) {
                            let mut s = state.lock().expect("load state");
                            s.ended_items += items_ended(&j);
                            s.current = None;
                            break;
                        }
                    }
                }
                Ok(())
            }
        });
        Load { state, stop, task }
    }

    /// Items of the load jobs ended so far.
    async fn ended(&self, client: &mut Client) -> anyhow::Result<u64> {
        let (done, current) = {
            let s = self.state.lock().expect("load state");
            (s.ended_items, s.current.clone())
        };
        Ok(match current {
            Some(id) => done + items_ended(&get_job(client, &id).await?),
            None => done,
        })
    }

    /// Stops starting jobs, cancels the one running, and says how many
    /// were started.
    async fn stop(self, client: &mut Client) -> anyhow::Result<u32> {
        self.stop.store(true, Ordering::Relaxed);
        let result = self.task.await;
        let (current, jobs) = {
            let s = self.state.lock().expect("load state");
            (s.current.clone(), s.jobs)
        };
        if let Some(id) = current {
            calls::cancel_quietly(client, &id).await;
        }
        result??;
        Ok(jobs)
    }
}

fn items_ended(job: &jobvisor::pb::Job) -> u64 {
    job.counts
        .as_ref()
        .map(|c| c.succeeded + c.failed + c.cancelled)
        .unwrap_or(0)
}
