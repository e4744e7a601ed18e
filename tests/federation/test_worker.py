"""The resident company worker as a real process, driven by the real forwarder (`clientapp.forward`), without a
federation: the secret and the user are checked, a killed worker is restarted by its supervisor and answers the
next message, a message id is answered at most once, and a message the killed worker had started is refused.
(tests/federation/test_processes.py kills a worker between two messages of a real federated run.)"""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from dblocks.client.clientapp import forward
from dblocks.client.worker import WorkerSupervisor
from dblocks.client.workerwire import SECRET_ENV, WorkerFailed, exchange, recv_json, send_json


@pytest.fixture
def worker(tmp_path, monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity  # a ServerApp-side message needs its sender's identity

    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    lines: list[str] = []
    sup = WorkerSupervisor(journal=tmp_path / "journal.jsonl", data=None, emit=lines.append, restart_delay=0.1)
    sup.lines = lines
    monkeypatch.setenv(SECRET_ENV, sup.secret)
    sup.start()
    yield sup
    sup.stop()


def context(tmp_path, sup, node_id=7) -> Context:
    nc = {
        "ledger-path": str(tmp_path / "ledger.json"),
        "epsilon-budget": 8.0,
        "worker-socket": sup.socket_path,
        "worker-wait": 60.0,
    }
    return Context(run_id=1, node_id=node_id, node_config=nc, state=RecordDict(), run_config={})


def ping(message_id: str) -> Message:
    msg = Message(RecordDict({"ping": ConfigRecord({})}), dst_node_id=7, message_type="query.ping")
    msg.metadata.__dict__["_message_id"] = message_id  # the SuperLink sets it on a real message
    return msg


def journal(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "journal.jsonl").read_text().splitlines()]


def test_worker_answers_once_restarts_and_refuses_strangers(worker, tmp_path):
    ctx = context(tmp_path, worker)
    reply = forward(ping("m1"), ctx)
    assert reply.content["ping"]["budget_left"] == 8.0 and reply.metadata.reply_to_message_id == "m1"
    # the socket and its folder are the company user's only
    assert os.stat(worker.socket_path).st_mode & 0o777 == 0o600
    assert os.stat(worker.directory).st_mode & 0o777 == 0o700
    # the same message id again: the first answer, not a second computation
    again = forward(ping("m1"), ctx)
    assert again.content["ping"]["budget_left"] == 8.0
    assert [e["event"] for e in journal(tmp_path) if e["id"] == "m1"] == ["started", "finished"]
    # a peer without this join's secret is refused before anything is read
    with pytest.raises(WorkerFailed, match="not this join's secret"):
        exchange(worker.socket_path, "0" * 64, b"", b"", 5)
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(worker.socket_path)
        send_json(s, {"v": 1, "secret": worker.secret[:-1] + "x"})
        assert recv_json(s) == {"ok": False, "error": "not this join's secret: refused"}

    # killed between two messages: the supervisor starts a new worker, which answers the next message
    old = worker.pid
    os.kill(old, signal.SIGKILL)
    assert forward(ping("m2"), ctx).content["ping"]["budget_left"] == 8.0
    assert worker.pid != old and worker.restarts == 1 and "restarting" in worker.lines[0]
    # ... and the finished id m1 is still never answered twice, by the new worker either
    with pytest.raises(WorkerFailed, match="already answered"):
        forward(ping("m1"), ctx)

    # a message the killed worker had started but not finished (half-done) is refused by the next one
    with open(tmp_path / "journal.jsonl", "a") as f:
        f.write(json.dumps({"id": "m3", "event": "started"}) + "\n")
    os.kill(worker.pid, signal.SIGKILL)
    end = time.time() + 30
    while worker.restarts < 2 and time.time() < end:
        time.sleep(0.05)
    with pytest.raises(WorkerFailed, match="half-done task is never sent twice"):
        forward(ping("m3"), ctx)
    assert forward(ping("m4"), ctx).content["ping"]["budget_left"] == 8.0


def test_forwarder_without_secret_refuses(tmp_path, monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.delenv(SECRET_ENV, raising=False)
    nc = {"ledger-path": str(tmp_path / "ledger.json"), "worker-socket": str(tmp_path / "none.sock")}
    with pytest.raises(WorkerFailed, match="not started by `dbclient join`"):
        forward(ping("m9"), Context(run_id=1, node_id=7, node_config=nc, state=RecordDict(), run_config={}))


def test_flat_weights_split_by_the_blocks_shapes():
    import numpy as np

    from dblocks.client.trainer import split_flat

    parts = [np.arange(6, dtype=np.float32).reshape(2, 3), np.arange(4, dtype=np.float32)]
    flat = np.concatenate([p.ravel() for p in parts])
    got = split_flat(flat, [(2, 3), (4,)])
    assert all(np.array_equal(g, p) for g, p in zip(got, parts))
    with pytest.raises(ValueError, match="the weights hold 10 values"):
        split_flat(flat, [(2, 3), (5,)])
