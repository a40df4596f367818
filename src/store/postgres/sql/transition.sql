-- jobvisor_transition: one job-level transition decided by the engine
-- (domain::decide), applied in one statement: the guarded update of the
-- job row, its effects on items and pause records, and the event.
-- jobvisor_job_pauses: the job's pause history as the transition returns it.
CREATE OR REPLACE FUNCTION jobvisor_job_pauses(p_job uuid)
RETURNS TABLE (
    pause_mode text[], pause_reason text[], pause_requested_by text[],
    pause_request_id text[], pause_requested_at timestamptz[], pause_paused_at timestamptz[],
    pause_resumed_at timestamptz[], pause_resume_at timestamptz[])
LANGUAGE sql STABLE
AS $$
    SELECT array_agg(p.mode), array_agg(p.reason), array_agg(p.requested_by),
           array_agg(p.request_id), array_agg(p.requested_at), array_agg(p.paused_at),
           array_agg(p.resumed_at), array_agg(p.resume_at)
      FROM (SELECT * FROM job_pauses WHERE job_id = p_job ORDER BY n) AS p
$$;

CREATE OR REPLACE FUNCTION jobvisor_transition(
    p_id uuid, p_from text, p_to text, p_effects text[], p_open_mode text,
    p_reason text, p_requested_by text, p_request_id text, p_resume_at timestamptz,
    p_last_error text, p_event_kind text, p_event jsonb,
    p_owner text, p_epoch bigint)
RETURNS TABLE (
    job jobs, pause_mode text[], pause_reason text[], pause_requested_by text[],
    pause_request_id text[], pause_requested_at timestamptz[], pause_paused_at timestamptz[],
    pause_resumed_at timestamptz[], pause_resume_at timestamptz[])
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_state text;
    v_pending bigint;
    v_running bigint;
    v_open boolean;
    v_seq bigint;
    v_effect text;
BEGIN
    SELECT state INTO v_state FROM jobs WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'JV404', MESSAGE = 'job not found';
    END IF;
    IF p_owner IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM job_leases WHERE job_id = p_id AND owner = p_owner
            AND epoch = p_epoch AND expires_at > now()) THEN
        RAISE EXCEPTION USING ERRCODE = 'JV423', MESSAGE = 'lease lost';
    END IF;
    IF v_state <> p_from THEN
        RAISE EXCEPTION USING ERRCODE = 'JV409', MESSAGE = v_state;
    END IF;
    -- A job may only finish once no item is pending or running; a fatal
    -- failure (which releases what runs) is not checked.
    -- An open job (AddItems) does not finish until it is closed.
    IF p_to IN ('succeeded', 'failed') AND NOT ('release_running' = ANY(p_effects)) THEN
        SELECT total_items - running_items - succeeded_items - failed_items - cancelled_items,
               running_items, open
          INTO v_pending, v_running, v_open FROM jobs WHERE id = p_id;
        IF v_open THEN
            RAISE EXCEPTION USING ERRCODE = 'JV426', MESSAGE = 'job is open';
        END IF;
        IF v_pending <> 0 OR v_running <> 0 THEN
            RAISE EXCEPTION USING ERRCODE = 'JV425',
                MESSAGE = GREATEST(v_pending, 0) || ' ' || GREATEST(v_running, 0);
        END IF;
    END IF;
    FOREACH v_effect IN ARRAY p_effects LOOP
        CASE v_effect
        WHEN 'open_pause' THEN
            INSERT INTO job_pauses (job_id, n, mode, reason, requested_by, request_id,
                                    requested_at, resume_at)
            SELECT p_id, COALESCE(MAX(n), 0) + 1, p_open_mode, p_reason, p_requested_by,
                   p_request_id, now(), p_resume_at
              FROM job_pauses WHERE job_id = p_id;
        WHEN 'mark_paused' THEN
            UPDATE job_pauses SET paused_at = now()
             WHERE job_id = p_id AND paused_at IS NULL AND resumed_at IS NULL;
        WHEN 'close_pause' THEN
            UPDATE job_pauses SET resumed_at = now() WHERE job_id = p_id AND resumed_at IS NULL;
        WHEN 'release_running' THEN
            WITH released AS (
                UPDATE items SET state = 0, lease = NULL, attempts = GREATEST(attempts - 1, 0),
                       updated_at = now()
                 WHERE job_id = p_id AND state = 1 RETURNING 1)
            UPDATE jobs SET running_items = running_items - (SELECT count(*) FROM released)
             WHERE id = p_id;
        WHEN 'cancel_remaining' THEN
            WITH cancelled AS (
                UPDATE items SET state = 4, lease = NULL, updated_at = now()
                 WHERE job_id = p_id AND state IN (0, 1) RETURNING 1)
            UPDATE jobs SET running_items = 0,
                   cancelled_items = cancelled_items + (SELECT count(*) FROM cancelled)
             WHERE id = p_id;
        WHEN 'reset_failed' THEN
            WITH reset AS (
                UPDATE items SET state = 0, attempts = 0, updated_at = now()
                 WHERE job_id = p_id AND state = 3 RETURNING 1)
            UPDATE jobs SET failed_items = failed_items - (SELECT count(*) FROM reset)
             WHERE id = p_id;
        WHEN 'end' THEN
            UPDATE jobs SET ended_at = now() WHERE id = p_id;
        WHEN 'reopen' THEN
            UPDATE jobs SET ended_at = NULL WHERE id = p_id;
        END CASE;
    END LOOP;
    UPDATE jobs SET state = p_to, last_seq = last_seq + 1, updated_at = now(),
           last_error = COALESCE(p_last_error, last_error)
     WHERE id = p_id RETURNING last_seq INTO v_seq;
    INSERT INTO job_events (job_id, seq, at, kind, body)
    VALUES (p_id, v_seq, now(), p_event_kind, p_event);
    -- The job and its pause history, as the store's job reads have them.
    RETURN QUERY
    SELECT j, pz.* FROM jobs AS j CROSS JOIN LATERAL jobvisor_job_pauses(p_id) AS pz
     WHERE j.id = p_id;
END;
$$;
