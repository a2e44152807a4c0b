"""Serving a dreamdist web app: FastAPI error handlers that never leak internals, the :class:`Guard`
around it, and uvicorn with timeouts and bounds on a socket bound here (so port 0 works and the
printed URL is the real one).
"""

from __future__ import annotations

import logging
import socket
import threading

from dreamdist.web.guard import Guard, Policy

log = logging.getLogger(__name__)
MAX_CONNECTIONS = 1024  # open connections; beyond this uvicorn answers 503
KEEP_ALIVE_S = 5
HEAD_TIMEOUT_S = 10.0  # a connection must deliver each request's head within this


def guarded_h11():
    """uvicorn's h11 protocol plus a deadline for request heads: a connection that opens and sends
    nothing, or trickles its headers byte by byte, is closed after ``HEAD_TIMEOUT_S`` (uvicorn's own
    keep-alive timeout only starts after a response, and any byte resets it)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11(H11Protocol):
        deadline = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.arm()

        def arm(self) -> None:
            watched = self.cycle
            self.deadline = self.loop.call_later(HEAD_TIMEOUT_S, self.check, watched)

        def check(self, watched) -> None:
            waiting = self.cycle is watched and (watched is None or watched.response_complete)
            if waiting and not self.transport.is_closing():
                self.timeout_keep_alive_handler()  # closes the connection
            elif not self.transport.is_closing():
                self.arm()

        def connection_lost(self, exc) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
            super().connection_lost(exc)

    return GuardedH11


def error_handlers(app, scrub=lambda text: text) -> None:
    """Answer every error as ``{"error": message}``: validation errors in one line, unknown failures
    without their text (logged instead), ``scrub`` applied to messages (it removes server paths)."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    def answer(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": scrub(message)}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc: RequestValidationError):
        parts = []
        for error in exc.errors()[:3]:
            where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
            parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else error.get("msg", "invalid"))
        return answer(400, "; ".join(parts) or "invalid request")

    @app.exception_handler(HTTPException)
    async def http_error(_request, exc: HTTPException):
        return answer(exc.status_code, str(exc.detail))

    @app.exception_handler(RecursionError)
    async def too_deep(_request, _exc):
        return answer(400, "request JSON is nested too deeply")

    @app.exception_handler(Exception)
    async def failure(request, exc: Exception):
        log.exception("internal error on %s", request.url.path)
        return answer(500, f"internal error ({type(exc).__name__}); see the server's terminal")


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one); a clear error when it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port") from None
    sock.listen(2048)
    sock.set_inheritable(False)  # a trainer child must not keep the port open
    return sock


def url_of(sock: socket.socket) -> str:
    """``http://host:port/`` of a bound socket (IPv6 hosts in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


class Server:
    """A guarded app served by uvicorn on a bound socket: ``run()`` in the main thread (signals stop
    it gracefully), or ``start()`` / ``stop()`` in a background thread (tests)."""

    def __init__(self, app, policy: Policy, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.policy = policy
        self.socket = bind(host, port)
        self.url = url_of(self.socket)
        config = uvicorn.Config(
            Guard(app, policy),
            http=guarded_h11(),
            log_level="warning",
            timeout_keep_alive=KEEP_ALIVE_S,
            timeout_graceful_shutdown=10,
            limit_concurrency=MAX_CONNECTIONS,
            h11_max_incomplete_event_size=16 * 1024,  # request line + headers
            server_header=False,
            access_log=False,
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.thread: threading.Thread | None = None

    def run(self) -> None:
        """Serve until SIGINT / SIGTERM (main thread)."""
        self.server.run(sockets=[self.socket])

    def start(self) -> Server:
        """Serve in a daemon thread; returns once the server accepts connections."""
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server failed to start; see the log above")
            self.thread.join(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(30)
        self.socket.close()
