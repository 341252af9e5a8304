"""The web page in a real browser: Debian's chromium driven by Playwright, against `serve` on loopback.

In CI a missing browser is a failure, not a skip (.ci/run installs chromium); elsewhere the test skips
when chromium or Playwright is absent. Set VIDCASCADE_SCREENSHOT=PATH to also save the page there.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from _serving import running_server  # noqa: E402
from vidcascade.serve.protocol import ServeConfig  # noqa: E402

CHROMIUM = os.environ.get("VIDCASCADE_CHROMIUM", "/usr/bin/chromium")
IN_CI = bool(os.environ.get("CI"))


def _need(ok: bool, why: str) -> None:
    if not ok:
        if IN_CI:
            pytest.fail(f"CI must run the browser test: {why}")
        pytest.skip(why)


# Share of canvas pixels that are clearly red / clearly blue (the world's object colours; the
# background is near black). getImageData reads the canvas at the frame's own size.
COLOUR_SHARE = """() => {
  const c = document.getElementById('video');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let red = 0, blue = 0;
  for (let i = 0; i < d.length; i += 4) {
    const r = d[i], g = d[i + 1], b = d[i + 2];
    if (r > 150 && g < 90 && b < 90) red++;
    if (b > 150 && r < 90 && g < 120) blue++;
  }
  const n = d.length / 4;
  return {red: red / n, blue: blue / n, shown: window.vc.shown, block: window.vc.shownBlock,
          blocks: window.vc.blocks, prompt: window.vc.prompt};
}"""


def _wait_for(page, predicate, what: str, timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        s = page.evaluate(COLOUR_SHARE)
        if predicate(s):
            return s
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last reading {s}")
        page.wait_for_timeout(100)


def test_page_streams_and_switches_prompt_live(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api") if not IN_CI else None
    if sync_api is None:
        try:
            from playwright import sync_api
        except ImportError:
            pytest.fail("CI must run the browser test: playwright is not installed")
    _need(shutil.which(CHROMIUM) is not None or os.path.exists(CHROMIUM), f"no chromium at {CHROMIUM}")
    with running_server(ServeConfig(), level=4) as (state, host), sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 900, "height": 620})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"http://{host}/")
        page.wait_for_function("window.vc && window.vc.hello !== null", timeout=30_000)
        assert page.locator("#level option").count() == state.num_steps + 1
        page.fill("#prompt", "a red circle moving right")
        page.click("#start")
        red = _wait_for(page, lambda s: s["shown"] >= 3 and s["red"] > 0.01, "a red object on the canvas")
        assert red["blue"] < 0.005, red

        # Enter in the prompt box switches live; blue must be shown within a bounded number of blocks.
        page.fill("#prompt", "a blue square moving up")
        page.press("#prompt", "Enter")
        switched_at = page.evaluate("window.vc.blocks")
        blue = _wait_for(page, lambda s: s["blue"] > 0.01 and s["red"] < 0.005, "a blue object")
        assert blue["block"] - switched_at <= 8, (switched_at, blue)
        assert blue["prompt"] == "a blue square moving up"
        page.wait_for_timeout(2000)  # let the chart draw a few points
        shot = os.environ.get("VIDCASCADE_SCREENSHOT") or str(tmp_path / "serve.png")
        page.screenshot(path=shot)

        page.click("#stop")
        page.wait_for_function("!window.vc.running", timeout=30_000)
        href = page.get_attribute("#download", "href")
        assert href.startswith("/recording/") and href.endswith(".mp4")
        assert page.request.get(f"http://{host}{href}").body()[4:8] == b"ftyp"
        assert not errors, errors
        browser.close()
    assert state.active is None
