"""Command-line values the study commands share (`search_study`, `start_study`)."""

from __future__ import annotations

from c2fnas_auto.errors import InputError


def parse_pair(text: str, flag: str, sep: str) -> tuple[int, int]:
    """'A<sep>B' -> (A, B); anything else is a one-line error naming the flag."""
    try:
        a, b = (int(x) for x in text.split(sep))
    except ValueError:
        raise InputError(f"{flag} {text!r}: expected two integers as A{sep}B") from None
    return a, b


def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' with 0 <= K < N: run every N-th job starting at K."""
    k, n = parse_pair(text, "--shard", "/")
    if not 0 <= k < n:
        raise InputError(f"--shard {text!r}: expected K/N with 0 <= K < N, e.g. 0/2")
    return k, n
