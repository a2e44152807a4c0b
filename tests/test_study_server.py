"""Attacks on the study server, each against a real server on 127.0.0.1 (port 0) in a thread:
cross-site votes, DNS rebinding, bad lengths, deep JSON, idle sockets, page views that would grow
the file, a study file that cannot be written; and the invites and the signed rater cookie."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dreamdist.cli import build_parser, main
from dreamdist.study import identity, store
from dreamdist.study.create import ImageSource, create_study
from dreamdist.study.server import make_server
from test_study import BLUE, RED, Rater, color_folder


@pytest.fixture
def study(tmp_path):
    red = color_folder(tmp_path / "red", RED, 3)
    blue = color_folder(tmp_path / "blue", BLUE, 3)
    path = tmp_path / "study.sqlite"
    create_study(path, [ImageSource("a", red), ImageSource("b", blue)], n_pairs=6, seed=1)
    return path


@pytest.fixture
def server(study):
    srv = make_server(study, port=0).start()
    yield srv
    srv.stop()


def port_of(server) -> int:
    return int(server.url.rstrip("/").rsplit(":", 1)[1])


def exchange(port: int, request: bytes, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read the answer until the server closes: (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data or not complete(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def complete(data: bytes) -> bool:
    """Whether ``data`` holds a whole response with a Content-Length."""
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.decode("latin-1").split("\r\n"):
        if line.lower().startswith("content-length:"):
            return len(body) >= int(line.split(":")[1])
    return False


def request(method: str, path: str, port: int, headers: dict | None = None, body: bytes = b"") -> bytes:
    """A raw HTTP/1.1 request; ``Host`` is this server unless ``headers`` says otherwise."""
    lines = {"Host": f"127.0.0.1:{port}", "Connection": "close", **(headers or {})}
    if body and "Content-Length" not in lines:
        lines["Content-Length"] = str(len(body))
    text = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in lines.items()) + "\r\n"
    return text.encode("latin-1") + body


def counts(study: Path) -> tuple[int, int]:
    """(rater rows, vote rows) of the study file."""
    with sqlite3.connect(f"file:{study}?mode=ro", uri=True) as conn:
        return tuple(conn.execute("SELECT (SELECT COUNT(*) FROM raters), (SELECT COUNT(*) FROM votes)").fetchone())


def shown_rater(server) -> tuple[Rater, dict, str]:
    """A rater who loaded the page and was shown a pair: (rater, shown, their Cookie header)."""
    rater = Rater(server.url)
    assert rater.get("")[0] == 200 and rater.token
    shown = rater.next()
    cookie = next(f"{c.name}={c.value}" for c in rater.jar)
    return rater, shown, cookie


def test_cross_site_votes_are_refused_and_write_nothing(server, study):
    rater, shown, cookie = shown_rater(server)
    port = port_of(server)
    vote = json.dumps({"pair": shown["pair"], "choice": "left"}).encode()
    good = {"Cookie": cookie, "Content-Type": "application/json", "X-Dreamdist-Token": rater.token}
    attacks = {
        "evil origin": ({**good, "Origin": "http://evil.example"}, 403),
        "cross-site fetch": ({**good, "Sec-Fetch-Site": "cross-site"}, 403),
        "same-site fetch": ({**good, "Sec-Fetch-Site": "same-site"}, 403),
        "no token": ({k: v for k, v in good.items() if k != "X-Dreamdist-Token"}, 403),
        "stale token": ({**good, "X-Dreamdist-Token": "x" * 32}, 403),
        "text/plain form": ({**good, "Content-Type": "text/plain"}, 415),
        "url-encoded form": ({**good, "Content-Type": "application/x-www-form-urlencoded"}, 415),
    }
    for name, (headers, expected) in attacks.items():
        status, _, body = exchange(port, request("POST", "/api/vote", port, headers, vote))
        assert status == expected, (name, status, body)
    assert counts(study) == (0, 0)  # no vote and no rater row
    status, _, body = exchange(port, request("POST", "/api/vote", port, good, vote))
    assert status == 200 and json.loads(body)["done"] == 1  # the same request from the page counts
    assert counts(study) == (1, 1)


def test_a_rebinding_host_is_refused_on_every_route(study):
    srv = make_server(study, port=0, allow_hosts=["study.lan"]).start()
    try:
        port = port_of(srv)
        rater, shown, cookie = shown_rater(srv)
        routes = [("GET", "/"), ("HEAD", "/"), ("GET", "/api/next"), ("GET", f"/{shown['left']}"),
                  ("GET", "/favicon.ico"), ("GET", "/nowhere"), ("POST", "/api/vote"), ("POST", "/api/join")]  # fmt: skip
        vote = json.dumps({"pair": shown["pair"], "choice": "left"}).encode()
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", ""):
            for method, path in routes:
                headers = {"Host": host, "Cookie": cookie, "Content-Type": "application/json",
                           "X-Dreamdist-Token": rater.token}  # fmt: skip
                status, _, _ = exchange(port, request(method, path, port, headers, vote if method == "POST" else b""))
                assert status in (400, 421), (host, method, path, status)  # h11 itself refuses an empty Host
        for host in (f"study.lan:{port}", f"localhost:{port}", f"127.0.0.1:{port}"):  # --allow-host, local names
            assert exchange(port, request("GET", "/", port, {"Host": host}))[0] == 200, host
        assert counts(study) == (0, 0)
    finally:
        srv.stop()
    args = build_parser(None).parse_args(["study", "serve", "s", "--allow-host", "a.lan", "--allow-host", "b.lan"])
    assert args.allow_host == ["a.lan", "b.lan"]


def test_bad_lengths_and_deep_json_are_refused_before_harm(server, study):
    rater, shown, cookie = shown_rater(server)
    port = port_of(server)
    good = {"Cookie": cookie, "Content-Type": "application/json", "X-Dreamdist-Token": rater.token}
    for length in ("-1", "abc", "1e3", "99999999999999999999"):
        status, _, _ = exchange(port, request("POST", "/api/vote", port, {**good, "Content-Length": length}))
        assert status in (400, 413), length
    # announced oversize: answered at once, without the body ever being sent
    started = time.monotonic()
    status, _, body = exchange(port, request("POST", "/api/vote", port, {**good, "Content-Length": "100000000"}))
    assert status == 413 and b"limit" in body and time.monotonic() - started < 5
    # chunked oversize: cut off at the limit, 413
    chunk = b"a" * 1000
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(10)) + b"0\r\n\r\n"
    headers = {**good, "Transfer-Encoding": "chunked"}
    assert exchange(port, request("POST", "/api/vote", port, headers, b"") + chunked)[0] == 413
    for depth in (200, 2000):  # 2000 levels: past Python's recursion limit, still under the 4 kB body limit
        deep = b'{"pair": ' + b"[" * depth + b"]" * depth + b', "choice": "left"}'
        assert len(deep) <= 4096
        status, _, body = exchange(port, request("POST", "/api/vote", port, good, deep))
        assert status == 400 and b"error" in body, (depth, status, body)
    assert counts(study) == (0, 0)


def test_idle_sockets_do_not_stop_a_rater(server):
    port = port_of(server)
    idle = []
    try:
        for i in range(300):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            if i % 2:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers never finished
            idle.append(sock)
        started = time.monotonic()
        status, _, body = exchange(port, request("GET", "/", port), timeout=10)
        assert status == 200 and b"Left image" in body
        assert time.monotonic() - started < 5
    finally:
        for sock in idle:
            sock.close()


def test_page_views_write_nothing(server, study):
    port = port_of(server)
    before = counts(study), sum(p.stat().st_size for p in study.parent.glob("study.sqlite*"))
    for i in range(300):  # what a cross-site <img src=...> or a crawler does: cookieless GET / HEAD
        status, headers, _ = exchange(port, request("HEAD" if i % 2 else "GET", "/", port))
        assert status == 200 and "dreamdist_rater=" in headers["set-cookie"]
    for _ in range(20):  # and the pair of a rater without a vote: signed into their cookie, not written
        shown_rater(server)
    after = counts(study), sum(p.stat().st_size for p in study.parent.glob("study.sqlite*"))
    assert after == before == ((0, 0), before[1])


def test_every_answer_carries_the_security_headers(server):
    rater, shown, cookie = shown_rater(server)
    port = port_of(server)
    for path in ("/", "/api/next", f"/{shown['left']}", "/nowhere", "/favicon.ico"):
        status, headers, _ = exchange(port, request("GET", path, port, {"Cookie": cookie}))
        assert headers["x-content-type-options"] == "nosniff", path
        assert headers["x-frame-options"] == "DENY", path
        assert "frame-ancestors 'none'" in headers["content-security-policy"], path
        assert "default-src 'self'" in headers["content-security-policy"], path
    status, headers, _ = exchange(port, request("GET", "/", port))
    cookie_line = headers["set-cookie"].lower()
    assert "httponly" in cookie_line and "samesite=strict" in cookie_line


def test_a_reload_cannot_skip_a_pair_nor_a_forged_cookie_vote(server, study):
    rater, first, cookie = shown_rater(server)
    for _ in range(3):  # other raters vote meanwhile, so the least-voted pair changes
        other, shown, _ = shown_rater(server)
        assert other.post("api/vote", {"pair": shown["pair"], "choice": "tie"})[0] == 200
    assert rater.next()["pair"] == first["pair"]  # the pair is carried, signed, in the cookie
    rater_id, pair = identity.unseal(store.secret(store.open_study(study)), cookie.split("=", 1)[1])
    assert pair == first["pair"]
    other_pair = next(t for (t,) in sqlite3.connect(study).execute("SELECT token FROM pairs") if t != pair)
    forged = Rater(server.url)  # the same rater id with another pair, and a made-up signature
    forged.token = rater.token
    forged.opener.addheaders = [("Cookie", f"{identity.COOKIE}={rater_id}.{other_pair}.{'A' * 43}")]
    assert forged.post("api/vote", {"pair": other_pair, "choice": "left"})[0] == 403
    assert rater.post("api/vote", {"pair": other_pair, "choice": "left"})[0] == 409  # not the pair shown
    assert rater.post("api/vote", {"pair": first["pair"], "choice": "left"})[0] == 200
    assert counts(study) == (4, 4)


def test_a_study_that_cannot_be_written_answers_503(study, monkeypatch):
    # tests may run as root, where a read-only file is still writable: open the connections read-only
    monkeypatch.setattr(store, "connect", lambda path: store._connect(Path(path), "ro"))
    srv = make_server(study, port=0).start()
    try:
        rater = Rater(srv.url)
        assert rater.get("")[0] == 200  # the page and a pair need no write
        shown = rater.next()
        status, body = rater.post("api/vote", {"pair": shown["pair"], "choice": "left"})
        assert status == 503 and "cannot be written" in body["error"] and "organiser" in body["error"]
        port = port_of(srv)
        assert exchange(port, request("HEAD", "/", port))[0] == 200
    finally:
        srv.stop()
    assert counts(study) == (0, 0)


def as_unprivileged() -> list[str]:
    """A command prefix under which file modes hold: none for a normal user; for root, a user namespace
    without capabilities (``unshare -U``), where a read-only file is read-only again."""
    if os.geteuid() != 0:
        return []
    try:
        probe = subprocess.run(["unshare", "-U", "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        probe = None
    if probe is None or probe.returncode != 0:
        pytest.skip("running as root without 'unshare -U': a read-only file would still be writable")
    return ["unshare", "-U"]


def test_a_read_only_study_file_answers_503(study):
    prefix = as_unprivileged()
    serve = [*prefix, sys.executable, "-m", "dreamdist.cli", "study", "serve", str(study), "--port", "0"]
    study.chmod(0o444)
    try:
        proc = subprocess.Popen(serve, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            rater = Rater(proc.stdout.readline().split()[-1])
            assert rater.get("")[0] == 200  # the page and the pair need no write
            status, body = rater.post("api/vote", {"pair": rater.next()["pair"], "choice": "left"})
            assert status == 503 and "cannot be written" in body["error"]
        finally:
            proc.terminate()
            err = proc.communicate(timeout=30)[1]
        assert "read-only: votes will be refused (503)" in err
        for side_file in ("-wal", "-shm"):  # (the WAL is empty: nothing was written)
            study.with_name(study.name + side_file).unlink(missing_ok=True)
        study.parent.chmod(0o555)  # a read-only folder too: sqlite cannot even read a WAL file; say so at start
        done = subprocess.run(serve, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "make its folder writable" in done.stderr, done.stderr
    finally:
        study.parent.chmod(0o755)
        study.chmod(0o644)
    assert counts(study) == (0, 0)


def test_invites_admit_one_browser_each_and_nobody_else(tmp_path, capsys):
    red = color_folder(tmp_path / "red", RED, 2)
    blue = color_folder(tmp_path / "blue", BLUE, 2)
    study = tmp_path / "invited.sqlite"
    assert main(["study", "create", str(study), "--set", f"a={red}", f"b={blue}", "--invites", "3"]) == 0
    out = capsys.readouterr().out
    links = [line.split()[-1] for line in out.splitlines() if "?invite=" in line]
    assert len(links) == 3 and len(set(links)) == 3 and "one browser" in out
    first, second = (link.split("?invite=")[1] for link in links[:2])
    srv = make_server(study, port=0).start()
    try:
        alice = Rater(srv.url)
        assert alice.get(f"?invite={first}")[0] == 200
        assert not list(alice.jar)  # an invite-only study hands out no rater id with the page
        assert alice.post("api/join", {"invite": first}) == (200, {"ok": True})
        shown = alice.next()
        assert alice.post("api/join", {"invite": first})[0] == 200  # the same browser, reloading
        assert alice.post("api/vote", {"pair": shown["pair"], "choice": "left"})[0] == 200

        mallory = Rater(srv.url)  # a second browser with the same link
        mallory.get(f"?invite={first}")
        status, body = mallory.post("api/join", {"invite": first})
        assert status == 403 and "already used in another browser" in body["error"]
        assert mallory.get("api/next")[0] == 403
        assert mallory.post("api/vote", {"pair": shown["pair"], "choice": "left"})[0] == 403
        assert mallory.post("api/join", {"invite": "Z" * 22})[0] == 403  # not an invite of this study
        assert mallory.post("api/join", {"invite": "../x"})[0] == 400

        walk_in = Rater(srv.url)  # no invite at all, even with a validly signed rater id
        walk_in.get("")
        walk_in.token = alice.token
        key = store.secret(store.open_study(study))
        walk_in.opener.addheaders = [("Cookie", f"{identity.COOKIE}={identity.seal(key, store.new_token())}")]
        status, body = walk_in.get("api/next")
        assert status == 403 and b"invitation only" in body

        bob = Rater(srv.url)
        bob.get(f"?invite={second}")
        assert bob.post("api/join", {"invite": second})[0] == 200
        assert bob.post("api/vote", {"pair": bob.next()["pair"], "choice": "right"})[0] == 200
    finally:
        srv.stop()
    with sqlite3.connect(study) as conn:
        assert conn.execute("SELECT COUNT(*) FROM raters").fetchone()[0] == 2
        assert conn.execute("SELECT COUNT(*) FROM invites WHERE rater IS NOT NULL").fetchone()[0] == 2


def test_an_open_study_ignores_invite_links(server):
    rater = Rater(server.url)
    rater.get("?invite=" + "A" * 22)
    assert rater.post("api/join", {"invite": "A" * 22}) == (200, {"ok": True})
    assert rater.post("api/vote", {"pair": rater.next()["pair"], "choice": "left"})[0] == 200
