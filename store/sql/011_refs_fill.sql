-- agentnet index, version 11: what the rows written before version 10 point at.
INSERT INTO record_refs
SELECT arrayJoin(refs) AS ref, uri, ver
FROM records WHERE deleted = 0
