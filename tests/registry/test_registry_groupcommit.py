"""SQLite group commit: concurrent writers share a transaction, a failing writer loses only its own work,
a failed COMMIT reaches every member, and nobody returns before the COMMIT."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import event, func, select

from dblocks.server.registry.config import RegistrySettings
from dblocks.server.registry.db import Database
from dblocks.server.registry.models import Event, utcnow


def add_event(s, kind: str) -> None:
    s.add(Event(at=utcnow(), actor="t", actor_role="service", kind=kind, subject_type="test", subject_id="0"))


@pytest.fixture
def db(tmp_path):
    db = Database(RegistrySettings.in_directory(tmp_path))
    db.migrate()
    yield db
    db.dispose()


def run_together(n: int, work) -> list[BaseException | None]:
    """Run work(i) in n threads released at once; the outcome of each (None or its exception)."""
    barrier, outcomes = threading.Barrier(n), [None] * n

    def target(i):
        barrier.wait()
        try:
            work(i)
        except BaseException as e:  # noqa: BLE001
            outcomes[i] = e

    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


def test_failures_stay_with_their_writer_and_groups_share_commits(db):
    commits = []
    event.listen(db.write_engine, "commit", lambda conn: commits.append(1))

    def work(i):
        with db.writer() as s:
            add_event(s, f"w{i}")
            s.flush()
            time.sleep(0.005)  # let the others queue up behind this writer
            if i % 5 == 0:
                raise ValueError(f"writer {i} failed")

    outcomes = run_together(20, work)
    failed = {i for i, o in enumerate(outcomes) if o is not None}
    assert failed == {0, 5, 10, 15} and all(isinstance(outcomes[i], ValueError) for i in failed)
    with db.reader() as s:
        kinds = set(s.scalars(select(Event.kind)))
    assert kinds == {f"w{i}" for i in range(20) if i not in failed}
    assert len(commits) < 16, f"{len(commits)} commits for 16 writes: no grouping happened"


def test_a_failed_commit_reaches_every_member(db, monkeypatch):
    from sqlalchemy.orm import Session

    def broken_commit(self):
        raise OSError("disk full")

    monkeypatch.setattr(Session, "commit", broken_commit)

    def work(i):
        with db.writer() as s:
            add_event(s, f"x{i}")
            time.sleep(0.003)

    outcomes = run_together(6, work)
    assert all(isinstance(o, OSError) for o in outcomes), outcomes
    monkeypatch.undo()
    with db.reader() as s:
        assert s.scalar(select(func.count()).select_from(Event)) == 0
    with db.writer() as s:  # and the next group works
        add_event(s, "after")
    with db.reader() as s:
        assert list(s.scalars(select(Event.kind))) == ["after"]


def test_writers_return_only_after_the_commit(db):
    """What a writer saw acknowledged is visible to a fresh reader at once (it is committed)."""
    seen_missing = []

    def work(i):
        with db.writer() as s:
            add_event(s, f"v{i}")
        with db.reader() as s:
            if s.scalar(select(func.count()).select_from(Event).where(Event.kind == f"v{i}")) != 1:
                seen_missing.append(i)

    assert run_together(12, work) == [None] * 12
    assert not seen_missing
