-- The same as the PostgreSQL migration of this name: the total a run was
-- checked against, and rejects stored once per job and content. Never edit
-- once released.

ALTER TABLE apisync_runs ADD COLUMN expected INTEGER;

ALTER TABLE apisync_rejects ADD COLUMN content_hash BLOB;
CREATE UNIQUE INDEX apisync_rejects_job_hash_idx ON apisync_rejects (job, content_hash);
