"""``dreamdist study serve``: the voting page on FastAPI, behind :class:`dreamdist.web.guard.Guard`.

Routes, and nothing else:
    GET  /             the page, with the server's session token; in an open study, a new signed rater
                       id in a cookie when the request has none (nothing is written to the study file)
    POST /api/join     JSON ``{"invite"}``: binds a one-time invite link to this browser (invite-only study)
    GET  /api/next     JSON: the pair to judge (opaque ids), references, progress
    POST /api/vote     JSON ``{"pair", "choice"}``; the rater's first vote creates their row; answered
                       only after the vote is committed
    GET  /img/<id>     the image with that opaque id, read from the study file (see study/images.py)
    GET  /favicon.ico  nothing (204)

The guard refuses, before any route: a foreign ``Host`` (DNS rebinding), a POST from another site
or without the page's session token, a body that is not JSON, a body over 4 kB. No route reads a
file: images come out of the sqlite file by exact id, so a crafted path cannot reach anything
else. Set names and folders are never sent. A study file that cannot be written answers 503.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from dreamdist.study import identity, images, store
from dreamdist.study.page import render_page
from dreamdist.web.guard import Policy, allowed_hosts
from dreamdist.web.serve import Server, error_handlers

log = logging.getLogger(__name__)
MAX_BODY = 4096
IMAGE_CACHE = 32  # served images kept expanded in memory (each at most 768 x 768 x 3 bytes)


class Vote(BaseModel):
    """The body of ``POST /api/vote``."""

    model_config = ConfigDict(extra="forbid")
    pair: str = Field(pattern=f"^{store.TOKEN_PATTERN}$")
    choice: Literal["left", "right", "tie"]


class Join(BaseModel):
    """The body of ``POST /api/join``."""

    model_config = ConfigDict(extra="forbid")
    invite: str = Field(pattern=f"^{store.TOKEN_PATTERN}$")


@dataclass(frozen=True)
class Study:
    """What the server needs to know of a study file, read once at start."""

    path: Path
    question: str
    n_pairs: int
    n_sets: int
    key: bytes
    invites: int  # 0: an open study

    @classmethod
    def load(cls, path: str | Path) -> Study:
        conn = store.open_study(path)  # fails early and clearly on a bad file; upgrades version 1
        try:
            return cls(
                path=Path(path),
                question=store.read_meta(conn)["question"],
                n_pairs=conn.execute("SELECT COUNT(*) FROM pairs").fetchone()[0],
                n_sets=len(store.set_names(conn)),
                key=store.secret(conn),
                invites=store.invite_count(conn),
            )
        finally:
            conn.close()


class Connections:
    """One sqlite connection per worker thread (FastAPI runs the routes in a thread pool)."""

    def __init__(self, path: Path):
        self.path = path
        self.local = threading.local()

    def get(self) -> sqlite3.Connection:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = store.connect(self.path)
        return conn


def build_app(study: Study, token: str) -> FastAPI:
    """The FastAPI app of one study; ``token`` is the session token the page carries."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    error_handlers(app, scrub=lambda text: text.replace(str(study.path.resolve().parent), "<study folder>"))
    conns = Connections(study.path)
    page = render_page(study.question, token)
    no_store = {"Cache-Control": "no-store"}
    uninvited = "this study is by invitation only; open the invite link you were given"

    @app.exception_handler(store.VoteRefused)
    async def refused(_request, exc: store.VoteRefused):
        return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=no_store)

    @app.exception_handler(sqlite3.OperationalError)
    async def unavailable(request, exc: sqlite3.OperationalError):
        log.error("study file %s: %s", study.path, exc)
        message = (
            f"the study file cannot be written or read right now ({exc}); nothing was saved: "
            "tell the study's organiser, then reload the page"
        )
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, status_code=503, headers=no_store)
        return Response(message, status_code=503, media_type="text/plain; charset=utf-8", headers=no_store)

    def rater_of(request: Request) -> tuple[str, str | None] | None:
        return identity.unseal(study.key, request.cookies.get(identity.COOKIE))

    def set_rater(response: Response, rater: str, shown: str | None = None) -> None:
        value = identity.seal(study.key, rater, shown)
        response.set_cookie(
            identity.COOKIE, value, max_age=identity.MAX_AGE_S, path="/", httponly=True, samesite="strict"
        )

    def known_rater(request: Request) -> tuple[str, str | None]:
        who = rater_of(request)
        if who is None:
            raise HTTPException(403, "no rater id; open the study page first" if not study.invites else uninvited)
        if study.invites and not store.is_invited(conns.get(), who[0]):
            raise HTTPException(403, uninvited)
        return who

    @app.api_route("/", methods=["GET", "HEAD"])
    def index(request: Request) -> Response:
        response = Response(page, media_type="text/html; charset=utf-8", headers=no_store)
        if not study.invites and rater_of(request) is None:
            set_rater(response, identity.new_rater())
        return response

    @app.post("/api/join")
    def join(body: Join, request: Request) -> Response:
        response = JSONResponse({"ok": True}, headers=no_store)
        if not study.invites:
            return response  # an open study needs no invite
        who = rater_of(request)
        current = who[0] if who is not None else None
        rater = store.join(conns.get(), body.invite, identity.new_rater(), current)
        if rater != current:
            set_rater(response, rater)
        return response

    @app.get("/api/next")
    def next_pair(request: Request) -> Response:
        rater, shown = known_rater(request)
        conn = conns.get()
        pick = store.next_pair(conn, rater, shown)
        done = store.progress(conn, rater)
        data = {"done": done.done, "total": done.total, "refs": [f"img/{t}" for t in store.reference_tokens(conn)]}
        if pick is None:
            data["finished"] = True
        else:
            data |= {"finished": False, "pair": pick[0], "left": f"img/{pick[1]}", "right": f"img/{pick[2]}"}
        response = JSONResponse(data, headers=no_store)
        if pick is not None and pick[0] != shown:
            set_rater(response, rater, pick[0])  # a rater without a row carries the shown pair, signed
        return response

    @app.post("/api/vote")
    def vote(body: Vote, request: Request) -> Response:
        rater, shown = known_rater(request)
        done = store.record_vote(conns.get(), rater, body.pair, body.choice, shown, invited_only=bool(study.invites))
        return JSONResponse({"ok": True, "done": done.done, "total": done.total}, headers=no_store)

    @functools.lru_cache(maxsize=IMAGE_CACHE)
    def served(token: str) -> bytes | None:
        png = store.image_png(conns.get(), token)
        return None if png is None else images.served_png(png)

    @app.get("/img/{token}")
    def image(token: str) -> Response:
        png = served(token) if store.TOKEN.fullmatch(token) else None
        if png is None:
            raise HTTPException(404, "not found")
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return Response(status_code=204)  # browsers ask on their own; nothing to show

    return app


def make_server(
    study: str | Path, host: str = "127.0.0.1", port: int = 8765, allow_hosts: list[str] | tuple[str, ...] = ()
) -> Server:
    """A bound (not yet running) server: ``.run()`` serves in this thread, ``.start()`` / ``.stop()`` in
    a background one; ``port=0`` picks a free port (see ``.url``); ``.study`` is the :class:`Study`.

    ``allow_hosts``: host names (besides IP addresses, localhost and ``host``) the page may be opened
    by, e.g. the machine's name on the LAN.
    """
    info = Study.load(study)
    policy = Policy(hosts=allowed_hosts(host, list(allow_hosts)), body_limit=lambda path: MAX_BODY)
    server = Server(build_app(info, policy.token), policy, host, port)
    server.study = info
    return server
