"""The session files: the JSONL truth, its per-branch index and the committed-length hint."""
