-- agentnet index, version 6: who each record is addressed to, ordered by that DID, so an
-- inbox or task list finds its candidates by a key range instead of merging the whole
-- records table. Filled by the view of version 7 and, for rows already there, version 8.
-- A candidate only narrows the search: the query reads the record itself from `records`
-- (FINAL) and applies every condition there, so rows left here by an edit or a delete are
-- harmless.
CREATE TABLE IF NOT EXISTS record_subjects (
    subject String,
    created_at String,
    uri String,
    collection String,
    ver UInt64
) ENGINE = ReplacingMergeTree(ver) ORDER BY (subject, created_at, uri)
