"""Screenshots of every page after the default run, as a new user sees them: starts `streamlit run
serve.py` on the default model, clicks through the app in Debian's Chromium and writes one PNG per
page into docs/screenshots/.

    SPAP_DATA_DIR=../shared/data python scripts/screenshots.py [--out docs/screenshots] [--presentation]
        [--run-only | --recovery]

With --presentation the pages are opened as a projector shows them in presentation mode: 1280 × 720
at 150% zoom (an 853 × 480 CSS-pixel viewport at device scale 1.5), from links with presentation=1.
It runs the app's own defaults (Run SPAP, the default sweep, a latency measurement, a short
sensitivity scan and a generation), so on 2 CPU cores it takes several minutes.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"


@dataclass(frozen=True)
class Screen:
    """The browser window the pages are shot in, and what each page's link asks for."""

    viewport: dict[str, int]
    scale: float = 1.0
    query: str = ""


DESKTOP = Screen({"width": 1500, "height": 1000})
PROJECTOR = Screen({"width": 853, "height": 480}, scale=1.5, query="?presentation=1")  # 1280 × 720 at 150%
JOB_LIMIT_MS = 1_800_000  # a guard against a hung job, not a performance target
# Every page after the start page, in order: its title, the job it runs (button, text that shows the
# job has finished; None for a page that shows the latest run) and its screenshot's name, which after
# its number is the page's path.
PAGES = [("Model & data", None, "01_model_data"), ("Run SPAP", ("Run SPAP", "Latest result"), "02_run_spap"),
         ("Mask evolution", None, "03_mask_evolution"), ("Scores", None, "04_scores"),
         ("Dense vs pruned text", ("Generate", "tokens/s"), "05_dense_vs_pruned"),
         ("Perplexity vs sparsity", ("Run sweep", "Perplexity vs sparsity ("), "06_perplexity_sweep"),
         ("Latency & memory", ("Measure", "Memory and compute"), "07_latency"),
         ("Sensitivity", ("Run scan", "Red dotted line"), "08_sensitivity"),
         ("How SPAP works", None, "09_how_spap_works"),
         ("Zero-shot accuracy", None, "10_zeroshot"),  # offline here: it shows why it cannot run
         ("Compare runs", None, "11_compare_runs")]  # the class demo run against the default one


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_healthy(base: str, process: subprocess.Popen, limit_s: float = 180) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"streamlit exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    sys.exit("streamlit did not become healthy")


def settle(page: Page) -> None:
    page.wait_for_selector('[data-testid="stApp"]')
    page.wait_for_timeout(800)
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=JOB_LIMIT_MS)
    page.wait_for_timeout(500)


def shoot(page: Page, screen: Screen, out: Path, name: str) -> None:
    """The whole page: the viewport is stretched to the main block's height first."""
    viewport = screen.viewport
    height = page.evaluate("document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": viewport["width"], "height": min(max(height, viewport["height"]), 8000)})
    page.wait_for_timeout(1500)
    page.screenshot(path=str(out / f"{name}.png"))
    page.set_viewport_size(viewport)
    print(f"wrote {out / name}.png", flush=True)


def go_to(page: Page, screen: Screen, base: str, title: str, name: str) -> None:
    """Open the page titled `title` (screenshot `name`): from the sidebar, or, where presentation
    mode folds the sidebar away, from its link."""
    if screen.query:
        page.goto(f"{base}/{name.split('_', 1)[1]}{screen.query}")
    else:
        page.locator('[data-testid="stSidebarNavLink"]', has_text=title).click()
    page.locator("h1", has_text=title).wait_for()
    settle(page)


def run_job(page: Page, button: str, finished_text: str) -> None:
    page.get_by_role("button", name=button).click()
    page.get_by_text(finished_text).first.wait_for(timeout=JOB_LIMIT_MS)
    settle(page)


# Run SPAP's form filled from a link: the default run with a short LoRA recovery after pruning.
RECOVERY_LINK = "recover=lora&recover_steps=10"


def recovery_pages(page: Page, screen: Screen, base: str, out: Path) -> None:
    """Run SPAP with RECOVERY_LINK's recovery (its live chart, then before and after), and the sweep,
    which keeps that run's settings and recovers every point (dashed before, solid after)."""
    query = f"{screen.query}&{RECOVERY_LINK}" if screen.query else f"?{RECOVERY_LINK}"
    page.goto(f"{base}/run_spap{query}")
    page.locator("h1", has_text="Run SPAP").wait_for()
    settle(page)
    run_job(page, "Run SPAP", "Latest result")
    shoot(page, screen, out, "12_run_spap_recovery")
    go_to(page, screen, base, "Perplexity vs sparsity", "06_perplexity_sweep")
    run_job(page, "Run sweep", "Perplexity vs sparsity (")
    shoot(page, screen, out, "13_sweep_recovery")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    parser.add_argument("--run-only", action="store_true", help="only the default run on Run SPAP (the GPU check)")
    parser.add_argument("--presentation", action="store_true",
                        help="presentation mode on a 1280 × 720 projector at 150%% zoom")
    parser.add_argument("--recovery", action="store_true",
                        help="only the recovery after pruning: Run SPAP with a short LoRA recovery, then the sweep "
                             "recovering every point")
    args = parser.parse_args()
    screen = PROJECTOR if args.presentation else DESKTOP
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "serve.py", "--server.port", str(port),
                                "--server.address", "127.0.0.1"], cwd=REPO, env=dict(os.environ))
    try:
        wait_healthy(base, process)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport=screen.viewport, device_scale_factor=screen.scale)
            page.set_default_timeout(300_000)
            page.goto(f"{base}/{screen.query}")
            settle(page)
            page.get_by_text("SPAP Explorer").first.wait_for()
            shoot(page, screen, args.out, "00_start_here")
            if args.recovery:
                recovery_pages(page, screen, base, args.out)
                return
            if not args.run_only:  # another browser's class demo run, for Compare runs to set beside the default
                other = browser.new_context(viewport=DESKTOP.viewport).new_page()
                other.set_default_timeout(300_000)
                other.goto(f"{base}/run_spap")
                settle(other)
                other.get_by_role("button", name="Class demo preset").click()
                settle(other)
                run_job(other, "Run SPAP", "Latest result: spap at 20%")
                other.context.close()
            for title, job, name in PAGES:
                go_to(page, screen, base, title, name)
                if job is not None:
                    run_job(page, *job)
                if title == "Compare runs":
                    page.get_by_text("Runs of every session").click()  # the class demo run is another browser's
                    settle(page)
                shoot(page, screen, args.out, name)
                if args.run_only and title == "Run SPAP":
                    return
            browser.close()
    finally:
        process.terminate()
        process.wait(timeout=30)


if __name__ == "__main__":
    main()
