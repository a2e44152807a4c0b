"""The study file: one sqlite database holding the sets, the images (pixel-only PNG bytes), the
pairs, the invites, the raters and their votes.

Everything the voting server needs lives inside the file, so serving reads no other file and a
study can be copied to another machine. The database runs in WAL mode with ``synchronous=FULL``:
a vote is committed (on disk) before the server acknowledges it, so killing the server loses no
acknowledged vote. ``UNIQUE (pair_id, rater)`` makes a second vote of a rater on a pair
impossible, whatever the requests look like.

A rater's row is written with their first vote, in the vote's transaction: before that a rater
is only a signed cookie (:mod:`dreamdist.study.identity`), so page views write nothing.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

FORMAT = "dreamdist-study"
VERSION = "2"  # 2: invites table, meta "secret", blinded images (version 1 is upgraded on open)
CHOICES = ("left", "right", "tie")
TOKEN = re.compile(r"[A-Za-z0-9_-]{22}")  # every opaque id: new_token()
TOKEN_PATTERN = TOKEN.pattern

# one-time rater links: rater is the rater id of the first browser that opened the link
INVITES = "CREATE TABLE invites (token TEXT PRIMARY KEY, rater TEXT UNIQUE, used REAL);"
SCHEMA = (
    """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE sets (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, folder TEXT NOT NULL);
-- set_id NULL: a reference image (shown above every pair)
CREATE TABLE images (
    id INTEGER PRIMARY KEY,
    token TEXT NOT NULL UNIQUE,
    set_id INTEGER REFERENCES sets(id),
    source TEXT NOT NULL,
    png BLOB NOT NULL
);
CREATE TABLE pairs (
    id INTEGER PRIMARY KEY,
    token TEXT NOT NULL UNIQUE,
    left_image INTEGER NOT NULL REFERENCES images(id),
    right_image INTEGER NOT NULL REFERENCES images(id)
);
-- a row per rater who voted; pending: the pair the rater is shown now, a vote must be for it
CREATE TABLE raters (id TEXT PRIMARY KEY, created REAL NOT NULL, pending INTEGER REFERENCES pairs(id));
CREATE TABLE votes (
    id INTEGER PRIMARY KEY,
    pair_id INTEGER NOT NULL REFERENCES pairs(id),
    rater TEXT NOT NULL REFERENCES raters(id),
    choice TEXT NOT NULL CHECK (choice IN ('left', 'right', 'tie')),
    created REAL NOT NULL,
    UNIQUE (pair_id, rater)
);
"""
    + INVITES
)


class VoteRefused(ValueError):
    """A vote (or invite) that is not accepted; ``status`` is the HTTP status the server answers with."""

    def __init__(self, message: str, status: int = 409):
        super().__init__(message)
        self.status = status


def new_token() -> str:
    """An opaque, unguessable id (22 url-safe characters) for images, pairs, raters and invites."""
    return secrets.token_urlsafe(16)


def new_secret() -> str:
    """The study's key for signing rater cookies (hex), kept in its meta table."""
    return secrets.token_hex(32)


def _connect(path: Path, uri_mode: str) -> sqlite3.Connection:
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode={uri_mode}", uri=True, timeout=30, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA busy_timeout = 30000")
    return conn


def create_database(path: str | Path) -> sqlite3.Connection:
    """A new, empty study database at ``path`` (which must not exist yet)."""
    conn = _connect(Path(path), "rwc")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(SCHEMA)
    return conn


def connect(path: str | Path) -> sqlite3.Connection:
    """Another connection to a study already checked with :func:`open_study` (one per server thread)."""
    return _connect(Path(path), "rw")


def open_study(path: str | Path) -> sqlite3.Connection:
    """Open an existing study for reading and writing (upgrading a version 1 study in place); a clear
    error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no study at {path}; make one with 'dreamdist study create {path} --set A=DIR ...'")
    try:
        conn = _connect(path, "rw")
        conn.execute("PRAGMA journal_mode = WAL")
        meta = dict(conn.execute("SELECT key, value FROM meta"))
    except sqlite3.OperationalError as exc:
        if "readonly" not in str(exc) and "unable to open" not in str(exc):
            raise ValueError(f"{path} is not a study file ({exc}); make one with 'dreamdist study create'") from None
        raise ValueError(
            f"cannot open {path} ({exc}): sqlite needs to write {path.name}-wal and {path.name}-shm beside the "
            "study file; make its folder writable (or copy the study to a writable folder)"
        ) from None
    except sqlite3.DatabaseError as exc:
        raise ValueError(f"{path} is not a study file ({exc}); make one with 'dreamdist study create'") from None
    if meta.get("format") != FORMAT:
        conn.close()
        raise ValueError(f"{path} is a sqlite file but not a dreamdist study")
    if meta.get("version") == "1":
        try:
            upgrade_v1(conn)
        except sqlite3.OperationalError as exc:
            conn.close()
            raise ValueError(
                f"{path} is a study of format version 1; upgrading it to version {VERSION} needs write access "
                f"({exc}); make the file and its folder writable and run the command again"
            ) from None
    elif meta.get("version") != VERSION:
        conn.close()
        raise ValueError(
            f"{path} is a study of format version {meta.get('version')}; this dreamdist reads {VERSION} "
            "(and upgrades 1); use the dreamdist that made it"
        )
    return conn


def upgrade_v1(conn: sqlite3.Connection) -> None:
    """Version 1 -> 2, in one transaction: add the invites table (the study stays open) and the cookie
    key, drop rater rows without a vote (version 1 wrote one per page view), and rebuild the images
    with the blinding of :mod:`dreamdist.study.images` (one size, pixels only). Votes are kept; raters
    of version 1 come back as new raters (their cookies were not signed)."""
    from dreamdist.study import images

    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(INVITES.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS"))
        conn.execute("UPDATE raters SET pending = NULL")
        conn.execute("DELETE FROM raters WHERE NOT EXISTS (SELECT 1 FROM votes v WHERE v.rater = raters.id)")
        pictures = {
            row_id: (set_id, images.decode_png(png))
            for row_id, set_id, png in conn.execute("SELECT id, set_id, png FROM images")
        }
        sized = [picture.size for set_id, picture in pictures.values() if set_id is not None]
        size = images.study_size(sized) if sized else None
        for row_id, (set_id, picture) in pictures.items():
            picture = images.shrink(picture, images.REFERENCE_SIDE) if set_id is None else images.fit(picture, size)
            conn.execute("UPDATE images SET png = ? WHERE id = ?", (images.compact_png(picture), row_id))
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('secret', ?)", (new_secret(),))
        conn.execute("UPDATE meta SET value = ? WHERE key = 'version'", (VERSION,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def read_meta(conn: sqlite3.Connection) -> dict[str, str]:
    """The study's settings (question, seed, per_rater, ...)."""
    return dict(conn.execute("SELECT key, value FROM meta"))


def secret(conn: sqlite3.Connection) -> bytes:
    """The study's key for signing rater cookies."""
    return bytes.fromhex(read_meta(conn)["secret"])


@dataclass(frozen=True)
class Progress:
    """How far a rater is: ``done`` votes of ``total`` to give."""

    done: int
    total: int

    @property
    def finished(self) -> bool:
        return self.done >= self.total


def quota(conn: sqlite3.Connection) -> int:
    """Pairs each rater is asked about: all pairs, or the study's ``per_rater`` limit."""
    n_pairs = conn.execute("SELECT COUNT(*) FROM pairs").fetchone()[0]
    per_rater = int(read_meta(conn).get("per_rater", "0"))
    return min(n_pairs, per_rater) if per_rater > 0 else n_pairs


# ---------------------------------------------------------------- invites
def add_invites(conn: sqlite3.Connection, n: int) -> list[str]:
    """``n`` new one-time invite tokens (call inside the creating transaction)."""
    tokens = [new_token() for _ in range(n)]
    conn.executemany("INSERT INTO invites (token) VALUES (?)", [(t,) for t in tokens])
    return tokens


def invite_count(conn: sqlite3.Connection) -> int:
    """How many invites the study has; 0 means an open study (anyone with the address may rate)."""
    return conn.execute("SELECT COUNT(*) FROM invites").fetchone()[0]


def join(conn: sqlite3.Connection, invite: str, new_rater: str, current: str | None) -> str:
    """The rater id an invite link stands for: bound to ``new_rater`` by the first browser that opens
    it; the same browser (``current`` is the bound id) may open it again, any other is refused (403)."""
    row = conn.execute("SELECT rater FROM invites WHERE token = ?", (invite,)).fetchone()
    if row is None:
        raise VoteRefused("this invite link is not one of this study's; check the link you were given", 403)
    if row[0] is None:
        bound = conn.execute(
            "UPDATE invites SET rater = ?, used = ? WHERE token = ? AND rater IS NULL", (new_rater, time.time(), invite)
        )
        if bound.rowcount == 1:  # one statement in autocommit: of two browsers at once, one wins
            return new_rater
        row = conn.execute("SELECT rater FROM invites WHERE token = ?", (invite,)).fetchone()
    if current is not None and row[0] == current:
        return current
    raise VoteRefused(
        "this invite link was already used in another browser; each link works in one browser only: "
        "ask the study's organiser for your own link",
        403,
    )


def is_invited(conn: sqlite3.Connection, rater: str) -> bool:
    """Whether an invite link is bound to ``rater``."""
    return conn.execute("SELECT 1 FROM invites WHERE rater = ?", (rater,)).fetchone() is not None


# ---------------------------------------------------------------- raters and votes
def rater_exists(conn: sqlite3.Connection, rater: str) -> bool:
    """Whether ``rater`` has a row (has voted at least once)."""
    return conn.execute("SELECT 1 FROM raters WHERE id = ?", (rater,)).fetchone() is not None


def progress(conn: sqlite3.Connection, rater: str) -> Progress:
    done = conn.execute("SELECT COUNT(*) FROM votes WHERE rater = ?", (rater,)).fetchone()[0]
    return Progress(done, quota(conn))


def _order_key(rater: str, pair_token: str) -> str:
    # a fixed, per-rater shuffle: raters see pairs in different orders, a reload shows the same pair
    return hashlib.sha256(f"{rater}/{pair_token}".encode()).hexdigest()


def _pair_id(conn: sqlite3.Connection, token: str | None) -> int | None:
    row = conn.execute("SELECT id FROM pairs WHERE token = ?", (token,)).fetchone() if token else None
    return None if row is None else row[0]


def _pick(conn: sqlite3.Connection, rater: str, pending: int | None) -> tuple[int, str, str, str] | None:
    """(pair id, pair token, left token, right token) to show ``rater``, reading only; None when done."""
    if progress(conn, rater).finished:
        return None
    rows = conn.execute(
        """SELECT p.id, p.token, li.token, ri.token, (SELECT COUNT(*) FROM votes v WHERE v.pair_id = p.id)
           FROM pairs p JOIN images li ON li.id = p.left_image JOIN images ri ON ri.id = p.right_image
           WHERE NOT EXISTS (SELECT 1 FROM votes v WHERE v.pair_id = p.id AND v.rater = ?)""",
        (rater,),
    ).fetchall()
    if not rows:
        return None
    pick = min(rows, key=lambda r: (r[0] != pending, r[4], _order_key(rater, r[1])))
    return pick[:4]


def next_pair(conn: sqlite3.Connection, rater: str, shown: str | None = None) -> tuple[str, str, str] | None:
    """The (pair token, left image token, right image token) to show ``rater``; None when done.

    The rater's pending pair is shown again until voted on (a reload cannot skip a pair);
    otherwise the unvoted pair with the fewest votes so far, so coverage stays even and several
    raters meet on the same pairs (the agreement statistics need that). The pending pair is the
    row's for a rater who voted, else ``shown`` (the pair the server signed into the rater's
    cookie; the caller signs the returned pair in again). Only a rater with a row causes a write,
    and only when their pending pair changes.
    """
    row = conn.execute("SELECT pending FROM raters WHERE id = ?", (rater,)).fetchone()
    pick = _pick(conn, rater, row[0] if row is not None else _pair_id(conn, shown))
    if row is None or pick is None or pick[0] == row[0]:
        return None if pick is None else pick[1:]
    conn.execute("BEGIN IMMEDIATE")  # the pending pair changes: decide again under the write lock
    try:
        row = conn.execute("SELECT pending FROM raters WHERE id = ?", (rater,)).fetchone()
        pick = _pick(conn, rater, row[0])
        if pick is not None and pick[0] != row[0]:
            conn.execute("UPDATE raters SET pending = ? WHERE id = ?", (pick[0], rater))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return None if pick is None else pick[1:]


def record_vote(
    conn: sqlite3.Connection,
    rater: str,
    pair_token: str,
    choice: str,
    shown: str | None = None,
    invited_only: bool = False,
) -> Progress:
    """Commit one vote and return the rater's new progress; ``VoteRefused`` when it may not count.

    A rater without a row gets one in the vote's transaction; their pending pair is ``shown`` (see
    :func:`next_pair`). Refused: a rater without an invite in an invite-only study (403), an
    unknown pair or choice (400), a pair other than the one the rater is shown, a second vote on a
    pair, or a rater already done (409).
    """
    if choice not in CHOICES:
        raise VoteRefused(f"choice must be one of {', '.join(CHOICES)}", 400)
    conn.execute("BEGIN IMMEDIATE")
    try:
        pair = _pair_id(conn, pair_token)
        if pair is None:
            raise VoteRefused("unknown pair", 400)
        row = conn.execute("SELECT pending FROM raters WHERE id = ?", (rater,)).fetchone()
        if row is None:
            if invited_only and not is_invited(conn, rater):
                raise VoteRefused("this study is by invitation only; open the invite link you were given", 403)
            conn.execute("INSERT INTO raters (id, created) VALUES (?, ?)", (rater, time.time()))
            pending = _pair_id(conn, shown)
        else:
            pending = row[0]
        if conn.execute("SELECT 1 FROM votes WHERE pair_id = ? AND rater = ?", (pair, rater)).fetchone():
            raise VoteRefused("already voted on this pair")
        if progress(conn, rater).finished:
            raise VoteRefused("all pairs of this rater are done")
        if pending != pair:
            raise VoteRefused("this pair is not the one shown; reload the page")
        conn.execute(
            "INSERT INTO votes (pair_id, rater, choice, created) VALUES (?, ?, ?, ?)",
            (pair, rater, choice, time.time()),
        )
        conn.execute("UPDATE raters SET pending = NULL WHERE id = ?", (rater,))
        done = progress(conn, rater)
        conn.execute("COMMIT")  # on disk (WAL, synchronous=FULL) before the caller acknowledges
    except sqlite3.IntegrityError:
        conn.execute("ROLLBACK")
        raise VoteRefused("already voted on this pair") from None
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return done


def image_png(conn: sqlite3.Connection, token: str) -> bytes | None:
    """The PNG bytes of the image with this opaque token, or None."""
    row = conn.execute("SELECT png FROM images WHERE token = ?", (token,)).fetchone()
    return None if row is None else bytes(row[0])


def reference_tokens(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT token FROM images WHERE set_id IS NULL ORDER BY id")]


def set_names(conn: sqlite3.Connection) -> list[str]:
    """Set names in creation order (index i is set id i + 1)."""
    return [r[0] for r in conn.execute("SELECT name FROM sets ORDER BY id")]


def vote_rows(conn: sqlite3.Connection) -> list[tuple[int, str, int, int, str]]:
    """Every vote as (pair id, rater, left set index, right set index, choice), set indices from 0."""
    return conn.execute(
        """SELECT v.pair_id, v.rater, li.set_id - 1, ri.set_id - 1, v.choice
           FROM votes v JOIN pairs p ON p.id = v.pair_id
           JOIN images li ON li.id = p.left_image JOIN images ri ON ri.id = p.right_image
           ORDER BY v.id"""
    ).fetchall()
