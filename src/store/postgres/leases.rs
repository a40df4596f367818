//! [`Leases`] on PostgreSQL: the `replicas` and `job_leases` tables and the
//! `jobvisor` / `jobvisor_jobs` notification channels
//! (migrations/postgres/0005_replicas.sql).
//!
//! Lock order, shared with the rest of the store: a job row before its
//! lease row before its items. A takeover locks the job row and then moves
//! the lease; the fenced writes lock the job row and then read the lease;
//! a heartbeat touches lease rows only.

use super::{
    PgStore, db_error,
    jobs::{insert_event, lock_job, release_running},
    rows::{self, job_state},
};
use crate::{
    domain::{EventBody, ItemCounts, Job, JobId, JobState, RateLimit, Runner},
    store::{
        Lease, Leases, StoreError,
        leases::{Census, Held, JobChange, Message, Notice, Orphan, Peer, ReplicaLoad},
    },
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Row, postgres::PgListener};
use std::{sync::Arc, time::Duration};
use tokio::sync::mpsc;
use uuid::Uuid;

/// Replicas talk on this channel (JSON [`Message`]s).
const MESSAGES: &str = "jobvisor";
/// The jobs_changed trigger announces committed changes here.
const CHANGES: &str = "jobvisor_jobs";

/// The job states that need an owner running them.
const LIVE: &str = "('running', 'pausing', 'cancelling')";

#[async_trait]
impl Leases for PgStore {
    async fn join(&self, me: &Runner, ttl: Duration) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO replicas (id, started_at, heartbeat_at, expires_at, draining, host, pid) \
             VALUES ($1, now(), now(), now() + make_interval(secs => $2), false, $3, $4) \
             ON CONFLICT (id) DO UPDATE SET started_at = now(), heartbeat_at = now(), \
                 expires_at = EXCLUDED.expires_at, draining = false, \
                 host = EXCLUDED.host, pid = EXCLUDED.pid",
        )
        .bind(&me.server)
        .bind(ttl.as_secs_f64())
        .bind(&me.host)
        .bind(i32::try_from(me.pid).unwrap_or(0))
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn heartbeat(&self, me: &str, ttl: Duration) -> Result<Vec<Held>, StoreError> {
        let rows = sqlx::query(
            "WITH beat AS ( \
                 INSERT INTO replicas (id, started_at, heartbeat_at, expires_at) \
                 VALUES ($1, now(), now(), now() + make_interval(secs => $2)) \
                 ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), \
                     expires_at = EXCLUDED.expires_at), \
             renewed AS ( \
                 UPDATE job_leases SET expires_at = now() + make_interval(secs => $2) \
                 WHERE owner = $1 AND expires_at > now() \
                 RETURNING job_id, epoch) \
             SELECT r.job_id, r.epoch, j.state, j.last_seq, j.concurrency, j.total_items, \
                 j.open, (j.policy->>'rate_limit')::bigint AS rate_limit, \
                 (j.policy->>'rate_period_ms')::bigint AS rate_period_ms \
             FROM renewed AS r JOIN jobs AS j ON j.id = r.job_id",
        )
        .bind(me)
        .bind(ttl.as_secs_f64())
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.iter()
            .map(|row| {
                let state: String = row.try_get("state").map_err(db_error)?;
                let last_seq: i64 = row.try_get("last_seq").map_err(db_error)?;
                let concurrency: i32 = row.try_get("concurrency").map_err(db_error)?;
                let limit: Option<i64> = row.try_get("rate_limit").map_err(db_error)?;
                let period: Option<i64> = row.try_get("rate_period_ms").map_err(db_error)?;
                let total: i64 = row.try_get("total_items").map_err(db_error)?;
                Ok(Held {
                    total: total.max(0) as u64,
                    open: row.try_get("open").map_err(db_error)?,
                    job: JobId(row.try_get("job_id").map_err(db_error)?),
                    epoch: row.try_get("epoch").map_err(db_error)?,
                    state: job_state(&state)?,
                    last_seq: last_seq.max(0) as u64,
                    concurrency: concurrency.max(1) as u32,
                    rate: rate_limit(limit.unwrap_or(0), period.unwrap_or(0)),
                })
            })
            .collect()
    }

    async fn take_over(
        &self,
        job: JobId,
        me: &str,
        ttl: Duration,
    ) -> Result<Option<(Lease, Job)>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let state = lock_job(&mut tx, job).await?;
        if !matches!(
            state,
            JobState::Running | JobState::Pausing | JobState::Cancelling
        ) {
            return Ok(None);
        }
        let previous: Option<String> =
            sqlx::query_scalar("SELECT owner FROM job_leases WHERE job_id = $1")
                .bind(job.0)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error)?;
        let epoch: Option<i64> = sqlx::query_scalar(
            "INSERT INTO job_leases AS l (job_id, owner, epoch, expires_at, acquired_at) \
             VALUES ($1, $2, 1, now() + make_interval(secs => $3), now()) \
             ON CONFLICT (job_id) DO UPDATE SET owner = EXCLUDED.owner, epoch = l.epoch + 1, \
                 expires_at = EXCLUDED.expires_at, acquired_at = now() \
             WHERE l.expires_at <= now() OR l.owner = EXCLUDED.owner \
             RETURNING epoch",
        )
        .bind(job.0)
        .bind(me)
        .bind(ttl.as_secs_f64())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?;
        let Some(epoch) = epoch else {
            return Ok(None);
        };
        // Whatever the previous owner had claimed goes back to pending.
        let released = release_running(&mut tx, job).await?;
        // The log shows who runs the job when that changes (not when a
        // replica picks up a fresh job it was given).
        if previous.as_deref().is_some_and(|p| p != me) || released > 0 {
            let seq: i64 = sqlx::query_scalar(
                "UPDATE jobs SET last_seq = last_seq + 1, updated_at = now() WHERE id = $1 \
                 RETURNING last_seq",
            )
            .bind(job.0)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_error)?;
            let event = EventBody::OwnerChanged {
                owner: me.to_string(),
                previous_owner: previous,
                released_items: released,
            };
            insert_event(&mut tx, job, seq, &event).await?;
        }
        let found = rows::fetch_job(&mut tx, job)
            .await?
            .ok_or(StoreError::NotFound(job))?;
        tx.commit().await.map_err(db_error)?;
        if released > 0 {
            tracing::info!(job_id = %job, released, epoch, "took the job over; its running items are pending again");
        }
        Ok(Some((
            Lease {
                owner: Arc::from(me),
                epoch,
            },
            found,
        )))
    }

    async fn assign(&self, job: JobId, to: &str, ttl: Duration) -> Result<bool, StoreError> {
        let message = serde_json::to_string(&Message::Assign {
            job,
            to: to.to_string(),
        })
        .map_err(|e| StoreError::Internal(e.to_string()))?;
        let assigned: Option<i64> = sqlx::query_scalar(
            "WITH a AS ( \
                 INSERT INTO job_leases AS l (job_id, owner, epoch, expires_at, acquired_at) \
                 VALUES ($1, $2, 1, now() + make_interval(secs => $3), now()) \
                 ON CONFLICT (job_id) DO UPDATE SET owner = EXCLUDED.owner, \
                     epoch = l.epoch + 1, expires_at = EXCLUDED.expires_at, acquired_at = now() \
                 WHERE l.expires_at <= now() \
                 RETURNING epoch) \
             SELECT a.epoch FROM a, pg_notify($4, $5)",
        )
        .bind(job.0)
        .bind(to)
        .bind(ttl.as_secs_f64())
        .bind(MESSAGES)
        .bind(message)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(assigned.is_some())
    }

    async fn owner(&self, job: JobId) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar("SELECT owner FROM job_leases WHERE job_id = $1 AND expires_at > now()")
            .bind(job.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)
    }

    async fn runner(&self, job: JobId) -> Result<Option<Runner>, StoreError> {
        let row: Option<(String, DateTime<Utc>, Option<String>, Option<i32>)> = sqlx::query_as(
            "SELECT l.owner, l.acquired_at, r.host, r.pid \
             FROM job_leases AS l LEFT JOIN replicas AS r ON r.id = l.owner \
             WHERE l.job_id = $1 AND l.expires_at > now()",
        )
        .bind(job.0)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(row.map(|(server, since, host, pid)| Runner {
            server,
            host: host.unwrap_or_default(),
            pid: pid.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
            since,
        }))
    }

    async fn orphans(
        &self,
        me: &str,
        running: &[JobId],
        limit: u32,
    ) -> Result<Vec<Orphan>, StoreError> {
        let running: Vec<Uuid> = running.iter().map(|j| j.0).collect();
        let rows: Vec<(Uuid, bool)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "(SELECT j.id, true FROM job_leases AS l JOIN jobs AS j ON j.id = l.job_id \
              WHERE l.owner = $1 AND l.expires_at > now() AND j.state IN {LIVE} \
                AND NOT (j.id = ANY($2))) \
             UNION ALL \
             (SELECT j.id, false FROM jobs AS j LEFT JOIN job_leases AS l ON l.job_id = j.id \
              WHERE j.state IN {LIVE} AND NOT (j.id = ANY($2)) \
                AND (l.job_id IS NULL OR l.expires_at <= now()) \
              ORDER BY j.created_at LIMIT $3)"
        )))
        .bind(me)
        .bind(&running)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(rows
            .into_iter()
            .map(|(job, mine)| Orphan {
                job: JobId(job),
                mine,
            })
            .collect())
    }

    async fn advertise(
        &self,
        me: &str,
        address: Option<&str>,
        worker_executors: &[String],
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE replicas SET address = $2, worker_executors = $3 WHERE id = $1")
            .bind(me)
            .bind(address)
            .bind(worker_executors)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn peers(&self, me: &str) -> Result<Vec<Peer>, StoreError> {
        let rows: Vec<(String, String, Vec<String>)> = sqlx::query_as(
            "SELECT id, address, worker_executors FROM replicas \
             WHERE id <> $1 AND expires_at > now() AND address IS NOT NULL \
                 AND cardinality(worker_executors) > 0 \
             ORDER BY id",
        )
        .bind(me)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(rows
            .into_iter()
            .map(|(id, address, mut executors)| {
                executors.sort();
                Peer {
                    id,
                    address,
                    executors,
                }
            })
            .collect())
    }

    async fn census(&self) -> Result<Census, StoreError> {
        let live: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM jobs WHERE state IN {LIVE}"
        )))
        .fetch_one(&self.pool)
        .await
        .map_err(db_error)?;
        let replicas: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT r.id, count(j.id) AS n FROM replicas AS r \
             LEFT JOIN job_leases AS l ON l.owner = r.id AND l.expires_at > now() \
             LEFT JOIN jobs AS j ON j.id = l.job_id AND j.state IN {LIVE} \
             WHERE r.expires_at > now() AND NOT r.draining \
             GROUP BY r.id ORDER BY n, r.id"
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(Census {
            live_jobs: live.max(0) as u64,
            replicas: replicas
                .into_iter()
                .map(|(id, n)| ReplicaLoad {
                    id,
                    jobs: n.max(0) as u64,
                })
                .collect(),
        })
    }

    async fn release(&self, me: &str, leases: &[(JobId, i64)]) -> Result<(), StoreError> {
        if leases.is_empty() {
            return Ok(());
        }
        let jobs: Vec<Uuid> = leases.iter().map(|(j, _)| j.0).collect();
        let epochs: Vec<i64> = leases.iter().map(|(_, e)| *e).collect();
        sqlx::query(
            "UPDATE job_leases AS l SET expires_at = '-infinity' \
             FROM unnest($2::uuid[], $3::bigint[]) AS r(job, epoch) \
             WHERE l.job_id = r.job AND l.epoch = r.epoch AND l.owner = $1",
        )
        .bind(me)
        .bind(jobs)
        .bind(epochs)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn drain(&self, me: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE replicas SET draining = true WHERE id = $1")
            .bind(me)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn leave(&self, me: &str) -> Result<(), StoreError> {
        let message = serde_json::to_string(&Message::Handover {
            from: me.to_string(),
        })
        .map_err(|e| StoreError::Internal(e.to_string()))?;
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        sqlx::query(
            "UPDATE job_leases SET expires_at = '-infinity' \
             WHERE owner = $1 AND expires_at > now()",
        )
        .bind(me)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        sqlx::query("DELETE FROM replicas WHERE id = $1")
            .bind(me)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(MESSAGES)
            .bind(message)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(())
    }

    async fn send(&self, message: &Message) -> Result<(), StoreError> {
        let payload =
            serde_json::to_string(message).map_err(|e| StoreError::Internal(e.to_string()))?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(MESSAGES)
            .bind(payload)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn listen(&self) -> Result<mpsc::Receiver<Notice>, StoreError> {
        let listener = subscribe(&self.pool).await?;
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(forward(self.pool.clone(), listener, tx));
        Ok(rx)
    }
}

async fn subscribe(pool: &sqlx::PgPool) -> Result<PgListener, StoreError> {
    let mut listener = PgListener::connect_with(pool).await.map_err(db_error)?;
    listener
        .listen_all([MESSAGES, CHANGES])
        .await
        .map_err(db_error)?;
    Ok(listener)
}

/// Passes notifications on until the receiver is dropped; re-subscribes
/// after any failure (with a pause), announcing [`Notice::Reconnected`].
async fn forward(pool: sqlx::PgPool, mut listener: PgListener, tx: mpsc::Sender<Notice>) {
    loop {
        let received = tokio::select! {
            r = listener.try_recv() => r,
            _ = tx.closed() => return,
        };
        match received {
            Ok(Some(n)) => {
                let notice = match n.channel() {
                    CHANGES => parse_change(n.payload()).map(Notice::Changed),
                    _ => serde_json::from_str::<Message>(n.payload())
                        .ok()
                        .map(Notice::Message),
                };
                match notice {
                    Some(notice) => {
                        if tx.send(notice).await.is_err() {
                            return;
                        }
                    }
                    None => tracing::warn!(
                        channel = n.channel(),
                        payload = n.payload(),
                        "ignoring a notification that does not parse"
                    ),
                }
            }
            // The connection was lost and re-established.
            Ok(None) => {
                if tx.send(Notice::Reconnected).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %db_error(e), "lost the notification channel; reconnecting");
                let mut delay = Duration::from_millis(100);
                listener = loop {
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = tx.closed() => return,
                    }
                    match subscribe(&pool).await {
                        Ok(l) => break l,
                        Err(e) => {
                            tracing::debug!(error = %e, "cannot listen yet");
                            delay = (delay * 2).min(Duration::from_secs(3));
                        }
                    }
                };
                if tx.send(Notice::Reconnected).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A rate limit as stored in a job's policy (0: none, the default).
fn rate_limit(limit: i64, period_ms: i64) -> RateLimit {
    RateLimit {
        limit: u32::try_from(limit).ok().filter(|&n| n > 0),
        period_ms: u64::try_from(period_ms).ok().filter(|&n| n > 0),
    }
}

/// `id,state,last_seq,concurrency,immediate,total,running,succeeded,failed,cancelled`,
/// then `rate_limit,rate_period_ms` (migration 0014; absent before), then
/// `open` (0 or 1; absent before migration 0020).
fn parse_change(payload: &str) -> Option<JobChange> {
    let mut parts = payload.split(',');
    let mut next = || parts.next();
    let job = JobId(Uuid::parse_str(next()?).ok()?);
    let state = JobState::parse(next()?)?;
    let mut number = || next().and_then(|p| p.parse::<i64>().ok());
    let last_seq = number()?;
    let concurrency = number()?;
    let immediate = number()? == 1;
    let mut count = || number().map(|n| n.max(0) as u64);
    let counts = ItemCounts {
        total: count()?,
        running: count()?,
        succeeded: count()?,
        failed: count()?,
        cancelled: count()?,
    };
    let rate = match (number(), number()) {
        (Some(limit), Some(period)) => Some(rate_limit(limit, period)),
        _ => None,
    };
    let open = number().map(|n| n == 1);
    Some(JobChange {
        job,
        state,
        last_seq: last_seq.max(0) as u64,
        concurrency: concurrency.max(1) as u32,
        immediate,
        counts,
        rate,
        open,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_payloads_parse() {
        let id = Uuid::new_v4();
        let change = parse_change(&format!("{id},pausing,7,4,1,10,2,3,1,0")).expect("parses");
        assert_eq!(change.job, JobId(id));
        assert_eq!(change.state, JobState::Pausing);
        assert_eq!(change.last_seq, 7);
        assert_eq!(change.concurrency, 4);
        assert!(change.immediate);
        assert_eq!(change.counts.succeeded, 3);
        assert_eq!(change.counts.total, 10);
        assert_eq!(change.rate, None, "a payload of the previous version");
        let change =
            parse_change(&format!("{id},running,7,4,0,10,2,3,1,0,300,60000")).expect("parses");
        assert_eq!(
            change.rate,
            Some(RateLimit {
                limit: Some(300),
                period_ms: Some(60_000)
            })
        );
        let change = parse_change(&format!("{id},running,7,4,0,10,2,3,1,0,0,0")).unwrap();
        assert_eq!(change.rate, Some(RateLimit::default()), "no limit");
        assert!(parse_change("nonsense").is_none());
        assert!(parse_change(&format!("{id},sleeping,7,4,0,1,0,0,0,0")).is_none());
        assert!(parse_change(&format!("{id},running,7,4")).is_none());
    }
}
