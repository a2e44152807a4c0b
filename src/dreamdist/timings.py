"""Measured wall times, the one source of every timing the CLI's help and the README quote.

``bench/bench_timings.py --write`` measures each entry (a fresh process, start-up included) and
rewrites ``timings.json`` beside this module; ``claim(name)`` turns an entry into the words the
help texts print ("about 100 s on 2 CPU cores"), and a test holds the README to the same words.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

PATH = Path(__file__).with_name("timings.json")


@cache
def measured() -> dict[str, dict]:
    """{name: {"seconds", "cores", "command", "date"}} as the benchmark last wrote it."""
    return json.loads(PATH.read_text())["timings"]


def rounded(seconds: float) -> int:
    """Seconds rounded as people say them: to 5 s below a minute, to 10 s above."""
    step = 5 if seconds < 60 else 10
    return max(step, int(round(seconds / step)) * step)


def claim(name: str) -> str:
    """``"about N s on C CPU cores"`` for a measured entry (``KeyError`` naming the entries otherwise)."""
    table = measured()
    if name not in table:
        raise KeyError(f"no measured timing {name!r}; measured: {', '.join(sorted(table))}")
    entry = table[name]
    return f"about {rounded(entry['seconds'])} s on {entry['cores']} CPU cores"
