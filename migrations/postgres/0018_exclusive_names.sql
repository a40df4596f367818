-- One live job per name, when asked for: a job started with `exclusive`
-- (StartJob) or by RunJob keeps its name to itself while it is live
-- (running, pausing, paused or cancelling). The partial unique index is the
-- guard: two starts at once, through any replicas, make one job, and the
-- name is free again the moment the job ends.
ALTER TABLE jobs ADD COLUMN exclusive boolean NOT NULL DEFAULT false;

CREATE UNIQUE INDEX jobs_live_exclusive_name ON jobs (name)
    WHERE exclusive AND state IN ('running', 'pausing', 'paused', 'cancelling');
