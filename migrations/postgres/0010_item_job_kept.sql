-- The last guarantee of the foreign key items → jobs that 0008 did not
-- keep: an UPDATE that sets an item's job_id must name a job that exists
-- (and locks it FOR KEY SHARE, as the key check did). A row trigger that
-- fires only for UPDATEs naming items.job_id, and only for rows whose job
-- actually changes: nothing in jobvisor sets it, so the claims and
-- outcomes, which update other columns, pay nothing.

CREATE FUNCTION jobvisor_item_job_exists() RETURNS trigger
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

CREATE TRIGGER items_job_kept BEFORE UPDATE OF job_id ON items
    FOR EACH ROW WHEN (OLD.job_id IS DISTINCT FROM NEW.job_id)
    EXECUTE FUNCTION jobvisor_item_job_exists();
