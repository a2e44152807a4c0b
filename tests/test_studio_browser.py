"""The studio end to end in Chromium: train toy runs through the page (stop and resume one), sample
at two gamma values and a mix, download the zip, compare the runs.

Starts ``dreamdist studio`` as a child process on a free port with the toy model and a runs folder
in ``tmp_path``; Playwright drives Debian's ``chromium``.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")


@pytest.fixture
def studio(tmp_path):
    """(URL, runs folder) of a studio started with the CLI's defaults plus a free port."""
    runs = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "dreamdist.cli", "studio", "--port", "0", "--runs", str(runs)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        line = ""
        deadline = time.time() + 60
        while time.time() < deadline and "http://" not in line:
            line = process.stdout.readline()
            if not line and process.poll() is not None:
                break
        url = re.search(r"http://\S+/", line)
        assert url, f"studio did not start: {line!r}"
        yield url[0], runs
    finally:
        process.send_signal(signal.SIGINT)  # stops running trainings with a checkpoint, then exits
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def generated(page, runs: Path) -> list[np.ndarray]:
    """Wait for the gallery's images to load in the browser; return them as read from disk."""
    page.wait_for_function(
        "() => { const imgs = [...document.querySelectorAll('#gallery img.sample')];"
        " return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); }"
    )
    sources = page.eval_on_selector_all("#gallery img.sample", "imgs => imgs.map(i => i.getAttribute('src'))")
    return [pixels(runs / src[len("/files/") :]) for src in sources]


def generate(page, runs: Path, gamma: float, checked: dict[str, float]) -> list[np.ndarray]:
    """Set the explore form (runs with weights, gamma) and click Generate."""
    for name in ("alpha", "beta"):
        box = page.locator(f'#explore-runs input[type=checkbox][data-run="{name}"]')
        box.set_checked(name in checked)
        if name in checked:
            page.locator(f'#explore-runs input[type=number][data-run="{name}"]').fill(str(checked[name]))
    page.eval_on_selector("#gamma", f"(el) => {{ el.value = '{gamma}'; el.dispatchEvent(new Event('input')); }}")
    previous = page.get_attribute("#gallery", "data-set")
    page.click("#generate-btn")
    page.wait_for_function(
        "prev => document.querySelector('#gallery').dataset.set !== prev"
        " || document.querySelector('#explore-status').classList.contains('error')",
        arg=previous,
        timeout=60_000,
    )
    assert "error" not in (page.get_attribute("#explore-status", "class") or ""), page.inner_text("#explore-status")
    return generated(page, runs)


def assert_loopback_only(port: int) -> None:
    """Reachable on 127.0.0.1; refused on the machine's other address, when it has one."""
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    try:
        address = socket.gethostbyname(socket.gethostname())
    except OSError:
        return
    if not address.startswith("127."):
        with pytest.raises(OSError), socket.create_connection((address, port), timeout=5):
            pass


def run_row(page, name: str):
    return page.locator(f'#runs-table tr[data-run="{name}"]')


def start_run(page, name: str, concept: str, steps: int, sample_every: int) -> None:
    page.check("input[name=source][value=toy]")
    page.select_option("#toy-concept", concept)
    page.fill("#toy-count", "6")
    page.fill("#run-name", name)
    page.fill("#steps", str(steps))
    page.fill("#num-prompts", "4")
    page.fill("#batch-size", "2")
    page.fill("#sample-every", str(sample_every))
    page.fill("#checkpoint-every", "2")
    page.fill("#options", '{"num_samples": 2}')
    page.click("#train-btn")
    page.wait_for_selector(f"#train-status:has-text('started {name}')")


def wait_state(page, name: str, state: str, timeout: float = 90_000) -> None:
    run_row(page, name).locator(f"td.state:text-is('{state}')").wait_for(timeout=timeout)


def test_studio_trains_explores_and_compares_in_chromium(studio):
    url, runs = studio
    assert url.startswith("http://127.0.0.1:"), url  # the default binds this machine only
    assert_loopback_only(int(url.rstrip("/").rsplit(":", 1)[1]))
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.set_default_timeout(60_000)
        page.goto(url)
        page.wait_for_selector("#toy-concept option[value=cool-patterned]", state="attached")

        # train: two toy runs; stop the first mid-way and resume it from its checkpoint
        start_run(page, "alpha", "cool-patterned", steps=10, sample_every=5)
        start_run(page, "beta", "red-things", steps=4, sample_every=0)
        page.wait_for_function(
            "() => { const td = document.querySelector('#runs-table tr[data-run=alpha] td:nth-child(4)');"
            " return td && parseInt(td.textContent) >= 2; }"
        )
        run_row(page, "alpha").locator("button.stop").click()
        wait_state(page, "alpha", "stopped")
        stopped_at = int(run_row(page, "alpha").locator("td:nth-child(4)").inner_text().split("/")[0])
        assert 2 <= stopped_at < 10, f"stopped at step {stopped_at}"
        assert (runs / "alpha" / "checkpoints" / f"step-{stopped_at:07d}").is_dir()
        run_row(page, "alpha").locator("button.resume").click()
        wait_state(page, "alpha", "done")
        wait_state(page, "beta", "done")

        # live progress of the selected run: its loss curve over every step and its latest sample grid
        run_row(page, "alpha").click()
        page.wait_for_function("() => document.querySelector('#loss-curve').dataset.points === '10'")
        page.wait_for_function(
            "() => { const i = document.querySelector('#latest-sample'); return !i.hidden && i.naturalWidth > 0; }"
        )
        assert "step-0000010" in page.inner_text("#sample-caption")
        steps = [json.loads(line)["step"] for line in (runs / "alpha/studio/progress.jsonl").read_text().splitlines()]
        assert steps == list(range(1, 11))  # resumed where it stopped: no step trained twice

        # explore: the paper's sampler, gamma 0 (the mean prompt) vs gamma 1.5, then a 50/50 mix
        page.click("#tab-explore")
        page.select_option("#sampler", "gaussian")
        page.fill("#num-images", "3")
        page.fill("#inference-steps", "4")
        page.locator('#explore-runs input[data-run="beta"]').first.wait_for(state="attached")
        mean = generate(page, runs, 0.0, {"alpha": 1})
        again = generate(page, runs, 0.0, {"alpha": 1})
        wide = generate(page, runs, 1.5, {"alpha": 1})
        mix = generate(page, runs, 1.5, {"alpha": 0.5, "beta": 0.5})
        assert len(mean) == len(wide) == len(mix) == 3
        assert all(np.array_equal(a, b) for a, b in zip(mean, again)), "same settings must give the same images"
        assert all(not np.array_equal(a, b) for a, b in zip(mean, wide)), "gamma 1.5 must change the images"
        assert all(not np.array_equal(a, b) for a, b in zip(wide, mix)), "mixing in beta must change the images"
        assert "mix alpha:0.5, beta:0.5" in page.inner_text("#explore-status")

        # download: the mix's images with their manifest
        href = page.get_attribute("#download", "href")
        archive = zipfile.ZipFile(io.BytesIO(page.request.get(url.rstrip("/") + href).body()))
        names = archive.namelist()
        assert {"00000.png", "00001.png", "00002.png", "manifest.jsonl"} <= set(names)
        records = [json.loads(line) for line in archive.read("manifest.jsonl").decode().splitlines()]
        assert [r["weights"] for r in records] == [[0.5, 0.5]] * 3
        assert {len(r["artifacts"]) for r in records} == {2}

        # compare: the toy-world oracle report of both runs side by side, with a plot
        page.click("#tab-compare")
        page.check('#compare-runs input[data-run="alpha"]')
        page.check('#compare-runs input[data-run="beta"]')
        page.fill("#compare-images", "4")
        page.fill("#compare-steps", "4")
        page.click("#compare-btn")
        page.wait_for_selector("#compare-status:has-text('compared 2 run(s)')", timeout=60_000)
        for name in ("alpha", "beta"):
            fidelity = page.inner_text(f'#compare-result tr[data-run="{name}"] td[data-metric="fidelity"]')
            assert re.fullmatch(r"\d+%", fidelity), fidelity
        page.wait_for_function(
            "() => { const i = document.querySelector('#compare-plot-toy'); return i && i.naturalWidth > 0; }"
        )
        browser.close()


EVIL_PAGE = """<!doctype html><html><body>
<form id="f" method="POST" enctype="text/plain" target="sink" action="{studio}api/train">
<input name='{{"name": "viaform", "toy_concept": "cool-patterned", "x": "' value='"}}'></form>
<iframe name="sink"></iframe>
<img id="img" src="{studio}api/runs">
<script>
window.results = {{}};
const body = JSON.stringify({{name: "viafetch", toy_concept: "cool-patterned", steps: 1}});
(async () => {{
  try {{ await fetch("{studio}api/train", {{method: "POST", mode: "no-cors", body,
      headers: {{"Content-Type": "text/plain"}}}}); window.results.nocors = "sent"; }}
  catch (e) {{ window.results.nocors = "blocked"; }}
  try {{ await fetch("{studio}api/train", {{method: "POST", body,
      headers: {{"Content-Type": "application/json", "X-Dreamdist-Token": "guess"}}}}); window.results.cors = "read"; }}
  catch (e) {{ window.results.cors = "blocked"; }}
  try {{ const r = await fetch("{studio}api/info"); window.results.info = await r.text(); }}
  catch (e) {{ window.results.info = "blocked"; }}
  document.getElementById("f").submit();
  window.results.done = true;
}})();
</script></body></html>"""


def test_another_site_in_the_browser_can_neither_act_nor_read(tmp_path):
    """A page of another origin, open in the same browser, tries the studio: a no-cors POST, a CORS
    POST with a guessed token, a cross-site form post, an <img> and a read. Nothing starts, nothing is
    read; and a rebinding name that resolves to 127.0.0.1 gets no page."""
    import http.server
    import threading

    from dreamdist.studio.server import Studio, make_server

    studio = Studio(tmp_path / "runs")
    server = make_server(studio, "127.0.0.1", 0).start()
    port = int(server.url.rstrip("/").rsplit(":", 1)[1])
    page = EVIL_PAGE.format(studio=server.url).encode()

    class Evil(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the stdlib's name)
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args):
            pass

    evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Evil)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        with sync_api.sync_playwright() as p:
            rules = "--host-resolver-rules=MAP evil.test 127.0.0.1"
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", rules])
            tab = browser.new_page()
            tab.goto(f"http://127.0.0.1:{evil.server_address[1]}/")
            tab.wait_for_function("() => window.results && window.results.done", timeout=30_000)
            tab.wait_for_timeout(1500)  # the form post lands in the iframe
            results = tab.evaluate("() => window.results")
            assert results["cors"] == "blocked" and results["info"] == "blocked", results
            rebound = tab.goto(f"http://evil.test:{port}/api/runs")
            assert rebound.status == 421
            browser.close()
        assert sorted(p.name for p in studio.root.iterdir()) == []  # no run, no references, no upload
    finally:
        evil.shutdown()
        server.stop()
        studio.close()


LAYOUT_CHECKS = """() => {
  const problems = [];
  if (document.documentElement.scrollWidth > window.innerWidth + 1) problems.push("page wider than the window");
  for (const input of document.querySelectorAll("fieldset label > input[type=radio]")) {
    const text = [...input.parentElement.childNodes].find((n) => n.nodeType === 3 && n.textContent.trim());
    const range = document.createRange(); range.selectNodeContents(text);
    const gap = range.getBoundingClientRect().left - input.getBoundingClientRect().right;
    if (gap > 16) problems.push(`radio ${input.value}: words ${gap.toFixed(0)}px from the button`);
  }
  const select = document.querySelector("#toy-concept");
  for (const option of select.options) {
    if (option.textContent.length > 24) problems.push(`concept option too long: ${option.textContent}`);
  }
  const description = document.querySelector("#toy-description");
  if (!description || !description.textContent) problems.push("no concept description");
  const log = document.querySelector("#detail-log");
  if (getComputedStyle(log).whiteSpace !== "pre-wrap") problems.push("log lines do not wrap");
  return problems;
}"""


@pytest.mark.parametrize("size", [(1280, 900), (390, 844)], ids=["desktop", "phone"])
def test_page_layout_reads_well_at_desktop_and_phone_width(tmp_path, size):
    """Radio buttons sit beside their words, concept names fit, log lines wrap, nothing runs off
    the side of a phone's screen; library notes stay out of the run log."""
    from dreamdist.studio.runs import PROGRESS, WORKER_DIR, write_json
    from dreamdist.studio.server import Studio, make_server

    studio = Studio(tmp_path / "runs")
    run = studio.root / ("a-run-with-a-rather-long-name-" + "x" * 30)
    write_json(run / "train_config.json", {"method": "dreamdistribution", "train_config": {"images": "/r" * 60}})
    (run / WORKER_DIR).mkdir(parents=True)
    (run / WORKER_DIR / PROGRESS).write_text('{"step": 1, "total": 2, "loss": 0.5, "time": 0}\n')
    (run / WORKER_DIR / "worker.log").write_text("a very long log line without spaces " + "y" * 400 + "\n")
    server = make_server(studio, "127.0.0.1", 0).start()
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": size[0], "height": size[1]})
            page.goto(server.url)
            page.wait_for_selector("#toy-concept option[value=cool-patterned]", state="attached")
            page.locator(f'#runs-table tr[data-run="{run.name}"]').click()
            page.wait_for_function("() => document.querySelector('#detail-log').textContent.length > 0")
            assert page.evaluate(LAYOUT_CHECKS) == []
            browser.close()
    finally:
        server.stop()
        studio.close()


def test_the_worker_keeps_library_notes_out_of_the_run_log(tmp_path):
    """The trainer's log is what the page shows: no transformers / diffusers backend notes."""
    from dreamdist.config import TrainConfig
    from dreamdist.methods.dreamdistribution import DreamDistributionConfig
    from dreamdist.studio.jobs import Jobs
    from dreamdist.toyworld.concepts import render_concept

    refs = tmp_path / "refs"
    render_concept("cool-patterned", refs, n=2, seed=0)
    jobs = Jobs(tmp_path / "runs")
    config = TrainConfig(
        images=str(refs), out=str(tmp_path / "runs" / "quiet"), steps=1, sample_every=1, progress=False
    )
    jobs.start("quiet", config, DreamDistributionConfig(num_prompts=2, num_samples=1))
    jobs.processes["quiet"].wait(300)
    log = (tmp_path / "runs" / "quiet" / "studio" / "worker.log").read_text()
    assert "torchvision" not in log and "[transformers]" not in log, log
