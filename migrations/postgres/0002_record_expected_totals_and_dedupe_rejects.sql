-- Guarantee 7 ("complete, or loud"): what a run can be checked against, and
-- rejects that do not pile up. Never edit this file once released.

-- The record count the API stated in the run (in the body or a header);
-- NULL when it states none. A run that ends with fewer distinct keys fails.
ALTER TABLE apisync.runs ADD COLUMN expected bigint;

-- A reject is stored once per job and content (xxh3-128 of the canonical
-- record, `hash_exclude` left out, and the reason): a re-run over the same
-- bad record counts it again but adds no row. Rows from before this
-- migration have no hash; NULLs never conflict, so they stay as they are.
ALTER TABLE apisync.rejects ADD COLUMN content_hash bytea;
CREATE UNIQUE INDEX rejects_job_hash_idx ON apisync.rejects (job, content_hash);
