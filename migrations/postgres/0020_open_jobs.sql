-- Jobs that grow: items added to a job that has not ended (AddItems), in
-- pages, and jobs started open, which do not end while open however many
-- of their items are done, until a call closes them.
--
-- `open`: the job waits for more items; a finish is refused while it is
-- set (jobvisor_transition). `job_item_pages`: each AddItems page with a
-- request id, so that a retried page adds nothing twice and answers as the
-- first did (the indexes it got); deleted with its job.
ALTER TABLE jobs ADD COLUMN open boolean NOT NULL DEFAULT false;

CREATE TABLE job_item_pages (
    job_id      uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    request_id  text NOT NULL,
    first_index bigint NOT NULL,
    added       integer NOT NULL,
    closed      boolean NOT NULL,
    fingerprint bytea NOT NULL,
    PRIMARY KEY (job_id, request_id)
);
