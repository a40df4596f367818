//! Multi-replica mode: several servers on one PostgreSQL, each live job
//! owned by one of them through a lease (see [`crate::store::leases`]).
//!
//! Each replica runs two loops. The heartbeat renews its leases (a lease
//! it failed to renew is given up: its supervisor stops, and the store
//! refuses anything it still tries to write), hands the owner's
//! supervisors the committed state of their jobs (the fallback for a
//! missed notification), and adopts its share of the jobs nobody owns.
//! The listener applies what the database announces: a change committed
//! by any replica reaches the owner's supervisor, which acknowledges it so
//! that the replica that took the call can answer; watchers anywhere wake.
//!
//! Nothing here decides anything the database does not: two replicas that
//! race for a job both ask the store, and one of them gets it.

use super::{
    Adopted, Engine, EngineError, manager::ManagerMsg, placement::Placement,
    supervisor::SupervisorMsg,
};
use crate::executor::ItemHandler;
use crate::{
    domain::{Job, JobId, JobState, Runner},
    store::{
        BatchFence, Lease, Leases, Pulse,
        leases::{Census, JobChange, Message, Notice},
    },
};
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::sync::{Notify, mpsc, watch};

/// Settings of multi-replica mode.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This replica's id: unique among the replicas that run at once, and
    /// best kept across restarts (a replica that comes back with the same
    /// id takes its jobs back at once instead of waiting for the leases to
    /// expire).
    pub replica: String,
    /// How long a lease lasts without renewal: how long the jobs of a
    /// replica that died wait before another adopts them.
    pub lease_timeout: Duration,
    /// How long a control call taken by one replica waits for the owner on
    /// another to apply it before answering anyway.
    pub ack_timeout: Duration,
    /// Where the other replicas reach this one's WorkerService to borrow
    /// its workers (host:port); none: they cannot.
    pub advertise: Option<String>,
}

impl ClusterConfig {
    pub fn new(replica: impl Into<String>) -> Self {
        ClusterConfig {
            replica: replica.into(),
            lease_timeout: Duration::from_secs(10),
            ack_timeout: Duration::from_secs(2),
            advertise: None,
        }
    }

    fn heartbeat_every(&self) -> Duration {
        (self.lease_timeout / 3).max(Duration::from_millis(100))
    }
}

/// A lease this replica holds.
#[derive(Debug, Clone, Copy)]
struct Entry {
    epoch: i64,
    since: Instant,
}

/// The leases this replica holds, shared with the group committer (which
/// writes every batch under them) and the supervisors.
#[derive(Debug)]
pub struct Book {
    owner: Arc<str>,
    held: Mutex<HashMap<JobId, Entry>>,
    /// Jobs being taken over right now (not to be taken twice).
    acquiring: Mutex<HashSet<JobId>>,
    /// Jobs whose writes the store refused: their lease is lost.
    lost: mpsc::UnboundedSender<JobId>,
}

impl Book {
    fn new(owner: &str, lost: mpsc::UnboundedSender<JobId>) -> Self {
        Book {
            owner: Arc::from(owner),
            held: Mutex::new(HashMap::new()),
            acquiring: Mutex::new(HashSet::new()),
            lost,
        }
    }

    pub fn owner(&self) -> &Arc<str> {
        &self.owner
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Entry>> {
        self.held.lock().expect("lease book lock")
    }

    pub fn epoch(&self, job: JobId) -> Option<i64> {
        self.held().get(&job).map(|e| e.epoch)
    }

    /// The lease this replica holds on `job`, if any.
    pub fn lease(&self, job: JobId) -> Option<Lease> {
        Some(Lease {
            owner: self.owner.clone(),
            epoch: self.epoch(job)?,
        })
    }

    pub fn holds(&self, job: JobId) -> bool {
        self.held().contains_key(&job)
    }

    fn jobs(&self) -> Vec<JobId> {
        self.held().keys().copied().collect()
    }

    fn len(&self) -> usize {
        self.held().len()
    }

    /// The fence for a batch touching `jobs`: a job this replica does not
    /// hold gets epoch 0, which no lease has.
    pub fn fence(&self, jobs: impl IntoIterator<Item = JobId>) -> BatchFence {
        let held = self.held();
        let mut epochs: Vec<(JobId, i64)> = Vec::new();
        for job in jobs {
            if !epochs.iter().any(|(j, _)| *j == job) {
                epochs.push((job, held.get(&job).map_or(0, |e| e.epoch)));
            }
        }
        BatchFence {
            owner: self.owner.clone(),
            epochs,
        }
    }

    /// The store refused writes for `job`.
    pub fn report_lost(&self, job: JobId) {
        let _ = self.lost.send(job);
    }

    fn begin_acquire(&self, job: JobId) -> bool {
        !self.holds(job) && self.acquiring.lock().expect("lease book lock").insert(job)
    }

    fn end_acquire(&self, job: JobId) {
        self.acquiring.lock().expect("lease book lock").remove(&job);
    }

    fn insert(&self, job: JobId, epoch: i64) {
        self.held().insert(
            job,
            Entry {
                epoch,
                since: Instant::now(),
            },
        );
    }

    /// Forgets `job` if it is held under `epoch` (any epoch if `None`).
    fn remove(&self, job: JobId, epoch: Option<i64>) -> Option<i64> {
        let mut held = self.held();
        match held.get(&job) {
            Some(e) if epoch.is_none_or(|x| x == e.epoch) => held.remove(&job).map(|e| e.epoch),
            _ => None,
        }
    }
}

/// Multi-replica state of one engine.
pub struct Cluster {
    pub config: ClusterConfig,
    pub leases: Arc<dyn Leases>,
    pub book: Arc<Book>,
    /// The latest sequence each job's owner acknowledged (kept a while, so
    /// an acknowledgement that arrives before its waiter is not lost).
    acks: Mutex<HashMap<JobId, (watch::Sender<u64>, Instant)>>,
    /// The last census, with the jobs given out since counted in.
    census: Mutex<Census>,
    /// Wakes the heartbeat early (a handover, a reconnection).
    wake: Notify,
    last_shed: Mutex<Instant>,
    started: Instant,
    /// Set once the leases are given up (shutdown): no more heartbeats.
    left: std::sync::atomic::AtomicBool,
    lost_rx: Mutex<Option<mpsc::UnboundedReceiver<JobId>>>,
}

impl Cluster {
    /// Forgets a lease whose supervisor crashed (it is taken anew).
    pub(super) fn book_forget(&self, job: JobId) {
        self.book.remove(job, None);
    }

    pub fn new(config: ClusterConfig, leases: Arc<dyn Leases>) -> Arc<Cluster> {
        let (lost, lost_rx) = mpsc::unbounded_channel();
        let book = Arc::new(Book::new(&config.replica, lost));
        Arc::new(Cluster {
            config,
            leases,
            book,
            acks: Mutex::new(HashMap::new()),
            census: Mutex::new(Census::default()),
            wake: Notify::new(),
            last_shed: Mutex::new(Instant::now()),
            started: Instant::now(),
            left: std::sync::atomic::AtomicBool::new(false),
            lost_rx: Mutex::new(Some(lost_rx)),
        })
    }

    pub fn me(&self) -> &str {
        &self.config.replica
    }

    fn ttl(&self) -> Duration {
        self.config.lease_timeout
    }

    fn record_ack(&self, job: JobId, seq: u64) {
        let mut acks = self.acks.lock().expect("acks lock");
        let entry = acks
            .entry(job)
            .or_insert_with(|| (watch::channel(0).0, Instant::now()));
        entry.0.send_if_modified(|v| {
            if seq > *v {
                *v = seq;
                true
            } else {
                false
            }
        });
        entry.1 = Instant::now();
    }

    /// Waits until the owner of `job` has applied sequence `seq`, or
    /// `ack_timeout` passed; whether it had.
    async fn wait_ack(&self, job: JobId, seq: u64) -> bool {
        let mut rx = {
            let mut acks = self.acks.lock().expect("acks lock");
            let entry = acks
                .entry(job)
                .or_insert_with(|| (watch::channel(0).0, Instant::now()));
            entry.1 = Instant::now();
            entry.0.subscribe()
        };
        tokio::time::timeout(self.config.ack_timeout, rx.wait_for(|v| *v >= seq))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn prune_acks(&self) {
        let keep = self.ttl().max(Duration::from_secs(10));
        self.acks
            .lock()
            .expect("acks lock")
            .retain(|_, (tx, at)| tx.receiver_count() > 0 || at.elapsed() < keep);
    }

    /// Where a job without an owner should run (see [`pick`]).
    fn pick(&self) -> String {
        pick(&mut self.census.lock().expect("census lock"), self.me())
    }

    /// How many jobs this replica should run for the load to be even.
    fn fair_share(&self) -> usize {
        fair_share(&self.census.lock().expect("census lock"))
    }
}

/// Where a job without an owner should run: the least loaded replica of
/// the census (this one, `me`, on a tie or when the census is empty),
/// counted in at once so that the next pick sees it.
fn pick(census: &mut Census, me: &str) -> String {
    let mine = census
        .replicas
        .iter()
        .find(|r| r.id == me)
        .map_or(0, |r| r.jobs);
    let best = census
        .replicas
        .iter_mut()
        .min_by_key(|r| (r.jobs, r.id != me))
        .filter(|r| r.jobs < mine);
    match best {
        Some(r) => {
            r.jobs += 1;
            r.id.clone()
        }
        None => {
            if let Some(r) = census.replicas.iter_mut().find(|r| r.id == me) {
                r.jobs += 1;
            }
            me.to_string()
        }
    }
}

/// How many jobs each replica should run for the load to be even.
fn fair_share(census: &Census) -> usize {
    let replicas = census.replicas.len().max(1) as u64;
    census.live_jobs.div_ceil(replicas) as usize
}

impl Engine {
    /// Joins the cluster and takes this replica's jobs (its own leases
    /// first, then a share of the jobs nobody owns); then keeps the
    /// heartbeat and the listener running until shutdown.
    async fn join_cluster(&self, cluster: &Arc<Cluster>) -> Result<usize, EngineError> {
        let cluster = cluster.clone();
        let me = Runner {
            server: cluster.me().to_string(),
            ..self.rt.config.runner.clone()
        };
        cluster.leases.join(&me, cluster.ttl()).await?;
        let notices = cluster.leases.listen().await?;
        self.refresh_census(&cluster).await;
        self.share_workers(&cluster).await;
        let adopted = self.adopt_share(&cluster).await;
        let lost = cluster
            .lost_rx
            .lock()
            .expect("lost lock")
            .take()
            .expect("joined once");
        tokio::spawn(self.clone().heartbeat_loop(cluster.clone()));
        tokio::spawn(self.clone().listen_loop(cluster.clone(), notices, lost));
        let joined = Message::Joined {
            from: cluster.me().to_string(),
        };
        if let Err(e) = cluster.leases.send(&joined).await {
            tracing::debug!(error = %e, "could not announce this replica");
        }
        tracing::info!(replica = cluster.me(), lease_timeout = ?cluster.ttl(), adopted,
            "joined the replicas");
        Ok(adopted)
    }

    async fn heartbeat_loop(self, cluster: Arc<Cluster>) {
        let every = cluster.config.heartbeat_every();
        let mut last_ok = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = cluster.wake.notified() => {}
                // Renewing goes on while draining: the leases stay ours
                // until the items in flight are committed.
                _ = self.abort.cancelled() => return,
            }
            if cluster.left.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            let started = Instant::now();
            match cluster.leases.heartbeat(cluster.me(), cluster.ttl()).await {
                Ok(held) => {
                    last_ok = started;
                    self.reconcile(&cluster, &held, started).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the leases");
                    if last_ok.elapsed() >= cluster.ttl() {
                        // They have expired: another replica may run these
                        // jobs now. Stop ours (the store refuses their
                        // writes anyway).
                        for job in cluster.book.jobs() {
                            tracing::warn!(job_id = %job, "lease expired unrenewed; stopping the job here");
                            self.abandon(&cluster, job, None).await;
                        }
                    }
                    continue;
                }
            }
            if self.closing.is_cancelled() {
                continue;
            }
            self.refresh_census(&cluster).await;
            self.share_workers(&cluster).await;
            self.adopt_share(&cluster).await;
            self.shed(&cluster).await;
            cluster.prune_acks();
        }
    }

    /// After a heartbeat: stops the jobs whose lease was not renewed, and
    /// hands every supervisor its job's committed state (in case a
    /// notification was missed).
    async fn reconcile(
        &self,
        cluster: &Arc<Cluster>,
        held: &[crate::store::leases::Held],
        beat: Instant,
    ) {
        let renewed: HashMap<JobId, &crate::store::leases::Held> =
            held.iter().map(|h| (h.job, h)).collect();
        let book: Vec<(JobId, Entry)> = cluster.book.held().iter().map(|(j, e)| (*j, *e)).collect();
        for (job, entry) in book {
            match renewed.get(&job) {
                Some(h) if h.epoch == entry.epoch => {
                    self.observe(JobChange {
                        job,
                        state: h.state,
                        last_seq: h.last_seq,
                        concurrency: h.concurrency,
                        immediate: false,
                        counts: crate::domain::ItemCounts {
                            total: h.total,
                            ..Default::default()
                        },
                        rate: Some(h.rate),
                        open: Some(h.open),
                    })
                    .await;
                }
                // Taken after the heartbeat read the leases: not lost.
                _ if entry.since >= beat => {}
                _ => {
                    tracing::warn!(job_id = %job, epoch = entry.epoch,
                        "lost the job's lease; stopping it here");
                    self.abandon(cluster, job, Some(entry.epoch)).await;
                }
            }
        }
    }

    /// Remote workers across replicas: advertises where this replica is
    /// reached and the executors its workers serve, and hands the worker
    /// hub the other replicas that lend theirs.
    async fn share_workers(&self, cluster: &Cluster) {
        let Some(hub) = self.registry.remote() else {
            return;
        };
        if hub.config().executors.is_empty() {
            return;
        }
        let executors = hub.live_executors();
        if let Err(e) = cluster
            .leases
            .advertise(
                cluster.me(),
                cluster.config.advertise.as_deref(),
                &executors,
            )
            .await
        {
            tracing::debug!(error = %e, "cannot advertise this replica's workers");
        }
        match cluster.leases.peers(cluster.me()).await {
            Ok(peers) => hub.set_peers(
                peers
                    .into_iter()
                    .map(|p| crate::executor::remote::link::PeerReplica {
                        id: p.id,
                        address: p.address,
                        executors: p.executors,
                    })
                    .collect(),
            ),
            Err(e) => tracing::debug!(error = %e, "cannot read the replicas that lend workers"),
        }
    }

    async fn refresh_census(&self, cluster: &Cluster) {
        match cluster.leases.census().await {
            Ok(census) => *cluster.census.lock().expect("census lock") = census,
            Err(e) => tracing::debug!(error = %e, "cannot read the census"),
        }
    }

    /// Takes the jobs whose lease names this replica, and up to the fair
    /// share of jobs that nobody owns. Returns how many it took.
    async fn adopt_share(&self, cluster: &Arc<Cluster>) -> usize {
        if self.closing.is_cancelled() {
            return 0;
        }
        let room = cluster.fair_share().saturating_sub(cluster.book.len());
        let orphans = match cluster
            .leases
            .orphans(cluster.me(), &cluster.book.jobs(), room as u32)
            .await
        {
            Ok(o) => o,
            Err(e) => {
                tracing::debug!(error = %e, "cannot look for jobs to adopt");
                return 0;
            }
        };
        let mut taken = 0;
        for orphan in orphans {
            if self.closing.is_cancelled() {
                break;
            }
            if !orphan.mine && cluster.book.len() >= cluster.fair_share().max(1) {
                break;
            }
            if let Ok(Some(_)) = self.take(cluster, orphan.job, None).await {
                taken += 1;
            }
        }
        taken
    }

    /// Takes the lease of `job` and runs it here. `Ok(None)` when another
    /// replica holds it (or this one is taking it already), or the job
    /// does not need running.
    pub(super) async fn take(
        &self,
        cluster: &Arc<Cluster>,
        job: JobId,
        start: Option<opentelemetry::trace::SpanContext>,
    ) -> Result<Option<Job>, EngineError> {
        if !cluster.book.begin_acquire(job) {
            return Ok(None);
        }
        let result = self.take_inner(cluster, job, start).await;
        cluster.book.end_acquire(job);
        result
    }

    async fn take_inner(
        &self,
        cluster: &Arc<Cluster>,
        job: JobId,
        start: Option<opentelemetry::trace::SpanContext>,
    ) -> Result<Option<Job>, EngineError> {
        let Some((lease, found)) = cluster
            .leases
            .take_over(job, cluster.me(), cluster.ttl())
            .await?
        else {
            return Ok(None);
        };
        cluster.book.insert(job, lease.epoch);
        tracing::info!(job_id = %job, epoch = lease.epoch, state = %found.state, "took the job's lease");
        self.publish(&found);
        // A job whose executor cannot run here is failed (under the
        // lease) by `supervise`.
        match self.supervise(found.clone(), start).await {
            Ok(_) => Ok(Some(found)),
            Err(e) => {
                cluster.book.remove(job, Some(lease.epoch));
                let _ = cluster
                    .leases
                    .release(cluster.me(), &[(job, lease.epoch)])
                    .await;
                Err(e)
            }
        }
    }

    /// Stops running `job` here without writing anything for it: its
    /// lease is lost (under `epoch`, or whatever epoch is held).
    async fn abandon(&self, cluster: &Cluster, job: JobId, epoch: Option<i64>) {
        if cluster.book.remove(job, epoch).is_some() {
            let _ = self.manager.cast(ManagerMsg::Abandon(job));
        }
    }

    /// Hands jobs over when this replica runs more than its share (after a
    /// rolling restart, the last replica up would otherwise stay idle).
    /// At most one round per few heartbeats.
    async fn shed(&self, cluster: &Arc<Cluster>) {
        let every = cluster.config.heartbeat_every();
        if cluster.started.elapsed() < every * 3 {
            return;
        }
        let share = cluster.fair_share();
        let mine = cluster.book.len();
        if mine <= share + 1 {
            return;
        }
        {
            let mut last = cluster.last_shed.lock().expect("shed lock");
            if last.elapsed() < every * 5 {
                return;
            }
            *last = Instant::now();
        }
        // Someone must be below its share to take them.
        let room: u64 = {
            let census = cluster.census.lock().expect("census lock");
            census
                .replicas
                .iter()
                .filter(|r| r.id != cluster.me())
                .map(|r| (share as u64).saturating_sub(r.jobs))
                .sum()
        };
        let give = (mine - share).min(room as usize);
        if give == 0 {
            return;
        }
        let mut jobs = cluster.book.jobs();
        jobs.sort_unstable();
        tracing::info!(mine, share, give, "handing jobs over to even the load");
        for job in jobs.into_iter().take(give) {
            self.hand_over(cluster, job).await;
        }
        let _ = cluster
            .leases
            .send(&Message::Handover {
                from: cluster.me().to_string(),
            })
            .await;
    }

    /// Stops `job` here the way a shutdown does (items in flight stop at
    /// their next checkpoint and are committed), then releases its lease.
    async fn hand_over(&self, cluster: &Arc<Cluster>, job: JobId) {
        let Some(epoch) = cluster.book.epoch(job) else {
            return;
        };
        let grace = cluster.ttl();
        let _ = self
            .manager
            .call(
                |reply| ManagerMsg::HandOver { job, grace, reply },
                Some(grace + Duration::from_secs(1)),
            )
            .await;
        cluster.book.remove(job, Some(epoch));
        if let Err(e) = cluster.leases.release(cluster.me(), &[(job, epoch)]).await {
            tracing::warn!(job_id = %job, error = %e, "could not release the lease; it will expire");
        }
    }

    async fn listen_loop(
        self,
        cluster: Arc<Cluster>,
        mut notices: mpsc::Receiver<Notice>,
        mut lost: mpsc::UnboundedReceiver<JobId>,
    ) {
        loop {
            let notice = tokio::select! {
                n = notices.recv() => match n {
                    Some(n) => n,
                    None => return,
                },
                Some(job) = lost.recv() => {
                    tracing::warn!(job_id = %job, "the store refused our writes for the job: its lease is lost");
                    self.abandon(&cluster, job, None).await;
                    continue;
                }
                _ = self.abort.cancelled() => return,
            };
            match notice {
                Notice::Changed(change) => {
                    self.rt.hub.publish(Pulse {
                        job: change.job,
                        state: change.state,
                        counts: change.counts,
                        last_seq: change.last_seq,
                    });
                    if cluster.book.holds(change.job) {
                        let (engine, cluster) = (self.clone(), cluster.clone());
                        tokio::spawn(async move {
                            let applied = engine.observe(change).await;
                            if applied || change.state != JobState::Running {
                                let ack = Message::Ack {
                                    job: change.job,
                                    seq: change.last_seq,
                                    from: cluster.me().to_string(),
                                };
                                if let Err(e) = cluster.leases.send(&ack).await {
                                    tracing::debug!(error = %e, "could not acknowledge");
                                }
                            }
                        });
                    }
                }
                Notice::Message(Message::Ack { job, seq, .. }) => cluster.record_ack(job, seq),
                Notice::Message(Message::Assign { job, to }) if to == cluster.me() => {
                    let (engine, cluster) = (self.clone(), cluster.clone());
                    tokio::spawn(async move {
                        match engine.take(&cluster, job, None).await {
                            Ok(Some(found)) => {
                                let ack = Message::Ack {
                                    job,
                                    seq: found.last_seq,
                                    from: cluster.me().to_string(),
                                };
                                let _ = cluster.leases.send(&ack).await;
                            }
                            Ok(None) => {}
                            Err(e) => {
                                tracing::warn!(job_id = %job, error = %e, "could not take an assigned job")
                            }
                        }
                    });
                }
                Notice::Message(Message::Assign { .. }) => {}
                Notice::Message(Message::Interrupt { job }) => {
                    if cluster.book.holds(job) {
                        let engine = self.clone();
                        tokio::spawn(async move { engine.interrupt_local(job).await });
                    }
                }
                Notice::Message(Message::Handover { from } | Message::Joined { from }) => {
                    if from != cluster.me() {
                        cluster.wake.notify_one();
                    }
                }
                Notice::Reconnected => {
                    tracing::info!("notification channel back; checking the store");
                    cluster.wake.notify_one();
                }
            }
        }
    }

    /// Hands a supervisor this replica runs a committed change of its job;
    /// whether it changed anything.
    async fn observe(&self, change: JobChange) -> bool {
        let Some(supervisor) = self.lookup(change.job).await else {
            self.unsupervised(change.job, change.state).await;
            return false;
        };
        let interrupt = change.state == JobState::Cancelling
            || (change.state == JobState::Pausing && change.immediate);
        supervisor
            .call(
                |reply| SupervisorMsg::Observed {
                    state: change.state,
                    seq: change.last_seq,
                    concurrency: change.concurrency,
                    rate: change.rate,
                    interrupt,
                    // A notice that does not say whether the job is open
                    // (an earlier version's) closes nothing.
                    items: Some((change.counts.total, change.open.unwrap_or(true))),
                    cancelled: change.counts.cancelled,
                    reply,
                },
                Some(self.rt.config.control_timeout),
            )
            .await
            .ok()
            .and_then(|r| r.success_or(()).ok())
            .unwrap_or(false)
    }

    /// A job whose lease this replica holds has no supervisor here. One
    /// that waits for workers (RUNNING, parked in the worker hub) stays
    /// so. Any other is read and supervised: a pause or a cancel
    /// committed through another replica is carried out, and a job that
    /// no longer runs releases its lease as its supervisor exits. (A
    /// supervisor being started meanwhile is not doubled: the manager
    /// answers with the live one.)
    async fn unsupervised(&self, job: JobId, state: JobState) {
        if state == JobState::Running && self.parked(job) {
            return;
        }
        let supervised = match self.rt.store.get_job(job).await {
            Ok(found) => self.supervise(found, None).await.map(|_| ()),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = supervised {
            tracing::debug!(job_id = %job, error = %e, "could not supervise a job held here; the next heartbeat tries again");
        }
    }

    /// After a control call committed `job` here: makes sure the replica
    /// that owns it has applied it (bounded wait), placing the job on a
    /// replica first if it needs one and has none.
    pub(super) async fn route(
        &self,
        cluster: &Arc<Cluster>,
        job: &Job,
        interrupt: bool,
        asked: Instant,
        wait: bool,
    ) -> Result<(), EngineError> {
        let needs_owner = matches!(
            job.state,
            JobState::Running | JobState::Pausing | JobState::Cancelling
        );
        if cluster.book.holds(job.id) {
            if self.lookup(job.id).await.is_some() {
                return self.tell_local(job, interrupt, asked).await;
            }
            // Held, but its supervisor is gone: take it again.
            cluster.book.remove(job.id, None);
            self.take(cluster, job.id, None).await?;
            return Ok(());
        }
        match cluster.leases.owner(job.id).await? {
            // The owner learns of the commit from the database (an
            // immediate pause or a cancel interrupts its items there).
            Some(owner) if owner != cluster.me() => {
                if wait && needs_owner && !cluster.wait_ack(job.id, job.last_seq).await {
                    tracing::warn!(job_id = %job.id, %owner,
                        "the owner did not acknowledge in time; answering with the stored state");
                }
                Ok(())
            }
            // Being taken by this replica right now: it reads the state
            // from the store.
            Some(_) => Ok(()),
            None if needs_owner => self.place(cluster, job).await,
            None => Ok(()),
        }
    }

    /// Runs a job that has no owner on the least loaded replica.
    async fn place(&self, cluster: &Arc<Cluster>, job: &Job) -> Result<(), EngineError> {
        let to = cluster.pick();
        if to == cluster.me() {
            self.take(cluster, job.id, None).await?;
            return Ok(());
        }
        if cluster.leases.assign(job.id, &to, cluster.ttl()).await? {
            tracing::debug!(job_id = %job.id, replica = %to, "job given to another replica");
            if !cluster.wait_ack(job.id, job.last_seq).await {
                tracing::warn!(job_id = %job.id, replica = %to,
                    "the replica given the job did not acknowledge in time");
            }
        }
        Ok(())
    }

    /// Starts a new job on the least loaded replica.
    pub(super) async fn place_new(
        &self,
        cluster: &Arc<Cluster>,
        job: &Job,
        start: Option<opentelemetry::trace::SpanContext>,
    ) -> Result<(), EngineError> {
        let to = cluster.pick();
        if to != cluster.me() && cluster.leases.assign(job.id, &to, cluster.ttl()).await? {
            tracing::debug!(job_id = %job.id, replica = %to, "new job given to another replica");
            return Ok(());
        }
        if self.take(cluster, job.id, start).await?.is_none() && !cluster.book.holds(job.id) {
            tracing::debug!(job_id = %job.id, "another replica took the new job first");
        }
        Ok(())
    }

    /// Asks the owner of `job`, wherever it is, to interrupt its items.
    pub(super) async fn interrupt_anywhere(&self, cluster: &Cluster, job: JobId) {
        if cluster.book.holds(job) {
            self.interrupt_local(job).await;
        } else if let Err(e) = cluster.leases.send(&Message::Interrupt { job }).await {
            tracing::warn!(job_id = %job, error = %e, "could not ask the owner to interrupt");
        }
    }
}

/// Multi-replica placement: a job runs on the replica that holds its
/// lease; calls taken here reach it through the database.
pub(super) struct Replicated(pub(super) Arc<Cluster>);

#[async_trait::async_trait]
impl Placement for Replicated {
    async fn adopt(&self, engine: &Engine) -> Result<Adopted, EngineError> {
        // Other replicas may be running jobs: take only this one's share
        // (its own leases, then jobs nobody owns).
        let running = engine.join_cluster(&self.0).await?;
        Ok(Adopted {
            running,
            ..Adopted::default()
        })
    }

    async fn place_new(
        &self,
        engine: &Engine,
        job: &Job,
        _handler: Arc<dyn ItemHandler>,
        start: Option<opentelemetry::trace::SpanContext>,
    ) -> Result<(), EngineError> {
        engine.place_new(&self.0, job, start).await
    }

    async fn tell(
        &self,
        engine: &Engine,
        job: &Job,
        interrupt: bool,
        asked: Instant,
        wait: bool,
    ) -> Result<(), EngineError> {
        engine.route(&self.0, job, interrupt, asked, wait).await
    }

    async fn setting_changed(&self, engine: &Engine, job: &Job) -> Result<(), EngineError> {
        engine
            .route(&self.0, job, false, Instant::now(), true)
            .await
    }

    async fn interrupt(&self, engine: &Engine, job: JobId) {
        engine.interrupt_anywhere(&self.0, job).await
    }

    async fn owner(&self, _engine: &Engine, job: &Job) -> Result<Option<Runner>, EngineError> {
        Ok(self.0.leases.runner(job.id).await?)
    }

    fn run_here(&self, job: JobId) -> Option<Option<Lease>> {
        self.0.book.lease(job).map(Some)
    }

    /// The lease the supervisor ran under is released.
    fn supervisor_ended(&self, engine: &Engine, job: JobId, epoch: Option<i64>) {
        if engine.closing.is_cancelled() {
            return;
        }
        if let Some(epoch) = self.0.book.remove(job, epoch) {
            let cluster = self.0.clone();
            tokio::spawn(async move {
                if let Err(e) = cluster.leases.release(cluster.me(), &[(job, epoch)]).await {
                    tracing::debug!(job_id = %job, error = %e, "could not release the lease; it will expire");
                }
            });
        }
    }

    async fn readopt(&self, engine: &Engine, job: JobId) {
        // A new lease (epoch) releases what the old supervisor held.
        self.0.book_forget(job);
        if let Err(e) = engine.take(&self.0, job, None).await {
            tracing::error!(job_id = %job, error = %e, "could not re-adopt the job");
        }
    }

    async fn drain(&self) {
        let cluster = &self.0;
        if let Err(e) = cluster.leases.drain(cluster.me()).await {
            tracing::debug!(error = %e, "could not mark the replica draining");
        }
    }

    /// Gives up every lease so the other replicas adopt the jobs now.
    async fn leave(&self) {
        let cluster = &self.0;
        cluster
            .left
            .store(true, std::sync::atomic::Ordering::SeqCst);
        match cluster.leases.leave(cluster.me()).await {
            Ok(()) => tracing::info!("leases released; the other replicas take the jobs over"),
            Err(e) => {
                tracing::warn!(error = %e, "could not release the leases; they will expire")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::leases::ReplicaLoad;

    fn census(live_jobs: u64, loads: &[(&str, u64)]) -> Census {
        Census {
            live_jobs,
            replicas: loads
                .iter()
                .map(|(id, jobs)| ReplicaLoad {
                    id: id.to_string(),
                    jobs: *jobs,
                })
                .collect(),
        }
    }

    fn book() -> Book {
        Book::new("a", mpsc::unbounded_channel().0)
    }

    #[test]
    fn a_new_job_goes_to_the_least_loaded_replica_and_counts_at_once() {
        let mut c = census(9, &[("a", 4), ("b", 2), ("c", 3)]);
        assert_eq!(pick(&mut c, "a"), "b");
        assert_eq!(pick(&mut c, "a"), "b", "b had 3, c 3: b comes first");
        assert_eq!(pick(&mut c, "a"), "c");
        // Everyone at 4: a tie stays here.
        assert_eq!(pick(&mut c, "a"), "a");
        assert_eq!(c.replicas.iter().map(|r| r.jobs).sum::<u64>(), 9 + 4);
    }

    #[test]
    fn with_no_census_a_new_job_stays_here() {
        assert_eq!(pick(&mut Census::default(), "a"), "a");
        assert_eq!(pick(&mut census(0, &[("b", 0)]), "a"), "a");
    }

    #[test]
    fn the_fair_share_rounds_up() {
        assert_eq!(fair_share(&census(10, &[("a", 0), ("b", 0), ("c", 0)])), 4);
        assert_eq!(fair_share(&census(9, &[("a", 0), ("b", 0), ("c", 0)])), 3);
        assert_eq!(fair_share(&census(5, &[])), 5, "alone: every job");
    }

    #[test]
    fn a_batch_is_fenced_by_the_epochs_held_and_zero_for_the_others() {
        let book = book();
        let (held, other) = (JobId::new(), JobId::new());
        book.insert(held, 7);
        let fence = book.fence([held, other, held]);
        assert_eq!(&*fence.owner, "a");
        assert_eq!(fence.epochs, vec![(held, 7), (other, 0)]);
    }

    #[test]
    fn a_lease_is_forgotten_only_under_its_own_epoch() {
        let book = book();
        let job = JobId::new();
        book.insert(job, 3);
        assert_eq!(book.remove(job, Some(2)), None, "an older supervisor's end");
        assert!(book.holds(job));
        assert_eq!(book.remove(job, Some(3)), Some(3));
        assert!(!book.holds(job));
        book.insert(job, 4);
        assert_eq!(book.remove(job, None), Some(4), "any epoch");
    }

    #[test]
    fn a_job_is_taken_once_at_a_time() {
        let book = book();
        let job = JobId::new();
        assert!(book.begin_acquire(job));
        assert!(!book.begin_acquire(job), "already being taken");
        book.end_acquire(job);
        book.insert(job, 1);
        assert!(!book.begin_acquire(job), "already held");
    }

    #[test]
    fn a_replica_runs_a_job_only_under_the_lease_it_holds_and_a_single_server_always() {
        use super::super::placement::{Placement, Solo};
        let job = JobId::new();
        assert_eq!(Solo.run_here(job), Some(None), "a single server: no lease");
        let book = book();
        assert_eq!(book.lease(job), None, "not held: another replica runs it");
        book.insert(job, 5);
        let lease = book.lease(job).expect("held");
        assert_eq!((&*lease.owner, lease.epoch), ("a", 5));
    }
}
