-- jobvisor_item_job_exists: an item never moves to a job that does not
-- exist (trigger items_job_kept, migration 0010).
CREATE OR REPLACE FUNCTION jobvisor_item_job_exists() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM jobs AS j WHERE j.id = NEW.job_id FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE foreign_key_violation USING
            MESSAGE = format('item %s of job %s cannot move to job %s, which does not exist',
                             OLD.idx, OLD.job_id, NEW.job_id),
            TABLE = 'items';
    END IF;
    RETURN NEW;
END;
$$;
