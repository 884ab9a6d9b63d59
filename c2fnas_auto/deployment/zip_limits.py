"""What reading a model zip may cost: entries, bytes on disk, manifest size.

A model zip usually comes from someone else, and a zip can be a bomb: a few MB that
inflate to GBs on disk, or a manifest padded to a GB that `json.loads` would hold in
memory. Every cap is checked on the zip's own declarations before anything is
extracted, and the bytes actually written are counted again while extracting (a
declared size can lie). Entry count and total size can be raised by flag for a
genuinely large model; the manifest cap is fixed (a real one is a few KB).
"""

from __future__ import annotations

import argparse
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Sequence

from c2fnas_auto.deployment.errors import DeploymentError

GIB = 2 ** 30
MANIFEST_MAX_BYTES = 1 << 20  # 1 MiB; a model of 5 folds x 3 experiments lists ~60 files in ~10 KB
DEFAULT_MAX_ENTRIES = 1000
DEFAULT_MAX_SIZE_GB = 4.0  # full-size C2FNAS: ~70 MB per fold checkpoint, so ~1 GB for 3 experiments x 5 folds
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ZipLimits:
    """Caps for one model zip; `max_total_bytes` bounds both the declared and the written sizes."""

    max_entries: int = DEFAULT_MAX_ENTRIES
    max_total_bytes: int = int(DEFAULT_MAX_SIZE_GB * GIB)
    max_manifest_bytes: int = MANIFEST_MAX_BYTES

    def check_declared(self, infos: Sequence[zipfile.ZipInfo], manifest: str, zip_file: Path) -> None:
        """Entry count, summed uncompressed size and manifest size as the zip declares them."""
        if len(infos) > self.max_entries:
            raise DeploymentError(f"{zip_file}: {len(infos)} entries, over the limit of {self.max_entries} "
                                  "(raise it with --max-zip-entries only for a model you expect to be that big)")
        total = sum(max(0, i.file_size) for i in infos)
        if total > self.max_total_bytes:
            raise DeploymentError(f"{zip_file}: declares {_size(total)} uncompressed, over the limit of "
                                  f"{_size(self.max_total_bytes)} (raise it with --max-zip-size-gb only for a "
                                  "model you expect to be that big)")
        for info in infos:
            if info.filename == manifest and info.file_size > self.max_manifest_bytes:
                raise DeploymentError(f"{zip_file}: {manifest} declares {info.file_size} bytes, over the limit of "
                                      f"{self.max_manifest_bytes} bytes for a manifest")

    def read_manifest_bytes(self, zf: zipfile.ZipFile, manifest: str, zip_file: Path) -> bytes:
        """The manifest's bytes, reading at most one byte past the cap whatever its header says."""
        with zf.open(manifest) as fh:
            raw = fh.read(self.max_manifest_bytes + 1)
        if len(raw) > self.max_manifest_bytes:
            raise DeploymentError(f"{zip_file}: {manifest} is larger than the limit of {self.max_manifest_bytes} "
                                  "bytes for a manifest")
        return raw


def copy_bounded(src: BinaryIO, dst: BinaryIO, budget: int, zip_file: Path, limits: ZipLimits) -> int:
    """Copy `src` to `dst` in chunks; returns the bytes written. More than `budget` bytes (the
    rest of the zip's total allowance) stops with a DeploymentError before writing them."""
    written = 0
    while True:
        chunk = src.read(_CHUNK)
        if not chunk:
            return written
        written += len(chunk)
        if written > budget:
            raise DeploymentError(f"{zip_file}: extracting wrote more than the limit of "
                                  f"{_size(limits.max_total_bytes)} (its declared sizes are wrong); nothing installed")
        dst.write(chunk)


def _size(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB // 10 else f"{n / 2 ** 20:.1f} MiB"


def add_zip_limit_flags(parser: argparse.ArgumentParser) -> None:
    """--max-zip-entries and --max-zip-size-gb for the commands that read model zips."""
    parser.add_argument("--max-zip-entries", type=int, default=DEFAULT_MAX_ENTRIES, metavar="N",
                        help=f"refuse a model zip with more entries (default {DEFAULT_MAX_ENTRIES})")
    parser.add_argument("--max-zip-size-gb", type=float, default=DEFAULT_MAX_SIZE_GB, metavar="GB",
                        help="refuse a model zip that declares or inflates to more uncompressed data "
                             f"(default {DEFAULT_MAX_SIZE_GB:g})")


def zip_limits_from_args(args: argparse.Namespace) -> ZipLimits:
    """The limits the flags ask for; non-positive values are a user error."""
    if args.max_zip_entries < 1 or not args.max_zip_size_gb > 0:
        raise DeploymentError(f"--max-zip-entries ({args.max_zip_entries}) and --max-zip-size-gb "
                              f"({args.max_zip_size_gb:g}) must be positive")
    return ZipLimits(max_entries=int(args.max_zip_entries), max_total_bytes=int(args.max_zip_size_gb * GIB))
