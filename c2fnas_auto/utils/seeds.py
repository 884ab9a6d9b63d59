"""Stable per-case seeds shared by fingerprinting and preprocessing.

Python's hash() is salted per process, so a seed from it would differ between the
workers of one run and between runs; a CRC of the case id does not.
"""

from __future__ import annotations

import zlib


def case_seed(case_id: str, base: int = 0) -> int:
    """A stable per-case seed in [0, 2**32)."""
    return (zlib.crc32(case_id.encode("utf-8")) + base) % (2 ** 32)
