"""The studio's HTTP server: a JSON API over the package's functions, plus the static page.

Standard library only (``http.server``). Files are served from the runs folder and ``static/``
only, after resolving the path; run and folder names are checked (``runs.check_name``).
"""

from __future__ import annotations

import dataclasses
import json
import mimetypes
import re
import threading
import time
import typing
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from dreamdist.studio.compare import compare_runs
from dreamdist.studio.explore import Explorer, explore_folder, zip_folder
from dreamdist.studio.jobs import Jobs
from dreamdist.studio.runs import check_name, list_run_dirs, log_tail, read_progress, run_summary

STATIC = Path(__file__).parent / "static"
UPLOADS = "_uploads"
REFERENCES = "_references"
MAX_UPLOAD = 32 << 20  # bytes per uploaded image
MAX_JSON = 1 << 20
SERVED_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".json", ".jsonl", ".md"}
TRAIN_FIELDS = ("steps", "learning_rate", "batch_size", "seed", "sample_every", "checkpoint_every", "resolution")


class Studio:
    """The server's state: runs folder, model, training jobs and the generator."""

    def __init__(self, root: str | Path, model: str = "toy", device: str | None = None):
        if not (STATIC / "index.html").is_file():
            raise FileNotFoundError(
                f"the studio's page is missing from {STATIC}; reinstall dreamdist with its package data"
            )
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.model = model
        self.jobs = Jobs(self.root)
        self.explorer = Explorer(self.root, model, device)
        self.upload_lock = threading.Lock()

    # ------------------------------------------------------------ read
    def info(self) -> dict:
        """What the page needs to build its forms."""
        from dreamdist.config import SAMPLERS
        from dreamdist.generation import SCHEDULERS
        from dreamdist.methods import get_method, method_names

        methods = {name: _fields(get_method(name).config) for name in method_names()}
        concepts = []
        if self.model == "toy":
            from dreamdist.toyworld.concepts import CONCEPTS

            concepts = [{"name": c.name, "description": c.description} for c in CONCEPTS.values()]
        return {
            "model": self.model,
            "runs_dir": str(self.root),
            "methods": methods,
            "samplers": list(SAMPLERS),
            "schedulers": list(SCHEDULERS),
            "toy_concepts": concepts,
        }

    def runs(self) -> list[dict]:
        return [run_summary(p, self.jobs.state(p.name)) for p in list_run_dirs(self.root)]

    def run(self, name: str) -> dict:
        folder = self.root / check_name(name)
        if not folder.is_dir():
            raise FileNotFoundError(f"no run named {name!r} in {self.root}")
        curve: dict[int, float] = {}
        for record in read_progress(folder):  # a step repeated after a resume keeps its last loss
            curve[int(record["step"])] = float(record["loss"])
        summary = run_summary(folder, self.jobs.state(name))
        return {**summary, "curve": sorted(curve.items()), "log": log_tail(folder)}

    # ------------------------------------------------------------ write
    def train(self, request: dict) -> dict:
        """Validate the page's train form into the typed configs, then start the run."""
        from dreamdist.config import TrainConfig
        from dreamdist.methods import get_method

        name = check_name(request.get("name") or f"{request.get('method', 'run')}-{time.strftime('%Y%m%d-%H%M%S')}")
        if (self.root / name).exists():
            raise FileExistsError(f"a run named {name!r} already exists; choose another name")
        images = self._reference_folder(request, name)
        method = request.get("method") or "dreamdistribution"
        config_cls = get_method(method).config
        options = dict(request.get("options") or {})
        if request.get("num_prompts") not in (None, "") and "num_prompts" in {
            f.name for f in dataclasses.fields(config_cls)
        }:
            options["num_prompts"] = request["num_prompts"]
        method_config = config_cls(**_coerce(config_cls, options))
        train_values = {k: request[k] for k in TRAIN_FIELDS if request.get(k) not in (None, "")}
        train_config = TrainConfig(
            **_coerce(TrainConfig, train_values), images=str(images), out=str(self.root / name), model=self.model,
            method=method,
        )  # fmt: skip
        self.jobs.start(name, train_config, method_config)
        return {"name": name}

    def _reference_folder(self, request: dict, name: str) -> Path:
        """The references: a folder path, an uploaded batch, or a rendered toy concept."""
        if request.get("toy_concept"):
            from dreamdist.toyworld.concepts import render_concept

            count = int(request.get("toy_references") or 8)
            folder = self.root / REFERENCES / name
            render_concept(request["toy_concept"], folder, n=count, seed=int(request.get("seed") or 0))
            return folder
        if request.get("upload"):
            folder = self.root / UPLOADS / check_name(request["upload"])
            if not folder.is_dir():
                raise FileNotFoundError(f"upload {request['upload']!r} not found; upload the images again")
            return folder
        path = str(request.get("images") or "").strip()
        if not path:
            raise ValueError("choose the reference images: a folder path, an upload, or a toy concept")
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"reference folder {folder} does not exist")
        return folder

    def upload(self, batch: str | None, filename: str, data: bytes) -> dict:
        """Store one uploaded image in ``RUNS/_uploads/<batch>/`` after checking it is an image."""
        import io

        from PIL import Image

        from dreamdist.data import IMAGE_EXTENSIONS

        name = Path(filename.replace("\\", "/")).name
        if Path(name).suffix.lower() not in IMAGE_EXTENSIONS or not re.fullmatch(r"[\w. -]{1,128}", name):
            raise ValueError(f"{filename!r} is not an image file name ({', '.join(IMAGE_EXTENSIONS)})")
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.verify()
        except Exception as exc:
            raise ValueError(f"{name} is not a readable image ({exc})") from None
        with self.upload_lock:
            batch = check_name(batch) if batch else f"upload-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**6}"
            folder = self.root / UPLOADS / batch
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
            count = sum(1 for p in folder.iterdir() if p.is_file())
        return {"upload": batch, "folder": str(folder), "count": count}

    def file(self, relative: str) -> Path:
        """A file under the runs folder, refusing anything that resolves outside it."""
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root) or not path.is_file() or path.suffix.lower() not in SERVED_SUFFIXES:
            raise FileNotFoundError(relative)
        return path


def _fields(cls: type) -> list[dict]:
    """A config dataclass's fields for the page: name, default, help."""
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        out.append({"name": f.name, "default": default, "help": f.metadata.get("help", "")})
    return out


def _coerce(cls: type, values: dict) -> dict:
    """Form values -> the dataclass's field types; unknown names are an error that lists the known ones."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    out = {}
    for key, value in values.items():
        if key not in known:
            raise ValueError(f"unknown option {key!r} for {cls.__name__}; known: {', '.join(sorted(known))}")
        kinds = [k for k in typing.get_args(hints[key]) if k is not type(None)] or [hints[key]]
        kind = kinds[0]
        try:
            if kind is bool:
                out[key] = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
            elif kind in (int, float, str):
                out[key] = kind(value)
            else:
                out[key] = value
        except (TypeError, ValueError):
            raise ValueError(f"option {key}: {value!r} is not a valid {kind.__name__}") from None
    return out


class Handler(BaseHTTPRequestHandler):
    """Routes: ``/`` the page, ``/static/*``, ``/files/*`` (runs folder), ``/api/*`` (JSON)."""

    studio: Studio  # set on the subclass made by ``make_server``
    server_version = "dreamdist-studio"

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass  # the terminal shows the URL and errors, not every image request

    # ------------------------------------------------------------ responses
    def send_body(self, status: int, body: bytes, content_type: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, value, status: int = 200) -> None:
        self.send_body(status, json.dumps(value, default=str).encode(), "application/json")

    def send_file(self, path: Path) -> None:
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if path.suffix == ".jsonl":
            kind = "application/jsonl"
        self.send_body(200, path.read_bytes(), kind)

    def read_body(self, limit: int) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > limit:
            raise ValueError(f"request body of {length} bytes is over the limit of {limit}")
        return self.rfile.read(length)

    def handle_errors(self, action) -> None:
        try:
            action()
        except FileNotFoundError as exc:
            self.send_json({"error": str(exc)}, HTTPStatus.NOT_FOUND)
        except FileExistsError as exc:
            self.send_json({"error": str(exc)}, HTTPStatus.CONFLICT)
        except (ValueError, KeyError, OSError) as exc:
            self.send_json({"error": str(exc).strip("'\"")}, HTTPStatus.BAD_REQUEST)
        except Exception as exc:  # a bug: tell the page, keep serving
            self.send_json({"error": f"{type(exc).__name__}: {exc}"}, HTTPStatus.INTERNAL_SERVER_ERROR)

    # ------------------------------------------------------------ routes
    def do_GET(self) -> None:
        self.handle_errors(self.get)

    def do_POST(self) -> None:
        self.handle_errors(self.post)

    def get(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(url.path)
        studio = self.studio
        if path in ("/", "/index.html"):
            self.send_file(STATIC / "index.html")
        elif path.startswith("/static/"):
            name = path[len("/static/") :]
            if name not in {p.name for p in STATIC.iterdir()}:
                raise FileNotFoundError(name)
            self.send_file(STATIC / name)
        elif path.startswith("/files/"):
            self.send_file(studio.file(path[len("/files/") :]))
        elif path == "/api/info":
            self.send_json(studio.info())
        elif path == "/api/runs":
            self.send_json(studio.runs())
        elif m := re.fullmatch(r"/api/runs/([^/]+)", path):
            self.send_json(studio.run(m[1]))
        elif m := re.fullmatch(r"/api/zip/([^/]+)", path):
            folder = explore_folder(studio.root, m[1])
            disposition = {"Content-Disposition": f'attachment; filename="dreamdist-{folder.name}.zip"'}
            self.send_body(200, zip_folder(folder), "application/zip", disposition)
        else:
            raise FileNotFoundError(path)

    def post(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(url.path)
        studio = self.studio
        if path == "/api/upload":
            query = urllib.parse.parse_qs(url.query)
            filename = (query.get("name") or [""])[0]
            batch = (query.get("batch") or [None])[0]
            self.send_json(studio.upload(batch, filename, self.read_body(MAX_UPLOAD)))
            return
        body = self.read_body(MAX_JSON)
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            raise ValueError("request body is not JSON") from None
        if path == "/api/train":
            self.send_json(studio.train(request))
        elif m := re.fullmatch(r"/api/runs/([^/]+)/stop", path):
            studio.jobs.stop(m[1])
            self.send_json({"stopping": m[1]})
        elif m := re.fullmatch(r"/api/runs/([^/]+)/resume", path):
            studio.jobs.resume(m[1])
            self.send_json({"resumed": m[1]})
        elif path == "/api/generate":
            self.send_json(studio.explorer.generate(request))
        elif path == "/api/compare":
            self.send_json(compare_runs(studio.explorer, studio.root, request))
        else:
            raise FileNotFoundError(path)


def make_server(studio: Studio, host: str = "127.0.0.1", port: int = 7860) -> ThreadingHTTPServer:
    """A threading HTTP server bound to ``host:port`` (port 0: a free one) serving ``studio``."""
    handler = type("StudioHandler", (Handler,), {"studio": studio})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server
