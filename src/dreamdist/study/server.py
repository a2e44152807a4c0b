"""``dreamdist study serve``: the voting page over HTTP (stdlib ``ThreadingHTTPServer``).

Routes, and nothing else:
    GET  /             the page; hands out a new rater id in a cookie when the request has none
    GET  /api/next     JSON: the pair to judge (opaque ids), references, progress
    POST /api/vote     JSON ``{"pair", "choice"}``; answered only after the vote is committed
    GET  /img/<id>     PNG bytes of the image with that opaque id, read from the study file

No route reads a file: images come out of the sqlite file by exact id, so a crafted path cannot
reach anything else. Set names and folders are never sent.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from dreamdist.study import store
from dreamdist.study.page import render_page

log = logging.getLogger(__name__)
COOKIE = "dreamdist_rater"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{22}")
MAX_BODY = 4096


class StudyServer(ThreadingHTTPServer):
    """One server per study file; each request thread gets its own sqlite connection."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # a room of raters clicking at once must not overflow the listen backlog

    def __init__(self, study: str | Path, address: tuple[str, int]):
        self.study = Path(study)
        conn = store.open_study(self.study)  # fails early and clearly on a bad file
        try:
            self.question = store.read_meta(conn)["question"]
            self.n_pairs = conn.execute("SELECT COUNT(*) FROM pairs").fetchone()[0]
            self.n_sets = len(store.set_names(conn))
        finally:
            conn.close()
        self.page = render_page(self.question)
        self._local = threading.local()
        super().__init__(address, StudyHandler)

    def connection(self) -> sqlite3.Connection:
        """This thread's connection to the study (opened on first use)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = store.open_study(self.study)
        return conn

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


class StudyHandler(BaseHTTPRequestHandler):
    server: StudyServer
    protocol_version = "HTTP/1.1"
    server_version = "dreamdist-study"
    sys_version = ""

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the stdlib's signature)
        log.debug("%s %s", self.address_string(), format % args)

    # ------------------------------------------------------------ replies
    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: dict, headers: dict | None = None) -> None:
        headers = {"Cache-Control": "no-store", **(headers or {})}
        self._send(status, json.dumps(data).encode(), "application/json", headers)

    def _error(self, status: int, message: str) -> None:
        # close: a refused request's body may be unread, which would garble the next one on this connection
        self.close_connection = True
        self._json(status, {"error": message}, {"Connection": "close"})

    def _rater(self) -> str | None:
        """The rater id of the request's cookie, if it is one the study handed out."""
        try:
            morsel = SimpleCookie(self.headers.get("Cookie", "")).get(COOKIE)
        except CookieError:
            return None
        if morsel is None or not _TOKEN.fullmatch(morsel.value):
            return None
        return morsel.value if store.rater_exists(self.server.connection(), morsel.value) else None

    # ------------------------------------------------------------ routes
    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        path = self.path.split("?", 1)[0]
        if path == "/":
            headers = {"Cache-Control": "no-store", "Content-Security-Policy": "default-src 'self'; script-src "
                       "'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self'"}  # fmt: skip
            if self._rater() is None:
                rater = store.register_rater(self.server.connection())
                headers["Set-Cookie"] = f"{COOKIE}={rater}; Path=/; HttpOnly; SameSite=Strict; Max-Age=31536000"
            self._send(200, self.server.page, "text/html; charset=utf-8", headers)
        elif path == "/api/next":
            self._next()
        elif path.startswith("/img/"):
            self._image(path[len("/img/") :])
        elif path == "/favicon.ico":  # browsers ask on their own; nothing to show
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._error(404, "not found")

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/api/vote":
            self._error(404, "not found")
            return
        self._vote()

    def _next(self) -> None:
        rater = self._rater()
        if rater is None:
            self._error(403, "no rater id; open the study page first")
            return
        conn = self.server.connection()
        shown = store.next_pair(conn, rater)
        done = store.progress(conn, rater)
        data = {"done": done.done, "total": done.total, "refs": [f"img/{t}" for t in store.reference_tokens(conn)]}
        if shown is None:
            data["finished"] = True
        else:
            data |= {"finished": False, "pair": shown[0], "left": f"img/{shown[1]}", "right": f"img/{shown[2]}"}
        self._json(200, data)

    def _image(self, token: str) -> None:
        png = store.image_png(self.server.connection(), token) if _TOKEN.fullmatch(token) else None
        if png is None:
            self._error(404, "not found")
            return
        self._send(200, png, "image/png", {"Cache-Control": "private, max-age=86400"})

    def _vote(self) -> None:
        if self.headers.get_content_type() != "application/json":  # forces a CORS preflight cross-site
            self._error(415, "send the vote as application/json")
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._error(411, "Content-Length required")
            return
        if not 0 < length <= MAX_BODY:
            self._error(413, "vote body too large")
            return
        try:
            body = json.loads(self.rfile.read(length))
            pair, choice = body["pair"], body["choice"]
            if not (isinstance(pair, str) and isinstance(choice, str)):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            self._error(400, 'a vote is {"pair": ID, "choice": "left" | "right" | "tie"}')
            return
        rater = self._rater()
        if rater is None:
            self._error(403, "no rater id; open the study page first")
            return
        try:
            done = store.record_vote(self.server.connection(), rater, pair, choice)
        except store.VoteRefused as exc:
            self._error(exc.status, str(exc))
            return
        self._json(200, {"ok": True, "done": done.done, "total": done.total})


def make_server(study: str | Path, host: str = "127.0.0.1", port: int = 8765) -> StudyServer:
    """A bound (not yet running) server; ``port=0`` picks a free port (see ``server.url``)."""
    return StudyServer(study, (host, port))
