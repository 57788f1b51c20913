-- agentnet index, version 16: the subjects view, on the new `records` (as version 7).
CREATE MATERIALIZED VIEW IF NOT EXISTS record_subjects_view TO record_subjects AS
SELECT arrayJoin(subjects) AS subject, created_at, uri, collection, ver
FROM records WHERE deleted = 0
