-- Which version of the server's PL/pgSQL functions the database holds.
-- The functions themselves are code, not migrations: one file each under
-- src/store/postgres/sql/, applied at start-up (src/store/postgres/code.rs).
-- This row keeps an older server, started during a rolling upgrade, from
-- putting back the older functions a newer one has replaced.
CREATE TABLE jobvisor_code (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version integer NOT NULL,
    digest text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
