-- jobvisor_job_changed: the jobs_changed trigger's function (trigger in
-- migration 0005): announces a committed change of a job's state or
-- settings to the other replicas (LISTEN/NOTIFY), when the session asks
-- for it (the session setting jobvisor.notify).
CREATE OR REPLACE FUNCTION jobvisor_job_changed() RETURNS trigger
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
        NEW.succeeded_items, NEW.failed_items, NEW.cancelled_items,
        COALESCE(NEW.policy->>'rate_limit', '0'),
        COALESCE(NEW.policy->>'rate_period_ms', '0'), NEW.open::integer));
    RETURN NULL;
END;
$$;
