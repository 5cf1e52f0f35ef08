"""A browser folder served on 127.0.0.1 and driven in headless Chromium (Playwright, system Chromium).

The server sends the cross-origin isolation headers (COOP same-origin, COEP require-corp) that WASM
threads need (SharedArrayBuffer), and the MIME types onnxruntime-web expects (.mjs, .wasm). Chromium
starts with a new empty profile and without its background services (it would try to reach Google's
hosts): nothing leaves the machine.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import os
import shutil
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from edgepack.errors import EdgepackError

CHROMIUM_ENV = "EDGEPACK_CHROMIUM"  # path of the Chromium (or Chrome) executable to drive
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PAGE_TIMEOUT_MS = 120_000  # loading the 15 MB WASM module and the model; one predict call
CHUNK = 100  # images per page call (~400 KB of base64 for 32x32x3)


class BrowserError(EdgepackError):
    """The browser target cannot run: a missing browser, package or file, or a page that failed."""


class _Handler(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                      ".js": "text/javascript", ".wasm": "application/wasm", ".json": "application/json",
                      ".onnx": "application/octet-stream"}

    def end_headers(self):
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, *args):  # quiet: one line per request would drown the measurement's output
        pass


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    """Serve `folder` on 127.0.0.1 at a free port while the block runs; yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def find_chromium(executable: str | os.PathLike | None = None) -> Path:
    """The Chromium executable: `executable`, $EDGEPACK_CHROMIUM, or the first on PATH."""
    given = executable or os.environ.get(CHROMIUM_ENV)
    found = given or next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    if not found or not Path(found).is_file():
        where = f"{given} does not exist" if given else f"none of {', '.join(CHROMIUM_NAMES)} is on PATH"
        raise BrowserError(f"the browser target needs Chromium ({where}): install it (Debian: "
                           f"apt-get install chromium) or set {CHROMIUM_ENV}")
    return Path(found)


def require_playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise BrowserError("the browser target drives Chromium with Playwright, which is not installed: "
                           "pip install 'edgepack[browser]'") from None
    return sync_playwright


@contextlib.contextmanager
def chromium(executable: str | os.PathLike | None = None) -> Iterator[object]:
    """A headless Chromium (Playwright Browser) with a new empty profile; closed after the block."""
    exe = find_chromium(executable)
    with require_playwright()() as p:
        try:
            browser = p.chromium.launch(executable_path=str(exe), headless=True, args=ARGS)
        except Exception as e:  # Playwright raises its own Error types: keep the first line
            raise BrowserError(f"{exe} did not start: {str(e).strip().splitlines()[0]}") from None
        try:
            yield browser
        finally:
            browser.close()


class Page:
    """The folder's index.html open in a tab, with the model loaded on `threads` WASM threads
    (0: every core)."""

    def __init__(self, browser, url: str, threads: int):
        self.tab = browser.new_page()
        self.tab.set_default_timeout(PAGE_TIMEOUT_MS)
        errors: list[str] = []
        self.tab.on("pageerror", lambda e: errors.append(str(e)))
        self.tab.goto(f"{url}index.html?threads={threads}")
        status = self.tab.evaluate("window.edgepackReady")
        if status != "ok":
            extra = f" ({errors[0]})" if errors else ""
            raise BrowserError(f"{url}index.html did not load the model: {status}{extra}")
        self.info: dict = self.tab.evaluate("window.edgepack.info")

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities (N, classes) of uint8 RGB images (N, H, W, C), computed by the page."""
        out = []
        for start in range(0, len(pixels), CHUNK):
            part = np.ascontiguousarray(pixels[start:start + CHUNK], dtype=np.uint8)
            flat = self.tab.evaluate("([b, n]) => window.edgepack.predict(b, n)",
                                     [base64.b64encode(part.tobytes()).decode(), len(part)])
            out.append(np.frombuffer(base64.b64decode(flat), dtype="<f4").reshape(len(part), -1))
        return np.concatenate(out)

    def time(self, image: np.ndarray, runs: int, warmup: int) -> np.ndarray:
        """Milliseconds of each of `runs` batch-1 session.run calls in the page (after `warmup`)."""
        raw = base64.b64encode(np.ascontiguousarray(image, dtype=np.uint8).tobytes()).decode()
        ms = self.tab.evaluate("([b, r, w]) => window.edgepack.time(b, r, w)", [raw, runs, warmup])
        return np.asarray(ms)

    def close(self) -> None:
        self.tab.close()
