"""Redis key and channel names.

Every name of one session carries the hash tag ``{session_id}``, so a Redis Cluster keeps them
on one slot and one Lua script may touch them all (and SPUBLISH from that script is legal).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SessionKeys:
    state: str  # hash: "len" -> committed byte length, "h:<branch>" -> committed head
    lease: str  # string: the writer's token, with a PX expiry
    channel: str  # pub/sub channel of committed events
    want: str  # string: the token of the writer waiting for the lease (fair handoff)

    @property
    def all(self) -> list[str]:
        """The keys of begin/commit, in their KEYS order."""
        return [self.state, self.lease, self.channel, self.want]


def session_keys(prefix: str, session_id: str) -> SessionKeys:
    tag = f"{prefix}:{{{session_id}}}"
    return SessionKeys(
        state=f"{tag}:state", lease=f"{tag}:lease", channel=f"{tag}:events", want=f"{tag}:want"
    )


def channel_pattern(prefix: str, session_prefix: str = "") -> str:
    """PSUBSCRIBE pattern for the firehose. Ids hold no glob characters, so no escaping."""
    return f"{prefix}:{{{session_prefix}*}}:events"

