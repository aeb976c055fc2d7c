"""Redis names of worker groups.

Every key about one session carries the session's hash tag ``{session_id}`` (as the journal's
own keys do), so one script may read the journal's heads and move the group's checkpoint and
claim atomically, on a Cluster too. The group's worker registry is group-wide and lives under
its own tag ``{grp:<group>}``; no script touches it together with a session key.
"""

from __future__ import annotations

from dataclasses import dataclass

from journal._core.keys import session_keys


@dataclass(frozen=True, slots=True)
class SessionGroupKeys:
    group: str  # hash: fence, c:<branch> checkpoint, a:<branch> "<seq>:<attempt>", replay
    claim: str  # string "<fence>:<worker>" with a PX expiry
    state: str  # the journal's own state hash (h:<branch> heads)


def session_group_keys(prefix: str, group: str, session_id: str) -> SessionGroupKeys:
    state = session_keys(prefix, session_id).state
    tag = f"{prefix}:{{{session_id}}}:g:{group}"
    return SessionGroupKeys(group=tag, claim=f"{tag}:claim", state=state)


@dataclass(frozen=True, slots=True)
class RegistryKeys:
    workers: str  # zset: worker -> heartbeat expiry (ms, Redis clock)
    load: str  # hash: worker -> sessions it holds (for `journal group status`)


def registry_keys(prefix: str, group: str) -> RegistryKeys:
    tag = f"{prefix}:{{grp:{group}}}"
    return RegistryKeys(workers=f"{tag}:workers", load=f"{tag}:load")
