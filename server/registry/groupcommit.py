"""Group commit for SQLite: writers that arrive together share one transaction and one fsync.

With `synchronous=FULL` every COMMIT waits for the disk (milliseconds on ordinary storage), and SQLite runs
one writer at a time, so N concurrent writes would cost N disk waits in a row. Here a writer that arrives
while another holds the write lock joins that writer's transaction: each runs its block inside its own
SAVEPOINT (an error rolls back only that block and reaches only that caller), and the last writer of the
group (nobody else waiting, or the group is full) commits for all. Every writer returns only after its
group's COMMIT is on disk, so an acknowledged write is durable; if the COMMIT fails, every member of the
group gets the error and nothing of the group is kept.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session, sessionmaker


class _Group:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.size = 0


class GroupCommitter:
    """`writer()` hands out the shared session of the current group, one caller at a time."""

    def __init__(self, make_session: sessionmaker, max_group: int = 64):
        self._make_session = make_session
        self.max_group = max_group
        self._lock = threading.Lock()  # held while a member runs its block (and while a group commits)
        self._count_lock = threading.Lock()
        self._waiting = 0  # writers queued on _lock: if any, the group stays open for them
        self._session: Session | None = None
        self._group: _Group | None = None

    @contextmanager
    def writer(self) -> Iterator[Session]:
        with self._count_lock:
            self._waiting += 1
        self._lock.acquire()
        with self._count_lock:
            self._waiting -= 1
        group: _Group | None = None
        failure: BaseException | None = None
        try:
            if self._session is None or self._group is None:  # both are set (and cleared) together
                self._session, self._group = self._make_session(), _Group()
                self._session.begin()
            group, session = self._group, self._session
            group.size += 1
            try:
                with session.begin_nested():  # SAVEPOINT: this caller's block, and only it, rolls back on error
                    yield session
            except BaseException as e:  # noqa: BLE001 (re-raised below, after the group is settled)
                failure = e
            if self._waiting == 0 or group.size >= self.max_group or not session.in_transaction():
                self._commit()
        except BaseException as e:  # the group's own BEGIN or bookkeeping failed
            failure = failure or e
            if self._group is group and group is not None:
                self._commit()
        finally:
            self._lock.release()
        if group is not None:
            group.done.wait()
        if failure is not None:
            raise failure
        if group is not None and group.error is not None:
            raise group.error

    def _commit(self) -> None:
        """COMMIT the current group (caller holds _lock) and wake its members."""
        session, group = self._session, self._group
        self._session = self._group = None
        if session is None or group is None:
            return
        try:
            if session.in_transaction():
                session.commit()
        except BaseException as e:  # noqa: BLE001 (handed to every member)
            group.error = e
            session.rollback()
        finally:
            session.close()
            group.done.set()
