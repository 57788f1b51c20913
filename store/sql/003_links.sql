-- agentnet index, version 3: how records join for threads, tasks and broadcasts. `thread`
-- is a message's thread (or a handoff's session), `refs` the records one points at
-- (inReplyTo, a response's request, context), `topic` a broadcast's topic. Empty for sealed
-- records the appview cannot open. Kept within what ClickHouse 18.16 and chDB both accept.
ALTER TABLE records
    ADD COLUMN IF NOT EXISTS thread String,
    ADD COLUMN IF NOT EXISTS refs Array(String),
    ADD COLUMN IF NOT EXISTS topic String
