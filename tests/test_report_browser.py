"""The report in a real browser (issue 5): headless Chromium over the DevTools protocol.

The quick demo is served from 127.0.0.1 and opened in Debian's ``chromium``; through the
DevTools protocol (a minimal stdlib websocket client below, no extra packages) the test waits
for the load event, checks that every ``<img>`` decoded (``complete`` and ``naturalWidth > 0``),
that nothing was logged as an error (console, JS exceptions, failed requests) and that the
server answered every request, and saves a full-page screenshot. Skips, saying why, where no
Chromium is installed (``apt-get install chromium``; ``$CHROMIUM`` names another binary).
"""
from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from test_report import build_stand_in_weights  # noqa: E402  (tests/ is on sys.path under pytest)


def _chromium() -> str:
    for c in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
              shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    pytest.skip("no Chromium found (install Debian's `chromium`, or set $CHROMIUM to a Chrome/Chromium binary)")


# ----------------------------------------------------------------------------- a tiny websocket client
class _WebSocket:
    """Just enough RFC 6455 for the DevTools protocol: text frames, client masking, no extensions."""

    def __init__(self, url: str, timeout: float = 60.0):
        m = re.match(r"ws://([^/:]+):(\d+)(/.*)", url)
        if not m:
            raise ValueError(f"not a ws:// URL: {url}")
        host, port, path = m.group(1), int(m.group(2)), m.group(3)
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("DevTools closed the connection during the handshake")
            head += chunk
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status:
            raise ConnectionError(f"websocket handshake refused: {status!r}")
        self.buf = head.split(b"\r\n\r\n", 1)[1]

    def send(self, text: str) -> None:
        data = text.encode()
        n = len(data)
        header = bytes([0x81])  # FIN + text
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("DevTools closed the connection")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self) -> str:
        parts = []
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            payload = self._read(n)  # server frames are not masked
            op = b0 & 0x0F
            if op == 0x8:
                raise ConnectionError("DevTools closed the websocket")
            if op in (0x9, 0xA):  # ping/pong: ignore
                continue
            parts.append(payload)
            if b0 & 0x80:
                return b"".join(parts).decode()

    def close(self) -> None:
        self.sock.close()


class _DevTools:
    def __init__(self, ws_url: str):
        self.ws = _WebSocket(ws_url)
        self.next_id = 0
        self.events = []

    def call(self, method: str, timeout: float = 60.0, **params) -> dict:
        self.next_id += 1
        mid = self.next_id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        deadline = time.time() + timeout
        while time.time() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)
        raise TimeoutError(method)

    def wait_for(self, method: str, timeout: float = 60.0) -> dict:
        for i, e in enumerate(self.events):
            if e.get("method") == method:
                return self.events.pop(i)
        deadline = time.time() + timeout
        while time.time() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("method") == method:
                return msg
            self.events.append(msg)
        raise TimeoutError(method)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture
def served_report(tmp_path_factory, monkeypatch, mnist_dir):
    """The quick demo on stand-in weights, served by a static HTTP server on 127.0.0.1."""
    from diffaccel.mnist import pretrained
    from diffaccel.report.demo import run_demo

    root = build_stand_in_weights(tmp_path_factory.mktemp("weights"))
    monkeypatch.setenv("DIFFACCEL_WEIGHTS_DIR", str(root))
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", root)
    out = tmp_path_factory.mktemp("report")
    run_demo(out, seed=0, quick=True, progress=False, data_dir=mnist_dir)

    failures = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_request(self, code="-", size="-"):
            if str(code).isdigit() and int(code) >= 400 and not self.path.startswith("/favicon"):
                failures.append((self.path, code))

        def log_message(self, *args):  # keep the test output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(out)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield out, f"http://127.0.0.1:{server.server_address[1]}/index.html", failures
    server.shutdown()
    server.server_close()


@pytest.fixture
def browser(tmp_path):
    exe = _chromium()
    profile = tmp_path / "chromium-profile"
    proc = subprocess.Popen(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1",
         "--remote-debugging-port=0", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        port = None
        deadline = time.time() + 60
        while time.time() < deadline and port is None:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                pytest.fail(f"chromium exited with {proc.returncode} before DevTools started")
            m = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
            if m:
                port = int(m.group(1))
        if port is None:
            pytest.fail("chromium did not report a DevTools port within 60 s")
        # drain stderr so chromium never blocks on a full pipe
        threading.Thread(target=proc.stderr.read, daemon=True).start()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
            pages = [t for t in json.load(r) if t.get("type") == "page"]
        assert pages, "chromium has no page target"
        dt = _DevTools(pages[0]["webSocketDebuggerUrl"])
        yield dt
        dt.ws.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_report_in_headless_chromium(served_report, browser, tmp_path):
    out, url, failed_requests = served_report
    dt = browser
    for domain in ("Page", "Runtime", "Log", "Network"):
        dt.call(f"{domain}.enable")
    dt.call("Emulation.setDeviceMetricsOverride", width=1200, height=900, deviceScaleFactor=1, mobile=False)
    nav = dt.call("Page.navigate", url=url)
    assert not nav.get("errorText"), nav
    dt.wait_for("Page.loadEventFired", timeout=120)

    imgs = dt.call("Runtime.evaluate", returnByValue=True, expression=(
        "Array.from(document.images).map(i => ({src: i.getAttribute('src'), complete: i.complete, "
        "w: i.naturalWidth, h: i.naturalHeight}))"))["result"]["value"]
    srcs = {p.name for p in out.iterdir() if p.suffix in (".png", ".gif")}
    assert {i["src"] for i in imgs} == srcs  # (an image may be shown twice, e.g. the mean digit)
    broken = [i for i in imgs if not (i["complete"] and i["w"] > 0 and i["h"] > 0)]
    assert not broken, f"images that did not load: {broken[:5]}"
    title = dt.call("Runtime.evaluate", expression="document.title", returnByValue=True)["result"]["value"]
    assert "diffaccel" in title

    overflow = dt.call("Runtime.evaluate", expression="document.documentElement.scrollWidth",
                       returnByValue=True)["result"]["value"]
    assert overflow <= 1200, f"the page is {overflow} px wide: a figure overflows a 1200 px window"

    # a full-page screenshot
    height = dt.call("Runtime.evaluate", expression="document.documentElement.scrollHeight",
                     returnByValue=True)["result"]["value"]
    dt.call("Emulation.setDeviceMetricsOverride", width=1200, height=min(int(height), 16000), deviceScaleFactor=1,
            mobile=False)
    shot = base64.b64decode(dt.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"])
    path = tmp_path / "report_screenshot.png"
    path.write_bytes(shot)
    if os.environ.get("DIFFACCEL_SCREENSHOT_DIR"):  # keep it where CI can publish it
        Path(os.environ["DIFFACCEL_SCREENSHOT_DIR"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(os.environ["DIFFACCEL_SCREENSHOT_DIR"]) / path.name)
    from PIL import Image

    with Image.open(path) as im:
        # the whole report, not just the first screen; a report taller than the 16,000 px capture
        # keeps a vertical scrollbar (up to ~20 px) inside the 1200 px width
        assert 1180 <= im.width <= 1200 and im.height > 2000, im.size

    # flush pending events, then: no console errors, exceptions or failed loads
    dt.call("Runtime.evaluate", expression="1")
    errors = []
    for e in dt.events:
        m, p = e.get("method"), e.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            errors.append(("console", p.get("args")))
        elif m == "Runtime.exceptionThrown":
            errors.append(("exception", p.get("exceptionDetails", {}).get("text")))
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            errors.append(("log", p["entry"].get("text"), p["entry"].get("url")))
        elif m == "Network.loadingFailed":
            errors.append(("network", p.get("errorText")))
        elif m == "Network.responseReceived" and p.get("response", {}).get("status", 200) >= 400:
            errors.append(("http", p["response"].get("status"), p["response"].get("url")))
    assert not errors, errors
    assert not failed_requests, failed_requests
