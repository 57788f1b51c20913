-- agentnet index, version 13: the rows so far, into the table with small granules.
INSERT INTO records_fine SELECT * FROM records
