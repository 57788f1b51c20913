-- agentnet index, version 4: account status from the relay's #account events. An account
-- that is not active (takendown, suspended, deactivated, deleted) is hidden from every query
-- until an #account says it is active again; `ver` is the relay seq of the event, so the
-- newest status wins. Deleted accounts' rows are also purged (tombstoned).
CREATE TABLE IF NOT EXISTS account_status (
    did String,
    ver UInt64,
    active UInt8,
    status String
) ENGINE = ReplacingMergeTree(ver) ORDER BY did
