-- apisync's own bookkeeping in the embedded SQLite store. SQLite has no
-- schemas, so the tables carry an `apisync_` prefix instead. Same columns
-- and meaning as the PostgreSQL migration; never edit once released.

CREATE TABLE apisync_runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    job         TEXT    NOT NULL,
    status      TEXT    NOT NULL
                CHECK (status IN ('running', 'succeeded', 'failed', 'interrupted', 'skipped')),
    -- RFC 3339 UTC timestamps.
    started_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    finished_at TEXT,
    fetched     INTEGER NOT NULL DEFAULT 0,
    inserted    INTEGER NOT NULL DEFAULT 0,
    updated     INTEGER NOT NULL DEFAULT 0,
    unchanged   INTEGER NOT NULL DEFAULT 0,
    duplicate   INTEGER NOT NULL DEFAULT 0,
    rejected    INTEGER NOT NULL DEFAULT 0,
    pages       INTEGER NOT NULL DEFAULT 0,
    error       TEXT
);

CREATE INDEX apisync_runs_job_id_idx ON apisync_runs (job, id DESC);
CREATE INDEX apisync_runs_running_idx ON apisync_runs (job) WHERE status = 'running';

-- The committed watermark per job (JSON text), written with the last page.
CREATE TABLE apisync_job_state (
    job        TEXT    PRIMARY KEY,
    state      TEXT    NOT NULL,
    run_id     INTEGER NOT NULL,
    updated_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- Records that could not be stored, kept verbatim with the reason.
CREATE TABLE apisync_rejects (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    job         TEXT    NOT NULL,
    run_id      INTEGER NOT NULL,
    record      TEXT    NOT NULL,
    reason      TEXT    NOT NULL,
    rejected_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE INDEX apisync_rejects_job_run_idx ON apisync_rejects (job, run_id);
