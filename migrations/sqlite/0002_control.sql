-- More control: a job's policy (running-time budget, error breaker), a
-- pause that resumes by itself, and the result of a succeeded item.

ALTER TABLE jobs ADD COLUMN policy TEXT NOT NULL DEFAULT '{}';
ALTER TABLE job_pauses ADD COLUMN resume_at INTEGER;
CREATE INDEX job_pauses_due ON job_pauses (resume_at)
    WHERE resume_at IS NOT NULL AND resumed_at IS NULL;
ALTER TABLE items ADD COLUMN result TEXT;
