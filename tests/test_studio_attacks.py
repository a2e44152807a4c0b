"""The studio against what another web page, a rebinding DNS name, an absurd number or a crash sends.

Every request goes to a real server on 127.0.0.1 (raw sockets where a client library would fix the
request up first). Each test checks the refusal AND that nothing was written.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dreamdist.atomic import atomic_write_json
from dreamdist.runlock import holder
from dreamdist.studio.explore import new_folder
from dreamdist.studio.server import MAX_JSON, Studio, make_server

EVIL = "http://evil.example"


@pytest.fixture
def studio(tmp_path):
    """(server, Studio) on a free port of 127.0.0.1."""
    studio = Studio(tmp_path / "runs")
    server = make_server(studio, "127.0.0.1", 0).start()
    yield server, studio
    server.stop()
    studio.close()


def raw(server, head: str, body: bytes = b"", read_timeout: float = 10.0) -> tuple[int, dict, bytes]:
    """Send ``head`` (request line + headers, ``\\r\\n``-separated, without the blank line) and ``body``
    over a raw socket; return (status, headers, body) of the answer."""
    host, port = server.socket.getsockname()[:2]
    with socket.create_connection((host, port), timeout=read_timeout) as sock:
        sock.sendall(head.encode("latin-1") + b"\r\n\r\n" + body)
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            data += chunk
            head_end = data.find(b"\r\n\r\n")
            if head_end >= 0:
                length = re.search(rb"(?i)content-length: *(\d+)", data[:head_end])
                if length and len(data) >= head_end + 4 + int(length[1]):
                    break
    head_bytes, _, payload = data.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, payload


def post(server, path: str, body: bytes, **headers) -> tuple[int, dict, bytes]:
    """A POST as sent by a page of this server (its host, the session token, JSON), with ``headers``
    overriding (``None`` removes one; underscores in names become dashes)."""
    host = server.url.split("/")[2]
    base = {"Host": host, "Content-Type": "application/json", "X-Dreamdist-Token": server.policy.token}
    base |= {k.replace("_", "-"): v for k, v in headers.items()}
    base["Content-Length"] = base.get("Content-Length", str(len(body)))
    lines = [f"POST {path} HTTP/1.1", *(f"{k}: {v}" for k, v in base.items() if v is not None)]
    return raw(server, "\r\n".join(lines), body)


def get(server, path: str, host: str | None = None) -> tuple[int, dict, bytes]:
    return raw(server, f"GET {path} HTTP/1.1\r\nHost: {host or server.url.split('/')[2]}")


def train_body(tmp_path: Path, **extra) -> bytes:
    refs = tmp_path / "refs"
    refs.mkdir(exist_ok=True)
    return json.dumps({"name": "victim", "images": str(refs), "steps": 1, **extra}).encode()


def entries(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# ---------------------------------------------------------------- cross-site and rebinding
@pytest.mark.parametrize(
    "headers, status",
    [
        ({"Content_Type": "text/plain", "Origin": EVIL, "X_Dreamdist_Token": None}, 403),  # a page's simple POST
        ({"Origin": EVIL}, 403),  # even with the token
        ({"Origin": "null"}, 403),  # a sandboxed frame
        ({"Sec_Fetch_Site": "cross-site"}, 403),
        ({"Sec_Fetch_Site": "same-site"}, 403),  # another port or subdomain of the same site
        ({"X_Dreamdist_Token": None}, 403),  # same origin but no page token
        ({"X_Dreamdist_Token": "stale"}, 403),
        ({"Content_Type": "text/plain"}, 415),  # JSON routes take JSON only
        ({"Content_Type": "application/x-www-form-urlencoded"}, 415),
    ],
)
def test_state_changing_requests_from_elsewhere_are_refused_and_start_nothing(studio, tmp_path, headers, status):
    server, app = studio
    before = entries(app.root)
    for path in ("/api/train", "/api/runs/victim/stop", "/api/runs/victim/resume", "/api/generate", "/api/compare"):
        code, answer_headers, body = post(server, path, train_body(tmp_path), **headers)
        assert code == status, (path, code, body)
        assert "error" in json.loads(body)
        assert answer_headers["x-content-type-options"] == "nosniff"
    assert entries(app.root) == before


def test_upload_from_elsewhere_stores_nothing(studio):
    server, app = studio
    for headers in ({"X_Dreamdist_Token": None}, {"Origin": EVIL}, {"Sec_Fetch_Site": "cross-site"}):
        code, _, _ = post(server, "/api/upload?name=a.png", b"\x89PNG....", Content_Type="image/png", **headers)
        assert code == 403
    assert not (app.root / "_uploads").exists()


def test_same_origin_page_requests_pass(studio, tmp_path):
    """The checks refuse others, not the page: its own origin and Sec-Fetch-Site pass."""
    server, app = studio
    origin = server.url.rstrip("/")
    code, _, body = post(server, "/api/compare", b'{"runs": []}', Origin=origin, Sec_Fetch_Site="same-origin")
    assert code == 400 and b"at least one run" in body  # reached the route


@pytest.mark.parametrize("path", ["/", "/api/info", "/api/runs", "/api/runs/r", "/files/r/train_config.json"])
def test_a_rebinding_host_is_refused_on_every_route(studio, path):
    server, app = studio
    (app.root / "r").mkdir()
    atomic_write_json(app.root / "r" / "train_config.json", {"train_config": {"images": "/home/someone/refs"}})
    port = server.url.rstrip("/").rsplit(":", 1)[1]
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}", ""):
        code, _, body = get(server, path, host=host) if host else raw(server, f"GET {path} HTTP/1.0")
        assert code in (400, 421), (host, code)
        assert b"/home/someone" not in body
    assert get(server, path, host=f"localhost:{port}")[0] == 200
    assert get(server, path, host=f"127.0.0.1:{port}")[0] == 200


def test_allow_host_admits_a_named_host(tmp_path):
    studio = Studio(tmp_path / "runs")
    server = make_server(studio, "127.0.0.1", 0, allow_hosts=("studio.lan",)).start()
    try:
        assert get(server, "/api/runs", host="studio.lan:7860")[0] == 200
        assert get(server, "/api/runs", host="other.lan:7860")[0] == 421
    finally:
        server.stop()
        studio.close()


# ---------------------------------------------------------------- sizes and malformed bodies
def test_malformed_and_oversized_lengths_are_refused_before_reading(studio, tmp_path):
    server, app = studio
    before = entries(app.root)
    for length in ("-1", "1e3", "abc", " 12x"):
        code, _, _ = post(server, "/api/train", train_body(tmp_path), Content_Length=length)
        assert code == 400, length
    # a huge announced body is answered at once, without sending (or reading) it
    code, _, body = post(server, "/api/train", b"", Content_Length=str(MAX_JSON + 1))
    assert code == 413 and b"over the limit" in body
    code, _, _ = post(server, "/api/upload?name=a.png", b"", Content_Type="image/png", Content_Length=str(64 << 20))
    assert code == 413
    assert entries(app.root) == before


def test_a_chunked_body_is_cut_off_at_the_limit(studio):
    server, app = studio
    host = server.url.split("/")[2]
    chunk = b"x" * (1 << 20)
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(40)) + b"0\r\n\r\n"  # 40 MiB
    head = (
        f"POST /api/upload?name=a.png HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/png\r\n"
        f"X-Dreamdist-Token: {server.policy.token}\r\nTransfer-Encoding: chunked"
    )
    try:
        code, _, _ = raw(server, head, body)
    except (BrokenPipeError, ConnectionResetError):
        code = 413  # the server hung up on the rest of the body
    assert code == 413
    assert not any((app.root / "_uploads").rglob("*.png")) if (app.root / "_uploads").exists() else True


@pytest.mark.parametrize(
    "body, field",
    [
        ('{"runs": ["a"], "num_inference_steps": 1000000000}', "num_inference_steps"),
        ('{"runs": ["a"], "num_images": 100000}', "num_images"),
        ('{"runs": ["a"], "gamma": NaN}', "gamma"),
        ('{"runs": ["a"], "gamma": Infinity}', "gamma"),
        ('{"runs": ["a"], "guidance_scale": -Infinity}', "guidance_scale"),
        ('{"runs": ["a"], "prompt": "' + "x" * 5000 + '"}', "prompt"),
        ('{"runs": ["a"], "weights": [1, 2, 3, 4, 5, 6, 7, 8, 9]}', "weights"),
        ('{"runs": ["../../etc"]}', "run name"),
        ('{"runs": ["a"], "sampler": "bogus"}', "sampler"),
        ('{"runs": ["a"], "surprise": 1}', "surprise"),
    ],
)
def test_absurd_generate_requests_are_400s_naming_the_field(studio, body, field):
    server, app = studio
    code, _, answer = post(server, "/api/generate", body.encode())
    assert code == 400 and field in json.loads(answer)["error"], answer
    assert not (app.root / "_explore").exists()


def test_absurd_train_requests_write_nothing(studio, tmp_path):
    server, app = studio
    before = entries(app.root)
    for extra in (
        {"toy_concept": "cool-patterned", "toy_references": 3000},
        {"toy_concept": "no-such-concept"},
        {"steps": 10**12},
        {"learning_rate": "NaN"},
        {"options": {"num_prompts": 1e300}},
        {"options": {f"k{i}": 1 for i in range(100)}},
        {"method": "no-such-method"},
    ):
        code, _, body = post(server, "/api/train", train_body(tmp_path, **extra))
        assert code == 400, (extra, body)
    assert entries(app.root) == before


def test_a_failed_start_removes_the_rendered_references(studio, tmp_path):
    """The references are rendered, then the method's options fail: both folders are gone again."""
    server, app = studio
    body = train_body(tmp_path, toy_concept="cool-patterned", toy_references=4, options={"num_prompts": -3})
    code, _, answer = post(server, "/api/train", body)
    assert code in (400, 500), answer
    assert not (app.root / "_references" / "victim").exists() and not (app.root / "victim").exists()


def test_deeply_nested_json_is_a_400(studio):
    server, _ = studio
    for depth in (100, 5000, 30000):
        code, _, body = post(server, "/api/generate", b"[" * depth + b"]" * depth)
        assert code in (400, 413), (depth, code)
    assert post(server, "/api/generate", b"{not json")[0] == 400


def test_errors_do_not_carry_server_paths(studio, tmp_path):
    server, app = studio
    (app.root / "broken").mkdir()
    atomic_write_json(app.root / "broken" / "studio-run.json", {"train": {}, "method": {}})
    answers = [
        post(server, "/api/runs/broken/stop", b"{}"),
        post(server, "/api/generate", b'{"runs": ["broken"]}'),
        post(server, "/api/train", json.dumps({"name": "broken", "images": str(tmp_path)}).encode()),
        post(server, "/api/train", json.dumps({"upload": "gone"}).encode()),
        get(server, "/api/runs/missing"),
        get(server, "/api/zip/missing"),
    ]
    for code, _, body in answers:
        assert 400 <= code < 500 and str(app.root).encode() not in body, body


def test_security_headers_on_pages_files_and_errors(studio):
    server, _ = studio
    for path in ("/", "/static/app.js", "/api/info", "/nowhere"):
        _, headers, _ = get(server, path)
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert "server" not in headers


def test_the_page_carries_the_session_token(studio):
    server, _ = studio
    _, _, page = get(server, "/")
    assert f'name="dreamdist-token" content="{server.policy.token}"'.encode() in page


def test_idle_connections_do_not_block_requests(studio):
    server, _ = studio
    host, port = server.socket.getsockname()[:2]
    idle = [socket.create_connection((host, port)) for _ in range(300)]
    try:
        idle[0].sendall(b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers never finished
        started = time.perf_counter()
        code, _, _ = get(server, "/api/runs")
        assert code == 200 and time.perf_counter() - started < 5
    finally:
        for sock in idle:
            sock.close()


def test_a_connection_that_never_finishes_its_head_is_closed(tmp_path, monkeypatch):
    from dreamdist.web import serve

    monkeypatch.setattr(serve, "HEAD_TIMEOUT_S", 0.5)
    studio = Studio(tmp_path / "runs")
    server = make_server(studio, "127.0.0.1", 0).start()
    try:
        host, port = server.socket.getsockname()[:2]
        with (
            socket.create_connection((host, port), timeout=10) as silent,
            socket.create_connection((host, port), timeout=10) as trickle,
        ):
            trickle.sendall(b"GET / HTTP/1.1\r\n")
            started = time.perf_counter()
            for _ in range(4):  # a byte now and then does not keep it open
                time.sleep(0.3)
                try:
                    trickle.sendall(b"X")
                except OSError:
                    break
            assert silent.recv(1) == b"" and time.perf_counter() - started < 5
            try:
                data = trickle.recv(65536)
            except ConnectionResetError:
                data = b""
            assert data == b"" and time.perf_counter() - started < 5
    finally:
        server.stop()
        studio.close()


# ---------------------------------------------------------------- concurrency and crashes
def test_new_folders_are_unique_across_threads(tmp_path):
    made: list[str] = []
    threads = [
        threading.Thread(target=lambda: made.extend(new_folder(tmp_path)[0] for _ in range(20))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(made) == len(set(made)) == 160


def test_concurrent_atomic_writes_of_one_file_never_collide(tmp_path):
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            for j in range(30):
                atomic_write_json(tmp_path / "state.json", {"writer": i, "n": j})
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert set(json.loads((tmp_path / "state.json").read_text())) == {"writer", "n"}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def start_studio(runs: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "dreamdist.cli", "studio", "--port", "0", "--runs", str(runs)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline, line = time.time() + 120, ""
    while time.time() < deadline and "http://" not in line:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
    url = re.search(r"http://\S+/", line)
    assert url, f"studio did not start: {line!r}"
    threading.Thread(target=process.stdout.read, daemon=True).start()  # drain its output
    return process, url[0]


def api(url: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    page = urllib.request.urlopen(url, timeout=30).read().decode()
    token = re.search(r'name="dreamdist-token" content="([^"]+)"', page)[1]
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url.rstrip("/") + path, data=data, method="GET" if data is None else "POST")
    request.add_header("X-Dreamdist-Token", token)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped by its new parent, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_a_killed_studio_takes_its_trainer_along_and_a_run_never_has_two_trainers(tmp_path):
    runs = tmp_path / "runs"
    studio, url = start_studio(runs)
    try:
        body = {"name": "long", "toy_concept": "cool-patterned", "toy_references": 4, "steps": 100000,
                "checkpoint_every": 1, "num_prompts": 2, "batch_size": 1}  # fmt: skip
        code, answer = api(url, "/api/train", body)
        assert code == 200, answer
        wait_for(lambda: holder(runs / "long") is not None, 120, "the trainer to take the run's lock")
        trainer = holder(runs / "long")
        wait_for(lambda: (runs / "long" / "checkpoints").is_dir(), 180, "a first checkpoint")
    finally:
        studio.kill()  # SIGKILL: no shutdown handler runs
        studio.wait()
    # the trainer notices, saves a checkpoint and exits
    wait_for(lambda: holder(runs / "long") is None, 60, "the orphaned trainer to stop")
    wait_for(lambda: not alive(trainer), 30, "the orphaned trainer to exit")
    status = json.loads((runs / "long" / "studio" / "status.json").read_text())
    assert status["state"] == "stopped", status  # stopped with a checkpoint, not killed

    first, url1 = start_studio(runs)
    second, url2 = start_studio(runs)  # two studios on one runs folder
    try:
        assert api(url1, "/api/runs/long")[1]["state"] in ("stopped", "interrupted")
        code, answer = api(url1, "/api/runs/long/resume", {})
        assert code == 200, answer
        wait_for(lambda: holder(runs / "long") is not None, 120, "the resumed trainer")
        assert api(url2, "/api/runs/long")[1]["state"] == "running"  # the other studio sees it
        for other in (url1, url2):
            code, answer = api(other, "/api/runs/long/resume", {})
            assert code == 400 and "already running" in answer["error"]
        code, _ = api(url2, "/api/runs/long/stop", {})  # stops a trainer the other studio started
        assert code == 200
        wait_for(lambda: holder(runs / "long") is None, 120, "the trainer to stop")
        steps = [json.loads(line)["step"] for line in (runs / "long" / "studio" / "progress.jsonl").open()]
        drops = sum(b <= a for a, b in zip(steps, steps[1:]))
        assert steps and drops <= 1, steps  # one resume, one trainer at a time: the steps never interleave
    finally:
        for process in (first, second):
            process.send_signal(signal.SIGINT)
        for process in (first, second):
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
