"""Test infrastructure: a throwaway PostgreSQL cluster for the registry tests and benchmarks (Debian's
`postgresql` package).

`ThrowawayPostgres().start()` runs initdb into a fresh temporary directory and starts `postgres` as a direct
child on a free loopback port (fsync off: nothing in it is meant to survive). As root it drops to the
`postgres` user (postgres refuses to run as root) and then asks the kernel to kill it if its parent dies
(PR_SET_PDEATHSIG), so a killed test run leaves no server behind. `create_database(name)` returns a
SQLAlchemy URL for a new, empty database owned by a login role; `create_schema(name)` is the cheap variant
for many short tests (a schema in one shared database, selected through the connection's search_path).
`durable=True` keeps PostgreSQL's default fsync and synchronous commit (for benchmarks).
"""

from __future__ import annotations

import ctypes
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from dblocks.shared.procs import free_port

PR_SET_PDEATHSIG = 1


def postgres_bin_dir() -> Path | None:
    """Folder holding initdb and postgres (newest Debian version), or None if PostgreSQL is not installed."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _demote(uid: int | None, gid: int | None, die_with_parent: bool):
    def preexec() -> None:
        os.setsid()
        if gid is not None:
            os.setgroups([])
            os.setgid(gid)
        if uid is not None:
            os.setuid(uid)
        if die_with_parent:  # after the uid change, which would clear it
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)

    return preexec


class ThrowawayPostgres:
    def __init__(self, port: int | None = None, durable: bool = False):
        self.durable = durable
        self.bin = postgres_bin_dir()
        if self.bin is None:
            raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.dir = Path(tempfile.mkdtemp(prefix="dblocks-pg-"))
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            self.uid, self.gid = pw.pw_uid, pw.pw_gid
            os.chown(self.dir, self.uid, self.gid)
        else:
            self.uid = self.gid = None
        self.superuser = "postgres"

    def _run(self, *args: str) -> None:
        subprocess.run(args, check=True, capture_output=True, preexec_fn=_demote(self.uid, self.gid, False))

    def start(self, timeout_s: float = 30.0) -> ThrowawayPostgres:
        data = self.dir / "data"
        self._run(
            str(self.bin / "initdb"), "-D", str(data), "-A", "trust", "-U", self.superuser, "-E", "UTF8", "--no-sync"
        )
        log = open(self.dir / "server.log", "wb")
        self.proc = subprocess.Popen(
            [
                str(self.bin / "postgres"),
                "-D",
                str(data),
                "-p",
                str(self.port),
                "-k",
                str(self.dir),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=200",
                *(
                    []
                    if self.durable
                    else ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
                ),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_demote(self.uid, self.gid, True),
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {(self.dir / 'server.log').read_text()[-2000:]}")
            try:
                self.psql("SELECT 1")
                return self
            except subprocess.CalledProcessError:
                time.sleep(0.1)
        raise RuntimeError(
            f"postgres did not start within {timeout_s} s: {(self.dir / 'server.log').read_text()[-2000:]}"
        )

    def psql(self, *sql: str, database: str = "postgres") -> None:
        args = [
            str(self.bin / "psql") if (self.bin / "psql").exists() else "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            self.superuser,
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-q",
        ]
        for s in sql:
            args += ["-c", s]
        self._run(*args)

    def create_database(self, name: str, role: str = "app", password: str = "app") -> str:
        """A new empty database `name` owned by `role`; returns its SQLAlchemy URL (psycopg 3)."""
        self.psql(
            f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN "
            f"CREATE ROLE {role} LOGIN PASSWORD '{password}'; END IF; END $$",
            f"CREATE DATABASE {name} OWNER {role}",
        )
        return f"postgresql+psycopg://{role}:{password}@127.0.0.1:{self.port}/{name}"

    def create_schema(
        self, schema: str, database: str = "dblocks_tests", role: str = "app", password: str = "app"
    ) -> str:
        """A new empty schema owned by `role` in the shared `database`; its URL puts it first on the search_path."""
        import psycopg

        if not getattr(self, "_shared_db", None):
            self.create_database(database, role, password)
            self._shared_db = database
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=self.superuser, dbname=database, autocommit=True
        ) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}" AUTHORIZATION {role}')
        return (
            f"postgresql+psycopg://{role}:{password}@127.0.0.1:{self.port}/{database}?options=-csearch_path%3D{schema}"
        )

    def drop_schema(self, schema: str, database: str = "dblocks_tests") -> None:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=self.superuser, dbname=database, autocommit=True
        ) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> ThrowawayPostgres:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
