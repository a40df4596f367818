//! Where each scenario runs: a fresh PostgreSQL database (created and
//! dropped around the scenario) or a fresh SQLite file in a temporary
//! directory, both behind `Arc<dyn Store>`; plus the small typed helpers
//! every scenario shares and the invariants checked after every step.

use futures::FutureExt;
use jobvisor::{
    domain::{EventBody, Item, ItemCounts, ItemState, Job, JobEvent, JobId, JobSpec, Provenance},
    store::{
        Batch, BatchOutcome, ClaimRequest, ClaimedItem, ItemQuery, ItemWrite, JobQuery, Store,
        StoreError, TransitionWrite, WriteKind,
        postgres::{PgConfig, PgStore},
        sqlite::SqliteStore,
    },
};
use jobvisor_testkit::db::TestDb;
use std::{
    collections::BTreeMap,
    future::Future,
    panic::{AssertUnwindSafe, resume_unwind},
    sync::Arc,
};

// ---------------------------------------------------------------- stores

/// The prefix of the suite's databases.
const PREFIX: &str = "jv_conf_";

/// Runs `scenario` against a migrated PgStore on a database of its own,
/// dropped afterwards whether the scenario passed or not.
pub async fn on_postgres<F, Fut>(scenario: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()>,
{
    on_postgres_store(|store: Arc<PgStore>| scenario(store)).await
}

/// [`on_postgres`] with the PostgreSQL store itself (for what only it
/// has, such as leases).
pub async fn on_postgres_store<F, Fut>(scenario: F)
where
    F: FnOnce(Arc<PgStore>) -> Fut,
    Fut: Future<Output = ()>,
{
    on_empty_database(|url| async move {
        let store = PgStore::connect(&PgConfig::new(url))
            .await
            .expect("connect to the test database and migrate");
        scenario(Arc::new(store)).await;
    })
    .await
}

/// Runs `scenario` with the URL of a new, empty database of its own (not
/// migrated), dropped afterwards whether the scenario passed or not.
pub async fn on_empty_database<F, Fut>(scenario: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let db = TestDb::create_with_prefix(PREFIX).await;
    let result = AssertUnwindSafe(scenario(db.url.clone()))
        .catch_unwind()
        .await;
    let dropped = db.try_drop().await;
    if let Err(panic) = result {
        resume_unwind(panic);
    }
    dropped.expect("drop the test database");
}

/// Runs `scenario` against a SqliteStore on a new file in a temporary
/// directory (removed afterwards), in a subdirectory that does not exist
/// yet: `open` must create it.
pub async fn on_sqlite<F, Fut>(scenario: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let store = SqliteStore::open(&dir.path().join("data").join("jobvisor.db"))
        .await
        .expect("open the SQLite store");
    scenario(Arc::new(store.clone())).await;
    store.close().await;
}

// --------------------------------------------------------------- helpers

/// A valid spec of `n` items named `item-<i>`, no request id.
pub fn spec(n: usize) -> JobSpec {
    JobSpec {
        name: "conformance".into(),
        executor: "sleep".into(),
        items: (0..n).map(|i| format!("item-{i}")).collect(),
        concurrency: 2,
        params: BTreeMap::new(),
        labels: BTreeMap::new(),
        max_attempts: 3,
        request_id: None,
        request_scope: String::new(),
        policy: Default::default(),
        start: Default::default(),
        exclusive: false,
        open: false,
    }
}

pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Creates a job and returns it as stored.
pub async fn create(store: &Arc<dyn Store>, spec: &JobSpec) -> Job {
    let created = store
        .create_job(JobId::new(), spec)
        .await
        .expect("create_job");
    assert!(created.created);
    created.job
}

pub async fn get(store: &Arc<dyn Store>, id: JobId) -> Job {
    store.get_job(id).await.expect("get_job")
}

/// Runs one batch and checks its shape: one answer per write and per claim.
pub async fn batch(store: &Arc<dyn Store>, batch: Batch) -> BatchOutcome {
    let outcome = store.write_batch(&batch).await.expect("write_batch");
    assert_eq!(
        outcome.applied.len(),
        batch.writes.len(),
        "one answer per write"
    );
    assert_eq!(
        outcome.claimed.len(),
        batch.claims.len(),
        "one answer per claim"
    );
    outcome
}

pub fn claim_of(job: JobId, max: u32) -> ClaimRequest {
    ClaimRequest {
        job,
        max,
        from_index: 0,
        retries: false,
    }
}

/// Claims up to `max` items of `job` in a batch of its own.
pub async fn claim(store: &Arc<dyn Store>, job: JobId, max: u32) -> Vec<ClaimedItem> {
    let mut out = batch(
        store,
        Batch {
            writes: vec![],
            claims: vec![claim_of(job, max)],
        },
    )
    .await;
    out.claimed.remove(0)
}

pub fn write_of(job: JobId, index: u32, lease: i64, kind: WriteKind) -> ItemWrite {
    ItemWrite {
        job,
        index,
        lease,
        kind,
    }
}

/// Commits one write in a batch of its own; whether it applied.
pub async fn write(
    store: &Arc<dyn Store>,
    job: JobId,
    index: u32,
    lease: i64,
    kind: WriteKind,
) -> bool {
    let out = batch(
        store,
        Batch {
            writes: vec![write_of(job, index, lease, kind)],
            claims: vec![],
        },
    )
    .await;
    out.applied[0]
}

pub fn failed(error: &str, permanent: bool) -> WriteKind {
    WriteKind::Failed {
        error: error.into(),
        permanent,
        retry_after: std::time::Duration::ZERO,
    }
}

/// Every item of a job, through pages of 7 (to cross page boundaries).
pub async fn items(store: &Arc<dyn Store>, job: JobId) -> Vec<Item> {
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_items(&ItemQuery {
                job,
                states: vec![],
                limit: 7,
                after,
            })
            .await
            .expect("list_items");
        all.extend(page.rows);
        match page.next {
            Some(c) => after = Some(c),
            None => return all,
        }
    }
}

pub async fn item(store: &Arc<dyn Store>, job: JobId, index: u32) -> Item {
    items(store, job)
        .await
        .into_iter()
        .find(|i| i.index == index)
        .unwrap_or_else(|| panic!("item {index} of {job} is missing"))
}

/// Every event of a job, oldest first.
pub async fn events(store: &Arc<dyn Store>, job: JobId) -> Vec<JobEvent> {
    store
        .events_after(job, 0, 100_000)
        .await
        .expect("events_after")
}

/// Every job, newest first, through pages of 2.
pub async fn all_jobs(store: &Arc<dyn Store>, mut query: JobQuery) -> Vec<Job> {
    query.limit = 2;
    let mut all = Vec::new();
    loop {
        let page = store.list_jobs(&query).await.expect("list_jobs");
        all.extend(page.rows);
        match page.next {
            Some(c) => query.after = Some(c),
            None => return all,
        }
    }
}

pub fn provenance(reason: &str, by: &str, request_id: &str) -> Provenance {
    Provenance {
        reason: Some(reason.into()),
        requested_by: Some(by.into()),
        request_id: Some(request_id.into()),
    }
}

/// A transition by the system with `why`, which must be accepted.
pub async fn go(
    store: &Arc<dyn Store>,
    job: JobId,
    from: jobvisor::domain::JobState,
    to: jobvisor::domain::JobState,
    effects: Vec<jobvisor::domain::Effect>,
) -> Job {
    let job = store
        .transition(
            job,
            &TransitionWrite {
                from,
                to,
                effects,
                provenance: Provenance::system(format!("{from} to {to}")),
                pause_mode: None,
                resume_at: None,
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{from} -> {to}: {e}"));
    assert_eq!(job.state, to);
    job
}

/// Cancels a running job as its supervisor would: it ends CANCELLED now.
pub async fn cancel(store: &Arc<dyn Store>, id: JobId) -> Job {
    use jobvisor::domain::{Effect as E, JobState as S};
    go(store, id, S::Running, S::Cancelling, vec![E::Interrupt]).await;
    go(
        store,
        id,
        S::Cancelling,
        S::Cancelled,
        vec![E::CancelRemaining, E::End],
    )
    .await
}

pub fn is_not_found(result: Result<impl std::fmt::Debug, StoreError>, id: JobId) {
    match result {
        Err(StoreError::NotFound(got)) => assert_eq!(got, id),
        other => panic!("expected NotFound({id}), got {other:?}"),
    }
}

// ------------------------------------------------------------ invariants

/// The counters on the job row equal what its items say, and its event
/// log holds exactly the sequences 1..=last_seq. Returns the job.
pub async fn consistent(store: &Arc<dyn Store>, id: JobId) -> Job {
    let job = get(store, id).await;
    let items = items(store, id).await;
    let mut counts = ItemCounts {
        total: items.len() as u64,
        ..ItemCounts::default()
    };
    for item in &items {
        match item.state {
            ItemState::Pending => {}
            ItemState::Running => counts.running += 1,
            ItemState::Succeeded => counts.succeeded += 1,
            ItemState::Failed => counts.failed += 1,
            ItemState::Cancelled => counts.cancelled += 1,
        }
    }
    assert_eq!(job.counts, counts, "counters of {id} against its items");
    let seqs: Vec<u64> = events(store, id).await.iter().map(|e| e.seq).collect();
    let expected: Vec<u64> = (1..=job.last_seq).collect();
    assert_eq!(seqs, expected, "event sequences of {id}");
    job
}

/// The fields of an ItemFailed event: (index, attempt, error, will_retry).
pub fn item_failed(event: &JobEvent) -> (u32, u32, String, bool) {
    match &event.body {
        EventBody::ItemFailed {
            index,
            attempt,
            error,
            will_retry,
            ..
        } => (*index, *attempt, error.clone(), *will_retry),
        other => panic!("expected ItemFailed, got {other:?}"),
    }
}
