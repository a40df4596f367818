-- jobvisor_jobs_deleted: a deleted job takes its items along (trigger
-- jobs_deleted, migration 0008), in place of the foreign key's cascade.
CREATE OR REPLACE FUNCTION jobvisor_jobs_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM items AS i USING old_jobs AS o WHERE i.job_id = o.id;
    RETURN NULL;
END;
$$;
