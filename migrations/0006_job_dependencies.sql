-- Jobs that wait on others: a pipeline is a graph of ordinary jobs. A job is claimable once every job it
-- depends on has succeeded. A dependency always points to an earlier job (a smaller id), so no graph can
-- have a cycle. When a job ends failed or cancelled, the queued jobs that wait on it (and theirs, on down)
-- are cancelled with `blocked_by` naming it: they can never run. Retrying that job puts them back.

CREATE TABLE job_dependencies (
    job_id     BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    depends_on BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    PRIMARY KEY (job_id, depends_on),
    CHECK (depends_on < job_id)
);
-- What finishing a job reads: the jobs that wait on it.
CREATE INDEX job_dependents ON job_dependencies (depends_on);

-- The job whose failure or cancellation cancelled this one (never set for a job cancelled by a user).
ALTER TABLE jobs ADD COLUMN blocked_by BIGINT REFERENCES jobs (id) ON DELETE SET NULL;

-- Whatever ends a job (a worker's finish, a user's cancel, the rescuer), its dependents follow: a trigger
-- rather than each of those code paths, so none can forget. The dependents' own change fires it again,
-- which carries a failure down the whole graph. A success wakes the workers of the kinds now claimable.
CREATE FUNCTION job_dependents_follow() RETURNS trigger AS $$
BEGIN
    IF NEW.state IN ('failed', 'cancelled') THEN
        UPDATE jobs SET state = 'cancelled', finished_at = now(), blocked_by = NEW.id,
                        error = format('waits on job #%s, which %s', NEW.id,
                                       CASE NEW.state WHEN 'failed' THEN 'failed' ELSE 'was cancelled' END)
        WHERE state = 'queued' AND id IN (SELECT job_id FROM job_dependencies WHERE depends_on = NEW.id);
    ELSIF NEW.state = 'succeeded' THEN
        PERFORM pg_notify('repdiff_jobs', j.kind)
        FROM jobs j JOIN job_dependencies d ON d.job_id = j.id
        WHERE d.depends_on = NEW.id AND j.state = 'queued';
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER job_dependents_follow
    AFTER UPDATE OF state ON jobs
    FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state AND NEW.state IN ('succeeded', 'failed', 'cancelled'))
    EXECUTE FUNCTION job_dependents_follow();
