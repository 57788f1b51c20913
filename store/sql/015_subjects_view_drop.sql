-- agentnet index, version 15: the subjects view, off the old table.
DROP TABLE IF EXISTS record_subjects_view
