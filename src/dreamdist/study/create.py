"""``dreamdist study create``: image folders -> a study file with seeded, balanced pairs.

Each pair holds one image of two different sets, in a random left/right order. Pairs are spread
evenly over the set pairs (A-B, A-C, B-C, ...) and each set's images are dealt like a shuffled
deck, so every image is used about equally often. Images are rebuilt from their pixels alone, at
one size for all sets (:mod:`dreamdist.study.images`): nothing in a served file (name, EXIF, PNG
chunks, size in pixels or in bytes) tells which set it came from.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dreamdist.study import images, store

DEFAULT_QUESTION = "Which image fits the reference images better?"
_NAME = re.compile(r"[^\s=][^=]*")


@dataclass(frozen=True)
class ImageSource:
    """One set of a study: its name and its image folder."""

    name: str
    folder: Path


def parse_set(spec: str) -> ImageSource:
    """``"NAME=DIR"`` -> ImageSource (the first ``=`` splits)."""
    name, sep, folder = spec.partition("=")
    name = name.strip()
    if not sep or not _NAME.fullmatch(name) or not folder:
        raise ValueError(f"--set takes NAME=DIR, e.g. --set dreamdist=runs/a/samples; got {spec!r}")
    return ImageSource(name, Path(folder))


def image_files(folder: Path, what: str) -> list[Path]:
    """The images of a folder: those its ``manifest.jsonl`` lists, if it has one, else every image file.

    A generation folder (``dreamdist generate --out``) holds a manifest, so its ``grid.png`` is left out.
    """
    from dreamdist.data import list_image_files

    if not folder.is_dir():
        raise FileNotFoundError(f"{what}: folder {folder} does not exist")
    manifest = folder / "manifest.jsonl"
    if manifest.is_file():
        files = []
        for number, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                files.append(inside(folder, record["file"], f"{what}: {manifest} line {number}"))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f'{what}: {manifest} line {number} is not a JSON object with a "file" key') from None
    else:
        files = list_image_files(folder)[0]
    if not files:
        raise ValueError(f"{what}: no images in {folder} (looked for .png, .jpg, .jpeg, .webp, ...)")
    return files


def inside(folder: Path, name: str, where: str) -> Path:
    """``folder / name`` for a manifest's ``file`` entry, refused unless it stays inside ``folder``
    (no absolute path, no ``..``, no symbolic link that leads out)."""
    if not isinstance(name, str):
        raise TypeError(name)
    root = folder.resolve()
    path = folder / name
    if not path.resolve().is_relative_to(root):
        raise ValueError(
            f"{where}: file {name!r} is outside the set's folder {folder}; a manifest may only name files "
            "inside its own folder (copy the images there)"
        )
    return path


def _deck(items: list[int], rng: random.Random) -> Iterator[int]:
    """Endless draws that use every item once per round, in a fresh random order each round."""
    while True:
        round_ = list(items)
        rng.shuffle(round_)
        yield from round_


def draw_pairs(set_sizes: list[int], n_pairs: int, seed: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Seeded pairs ``((set, image), (set, image))`` as (left, right), always of two different sets.

    Set pairs get ``n_pairs // n_combinations`` pairs each (the remainder goes to randomly chosen
    set pairs); left/right is a coin flip per pair; the list is shuffled.
    """
    if len(set_sizes) < 2:
        raise ValueError("a study needs at least two sets")
    rng = random.Random(seed)
    combos = list(itertools.combinations(range(len(set_sizes)), 2))
    order = combos * (n_pairs // len(combos)) + rng.sample(combos, n_pairs % len(combos))
    decks = [_deck(list(range(size)), rng) for size in set_sizes]
    pairs = []
    for i, j in order:
        first, second = (i, next(decks[i])), (j, next(decks[j]))
        pairs.append((first, second) if rng.random() < 0.5 else (second, first))
    rng.shuffle(pairs)
    return pairs


def create_study(
    path: str | Path,
    sets: list[ImageSource],
    refs: str | Path | None = None,
    n_pairs: int | None = None,
    question: str = DEFAULT_QUESTION,
    seed: int = 0,
    per_rater: int = 0,
    invites: int = 0,
    max_side: int = images.MAX_SIDE,
) -> dict:
    """Check the folders, read the images and write a new study file (atomically).

    Args:
        path: the study file to create; must not exist (a study holds votes, it is never overwritten).
        sets: two or more named image folders (the methods compared).
        refs: optional folder of reference images shown above every pair.
        n_pairs: pairs to draw (default: one round of the largest set per pair of sets).
        question: the question the raters answer.
        seed: seed of the pair draw and of the left/right order.
        per_rater: pairs asked of each rater (0: all).
        invites: one-time rater links to make; with any, only invited raters may vote (0: an open study).
        max_side: the longest side of the set images as served (they all get one size, see images.py).

    Returns:
        a summary: ``{"pairs", "sets": {name: images}, "refs", "size": (width, height), "invites": [token]}``.
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; a study is never overwritten (pick a new file name)")
    if len(sets) < 2:
        raise ValueError("a study compares at least two sets; give --set NAME=DIR two or more times")
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise ValueError(f"set names must differ; got {', '.join(names)}")
    if n_pairs is not None and n_pairs < 1:
        raise ValueError(f"--pairs must be at least 1; got {n_pairs}")
    if per_rater < 0:
        raise ValueError(f"--per-rater must be 0 (all pairs) or more; got {per_rater}")
    if not question.strip():
        raise ValueError("--question must not be empty")
    if invites < 0:
        raise ValueError(f"--invites must be 0 (an open study) or more; got {invites}")
    files = [image_files(s.folder, f"set {s.name!r}") for s in sets]
    ref_files = image_files(Path(refs), "--refs") if refs is not None else []
    size = images.study_size(
        [images.probe_size(f, f"set {s.name!r}") for s, set_files in zip(sets, files) for f in set_files], max_side
    )
    sizes = [len(f) for f in files]
    combos = len(sizes) * (len(sizes) - 1) // 2
    n_pairs = combos * max(sizes) if n_pairs is None else n_pairs

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    conn = store.create_database(tmp)
    try:
        meta = {"format": store.FORMAT, "version": store.VERSION, "question": question.strip(), "seed": str(seed)}
        meta |= {"per_rater": str(per_rater), "created": str(time.time()), "secret": store.new_secret()}
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
        tokens = store.add_invites(conn, invites)
        image_ids: list[list[int]] = []
        for set_id, (source, set_files) in enumerate(zip(sets, files), start=1):
            # explicit ids 1..K: set index i is id i + 1 (store.vote_rows relies on it)
            conn.execute("INSERT INTO sets VALUES (?, ?, ?)", (set_id, source.name, str(source.folder.resolve())))
            ids = []
            for file in set_files:
                png = images.compact_png(images.fit(images.load_pixels(file, f"set {source.name!r}"), size))
                cur = conn.execute(
                    "INSERT INTO images (token, set_id, source, png) VALUES (?, ?, ?, ?)",
                    (store.new_token(), set_id, str(file.resolve()), png),
                )
                ids.append(cur.lastrowid)
            image_ids.append(ids)
        for file in ref_files:  # references are not compared: their own shape, shown small
            png = images.compact_png(images.shrink(images.load_pixels(file, "--refs"), images.REFERENCE_SIDE))
            conn.execute(
                "INSERT INTO images (token, set_id, source, png) VALUES (?, NULL, ?, ?)",
                (store.new_token(), str(file.resolve()), png),
            )
        rows = [
            (store.new_token(), image_ids[ls][li], image_ids[rs][ri])
            for (ls, li), (rs, ri) in draw_pairs(sizes, n_pairs, seed)
        ]
        conn.executemany("INSERT INTO pairs (token, left_image, right_image) VALUES (?, ?, ?)", rows)
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        os.replace(tmp, path)
    except BaseException:
        conn.close()
        for leftover in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
            leftover.unlink(missing_ok=True)
        raise
    for leftover in (tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
        leftover.unlink(missing_ok=True)
    return {"pairs": n_pairs, "sets": dict(zip(names, sizes)), "refs": len(ref_files), "size": size, "invites": tokens}
