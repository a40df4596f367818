//! Several replicas on one PostgreSQL (`serve --multi-replica`): three real
//! server processes on 127.0.0.1 ports and one fresh database per test,
//! driven through the generated gRPC client. Control calls landing on any
//! replica, an owner killed (SIGKILL), terminated (SIGTERM) or frozen
//! (SIGSTOP, a zombie), a rolling restart, and a watcher across an owner
//! change. After each: no item lost, none completed twice (the job's
//! counters match its items, one success each).

use jobvisor::pb::{self, job_service_client::JobServiceClient};
use jobvisor_testkit::{
    db::TestDb,
    process::{ServerProcess, ServerSpec, free_port},
};
use sqlx::PgPool;
use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};
use tonic::transport::Channel;

/// Three (or more) replicas on one fresh database.
struct Replicas {
    db: TestDb,
    specs: Vec<ServerSpec>,
    servers: Vec<Option<ServerProcess>>,
    pool: PgPool,
    _logs: tempfile::TempDir,
}

impl Replicas {
    async fn start(n: usize, lease_timeout: &str) -> Replicas {
        let db = TestDb::create().await;
        let url = db.url.clone();
        let logs = tempfile::Builder::new()
            .prefix("jv-replicas-")
            .tempdir()
            .unwrap();
        let specs: Vec<ServerSpec> = (0..n)
            .map(|i| ServerSpec {
                binary: PathBuf::from(env!("CARGO_BIN_EXE_jobvisor")),
                addr: SocketAddr::from(([127, 0, 0, 1], free_port().unwrap())),
                database_url: url.clone(),
                args: vec![
                    "--multi-replica".into(),
                    "--lease-timeout".into(),
                    lease_timeout.into(),
                    "--replica-id".into(),
                    name(i),
                    "--shutdown-grace".into(),
                    "5s".into(),
                ],
                log: logs.path().join(format!("{}.log", name(i))),
                env: vec![],
                cwd: None,
            })
            .collect();
        // The first applies the migrations; the others start together.
        let mut servers = vec![Some(ServerProcess::start(&specs[0]).await.unwrap())];
        let rest = futures::future::join_all(specs[1..].iter().map(ServerProcess::start)).await;
        servers.extend(rest.into_iter().map(|s| Some(s.unwrap())));
        let pool = PgPool::connect(&url).await.unwrap();
        Replicas {
            db,
            specs,
            servers,
            pool,
            _logs: logs,
        }
    }

    async fn client(&self, i: usize) -> JobServiceClient<Channel> {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", self.specs[i].addr))
                .unwrap()
                .connect()
                .await
                .unwrap();
        JobServiceClient::new(channel)
    }

    fn server(&mut self, i: usize) -> &mut ServerProcess {
        self.servers[i].as_mut().expect("replica running")
    }

    async fn restart(&mut self, i: usize) {
        self.servers[i] = Some(ServerProcess::start(&self.specs[i]).await.unwrap());
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.specs[i].log).unwrap_or_default()
    }

    /// The process id of replica `i`.
    fn pid(&self, i: usize) -> u32 {
        self.servers[i].as_ref().expect("replica running").pid()
    }

    /// The replica whose lease on `job` is valid now.
    async fn owner(&self, job: &str) -> Option<usize> {
        let owner: Option<String> = sqlx::query_scalar(
            "SELECT owner FROM job_leases WHERE job_id = $1::uuid AND expires_at > now()",
        )
        .bind(job)
        .fetch_optional(&self.pool)
        .await
        .unwrap();
        owner.and_then(|o| (0..self.specs.len()).find(|i| name(*i) == o))
    }

    async fn wait_owner(&self, job: &str, within: Duration, ok: impl Fn(usize) -> bool) -> usize {
        let deadline = Instant::now() + within;
        loop {
            if let Some(o) = self.owner(job).await
                && ok(o)
            {
                return o;
            }
            assert!(
                Instant::now() < deadline,
                "no acceptable owner for job {job} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Counters and item states agree: nothing lost, nothing counted twice.
    async fn assert_consistent(&self, job: &str) -> (i64, i64, i64) {
        let (total, succeeded, cancelled, running, failed): (i64, i64, i64, i64, i64) =
            sqlx::query_as(
                "SELECT total_items, succeeded_items, cancelled_items, running_items, \
                 failed_items FROM jobs WHERE id = $1::uuid",
            )
            .bind(job)
            .fetch_one(&self.pool)
            .await
            .unwrap();
        let (items, done, stopped, in_flight, attempts_max): (i64, i64, i64, i64, Option<i32>) =
            sqlx::query_as(
                "SELECT count(*), count(*) FILTER (WHERE state = 2), \
                 count(*) FILTER (WHERE state = 4), count(*) FILTER (WHERE state = 1), \
                 max(attempts) FROM items WHERE job_id = $1::uuid",
            )
            .bind(job)
            .fetch_one(&self.pool)
            .await
            .unwrap();
        assert_eq!(total, items, "job {job}: total");
        assert_eq!(succeeded, done, "job {job}: succeeded counter vs items");
        assert_eq!(cancelled, stopped, "job {job}: cancelled counter vs items");
        assert_eq!(running, in_flight, "job {job}: running counter vs items");
        assert_eq!(failed, 0, "job {job}: no item may fail");
        // Attempts given back when an item stopped for a takeover: none
        // ran out of attempts.
        assert!(attempts_max.unwrap_or(0) <= 3, "job {job}: attempts");
        (succeeded, cancelled, running)
    }

    async fn stop(mut self) {
        for s in self.servers.iter_mut() {
            if let Some(mut s) = s.take() {
                let _ = s.kill9();
            }
        }
        self.pool.close().await;
        self.db.drop_db().await;
    }
}

fn name(i: usize) -> String {
    ["a", "b", "c", "d"][i].to_string()
}

fn sleep_job(
    name: &str,
    items: usize,
    concurrency: u32,
    ms: u32,
    steps: u32,
) -> pb::StartJobRequest {
    pb::StartJobRequest {
        name: name.into(),
        executor: "sleep".into(),
        items: (0..items).map(|i| format!("item-{i}")).collect(),
        concurrency,
        params: [
            ("duration_ms".to_string(), ms.to_string()),
            ("steps".to_string(), steps.to_string()),
        ]
        .into(),
        ..Default::default()
    }
}

async fn get(client: &mut JobServiceClient<Channel>, id: &str) -> pb::Job {
    client
        .get_job(pb::GetJobRequest { job_id: id.into() })
        .await
        .unwrap()
        .into_inner()
}

async fn wait_state(
    client: &mut JobServiceClient<Channel>,
    id: &str,
    state: pb::JobState,
    within: Duration,
) -> pb::Job {
    let deadline = Instant::now() + within;
    loop {
        let job = get(client, id).await;
        if job.state == state as i32 {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} is {:?}, not {state:?}, after {within:?}",
            pb::JobState::try_from(job.state)
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn succeeded(job: &pb::Job) -> u64 {
    job.counts.as_ref().map_or(0, |c| c.succeeded)
}

async fn wait_progress(client: &mut JobServiceClient<Channel>, id: &str, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while succeeded(&get(client, id).await) < at_least {
        assert!(Instant::now() < deadline, "job {id} made no progress");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The items claimed at least once so far. While a job is paused no item
/// joins them; items claimed but never started may leave (the transition
/// to PAUSED releases them and refunds their attempt).
async fn claimed_items(pool: &PgPool, id: &str) -> std::collections::BTreeSet<i32> {
    sqlx::query_scalar("SELECT idx FROM items WHERE job_id = $1::uuid AND attempts > 0")
        .bind(id)
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

#[tokio::test]
async fn control_calls_reach_the_owner_wherever_they_land() {
    let r = Replicas::start(3, "3s").await;
    let mut first = r.client(0).await;
    let job = first
        .start_job(sleep_job("routed", 400, 4, 100, 2))
        .await
        .unwrap()
        .into_inner();
    let owner = r
        .wait_owner(&job.id, Duration::from_secs(5), |_| true)
        .await;
    let (other, third) = ((owner + 1) % 3, (owner + 2) % 3);
    let mut at_owner = r.client(owner).await;
    let mut at_other = r.client(other).await;
    let mut at_third = r.client(third).await;
    wait_progress(&mut at_owner, &job.id, 4).await;

    // GetJob on any replica names the lease holder and its process.
    let shown = get(&mut at_third, &job.id).await.owner.expect("an owner");
    assert_eq!(shown.server, name(owner));
    assert_eq!(shown.pid, r.pid(owner));
    assert!(!shown.host.is_empty());
    assert!(shown.since_time.is_some());

    // Pause through a replica that does not own the job.
    let asked = Instant::now();
    let paused = at_other
        .pause_job(pb::PauseJobRequest {
            job_id: job.id.clone(),
            mode: pb::PauseMode::Graceful as i32,
            reason: "maintenance".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let remote_pause = asked.elapsed();
    assert!(
        paused.state == pb::JobState::Pausing as i32 || paused.state == pb::JobState::Paused as i32,
        "{paused:?}"
    );
    // The owner acknowledged: nothing new is claimed after the answer.
    let claimed_at_answer = claimed_items(&r.pool, &job.id).await;
    wait_state(
        &mut at_third,
        &job.id,
        pb::JobState::Paused,
        Duration::from_secs(10),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let claimed_since = claimed_items(&r.pool, &job.id).await;
    assert!(
        claimed_since.is_subset(&claimed_at_answer),
        "claimed after the pause answered: {:?}",
        claimed_since
            .difference(&claimed_at_answer)
            .collect::<Vec<_>>()
    );
    let done_while_paused = succeeded(&get(&mut at_third, &job.id).await);

    // Resume through the third replica: the job continues where it was.
    let asked = Instant::now();
    let resumed = at_third
        .resume_job(pb::ResumeJobRequest {
            job_id: job.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let remote_resume = asked.elapsed();
    assert_eq!(resumed.state, pb::JobState::Running as i32);
    wait_progress(&mut at_other, &job.id, done_while_paused + 4).await;

    // A pause through the owner itself, for comparison.
    let asked = Instant::now();
    at_owner
        .pause_job(pb::PauseJobRequest {
            job_id: job.id.clone(),
            mode: pb::PauseMode::Immediate as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    let local_pause = asked.elapsed();
    wait_state(
        &mut at_owner,
        &job.id,
        pb::JobState::Paused,
        Duration::from_secs(10),
    )
    .await;
    at_other
        .resume_job(pb::ResumeJobRequest {
            job_id: job.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();

    // Cancel through the owner.
    let cancelled = at_owner
        .cancel_job(pb::CancelJobRequest {
            job_id: job.id.clone(),
            reason: "done testing".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        cancelled.state == pb::JobState::Cancelling as i32
            || cancelled.state == pb::JobState::Cancelled as i32
    );
    wait_state(
        &mut at_third,
        &job.id,
        pb::JobState::Cancelled,
        Duration::from_secs(10),
    )
    .await;
    let (ok, stopped, running) = r.assert_consistent(&job.id).await;
    assert_eq!(ok + stopped, 400);
    assert_eq!(running, 0);

    // A job started paused has no owner until it is resumed, through any
    // replica; an ended job is deleted through any replica.
    let mut held = sleep_job("held", 20, 2, 10, 1);
    held.start_paused = true;
    let held = first.start_job(held).await.unwrap().into_inner();
    assert_eq!(held.state, pb::JobState::Paused as i32);
    at_third
        .resume_job(pb::ResumeJobRequest {
            job_id: held.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let done = wait_state(
        &mut at_other,
        &held.id,
        pb::JobState::Succeeded,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(succeeded(&done), 20);
    // A rate limit changed through a replica that does not own the job:
    // the owner keeps to the new one (40 items at 2 a second would take
    // 20 s).
    let mut paced = sleep_job("paced", 40, 4, 0, 1);
    paced.rate_limit = 2;
    let paced = first.start_job(paced).await.unwrap().into_inner();
    let paced_owner = r
        .wait_owner(&paced.id, Duration::from_secs(5), |_| true)
        .await;
    let mut elsewhere = r.client((paced_owner + 1) % 3).await;
    elsewhere
        .set_job_rate_limit(pb::SetJobRateLimitRequest {
            job_id: paced.id.clone(),
            rate_limit: 1_000,
            ..Default::default()
        })
        .await
        .unwrap();
    let done = wait_state(
        &mut elsewhere,
        &paced.id,
        pb::JobState::Succeeded,
        Duration::from_secs(8),
    )
    .await;
    assert_eq!(succeeded(&done), 40);
    for id in [&job.id, &held.id] {
        at_other
            .delete_job(pb::DeleteJobRequest { job_id: id.clone() })
            .await
            .unwrap();
        let status = at_owner
            .get_job(pb::GetJobRequest { job_id: id.clone() })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    }
    println!(
        "pause via another replica {remote_pause:?}, resume via another {remote_resume:?}, \
         pause via the owner {local_pause:?}"
    );
    // Bounded: the owner's acknowledgement, not the 2 s fallback.
    assert!(remote_pause < Duration::from_secs(1), "{remote_pause:?}");
    r.stop().await;
}

#[tokio::test]
async fn a_killed_owner_s_job_is_adopted_and_the_owner_back_does_not_take_it() {
    let mut r = Replicas::start(3, "2s").await;
    let mut client = r.client(0).await;
    let job = client
        .start_job(sleep_job("failover", 80, 4, 300, 3))
        .await
        .unwrap()
        .into_inner();
    let owner = r
        .wait_owner(&job.id, Duration::from_secs(5), |_| true)
        .await;
    let watcher = (owner + 1) % 3;
    let mut at_watcher = r.client(watcher).await;
    wait_progress(&mut at_watcher, &job.id, 6).await;

    r.server(owner).kill9().unwrap();
    let killed = Instant::now();
    let adopter = r
        .wait_owner(
            &job.id,
            Duration::from_secs(4) + Duration::from_secs(2),
            |o| o != owner,
        )
        .await;
    let adoption = killed.elapsed();
    println!(
        "adopted by {} {adoption:?} after the kill (lease 2s)",
        name(adopter)
    );
    assert!(adoption <= Duration::from_secs(4), "{adoption:?}");

    // The killed replica comes back with the same id: it must not take
    // the job back while the adopter holds it.
    r.restart(owner).await;
    let mut at_adopter = r.client(adopter).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = get(&mut at_adopter, &job.id).await;
        if now.state == pb::JobState::Succeeded as i32 {
            break;
        }
        if let Some(o) = r.owner(&job.id).await {
            assert_ne!(o, owner, "the restarted replica took the job back");
        }
        assert!(Instant::now() < deadline, "the job did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ok, _, _) = r.assert_consistent(&job.id).await;
    assert_eq!(ok, 80);
    // The log says who took it over.
    let history: Vec<String> =
        sqlx::query_scalar("SELECT kind FROM job_events WHERE job_id = $1::uuid ORDER BY seq")
            .bind(&job.id)
            .fetch_all(&r.pool)
            .await
            .unwrap();
    assert!(history.iter().any(|k| k == "owner_changed"), "{history:?}");
    r.stop().await;
}

#[tokio::test]
async fn a_terminated_owner_hands_its_job_over_without_waiting_for_the_lease() {
    // A long lease: only a hand-over explains a quick move.
    let mut r = Replicas::start(3, "20s").await;
    let mut client = r.client(1).await;
    let job = client
        .start_job(sleep_job("handover", 60, 3, 300, 3))
        .await
        .unwrap()
        .into_inner();
    let owner = r
        .wait_owner(&job.id, Duration::from_secs(5), |_| true)
        .await;
    let mut at_other = r.client((owner + 1) % 3).await;
    wait_progress(&mut at_other, &job.id, 3).await;

    let asked = Instant::now();
    let status = r
        .server(owner)
        .terminate(Duration::from_secs(10))
        .await
        .unwrap();
    assert!(status.success(), "exit status {status}");
    let next = r
        .wait_owner(&job.id, Duration::from_secs(5), |o| o != owner)
        .await;
    let moved = asked.elapsed();
    println!(
        "handed over to {} {moved:?} after SIGTERM (lease 20s)",
        name(next)
    );
    assert!(moved < Duration::from_secs(5), "{moved:?}");
    wait_state(
        &mut at_other,
        &job.id,
        pb::JobState::Succeeded,
        Duration::from_secs(60),
    )
    .await;
    let (ok, _, _) = r.assert_consistent(&job.id).await;
    assert_eq!(ok, 60);
    r.stop().await;
}

/// idx, state, attempts, lease, checkpoint, updated_at
type ItemRow = (
    i32,
    i16,
    i32,
    Option<i64>,
    Option<Vec<u8>>,
    Option<chrono::DateTime<chrono::Utc>>,
);

/// Everything the store holds about a job, to compare before and after.
async fn snapshot(pool: &PgPool, id: &str) -> String {
    let job: (String, i64, i64, i64, i64, chrono::DateTime<chrono::Utc>) = sqlx::query_as(
        "SELECT state, last_seq, succeeded_items, running_items, cancelled_items, updated_at \
         FROM jobs WHERE id = $1::uuid",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap();
    let items: Vec<ItemRow> = sqlx::query_as(
        "SELECT idx, state, attempts, lease, checkpoint, updated_at FROM items \
             WHERE job_id = $1::uuid ORDER BY idx",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap();
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM job_events WHERE job_id = $1::uuid")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap();
    format!("{job:?} {items:?} {events}")
}

#[tokio::test]
async fn a_frozen_owner_that_wakes_up_cannot_write_for_the_job_it_lost() {
    let mut r = Replicas::start(3, "2s").await;
    let mut client = r.client(0).await;
    // Items long enough that the frozen owner wakes up in the middle of
    // some, with results and checkpoints to write.
    let job = client
        .start_job(sleep_job("zombie", 40, 4, 1500, 5))
        .await
        .unwrap()
        .into_inner();
    let owner = r
        .wait_owner(&job.id, Duration::from_secs(5), |_| true)
        .await;
    let mut at_other = r.client((owner + 1) % 3).await;
    wait_progress(&mut at_other, &job.id, 4).await;
    tokio::time::sleep(Duration::from_millis(400)).await;

    r.server(owner).freeze(true).unwrap();
    let adopter = r
        .wait_owner(&job.id, Duration::from_secs(6), |o| o != owner)
        .await;
    let mut at_adopter = r.client(adopter).await;
    // Paused by the new owner: from now on the job must not change at all.
    at_adopter
        .pause_job(pb::PauseJobRequest {
            job_id: job.id.clone(),
            mode: pb::PauseMode::Immediate as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    wait_state(
        &mut at_adopter,
        &job.id,
        pb::JobState::Paused,
        Duration::from_secs(10),
    )
    .await;
    let before = snapshot(&r.pool, &job.id).await;

    r.server(owner).freeze(false).unwrap();
    // Long enough for its items to finish, its heartbeat to run and its
    // writes to be tried.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = snapshot(&r.pool, &job.id).await;
    assert_eq!(before, after, "the woken owner changed the job it lost");
    assert!(
        r.log(owner).contains("lease"),
        "the woken owner should say it lost the lease:\n{}",
        r.log(owner)
    );

    // The old owner is a healthy replica again: resume through it.
    let mut at_old = r.client(owner).await;
    at_old
        .resume_job(pb::ResumeJobRequest {
            job_id: job.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    wait_state(
        &mut at_old,
        &job.id,
        pb::JobState::Succeeded,
        Duration::from_secs(60),
    )
    .await;
    let (ok, _, _) = r.assert_consistent(&job.id).await;
    assert_eq!(ok, 40);
    r.stop().await;
}

#[tokio::test]
async fn a_rolling_restart_of_every_replica_loses_nothing() {
    let mut r = Replicas::start(3, "3s").await;
    let mut client = r.client(0).await;
    let mut jobs = Vec::new();
    for i in 0..9 {
        let job = client
            .start_job(sleep_job(&format!("rolling-{i}"), 50, 2, 150, 3))
            .await
            .unwrap()
            .into_inner();
        jobs.push(job.id);
    }
    // Spread over the replicas.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut owners = std::collections::BTreeSet::new();
    for id in &jobs {
        if let Some(o) = r.owner(id).await {
            owners.insert(o);
        }
    }
    assert_eq!(owners.len(), 3, "new jobs go to every replica: {owners:?}");

    for i in 0..3 {
        let status = r
            .server(i)
            .terminate(Duration::from_secs(10))
            .await
            .unwrap();
        assert!(status.success());
        r.restart(i).await;
    }
    let mut client = r.client(2).await;
    for id in &jobs {
        wait_state(
            &mut client,
            id,
            pb::JobState::Succeeded,
            Duration::from_secs(90),
        )
        .await;
        let (ok, _, _) = r.assert_consistent(id).await;
        assert_eq!(ok, 50);
    }
    r.stop().await;
}

#[tokio::test]
async fn a_watcher_on_another_replica_sees_every_event_across_an_owner_change() {
    let mut r = Replicas::start(3, "2s").await;
    let mut client = r.client(0).await;
    let job = client
        .start_job(sleep_job("watched", 60, 3, 200, 2))
        .await
        .unwrap()
        .into_inner();
    let owner = r
        .wait_owner(&job.id, Duration::from_secs(5), |_| true)
        .await;
    let watcher = (owner + 2) % 3;
    let mut at_watcher = r.client(watcher).await;
    let mut stream = at_watcher
        .watch_job(pb::WatchJobRequest {
            job_id: job.id.clone(),
            from_sequence: 0,
            window: None,
        })
        .await
        .unwrap()
        .into_inner();
    let collect = tokio::spawn(async move {
        let mut stored = Vec::new();
        while let Some(event) = stream.message().await.unwrap() {
            use pb::job_event::Kind;
            match event.kind {
                Some(Kind::Snapshot(_)) | Some(Kind::Progress(_)) | None => {}
                Some(kind) => stored.push((event.sequence, kind)),
            }
        }
        stored
    });
    wait_progress(&mut at_watcher, &job.id, 6).await;
    // Pause and resume through the owner's neighbour, then kill the owner.
    let mut at_neighbour = r.client((owner + 1) % 3).await;
    at_neighbour
        .pause_job(pb::PauseJobRequest {
            job_id: job.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    at_neighbour
        .resume_job(pb::ResumeJobRequest {
            job_id: job.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    r.server(owner).kill9().unwrap();
    let stored = tokio::time::timeout(Duration::from_secs(60), collect)
        .await
        .expect("the stream ended with the job")
        .unwrap();
    let sequences: Vec<u64> = stored.iter().map(|(s, _)| *s).collect();
    let expected: Vec<u64> = (1..=sequences.len() as u64).collect();
    assert_eq!(sequences, expected, "gap-free, in order, from 1");
    use pb::job_event::Kind;
    assert!(
        stored
            .iter()
            .any(|(_, k)| matches!(k, Kind::OwnerChanged(o) if o.owner != name(owner))),
        "the owner change is in the stream: {stored:?}"
    );
    assert!(
        matches!(stored.last(), Some((_, Kind::StateChanged(c))) if c.to == pb::JobState::Succeeded as i32),
        "ends with the terminal event"
    );
    r.assert_consistent(&job.id).await;
    r.stop().await;
}

/// Items added through replicas that do not own the job reach its owner:
/// an open job grows a page through each replica, runs every item once,
/// and ends when closed through one that does not own it.
#[tokio::test]
async fn items_added_through_any_replica_reach_the_owner() {
    let r = Replicas::start(3, "3s").await;
    let mut first = r.client(0).await;
    let job = first
        .start_job(pb::StartJobRequest {
            open: true,
            ..sleep_job("grown", 10, 4, 5, 1)
        })
        .await
        .unwrap()
        .into_inner();
    let owner = r
        .wait_owner(&job.id, Duration::from_secs(5), |_| true)
        .await;
    wait_progress(&mut first, &job.id, 10).await;
    for (n, replica) in [(owner + 1) % 3, (owner + 2) % 3, owner]
        .into_iter()
        .enumerate()
    {
        let mut client = r.client(replica).await;
        let page = pb::AddItemsRequest {
            job_id: job.id.clone(),
            items: (0..20).map(|k| format!("late-{n}-{k}")).collect(),
            request_id: format!("page-{n}"),
            close: false,
        };
        let added = client.add_items(page).await.unwrap().into_inner();
        assert_eq!(added.first_index, 10 + 20 * n as u32);
        assert_eq!(added.added, 20);
        wait_progress(&mut client, &job.id, 10 + 20 * (n as u64 + 1)).await;
        let job = get(&mut client, &job.id).await;
        assert_eq!(job.state, pb::JobState::Running as i32, "open: {job:?}");
    }
    assert_eq!(
        r.owner(&job.id).await,
        Some(owner),
        "the owner kept the job"
    );
    let mut other = r.client((owner + 1) % 3).await;
    other
        .add_items(pb::AddItemsRequest {
            job_id: job.id.clone(),
            close: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let done = wait_state(
        &mut other,
        &job.id,
        pb::JobState::Succeeded,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(succeeded(&done), 70);
    r.assert_consistent(&job.id).await;
    r.stop().await;
}

/// CancelItems through a replica that does not own the job: the owner
/// learns of it from the database, finds which of its items are cancelled
/// and interrupts them at once (not at a checkpoint: these items have
/// none), and acknowledges, so the call does not wait for the ack timeout.
#[tokio::test]
async fn items_cancelled_through_another_replica_are_interrupted_by_the_owner() {
    let r = Replicas::start(2, "3s").await;
    let mut first = r.client(0).await;
    // Three items of a minute each, in one step; two at once.
    let job = first
        .start_job(sleep_job("cancel-items", 3, 2, 60_000, 1))
        .await
        .unwrap()
        .into_inner();
    let owner = r
        .wait_owner(&job.id, Duration::from_secs(5), |_| true)
        .await;
    let running = |pool: PgPool, id: String| async move {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM items WHERE job_id = $1::uuid AND state = 1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap();
        n
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while running(r.pool.clone(), job.id.clone()).await < 2 {
        assert!(Instant::now() < deadline, "two items never ran");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut other = r.client(1 - owner).await;
    let asked = Instant::now();
    let done = other
        .cancel_items(pb::CancelItemsRequest {
            job_id: job.id.clone(),
            indexes: vec![0],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((done.cancelled, done.interrupted), (1, vec![0]));
    assert!(
        asked.elapsed() < Duration::from_millis(1500),
        "the owner acknowledged: {:?}",
        asked.elapsed()
    );
    // Item 0's worker is free at once: it starts item 2.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let attempts: i32 =
            sqlx::query_scalar("SELECT attempts FROM items WHERE job_id = $1::uuid AND idx = 2")
                .bind(&job.id)
                .fetch_one(&r.pool)
                .await
                .unwrap();
        if attempts > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "item 0's worker was not freed: item 2 never started"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    other
        .cancel_items(pb::CancelItemsRequest {
            job_id: job.id.clone(),
            range: Some(pb::ItemRange { first: 1, last: 2 }),
            ..Default::default()
        })
        .await
        .unwrap();
    let ended = wait_state(
        &mut other,
        &job.id,
        pb::JobState::Succeeded,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(ended.counts.unwrap().cancelled, 3);
    assert_eq!(r.assert_consistent(&job.id).await, (0, 3, 0));
    assert_eq!(
        r.owner(&job.id).await,
        None,
        "the owner let the ended job go"
    );
    r.stop().await;
}

/// RunJob for one name through different replicas at once makes one job:
/// one call starts it, the others find it running; paused through one
/// replica, a run through another resumes it.
#[tokio::test]
async fn runs_of_one_name_through_different_replicas_make_one_job() {
    let r = Replicas::start(3, "3s").await;
    let request = || pb::RunJobRequest {
        job: Some(sleep_job("nightly-quotes", 200, 2, 50, 2)),
        reason: "nightly".into(),
    };
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(r.client(i).await);
    }
    // Two calls through each replica, all at once.
    let calls = clients.iter().cycle().take(6).map(|c| {
        let mut c = c.clone();
        let request = request();
        async move { c.run_job(request).await.map(|a| a.into_inner()) }
    });
    let answers = futures::future::join_all(calls).await;
    let mut ids = std::collections::BTreeSet::new();
    let mut started = 0;
    for answer in answers {
        let answer = answer.expect("every run succeeds");
        ids.insert(answer.job.unwrap().id);
        match pb::RunOutcome::try_from(answer.outcome).unwrap() {
            pb::RunOutcome::Started => started += 1,
            pb::RunOutcome::AlreadyRunning => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(started, 1, "one call started it");
    assert_eq!(ids.len(), 1, "every call answered the same job");
    let id = ids.into_iter().next().unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE name = 'nightly-quotes'")
        .fetch_one(&r.pool)
        .await
        .unwrap();
    assert_eq!(stored, 1);

    // Paused through one replica, resumed by a run through another.
    clients[0]
        .pause_job(pb::PauseJobRequest {
            job_id: id.clone(),
            mode: pb::PauseMode::Immediate as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    wait_state(
        &mut clients[1],
        &id,
        pb::JobState::Paused,
        Duration::from_secs(10),
    )
    .await;
    let answer = clients[2].run_job(request()).await.unwrap().into_inner();
    assert_eq!(answer.outcome, pb::RunOutcome::Resumed as i32);
    assert_eq!(answer.job.unwrap().id, id);
    wait_state(
        &mut clients[1],
        &id,
        pb::JobState::Running,
        Duration::from_secs(10),
    )
    .await;
    // Counters checked on a job at rest: cancelled through the third.
    clients[2]
        .cancel_job(pb::CancelJobRequest {
            job_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    wait_state(
        &mut clients[0],
        &id,
        pb::JobState::Cancelled,
        Duration::from_secs(10),
    )
    .await;
    r.assert_consistent(&id).await;
    r.stop().await;
}

#[test]
fn the_embedded_store_refuses_multi_replica_mode() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jobvisor"))
        .args(["serve", "--multi-replica", "--listen", "127.0.0.1:0"])
        .env_remove("DATABASE_URL")
        .env("JOBVISOR_METRICS_LISTEN", "off")
        .env("JOBVISOR_HTTP_LISTEN", "off")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--multi-replica") && stderr.contains("PostgreSQL"),
        "{stderr}"
    );
}
