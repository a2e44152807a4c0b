"""Screenshots of the studio and the study voting page for the docs, at desktop (1280x900) and phone
(390x844) width.

    python scripts/page_screenshots.py docs/          # studio.png, studio-phone.png, study.png, study-phone.png
    python scripts/page_screenshots.py docs/ study    # only study.png and study-phone.png (a few seconds)

The studio trains one short toy run first (a minute or two on a CPU), so the page shows a loss
curve, a sample grid and a finished run. The study is made from toy-world images: 32 px images of
two concepts as the sets (the toy model's sample size) and 12 references of 64 px, as
``dreamdist toyworld`` renders them. Both drive Debian's chromium with Playwright.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

SIZES = {"": (1280, 900), "-phone": (390, 844)}
CHROMIUM = "/usr/bin/chromium"


def studio_screenshots(out: Path) -> None:
    """studio.png and studio-phone.png: the studio after one short toy run."""
    from dreamdist.studio.server import Studio, make_server

    with tempfile.TemporaryDirectory() as tmp:
        studio = Studio(Path(tmp) / "runs")
        server = make_server(studio, "127.0.0.1", 0).start()
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.set_default_timeout(900_000)
                page.goto(server.url)
                page.wait_for_selector("#toy-concept option[value=cool-patterned]", state="attached")
                page.check("input[name=source][value=toy]")
                page.select_option("#toy-concept", "cool-patterned")
                page.fill("#run-name", "cool-patterned-demo")
                page.fill("#steps", "12")
                page.fill("#sample-every", "12")
                page.fill("#checkpoint-every", "12")
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


def toy_study(folder: Path) -> Path:
    """A study of two toy concepts' 32 px images with 12 references of 64 px; one vote already cast."""
    from dreamdist.study.create import ImageSource, create_study
    from dreamdist.toyworld.concepts import render_concept

    render_concept("cool-patterned", folder / "refs", n=12, seed=0)  # 64 px, as `dreamdist toyworld` writes them
    render_concept("cool-patterned", folder / "method_a", n=8, seed=1, size=32)  # 32 px, as the toy model samples
    render_concept("striped", folder / "method_b", n=8, seed=2, size=32)
    study = folder / "study.sqlite"
    sets = [ImageSource("method_a", folder / "method_a"), ImageSource("method_b", folder / "method_b")]
    create_study(
        study, sets, refs=folder / "refs", n_pairs=12, question="Which image fits the reference images better?"
    )
    return study


def study_screenshots(out: Path) -> None:
    """study.png and study-phone.png: the voting page of a toy study, each size in a fresh page."""
    from dreamdist.study.server import make_server

    with tempfile.TemporaryDirectory() as tmp:
        server = make_server(toy_study(Path(tmp)), port=0).start()
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                context = browser.new_context()  # one rater for both sizes: the same pair
                for suffix, (width, height) in SIZES.items():
                    page = context.new_page()
                    page.set_viewport_size({"width": width, "height": height})
                    page.goto(server.url)
                    if not suffix:  # one vote, so the progress bar shows some progress
                        page.get_by_role("button", name="Left").click()
                        page.locator("#progress-text").get_by_text("1 / 12").wait_for()
                    page.wait_for_function("() => !document.querySelector('#vote-left').disabled")
                    time.sleep(0.3)
                    page.screenshot(path=str(out / f"study{suffix}.png"), full_page=False)
                    page.close()
                browser.close()
        finally:
            server.stop()


def main(out: Path, parts: list[str]) -> None:
    """Write the screenshots of ``parts`` (``studio``, ``study``) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    makers = {"study": study_screenshots, "studio": studio_screenshots}
    for part in parts:
        if part not in makers:
            raise SystemExit(f"unknown part {part!r}; pick from {', '.join(makers)}")
        makers[part](out)
        print(f"wrote {part}.png and {part}-phone.png in {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs"), sys.argv[2:] or ["study", "studio"])
