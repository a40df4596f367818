-- Jobs that grow (see the PostgreSQL migration of the same number): a job
-- started open does not end until closed, and each AddItems page with a
-- request id is kept so that a retry adds nothing twice.
ALTER TABLE jobs ADD COLUMN open INTEGER NOT NULL DEFAULT 0;

CREATE TABLE job_item_pages (
    job_id      BLOB NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    request_id  TEXT NOT NULL,
    first_index INTEGER NOT NULL,
    added       INTEGER NOT NULL,
    closed      INTEGER NOT NULL,
    fingerprint BLOB NOT NULL,
    PRIMARY KEY (job_id, request_id)
) STRICT;
