-- The same as the PostgreSQL migration of this name: the keys a run marked
-- or deleted. Never edit once released.
ALTER TABLE apisync_runs ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
