"""Render a compare report.html in headless Chromium to a PNG (docs screenshots; checking the page).

    python scripts/screenshot_report.py runs/pipeline/report/report.html docs/report.png

Needs Debian's chromium (`apt-get install chromium`). The PNG is reduced to a 256-colour palette
(Pillow) so a docs screenshot stays small (< 300 KB).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars")


def browser() -> str | None:
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


def screenshot(page: Path, out: Path, width: int = 1400, height: int = 2000) -> Path:
    """PNG of `page` (a local HTML file) at width x height CSS pixels, palette-reduced."""
    exe = browser()
    if exe is None:
        raise SystemExit("screenshot_report: no chromium found: apt-get install chromium")
    with tempfile.TemporaryDirectory() as profile:
        raw = Path(profile) / "shot.png"
        done = subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={raw}",
                               f"--window-size={width},{height}", page.resolve().as_uri()],
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0 or not raw.exists():
            raise SystemExit(f"screenshot_report: chromium failed ({done.returncode}): "
                             f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}")
        from PIL import Image

        # fast octree keeps rare colours (the red "recommended" ring, the colour bar); the default
        # median cut merged them into greys
        page_png = Image.open(raw).convert("RGB")
        page_png.quantize(256, method=Image.Quantize.FASTOCTREE).save(out, optimize=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("page", type=Path, help="report.html")
    p.add_argument("out", type=Path, help="PNG to write")
    p.add_argument("--width", type=int, default=1400)
    p.add_argument("--height", type=int, default=2000)
    args = p.parse_args(argv)
    if not args.page.is_file():
        raise SystemExit(f"screenshot_report: {args.page} not found: pass a compare report.html")
    out = screenshot(args.page, args.out, args.width, args.height)
    print(f"{out}: {out.stat().st_size / 1024:.0f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
