"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
LOCAL_FIXTURES = Path(__file__).resolve().parent / "fixtures"


def sample_path() -> Path:
    """The aiOS sample lines: the shared copy when present, else the vendored copy (the
    shared folder sits beside the repository on developer machines and in CI)."""
    shared = FIXTURES / "aios-sample.jsonl"
    return shared if shared.exists() else LOCAL_FIXTURES / "aios-sample.jsonl"
