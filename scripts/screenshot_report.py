"""Regenerate the README screenshot docs/img/report.png from the shipped demo's report.html.

    python scripts/screenshot_report.py                 # make demo's report (built first when missing)
    python scripts/screenshot_report.py --report runs/demo/report/report.html --out docs/img/report.png

The report is `make demo`'s (`eval.py --bench demo --out-dir runs/demo/report`); when it is missing this
script runs that eval.py command first.  The page is rendered by Debian's headless Chromium through
selenium (the same driver as tests/test_report_html.py; `bash scripts/install_browser.sh` installs it as
root) at a 1280 x 1500 window, with the folded sections closed, and saved as a PNG.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO_REPORT = Path("runs/demo/report/report.html")


def chromium() -> tuple[str, str]:
    """(browser binary, chromedriver) or a one-line error naming the installer."""
    binary = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)),
                  None)
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        raise SystemExit("screenshot_report.py: error: Chromium or chromedriver not found; "
                         "run `bash scripts/install_browser.sh` as root (Debian's chromium + chromium-driver)")
    return binary, driver


def build_demo_report(report: Path) -> None:
    """`make demo`'s evaluation step, into the folder of `report`."""
    cmd = [sys.executable, "eval.py", "--bench", "demo", "--out-dir", str(report.parent)]
    print("building the report: " + " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def screenshot(report: Path, out: Path, *, width: int, height: int, timeout_s: float = 30.0) -> Path:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = chromium()
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--hide-scrollbars"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        driver.get(report.resolve().as_uri())
        start = time.monotonic()
        while driver.execute_script("return document.body && document.body.getAttribute('data-ready')") != "1":
            if time.monotonic() - start > timeout_s:
                raise SystemExit(f"screenshot_report.py: error: {report}: the page's script never finished")
            time.sleep(0.05)
        driver.execute_script("document.querySelectorAll('details').forEach(function (d) { d.open = false; });")
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
    finally:
        driver.quit()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--report", type=Path, default=DEMO_REPORT,
                    help="the report.html to render (make demo's; built with eval.py --bench demo when missing)")
    ap.add_argument("--out", type=Path, default=Path("docs/img/report.png"), help="the PNG to write")
    ap.add_argument("--width", type=int, default=1280, help="window width in pixels")
    ap.add_argument("--height", type=int, default=1500, help="window height in pixels")
    args = ap.parse_args(argv)
    chromium()  # before any work: the browser is what this script needs
    if not args.report.is_file():
        if args.report != DEMO_REPORT:
            raise SystemExit(f"screenshot_report.py: error: {args.report}: no such file")
        build_demo_report(args.report)
    path = screenshot(args.report, args.out, width=args.width, height=args.height)
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB) from {args.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
