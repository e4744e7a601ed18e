"""Real registry server processes for tests: `dbserver registry` or uvicorn as a child that dies with the
test run (PR_SET_PDEATHSIG), on a free loopback port."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from dblocks.shared.procs import free_port

VENV_BIN = Path(sys.executable).parent


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


class ServerProcess:
    """`argv` started with `env`; `url` once /health answers."""

    def __init__(self, argv: list[str], env: dict[str, str], port: int, log: Path):
        self.argv, self.env, self.port, self.log_path = argv, env, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60.0) -> ServerProcess:
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.argv, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"server did not answer within {timeout_s} s:\n{self.log_path.read_text()[-3000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)
        if getattr(self, "log", None):
            self.log.close()

    def output(self) -> str:
        return self.log_path.read_text()


def uvicorn_server(env_extra: dict[str, str], log: Path, port: int | None = None) -> ServerProcess:
    """The registry app under uvicorn, configured through the environment like `dbserver registry`."""
    port = port or free_port()
    env = {**os.environ, **env_extra}
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "dblocks.server.registry.app:create_app_from_env",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    return ServerProcess(argv, env, port, log)
