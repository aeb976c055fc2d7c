"""The I/O shells: Redis connections, the sync and async drivers that run the core's
protocols, the public journals built on them, and the subscription shells."""
