"""Smoke test of ``scripts/bench.py``: it runs, and prints and writes its table.

Not a timed test: the figures are not checked against their targets, only that the rows are
there (a busy machine may miss any target).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "scripts" / "bench.py"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_bench_quick_runs_and_prints_the_selected_rows(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--only", "1,3,6", "--events", "2000",
         "--out", str(out)],
        capture_output=True, text=True, timeout=110, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    stdout = proc.stdout
    # Machine info at the top.
    for key in ("nproc", "cpu", "data dir", "python", "redis-server"):
        assert f"- {key}:" in stdout
    rows = [line for line in stdout.splitlines() if line.startswith("| ")]
    assert rows and rows[0].startswith("| # | figure | value |")
    by_figure: dict[str, list[str]] = {}
    for line in rows[1:]:
        by_figure.setdefault(line.split("|")[1].strip(), []).append(line)
    assert set(by_figure) == {"1", "3", "6"}, by_figure.keys()
    assert any("F_fs" in line for line in by_figure["1"])
    assert any("Journal.append" in line for line in by_figure["3"])
    assert any("read last 100 @ N=2,000" in line for line in by_figure["6"])
    # Every row has a value, and no figure failed.
    assert not any("| error |" in line for line in rows), "\n".join(rows)
    for line in rows[1:]:
        value = line.split("|")[3].strip()
        assert value and value != "-", line
    # The same table went to --out as markdown.
    written = out.read_text()
    assert "| # | figure | value |" in written
    assert "read last 100 @ N=2,000" in written
    # Progress went to stderr.
    assert "figure 6" in proc.stderr
