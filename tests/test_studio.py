"""The studio's server, runs folder and worker without a browser (fast; no model is loaded)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from PIL import Image

from dreamdist.cli import build_parser
from dreamdist.studio.jobs import Jobs
from dreamdist.studio.runs import STATUS, WORKER_DIR, check_name, list_run_dirs, log_tail, run_summary, write_json
from dreamdist.studio.server import Studio, make_server
from dreamdist.studio.worker import step_recorder


@pytest.fixture
def server(tmp_path):
    """(base URL, Studio) of a server on a free port, default host."""
    args = build_parser(None).parse_args(["studio", "--port", "0", "--runs", str(tmp_path / "runs")])
    studio = Studio(args.runs, args.model)
    httpd = make_server(studio, args.host, args.port).start()
    TOKENS[httpd.url.rstrip("/")] = httpd.policy.token
    yield httpd.url.rstrip("/"), studio
    httpd.stop()


TOKENS: dict[str, str] = {}  # base URL -> the server's session token (what the page carries)


def call(url: str, body=None, raw: bytes | None = None) -> tuple[int, dict | bytes]:
    """(status, JSON or bytes) of a GET, a JSON POST (``body``) or a raw POST (``raw``), sent as the page
    sends them (session token, content type)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if data is not None:
        base = next(b for b in TOKENS if url.startswith(b))
        request.add_header("X-Dreamdist-Token", TOKENS[base])
        request.add_header("Content-Type", "application/octet-stream" if raw is not None else "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, payload, kind = response.status, response.read(), response.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        status, payload, kind = exc.code, exc.read(), exc.headers["Content-Type"]
    return status, json.loads(payload) if kind == "application/json" else payload


def test_cli_defaults_bind_this_machine_only(server):
    args = build_parser(None).parse_args(["studio"])
    assert (args.host, args.model, args.port) == ("127.0.0.1", "toy", 7860)
    url, _ = server
    assert url.startswith("http://127.0.0.1:")


def test_run_names_are_single_folder_names():
    assert check_name("dd-run_1.2") == "dd-run_1.2"
    for bad in ("", "../x", "a/b", ".hidden", "_explore", "a..b", "x" * 65, "a b"):
        with pytest.raises(ValueError, match="run name"):
            check_name(bad)


def test_page_and_info(server):
    url, _ = server
    status, page = call(url + "/")
    assert status == 200 and b"dreamdist studio" in page and b"/static/app.js" in page
    assert call(url + "/static/app.js")[0] == 200
    assert call(url + "/static/../server.py")[0] == 404
    status, info = call(url + "/api/info")
    assert status == 200 and info["model"] == "toy"
    assert "cool-patterned" in {c["name"] for c in info["toy_concepts"]}
    assert "num_prompts" in {f["name"] for f in info["methods"]["dreamdistribution"]}
    assert set(info["samplers"]) == {"gaussian", "mixture"}


def test_train_form_errors_are_one_clear_line(server, tmp_path):
    url, studio = server
    status, reply = call(url + "/api/train", {"name": "a"})
    assert status == 400 and "choose the reference images" in reply["error"]
    status, reply = call(url + "/api/train", {"name": "a", "images": str(tmp_path / "missing")})
    assert status == 404 and "does not exist" in reply["error"]
    refs = tmp_path / "refs"
    refs.mkdir()
    status, reply = call(url + "/api/train", {"name": "a", "images": str(refs), "options": {"bogus": 1}})
    assert status == 400 and "unknown option 'bogus'" in reply["error"] and "num_prompts" in reply["error"]
    status, reply = call(url + "/api/train", {"name": "a", "images": str(refs), "steps": "many"})
    assert status == 400 and "steps" in reply["error"]
    status, reply = call(url + "/api/train", {"name": "../escape", "images": str(refs)})
    assert status == 400 and "run name" in reply["error"]
    (studio.root / "taken").mkdir()
    write_json(studio.root / "taken" / "studio-run.json", {"train": {}, "method": {}})
    status, reply = call(url + "/api/train", {"name": "taken", "images": str(refs)})
    assert status == 409 and "already exists" in reply["error"]
    assert call(url + "/api/runs/taken/stop", {})[0] == 400  # not running
    status, reply = call(url + "/api/generate", {"runs": ["taken"]})
    assert status == 400 and "no artifact yet" in reply["error"]
    status, reply = call(url + "/api/compare", {"runs": []})
    assert status == 400 and "at least one run" in reply["error"]


def test_files_are_served_from_the_runs_folder_only(server, tmp_path):
    url, studio = server
    (studio.root / "r" / "samples").mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(studio.root / "r" / "samples" / "step-0000001.png")
    (tmp_path / "secret.json").write_text("{}")
    (studio.root / "r" / "link.json").symlink_to(tmp_path / "secret.json")
    (studio.root / "r" / "notes.txt").write_text("x")
    assert call(url + "/files/r/samples/step-0000001.png")[0] == 200
    assert call(url + "/files/r/link.json")[0] == 404  # resolves outside the runs folder
    assert call(url + "/files/../secret.json")[0] == 404
    assert call(url + "/files/%2e%2e/secret.json")[0] == 404
    assert call(url + "/files/r/notes.txt")[0] == 404  # not an image or report


def test_upload_keeps_images_and_refuses_the_rest(server, tmp_path):
    url, studio = server
    png = tmp_path / "a.png"
    Image.new("RGB", (64, 64), "blue").save(png)
    status, reply = call(url + "/api/upload?name=a.png", raw=png.read_bytes())
    assert status == 200 and reply["count"] == 1
    batch = reply["upload"]
    status, reply = call(url + f"/api/upload?name=b.png&batch={batch}", raw=png.read_bytes())
    assert status == 200 and reply["count"] == 2 and reply["upload"] == batch
    status, reply = call(url + f"/api/upload?name=c.png&batch={batch}", raw=b"not an image")
    assert status == 400 and "not a readable image" in reply["error"]
    status, reply = call(url + "/api/upload?name=evil.sh", raw=png.read_bytes())
    assert status == 400 and "not an image file name" in reply["error"]
    status, reply = call(url + f"/api/upload?name=..%2F..%2Fx.png&batch={batch}", raw=png.read_bytes())
    assert status == 200  # the name is reduced to its last part, inside the upload folder
    assert sorted(p.name for p in (studio.root / "_uploads" / batch).iterdir()) == ["a.png", "b.png", "x.png"]


def test_trainer_reports_each_step_from_the_resumed_step(refs, tiny_model, tmp_path):
    from dreamdist.config import TrainConfig
    from dreamdist.methods.dreamdistribution import DreamDistributionConfig
    from dreamdist.training.loop import train

    path = tmp_path / "progress.jsonl"
    small = DreamDistributionConfig(num_prompts=2, num_tokens=1, num_samples=2)
    common = dict(images=str(refs), model=str(tiny_model), out=str(tmp_path / "run"), batch_size=1, progress=False)
    train(TrainConfig(**common, steps=2, checkpoint_every=1), small)
    train(TrainConfig(**common, steps=4, resume=True), small, on_step=step_recorder(path))
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["step"], r["total"]) for r in records] == [(3, 4), (4, 4)]
    assert all(r["loss"] > 0 for r in records)


def test_runs_folder_lists_cli_runs_and_reads_states(tmp_path):
    root = tmp_path / "runs"
    cli_run = root / "from-cli"
    cli_run.mkdir(parents=True)
    write_json(cli_run / "train_config.json", {"method": "dreamdistribution", "train_config": {"images": "refs"}})
    (root / "_explore").mkdir()
    (root / "not-a-run").mkdir()
    assert [p.name for p in list_run_dirs(root)] == ["from-cli"]
    summary = run_summary(cli_run, "idle")
    assert not summary["from_studio"]
    assert (summary["method"], summary["images"], summary["step"], summary["has_artifact"]) == (
        "dreamdistribution",
        "refs",
        0,
        False,
    )
    jobs = Jobs(root)
    assert jobs.state("from-cli") == "idle"
    write_json(cli_run / WORKER_DIR / STATUS, {"state": "running"})
    assert jobs.state("from-cli") == "interrupted"  # no process of ours runs it
    with pytest.raises(ValueError, match="not started from the studio"):
        jobs.resume("from-cli")


def test_log_tail_folds_progress_bar_redraws(tmp_path):
    folder = tmp_path / "run"
    (folder / WORKER_DIR).mkdir(parents=True)
    (folder / WORKER_DIR / "worker.log").write_bytes(b"start\n\r 1/3\r 2/3\r 3/3\nValueError: bad\n")
    assert log_tail(folder).splitlines() == ["start", " 3/3", "ValueError: bad"]


def test_a_run_with_unusable_references_fails_with_the_trainers_message(tmp_path):
    """The worker process reports the trainer's error on the page (state failed, one line)."""
    from dreamdist.config import TrainConfig
    from dreamdist.methods.dreamdistribution import DreamDistributionConfig

    root, refs = tmp_path / "runs", tmp_path / "refs"
    refs.mkdir()
    (refs / "broken.png").write_bytes(b"not a png")
    jobs = Jobs(root)
    config = TrainConfig(images=str(refs), out=str(root / "bad"), steps=2, progress=False)
    jobs.start("bad", config, DreamDistributionConfig(num_prompts=2))
    assert jobs.state("bad") == "running"
    jobs.processes["bad"].wait(120)
    summary = run_summary(root / "bad", jobs.state("bad"))
    assert summary["state"] == "failed" and summary["from_studio"]
    assert "broken.png" in summary["error"], summary["error"]
    with pytest.raises(FileExistsError, match="already exists"):
        jobs.start("bad", config, DreamDistributionConfig(num_prompts=2))
