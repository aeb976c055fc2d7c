"""The generated API reference builds (mkdocs --strict), lists every kind, and the README's
API section names only what the code has."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from journal import AsyncJournal, Journal
from journal.kinds import KNOWN_KINDS

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_the_api_reference_builds_strictly(tmp_path: Path) -> None:
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-f",
         str(REPO / "mkdocs.yml"), "-d", str(site)],
        cwd=REPO, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr
    api = (site / "api" / "index.html").read_text()
    for name in ("append_next", "sessions", "branches", "rebuild", "subscribe_all",
                 "RetryPolicy", "SubscriptionIdle", "to_line", "from_line"):
        assert name in api, name
    kinds = (site / "kinds" / "index.html").read_text()
    assert len(KNOWN_KINDS) == 87
    for tag in KNOWN_KINDS:
        assert f"<code>{tag}</code>" in kinds, tag


def test_the_readme_names_only_methods_the_journals_have() -> None:
    readme = (REPO / "README.md").read_text()
    blocks = "\n".join(re.findall(r"```python\n(.*?)```", readme, re.S))
    called = set(re.findall(r"\bj\.([a-z_]+)\(", blocks))
    assert {"append", "append_next", "read", "head", "subscribe"} <= called
    for name in called:
        if name in {"new", "to_line", "from_line", "ready"}:
            continue
        assert hasattr(Journal, name) or hasattr(AsyncJournal, name), name
