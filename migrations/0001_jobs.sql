-- The job queue. A job is a row; its progress, metrics and logs are rows; its outputs are artifacts.
-- States: queued -> running -> succeeded | failed | cancelled; a running job whose lease expires (its
-- worker stopped heartbeating) goes back to queued, or to failed when it has used its attempts.

CREATE TABLE jobs (
    id               BIGSERIAL PRIMARY KEY,
    kind             TEXT        NOT NULL,
    params           JSONB       NOT NULL DEFAULT '{}',
    state            TEXT        NOT NULL DEFAULT 'queued'
                     CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    -- Higher runs first; equal priorities run oldest first.
    priority         SMALLINT    NOT NULL DEFAULT 0,
    attempt          INTEGER     NOT NULL DEFAULT 0,
    max_attempts     INTEGER     NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
    run_after        TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- A client's key for "submit at most once": the same key returns the job it made before.
    idempotency_key  TEXT UNIQUE,
    worker_id        TEXT,
    lease_expires_at TIMESTAMPTZ,
    cancel_requested BOOLEAN     NOT NULL DEFAULT false,
    error            TEXT,
    result           JSONB,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at       TIMESTAMPTZ,
    finished_at      TIMESTAMPTZ
);

-- What claim reads: queued jobs by priority, then age.
CREATE INDEX jobs_claimable ON jobs (priority DESC, run_after, id) WHERE state = 'queued';
-- What the rescuer reads.
CREATE INDEX jobs_leases ON jobs (lease_expires_at) WHERE state = 'running';

CREATE TABLE job_progress (
    job_id     BIGINT PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    step       BIGINT      NOT NULL,
    total      BIGINT      NOT NULL,
    message    TEXT        NOT NULL DEFAULT '',
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Time series a job reports (loss curves): one row per (name, step); a resumed job overwrites its replay.
CREATE TABLE job_metrics (
    job_id BIGINT           NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    name   TEXT             NOT NULL,
    step   BIGINT           NOT NULL,
    value  DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (job_id, name, step)
);

CREATE TABLE job_logs (
    id      BIGSERIAL PRIMARY KEY,
    job_id  BIGINT      NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    level   TEXT        NOT NULL CHECK (level IN ('info', 'warn', 'error')),
    message TEXT        NOT NULL
);
CREATE INDEX job_logs_by_job ON job_logs (job_id, id);
