#!/usr/bin/env python
"""Screenshot a report page with headless Chromium, to look at it without a desktop browser.

    python scripts/screenshot_report.py runs/experiments/synthetic/report/index.html report.png

Chromium is Debian's `chromium` package (apt-get install chromium) or any Chromium/Chrome given with
--chromium. The page is shot in a tall window and the empty space below the content is trimmed, so the
PNG holds the whole page up to --height pixels.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from btcxr.engine.io import atomic_output  # noqa: E402
from btcxr.errors import BtcxrError  # noqa: E402

CANDIDATES = ["/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome", "google-chrome-stable"]


def find_chromium(explicit: str | None) -> str:
    for name in [explicit] if explicit else CANDIDATES:
        path = shutil.which(name) if name else None
        if path:
            return path
    wanted = explicit or " / ".join(CANDIDATES)
    sys.exit(f"error: no Chromium found ({wanted}). Install it, e.g. `apt-get update && apt-get install -y "
             "chromium` on Debian/Ubuntu, or pass --chromium PATH.")


def trim_bottom(path: Path, out: Path, margin: int = 24) -> tuple[int, bool]:
    """Cut the uniform background below the content of the PNG `path` and write it to `out`; return the new
    height and whether content reached the bottom edge (then the page is taller than the window and was cut)."""
    with Image.open(path) as shot:
        image = shot.convert("RGB")
    pixels = np.asarray(image)
    background = pixels[-1, 0]
    rows = np.flatnonzero(np.any(pixels != background, axis=(1, 2)))
    last = int(rows[-1]) if rows.size else 0
    cut = last >= pixels.shape[0] - 2
    height = min(pixels.shape[0], last + 1 + margin)
    with atomic_output(out, "wb") as handle:
        image.crop((0, 0, image.width, height)).save(handle, format="PNG")
    return height, cut


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("page", type=Path, help="the report's index.html")
    parser.add_argument("out", type=Path, help="PNG to write")
    parser.add_argument("--width", type=int, default=1400, help="window width in pixels (default 1400)")
    parser.add_argument("--height", type=int, default=12000, help="window height, the longest page kept (12000)")
    parser.add_argument("--chromium", help="Chromium or Chrome executable (default: search the PATH)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds before giving up (default 120)")
    args = parser.parse_args(argv)

    page = args.page.resolve()
    if not page.is_file():
        sys.exit(f"error: {args.page} does not exist (expected a report's index.html)")
    chromium = find_chromium(args.chromium)
    out = args.out.resolve()
    with tempfile.TemporaryDirectory(prefix="btcxr-chromium-") as profile:
        shot = Path(profile) / "screenshot.png"   # Chromium writes here; `out` gets the trimmed copy, whole
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--hide-scrollbars", f"--window-size={args.width},{args.height}",
               f"--screenshot={shot}", page.as_uri()]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            sys.exit(f"error: {chromium} did not finish within {args.timeout:g} s")
        if not shot.is_file():
            sys.exit(f"error: {chromium} wrote no screenshot (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        try:
            height, cut = trim_bottom(shot, out)
        except BtcxrError as exc:
            sys.exit(f"error: {exc}")
    print(f"screenshot: {out} ({args.width} x {height} px)")
    if cut:
        print(f"warning: the page is taller than {args.height} px and was cut; pass a larger --height",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
