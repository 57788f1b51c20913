-- agentnet index, version 19: the old records table, copied in version 13.
DROP TABLE IF EXISTS records_coarse
