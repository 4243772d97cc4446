"""The HTML report in a real browser: headless Chromium loads it without errors.

Chromium is driven through the DevTools protocol over a pipe (``--remote-debugging-pipe``:
JSON messages separated by NUL bytes on file descriptors 3 and 4), so no websocket
library is needed. The test collects console messages, uncaught exceptions, failed
loads and every network request, checks that every image decoded, and takes a
screenshot. It is skipped when Chromium is not installed (CI installs Debian's
``chromium``).
"""

from __future__ import annotations

import base64
import io
import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import write_idx_dataset
from PIL import Image

from convzoo.compare import explain_side_by_side
from convzoo.report.html import build_report
from convzoo.train import TrainConfig, train

CHROMIUM = next(
    (shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None
)
pytestmark = [
    pytest.mark.slow,  # trains two models and drives a browser
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed"),
    pytest.mark.skipif(sys.platform != "linux", reason="pass_fds pipes as set up here"),
]
WIDTH, HEIGHT = 1200, 2000
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-extensions",
    "--mute-audio",
    f"--window-size={WIDTH},{HEIGHT}",
]


class Browser:
    """A headless Chromium on a DevTools pipe; ``visit(url)`` returns what happened."""

    def __init__(self, profile: Path) -> None:
        cmd_r, self._cmd_w = os.pipe()  # we write commands, Chromium reads fd 3
        self._res_r, res_w = os.pipe()  # Chromium writes fd 4, we read

        def fds() -> None:  # in the child: the pipe ends become fds 3 and 4
            a, b = os.dup(cmd_r), os.dup(res_w)  # both out of the way first
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe"],
            pass_fds=(3, 4),  # kept open in the child after preexec_fn
            preexec_fn=fds,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(cmd_r)
        os.close(res_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    def close(self) -> None:
        try:
            self._send("Browser.close")
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._cmd_w)
        os.close(self._res_r)

    def _send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        return self._id

    def _wait(self, match, timeout: float = 60.0) -> dict:
        end = time.monotonic() + timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                msg = json.loads(raw)
                if match(msg):
                    return msg
                if "method" in msg:
                    self.events.append(msg)
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from Chromium")
            ready, _, _ = select.select([self._res_r], [], [], left)
            if ready:
                chunk = os.read(self._res_r, 1 << 20)
                if not chunk:
                    raise EOFError("Chromium closed the DevTools pipe")
                self._buf += chunk

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        i = self._send(method, params, session)
        msg = self._wait(lambda m: m.get("id") == i)
        if "error" in msg:
            raise RuntimeError(f"{method}: {msg['error']}")
        return msg.get("result", {})

    def visit(self, url: str) -> dict:
        """Load ``url``; the page's errors, requests, images and a screenshot."""
        self.events = []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        s = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=s)
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
            session=s,
        )
        self.call("Page.navigate", {"url": url}, session=s)
        self._wait(lambda m: m.get("method") == "Page.loadEventFired" and m.get("sessionId") == s)
        images = self.call(
            "Runtime.evaluate",
            {
                "expression": "JSON.stringify(Array.from(document.images).map(i => {"
                "const r = i.getBoundingClientRect(); return [i.complete, i.naturalWidth, "
                "i.naturalHeight, i.alt, [r.left, r.top, r.right, r.bottom]]}))",
                "returnByValue": True,
            },
            session=s,
        )["result"]["value"]
        ids = self.call(
            "Runtime.evaluate",
            {
                "expression": "JSON.stringify(Array.from(document.querySelectorAll('[id]'))"
                ".map(e => e.id))",
                "returnByValue": True,
            },
            session=s,
        )["result"]["value"]
        shot = self.call("Page.captureScreenshot", {"format": "png"}, session=s)["data"]
        self.call("Target.closeTarget", {"targetId": target})
        errors, requests = [], []
        for ev in self.events:
            method, p = ev.get("method"), ev.get("params", {})
            if method == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                errors.append(f"exception: {d.get('text')} {d.get('exception', {})}")
            elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning"):
                errors.append(f"console.{p['type']}: {p.get('args')}")
            elif method == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
                errors.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
            elif method == "Network.requestWillBeSent":
                requests.append(p["request"]["url"])
        return {
            "errors": errors,
            "requests": requests,
            "images": json.loads(images),
            "ids": json.loads(ids),
            "screenshot": base64.b64decode(shot),
        }


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    b = Browser(tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


@pytest.fixture(scope="module")
def report_file(tmp_path_factory):
    """The report of two tiny runs (resnet18 and NiN at width 1/8, one epoch)."""
    root = tmp_path_factory.mktemp("browser-report")
    data = write_idx_dataset(root / "data", n_train=120, n_test=40)
    dirs = []
    for model in ("resnet18", "nin"):
        out = root / model
        cfg = TrainConfig(
            model=model,
            data_dir=str(data),
            width=0.125,
            val_size=20,
            batch_size=50,
            epochs=1,
            deterministic=True,
            threads=1,
            quiet=True,
            out=str(out),
        )
        train(cfg)
        dirs.append(out)
    path = root / "report.html"
    side = explain_side_by_side(dirs, root / "explain")  # as `convzoo compare` adds it
    build_report(dirs, path, speed=False, explained=side)
    return path


def not_blank(png: bytes) -> np.ndarray:
    im = Image.open(io.BytesIO(png)).convert("RGB")
    assert im.size == (WIDTH, HEIGHT)
    pixels = np.asarray(im, dtype=np.int16)
    background = np.median(pixels.reshape(-1, 3), axis=0)
    differs = np.abs(pixels - background).sum(axis=2) > 30
    assert differs.mean() > 0.05, "the page looks blank"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200
    return pixels


def test_report_renders_without_errors(browser, report_file, tmp_path):
    page = browser.visit(report_file.resolve().as_uri())
    assert page["errors"] == []
    # nothing but the file itself and its embedded images is requested
    for url in page["requests"]:
        assert url.startswith(("file://", "data:")), url
    assert page["images"], "no images on the page"
    for complete, width, height, alt, _ in page["images"]:
        if "class activation map" in alt:  # a test image beside its map, 4x enlarged
            assert complete and width > 2 * 28 * 4 and height == 28 * 4, (alt, width, height)
            continue
        assert complete and width >= 200 and height >= 200, (alt, width, height)
    assert sum("class activation map" in img[3] for img in page["images"]) >= 2
    for section in ("leaderboard", "tradeoffs", "curves", "per-class", "models", "explained"):
        assert section in page["ids"]
    assert "environment" in page["ids"]
    pixels = not_blank(page["screenshot"])
    # the images in view were drawn: their part of the screenshot is not blank
    seen = 0
    for *_, alt, (left, top, right, bottom) in page["images"]:
        if bottom > HEIGHT or right > WIDTH or top < 0 or left < 0:
            continue
        crop = pixels[int(top) + 1 : int(bottom) - 1, int(left) + 1 : int(right) - 1]
        assert crop.size and crop.std() > 10, alt
        assert len(np.unique(crop.reshape(-1, 3), axis=0)) > 20, alt
        seen += 1
    assert seen >= 3  # the two trade-off charts and the validation curves


def test_the_check_catches_a_broken_page(browser, tmp_path):
    """The same check on a page with errors fails: the test above can fail."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!doctype html><html><body><h1>broken</h1>"
        '<img src="missing.png" alt="gone">'
        "<script>console.error('boom'); notDefined();</script></body></html>"
    )
    page = browser.visit(bad.as_uri())
    text = "\n".join(page["errors"])
    assert "console.error" in text and "boom" in text
    assert "exception" in text
    assert "missing.png" in text
    assert [img[:4] for img in page["images"]] == [[True, 0, 0, "gone"]]
    with pytest.raises(AssertionError):
        not_blank(page["screenshot"])
