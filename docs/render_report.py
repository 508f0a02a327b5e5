#!/usr/bin/env python3
"""Render an nnaug report.html to a PNG with headless Chromium, to see it the way a user does.

    python docs/render_report.py $nnUNet_results/nnaug/Dataset999_nnaugExample/report.html report.png
    python docs/render_report.py report.html shot.png --window-size 1200,2400

Needs a Chromium binary (Debian: ``apt-get install -y chromium``; also found as ``chromium-browser``
or ``google-chrome``, or name one with ``--chromium PATH`` / ``$CHROMIUM``). The page is opened
from the file system with every network feature off, in a fresh throw-away profile: report.html is
self-contained, so what renders here is what a user sees offline. tests/test_report_html.py uses
:func:`render` too.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium(explicit: str | None = None) -> str | None:
    """The Chromium executable: ``explicit``, ``$CHROMIUM``, or the first of :data:`CANDIDATES` on PATH."""
    for name in (explicit, os.environ.get("CHROMIUM"), *CANDIDATES):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def render(html: Path, png: Path, width: int = 1200, height: int = 2400, chromium: str | None = None,
           timeout: float = 120.0) -> Path:
    """Screenshot ``html`` into ``png`` (``width`` x ``height`` CSS pixels); raises RuntimeError with Chromium's
    last output lines when it fails or writes nothing."""
    exe = find_chromium(chromium)
    if exe is None:
        raise RuntimeError("no Chromium found: apt-get install -y chromium (or pass --chromium PATH)")
    html, png = Path(html).resolve(), Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="nnaug-chromium-") as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
               "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={width},{height}",
               f"--screenshot={png}", html.as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "HOME": profile})
    if proc.returncode != 0 or not png.is_file() or png.stat().st_size == 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
        raise RuntimeError(f"Chromium exited {proc.returncode} without a screenshot:\n{tail}")
    return png


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("html", type=Path, help="the report.html to render")
    parser.add_argument("png", type=Path, help="where to write the screenshot")
    parser.add_argument("--window-size", default="1200,2400", help="WIDTH,HEIGHT in CSS pixels (default 1200,2400)")
    parser.add_argument("--chromium", default=None, help="the Chromium executable (default: found on PATH)")
    args = parser.parse_args(argv)
    if not args.html.is_file():
        print(f"render_report: error: {args.html} is not a file", file=sys.stderr)
        return 2
    try:
        width, height = (int(v) for v in args.window_size.split(","))
        out = render(args.html, args.png, width, height, args.chromium)
    except (ValueError, RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"render_report: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
