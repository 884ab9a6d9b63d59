"""Shared behaviour of every command-line entry point.

A user error (C2FNASError) becomes one line on stderr and exit code 2; Ctrl-C exits
130 without a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from contextlib import AbstractContextManager
from typing import Callable

from c2fnas_auto.errors import C2FNASError


def cli_entry(fn: Callable[..., int | None]) -> Callable[..., int]:
    @functools.wraps(fn)
    def wrapper(argv: list[str] | None = None) -> int:
        prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else fn.__module__
        try:
            rc = fn(argv)
        except C2FNASError as exc:
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            return 130
        return int(rc or 0)

    return wrapper


def exit_with(main: Callable[[list[str] | None], int]) -> None:
    sys.exit(main(None))


def add_trust_flag(parser: argparse.ArgumentParser) -> None:
    """--trust-pickled-checkpoint: the opt-in to read checkpoints that need unpickling."""
    parser.add_argument("--trust-pickled-checkpoint", action="store_true",
                        help="also load checkpoints that hold pickled objects (written by older c2fnas-auto); "
                             "unpickling runs any code a file holds: only for files you wrote yourself. "
                             "Without it such files are refused (documentation/reference/reliability.md, threat model)")


def trust_from_args(args: argparse.Namespace) -> AbstractContextManager:
    """The trust switch of utils/torch_files as the flag sets it, for the duration of a command."""
    # start-up: torch_files loads numpy; most CLIs' --help imports only this module
    from c2fnas_auto.utils.torch_files import trusting_pickled_files

    return trusting_pickled_files(bool(getattr(args, "trust_pickled_checkpoint", False)))
