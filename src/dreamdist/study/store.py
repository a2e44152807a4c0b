"""The study file: one sqlite database holding the sets, the images (re-encoded PNG bytes), the
pairs, the raters and their votes.

Everything the voting server needs lives inside the file, so serving reads no other file and a
study can be copied to another machine. The database runs in WAL mode with ``synchronous=FULL``:
a vote is committed (on disk) before the server acknowledges it, so killing the server loses no
acknowledged vote. ``UNIQUE (pair_id, rater)`` makes a second vote of a rater on a pair
impossible, whatever the requests look like.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

FORMAT = "dreamdist-study"
VERSION = "1"
CHOICES = ("left", "right", "tie")

SCHEMA = """
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
-- pending: the pair the rater is shown now; a vote must be for it
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


class VoteRefused(ValueError):
    """A vote that is not recorded; ``status`` is the HTTP status the server answers with."""

    def __init__(self, message: str, status: int = 409):
        super().__init__(message)
        self.status = status


def new_token() -> str:
    """An opaque, unguessable id (22 url-safe characters) for images, pairs and raters."""
    return secrets.token_urlsafe(16)


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


def open_study(path: str | Path) -> sqlite3.Connection:
    """Open an existing study for reading and writing; a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no study at {path}; make one with 'dreamdist study create {path} --set A=DIR ...'")
    try:
        conn = _connect(path, "rw")
        conn.execute("PRAGMA journal_mode = WAL")
        meta = dict(conn.execute("SELECT key, value FROM meta"))
    except sqlite3.DatabaseError as exc:
        raise ValueError(f"{path} is not a study file ({exc}); make one with 'dreamdist study create'") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is a sqlite file but not a dreamdist study")
    if meta.get("version") != VERSION:
        raise ValueError(f"{path} is a study of format version {meta.get('version')}; this dreamdist reads {VERSION}")
    return conn


def read_meta(conn: sqlite3.Connection) -> dict[str, str]:
    """The study's settings (question, seed, per_rater, ...)."""
    return dict(conn.execute("SELECT key, value FROM meta"))


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


def register_rater(conn: sqlite3.Connection) -> str:
    """A new rater id, committed before it is handed out."""
    rater = new_token()
    conn.execute("INSERT INTO raters (id, created) VALUES (?, ?)", (rater, time.time()))
    return rater


def rater_exists(conn: sqlite3.Connection, rater: str) -> bool:
    return conn.execute("SELECT 1 FROM raters WHERE id = ?", (rater,)).fetchone() is not None


def progress(conn: sqlite3.Connection, rater: str) -> Progress:
    done = conn.execute("SELECT COUNT(*) FROM votes WHERE rater = ?", (rater,)).fetchone()[0]
    return Progress(done, quota(conn))


def _order_key(rater: str, pair_token: str) -> str:
    # a fixed, per-rater shuffle: raters see pairs in different orders, a reload shows the same pair
    return hashlib.sha256(f"{rater}/{pair_token}".encode()).hexdigest()


def next_pair(conn: sqlite3.Connection, rater: str) -> tuple[str, str, str] | None:
    """The (pair token, left image token, right image token) to show ``rater``; None when done.

    The rater's pending pair is shown again until voted on (a reload cannot skip a pair);
    otherwise the unvoted pair with the fewest votes so far, so coverage stays even and several
    raters meet on the same pairs (the agreement statistics need that).
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        if progress(conn, rater).finished:
            conn.execute("COMMIT")
            return None
        rows = conn.execute(
            """SELECT p.id, p.token, li.token, ri.token, (SELECT COUNT(*) FROM votes v WHERE v.pair_id = p.id),
                      p.id = (SELECT pending FROM raters WHERE id = ?)
               FROM pairs p JOIN images li ON li.id = p.left_image JOIN images ri ON ri.id = p.right_image
               WHERE NOT EXISTS (SELECT 1 FROM votes v WHERE v.pair_id = p.id AND v.rater = ?)""",
            (rater, rater),
        ).fetchall()
        if not rows:
            conn.execute("COMMIT")
            return None
        pick = min(rows, key=lambda r: (not r[5], r[4], _order_key(rater, r[1])))
        conn.execute("UPDATE raters SET pending = ? WHERE id = ?", (pick[0], rater))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return pick[1], pick[2], pick[3]


def record_vote(conn: sqlite3.Connection, rater: str, pair_token: str, choice: str) -> Progress:
    """Commit one vote and return the rater's new progress; ``VoteRefused`` when it may not count.

    Refused: an unknown rater (403), an unknown pair or choice (400), a pair other than the one
    the rater is shown, a second vote on a pair, or a rater already done (409).
    """
    if choice not in CHOICES:
        raise VoteRefused(f"choice must be one of {', '.join(CHOICES)}", 400)
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute("SELECT pending FROM raters WHERE id = ?", (rater,)).fetchone()
        if row is None:
            raise VoteRefused("unknown rater; reload the page", 403)
        pair = conn.execute("SELECT id FROM pairs WHERE token = ?", (pair_token,)).fetchone()
        if pair is None:
            raise VoteRefused("unknown pair", 400)
        if conn.execute("SELECT 1 FROM votes WHERE pair_id = ? AND rater = ?", (pair[0], rater)).fetchone():
            raise VoteRefused("already voted on this pair")
        if progress(conn, rater).finished:
            raise VoteRefused("all pairs of this rater are done")
        if row[0] != pair[0]:
            raise VoteRefused("this pair is not the one shown; reload the page")
        conn.execute(
            "INSERT INTO votes (pair_id, rater, choice, created) VALUES (?, ?, ?, ?)",
            (pair[0], rater, choice, time.time()),
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
