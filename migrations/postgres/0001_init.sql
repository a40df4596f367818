-- jobvisor's system of record: jobs, their items, their pause history and
-- an append-only event log with a per-job sequence.

CREATE TABLE jobs (
    id                  uuid PRIMARY KEY,
    name                text NOT NULL,
    executor            text NOT NULL,
    state               text NOT NULL CHECK (state IN (
                            'running', 'pausing', 'paused', 'cancelling',
                            'cancelled', 'succeeded', 'failed')),
    concurrency         integer NOT NULL CHECK (concurrency > 0),
    max_attempts        integer NOT NULL CHECK (max_attempts > 0),
    params              jsonb NOT NULL,
    labels              jsonb NOT NULL,
    -- AIP-155 idempotency key and the digest of the request that used it.
    request_id          text UNIQUE,
    request_fingerprint bytea,
    -- Item counters, kept in step with `items` in the same transactions;
    -- pending = total - running - succeeded - failed - cancelled.
    total_items         bigint NOT NULL,
    running_items       bigint NOT NULL DEFAULT 0,
    succeeded_items     bigint NOT NULL DEFAULT 0,
    failed_items        bigint NOT NULL DEFAULT 0,
    cancelled_items     bigint NOT NULL DEFAULT 0,
    -- Sequence of the latest event in job_events.
    last_seq            bigint NOT NULL DEFAULT 0,
    last_error          text,
    created_at          timestamptz NOT NULL,
    started_at          timestamptz,
    updated_at          timestamptz NOT NULL,
    ended_at            timestamptz
);

CREATE INDEX jobs_by_creation ON jobs (created_at DESC, id DESC);
CREATE INDEX jobs_unfinished ON jobs (state)
    WHERE state IN ('running', 'pausing', 'paused', 'cancelling');
CREATE INDEX jobs_by_labels ON jobs USING gin (labels jsonb_path_ops);

-- state: 0 pending, 1 running, 2 succeeded, 3 failed, 4 cancelled.
-- lease: the token of the claim that owns a running item; every write for
-- the item is conditional on it (fencing).
CREATE TABLE items (
    job_id      uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx         integer NOT NULL,
    state       smallint NOT NULL DEFAULT 0 CHECK (state BETWEEN 0 AND 4),
    attempts    integer NOT NULL DEFAULT 0,
    lease       bigint,
    payload     text NOT NULL,
    checkpoint  bytea,
    last_error  text,
    updated_at  timestamptz,
    PRIMARY KEY (job_id, idx)
) WITH (fillfactor = 80);

-- Claims take the lowest pending indexes of a job.
CREATE INDEX items_pending ON items (job_id, idx) WHERE state = 0;

CREATE TABLE job_pauses (
    job_id       uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    n            integer NOT NULL,
    mode         text NOT NULL,
    reason       text,
    requested_by text,
    request_id   text,
    requested_at timestamptz NOT NULL,
    paused_at    timestamptz,
    resumed_at   timestamptz,
    PRIMARY KEY (job_id, n)
);

CREATE TABLE job_events (
    job_id  uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq     bigint NOT NULL,
    at      timestamptz NOT NULL,
    kind    text NOT NULL,
    body    jsonb NOT NULL,
    PRIMARY KEY (job_id, seq)
);
