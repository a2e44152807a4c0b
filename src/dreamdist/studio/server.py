"""The studio's web app: a FastAPI JSON API over the package's functions, plus the static page.

Served by uvicorn behind :class:`dreamdist.web.guard.Guard` (Host allow-list, same-origin and
session-token checks on every state-changing route, body limits, security headers). Request bodies
are bounded pydantic models (``studio.requests``). Heavy work (rendering references, generating,
comparing) runs in one bounded worker thread, never in the server's event loop; training runs in a
child process per run (``studio.jobs``). Files are served from the runs folder and ``static/`` only,
after resolving the path; run and folder names are checked (``runs.check_name``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import html
import io
import re
import secrets
import shutil
import threading
import time
import typing
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from dreamdist.studio.compare import compare_runs
from dreamdist.studio.explore import Explorer, explore_folder, zip_folder
from dreamdist.studio.jobs import Jobs
from dreamdist.studio.requests import CompareRequest, GenerateRequest, TrainRequest
from dreamdist.studio.runs import check_name, list_run_dirs, log_tail, read_progress, run_summary
from dreamdist.web.guard import Policy, allowed_hosts
from dreamdist.web.serve import Server, error_handlers

STATIC = Path(__file__).parent / "static"
UPLOADS = "_uploads"
REFERENCES = "_references"
MAX_UPLOAD = 32 << 20  # bytes per uploaded image
MAX_JSON = 64 << 10
MAX_QUEUED = 4  # heavy requests waiting for the worker beyond this are answered 503
SERVED_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".json", ".jsonl", ".md"}
TRAIN_FIELDS = ("steps", "learning_rate", "batch_size", "seed", "sample_every", "checkpoint_every", "resolution")


class Busy(RuntimeError):
    """Too many heavy requests are waiting already."""


class Studio:
    """The server's state: runs folder, model, training jobs, the generator and its worker."""

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
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="studio-worker")
        self.queued = threading.BoundedSemaphore(MAX_QUEUED)

    async def heavy(self, function, *args):
        """Run ``function(*args)`` on the worker thread and await it; ``Busy`` when the queue is full."""
        if not self.queued.acquire(blocking=False):
            raise Busy(f"the studio is busy with {MAX_QUEUED} requests; try again when they finish")
        try:
            return await asyncio.wrap_future(self.worker.submit(function, *args))
        finally:
            self.queued.release()

    def close(self) -> None:
        """Stop the trainings with a checkpoint and the worker (server shutdown)."""
        self.jobs.stop_all()
        self.worker.shutdown(wait=False, cancel_futures=True)

    def scrub(self, text: str) -> str:
        """An error message without the server's runs-folder path."""
        return text.replace(str(self.root), "<runs>")

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
            raise FileNotFoundError(f"no run named {name!r}")
        curve: dict[int, float] = {}
        for record in read_progress(folder):  # a step repeated after a resume keeps its last loss
            curve[int(record["step"])] = float(record["loss"])
        summary = run_summary(folder, self.jobs.state(name))
        return {**summary, "curve": sorted(curve.items()), "log": log_tail(folder)}

    # ------------------------------------------------------------ write
    def train(self, request: TrainRequest) -> dict:
        """Validate the train form into the typed configs, then start the run; on any failure,
        remove what this request wrote (rendered references, the run folder)."""
        from dreamdist.config import TrainConfig
        from dreamdist.methods import get_method, method_names

        method = request.method or "dreamdistribution"
        if method not in method_names():
            raise ValueError(f"unknown method {method!r}; known: {', '.join(method_names())}")
        name = check_name(request.name or f"{method}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}")
        if (self.root / name).exists():
            raise FileExistsError(f"a run named {name!r} already exists; choose another name")
        config_cls = get_method(method).config
        options = dict(request.options)
        if request.num_prompts is not None and "num_prompts" in {f.name for f in dataclasses.fields(config_cls)}:
            options["num_prompts"] = request.num_prompts
        method_config = config_cls(**_coerce(config_cls, options))
        written: list[Path] = []
        try:
            images = self._reference_folder(request, name, written)
            train_values = {k: getattr(request, k) for k in TRAIN_FIELDS if getattr(request, k) is not None}
            train_config = TrainConfig(
                **train_values, images=str(images), out=str(self.root / name), model=self.model, method=method
            )
            written.append(self.root / name)
            self.jobs.start(name, train_config, method_config)
        except BaseException:
            for path in written:
                shutil.rmtree(path, ignore_errors=True)
            raise
        return {"name": name}

    def _reference_folder(self, request: TrainRequest, name: str, written: list[Path]) -> Path:
        """The references: a folder path, an uploaded batch, or a rendered toy concept (added to ``written``)."""
        if request.toy_concept:
            from dreamdist.toyworld.concepts import CONCEPTS, render_concept

            if request.toy_concept not in CONCEPTS:
                raise ValueError(f"unknown toy concept {request.toy_concept!r}; known: {', '.join(CONCEPTS)}")
            folder = self.root / REFERENCES / name
            if folder.exists():
                raise FileExistsError(f"references for {name!r} exist already; choose another run name")
            written.append(folder)
            render_concept(request.toy_concept, folder, n=request.toy_references or 8, seed=request.seed or 0)
            return folder
        if request.upload:
            folder = self.root / UPLOADS / check_name(request.upload)
            if not folder.is_dir():
                raise FileNotFoundError(f"upload {request.upload!r} not found; upload the images again")
            return folder
        if not request.images:
            raise ValueError("choose the reference images: a folder path, an upload, or a toy concept")
        folder = Path(request.images.strip()).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"reference folder {folder} does not exist")
        return folder

    def upload(self, batch: str | None, filename: str, data: bytes) -> dict:
        """Store one uploaded image in ``RUNS/_uploads/<batch>/`` after checking it is an image."""
        from PIL import Image

        from dreamdist.atomic import atomic_write_bytes
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
            batch = check_name(batch) if batch else f"upload-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"
            folder = self.root / UPLOADS / batch
            atomic_write_bytes(folder / name, data)
            count = sum(1 for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        return {"upload": batch, "count": count}

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


def body_limit(path: str) -> int:
    """The largest body a route takes: an image for the upload, a small JSON object elsewhere."""
    return MAX_UPLOAD if path == "/api/upload" else MAX_JSON


def create_app(studio: Studio, policy: Policy):
    """The FastAPI app of ``studio``; the page it serves carries ``policy.token``."""

    @asynccontextmanager
    async def lifespan(_app):
        yield
        studio.close()

    app = FastAPI(title="dreamdist studio", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    error_handlers(app, studio.scrub)
    for kind, status in (
        (FileNotFoundError, 404),
        (FileExistsError, 409),
        (Busy, 503),
        (ValueError, 400),
        (OSError, 400),
    ):

        async def handler(_request, exc, status=status):
            return JSONResponse({"error": studio.scrub(str(exc).strip("'\""))}, status_code=status)

        app.add_exception_handler(kind, handler)
    page = (STATIC / "index.html").read_text()
    page = page.replace("<head>", f'<head>\n<meta name="dreamdist-token" content="{html.escape(policy.token)}">', 1)
    no_store = {"Cache-Control": "no-store"}

    @app.get("/", response_class=HTMLResponse)
    @app.get("/index.html", response_class=HTMLResponse)
    def index():
        return HTMLResponse(page, headers=no_store)

    @app.get("/static/{name}")
    def static(name: str):
        if name == "index.html" or name not in {p.name for p in STATIC.iterdir()}:
            raise FileNotFoundError(name)
        return FileResponse(STATIC / name, headers=no_store)

    @app.get("/files/{relative:path}")
    def files(relative: str):
        path = studio.file(relative)
        kind = "application/jsonl" if path.suffix == ".jsonl" else None
        return FileResponse(path, media_type=kind, headers=no_store)

    @app.get("/api/info")
    def info():
        return studio.info()

    @app.get("/api/runs")
    def runs():
        return studio.runs()

    @app.get("/api/runs/{name}")
    def run(name: str):
        return studio.run(name)

    @app.get("/api/zip/{folder_id}")
    def download(folder_id: str):
        folder = explore_folder(studio.root, folder_id)
        disposition = {"Content-Disposition": f'attachment; filename="dreamdist-{folder.name}.zip"'}
        return Response(zip_folder(folder), media_type="application/zip", headers=disposition)

    @app.post("/api/upload")
    async def upload(
        request: Request,
        name: str = Query(max_length=512),
        batch: str | None = Query(default=None, max_length=64),
    ):
        data = await request.body()  # the guard has refused bodies over MAX_UPLOAD before this
        return studio.upload(batch, name, data)

    @app.post("/api/train")
    async def train(request: TrainRequest):
        return await studio.heavy(studio.train, request)

    @app.post("/api/runs/{name}/stop")
    def stop(name: str):
        studio.jobs.stop(name)
        return {"stopping": name}

    @app.post("/api/runs/{name}/resume")
    def resume(name: str):
        studio.jobs.resume(name)
        return {"resumed": name}

    @app.post("/api/generate")
    async def generate(request: GenerateRequest):
        return await studio.heavy(studio.explorer.generate, request.model_dump())

    @app.post("/api/compare")
    async def compare(request: CompareRequest):
        return await studio.heavy(compare_runs, studio.explorer, studio.root, request.model_dump())

    return app


def make_server(studio: Studio, host: str = "127.0.0.1", port: int = 7860, allow_hosts: tuple[str, ...] = ()):
    """A :class:`dreamdist.web.serve.Server` bound to ``host:port`` (port 0: a free one) serving ``studio``."""
    policy = Policy(
        hosts=allowed_hosts(host, allow_hosts), body_limit=body_limit, raw_body=lambda p: p == "/api/upload"
    )
    return Server(create_app(studio, policy), policy, host, port)
