-- agentnet index, version 17: the refs view, off the old table.
DROP TABLE IF EXISTS record_refs_view
