"""mkdocs hook: replace ``<!-- kinds-table -->`` in docs/kinds.md with a table of every known
kind and its fields, read from ``journal.kinds`` at build time (so it cannot go stale)."""

from __future__ import annotations

from typing import Any

import msgspec

from journal.kinds import KNOWN_KINDS

MARKER = "<!-- kinds-table -->"


_NAMES = {"StrType": "string", "IntType": "integer", "FloatType": "number",
          "BoolType": "boolean", "AnyType": "any", "DictType": "object", "NoneType": "null"}


def _type_name(t: Any) -> str:
    kind = type(t).__name__
    if kind == "LiteralType":
        return " \\| ".join(f'"{v}"' for v in t.values)
    if kind == "UnionType":
        return " or ".join(_type_name(u) for u in t.types)
    if kind in ("ListType", "SetType", "FrozenSetType", "VarTupleType"):
        return f"list of {_type_name(t.item_type)}"
    if kind == "StructType":
        return t.cls.__name__
    return _NAMES.get(kind, kind.removesuffix("Type").lower())


def kinds_table() -> str:
    rows = ["| kind | required fields | optional fields |", "|---|---|---|"]
    for tag, cls in sorted(KNOWN_KINDS.items()):
        info = msgspec.inspect.type_info(cls)
        fields = getattr(info, "fields", ())
        required = [f"`{f.encode_name}`: {_type_name(f.type)}" for f in fields if f.required]
        optional = [f"`{f.encode_name}`: {_type_name(f.type)}" for f in fields if not f.required]
        rows.append(f"| `{tag}` | {', '.join(required) or '-'} | {', '.join(optional) or '-'} |")
    return f"{len(KNOWN_KINDS)} known kinds.\n\n" + "\n".join(rows)


def on_page_markdown(markdown: str, **_: Any) -> str:
    return markdown.replace(MARKER, kinds_table()) if MARKER in markdown else markdown
