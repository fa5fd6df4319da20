-- Privacy and hostile input: nothing identifying stored, private by default, sign-in throttled.

-- Upload file names re-identify patients (clinical exports are named after them): a scan's name is a
-- pseudonym unless its dataset keeps names by an explicit choice. Existing scans get theirs: the slices
-- of one uploaded file share one, made from the first of their contents' SHA-256.
ALTER TABLE datasets ADD COLUMN keep_file_names BOOLEAN NOT NULL DEFAULT false;
UPDATE scans s SET source_name = 'scan-' || substr(f.first, 1, 12)
FROM (SELECT dataset_id, source_name, min(sha256) AS first FROM scans GROUP BY dataset_id, source_name) f
WHERE s.dataset_id = f.dataset_id AND s.source_name = f.source_name;

-- Experiments are private until shared; only their owner and members put runs into one.
ALTER TABLE experiments ALTER COLUMN shared SET DEFAULT false;
CREATE TABLE experiment_members (
    experiment_id BIGINT NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
    user_id       BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    PRIMARY KEY (experiment_id, user_id)
);

-- The datasets a job derives from: those it reads, and those of the jobs whose artifacts it reads. A
-- shared experiment shows a run to others only when each of them is shared too (or is theirs), unless
-- the run's owner published it. Jobs from before this migration: the datasets their parameters name.
ALTER TABLE jobs ADD COLUMN source_datasets BIGINT[] NOT NULL DEFAULT '{}';
ALTER TABLE jobs ADD COLUMN publish_private BOOLEAN NOT NULL DEFAULT false;
UPDATE jobs SET source_datasets = ARRAY(
    SELECT DISTINCT (m[1])::bigint FROM regexp_matches(params::text, '"dataset": ?(?:\{[^}]*?"id": ?)?(\d+)', 'g') m);

-- Whether `viewer` may see `job`: the one visibility rule of jobs, their logs, metrics and artifacts.
CREATE FUNCTION job_visible(job_owner BIGINT, job_experiment BIGINT, job_sources BIGINT[], job_published BOOLEAN,
                            viewer BIGINT, admin BOOLEAN) RETURNS BOOLEAN LANGUAGE sql STABLE AS $$
    SELECT admin OR job_owner = viewer OR (
        EXISTS (SELECT 1 FROM experiments e WHERE e.id = job_experiment AND e.shared)
        AND (job_published OR NOT EXISTS (
            SELECT 1 FROM datasets d WHERE d.id = ANY (job_sources) AND NOT d.shared AND d.owner_id <> viewer)))
$$;

-- Usernames are case-insensitive: `admin` and `Admin` are one account. Earlier duplicates keep their
-- account under a distinct name (their id appended).
UPDATE users u SET username = left(u.username, 40) || '-' || u.id
WHERE EXISTS (SELECT 1 FROM users v WHERE lower(v.username) = lower(u.username) AND v.id < u.id);
CREATE UNIQUE INDEX users_username_ci ON users (lower(username));

-- Failed sign-ins, per client address and per (address, account) pair: each brings a longer wait before
-- the next try from there, and a restart forgets none. Keyed by address too, so a stranger cannot make
-- an account wait for its owner.
CREATE TABLE login_failures (
    key          TEXT        PRIMARY KEY,
    failures     INTEGER     NOT NULL,
    last_failure TIMESTAMPTZ NOT NULL
);
