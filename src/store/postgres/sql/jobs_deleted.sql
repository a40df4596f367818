-- jobvisor_jobs_deleted: a deleted job takes its items along (trigger
-- jobs_deleted, migration 0008), in place of the foreign key's cascade.
-- Planned once per session, as jobvisor_items_job_exists: the settings
-- keep the deletion on the items' primary key, never a hash of the whole
-- items table, whatever its size when the plan was made.
CREATE OR REPLACE FUNCTION jobvisor_jobs_deleted() RETURNS trigger
LANGUAGE plpgsql
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
SET enable_bitmapscan = off
AS $$
BEGIN
    DELETE FROM items AS i USING old_jobs AS o WHERE i.job_id = o.id;
    RETURN NULL;
END;
$$;
