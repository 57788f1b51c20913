-- agentnet index, versions 12 to 18: the records table again, with small granules. Every
-- query reads a few records by `uri` (the candidates of an inbox or task list, a thread, a
-- recall's hits), and ClickHouse reads whole granules: with the default 8,192 rows a
-- handful of scattered URIs cost megabytes of the wide columns (record, text, envelope).
-- 256 rows a granule keeps the primary index small (about 30 MB at 100M records) and
-- those reads short. Versions 12-14 copy the rows into the new table and swap the names;
-- 15-18 attach the views to it; the old table is dropped last. Stop the indexers before
-- upgrading: a write to the old table between the copy and the swap would be lost.
CREATE TABLE IF NOT EXISTS records_fine AS records
ENGINE = ReplacingMergeTree(ver) ORDER BY uri SETTINGS index_granularity = 256
