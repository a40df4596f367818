-- Which process a replica is, so GetJob can name the runner of a live job
-- (host, pid). NULL for replicas of earlier versions.
ALTER TABLE replicas ADD COLUMN host text, ADD COLUMN pid integer;
