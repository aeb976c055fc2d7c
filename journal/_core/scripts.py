"""The Lua scripts the drivers run by name, read once.

The core's (``journal/_core/lua``) go by file stem; the worker groups'
(``journal/_groups/lua``) by ``group.<stem>`` (:func:`group`), so the journal's one driver
runs both and the groups need no executor of their own.
"""

from __future__ import annotations

from importlib.resources import files


def _read(package: str) -> dict[str, str]:
    # files("journal"), not files("journal._groups"): reading the groups' scripts must not
    # import the groups (``import journal`` stays small).
    lua = files("journal").joinpath(package).joinpath("lua")
    return {entry.name.removesuffix(".lua"): entry.read_text()
            for entry in lua.iterdir() if entry.name.endswith(".lua")}


SOURCES: dict[str, str] = _read("_core")
GROUP_SOURCES: dict[str, str] = _read("_groups")


def group(name: str) -> str:
    """The registered name of the worker groups' script ``name``."""
    return f"group.{name}"


# Every script a driver registers.
ALL: dict[str, str] = {**SOURCES, **{group(n): src for n, src in GROUP_SOURCES.items()}}
