-- Guarantee 8 ("an archive remembers"): the stored keys a complete full run
-- found gone (marked or deleted, by `deletions`), and deletions fed as
-- tombstones. Never edit this file once released.
ALTER TABLE apisync.runs ADD COLUMN deleted bigint NOT NULL DEFAULT 0;
