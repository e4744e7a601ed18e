"""dblocks.privacy: secure aggregation, privacy accounting helpers and leakage audits (`dbaudit`)."""
