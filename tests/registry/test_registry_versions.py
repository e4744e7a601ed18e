"""Block version registration: idempotent per (run, block, round), hash-checked, spec-checked, race-safe."""

from __future__ import annotations

import hashlib
import json
import threading

import pytest
from regtools import DP, make_block, new_run
from sqlalchemy import func, select
from starlette.testclient import TestClient

from dblocks.server.registry.models import BlockVersion, Event
from dblocks.shared.registry_client import (
    Conflict,
    IntegrityError,
    InvalidRequest,
    NotFound,
    RegistryClient,
    RegistryError,
)
from dblocks.shared.versions import VersionMeta


def count(app, model, *where) -> int:
    with app.state.registry.db.reader() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where))


def test_reregistering_the_same_round_returns_the_existing_version(app, service):
    rid = new_run(service)["id"]
    spec, w = make_block(1)
    first = service.register_block_version(rid, 1, spec, w, VersionMeta(round=4, cohort=["a"], **DP))
    again = service.register_block_version(rid, 1, spec, w, VersionMeta(round=4, cohort=["a"], **DP))
    assert first["created"] and not again["created"]
    assert again["id"] == first["id"] and again["version"] == first["version"] == 1
    assert count(app, BlockVersion, BlockVersion.run_id == rid) == 1
    assert count(app, Event, Event.kind == "version.registered", Event.run_id == rid) == 1


def test_other_weights_for_a_registered_round_conflict(app, service):
    rid = new_run(service)["id"]
    spec, w = make_block(1, seed=0)
    spec2, w2 = make_block(1, seed=1)
    v = service.register_block_version(rid, 1, spec, w, VersionMeta(round=4, **DP))
    with pytest.raises(Conflict, match=f"already has version 1 for round 4 with sha256 {v['sha256']}"):
        service.register_block_version(rid, 1, spec2, w2, VersionMeta(round=4, **DP))
    assert count(app, BlockVersion, BlockVersion.run_id == rid) == 1
    assert service.register_block_version(rid, 1, spec2, w2, VersionMeta(round=5, **DP))["version"] == 2


def test_weights_must_match_the_spec_hash(app, service):
    rid = new_run(service)["id"]
    spec, w = make_block(0)
    tampered = w[:-1] + bytes([w[-1] ^ 1])
    with pytest.raises(
        InvalidRequest, match="weights do not match the spec: their sha256 is [0-9a-f]{64}, spec.sha256 is"
    ):
        service.register_block_version(rid, 0, spec, tampered, VersionMeta(round=1, **DP))
    assert count(app, BlockVersion) == 0
    assert not app.state.registry.store.exists(hashlib.sha256(tampered).hexdigest()), "rejected weights were stored"


def test_spec_must_describe_this_block_of_this_run(service):
    rid = new_run(service)["id"]
    spec, w = make_block(0)
    with pytest.raises(InvalidRequest, match="spec.block_index is 0 but the URL names block 2"):
        service.register_block_version(rid, 2, spec, w, VersionMeta(round=1, **DP))
    other_task_spec, w3 = make_block(0, task="cifar")
    with pytest.raises(InvalidRequest, match="spec.task is 'cifar'"):
        service.register_block_version(rid, 0, other_task_spec, w3, VersionMeta(round=1, **DP))
    d = json.loads(spec)
    d["owned_interval"] = [1.0, 2.0]
    with pytest.raises(InvalidRequest, match="owned_interval"):
        service.register_block_version(rid, 0, json.dumps(d), w, VersionMeta(round=1, **DP))
    with pytest.raises(InvalidRequest, match="not a valid BlockSpec"):
        service.register_block_version(rid, 0, "{not json", w, VersionMeta(round=1, **DP))
    with pytest.raises(InvalidRequest, match="out of range"):
        service.register_block_version(rid, 7, spec, w, VersionMeta(round=1, **DP))
    with pytest.raises(NotFound, match="run 999"):
        service.register_block_version(999, 0, spec, w, VersionMeta(round=1, **DP))


def test_privacy_fields_come_with_their_accounting(service):
    # model_construct skips the record's own checks: the route refuses such a record as well
    rid = new_run(service)["id"]
    spec, w = make_block(0)
    with pytest.raises(
        InvalidRequest, match="record_epsilon needs record_delta, record_sample_rate, record_steps, accountant"
    ):
        service.register_block_version(rid, 0, spec, w, VersionMeta.model_construct(round=1, record_epsilon=2.0))
    with pytest.raises(InvalidRequest, match="client_epsilon needs client_delta"):
        service.register_block_version(rid, 0, spec, w, VersionMeta.model_construct(round=1, **DP, client_epsilon=1.0))
    with pytest.raises(InvalidRequest, match="meta.record_delta"):
        service.register_block_version(
            rid, 0, spec, w, VersionMeta.model_construct(round=1, **{**DP, "record_delta": 1.5})
        )


def test_parent_must_be_a_version_of_the_same_block(service):
    rid = new_run(service)["id"]
    s0, w0 = make_block(0)
    s1, w1 = make_block(1)
    v0 = service.register_block_version(rid, 0, s0, w0, VersionMeta(round=1, **DP))
    with pytest.raises(InvalidRequest, match=f"parent_version_id {v0['id']} is a version of block 0, not block 1"):
        service.register_block_version(rid, 1, s1, w1, VersionMeta(round=1, parent_version_id=v0["id"], **DP))
    with pytest.raises(NotFound, match="parent version 12345"):
        service.register_block_version(rid, 1, s1, w1, VersionMeta(round=1, parent_version_id=12345, **DP))


def test_concurrent_registrations_of_one_round_make_one_version(app, tokens):
    """Eight clients register the same round at once (a retried request racing its original)."""
    svc = RegistryClient("http://testserver", tokens["service"], http=TestClient(app))
    rid = new_run(svc)["id"]
    spec, w = make_block(2)
    results, errors = [], []
    svc.latest_block_version(rid, 2)  # resolve the routes once: each TestClient runs its own event loop thread

    def register():
        try:
            c = RegistryClient("http://testserver", tokens["service"], http=TestClient(app))
            results.append(c.register_block_version(rid, 2, spec, w, VersionMeta(round=1, **DP)))
        except Exception as e:  # noqa: BLE001 (collected and asserted below)
            errors.append(e)

    threads = [threading.Thread(target=register) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len({r["id"] for r in results}) == 1 and sum(r["created"] for r in results) == 1
    assert count(app, BlockVersion, BlockVersion.run_id == rid) == 1


def test_concurrent_rounds_get_consecutive_version_numbers(app, tokens):
    svc = RegistryClient("http://testserver", tokens["service"], http=TestClient(app))
    rid = new_run(svc)["id"]
    errors = []

    def register(rnd):
        try:
            spec, w = make_block(3, seed=rnd)
            RegistryClient("http://testserver", tokens["service"], http=TestClient(app)).register_block_version(
                rid, 3, spec, w, VersionMeta(round=rnd, **DP)
            )
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    for rnd in range(6):
        make_block(3, seed=rnd)  # build outside the threads
    svc.latest_block_version(rid, 3)  # resolve the routes once: each TestClient runs its own event loop thread
    threads = [threading.Thread(target=register, args=(rnd,)) for rnd in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(v["version"] for v in svc.list_block_versions(run_id=rid)) == [1, 2, 3, 4, 5, 6]


def test_reads_verify_the_stored_hash(app, service, clients):
    rid = new_run(service)["id"]
    spec, w = make_block(0)
    v = service.register_block_version(rid, 0, spec, w, VersionMeta(round=1, **DP))
    path = app.state.registry.store.path_for(v["sha256"])
    path.write_bytes(w[:-3] + b"bad")  # disk damage
    with pytest.raises(RegistryError, match="is corrupt: its bytes hash to") as e:
        clients["researcher"].download_weights(v["id"])
    assert e.value.status_code == 500
    path.write_bytes(w)
    assert clients["researcher"].download_weights(v["id"]) == w
    with pytest.raises(IntegrityError):
        clients["researcher"].download_weights(v["id"], expected_sha256="0" * 64)
