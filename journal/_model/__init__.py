"""The data model: event records and their line encoding, ids, and the pub/sub announcement."""
