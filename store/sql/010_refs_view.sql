-- agentnet index, version 10: every row written to `records` adds what it points at.
CREATE MATERIALIZED VIEW IF NOT EXISTS record_refs_view TO record_refs AS
SELECT arrayJoin(refs) AS ref, uri, ver
FROM records WHERE deleted = 0
