-- jobvisor_job_id_kept: a job's id never changes while it has items
-- (trigger jobs_id_kept, migration 0008).
CREATE OR REPLACE FUNCTION jobvisor_job_id_kept() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    orphan uuid;
BEGIN
    SELECT i.job_id INTO orphan FROM items AS i
    WHERE NOT EXISTS (SELECT 1 FROM jobs AS j WHERE j.id = i.job_id)
    LIMIT 1;
    IF FOUND THEN
        RAISE foreign_key_violation USING
            MESSAGE = format('job %s has items: its id cannot change', orphan),
            TABLE = 'jobs';
    END IF;
    RETURN NULL;
END;
$$;
