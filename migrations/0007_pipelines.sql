-- A pipeline (the paper's `reproduce`) is a graph of ordinary jobs: each stage is a job of its own kind,
-- with its dependencies in job_dependencies, naming the pipeline's job and its stage. The pipeline's own
-- job waits on every stage and then writes the report; cancelling it cancels its stages.
ALTER TABLE jobs ADD COLUMN pipeline_id BIGINT REFERENCES jobs (id) ON DELETE CASCADE;
ALTER TABLE jobs ADD COLUMN stage TEXT;
ALTER TABLE jobs ADD CONSTRAINT jobs_stage_of_pipeline CHECK ((pipeline_id IS NULL) = (stage IS NULL));
CREATE UNIQUE INDEX jobs_pipeline_stages ON jobs (pipeline_id, stage) WHERE pipeline_id IS NOT NULL;
