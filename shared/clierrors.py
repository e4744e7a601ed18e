"""Errors at the command line: one clear line and an exit code, never a traceback unless asked for.

`SafeTyper` is a `typer.Typer` whose uncaught exceptions end as one line on the console:
  * a user's mistake (`USER_ERRORS`: unusable data, a missing file or model, a damaged block) exits 2;
  * anything else is a bug: "internal error" with the exception's type and a bounded message, exit 1.
`--debug` anywhere on the command line (or DBLOCKS_DEBUG=1) prints the plain Python traceback instead. Rich's
pretty tracebacks are off everywhere: their local variables would print tensors of private records.
Every message is cut to `MAX_MESSAGE` characters, so no error embeds more than an excerpt of the input.
This module imports nothing heavy (no torch), so that refusing bad input stays fast.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import TypedDict

import typer

from .errors import DataError

USER_ERRORS: tuple[type[BaseException], ...] = (
    DataError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)
MAX_MESSAGE = 600


class TracebackSettings(TypedDict):
    """Keyword arguments of typer.Typer (spread into it with **)."""

    pretty_exceptions_enable: bool
    pretty_exceptions_show_locals: bool


TRACEBACK_SETTINGS: TracebackSettings = {"pretty_exceptions_enable": False, "pretty_exceptions_show_locals": False}


def bounded(msg: str, limit: int = MAX_MESSAGE) -> str:
    """`msg` cut to `limit` characters (the rest is replaced by a count)."""
    return msg if len(msg) <= limit else msg[:limit] + f" ... ({len(msg) - limit} more characters)"


def debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv[1:] or os.environ.get("DBLOCKS_DEBUG", "") not in ("", "0")


class SafeTyper(typer.Typer):
    """A Typer app that ends every error in one line (see the module docstring)."""

    def __init__(self, *args, **kwargs) -> None:
        for k, v in TRACEBACK_SETTINGS.items():
            kwargs.setdefault(k, v)
        super().__init__(*args, **kwargs)

    def __call__(self, *args, **kwargs):
        debug = debug_requested(sys.argv)
        sys.argv[1:] = [a for a in sys.argv[1:] if a != "--debug"]
        try:
            return super().__call__(*args, **kwargs)
        except SystemExit:
            raise
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        except Exception as e:  # the one place every error of a command ends
            if debug:
                traceback.print_exc()
            wire = sys.modules.get("dblocks.shared.wire")  # a damaged block is the user's file too
            user = isinstance(e, USER_ERRORS) or (wire is not None and isinstance(e, wire.BlockIntegrityError))
            reg = sys.modules.get("dblocks.shared.registry_client")  # a registry that is down: the operator's to act
            user = user or (reg is not None and isinstance(e, reg.RegistryUnreachable))
            what = str(e) if user else f"internal error ({type(e).__name__}: {e})"
            hint = "" if debug else " (add --debug for the traceback)" if not user else ""
            print(f"error: {bounded(what)}{hint}", flush=True)
            sys.exit(2 if user else 1)
