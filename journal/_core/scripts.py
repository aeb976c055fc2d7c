"""The Lua scripts of the core, read once from ``journal/_core/lua/*.lua``."""

from __future__ import annotations

from importlib.resources import files

SOURCES: dict[str, str] = {
    entry.name.removesuffix(".lua"): entry.read_text()
    for entry in files("journal._core").joinpath("lua").iterdir()
    if entry.name.endswith(".lua")
}
