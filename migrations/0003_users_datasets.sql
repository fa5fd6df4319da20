-- Users, their sessions and API tokens; experiments and datasets with an owner; scans. CT scans are
-- medical data: every row that holds or points at data has an owner, and is visible to others only when
-- shared with the team.

CREATE TABLE users (
    id            BIGSERIAL PRIMARY KEY,
    username      TEXT        NOT NULL UNIQUE CHECK (username ~ '^[A-Za-z0-9_.@-]{1,64}$'),
    -- argon2id, PHC string format.
    password_hash TEXT        NOT NULL,
    role          TEXT        NOT NULL CHECK (role IN ('viewer', 'researcher', 'admin')),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Browser sessions and API tokens store only the SHA-256 of the secret the client holds.
CREATE TABLE sessions (
    token_hash BYTEA       PRIMARY KEY,
    user_id    BIGINT      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE api_tokens (
    id           BIGSERIAL PRIMARY KEY,
    token_hash   BYTEA       NOT NULL UNIQUE,
    user_id      BIGINT      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         TEXT        NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at TIMESTAMPTZ
);

CREATE TABLE experiments (
    id          BIGSERIAL PRIMARY KEY,
    owner_id    BIGINT      NOT NULL REFERENCES users (id),
    name        TEXT        NOT NULL,
    description TEXT        NOT NULL DEFAULT '',
    shared      BOOLEAN     NOT NULL DEFAULT true,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE datasets (
    id          BIGSERIAL PRIMARY KEY,
    owner_id    BIGINT      NOT NULL REFERENCES users (id),
    name        TEXT        NOT NULL,
    description TEXT        NOT NULL DEFAULT '',
    shared      BOOLEAN     NOT NULL DEFAULT false,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row per slice. The slice image (16-bit PNG of HU + 32768, or 8-bit grey) is in the store under
-- `key`; a de-identified DICOM source, when there was one, under `dicom_key`.
CREATE TABLE scans (
    id              BIGSERIAL PRIMARY KEY,
    dataset_id      BIGINT      NOT NULL REFERENCES datasets (id) ON DELETE CASCADE,
    source_name     TEXT        NOT NULL,
    slice_index     INTEGER     NOT NULL DEFAULT 0,
    format          TEXT        NOT NULL,
    rows            INTEGER     NOT NULL,
    columns         INTEGER     NOT NULL,
    unit            TEXT        NOT NULL CHECK (unit IN ('hounsfield', 'grey')),
    key             TEXT        NOT NULL,
    dicom_key       TEXT,
    site            INTEGER     NOT NULL DEFAULT 0 CHECK (site >= 0),
    hypodensity     BOOLEAN     NOT NULL DEFAULT false,
    margin_irregularity BOOLEAN NOT NULL DEFAULT false,
    blend_sign      BOOLEAN     NOT NULL DEFAULT false,
    fluid_level     BOOLEAN     NOT NULL DEFAULT false,
    -- The content's SHA-256: the same slice uploaded twice to a dataset is stored once.
    sha256          TEXT        NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (dataset_id, sha256)
);
CREATE INDEX scans_by_dataset ON scans (dataset_id, id);

ALTER TABLE jobs ADD COLUMN owner_id BIGINT REFERENCES users (id);
ALTER TABLE jobs ADD COLUMN experiment_id BIGINT REFERENCES experiments (id) ON DELETE SET NULL;
CREATE INDEX jobs_by_owner ON jobs (owner_id, id DESC);
CREATE INDEX jobs_by_experiment ON jobs (experiment_id, id DESC);
