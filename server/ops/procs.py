"""Child processes that die with their parent: start, wait for a port, stop with their whole group."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def _die_with_parent() -> None:
    """preexec_fn: deliver SIGTERM to the child when the parent dies (Linux PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:
        pass


def spawn(
    cmd: list[str],
    *,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    cwd: str | None = None,
    tied: bool = True,
    group: bool = True,
) -> subprocess.Popen:
    """Start `cmd` (stdout+stderr to `log` if given). group=True: in a process group of its own, so that
    `stop_group` takes it down with every helper it starts; group=False: in ours (our group's fate is its).
    tied=True: it also gets SIGTERM when this process dies."""
    out = open(log, "ab") if log else None
    return subprocess.Popen(
        cmd,
        env=env,
        cwd=cwd,
        stdout=out,
        stderr=subprocess.STDOUT if out else None,
        preexec_fn=_die_with_parent if tied else None,
        start_new_session=group,
    )


def stop_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
    """Send `sig` to the process group of `proc` (it and its descendants), wait, then SIGKILL what is left."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


def _program(proc: subprocess.Popen) -> str:
    """The program a Popen ran (its first argument), for messages."""
    args = proc.args
    first = args[0] if isinstance(args, list | tuple) and args else args
    return os.fsdecode(first) if isinstance(first, str | bytes | os.PathLike) else str(first)


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"process {_program(proc)} exited with code {proc.returncode} before listening on {port}"
            )
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f} s")
