"""The study end to end over HTTP: create, the server's guarantees (nothing lost, nobody let in), report."""

from __future__ import annotations

import http.cookiejar
import io
import json
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from dreamdist.cli import main
from dreamdist.study import store
from dreamdist.study.create import ImageSource, create_study, draw_pairs
from dreamdist.study.server import make_server

RED, BLUE = (220, 30, 30), (30, 30, 220)


def color_folder(folder: Path, color, n: int) -> Path:
    """n small PNGs of one colour (slightly varied), each carrying a text chunk that must not be served."""
    folder.mkdir(parents=True)
    for i in range(n):
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", f"secret-method-note {folder}")
        Image.new("RGB", (48, 40), tuple(max(0, c - 3 * i) for c in color)).save(folder / f"img{i}.png", pnginfo=info)
    return folder


@pytest.fixture
def study(tmp_path):
    red = color_folder(tmp_path / "folder_red", RED, 3)
    blue = color_folder(tmp_path / "folder_blue", BLUE, 3)
    refs = color_folder(tmp_path / "refs", (30, 200, 30), 2)
    path = tmp_path / "study.sqlite"
    sets = [ImageSource("methodRedSecret", red), ImageSource("methodBlueSecret", blue)]
    create_study(path, sets, refs=refs, n_pairs=6, seed=1)
    return path


@pytest.fixture
def server(study):
    srv = make_server(study, port=0).start()
    yield srv
    srv.stop()


class Rater:
    """A browser stand-in: keeps the cookie and the page's session token, fetches pairs and images, votes."""

    def __init__(self, url: str):
        self.url = url
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.received: list[bytes] = []
        self.token = ""

    @property
    def id(self) -> str | None:
        """The rater id the server handed out in its (signed) cookie."""
        return next((c.value.split(".")[0] for c in self.jar if c.name == "dreamdist_rater"), None)

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with self.opener.open(self.url + path, timeout=30) as response:
                body = response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            body, status = exc.read(), exc.code
        self.received.append(body)
        if found := re.search(rb'<meta name="dreamdist-token" content="([^"]+)">', body):
            self.token = found.group(1).decode()  # what the page's script sends with every POST
        return status, body

    def post(self, path: str, data: dict | bytes, content_type: str = "application/json") -> tuple[int, dict]:
        body = data if isinstance(data, bytes) else json.dumps(data).encode()
        headers = {"Content-Type": content_type, "X-Dreamdist-Token": self.token}
        request = urllib.request.Request(self.url + path, body, headers, method="POST")
        try:
            with self.opener.open(request, timeout=30) as response:
                raw, status = response.read(), response.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        self.received.append(raw)
        return status, json.loads(raw)

    def next(self) -> dict:
        status, body = self.get("api/next")
        assert status == 200, body
        return json.loads(body)

    def red_side(self, shown: dict) -> str:
        """'left' or 'right': where the red set's image is, judged from the served pixels."""
        red = []
        for side in ("left", "right"):
            status, png = self.get(shown[side])
            assert status == 200
            r, _, b = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3).mean(axis=0)
            red.append(r > b)
        assert red[0] != red[1], "a pair holds one image of each set"
        return "left" if red[0] else "right"


def test_draw_pairs_is_seeded_balanced_and_across_sets():
    pairs = draw_pairs([4, 3, 5], 30, seed=7)
    assert pairs == draw_pairs([4, 3, 5], 30, seed=7) and pairs != draw_pairs([4, 3, 5], 30, seed=8)
    assert all(left[0] != right[0] for left, right in pairs)
    combos = Counter(tuple(sorted((left[0], right[0]))) for left, right in pairs)
    assert combos == {(0, 1): 10, (0, 2): 10, (1, 2): 10}
    lefts = Counter(left[0] for left, _ in pairs)
    assert all(5 <= lefts[k] <= 15 for k in range(3))  # left/right is a coin flip, not a fixed side
    uses = Counter(image for pair in pairs for image in pair if image[0] == 1)  # 20 draws from 3 images
    assert sorted(uses.values()) in ([6, 7, 7], [7, 7, 6])


def test_create_rejects_bad_studies_with_one_clear_line(tmp_path, capsys):
    red = color_folder(tmp_path / "red", RED, 2)
    blue = color_folder(tmp_path / "blue", BLUE, 3)
    (tmp_path / "empty").mkdir()
    broken = color_folder(tmp_path / "broken", BLUE, 1)
    (broken / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    cases = {
        "only_one": (["--set", f"a={red}"], "at least two sets"),
        "empty": (["--set", f"a={red}", f"b={tmp_path / 'empty'}"], "set 'b': no images in"),
        "missing": (["--set", f"a={red}", f"b={tmp_path / 'nowhere'}"], "does not exist"),
        "unreadable": (["--set", f"a={red}", f"b={broken}"], "bad.png"),
        "spec": (["--set", f"a={red}", str(blue)], "NAME=DIR"),
        "same_name": (["--set", f"a={red}", f"a={blue}"], "must differ"),
        "pairs": (["--set", f"a={red}", f"b={blue}", "--pairs", "0"], "--pairs"),
        "refs": (["--set", f"a={red}", f"b={blue}", "--refs", str(tmp_path / "empty")], "--refs: no images"),
    }
    for name, (flags, message) in cases.items():
        path = tmp_path / f"{name}.sqlite"
        assert main(["study", "create", str(path), *flags]) == 2, name
        err = capsys.readouterr().err.strip()
        assert err.startswith("dreamdist: error:") and message in err and "\n" not in err, (name, err)
        assert not path.exists() and not list(tmp_path.glob(f".{name}*")), name  # no half-made study left
    ok = tmp_path / "ok.sqlite"
    assert main(["study", "create", str(ok), "--set", f"a={red}", f"b={blue}"]) == 0
    assert "3 pairs over 2 sets (a: 2, b: 3)" in capsys.readouterr().out  # default: one round of the largest set
    assert main(["study", "create", str(ok), "--set", f"a={red}", f"b={blue}"]) == 2  # never overwritten
    assert "already exists" in capsys.readouterr().err
    (tmp_path / "not_a_study").write_text("hello")
    for command in ("serve", "report"):
        assert main(["study", command, str(tmp_path / "not_a_study")]) == 2
        assert "not a study" in capsys.readouterr().err


def test_create_uses_the_manifest_of_a_generation_folder(tmp_path):
    generated = color_folder(tmp_path / "gen", RED, 3)
    Image.new("RGB", (96, 80), "white").save(generated / "grid.png")
    (generated / "manifest.jsonl").write_text("".join(json.dumps({"file": f"img{i}.png"}) + "\n" for i in range(3)))
    summary = create_study(tmp_path / "s.sqlite", [ImageSource("a", generated), ImageSource("b", generated)])
    assert summary["sets"] == {"a": 3, "b": 3}


def test_the_page_sees_no_set_name_folder_or_file_name(server, study, tmp_path):
    rater = Rater(server.url)
    status, page = rater.get("")
    assert status == 200 and b'alt="Left image"' in page and b">Tie</button>" in page
    shown = rater.next()
    assert set(shown) == {"done", "total", "refs", "finished", "pair", "left", "right"}
    for url in [shown["left"], shown["right"], *shown["refs"]]:
        assert rater.get(url)[0] == 200
    rater.post("api/vote", {"pair": shown["pair"], "choice": "tie"})
    conn = sqlite3.connect(study)
    secrets = [n for (n,) in conn.execute("SELECT name FROM sets")] + [str(tmp_path), "folder_red", "img0", "secret"]
    conn.close()
    assert len(rater.received) == 7  # page, pair, 2 images, 2 references, vote
    for body in rater.received:
        for secret in secrets:
            assert secret.encode() not in body


def test_crafted_paths_cookies_and_pair_ids_get_nothing(server, study, tmp_path):
    (tmp_path / "secret.txt").write_text("TOP-SECRET-CONTENT")
    stranger = Rater(server.url)
    assert stranger.get("api/next")[0] == 403  # no cookie from the page yet
    assert stranger.post("api/vote", {"pair": "x" * 22, "choice": "left"})[0] == 403
    attempts = [
        "../secret.txt", "img/../../secret.txt", "img/..%2F..%2Fsecret.txt", "img/%2e%2e/%2e%2e/secret.txt",
        f"img/{tmp_path / 'secret.txt'}", "img//etc/passwd", "study.sqlite", "img/study.sqlite", "static/../../secret.txt",
        "img/" + "A" * 22, "img/1", "api/../secret.txt",
    ]  # fmt: skip
    for path in attempts:
        status, body = stranger.get(path)
        assert status == 404 and b"SECRET" not in body and b"SQLite" not in body, path

    rater = Rater(server.url)
    rater.get("")
    first = rater.next()
    other = Rater(server.url)
    other.get("")
    other_pair = other.next()["pair"]
    assert rater.next()["pair"] == first["pair"]  # a reload shows the same pair: no skipping
    assert rater.post("api/vote", {"pair": "../" + first["pair"], "choice": "left"})[0] == 400
    assert rater.post("api/vote", {"pair": first["pair"], "choice": "both"})[0] == 400
    assert rater.post("api/vote", b"not json")[0] == 400
    assert rater.post("api/vote", {"pair": first["pair"], "choice": "left"}, "text/plain")[0] == 415
    if other_pair != first["pair"]:
        assert rater.post("api/vote", {"pair": other_pair, "choice": "left"})[0] == 409  # not the pair shown
    assert rater.post("api/vote", {"pair": first["pair"], "choice": "left"}) == (
        200,
        {"ok": True, "done": 1, "total": 6},
    )
    assert rater.post("api/vote", {"pair": first["pair"], "choice": "right"})[0] == 409  # twice
    forged = Rater(server.url)
    forged.opener.addheaders = [("Cookie", "dreamdist_rater=" + "B" * 22)]
    assert forged.post("api/vote", {"pair": first["pair"], "choice": "left"})[0] == 403
    conn = sqlite3.connect(study)
    assert conn.execute("SELECT choice FROM votes").fetchall() == [("left",)]
    conn.close()


def test_twenty_raters_at_once_are_all_recorded_once(server, study, capsys):
    errors, acked = [], Counter()

    def send(rater: Rater, vote: dict, results: list) -> None:
        try:
            results.append(rater.post("api/vote", vote))
        except Exception as exc:  # noqa: BLE001 - kept for the assertion message
            results.append((repr(exc), None))

    def rate() -> None:
        try:
            rater = Rater(server.url)
            rater.get("")
            while not (shown := rater.next())["finished"]:
                vote = {"pair": shown["pair"], "choice": rater.red_side(shown)}
                results: list = []  # the same vote sent twice at once: exactly one counts
                twins = [threading.Thread(target=send, args=(rater, vote, results)) for _ in "ab"]
                for t in twins:
                    t.start()
                for t in twins:
                    t.join()
                assert sorted(status for status, _ in results) == [200, 409], results
                acked[shown["pair"]] += 1
        except Exception as exc:  # surfaced below; a thread's assert would be lost
            errors.append(exc)

    threads = [threading.Thread(target=rate) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[0]
    conn = sqlite3.connect(study)
    per_rater = conn.execute("SELECT COUNT(*), COUNT(DISTINCT pair_id) FROM votes GROUP BY rater").fetchall()
    conn.close()
    assert per_rater == [(6, 6)] * 20 and sum(acked.values()) == 120
    assert main(["study", "report", str(study), "--json", "--bootstrap", "200"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["votes"] == 120
    assert report["sets"]["methodRedSecret"] == {
        "votes": 120, "wins": 120, "win_rate": 1.0, "ci_low": 1.0, "ci_high": 1.0,
        "score": report["sets"]["methodRedSecret"]["score"],
    }  # fmt: skip
    assert report["sets"]["methodBlueSecret"]["wins"] == 0
    assert report["sets"]["methodRedSecret"]["score"] > 2 > -2 > report["sets"]["methodBlueSecret"]["score"]


def test_killed_server_loses_no_acknowledged_vote(study):
    proc = subprocess.Popen(
        [sys.executable, "-m", "dreamdist.cli", "study", "serve", str(study), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    acked, lock, enough = [], threading.Lock(), threading.Event()

    def vote_on(rater: Rater) -> None:
        try:
            while not (shown := rater.next())["finished"]:
                status, _ = rater.post("api/vote", {"pair": shown["pair"], "choice": "left"})
                assert status == 200
                with lock:
                    acked.append((rater, shown["pair"]))
                    if len(acked) >= 9:
                        enough.set()
        except (OSError, urllib.error.URLError, json.JSONDecodeError):
            pass  # the server is gone mid-request: that vote was never acknowledged

    try:
        url = proc.stdout.readline().split()[-1]
        assert url.startswith("http://127.0.0.1:"), url
        raters = [Rater(url) for _ in range(3)]
        for r in raters:
            r.get("")
        threads = [threading.Thread(target=vote_on, args=(r,)) for r in raters]
        for t in threads:
            t.start()
        assert enough.wait(60)
        proc.send_signal(signal.SIGKILL)  # votes still in flight; no shutdown, no flush
        proc.wait(10)
        for t in threads:
            t.join(30)
    finally:
        proc.kill()
        proc.wait()
    conn = store.open_study(study)
    saved = set(conn.execute("SELECT v.rater, p.token FROM votes v JOIN pairs p ON p.id = v.pair_id"))
    conn.close()
    acknowledged = {(r.id, pair) for r, pair in acked}
    assert acknowledged <= saved  # every acknowledged vote is on disk
    assert len(saved) <= len(acknowledged) + len(raters)  # at most one unacknowledged vote per rater


def test_report_text_and_out_folder(study, tmp_path, capsys):
    conn = store.open_study(study)
    pairs = [t for (t,) in conn.execute("SELECT token FROM pairs")]
    for i in range(4):  # four raters, straight through the store
        rater = store.new_token()
        for _ in pairs[: 2 + i]:
            shown = store.next_pair(conn, rater)
            store.record_vote(conn, rater, shown[0], ("left", "tie", "right")[i % 3], shown=shown[0])
    conn.close()
    out = tmp_path / "report"
    assert main(["study", "report", str(study), "--out", str(out), "--bootstrap", "100"]) == 0
    text = capsys.readouterr().out
    assert "14 votes by 4 raters on 6 pairs" in text and "methodRedSecret" in text and "agreement:" in text
    full = json.loads((out / "report.json").read_text())
    assert full["votes"] == 14 and full["agreement"]["pairs"] >= 1
    red, blue = full["sets"]["methodRedSecret"], full["sets"]["methodBlueSecret"]
    assert red["votes"] == blue["votes"] == 14 and red["ties"] == blue["ties"]
    assert red["win_rate"] + blue["win_rate"] == pytest.approx(1.0)
    assert full["matrix"]["methodRedSecret"]["methodBlueSecret"]["win_rate"] == pytest.approx(red["win_rate"])
    with Image.open(out / "preference.png") as plot:
        assert plot.size[0] > 500
    assert "```" in (out / "report.md").read_text()


def test_per_rater_limit_and_even_coverage(tmp_path):
    red = color_folder(tmp_path / "red", RED, 2)
    blue = color_folder(tmp_path / "blue", BLUE, 2)
    path = tmp_path / "s.sqlite"
    create_study(path, [ImageSource("a", red), ImageSource("b", blue)], n_pairs=4, per_rater=2)
    conn = store.open_study(path)
    for _ in range(4):
        rater = store.new_token()
        for _ in range(2):
            shown = store.next_pair(conn, rater)
            assert store.record_vote(conn, rater, shown[0], "left", shown=shown[0]).total == 2
        assert store.next_pair(conn, rater) is None and store.progress(conn, rater).finished
        voted = {
            t
            for (t,) in conn.execute(
                "SELECT p.token FROM votes v JOIN pairs p ON p.id = v.pair_id WHERE rater = ?", (rater,)
            )
        }
        unvoted = next(t for (t,) in conn.execute("SELECT token FROM pairs") if t not in voted)
        with pytest.raises(store.VoteRefused, match="are done"):
            store.record_vote(conn, rater, unvoted, "right")
    counts = [n for (n,) in conn.execute("SELECT COUNT(*) FROM votes GROUP BY pair_id")]
    conn.close()
    assert counts == [2, 2, 2, 2]  # the next pair is the least voted one: 8 votes spread over 4 pairs


def test_counts_in_messages_are_singular_for_one(tmp_path, capsys):
    """'1 rater', '2 raters': the create, serve and report lines with one of each."""
    from dreamdist.study.report import build_report, format_text
    from dreamdist.study.words import counted

    assert [counted(n, "rater") for n in (0, 1, 2)] == ["0 raters", "1 rater", "2 raters"]
    assert counted(1, "reference image") == "1 reference image" and counted(3, "box", "boxes") == "3 boxes"
    red = color_folder(tmp_path / "red", RED, 1)
    blue = color_folder(tmp_path / "blue", BLUE, 1)
    refs = color_folder(tmp_path / "refs", (30, 200, 30), 1)
    path = tmp_path / "one.sqlite"
    flags = ["--set", f"a={red}", f"b={blue}", "--refs", str(refs), "--pairs", "1", "--invites", "1"]
    assert main(["study", "create", str(path), *flags]) == 0
    out = capsys.readouterr().out
    assert "1 pair over 2 sets (a: 1, b: 1), 1 reference image;" in out, out
    assert "1 one-time rater link (it works in one browser; only its rater may vote)." in out, out
    conn = store.open_study(path)
    rater = store.new_token()
    shown = store.next_pair(conn, rater)
    store.record_vote(conn, rater, shown[0], "left", shown=shown[0])
    conn.close()
    text = format_text(build_report(path, rounds=10))
    assert "1 vote by 1 rater on 1 pair" in text, text
    assert re.search(r"\b1 (vote|rater|pair)s\b", text) is None, text
