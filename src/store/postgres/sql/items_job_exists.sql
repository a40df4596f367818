-- jobvisor_items_job_exists: inserted items belong to an existing job,
-- checked once per INSERT statement (trigger items_job_exists, migration
-- 0008) instead of a foreign key checked per item.
--
-- Its queries are planned once per session and kept until the statistics
-- of the tables change: planned while the jobs table was small, the join
-- became a hash of the whole table, read again at every StartJob as the
-- table grew (with autovacuum off, for ever). The settings keep them on
-- the jobs' primary key however the tables look when they are planned.
CREATE OR REPLACE FUNCTION jobvisor_items_job_exists() RETURNS trigger
LANGUAGE plpgsql
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
SET enable_bitmapscan = off
AS $$
DECLARE
    missing uuid;
BEGIN
    PERFORM 1 FROM jobs AS j
    WHERE j.id IN (SELECT DISTINCT n.job_id FROM new_items AS n)
    ORDER BY j.id FOR KEY SHARE;
    SELECT n.job_id INTO missing
    FROM (SELECT DISTINCT job_id FROM new_items) AS n
    WHERE NOT EXISTS (SELECT 1 FROM jobs AS j WHERE j.id = n.job_id)
    LIMIT 1;
    IF FOUND THEN
        RAISE foreign_key_violation USING
            MESSAGE = format('items of job %s, which does not exist', missing),
            TABLE = 'items';
    END IF;
    RETURN NULL;
END;
$$;
