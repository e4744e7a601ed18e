"""kill -9 the registry while four clients write to it, restart it, and check that every acknowledged
write is there, intact, with exactly one matching event; then keep writing. Real processes, real database."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from regproc import uvicorn_server
from regseed import ssh_key
from regtools import DP, make_block, new_run
from sqlalchemy import func, select, text

from dblocks.server.registry.app import open_registry
from dblocks.server.registry.auth import issue_token
from dblocks.server.registry.config import RegistrySettings
from dblocks.server.registry.models import BlockVersion, Event, NodePrivacy, RoundReport
from dblocks.shared.registry_client import RegistryClient
from dblocks.shared.versions import VersionMeta

LOAD_SECONDS = 2.0
VERSION_ROUNDS = 40


def writer(stop: threading.Event, acked: list, step) -> None:
    """Call step(i) until the server dies or we are told to stop; keep what came back acknowledged."""
    i = 0
    while not stop.is_set():
        try:
            acked.append(step(i))
        except (httpx.HTTPError, OSError):
            return  # the server was killed mid-request: this write was never acknowledged
        i += 1


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_kill_9_under_load_loses_no_acknowledged_write(backend, tmp_path, request):
    env = {"DBLOCKS_HOME": str(tmp_path)}
    if backend == "postgresql":
        env["DBLOCKS_DATABASE_URL"] = request.getfixturevalue("postgres").create_database("durability")
    settings = RegistrySettings.from_env(env)
    reg = open_registry(settings)
    with reg.db.writer() as s:
        svc_token = issue_token(s, name="federation", role="service", created_by="t")[1]
        op_token = issue_token(s, name="operator", role="operator", created_by="t")[1]
    blocks = [make_block(b) for b in range(4)]  # a round may repeat a block's bytes: versions are unique per round

    server = uvicorn_server(env, tmp_path / "server.log").start()
    svc = RegistryClient(server.url, svc_token, connect_retries=0)
    run = new_run(svc)
    rid = run["id"]
    node = svc.register_node("n", "org", ssh_key())["id"]
    svc.set_status(rid, "running")
    svc.register_block_version(
        rid, 0, *make_block(0), VersionMeta(round=10_000, **DP)
    )  # the first registration imports torch

    def client(token):
        return RegistryClient(server.url, token, connect_retries=0, timeout=10)

    rounds, versions, privacy, controls = [], [], [], []
    c_rounds, c_versions, c_privacy, c_op = client(svc_token), client(svc_token), client(svc_token), client(op_token)
    stop = threading.Event()
    steps = [
        (rounds, lambda i: c_rounds.report_round(rid, i, i % 4, [node], "completed", stats={"i": i})),
        (
            versions,
            lambda i: (
                c_versions.register_block_version(rid, i % 4, *blocks[i % 4], VersionMeta(round=i, cohort=[node], **DP))
                if i < VERSION_ROUNDS
                else stop.wait(0.05)
            ),
        ),
        (privacy, lambda i: c_privacy.record_node_privacy(node, rid, i % 4, i, 0.01 * i, 1e-5, "prv")),
        (controls, lambda i: c_op.control(rid, "pause" if i % 2 == 0 else "resume")),
    ]
    threads = [threading.Thread(target=writer, args=(stop, acked, step)) for acked, step in steps]
    for t in threads:
        t.start()
    time.sleep(LOAD_SECONDS)
    server.kill()  # SIGKILL, writers still going
    stop.set()  # (a writer whose request failed has stopped already; this stops one that was idle)
    for t in threads:
        t.join(timeout=30)
    versions = [v for v in versions if isinstance(v, dict)]
    print(
        f"acknowledged before kill -9: {len(rounds)} rounds, {len(versions)} versions, {len(privacy)} privacy, "
        f"{len(controls)} controls"
    )
    assert len(rounds) > 10 and len(privacy) > 10 and len(controls) > 4 and len(versions) > 2, (
        "too little load to mean anything"
    )

    server = uvicorn_server(env, tmp_path / "server2.log").start()
    try:
        after = RegistryClient(server.url, svc_token)
        got_rounds = {r["id"]: r for r in after.list_rounds(rid)}
        for r in rounds:
            assert got_rounds.get(r["id"]) == r, f"acknowledged round report {r['id']} lost or changed"
        for v in versions:
            assert after.get_block_version(v["id"])["sha256"] == v["sha256"]
            assert after.download_weights(v["id"], v["sha256"])  # the file is there and hashes right
        with reg.db.reader() as s:
            privacy_ids = set(s.scalars(select(NodePrivacy.id)))
            assert {p["id"] for p in privacy} <= privacy_ids
            # the event log: exactly one event per row, none for a row that does not exist
            for model, kind in ((RoundReport, "round.reported"), (BlockVersion, "version.registered")):
                row_ids = sorted(str(i) for i in s.scalars(select(model.id)))
                event_ids = sorted(s.scalars(select(Event.subject_id).where(Event.kind == kind)))
                assert row_ids == event_ids, f"{model.__tablename__} and their {kind} events disagree"
            assert s.scalar(select(func.count()).select_from(Event).where(Event.kind == "node.privacy")) == len(
                privacy_ids
            )
            controls_logged = list(s.scalars(select(Event.after).where(Event.kind == "run.control").order_by(Event.id)))
            assert len(controls_logged) >= len(controls)
            last_status = controls[-1]["status"]
            assert after.control_state(rid)["status"] in (
                last_status,
                "running" if last_status == "paused" else "paused",
            )
            assert controls_logged[-1]["status"] == after.control_state(rid)["status"]
            if backend == "sqlite":
                assert s.execute(text("PRAGMA integrity_check")).scalar() == "ok"
                ids_at = s.execute(select(Event.id, Event.at).order_by(Event.id)).all()
                assert all(a.at <= b.at for a, b in zip(ids_at, ids_at[1:])), "event times go backwards"
        # and it keeps working
        assert after.report_round(rid, 99_999, 1, [node], "completed")["id"] > max(got_rounds, default=0)
    finally:
        server.kill()
        reg.db.dispose()
