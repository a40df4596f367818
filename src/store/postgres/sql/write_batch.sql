-- jobvisor_write_batch: one group commit of item writes and claims (see
-- src/store/postgres/batch.rs, which calls it, for what each array holds).
-- The other definitions keep the arguments of earlier servers working
-- while they share the database with this one during a rolling upgrade:
-- before migration 0012 (no retry delays, no due-retry claims) and before
-- 0021 (no skip reasons, no counters). Each calls the first.
--
-- w_note: a success's skip reason (NULL: it ran). k_pos, k_name, k_value:
-- the counters of the successes, each naming its write by position (from
-- 1); added to the job's counters only when that success applied.
CREATE OR REPLACE FUNCTION jobvisor_write_batch(
    w_kind smallint[], w_job uuid[], w_idx integer[], w_lease bigint[],
    w_data bytea[], w_err text[], w_flag boolean[], w_delay integer[],
    c_job uuid[], c_max integer[], c_from integer[], c_lease bigint[], c_due boolean[],
    w_note text[], k_pos integer[], k_name text[], k_value bigint[])
RETURNS TABLE (
    tag smallint, pos integer, job uuid, idx integer, payload text,
    attempt integer, checkpoint bytea, lease bigint, state text,
    total bigint, running bigint, succeeded bigint, failed bigint,
    cancelled bigint, last_seq bigint)
LANGUAGE plpgsql
-- Every lookup here is a short list driving index lookups; a planner that
-- cannot see the list sizes (LIMIT c_max, unnest) would otherwise hash-join
-- against whole tables.
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
SET enable_bitmapscan = off
-- Plan the statement once per session: re-planning ten CTEs on every call
-- would cost more than running them.
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    -- Job rows first, in id order: the lock order every transaction keeps.
    PERFORM 1 FROM jobs WHERE id = ANY(w_job || c_job) ORDER BY id FOR UPDATE;

    RETURN QUERY
    WITH w AS (
        SELECT * FROM unnest(w_kind, w_job, w_idx, w_lease, w_data, w_err, w_flag, w_delay,
                             w_note)
            WITH ORDINALITY AS t(kind, job, idx, lease, data, err, flag, delay, note, pos)
    ),
    upd AS (
        UPDATE items AS i SET
            state = CASE w.kind
                WHEN 0 THEN i.state
                WHEN 1 THEN 2
                WHEN 2 THEN CASE WHEN w.flag OR i.attempts >= (
                    SELECT j.max_attempts FROM jobs AS j WHERE j.id = w.job) THEN 3 ELSE 0 END
                WHEN 3 THEN 0
                ELSE 4 END,
            lease = CASE WHEN w.kind = 0 THEN i.lease END,
            checkpoint = CASE WHEN w.kind = 0 THEN w.data ELSE i.checkpoint END,
            attempts = CASE WHEN w.kind = 3 AND w.flag THEN GREATEST(i.attempts - 1, 0)
                            ELSE i.attempts END,
            last_error = CASE WHEN w.kind = 2 THEN w.err ELSE i.last_error END,
            result = CASE WHEN w.kind = 1 THEN w.err ELSE i.result END,
            skip_reason = CASE WHEN w.kind = 1 THEN w.note ELSE i.skip_reason END,
            retry_at = CASE WHEN w.kind = 2 AND w.delay > 0
                            THEN now() + w.delay * interval '1 millisecond' END,
            updated_at = now()
        FROM w
        WHERE i.job_id = w.job AND i.idx = w.idx AND i.lease = w.lease AND i.state = 1
        RETURNING w.pos, w.kind, i.job_id, i.idx, i.attempts, i.state, i.last_error, i.retry_at
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
    -- The row versions found above, by their physical address: no second
    -- descent of the primary key per claimed item. A version changed
    -- meanwhile no longer has that address and is not claimed.
    claimed AS (
        UPDATE items AS i SET state = 1, lease = t.lease, attempts = i.attempts + 1,
            retry_at = NULL, updated_at = now()
        FROM to_claim AS t
        WHERE i.ctid = t.tid AND i.state = 0
        RETURNING t.pos, i.job_id, i.idx, i.payload, i.attempts, i.checkpoint, i.lease
    ),
    deltas AS (
        SELECT d.job, sum(d.dr) AS dr, sum(d.ds) AS ds, sum(d.df) AS df, sum(d.dc) AS dc,
               sum(d.de) AS de
        FROM (
            SELECT u.job_id AS job, -1 AS dr, (u.kind = 1)::int AS ds,
                   (u.kind = 2 AND u.state = 3)::int AS df, (u.kind = 4)::int AS dc,
                   (u.kind = 2)::int AS de
            FROM upd AS u WHERE u.kind <> 0
            UNION ALL
            SELECT c.job_id, 1, 0, 0, 0, 0 FROM claimed AS c
        ) AS d
        GROUP BY d.job
    ),
    -- The counters of the successes that applied, summed per job and name.
    counted AS (
        SELECT u.job_id AS job, k.name, sum(k.value) AS value
        FROM unnest(k_pos, k_name, k_value) AS k(pos, name, value)
        JOIN upd AS u ON u.pos = k.pos AND u.kind = 1
        GROUP BY u.job_id, k.name
    ),
    counters AS (
        UPDATE jobs AS j SET
            counters = CASE WHEN EXISTS (SELECT 1 FROM counted AS c WHERE c.job = j.id)
                THEN (SELECT jsonb_object_agg(e.key, e.value) FROM (
                        SELECT s.key, sum(s.value) AS value FROM (
                            SELECT o.key, o.value::numeric AS value
                            FROM jsonb_each_text(j.counters) AS o
                            UNION ALL
                            SELECT c.name, c.value FROM counted AS c WHERE c.job = j.id
                        ) AS s GROUP BY s.key) AS e)
                ELSE j.counters END,
            running_items = j.running_items + d.dr,
            succeeded_items = j.succeeded_items + d.ds,
            failed_items = j.failed_items + d.df,
            cancelled_items = j.cancelled_items + d.dc,
            last_seq = j.last_seq + d.de,
            updated_at = now()
        FROM deltas AS d
        WHERE j.id = d.job
        RETURNING j.id, j.state, j.total_items, j.running_items, j.succeeded_items,
                  j.failed_items, j.cancelled_items, j.last_seq
    ),
    failures AS (
        SELECT u.job_id, u.idx, u.attempts, u.state, u.last_error, u.retry_at,
               row_number() OVER (PARTITION BY u.job_id ORDER BY u.pos) AS rn,
               count(*) OVER (PARTITION BY u.job_id) AS n
        FROM upd AS u WHERE u.kind = 2
    ),
    events AS (
        INSERT INTO job_events (job_id, seq, at, kind, body)
        SELECT f.job_id, k.last_seq - f.n + f.rn, now(), 'item_failed',
               jsonb_build_object('type', 'item_failed', 'index', f.idx,
                   'attempt', f.attempts, 'error', COALESCE(f.last_error, ''),
                   'will_retry', f.state = 0)
               || CASE WHEN f.state = 0 AND f.retry_at IS NOT NULL
                       THEN jsonb_build_object('retry_at', f.retry_at) ELSE '{}' END
        FROM failures AS f JOIN counters AS k ON k.id = f.job_id
    )
    SELECT 0::smallint, u.pos::integer, u.job_id, u.idx, NULL::text, NULL::integer,
           NULL::bytea, NULL::bigint, NULL::text, NULL::bigint, NULL::bigint,
           NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint
    FROM upd AS u
    UNION ALL
    SELECT 1::smallint, c.pos::integer, c.job_id, c.idx, c.payload, c.attempts,
           c.checkpoint, c.lease, NULL, NULL, NULL, NULL, NULL, NULL, NULL
    FROM claimed AS c
    UNION ALL
    SELECT 2::smallint, 0, k.id, NULL, NULL, NULL, NULL, NULL, k.state, k.total_items,
           k.running_items, k.succeeded_items, k.failed_items, k.cancelled_items,
           k.last_seq
    FROM counters AS k;
END;
$$;

CREATE OR REPLACE FUNCTION jobvisor_write_batch(
    w_kind smallint[], w_job uuid[], w_idx integer[], w_lease bigint[],
    w_data bytea[], w_err text[], w_flag boolean[], w_delay integer[],
    c_job uuid[], c_max integer[], c_from integer[], c_lease bigint[], c_due boolean[])
RETURNS TABLE (
    tag smallint, pos integer, job uuid, idx integer, payload text,
    attempt integer, checkpoint bytea, lease bigint, state text,
    total bigint, running bigint, succeeded bigint, failed bigint,
    cancelled bigint, last_seq bigint)
LANGUAGE sql
AS $$
    SELECT * FROM jobvisor_write_batch(
        w_kind, w_job, w_idx, w_lease, w_data, w_err, w_flag, w_delay,
        c_job, c_max, c_from, c_lease, c_due,
        array_fill(NULL::text, ARRAY[cardinality(w_kind)]),
        '{}'::integer[], '{}'::text[], '{}'::bigint[]);
$$;

CREATE OR REPLACE FUNCTION jobvisor_write_batch(
    w_kind smallint[], w_job uuid[], w_idx integer[], w_lease bigint[],
    w_data bytea[], w_err text[], w_flag boolean[],
    c_job uuid[], c_max integer[], c_from integer[], c_lease bigint[])
RETURNS TABLE (
    tag smallint, pos integer, job uuid, idx integer, payload text,
    attempt integer, checkpoint bytea, lease bigint, state text,
    total bigint, running bigint, succeeded bigint, failed bigint,
    cancelled bigint, last_seq bigint)
LANGUAGE sql
AS $$
    SELECT * FROM jobvisor_write_batch(
        w_kind, w_job, w_idx, w_lease, w_data, w_err, w_flag,
        array_fill(0, ARRAY[cardinality(w_kind)]), c_job, c_max, c_from, c_lease,
        array_fill(false, ARRAY[cardinality(c_job)]),
        array_fill(NULL::text, ARRAY[cardinality(w_kind)]),
        '{}'::integer[], '{}'::text[], '{}'::bigint[]);
$$;
