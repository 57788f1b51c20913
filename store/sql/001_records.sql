-- agentnet index, version 1: one row per record version. ReplacingMergeTree keeps the
-- highest `ver` (the commit rev as an integer) per URI; deletes are rows with deleted = 1.
-- Queries read with FINAL. Kept within what ClickHouse 18.16 and chDB both accept.
CREATE TABLE IF NOT EXISTS records (
    uri String,
    ver UInt64,
    deleted UInt8,
    cid String,
    author String,
    collection String,
    rkey String,
    created_at String,
    indexed_ms Int64,
    visibility String,
    recipients Array(String),
    subjects Array(String),
    record String,
    sealed String,
    text String
) ENGINE = ReplacingMergeTree(ver) ORDER BY uri
