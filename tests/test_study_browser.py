"""The voting page in a real browser (Playwright driving Debian's chromium).

The study server runs as the real command (``python -m dreamdist.cli study serve``), is killed
with SIGKILL half-way and restarted; the rater's browser carries on where it was.
"""

from __future__ import annotations

import io
import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dreamdist.cli import main

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (pip install playwright)")


def color_folder(folder: Path, color, n: int) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (64, 64), tuple(max(0, c - 5 * i) for c in color)).save(folder / f"shot{i}.png")
    return folder


def start_server(study: Path, port: int = 0) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dreamdist.cli", "study", "serve", str(study), "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    url = proc.stdout.readline().split()[-1]
    assert url.startswith("http://127.0.0.1:"), url
    return proc, url


def saved_votes(study: Path) -> int:
    with sqlite3.connect(f"file:{study}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT COUNT(*) FROM votes").fetchone()[0]


def test_vote_in_chromium_survive_a_killed_server_and_report_the_right_sets(tmp_path, capsys):
    red = color_folder(tmp_path / "alphaFolderXyz", (220, 30, 30), 4)
    blue = color_folder(tmp_path / "betaFolderXyz", (30, 30, 220), 4)
    refs = color_folder(tmp_path / "refsFolderXyz", (30, 200, 30), 3)
    study = tmp_path / "study.sqlite"
    names = ("redMethodQwerty", "blueMethodAsdf")
    flags = ["--set", f"{names[0]}={red}", f"{names[1]}={blue}", "--refs", str(refs), "--pairs", "8"]
    assert main(["study", "create", str(study), *flags, "--question", "Which is closer?"]) == 0
    secrets = [*names, str(tmp_path), "alphaFolder", "betaFolder", "refsFolder", "shot0"]

    received: list[tuple[str, str]] = []  # (url, body) of every text the page got
    unread: list[str] = []

    def keep(response) -> None:
        kind = response.headers.get("content-type", "")
        if kind.startswith(("text/", "application/json")):
            try:
                received.append((response.url, response.text()))
            except sync_api.Error:
                unread.append(response.url)

    proc, url = start_server(study)
    sides = []
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            page = browser.new_page()
            page.on("response", keep)
            page.goto(url)
            sync_api.expect(page.get_by_role("heading")).to_have_text("Which is closer?")
            sync_api.expect(page.get_by_role("img", name="Reference image 3")).to_be_visible()
            for k in range(8):
                if k == 4:  # four votes acknowledged: kill the server, start it again, reload
                    assert saved_votes(study) == 4
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(10)
                    assert saved_votes(study) == 4
                    proc, url = start_server(study, port=int(url.rsplit(":", 1)[1].strip("/")))
                    page.reload()
                    sync_api.expect(page.locator("#progress-text")).to_have_text("4 / 8")
                left = page.get_by_role("img", name="Left image")
                sync_api.expect(page.get_by_role("button", name="Left")).to_be_enabled()
                src = left.get_attribute("src")
                png = page.request.get(url + src).body()
                r, _, b = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3).mean(axis=0)
                side = "Left" if r > b else "Right"  # always the red set's side
                sides.append(side)
                if k == 2:
                    page.keyboard.press("ArrowDown")  # a tie, by key
                elif k == 5:
                    page.keyboard.press(f"Arrow{side}")
                else:
                    page.get_by_role("button", name=side).click()
                # the page moves on only once the server acknowledged (and committed) the vote
                sync_api.expect(page.locator("#progress-text")).to_have_text(f"{k + 1} / 8")
            sync_api.expect(page.get_by_text("All done")).to_be_visible()
            page.wait_for_load_state("networkidle")  # every response read before the browser closes
            browser.close()
    finally:
        proc.kill()
        proc.wait()
    assert "Left" in sides and "Right" in sides  # the red set was shown on both sides
    assert saved_votes(study) == 8

    assert not unread and sum(u.endswith("/api/vote") for u, _ in received) == 8
    assert sum(u.endswith("/api/next") for u, _ in received) >= 9 and any(u == url for u, _ in received)
    for page_url, body in received:
        for secret in secrets:
            assert secret not in body and secret not in page_url, (secret, page_url)

    capsys.readouterr()
    assert main(["study", "report", str(study), "--json", "--bootstrap", "200"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["votes"] == 8
    assert report["sets"][names[0]]["wins"] == 7 and report["sets"][names[1]]["wins"] == 0
    assert report["sets"][names[0]]["win_rate"] == pytest.approx(7.5 / 8)
    assert report["sets"][names[0]]["score"] > report["sets"][names[1]]["score"]
