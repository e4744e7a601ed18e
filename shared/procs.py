"""What both sides need to start Flower's processes: its environment and a free local port (`dbclient join`
runs a SuperNode; the operator's tools run the SuperLink). Supervising child processes is the operator's
business: `dblocks.server.ops.procs`."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path


def flwr_env(home: str | os.PathLike, **extra: str) -> dict[str, str]:
    """Environment for Flower processes: its own FLWR_HOME, no telemetry or update checks, and this
    interpreter's bin/ first on PATH (a SuperNode starts `flower-superexec` / `flwr-clientapp` by name)."""
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(home),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        **extra,
    )
    return env


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


PULL_FIRST_RETRY_SECONDS = 0.05  # Flower 1.41: 1 s
PULL_RETRY_CAP_SECONDS = 1.0  # Flower 1.41: 10 s (with its 500 tries per object: an object waited for 500 s at most)


def shorten_object_pull_retries(first: float = PULL_FIRST_RETRY_SECONDS, cap: float = PULL_RETRY_CAP_SECONDS) -> None:
    """Flower 1.41 moves a message as a tree of objects, and the receiver pulls each object; one that is not stored
    yet (a SuperNode pulls a message while the server is still pushing its objects, a worker takes a task before its
    SuperNode has stored the input, the server pulls a reply still being pushed) is retried after 1 s, doubling up
    to 10 s (`flwr.supercore.inflatable.inflatable_utils`, not configurable). Measured: about one delivery in two
    paid that second. In this process the retries start at `first` seconds and double up to `cap`; every retry is
    one small local or SuperLink request, and nothing else of Flower changes."""
    from flwr.supercore.inflatable import inflatable_utils as iu

    for fn in (iu.pull_objects, iu.pull_and_inflate_object_from_tree):
        defaults = dict(fn.__kwdefaults__ or {})
        if "initial_backoff" in defaults and "backoff_cap" in defaults:
            defaults.update(initial_backoff=first, backoff_cap=cap)
            fn.__kwdefaults__ = defaults
