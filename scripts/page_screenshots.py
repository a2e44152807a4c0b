"""Screenshots of the studio page for the docs, at desktop (1280x900) and phone (390x844) width.

    python scripts/page_screenshots.py docs/        # writes studio.png and studio-phone.png

Trains one short toy run through the studio first (a minute or two on a CPU), so the page shows a
loss curve, a sample grid and a finished run; drives Debian's chromium with Playwright.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from dreamdist.studio.server import Studio, make_server

SIZES = {"": (1280, 900), "-phone": (390, 844)}


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        studio = Studio(Path(tmp) / "runs")
        server = make_server(studio, "127.0.0.1", 0).start()
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.set_default_timeout(300_000)
                page.goto(server.url)
                page.wait_for_selector("#toy-concept option[value=cool-patterned]", state="attached")
                page.check("input[name=source][value=toy]")
                page.select_option("#toy-concept", "cool-patterned")
                page.fill("#run-name", "cool-patterned-demo")
                page.fill("#steps", "30")
                page.fill("#sample-every", "30")
                page.fill("#checkpoint-every", "30")
                page.click("#train-btn")
                page.locator('#runs-table tr[data-run="cool-patterned-demo"] td.state:text-is("done")').wait_for()
                page.locator('#runs-table tr[data-run="cool-patterned-demo"]').click()
                page.wait_for_function("() => !document.querySelector('#latest-sample').hidden")
                time.sleep(1)
                for suffix, (width, height) in SIZES.items():
                    page.set_viewport_size({"width": width, "height": height})
                    time.sleep(0.5)
                    page.screenshot(path=str(out / f"studio{suffix}.png"), full_page=False)
                browser.close()
        finally:
            server.stop()
            studio.close()


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs"))
