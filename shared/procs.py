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
