-- apisync's own bookkeeping, kept in its own schema so that the job tables
-- (created at run time, in the search path) never collide with it.
-- sqlx runs this in a transaction and creates the `apisync` schema first
-- (see store/postgres.rs); never edit this file once released: add a new one.

-- One row per run of a job. Counts are added page by page in the same
-- transaction as the page's rows, so even a run that died mid-way shows what
-- it committed.
CREATE TABLE apisync.runs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job         text        NOT NULL,
    -- 'skipped' is reserved for runs that found another process running the job.
    status      text        NOT NULL
                CHECK (status IN ('running', 'succeeded', 'failed', 'interrupted', 'skipped')),
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    fetched     bigint      NOT NULL DEFAULT 0,
    inserted    bigint      NOT NULL DEFAULT 0,
    updated     bigint      NOT NULL DEFAULT 0,
    unchanged   bigint      NOT NULL DEFAULT 0,
    duplicate   bigint      NOT NULL DEFAULT 0,
    rejected    bigint      NOT NULL DEFAULT 0,
    pages       bigint      NOT NULL DEFAULT 0,
    -- The error chain, with secrets already redacted.
    error       text
);

-- `apisync runs JOB` lists the newest runs of one job.
CREATE INDEX runs_job_id_idx ON apisync.runs (job, id DESC);
-- Finding runs left 'running' by a process that died must not scan history.
CREATE INDEX runs_running_idx ON apisync.runs (job) WHERE status = 'running';

-- Per job, the committed incremental position (watermark or cursor). It is
-- written in the same transaction as the rows it covers.
CREATE TABLE apisync.job_state (
    job        text        PRIMARY KEY,
    state      jsonb       NOT NULL,
    run_id     bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Records that could not be stored (no usable key, a NUL character, …).
-- `record` is the raw JSON as text rather than jsonb so that even a record
-- jsonb cannot hold is kept verbatim.
CREATE TABLE apisync.rejects (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job         text        NOT NULL,
    run_id      bigint      NOT NULL,
    record      text        NOT NULL,
    reason      text        NOT NULL,
    rejected_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX rejects_job_run_idx ON apisync.rejects (job, run_id);
