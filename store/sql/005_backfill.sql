-- agentnet index, version 5: how far `agentnet backfill` got with each account: the rev of
-- the repo it last wrote into every sink (written after the rows and vectors), and how many
-- records that repo held. A resumed backfill skips an account whose repo is still at that
-- rev; `ver` is the rev as a number, so the newest wins.
CREATE TABLE IF NOT EXISTS backfill (
    did String,
    ver UInt64,
    rev String,
    records UInt64
) ENGINE = ReplacingMergeTree(ver) ORDER BY did
