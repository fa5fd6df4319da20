-- Artifacts: files a job or an upload produced (checkpoints, samples, latents, scans, reports). The bytes
-- are in the object store under `key`; this row says what they are and who made them.

CREATE TABLE artifacts (
    id         BIGSERIAL PRIMARY KEY,
    key        TEXT        NOT NULL UNIQUE,
    job_id     BIGINT      REFERENCES jobs (id) ON DELETE CASCADE,
    -- checkpoint, samples, sample_image, grid, latents, scan, report ...
    kind       TEXT        NOT NULL,
    media_type TEXT        NOT NULL DEFAULT 'application/octet-stream',
    size       BIGINT      NOT NULL,
    -- What a consumer needs without opening the file: the step of a checkpoint, the class of a sample.
    meta       JSONB       NOT NULL DEFAULT '{}',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX artifacts_by_job ON artifacts (job_id, kind);
