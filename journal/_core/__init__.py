"""The pure core: the append, read, head and rebuild protocols as generators of operations,
the per-session append queue (group commit), the Redis key layout, and the Lua scripts."""
