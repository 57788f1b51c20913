-- agentnet index, version 8: the subjects of the rows written before version 7 (a row
-- written twice collapses into one: same key, same version).
INSERT INTO record_subjects
SELECT arrayJoin(subjects) AS subject, created_at, uri, collection, ver
FROM records WHERE deleted = 0
