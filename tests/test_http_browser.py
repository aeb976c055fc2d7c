"""The dashboard in a real browser: headless Debian chromium driven by Playwright.

Events appended by another process appear in order; then Redis is killed and restarted
empty mid-feed: the page shows it is reconnecting, resumes, and its feed has no gap and no
duplicate. Screenshots are saved as test artifacts (under the test's tmp dir, and in
$JOURNAL_ARTIFACTS when set)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.http_support import Gateway

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
EVENTS = 80


@pytest.fixture
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (apt-get install chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


def _wait(page: Any, predicate: str, timeout_s: float, what: str) -> None:
    try:
        page.wait_for_function(predicate, timeout=timeout_s * 1000, polling=50)
    except Exception as exc:
        raise AssertionError(f"the page never showed {what}: {exc}") from None


def _artifact(page: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path))
    extra = os.environ.get("JOURNAL_ARTIFACTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(extra) / name)
    return path


def test_feed_survives_redis_restart_without_gap_or_duplicate(browser: Any,
                                                               tmp_path: Path) -> None:
    gw = Gateway(tmp_path, args=("--heartbeat", "1"))
    try:
        gw.start()
        assert gw.redis is not None
        page = browser.new_page(viewport={"width": 1280, "height": 760})
        page.goto(f"{gw.base}/#session=web-1&branch=main")
        _wait(page, "document.getElementById('state').dataset.state === 'live'", 15, "live")
        writer, _ = gw.writer("web-1", EVENTS, "web", pause=0.04)
        _wait(page, "document.querySelectorAll('#feed tbody tr').length >= 20", 30,
              "the first events")
        gw.redis.kill()  # Redis gone, and it will come back empty
        _wait(page, "document.getElementById('state').dataset.state === 'reconnecting'", 15,
              "'reconnecting'")
        _artifact(page, tmp_path, "dashboard-reconnecting.png")
        time.sleep(0.5)
        gw.redis.start()
        _wait(page, "document.getElementById('state').dataset.state === 'live'", 30,
              "'live' again")
        assert writer.wait(timeout=60) == 0
        _wait(page, f"document.querySelectorAll('#feed tbody tr').length >= {EVENTS}", 30,
              f"all {EVENTS} events")
        time.sleep(0.5)  # anything extra (a duplicate) would arrive now
        seqs = page.eval_on_selector_all("#feed tbody tr", "rows => rows.map(r => +r.dataset.seq)")
        assert seqs == list(range(1, EVENTS + 1))
        assert page.evaluate("window.__feed") == {"count": EVENTS, "last": EVENTS, "dups": 0,
                                                  "gaps": 0}
        kinds = page.eval_on_selector_all("#feed tbody tr td:nth-child(3)",
                                          "cells => cells.map(c => c.textContent)")
        assert set(kinds) == {"Message"}
        shot = _artifact(page, tmp_path, "dashboard-resumed.png")
        assert shot.stat().st_size > 10_000
        # The session list shows the session with its head.
        _wait(page, f"[...document.querySelectorAll('#sessions tbody tr')].some("
              f"r => r.dataset.session === 'web-1' && r.cells[2].textContent === '{EVENTS}')",
              10, "the session's head")
    finally:
        gw.close()


def test_pause_holds_rows_and_jump_to_live_shows_them(browser: Any, tmp_path: Path) -> None:
    gw = Gateway(tmp_path)
    try:
        gw.start()
        page = browser.new_page()
        page.goto(f"{gw.base}/#session=web-2&branch=main")
        _wait(page, "document.getElementById('state').dataset.state === 'live'", 15, "live")
        first, _ = gw.writer("web-2", 5, "a")
        assert first.wait(timeout=30) == 0
        _wait(page, "document.querySelectorAll('#feed tbody tr').length === 5", 15, "5 rows")
        page.click("#pause")
        second, _ = gw.writer("web-2", 5, "b")
        assert second.wait(timeout=30) == 0
        _wait(page, "document.getElementById('feed-count').textContent.includes('5 held')", 15,
              "5 held events")
        assert page.eval_on_selector_all("#feed tbody tr", "r => r.length") == 5
        page.click("#live")
        seqs = page.eval_on_selector_all("#feed tbody tr", "rows => rows.map(r => +r.dataset.seq)")
        assert seqs == list(range(1, 11))
        page.click("#tab-firehose")
        _wait(page, "document.getElementById('state').dataset.state === 'live'", 15,
              "the firehose live")
        third, _ = gw.writer("web-3", 3, "c")
        assert third.wait(timeout=30) == 0
        _wait(page, "document.querySelectorAll('#firehose tbody tr').length === 3", 15,
              "3 firehose rows")
    finally:
        gw.close()
