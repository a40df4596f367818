-- One live job per name, when asked for (see the PostgreSQL migration of
-- the same number): the partial unique index guards it.
ALTER TABLE jobs ADD COLUMN exclusive INTEGER NOT NULL DEFAULT 0;

CREATE UNIQUE INDEX jobs_live_exclusive_name ON jobs (name)
    WHERE exclusive = 1 AND state IN ('running', 'pausing', 'paused', 'cancelling');
