"""The voting page in a real browser (Playwright driving Debian's chromium).

The study server runs as the real command (``python -m dreamdist.cli study serve``), is killed
with SIGKILL half-way and restarted; the rater's browser carries on where it was. A page of
another origin, opened in the rater's browser, cannot vote nor make raters.
"""

from __future__ import annotations

import html
import io
import json
import signal
import sqlite3
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


def saved_raters(study: Path) -> int:
    with sqlite3.connect(f"file:{study}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT COUNT(*) FROM raters").fetchone()[0]


EVIL_PAGE = """<!doctype html><html><body>
<img src="{study}"><img src="{study}?invite=AAAAAAAAAAAAAAAAAAAAAA"><img src="{study}api/next">
<iframe name="sink"></iframe>
<form method="POST" action="{study}api/vote" enctype="text/plain" target="sink">
<input type="hidden" name='{{"pair": "{pair}", "choice": "left", "x": "' value='"}}'></form>
<script>
const vote = JSON.stringify({{ pair: "{pair}", choice: "left" }});
const sent = [];
const tries = [
  {{ method: "POST", body: vote, mode: "no-cors", credentials: "include" }},
  {{ method: "POST", body: vote, mode: "no-cors", credentials: "include",
     headers: {{ "Content-Type": "application/json", "X-Dreamdist-Token": "guessed" }} }},
  {{ method: "POST", body: vote, credentials: "include", headers: {{ "Content-Type": "application/json" }} }},
];
Promise.allSettled(tries.map((t) => fetch("{study}api/vote", t).then(() => sent.push(1))))
  .then(() => {{ document.forms[0].submit(); setTimeout(() => {{ document.title = "done"; }}, 1500); }});
</script></body></html>"""


def serve_page(body: str, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """A second, unrelated web server answering every GET with ``body`` (another origin)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the stdlib's name)
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((host, 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


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


def visit(browser, url: str) -> list[tuple[str, str, int | str]]:
    """Open the attacker's page in a new tab until its script is done: (method, url, status or failure)
    of every request it made."""
    seen = []
    tab = browser.new_page()
    tab.on("response", lambda r: seen.append((r.request.method, r.url, r.status)))
    tab.on("requestfailed", lambda r: seen.append((r.method, r.url, r.failure)))
    tab.goto(url)
    tab.wait_for_function("document.title === 'done'", timeout=30000)
    tab.close()
    return seen


def test_a_page_of_another_origin_cannot_vote_nor_make_raters(tmp_path):
    from dreamdist.study.create import ImageSource, create_study
    from dreamdist.study.server import make_server

    study = tmp_path / "study.sqlite"
    red = color_folder(tmp_path / "red", (220, 30, 30), 2)
    blue = color_folder(tmp_path / "blue", (30, 30, 220), 2)
    create_study(study, [ImageSource("a", red), ImageSource("b", blue)], n_pairs=4)
    srv = make_server(study, port=0).start()
    evil = []
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(srv.url)  # the rater has a cookie and is shown a pair: the best case for an attacker
            sync_api.expect(page.get_by_role("button", name="Left")).to_be_enabled()
            pair = page.evaluate("pair")
            # another port on the same host is same-site (cookies go along); localhost is another site
            for host in ("127.0.0.1", "localhost"):
                evil.append(serve_page(EVIL_PAGE.format(study=html.escape(srv.url), pair=pair)))
                seen = visit(browser, f"http://{host}:{evil[-1].server_address[1]}/")
                # answered by the study server: a status, or an answer the browser then withheld from the
                # page (Cross-Origin-Resource-Policy, X-Frame-Options); a failed CORS preflight never got further
                reached = [(m, u.removeprefix(srv.url)) for m, u, s in seen if u.startswith(srv.url)
                           and (isinstance(s, int) or s.startswith("net::ERR_BLOCKED_BY_RESPONSE"))]  # fmt: skip
                assert reached.count(("POST", "api/vote")) >= 3, seen  # two fetches and the form: sent
                assert sum(method == "GET" for method, _ in reached) == 3, seen  # the <img>s
                assert (saved_votes(study), saved_raters(study)) == (0, 0), host
            assert page.evaluate("pair") == pair
            page.get_by_role("button", name="Left").click()  # the rater's own page still votes
            sync_api.expect(page.locator("#progress-text")).to_have_text("1 / 4")
            browser.close()
    finally:
        srv.stop()
        for server in evil:
            server.shutdown()
            server.server_close()
    assert (saved_votes(study), saved_raters(study)) == (1, 1)


def test_an_invite_link_works_in_the_first_browser_only(tmp_path):
    from dreamdist.study.create import ImageSource, create_study
    from dreamdist.study.server import make_server

    study = tmp_path / "study.sqlite"
    red = color_folder(tmp_path / "red", (220, 30, 30), 2)
    blue = color_folder(tmp_path / "blue", (30, 30, 220), 2)
    invite = create_study(study, [ImageSource("a", red), ImageSource("b", blue)], n_pairs=2, invites=1)["invites"][0]
    srv = make_server(study, port=0).start()
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            first, second = browser.new_context().new_page(), browser.new_context().new_page()
            first.goto(f"{srv.url}?invite={invite}")
            first.get_by_role("button", name="Right").click()
            sync_api.expect(first.locator("#progress-text")).to_have_text("1 / 2")
            first.reload()  # the same browser may come back with its link
            sync_api.expect(first.get_by_role("button", name="Left")).to_be_enabled()
            second.goto(f"{srv.url}?invite={invite}")  # another browser with the same link
            sync_api.expect(second.get_by_role("status")).to_contain_text("already used in another browser")
            sync_api.expect(second.locator("#voting")).to_be_hidden()  # no pair shown
            second.goto(srv.url)  # or without it
            sync_api.expect(second.get_by_role("status")).to_contain_text("by invitation only")
            browser.close()
    finally:
        srv.stop()
    assert (saved_votes(study), saved_raters(study)) == (1, 1)


LAYOUT = """() => {
  const box = (el) => { const r = el.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
  const image = (el) => ({ box: box(el), scale: el.getBoundingClientRect().width / el.naturalWidth,
    scaleY: el.getBoundingClientRect().height / el.naturalHeight, rendering: getComputedStyle(el).imageRendering });
  return {
    width: innerWidth, height: innerHeight, scrollWidth: document.documentElement.scrollWidth,
    pair: ["left", "right"].map((id) => image(document.getElementById(id))),
    refs: [...document.querySelectorAll("#refs img")].map(image),
    controls: [...document.querySelectorAll("button[data-choice], .hint")].map(box),
  };
}"""


def gradient_folder(folder: Path, size: tuple[int, int], n: int, seed: int) -> Path:
    """``n`` smooth photo-like images of ``size`` (width, height)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[1], 0 : size[0]] / max(size)  # (H, W) each
    for i in range(n):
        a, b, c = rng.uniform(0.5, 4, 3)
        pixels = np.stack([np.sin(a * x + b * y), np.cos(b * x - c * y), np.sin(c * (x + y))], axis=-1)  # (H, W, 3)
        Image.fromarray(((pixels + 1) * 127.5).astype(np.uint8)).save(folder / f"photo{i}.png")
    return folder


def check_layout(page, tiny: bool) -> dict:
    """The voting page as laid out now: everything in the window, nothing wider, images sized as promised."""
    got = page.evaluate(LAYOUT)
    width, height = got["width"], got["height"]
    assert got["scrollWidth"] <= width, got  # no horizontal overflow
    images = got["pair"] + got["refs"]
    for left, top, right, bottom in got["controls"] + [im["box"] for im in images]:  # buttons, hint, images
        assert left >= 0 and top >= 0 and right <= width + 0.5 and bottom <= height + 0.5, (width, height, got)
    for im in images:
        assert im["scale"] == pytest.approx(im["scaleY"], abs=0.02), im  # shape kept
        if tiny:  # nearest neighbour at a whole multiple of the natural size
            assert im["rendering"] == "pixelated" and im["scale"] >= 1, im
            assert im["scale"] == pytest.approx(round(im["scale"]), abs=1e-6), im
        else:
            assert im["rendering"] == "auto" and im["scale"] <= 1 + 1e-6, im  # photos: smooth, never blown up
    pair = got["pair"][0]["scale"]
    assert got["pair"][1]["scale"] == pair
    if tiny:  # references and pair at a consistent scale
        assert all(pair <= 2 * ref["scale"] + 1e-6 for ref in got["refs"]), got
    return got


@pytest.mark.parametrize("kind", ["toy", "photo"])
def test_the_voting_page_fits_desktop_and_phone_windows(tmp_path, kind):
    """At 1280x900 and 390x844 the references, both images, the buttons and the key hint are in the
    window; tiny images are magnified sharply by a whole number and no more than twice the references."""
    from dreamdist.study.create import ImageSource, create_study
    from dreamdist.study.server import make_server

    if kind == "toy":  # the toy model's 32 px samples against the 64 px references `dreamdist toyworld` writes
        from dreamdist.toyworld.concepts import render_concept

        render_concept("cool-patterned", tmp_path / "refs", n=12, seed=0)
        render_concept("cool-patterned", tmp_path / "a", n=3, seed=1, size=32)
        render_concept("striped", tmp_path / "b", n=3, seed=2, size=32)
    else:
        gradient_folder(tmp_path / "refs", (384, 288), 4, seed=0)
        gradient_folder(tmp_path / "a", (768, 576), 2, seed=1)
        gradient_folder(tmp_path / "b", (768, 576), 2, seed=2)
    study = tmp_path / "study.sqlite"
    create_study(study, [ImageSource("a", tmp_path / "a"), ImageSource("b", tmp_path / "b")], refs=tmp_path / "refs")
    srv = make_server(study, port=0).start()
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            scales = {}
            for width, height in ((1280, 900), (390, 844)):
                page = browser.new_page(viewport={"width": width, "height": height})
                page.goto(srv.url)
                sync_api.expect(page.get_by_role("button", name="Left")).to_be_enabled()
                scales[width] = check_layout(page, kind == "toy")["pair"][0]["scale"]
                if width == 1280:  # a window made narrow re-lays the page out
                    page.set_viewport_size({"width": 390, "height": 844})
                    page.wait_for_function("document.getElementById('left').getBoundingClientRect().right <= 390")
                    check_layout(page, kind == "toy")
                page.close()
            browser.close()
    finally:
        srv.stop()
    if kind == "toy":  # large enough to judge: at least 6x on the desktop (192 px) and 2x on the phone
        assert scales[1280] >= 6 and scales[390] >= 2, scales
