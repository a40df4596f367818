-- Items an executor said were done already, and counters of the job's own
-- (see the PostgreSQL migration of the same number): `skip_reason` on a
-- succeeded item that was skipped, and the job's counters as a JSON object
-- of sums, moved in the commit of the success that reports them.
ALTER TABLE items ADD COLUMN skip_reason TEXT;
ALTER TABLE jobs ADD COLUMN counters TEXT NOT NULL DEFAULT '{}';
