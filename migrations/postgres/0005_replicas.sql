-- Several replicas on one database (`serve --multi-replica`): each live job
-- is owned by one replica through a lease row that the owner renews, and
-- every write the owner makes for the job is fenced by the lease's epoch.
-- Times are compared with the database's clock only (now()), so the
-- replicas' clocks do not matter.

-- The replicas that are up, with their heartbeat: a replica whose row has
-- expired is gone, and new jobs are not given to it.
CREATE TABLE replicas (
    id           text PRIMARY KEY,
    started_at   timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    -- Shutting down: it takes no new jobs and hands its own over.
    draining     boolean NOT NULL DEFAULT false
);

-- One row per job that has ever been owned. The epoch only grows (a
-- released lease keeps its row with an expiry in the past), so a fence
-- (owner, epoch) is never valid twice.
CREATE TABLE job_leases (
    job_id      uuid PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    owner       text NOT NULL,
    epoch       bigint NOT NULL,
    expires_at  timestamptz NOT NULL,
    acquired_at timestamptz NOT NULL
);
CREATE INDEX job_leases_by_owner ON job_leases (owner, expires_at);

-- A job's state, sequence or concurrency changed: tell the replicas (the
-- owner applies it, watchers elsewhere wake up). Only sessions of
-- multi-replica servers set jobvisor.notify; a single server pays nothing.
-- Payload: id,state,last_seq,concurrency,immediate,total,running,
-- succeeded,failed,cancelled (immediate: 1 when PAUSING immediately).
CREATE FUNCTION jobvisor_job_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    immediate integer := 0;
BEGIN
    IF current_setting('jobvisor.notify', true) IS DISTINCT FROM 'on' THEN
        RETURN NULL;
    END IF;
    IF NEW.state = 'pausing' THEN
        SELECT (p.mode = 'immediate')::integer INTO immediate
        FROM job_pauses AS p WHERE p.job_id = NEW.id AND p.resumed_at IS NULL
        ORDER BY p.n DESC LIMIT 1;
    END IF;
    PERFORM pg_notify('jobvisor_jobs', concat_ws(',', NEW.id, NEW.state, NEW.last_seq,
        NEW.concurrency, COALESCE(immediate, 0), NEW.total_items, NEW.running_items,
        NEW.succeeded_items, NEW.failed_items, NEW.cancelled_items));
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_changed AFTER UPDATE ON jobs FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state
          OR OLD.last_seq IS DISTINCT FROM NEW.last_seq
          OR OLD.concurrency IS DISTINCT FROM NEW.concurrency)
    EXECUTE FUNCTION jobvisor_job_changed();

-- The batch function behind a fence: the writes and claims of a job whose
-- lease (f_owner, epoch) is not valid now are refused — a write matches no
-- item lease, a claim takes nothing — and the job is returned with tag 3.
-- A takeover locks the job row before it moves the lease, and so does this
-- function before it reads the lease: a batch either commits before the
-- takeover (which then releases what it claimed) or sees the new owner.
CREATE FUNCTION jobvisor_write_batch_fenced(
    f_owner text, f_job uuid[], f_epoch bigint[],
    w_kind smallint[], w_job uuid[], w_idx integer[], w_lease bigint[],
    w_data bytea[], w_err text[], w_flag boolean[],
    c_job uuid[], c_max integer[], c_from integer[], c_lease bigint[])
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
        w_data, w_err, w_flag,
        c_job,
        ARRAY(SELECT CASE WHEN t.job = ANY(held) THEN t.max ELSE 0 END
              FROM unnest(c_job, c_max) WITH ORDINALITY AS t(job, max, n) ORDER BY t.n),
        c_from, c_lease);
END;
$$;
