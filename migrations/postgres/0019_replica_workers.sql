-- Remote workers across replicas: a worker is connected to one replica,
-- and the replicas that own jobs for its executor borrow its slots from
-- that replica (WorkerService.Lend). Each replica advertises, with its
-- heartbeat, where the others reach it (`serve --advertise-address`; NULL:
-- it cannot lend or borrow) and the executors it has live worker sessions
-- for. NULL and empty for replicas of earlier versions.
ALTER TABLE replicas
    ADD COLUMN address text,
    ADD COLUMN worker_executors text[] NOT NULL DEFAULT '{}';
