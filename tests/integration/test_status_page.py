"""The monitor's status page, loaded in headless Chromium (Debian's ``chromium`` package).

`driftline monitor` runs on the real broker and Redis with the stream of test_monitor.py:
predictions resampled from fraud v1's training rows, one input multiplied by five from a known
point on (exactly one PSI drift event names it), labels following. The traffic arrives chunk by
chunk, as it would live, so the page's history holds PSI over time. Then Chromium loads
``/status``: its rendered DOM must hold the charts with their data and the injected drift, and
its screenshot (``tests/artifacts/status-page.png``) must be a real picture with the drift
marker's red in it. Without Chromium the test fails: ``make chromium`` installs it.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import time
import zlib
from pathlib import Path

import pytest

from driftline.core.status_page import DRIFT_COLOUR, PALETTE
from tests.dom import Dom
from tests.integration.conftest import repo_root, start_monitor_process
from tests.integration.helpers import get_json, wait_for
from tests.integration.test_monitor import SHIFT_AT, SHIFTED, N, produce, stream

ARTIFACT = repo_root() / "tests" / "artifacts" / "status-page.png"
CHUNK = 1_000


def chromium_binary() -> str:
    found = shutil.which("chromium") or ("/usr/bin/chromium"
                                         if os.path.exists("/usr/bin/chromium") else None)
    if found is None:
        pytest.fail("chromium is not installed: run `make chromium` (apt-get install chromium)",
                    pytrace=False)
    return found


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium with a throwaway profile, no proxy (the page is on loopback)."""
    return subprocess.run(
        [chromium_binary(), "--headless=new", "--no-sandbox", "--disable-gpu",
         "--no-proxy-server", "--hide-scrollbars", f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=60, check=True)


def png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit, non-interlaced RGB or RGBA PNG."""
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(raw):
        length, kind = struct.unpack(">I4s", raw[pos:pos + 8])
        body = raw[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    bpp = 3 if colour == 2 else 4
    data, stride = zlib.decompress(idat), width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        kind, line = data[y * (stride + 1)], bytearray(data[y * (stride + 1) + 1:(y + 1) *
                                                            (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) \
                    & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, [bytes(r[i:i + 3]) for r in rows for i in range(0, stride, bpp)]


def count_near(pixels: list[bytes], colour: str, tolerance: int = 24) -> int:
    target = bytes.fromhex(colour.lstrip("#"))
    return sum(1 for p in pixels if all(abs(p[i] - target[i]) <= tolerance for i in range(3)))


@pytest.fixture
def monitor_settings(settings, trained_registry):
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    (settings.data_dir / "registry").symlink_to(trained_registry)
    return settings


def test_the_status_page_renders_psi_fairness_and_the_injected_drift_in_chromium(
        monitor_settings, tmp_path):
    settings = monitor_settings
    predictions, labels = stream(settings.data_dir / "registry", seed=7)
    proc = start_monitor_process(settings, tmp_path / "logs")
    try:
        url = f"{proc.address}/status"
        for lo in range(0, N, CHUNK):  # live-like: at least a second apart, one point each
            started = time.monotonic()
            produce(settings, settings.topic_predictions, predictions[lo:lo + CHUNK],
                    "driftline.Prediction")
            produce(settings, settings.topic_labels, labels[lo:lo + CHUNK], "driftline.Label")
            wait_for(lambda n=lo + CHUNK: get_json(f"{proc.address}/health")["outcomes"] == n,
                     timeout=60, what=f"{lo + CHUNK} outcomes")
            time.sleep(max(0.0, 1.1 - (time.monotonic() - started)))
        health = get_json(f"{proc.address}/health")
        assert health["drift_events"] == 1, health
        body = get_json(f"{url}.json")
        dom = Dom(chromium(tmp_path / "chromium", "--dump-dom", url).stdout)
        ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
        ARTIFACT.unlink(missing_ok=True)
        chromium(tmp_path / "chromium", f"--screenshot={ARTIFACT}", "--window-size=1400,1800",
                 url)
    finally:
        proc.stop()
    print(f"status page screenshot: {ARTIFACT}")

    # /status.json: the data behind the page.
    (event,) = body["drift_events"]
    assert (event["detector"], event["kind"], event["subject"]) == ("psi", "feature", SHIFTED)
    assert event["drift_id"].startswith(f"psi:fraud:1:{SHIFTED}:")
    series = {(s["model"], s["version"], s["subject"]): s["points"]
              for s in body["psi"]["series"]}
    shifted = series[("fraud", 1, SHIFTED)]
    assert len(shifted) >= 3 and shifted[-1][1] > 0.25 > shifted[0][1], shifted
    assert body["outcomes"] == N and body["models"][0]["production"] == 1

    # The rendered DOM: the PSI chart, a series per top subject, the thresholds, the drift.
    assert dom.find("svg") and dom.find("meta")
    assert [a["id"] for t, a in dom.elements if t == "svg"] == [
        "psi-chart", "fairness-chart", "timeline"]
    drawn = [s for s in dom.find("polyline", "series") if "others" not in s["class"]]
    assert 1 < len(drawn) <= 8 and all(s["points"].strip() for s in drawn)
    (line,) = dom.find("polyline", "series", subject=SHIFTED, model="fraud", version="1")
    assert line is drawn[0], "the subject a drift event names is drawn first"
    assert len(line["points"].split()) == len(shifted) and float(line["data-latest"]) > 0.25
    assert {t["data-threshold"] for t in dom.find("line", "threshold")} >= {"0.1", "0.25"}
    (marker,) = dom.find("g", "drift-marker", subject=SHIFTED)
    assert marker["data-drift-id"] == event["drift_id"]
    assert f"drift: {SHIFTED}" in dom.texts
    # Fairness: the segment's parity gap is supported, with its interval.
    (parity,) = dom.find("g", "gap", attribute="segment",
                         metric="demographic_parity_difference")
    assert float(parity["data-low"]) <= float(parity["data-statistic"]) <= \
        float(parity["data-high"])
    # Timeline: the drift event; fraud's older transitions are counted, not drawn.
    assert dom.find("g", "timeline-drift", drift_id=event["drift_id"])
    assert dom.find("text", "timeline-earlier", lane="registry")
    assert dom.find("div", "model", model="fraud", production="1")
    assert f"{N:,}" in dom.texts

    # The screenshot: a real PNG of the page, with the charts drawn in it.
    assert ARTIFACT.stat().st_size > 30_000, ARTIFACT.stat().st_size
    width, height, pixels = png_pixels(ARTIFACT)
    assert (width, height) == (1400, 1800)
    assert len(set(pixels)) > 50, "a blank or single-colour screenshot"
    assert count_near(pixels, DRIFT_COLOUR) > 200, "no drift marker or drift threshold drawn"
    assert count_near(pixels, PALETTE[0]) > 100, f"no {SHIFTED} series drawn"
    assert SHIFT_AT < N  # the drift was injected mid-stream (see test_monitor.stream)
