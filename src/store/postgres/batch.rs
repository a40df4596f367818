//! Group commit: the item writes and claims of many workers and jobs,
//! committed in one round trip by the `jobvisor_write_batch` function
//! (migrations/postgres/0002_write_batch.sql), or, for a batch of
//! successes and claims only, by `jobvisor_write_successes` (0011). Each
//! write is conditional on the item's lease; counters and the event log
//! move once per job per batch, in the same transaction.
//!
//! Lock order (shared with `jobs.rs`, which is why nothing deadlocks): the
//! job rows first, in id order, then their items.

use super::{db_error, rows::job_state};
use crate::{
    domain::{ItemCounts, JobId},
    store::{Batch, BatchFence, BatchOutcome, ClaimedItem, Pulse, StoreError, WriteKind},
};
use sqlx::{PgPool, Row};
use uuid::Uuid;

/// Longest error text stored for an item; the rest is cut.
const MAX_ERROR_BYTES: usize = 8 * 1024;

/// Commits a batch. Usually one call of the batch function. A batch the
/// function cannot do in one statement — two writes for one item, or a
/// claim that could take an item the same batch puts back to pending (a
/// statement sees one snapshot, so the claim would miss it) — runs as
/// several rounds of the function in one transaction, writes before claims.
pub(super) async fn write_batch(pool: &PgPool, batch: &Batch) -> Result<BatchOutcome, StoreError> {
    write(pool, batch, None).await
}

/// [`write_batch`] under leases: through `jobvisor_write_batch_fenced`
/// (migrations/postgres/0005_replicas.sql), which refuses the writes and
/// claims of every job whose lease is not valid.
pub(super) async fn write_batch_fenced(
    pool: &PgPool,
    batch: &Batch,
    fence: &BatchFence,
) -> Result<BatchOutcome, StoreError> {
    write(pool, batch, Some(fence)).await
}

async fn write(
    pool: &PgPool,
    batch: &Batch,
    fence: Option<&BatchFence>,
) -> Result<BatchOutcome, StoreError> {
    let rounds = plan_rounds(batch);
    if rounds.len() == 1 {
        let mut conn = pool.acquire().await.map_err(db_error)?;
        return run_round(&mut conn, batch, fence).await;
    }
    crate::metrics::batch_in_rounds();
    let mut tx = pool.begin().await.map_err(db_error)?;
    let mut outcome = BatchOutcome {
        applied: vec![false; batch.writes.len()],
        ..BatchOutcome::default()
    };
    for round in rounds {
        let sub = Batch {
            writes: round
                .writes
                .iter()
                .map(|&i| batch.writes[i].clone())
                .collect(),
            claims: if round.claims {
                batch.claims.clone()
            } else {
                Vec::new()
            },
        };
        let done = run_round(&mut tx, &sub, fence).await?;
        for job in done.fenced {
            if !outcome.fenced.contains(&job) {
                outcome.fenced.push(job);
            }
        }
        for (k, &i) in round.writes.iter().enumerate() {
            outcome.applied[i] = done.applied[k];
        }
        if round.claims {
            outcome.claimed = done.claimed;
        }
        // A later round's counters are newer: keep the last pulse per job.
        for pulse in done.pulses {
            outcome.pulses.retain(|p| p.job != pulse.job);
            outcome.pulses.push(pulse);
        }
    }
    tx.commit().await.map_err(db_error)?;
    Ok(outcome)
}

/// The writes (by position) and whether the claims go in one round.
struct Round {
    writes: Vec<usize>,
    claims: bool,
}

fn plan_rounds(batch: &Batch) -> Vec<Round> {
    let mut rounds: Vec<(Round, foldhash::HashSet<(Uuid, u32)>)> = Vec::new();
    for (i, w) in batch.writes.iter().enumerate() {
        let key = (w.job.0, w.index);
        // The first round after the last one that already has this item.
        let after = rounds.iter().rposition(|(_, items)| items.contains(&key));
        let at = after.map_or(0, |a| a + 1);
        if at == rounds.len() {
            // Room for every write left (nearly always all in one round).
            let left = batch.writes.len() - i;
            rounds.push((
                Round {
                    writes: Vec::with_capacity(left),
                    claims: false,
                },
                foldhash::HashSet::with_capacity_and_hasher(left, Default::default()),
            ));
        }
        rounds[at].0.writes.push(i);
        rounds[at].1.insert(key);
    }
    if !batch.claims.is_empty() {
        // Claims may share the last round unless that batch puts back to
        // pending an item that one of them could take: then they need a
        // round of their own (and the batch a transaction of its own around
        // the rounds: four round trips instead of one). With 1% of the
        // items failing, two batches in five had such a write, and the job
        // ran 25% slower. None of these can change what a claim takes:
        // - a failure for good (permanent, or the item's last attempt, which
        //   the worker marks permanent) leaves its item failed;
        // - a failure to retry after a delay: no claim takes the item
        //   before then;
        // - an item put back below a claim's lower bound: a claim takes
        //   items at or above its bound, which is usually past every item
        //   in flight (after a retry, at the retried item until a claim
        //   has taken it).
        let repends = |w: &crate::store::ItemWrite| {
            let back = match &w.kind {
                WriteKind::Failed {
                    permanent,
                    retry_after,
                    ..
                } => !permanent && retry_after.is_zero(),
                WriteKind::Released { .. } => true,
                _ => false,
            };
            back && batch
                .claims
                .iter()
                .any(|c| c.job == w.job && c.from_index <= w.index)
        };
        if rounds.is_empty() || batch.writes.iter().any(repends) {
            rounds.push((
                Round {
                    writes: Vec::new(),
                    claims: true,
                },
                Default::default(),
            ));
        } else if let Some(last) = rounds.last_mut() {
            last.0.claims = true;
        }
    }
    if rounds.is_empty() {
        rounds.push((
            Round {
                writes: Vec::new(),
                claims: false,
            },
            Default::default(),
        ));
    }
    rounds.into_iter().map(|(r, _)| r).collect()
}

/// The query of one call of the batch function `call`, with the writes
/// it applied packed into one row (tag 0, their positions in `applied`)
/// instead of a row each: for short items, most of what the function
/// returns is those rows, and decoding them cost more than the rest of the
/// answer. The functions' own results are left as they are, so a server of
/// an earlier version sharing the database still reads them.
macro_rules! packed {
    ($call:literal) => {
        concat!(
            "WITH r AS MATERIALIZED (SELECT * FROM ",
            $call,
            ") SELECT tag, pos, job, idx, payload, attempt, checkpoint, lease, state, total, \
                      running, succeeded, failed, cancelled, last_seq, \
                      NULL::integer[] AS applied \
                 FROM r WHERE tag <> 0 \
               UNION ALL \
               SELECT 0::smallint, 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, \
                      NULL, NULL, NULL, NULL, NULL, array_agg(r.pos) \
                 FROM r WHERE r.tag = 0"
        )
    };
}

/// One call of the batch function: its writes must name distinct items.
async fn run_round(
    conn: &mut sqlx::PgConnection,
    batch: &Batch,
    fence: Option<&BatchFence>,
) -> Result<BatchOutcome, StoreError> {
    let n = batch.writes.len();
    let (mut kinds, mut jobs, mut indexes, mut leases) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut data, mut errors, mut flags, mut delays) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    // Skip reasons, and the counters of successes by write position.
    let mut notes: Vec<Option<&str>> = Vec::with_capacity(n);
    let (mut count_pos, mut count_names, mut count_values) =
        (Vec::<i32>::new(), Vec::<&str>::new(), Vec::<i64>::new());
    for (pos, w) in batch.writes.iter().enumerate() {
        let mut note = None;
        if let WriteKind::Succeeded {
            skip_reason,
            counters,
            ..
        } = &w.kind
        {
            note = skip_reason.as_deref();
            for (name, value) in counters {
                count_pos.push(pos as i32 + 1);
                count_names.push(name);
                count_values.push(*value);
            }
        }
        notes.push(note);
        let mut delay = 0i32;
        let (kind, payload, error, flag): (i16, Option<&[u8]>, Option<String>, bool) = match &w.kind
        {
            WriteKind::Checkpoint(bytes) => (0, Some(bytes), None, false),
            // The text column carries a succeeded item's result.
            WriteKind::Succeeded { result, .. } => {
                (1, None, result.as_deref().map(clean_error), false)
            }
            WriteKind::Failed {
                error,
                permanent,
                retry_after,
            } => {
                delay = retry_after.as_millis().min(i32::MAX as u128) as i32;
                (2, None, Some(clean_error(error)), *permanent)
            }
            WriteKind::Released { refund } => (3, None, None, *refund),
            WriteKind::Cancelled => (4, None, None, false),
        };
        kinds.push(kind);
        jobs.push(w.job.0);
        indexes.push(w.index as i32);
        leases.push(w.lease);
        data.push(payload);
        errors.push(error);
        flags.push(flag);
        delays.push(delay);
    }
    // One statement sees one snapshot: two claims for the same job would
    // take the same items. Claims of a job (of its next items, or of its
    // due retries) are merged into one (lowest bound, summed maximum) and
    // its items shared out in order below.
    let mut merged: Vec<(Uuid, u32, u32, bool)> = Vec::new();
    for c in &batch.claims {
        let same = |m: &&mut (Uuid, u32, u32, bool)| m.0 == c.job.0 && m.3 == c.retries;
        match merged.iter_mut().find(same) {
            Some((_, max, from, _)) => {
                *max = max.saturating_add(c.max);
                *from = (*from).min(c.from_index);
            }
            None => merged.push((c.job.0, c.max, c.from_index, c.retries)),
        }
    }
    let claim_jobs: Vec<Uuid> = merged.iter().map(|m| m.0).collect();
    let claim_max: Vec<i32> = merged
        .iter()
        .map(|m| m.1.min(i32::MAX as u32) as i32)
        .collect();
    let claim_from: Vec<i32> = merged
        .iter()
        .map(|m| m.2.min(i32::MAX as u32) as i32)
        .collect();
    let claim_leases: Vec<i64> = merged.iter().map(|_| new_lease()).collect();
    let claim_due: Vec<bool> = merged.iter().map(|m| m.3).collect();

    // Successes (and claims) only, the usual batch of short items: the
    // function for just those (migrations/postgres/0011), without the
    // steps the other kinds of write need. Under leases (multi-replica)
    // every batch goes through the fenced function.
    let successes_only = fence.is_none()
        && batch
            .writes
            .iter()
            .all(|w| matches!(w.kind, WriteKind::Succeeded { .. }) && !w.kind.has_extras());
    let query = if successes_only {
        // Its result is already packed.
        sqlx::query("SELECT * FROM jobvisor_write_successes($1, $2, $3, $4, $5, $6, $7, $8, $9)")
            .bind(&jobs)
            .bind(&indexes)
            .bind(&leases)
            .bind(&errors)
    } else {
        match fence {
            None => sqlx::query(packed!(
                "jobvisor_write_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
                 $14, $15, $16, $17)"
            )),
            Some(fence) => {
                // Every job the batch touches is fenced; one not listed has
                // epoch 0, which no lease has: refused.
                let mut fenced: Vec<Uuid> = Vec::new();
                for job in jobs.iter().chain(claim_jobs.iter()) {
                    if !fenced.contains(job) {
                        fenced.push(*job);
                    }
                }
                let epochs: Vec<i64> = fenced
                    .iter()
                    .map(|job| {
                        fence
                            .epochs
                            .iter()
                            .find(|(j, _)| j.0 == *job)
                            .map_or(0, |(_, e)| *e)
                    })
                    .collect();
                sqlx::query(packed!(
                    "jobvisor_write_batch_fenced($1, $2, $3, \
                     $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
                     $17, $18, $19, $20)"
                ))
                .bind(fence.owner.to_string())
                .bind(fenced)
                .bind(epochs)
            }
        }
        .bind(&kinds)
        .bind(&jobs)
        .bind(&indexes)
        .bind(&leases)
        .bind(&data)
        .bind(&errors)
        .bind(&flags)
        .bind(&delays)
    };
    let mut query = query
        .bind(&claim_jobs)
        .bind(&claim_max)
        .bind(&claim_from)
        .bind(&claim_leases)
        .bind(&claim_due);
    if !successes_only {
        query = query
            .bind(&notes)
            .bind(&count_pos)
            .bind(&count_names)
            .bind(&count_values);
    }
    let rows = query.fetch_all(&mut *conn).await.map_err(db_error)?;

    let mut outcome = BatchOutcome {
        applied: vec![false; n],
        ..BatchOutcome::default()
    };
    let mut claimed_per_job: Vec<Vec<ClaimedItem>> = vec![Vec::new(); merged.len()];
    // Columns by position (see the SELECT above): looking them up by name
    // costs more than decoding them.
    for row in rows {
        let tag: i16 = row.try_get(0).map_err(db_error)?;
        let pos: i32 = row.try_get(1).map_err(db_error)?;
        match tag {
            0 => {
                let applied: Option<Vec<i32>> = row.try_get(15).map_err(db_error)?;
                for pos in applied.unwrap_or_default() {
                    if let Some(slot) = outcome.applied.get_mut((pos - 1) as usize) {
                        *slot = true;
                    }
                }
            }
            3 => outcome
                .fenced
                .push(JobId(row.try_get(2).map_err(db_error)?)),
            1 => {
                let index: i32 = row.try_get(3).map_err(db_error)?;
                let attempt: i32 = row.try_get(5).map_err(db_error)?;
                let item = ClaimedItem {
                    index: index as u32,
                    payload: row.try_get(4).map_err(db_error)?,
                    attempt: attempt as u32,
                    checkpoint: row.try_get(6).map_err(db_error)?,
                    lease: row.try_get(7).map_err(db_error)?,
                };
                if let Some(list) = claimed_per_job.get_mut((pos - 1) as usize) {
                    list.push(item);
                }
            }
            _ => {
                let state: String = row.try_get(8).map_err(db_error)?;
                let count = |c: usize| -> Result<u64, StoreError> {
                    let v: i64 = row.try_get(c).map_err(db_error)?;
                    Ok(v.max(0) as u64)
                };
                outcome.pulses.push(Pulse {
                    job: JobId(row.try_get(2).map_err(db_error)?),
                    state: job_state(&state)?,
                    counts: ItemCounts {
                        total: count(9)?,
                        running: count(10)?,
                        succeeded: count(11)?,
                        failed: count(12)?,
                        cancelled: count(13)?,
                    },
                    last_seq: count(14)?,
                });
            }
        }
    }
    // Share each job's items out to its claims, lowest first.
    for items in &mut claimed_per_job {
        items.sort_unstable_by_key(|i| std::cmp::Reverse(i.index));
    }
    for c in &batch.claims {
        // Every claim's job is in `merged` (built from these claims).
        let items = match merged
            .iter()
            .position(|m| m.0 == c.job.0 && m.3 == c.retries)
        {
            Some(job) => {
                let pool = &mut claimed_per_job[job];
                let take = (c.max as usize).min(pool.len());
                (0..take).filter_map(|_| pool.pop()).collect()
            }
            None => Vec::new(),
        };
        outcome.claimed.push(items);
    }
    Ok(outcome)
}

/// A fresh fencing token. Random 64 bits: unique across processes and
/// restarts without a shared counter.
fn new_lease() -> i64 {
    Uuid::new_v4().as_u64_pair().0 as i64
}

/// Error text as stored: at most [`MAX_ERROR_BYTES`], without the NUL
/// characters PostgreSQL text cannot hold.
fn clean_error(error: &str) -> String {
    let mut end = error.len().min(MAX_ERROR_BYTES);
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    error[..end].replace('\0', "\u{FFFD}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ClaimRequest, ItemWrite};

    fn write(job: JobId, index: u32, kind: WriteKind) -> ItemWrite {
        ItemWrite {
            job,
            index,
            lease: 1,
            kind,
        }
    }

    fn failed(permanent: bool) -> WriteKind {
        WriteKind::Failed {
            error: "no".into(),
            permanent,
            retry_after: std::time::Duration::ZERO,
        }
    }

    fn shape(batch: &Batch) -> Vec<(usize, bool)> {
        plan_rounds(batch)
            .iter()
            .map(|r| (r.writes.len(), r.claims))
            .collect()
    }

    #[test]
    fn claims_get_a_round_of_their_own_only_after_writes_that_repend_their_job() {
        let (job, other) = (JobId::new(), JobId::new());
        let claim_from = |job, from_index| ClaimRequest {
            job,
            max: 8,
            from_index,
            retries: false,
        };
        let claim = |job| claim_from(job, 0);
        let ok = WriteKind::succeeded();
        let batch = |writes, claims| Batch { writes, claims };
        // Successes and claims: one round.
        let b = batch(vec![write(job, 1, ok.clone())], vec![claim(job)]);
        assert_eq!(shape(&b), vec![(1, true)]);
        // A failure for good does not put the item back: one round.
        let b = batch(
            vec![write(job, 1, ok.clone()), write(job, 2, failed(true))],
            vec![claim(job)],
        );
        assert_eq!(shape(&b), vec![(2, true)]);
        // A failure to retry, or a release, does: the claims come after.
        for kind in [failed(false), WriteKind::Released { refund: true }] {
            let b = batch(vec![write(job, 2, kind)], vec![claim(job)]);
            assert_eq!(shape(&b), vec![(1, false), (0, true)]);
        }
        // A retry that waits cannot be claimed by this batch: one round.
        let later = WriteKind::Failed {
            error: "no".into(),
            permanent: false,
            retry_after: std::time::Duration::from_millis(1),
        };
        let b = batch(vec![write(job, 2, later)], vec![claim(job)]);
        assert_eq!(shape(&b), vec![(1, true)]);
        // Unless the claims are for another job,
        let b = batch(vec![write(job, 2, failed(false))], vec![claim(other)]);
        assert_eq!(shape(&b), vec![(1, true)]);
        // or none of them could take the item: their bounds are above it.
        let above = |from_index| claim_from(job, from_index);
        for kind in [failed(false), WriteKind::Released { refund: true }] {
            let b = batch(vec![write(job, 2, kind.clone())], vec![above(3)]);
            assert_eq!(shape(&b), vec![(1, true)]);
            // A bound at the item, or one claim of several below it, could.
            let b = batch(vec![write(job, 2, kind.clone())], vec![above(2)]);
            assert_eq!(shape(&b), vec![(1, false), (0, true)]);
            let b = batch(vec![write(job, 2, kind)], vec![above(9), above(1)]);
            assert_eq!(shape(&b), vec![(1, false), (0, true)]);
        }
        // Two writes for one item: two rounds, the claims in the last.
        let b = batch(
            vec![write(job, 3, ok.clone()), write(job, 3, ok)],
            vec![claim(other)],
        );
        assert_eq!(shape(&b), vec![(1, false), (1, true)]);
    }
}
