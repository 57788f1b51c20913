-- agentnet index, version 18: the refs view, on the new `records` (as version 10).
CREATE MATERIALIZED VIEW IF NOT EXISTS record_refs_view TO record_refs AS
SELECT arrayJoin(refs) AS ref, uri, ver
FROM records WHERE deleted = 0
