-- no-transaction
-- A request id (AIP-155) is unique among the callers of one label scope,
-- not across the server: a scoped token reusing another team's key starts
-- its own job instead of being told the key exists. `request_scope` is the
-- starting caller's scope as one canonical text, empty for an unscoped
-- caller (src/domain/spec.rs, request_scope). Jobs stored before keep their
-- keys, in the unscoped space: which of a job's labels came from its
-- caller's scope was not recorded.
--
-- SQLite cannot drop the UNIQUE of request_id's column, so the table is
-- rebuilt as its documentation says (ALTER TABLE, "other kinds of table
-- schema changes"): foreign keys off, outside any transaction, so that
-- dropping the old table deletes none of the items, pauses and events that
-- refer to it; then one transaction copies every row, swaps the tables and
-- rebuilds the indexes.
PRAGMA foreign_keys = OFF;

BEGIN IMMEDIATE;

CREATE TABLE jobs_rebuilt (
    id                  BLOB PRIMARY KEY,
    name                TEXT NOT NULL,
    executor            TEXT NOT NULL,
    state               TEXT NOT NULL CHECK (state IN (
                            'running', 'pausing', 'paused', 'cancelling',
                            'cancelled', 'succeeded', 'failed')),
    concurrency         INTEGER NOT NULL CHECK (concurrency > 0),
    max_attempts        INTEGER NOT NULL CHECK (max_attempts > 0),
    params              TEXT NOT NULL,
    labels              TEXT NOT NULL,
    -- AIP-155 idempotency key, the scope it is unique in, and the digest
    -- of the request that used it.
    request_id          TEXT,
    request_scope       TEXT NOT NULL DEFAULT '',
    request_fingerprint BLOB,
    -- Item counters, kept in step with `items` in the same transactions;
    -- pending = total - running - succeeded - failed - cancelled.
    total_items         INTEGER NOT NULL,
    running_items       INTEGER NOT NULL DEFAULT 0,
    succeeded_items     INTEGER NOT NULL DEFAULT 0,
    failed_items        INTEGER NOT NULL DEFAULT 0,
    cancelled_items     INTEGER NOT NULL DEFAULT 0,
    -- Sequence of the latest event in job_events.
    last_seq            INTEGER NOT NULL DEFAULT 0,
    last_error          TEXT,
    created_at          INTEGER NOT NULL,
    started_at          INTEGER,
    updated_at          INTEGER NOT NULL,
    ended_at            INTEGER,
    policy              TEXT NOT NULL DEFAULT '{}',
    UNIQUE (request_scope, request_id)
) STRICT;

INSERT INTO jobs_rebuilt (id, name, executor, state, concurrency, max_attempts, params,
    labels, request_id, request_fingerprint, total_items, running_items, succeeded_items,
    failed_items, cancelled_items, last_seq, last_error, created_at, started_at, updated_at,
    ended_at, policy)
SELECT id, name, executor, state, concurrency, max_attempts, params,
    labels, request_id, request_fingerprint, total_items, running_items, succeeded_items,
    failed_items, cancelled_items, last_seq, last_error, created_at, started_at, updated_at,
    ended_at, policy
FROM jobs;

DROP TABLE jobs;
ALTER TABLE jobs_rebuilt RENAME TO jobs;

CREATE INDEX jobs_by_creation ON jobs (created_at DESC, id DESC);
CREATE INDEX jobs_unfinished ON jobs (state)
    WHERE state IN ('running', 'pausing', 'paused', 'cancelling');
CREATE INDEX jobs_ended ON jobs (ended_at)
    WHERE state IN ('succeeded', 'failed', 'cancelled');

COMMIT;

PRAGMA foreign_keys = ON;
