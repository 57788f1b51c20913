-- agentnet index, version 14: the table with small granules becomes `records`.
RENAME TABLE records TO records_coarse, records_fine TO records
