"""The dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright), served by
the real stack: the embedder and the API under gunicorn, a real PostgreSQL, the trained heads.

The page must load with no console error and no page error, each of its five charts must be
drawn (an SVG with a real size and marks in it), the per-class table must hold the feedback,
and the front page must link to the model's page. The screenshot is saved to
var/screenshots/dashboard.png (DC_TEST_SCREENSHOT_DIR moves it), for people to look at.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import requests

from dc.config import REPO_ROOT
from tests.heads_support import register_versions
from tests.service.test_api_service import PHRASES, api_env, embedder_url, run_api  # noqa: F401

pytestmark = [pytest.mark.db, pytest.mark.slow]

FEEDBACK_TOKEN = "browser-test-feedback-token"
CHARTS = ("traffic", "drift", "labels", "confidence", "live_f1")


def chromium() -> str:
    """Debian's Chromium, or a clear failure saying how to get it (make test installs it)."""
    path = os.environ.get("DC_TEST_CHROMIUM") or shutil.which("chromium")
    if not path:
        pytest.fail(
            "the dashboard's browser test needs Debian's chromium: `apt-get install chromium` "
            "(`make test` installs it where apt-get is available), or set DC_TEST_CHROMIUM"
        )
    return path


def test_the_dashboard_renders_in_a_real_browser(pg_engine, tiny_versions, embedder_url, tmp_path):  # noqa: F811
    from playwright.sync_api import sync_playwright

    url = pg_engine.url.render_as_string(hide_password=False)
    register_versions(pg_engine, tiny_versions, promoted=tiny_versions[0].version)
    env = api_env(
        url, embedder_url, tiny_versions, tmp_path / "spool", DC_FEEDBACK_TOKEN=FEEDBACK_TOKEN
    )
    with run_api(env) as (api, _):
        answer = requests.post(f"{api}/predict/tiny_banking", json={"texts": PHRASES}, timeout=30)
        assert answer.status_code == 200
        rid = answer.json()["request_id"]
        for text in PHRASES[:3]:
            assert requests.post(f"{api}/predict/tiny_banking", json={"text": text}).ok
        labels = [p["label"] for p in answer.json()["predictions"]]
        items = [{"request_id": rid, "item": k, "label": label} for k, label in enumerate(labels)]
        headers = {"Authorization": f"Bearer {FEEDBACK_TOKEN}"}

        def recorded() -> bool:  # the inference log writes in the background
            response = requests.post(
                f"{api}/feedback", json={"items": items}, headers=headers, timeout=10
            )
            return response.status_code == 200

        _wait(recorded)

        problems: list[str] = []
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=chromium(),
                args=["--no-sandbox"] if os.geteuid() == 0 else [],
            )
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.on(
                    "console",
                    lambda m: (
                        problems.append(f"console {m.type}: {m.text}")
                        if m.type in ("error", "warning")
                        else None
                    ),
                )
                page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
                page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))

                front = page.goto(f"{api}/dashboard", wait_until="load")
                assert front is not None and front.status == 200
                page.click("a[href='/dashboard/tiny_banking']")
                page.wait_for_load_state("load")
                assert page.url.endswith("/dashboard/tiny_banking")
                page.goto(f"{api}/dashboard/tiny_banking?days=1&granularity=hour")

                for name in CHARTS:
                    chart = page.locator(f"#chart-{name} svg")
                    box = chart.bounding_box()
                    assert box is not None and box["width"] > 300 and box["height"] > 100, name
                    assert chart.locator("path").count() > 10, f"{name} has no marks"
                rows = page.locator("#per-class tr").count()
                assert rows == 1 + len(set(labels))  # a header and one row per class
                headline = page.locator("#headline").inner_text()
                assert "requests (" in headline and "live weighted F1" in headline

                folder = Path(
                    os.environ.get("DC_TEST_SCREENSHOT_DIR", REPO_ROOT / "var" / "screenshots")
                )
                folder.mkdir(parents=True, exist_ok=True)
                shot = folder / "dashboard.png"
                page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 20_000
            finally:
                browser.close()
        assert problems == []


def _wait(condition, timeout_s: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout_s} s")
        time.sleep(0.2)
