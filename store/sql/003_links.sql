-- agentnet index, version 3: how records join for threads, tasks and broadcasts. `thread`
-- is a message's thread (or a handoff's session), `refs` the records one points at
-- (inReplyTo, a response's request, context), `topic` a broadcast's topic. Empty for sealed
-- records the appview cannot open. Kept within what ClickHouse 18.16 and chDB both accept
-- (18.16 has no ADD COLUMN IF NOT EXISTS: the migration runner applies each version once).
ALTER TABLE records
    ADD COLUMN thread String,
    ADD COLUMN refs Array(String),
    ADD COLUMN topic String
