-- agentnet index, version 2: where the indexer is in each source stream. Written after the
-- batch it covers is in every sink, so a restart resumes without losing a record; rows
-- written twice by a replay are replaced (see 001).
CREATE TABLE IF NOT EXISTS cursors (
    source String,
    seq UInt64
) ENGINE = ReplacingMergeTree(seq) ORDER BY source
