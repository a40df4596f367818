-- jobvisor_write_batch_fenced: jobvisor_write_batch under the job leases
-- of multi-replica mode: the batch commits only if every job it touches is
-- still leased to (owner, epoch). The other definitions keep the
-- arguments of servers before migrations 0012 and 0021 working (each
-- calls the first).
CREATE OR REPLACE FUNCTION jobvisor_write_batch_fenced(
    f_owner text, f_job uuid[], f_epoch bigint[],
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
AS $$
DECLARE
    held uuid[];
BEGIN
    PERFORM 1 FROM jobs AS j WHERE j.id = ANY(w_job || c_job) ORDER BY j.id FOR UPDATE;
    SELECT COALESCE(array_agg(f.job), '{}') INTO held
    FROM unnest(f_job, f_epoch) AS f(job, epoch)
    JOIN job_leases AS l ON l.job_id = f.job AND l.epoch = f.epoch
    WHERE l.owner = f_owner AND l.expires_at > now();

    RETURN QUERY
    SELECT 3::smallint, 0, f.job, NULL::integer, NULL::text, NULL::integer,
           NULL::bytea, NULL::bigint, NULL::text, NULL::bigint, NULL::bigint,
           NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint
    FROM unnest(f_job) AS f(job)
    WHERE NOT (f.job = ANY(held));

    RETURN QUERY
    SELECT * FROM jobvisor_write_batch(
        w_kind, w_job, w_idx,
        ARRAY(SELECT CASE WHEN t.job = ANY(held) THEN t.lease END
              FROM unnest(w_job, w_lease) WITH ORDINALITY AS t(job, lease, n) ORDER BY t.n),
        w_data, w_err, w_flag, w_delay,
        c_job,
        ARRAY(SELECT CASE WHEN t.job = ANY(held) THEN t.max ELSE 0 END
              FROM unnest(c_job, c_max) WITH ORDINALITY AS t(job, max, n) ORDER BY t.n),
        c_from, c_lease, c_due, w_note, k_pos, k_name, k_value);
END;
$$;

CREATE OR REPLACE FUNCTION jobvisor_write_batch_fenced(
    f_owner text, f_job uuid[], f_epoch bigint[],
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
    SELECT * FROM jobvisor_write_batch_fenced(
        f_owner, f_job, f_epoch, w_kind, w_job, w_idx, w_lease, w_data, w_err, w_flag,
        w_delay, c_job, c_max, c_from, c_lease, c_due,
        array_fill(NULL::text, ARRAY[cardinality(w_kind)]),
        '{}'::integer[], '{}'::text[], '{}'::bigint[]);
$$;

CREATE OR REPLACE FUNCTION jobvisor_write_batch_fenced(
    f_owner text, f_job uuid[], f_epoch bigint[],
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
    SELECT * FROM jobvisor_write_batch_fenced(
        f_owner, f_job, f_epoch, w_kind, w_job, w_idx, w_lease, w_data, w_err, w_flag,
        array_fill(0, ARRAY[cardinality(w_kind)]), c_job, c_max, c_from, c_lease,
        array_fill(false, ARRAY[cardinality(c_job)]),
        array_fill(NULL::text, ARRAY[cardinality(w_kind)]),
        '{}'::integer[], '{}'::text[], '{}'::bigint[]);
$$;
