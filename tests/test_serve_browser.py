"""The web page in a real headless Chromium (Debian's ``chromium``, driven by Playwright) against a
real ``ovdet serve`` process: upload a coco128 image, type classes, press detect, and check that
the table lists what the API answers for the same image, that boxes are drawn in the class
colours, that the JSON download holds the answer, and that errors reach the user in words.

Set ``OVDET_REQUIRE_BROWSER=1`` (``.ci/run`` does) to fail instead of skipping when no Chromium
is installed; ``OVDET_SCREENSHOT_DIR`` keeps the screenshots.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

pytest.importorskip("fastapi")
from tests.serving import running_server  # noqa: E402

CLASSES = "person, bus, car, dog, bicycle"
_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium() -> str:
    path = os.environ.get("OVDET_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None or importlib_missing("playwright"):
        why = "no chromium on PATH (apt install chromium) or playwright missing (pip install playwright)"
        if os.environ.get("OVDET_REQUIRE_BROWSER", "") not in ("", "0"):
            pytest.fail(f"the browser test is required here: {why}")
        pytest.skip(why)
    return path


def importlib_missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


def _hex_bgr(color: str) -> np.ndarray:
    return np.array([int(color[5:7], 16), int(color[3:5], 16), int(color[1:3], 16)])


@pytest.fixture(scope="module")
def server():
    with running_server(["--model", "ovdet-demo", "--device", "cpu", "--log-level", "warning"]) as s:
        yield s


def _api(server, path: Path, classes: str) -> dict:
    r = httpx.post(
        server.url + "/v1/detect",
        files=[("images", (path.name, path.read_bytes(), "image/jpeg"))],
        data={"classes": classes, "conf": "0.25", "iou": "0.7"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_page_detects_like_the_api(server, coco128_images: list[Path], tmp_path: Path) -> None:
    chromium = _chromium()
    from playwright.sync_api import sync_playwright

    # an image where the API finds several objects, none of them a near-tie for the 3-decimal table
    for path in coco128_images:
        expected = _api(server, path, CLASSES)["results"][0]
        scores = [d["score"] for d in expected["detections"]]
        labels = {d["label"] for d in expected["detections"]}
        if len(scores) >= 3 and len(labels) >= 2 and all(abs(s * 1000 - round(s * 1000)) < 0.4 for s in scores):
            break
    else:
        raise AssertionError("no coco128 image with three clear detections of two classes")

    shots = Path(os.environ.get("OVDET_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 900}, accept_downloads=True)
            failed: list[str] = []
            page.on("requestfailed", lambda r: failed.append(r.url))
            page.goto(server.url + "/")
            page.wait_for_selector("#model:not(:empty)")  # (no wait_for_function: the page's CSP forbids eval)
            assert "ovdet-demo" in page.text_content("#model")
            page.set_input_files("#file", str(path))
            page.wait_for_selector("#detect:not([disabled])")
            page.fill("#classes", CLASSES)
            page.click("#detect")
            page.wait_for_selector("#status[data-done='1']", timeout=120_000)

            rows = [row.locator("td").all_text_contents() for row in page.locator("#detections tbody tr").all()]
            want = [
                [str(i + 1), d["name"], f"{d['score']:.3f}", ", ".join(f"{v:.1f}" for v in d["box"])]
                for i, d in enumerate(expected["detections"])
            ]
            assert rows == want
            assert f"{len(want)} detection(s)" in page.text_content("#status")
            assert "ms in the browser" in page.text_content("#status")
            assert page.is_hidden("#error")

            with page.expect_download() as download:
                page.click("#download")
            saved = json.loads(Path(download.value.path()).read_text())
            assert saved["results"][0]["detections"] == expected["detections"]

            page.screenshot(path=str(shots / "serve-page.png"), full_page=True)
            page.locator("#canvas").screenshot(path=str(shots / "serve-canvas.png"))

            # errors reach the user in words: the server's (a duplicate class) and the browser's (not an image)
            page.fill("#classes", "person, person")
            page.click("#detect")
            page.wait_for_selector("#error:not([hidden])")
            assert "duplicate class names" in page.text_content("#error")
            bad = tmp_path / "notes.jpg"
            bad.write_text("not an image")
            page.set_input_files("#file", str(bad))
            page.wait_for_selector("#error:has-text('not an image')")
            assert page.is_disabled("#detect")
            assert failed == [], failed  # nothing fetched that failed (no CDN, works offline)
        finally:
            browser.close()

    canvas = cv2.imread(str(shots / "serve-canvas.png"))
    assert canvas is not None and canvas.shape[0] > 100 and canvas.shape[1] > 100
    palette = ["#E6194B", "#3CB44B", "#FFE119", "#4363D8", "#F58231"]
    for label in {d["label"] for d in expected["detections"]}:
        # the box outline in the class colour is on the canvas (anti-aliasing: near, not exact)
        near = np.abs(canvas.astype(int) - _hex_bgr(palette[label])).sum(axis=2) < 40
        assert near.sum() > 200, f"no box drawn in the colour of class {label}"
