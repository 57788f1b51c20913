-- agentnet index, version 7: every row written to `records` adds its subjects.
CREATE MATERIALIZED VIEW IF NOT EXISTS record_subjects_view TO record_subjects AS
SELECT arrayJoin(subjects) AS subject, created_at, uri, collection, ver
FROM records WHERE deleted = 0
