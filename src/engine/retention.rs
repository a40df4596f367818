//! Deleting ended jobs: one by its id (DeleteJob), or by age when the
//! server has a retention (`serve --retention`), in small batches so that
//! a backlog of old jobs never holds long locks or one huge transaction.

use super::{Engine, EngineError};
use crate::{
    domain::{Job, JobId, Refusal},
    store::{PruneLimits, StoreError},
};
use std::time::Duration;

/// One retention batch: at most this many jobs, and no more jobs past the
/// first once their items would pass this many (a job of a million items
/// is deleted alone).
const PRUNE_LIMITS: PruneLimits = PruneLimits {
    jobs: 100,
    items: 50_000,
};

/// How often the retention looks for jobs to delete: a tenth of the
/// retention, between a second and a minute.
pub fn prune_interval(retention: Duration) -> Duration {
    (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Whether the room of `unreclaimed` deleted items is to be reclaimed now,
/// with `--vacuum-after` at `after` (0: never).
fn reclaim_due(unreclaimed: u64, after: u64) -> bool {
    after > 0 && unreclaimed >= after
}

impl Engine {
    /// Deletes an ended job and everything stored for it; returns the job
    /// as it was. A job that has not ended is refused: its supervisor and
    /// workers may still write for it.
    pub async fn delete_job(&self, id: JobId) -> Result<Job, EngineError> {
        self.check_open()?;
        match self.rt.store.delete_job(id).await {
            Ok(job) => {
                crate::metrics::jobs_deleted("call", 1);
                tracing::info!(job_id = %id, state = %job.state, "job deleted");
                Ok(job)
            }
            Err(StoreError::NotEnded(state)) => Err(Refusal::NotDeletable(state).into()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes, batch after batch, every job that ended before `before`;
    /// returns how many jobs and items. Stops early when the server shuts
    /// down.
    pub async fn prune(
        &self,
        before: chrono::DateTime<chrono::Utc>,
    ) -> Result<(usize, u64), EngineError> {
        let (mut jobs, mut items) = (0, 0);
        while !self.closing.is_cancelled() {
            let pruned = self.rt.store.delete_ended(before, PRUNE_LIMITS).await?;
            if pruned.jobs.is_empty() {
                break;
            }
            crate::metrics::jobs_deleted("retention", pruned.jobs.len());
            jobs += pruned.jobs.len();
            items += pruned.items;
            // Each batch is a transaction of its own; the committer's
            // batches and the API's calls interleave with them.
            tokio::task::yield_now().await;
        }
        Ok((jobs, items))
    }

    /// With a retention: deletes the jobs that ended longer ago than it,
    /// every [`prune_interval`] from the start, until shutdown.
    pub(super) fn schedule_pruning(&self) {
        let Some(retention) = self.rt.config.retention else {
            return;
        };
        let Ok(age) = chrono::Duration::from_std(retention) else {
            return;
        };
        let every = prune_interval(retention);
        let vacuum_after = self.rt.config.vacuum_after;
        let engine = self.clone();
        tokio::spawn(async move {
            // Items deleted since the last reclaim of their room.
            let mut unreclaimed = 0u64;
            loop {
                // First one interval in: the start-up's own work (adopting
                // the unfinished jobs) does not share the store with it.
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = engine.closing.cancelled() => return,
                }
                let before = chrono::Utc::now() - age;
                match engine.prune(before).await {
                    Ok((0, _)) => {}
                    Ok((jobs, items)) => {
                        tracing::info!(
                            jobs,
                            items,
                            ?retention,
                            "deleted ended jobs past the retention"
                        );
                        unreclaimed += items;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot delete old jobs now; trying again later")
                    }
                }
                if reclaim_due(unreclaimed, vacuum_after) && !engine.closing.is_cancelled() {
                    let started = std::time::Instant::now();
                    match engine.rt.store.reclaim().await {
                        Ok(()) => {
                            tracing::info!(
                                items = unreclaimed,
                                took = ?started.elapsed(),
                                "reclaimed the room of the items the retention deleted"
                            );
                            unreclaimed = 0;
                        }
                        Err(e) => tracing::warn!(
                            error = %e,
                            "cannot reclaim the room of deleted items now; trying again later"
                        ),
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_room_of_deleted_items_is_reclaimed_past_the_threshold_unless_it_is_off() {
        assert!(!reclaim_due(0, 1_000_000));
        assert!(!reclaim_due(999_999, 1_000_000));
        assert!(reclaim_due(1_000_000, 1_000_000));
        assert!(reclaim_due(5_000_000, 1_000_000));
        assert!(!reclaim_due(5_000_000, 0), "0 turns it off");
    }

    #[test]
    fn the_retention_looks_ten_times_per_period_within_a_second_and_a_minute() {
        assert_eq!(
            prune_interval(Duration::from_secs(2)),
            Duration::from_secs(1)
        );
        assert_eq!(
            prune_interval(Duration::from_secs(300)),
            Duration::from_secs(30)
        );
        assert_eq!(
            prune_interval(Duration::from_secs(30 * 86_400)),
            Duration::from_secs(60)
        );
    }
}
