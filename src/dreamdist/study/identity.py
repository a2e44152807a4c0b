"""A rater's identity before (and after) their first vote: a cookie signed with the study's key.

The cookie holds the rater id and the pair the server showed them last, ``RATER.PAIR.MAC``, where
MAC is an HMAC-SHA256 under the key in the study's meta table. The server writes nothing when it
hands out a rater id; it trusts an id (and the shown pair) only with a valid MAC, so a browser
cannot make one up, nor pick the pair it votes on. Dropping the cookie makes a new rater, as in
any cookie-based study.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from dreamdist.study.store import TOKEN, new_token

COOKIE = "dreamdist_rater"
MAX_AGE_S = 365 * 24 * 3600


def new_rater() -> str:
    """A fresh random rater id (not written anywhere until the rater votes)."""
    return new_token()


def _mac(key: bytes, body: str) -> str:
    digest = hmac.new(key, b"dreamdist-rater/" + body.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def seal(key: bytes, rater: str, shown: str | None = None) -> str:
    """The cookie value for ``rater``, who is shown the pair with token ``shown`` (None: none yet)."""
    body = f"{rater}.{shown or ''}"
    return f"{body}.{_mac(key, body)}"


def unseal(key: bytes, value: str | None) -> tuple[str, str | None] | None:
    """(rater, shown pair or None) of a cookie value made by :func:`seal` with ``key``; None otherwise."""
    parts = (value or "").split(".")
    if len(parts) != 3:
        return None
    rater, shown, mac = parts
    if not TOKEN.fullmatch(rater) or (shown and not TOKEN.fullmatch(shown)):
        return None
    if not hmac.compare_digest(mac.encode(), _mac(key, f"{rater}.{shown}").encode()):
        return None
    return rater, shown or None
