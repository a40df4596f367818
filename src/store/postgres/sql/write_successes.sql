-- jobvisor_write_successes: the lean path of a batch of successes and
-- claims only, the usual batch of short items. The second definition keeps
-- the arguments of servers before migration 0012 working (it calls the
-- first).
CREATE OR REPLACE FUNCTION jobvisor_write_successes(
    w_job uuid[], w_idx integer[], w_lease bigint[], w_result text[],
    c_job uuid[], c_max integer[], c_from integer[], c_lease bigint[], c_due boolean[])
RETURNS TABLE (
    tag smallint, pos integer, job uuid, idx integer, payload text,
    attempt integer, checkpoint bytea, lease bigint, state text,
    total bigint, running bigint, succeeded bigint, failed bigint,
    cancelled bigint, last_seq bigint, applied integer[])
LANGUAGE plpgsql
-- As jobvisor_write_batch: short lists driving index lookups, planned
-- once per session.
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
SET enable_bitmapscan = off
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    -- Job rows first, in id order: the lock order every transaction keeps.
    PERFORM 1 FROM jobs WHERE id = ANY(w_job || c_job) ORDER BY id FOR UPDATE;

    RETURN QUERY
    WITH done AS (
        UPDATE items AS i SET state = 2, lease = NULL, result = w.result, updated_at = now()
        FROM unnest(w_job, w_idx, w_lease, w_result)
            WITH ORDINALITY AS w(job, idx, lease, result, pos)
        WHERE i.job_id = w.job AND i.idx = w.idx AND i.lease = w.lease AND i.state = 1
        RETURNING w.pos, i.job_id, i.idx
    ),
    to_claim AS MATERIALIZED (
        SELECT c.pos, c.job, c.lease, x.tid
        FROM unnest(c_job, c_max, c_from, c_lease, c_due)
            WITH ORDINALITY AS c(job, max, lo, lease, due, pos)
        JOIN jobs AS j ON j.id = c.job AND j.state = 'running'
        CROSS JOIN LATERAL (
            (SELECT p.ctid AS tid FROM items AS p
             WHERE NOT c.due AND p.job_id = c.job AND p.idx >= c.lo AND p.state = 0
               AND (p.retry_at IS NULL OR p.retry_at <= now())
             ORDER BY p.idx LIMIT c.max)
            UNION ALL
            -- Due retries only, through items_retrying.
            (SELECT p.ctid AS tid FROM items AS p
             WHERE c.due AND p.job_id = c.job AND p.idx >= c.lo
               AND p.retry_at IS NOT NULL AND p.retry_at <= now() AND p.state = 0
             ORDER BY p.idx LIMIT c.max)
        ) AS x
    ),
    -- By the address the scan found, as in jobvisor_write_batch (0009).
    claimed AS (
        UPDATE items AS i SET state = 1, lease = t.lease, attempts = i.attempts + 1,
            retry_at = NULL, updated_at = now()
        FROM to_claim AS t
        WHERE i.ctid = t.tid AND i.state = 0
        RETURNING t.pos, i.job_id, i.idx, i.payload, i.attempts, i.checkpoint, i.lease
    ),
    deltas AS (
        SELECT d.job, sum(d.ds) AS ds, sum(d.dc) AS dc
        FROM (
            SELECT u.job_id AS job, 1 AS ds, 0 AS dc FROM done AS u
            UNION ALL
            SELECT c.job_id, 0, 1 FROM claimed AS c
        ) AS d
        GROUP BY d.job
    ),
    counters AS (
        UPDATE jobs AS j SET
            running_items = j.running_items - d.ds + d.dc,
            succeeded_items = j.succeeded_items + d.ds,
            updated_at = now()
        FROM deltas AS d
        WHERE j.id = d.job
        RETURNING j.id, j.state, j.total_items, j.running_items, j.succeeded_items,
                  j.failed_items, j.cancelled_items, j.last_seq
    )
    -- The writes applied, as one row of their positions: a row each
    -- cost more to send and decode than the rest of the answer.
    SELECT 0::smallint, 0, NULL::uuid, NULL::integer, NULL::text, NULL::integer,
           NULL::bytea, NULL::bigint, NULL::text, NULL::bigint, NULL::bigint,
           NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint,
           (SELECT array_agg(u.pos::integer) FROM done AS u)
    UNION ALL
    SELECT 1::smallint, c.pos::integer, c.job_id, c.idx, c.payload, c.attempts,
           c.checkpoint, c.lease, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
    FROM claimed AS c
    UNION ALL
    SELECT 2::smallint, 0, k.id, NULL, NULL, NULL, NULL, NULL, k.state, k.total_items,
           k.running_items, k.succeeded_items, k.failed_items, k.cancelled_items,
           k.last_seq, NULL
    FROM counters AS k;
END;
$$;

CREATE OR REPLACE FUNCTION jobvisor_write_successes(
    w_job uuid[], w_idx integer[], w_lease bigint[], w_result text[],
    c_job uuid[], c_max integer[], c_from integer[], c_lease bigint[])
RETURNS TABLE (
    tag smallint, pos integer, job uuid, idx integer, payload text,
    attempt integer, checkpoint bytea, lease bigint, state text,
    total bigint, running bigint, succeeded bigint, failed bigint,
    cancelled bigint, last_seq bigint, applied integer[])
LANGUAGE sql
AS $$
    SELECT * FROM jobvisor_write_successes(
        w_job, w_idx, w_lease, w_result, c_job, c_max, c_from, c_lease,
        array_fill(false, ARRAY[cardinality(c_job)]));
$$;
