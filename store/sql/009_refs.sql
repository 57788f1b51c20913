-- agentnet index, version 9: what each record points at (a response's request, a reply's
-- parent), ordered by the record pointed at, so a task's responses are found by key.
-- Candidates only, like `record_subjects`.
CREATE TABLE IF NOT EXISTS record_refs (
    ref String,
    uri String,
    ver UInt64
) ENGINE = ReplacingMergeTree(ver) ORDER BY (ref, uri)
