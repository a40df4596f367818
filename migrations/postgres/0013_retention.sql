-- Retention: a server started with one deletes the jobs that ended longer
-- ago than that, the oldest first (DeleteJob deletes one by its id). The
-- ended jobs in the order they ended, without the live ones, whose rows
-- are updated at every batch.
CREATE INDEX jobs_ended ON jobs (ended_at)
    WHERE state IN ('succeeded', 'failed', 'cancelled');
