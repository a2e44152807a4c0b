"""Counts in the study's messages: ``counted(1, "rater")`` is "1 rater", ``counted(2, "rater")`` "2 raters"."""

from __future__ import annotations


def counted(n: int, noun: str, nouns: str | None = None) -> str:
    """``n`` and ``noun``, in the plural (``nouns``, default ``noun + "s"``) unless ``n`` is exactly 1."""
    return f"{n} {noun if n == 1 else nouns or noun + 's'}"
