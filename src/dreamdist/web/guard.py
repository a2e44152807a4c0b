"""What every dreamdist web server refuses before a route sees the request (a pure ASGI middleware).

- A ``Host`` that is not this server (DNS rebinding): allowed are IP literals, ``localhost`` names,
  the bound host and the names given with ``--allow-host``.
- A state-changing request (anything but GET / HEAD / OPTIONS) from another site: a cross-site
  ``Sec-Fetch-Site`` or an ``Origin`` that is not this server, or one without the page's session
  token in the ``X-Dreamdist-Token`` header (the page carries it; another site cannot read the page).
- A JSON route called with another content type (a cross-site form or ``text/plain`` POST).
- A body over the route's limit, or a malformed ``Content-Length``: refused before it is read, and
  a chunked body is cut off at the limit.

Every answer carries the security headers (no sniffing, no framing, a same-origin CSP).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.exceptions import HTTPException

TOKEN_HEADER = "x-dreamdist-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
        b"script-src 'self' 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; "
        b"base-uri 'none'; object-src 'none'",
    ),
]


class BodyTooLarge(HTTPException):
    """A request body (chunked, so without a ``Content-Length``) ran past its limit; an HTTP error,
    so the framework answers 413 even where it reads the body for a route."""

    def __init__(self, limit: int = 0):
        super().__init__(413, f"request body over the limit of {limit} bytes")


def host_name(value: str) -> str:
    """The host part of a ``Host`` header or an origin's authority, lower-cased, without port or brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else ""
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def is_ip(name: str) -> bool:
    """Whether ``name`` is an IP address literal (a rebinding attack always comes with a domain name)."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass
class Policy:
    """What a server accepts: its allowed host names, the session token and the body limits.

    ``body_limit(path)`` gives the largest body of a route in bytes; ``raw_body(path)`` is True for
    routes that take raw bytes (an upload) instead of JSON.
    """

    hosts: set[str] = field(default_factory=set)
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    body_limit: Callable[[str], int] = lambda path: 1 << 20
    raw_body: Callable[[str], bool] = lambda path: False

    def allows_host(self, header: str) -> bool:
        name = host_name(header)
        return bool(name) and (is_ip(name) or name in LOCAL_NAMES or name.endswith(".localhost") or name in self.hosts)


def allowed_hosts(host: str, extra: list[str] | tuple[str, ...] = ()) -> set[str]:
    """The bound host (unless a wildcard) plus names given with ``--allow-host``, lower-cased."""
    names = {name.strip().lower() for name in extra if name.strip()}
    if host not in ("", "0.0.0.0", "::"):
        names.add(host_name(host))
    return names


class Guard:
    """ASGI middleware applying a :class:`Policy` to every HTTP request of ``app``."""

    def __init__(self, app, policy: Policy):
        self.app = app
        self.policy = policy

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}

        async def send_secure(message):
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        refusal = self.refusal(scope, headers)
        if refusal is not None:
            status, message = refusal
            return await reply(send_secure, status, message)
        limit = self.policy.body_limit(scope["path"])
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send_secure(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await reply(send_secure, 413, f"request body over the limit of {limit} bytes")

    def refusal(self, scope, headers: dict[str, str]) -> tuple[int, str] | None:
        """(status, message) when the request is refused before routing, else None."""
        if not self.policy.allows_host(headers.get("host", "")):
            return 421, "unknown Host; open the page at the address the server printed (or start it with --allow-host)"
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return 400, "malformed Content-Length"
            limit = self.policy.body_limit(scope["path"])
            if int(length) > limit:
                return 413, f"request body of {int(length)} bytes is over the limit of {limit}"
        if scope["method"] in SAFE_METHODS:
            return None
        site = headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            return 403, "cross-site request refused"
        origin = headers.get("origin")
        if origin is not None and not self.same_origin(origin, headers.get("host", "")):
            return 403, "cross-origin request refused"
        if not hmac.compare_digest(headers.get(TOKEN_HEADER, "").encode(), self.policy.token.encode()):
            return 403, "missing or stale session token; reload the page"
        kind = headers.get("content-type", "").split(";")[0].strip().lower()
        if not self.policy.raw_body(scope["path"]) and kind != "application/json":
            return 415, "send the request body as application/json"
        return None

    @staticmethod
    def same_origin(origin: str, host: str) -> bool:
        """Whether ``Origin`` names this server as the browser reached it (scheme http, same host and port)."""
        scheme, _, authority = origin.partition("://")
        return scheme == "http" and authority.lower() == host.strip().lower()


async def reply(send, status: int, message: str) -> None:
    """A JSON error ``{"error": message}`` sent straight through ASGI."""
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": [*headers, (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
