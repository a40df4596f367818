-- jobvisor's embedded system of record: the same tables as
-- migrations/postgres, in SQLite's types. STRICT tables refuse a value of
-- the wrong type instead of silently storing it.
--
-- Representations (src/store/sqlite/codec.rs reads and writes them):
--   ids          16-byte BLOBs (the UUID's bytes: they sort like PostgreSQL's uuid)
--   timestamps   INTEGER microseconds since the Unix epoch, UTC (exact
--                round trip, and ordering is integer ordering)
--   maps         TEXT holding a JSON object of strings
--   event bodies TEXT holding the event's JSON

CREATE TABLE jobs (
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
    -- AIP-155 idempotency key and the digest of the request that used it.
    request_id          TEXT UNIQUE,
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
    ended_at            INTEGER
) STRICT;

CREATE INDEX jobs_by_creation ON jobs (created_at DESC, id DESC);
CREATE INDEX jobs_unfinished ON jobs (state)
    WHERE state IN ('running', 'pausing', 'paused', 'cancelling');

-- state: 0 pending, 1 running, 2 succeeded, 3 failed, 4 cancelled.
-- lease: the token of the claim that owns a running item; every write for
-- the item is conditional on it (fencing).
CREATE TABLE items (
    job_id      BLOB NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx         INTEGER NOT NULL,
    state       INTEGER NOT NULL DEFAULT 0 CHECK (state BETWEEN 0 AND 4),
    attempts    INTEGER NOT NULL DEFAULT 0,
    lease       INTEGER,
    payload     TEXT NOT NULL,
    checkpoint  BLOB,
    last_error  TEXT,
    updated_at  INTEGER,
    PRIMARY KEY (job_id, idx)
) STRICT;

-- Claims take the lowest pending indexes of a job. SQLite updates rows in
-- place with no HOT concern, so the partial index costs little and spares
-- a claim the walk over a long prefix of finished items.
CREATE INDEX items_pending ON items (job_id, idx) WHERE state = 0;

CREATE TABLE job_pauses (
    job_id       BLOB NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    n            INTEGER NOT NULL,
    mode         TEXT NOT NULL,
    reason       TEXT,
    requested_by TEXT,
    request_id   TEXT,
    requested_at INTEGER NOT NULL,
    paused_at    INTEGER,
    resumed_at   INTEGER,
    PRIMARY KEY (job_id, n)
) STRICT;

CREATE TABLE job_events (
    job_id  BLOB NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq     INTEGER NOT NULL,
    at      INTEGER NOT NULL,
    kind    TEXT NOT NULL,
    body    TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
) STRICT;
