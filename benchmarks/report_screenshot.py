"""Screenshot a run's report in headless Chromium, to see what a person opening it sees.

    python benchmarks/report_screenshot.py RUN_DIR [RUN_DIR ...] [--out report.png] [--height 2400]

Writes the report (``reasonrec report``) of the runs, then a PNG of it at 1280 px wide. Needs the Debian package
``chromium`` (``apt-get install -y chromium``). Chromium runs offline (no background networking, component
updates or sync) with a throw-away profile, so the screenshot also shows that the page needs no network.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from reasonrec.eval.report import write_report

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def screenshot(html: Path, out: Path, width: int = 1280, height: int = 2400, timeout: float = 120) -> float:
    """PNG of ``html`` at ``width`` × ``height``; returns Chromium's wall seconds."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        sys.exit("no chromium on PATH: apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [exe, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={out.resolve()}",
               f"--window-size={width},{height}", html.resolve().as_uri()]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        seconds = time.perf_counter() - t0
    if proc.returncode != 0 or not out.is_file():
        sys.exit(f"chromium failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dirs", nargs="+", type=Path)
    ap.add_argument("--html", type=Path, default=None, help="report file; default RUN_DIR/report.html")
    ap.add_argument("--out", type=Path, default=Path("report.png"))
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=2400)
    args = ap.parse_args()
    t0 = time.perf_counter()
    html = write_report(args.run_dirs, args.html)
    t_report = time.perf_counter() - t0
    t_shot = screenshot(html, args.out, args.width, args.height)
    print(f"report {html} ({html.stat().st_size / 1024:.0f} KiB, {t_report:.1f} s); screenshot {args.out.resolve()} "
          f"({t_shot:.1f} s); load {os.getloadavg()}")


if __name__ == "__main__":
    main()
