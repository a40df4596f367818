-- A request id (AIP-155) is unique among the callers of one label scope,
-- not across the server: a scoped token reusing another team's key starts
-- its own job instead of being told the key exists. `request_scope` is the
-- starting caller's scope as one canonical text, empty for an unscoped
-- caller (src/domain/spec.rs, request_scope).
--
-- Jobs stored before keep their keys, in the unscoped space: which of a
-- job's labels came from its caller's scope was not recorded.
ALTER TABLE jobs ADD COLUMN request_scope text NOT NULL DEFAULT '';
ALTER TABLE jobs DROP CONSTRAINT jobs_request_id_key;
ALTER TABLE jobs ADD CONSTRAINT jobs_request_key UNIQUE (request_scope, request_id);
