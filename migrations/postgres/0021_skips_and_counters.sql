-- Items an executor said were done already, and counters of the job's own.
--
-- `items.skip_reason`: set when a succeeded item was skipped (exec's
-- `@skip <why>`, a worker's success with a skip reason): the item is
-- SUCCEEDED, and this says why it did no work. NULL otherwise.
--
-- `jobs.counters`: the executor's named counters (exec's `@count name n`),
-- summed over the job's succeeded items, moved in the same commit as the
-- success that reports them (jobvisor_write_batch), so an item retried,
-- interrupted or run again after a crash counts once: only the attempt
-- that succeeds is counted.
ALTER TABLE items ADD COLUMN skip_reason text;
ALTER TABLE jobs ADD COLUMN counters jsonb NOT NULL DEFAULT '{}';
