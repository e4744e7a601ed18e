"""Database engines, sessions and migrations.

SQLite (the embedded default) runs in WAL mode with `synchronous=FULL`, so every acknowledged commit is on
disk before the response leaves, and writers open their transaction with `BEGIN IMMEDIATE`: a write
transaction holds the write lock from its first statement, so two writers never deadlock on a lock upgrade
(writers of other processes wait up to `busy_timeout`). Writers of this process commit in groups
(groupcommit.py). Readers use plain deferred transactions and never block writers.
PostgreSQL uses one engine at READ COMMITTED; version numbering takes a row lock on the block.

`Database.migrate()` runs Alembic's `upgrade head` with the migrations shipped in this package.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from .config import RegistrySettings
from .groupcommit import GroupCommitter

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT_MS = 15_000


def _sqlite_engine(url: str, begin: str) -> Engine:
    engine = create_engine(
        url, pool_size=8, max_overflow=24, pool_timeout=30, connect_args={"check_same_thread": False}
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves (below)
        cur = dbapi_connection.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = FULL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        conn.exec_driver_sql(begin)

    return engine


class Database:
    """The registry's engines and session factories."""

    def __init__(self, settings: RegistrySettings):
        self.settings = settings
        url = settings.database_url
        if settings.is_sqlite:
            db_path = url.split("///", 1)[1] if "///" in url else ""
            if db_path and db_path != ":memory:":
                Path(db_path).parent.mkdir(parents=True, exist_ok=True)
            self.read_engine = _sqlite_engine(url, "BEGIN")
            self.write_engine = _sqlite_engine(url, "BEGIN IMMEDIATE")
        else:
            # no pool_pre_ping: a ping per request costs a round trip; after a database restart the first request on a
            # stale connection fails and SQLAlchemy discards the pool's stale connections
            self.read_engine = self.write_engine = create_engine(url, pool_size=10, max_overflow=30, pool_recycle=3600)
        self._read = sessionmaker(self.read_engine, expire_on_commit=False)
        self._write = sessionmaker(self.write_engine, expire_on_commit=False)
        # SQLite has one writer at a time: this process's writers queue on a lock (handed over at once, where
        # SQLite itself would poll with sleeps of up to 100 ms) and commit in groups, one fsync per group.
        self._group_commit = GroupCommitter(self._write) if settings.is_sqlite else None

    @contextmanager
    def reader(self) -> Iterator[Session]:
        """A session for reading. Closing it ends its transaction (the pool rolls the connection back) and
        leaves the loaded objects usable, detached."""
        with self._read() as session:
            yield session

    @contextmanager
    def writer(self) -> Iterator[Session]:
        """A session whose work is committed when the block ends, or rolled back if it raised. Returns only
        once the work is durable. (SQLite: the block may share its transaction with concurrent writers,
        each in its own savepoint; see groupcommit.py.)"""
        if self._group_commit is not None:
            with self._group_commit.writer() as session:
                yield session
            return
        with self._write() as session, session.begin():
            yield session

    def migrate(self) -> None:
        """Bring the schema to the newest migration (Alembic `upgrade head`)."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        with self.write_engine.connect() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def dispose(self) -> None:
        self.read_engine.dispose()
        if self.write_engine is not self.read_engine:
            self.write_engine.dispose()
