-- Where each slice comes from, so that a dataset groups slices into patients, studies and series, and a
-- split keeps a patient in one part: pseudonymous ids only (a DICOM's after de-identification, a labels
-- file's as keyed pseudonyms, a NIfTI volume's series from its content), the slice's number in its series
-- and its position along the patient's axis in mm. NULL where the scan does not say.
ALTER TABLE scans
    ADD COLUMN patient     TEXT,
    ADD COLUMN study       TEXT,
    ADD COLUMN series      TEXT,
    ADD COLUMN instance    BIGINT,
    ADD COLUMN position_mm DOUBLE PRECISION;
CREATE INDEX scans_by_series ON scans (dataset_id, series, instance);

-- A slice uploaded without a labels row is unlabelled, not "no hematoma": its markers say nothing until
-- someone labels it. Unconditional and representation pre-training use it; a job that needs labels
-- refuses it.
ALTER TABLE scans ADD COLUMN labelled BOOLEAN NOT NULL DEFAULT true;
