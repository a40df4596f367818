-- A delay between an item's attempts: a failure to be retried after a
-- delay puts its item back to pending with `retry_at` (microseconds since
-- the epoch, as every time here) set, and no claim takes it before then.
-- A claim clears it.
ALTER TABLE items ADD COLUMN retry_at INTEGER;
