-- Free-form labels on runs ("baseline", "lr-sweep"), set at submission or later, for filtering and
-- comparing runs in the runs table.
ALTER TABLE jobs ADD COLUMN tags TEXT[] NOT NULL DEFAULT '{}';
CREATE INDEX jobs_tags ON jobs USING GIN (tags);
