"""Nothing escapes the artifact directory, oversized requests are refused, failed writes leave nothing
behind, and the event log cannot be edited."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import pytest
from regtools import DP, make_block, new_run
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from starlette.testclient import TestClient

from dblocks.server.registry import events
from dblocks.server.registry.app import create_app
from dblocks.server.registry.config import MiB
from dblocks.server.registry.models import Audit, AuditArtifact, Block, BlockVersion, Event, Run
from dblocks.server.registry.store import ContentStore
from dblocks.shared.registry_client import InvalidRequest, RegistryClient, RegistryError
from dblocks.shared.versions import VersionMeta

EVIL_NAMES = [
    "../../evil.png",
    "../evil.png",
    "/etc/evil.png",
    "..",
    ".",
    ".hidden.png",
    "a/b.png",
    "a\\b.png",
    "..%2F..%2Fevil.png",
    "%2e%2e/evil.png",
    "evil.png\x00.txt",
    "",
    "x" * 200,
    "CON:evil",
    "~/evil.png",
]


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def count(app, model, *where) -> int:
    with app.state.registry.db.reader() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where))


@pytest.fixture
def version(service):
    rid = new_run(service)["id"]
    spec, w = make_block(0)
    return service.register_block_version(rid, 0, spec, w, VersionMeta(round=1, **DP))


def test_artifact_names_cannot_escape(app, http, tokens, version, tmp_path):
    """Each hostile name is refused with 422 and no file appears anywhere but the store."""
    before = tree(tmp_path)
    meta = {
        "block_version_id": version["id"],
        "attack": "a",
        "observation_point": "o",
        "adversary": "x",
        "config_hash": "h",
        "verdict": "pass",
    }
    for name in EVIL_NAMES:
        r = http.post(
            "/api/audits",
            headers={"Authorization": f"Bearer {tokens['researcher']}"},
            data={"meta": json.dumps(meta)},
            files=[("artifacts", (name, b"payload-" + name.encode(errors="ignore"), "image/png"))],
        )
        assert r.status_code == 422, (name, r.status_code, r.text)
        assert "filename" in r.text or "artifacts" in r.text  # (an empty name makes the part a plain field)
        assert tree(tmp_path) == before, name
    assert count(app, Audit) == 0
    for outside in (
        Path("/etc/evil.png"),
        tmp_path.parent / "evil.png",
        tmp_path.parent.parent / "evil.png",
        Path.cwd() / "evil.png",
    ):
        assert not outside.exists(), outside


def test_stored_artifacts_live_only_under_their_hash(app, clients, version, tmp_path):
    a = clients["researcher"].post_audit(
        version["id"], "a", "o", "x", {}, "h", [], {}, {}, "pass", {"recon.png": b"data"}
    )
    store_root = app.state.registry.store.root
    stored = [p for p in store_root.rglob("*") if p.is_file()]
    assert all(p.resolve().is_relative_to(store_root) for p in stored)
    assert not any("recon" in str(p) for p in tmp_path.rglob("*")), "a user-supplied name became a path"
    assert clients["viewer"].download_artifact(a["id"], "recon.png") == b"data"


@pytest.mark.parametrize(
    "url",
    [
        "/api/audits/1/artifacts/..%2F..%2Fregistry.db",
        "/api/audits/1/artifacts/%2e%2e%2fregistry.db",
        "/api/audits/1/artifacts/../../registry.db",
        "/api/versions/..%2F1/weights",
    ],
)
def test_download_urls_cannot_escape(http, tokens, version, url):
    r = http.get(url, headers={"Authorization": f"Bearer {tokens['viewer']}"})
    assert r.status_code in (404, 422) and b"SQLite format" not in r.content


def test_store_refuses_anything_but_a_digest(tmp_path):
    store = ContentStore(tmp_path / "store")
    for bad in ["../x", "a" * 63, "A" * 64, "g" * 64, "../" + "a" * 61, "a" * 64 + "/..", ""]:
        with pytest.raises(ValueError, match="not a sha256 hex digest"):
            store.path_for(bad)
    digest = store.put(b"hello")
    assert store.get(digest) == b"hello" and store.path_for(digest).is_relative_to(store.root)
    assert [p.name for p in (tmp_path / "store").rglob(".incoming-*")] == []


@pytest.fixture
def small_app(settings):
    """The app with a 1 MiB upload limit (JSON bodies: 2 MiB by default)."""
    app = create_app(dataclasses.replace(settings, max_upload_bytes=1 * MiB))
    yield app
    app.state.registry.db.dispose()


def test_oversized_requests_get_413(small_app, tmp_path):
    from dblocks.server.registry.auth import issue_token

    with small_app.state.registry.db.writer() as s:
        token = issue_token(s, name="svc", role="service", created_by="t")[1]
    http = TestClient(small_app)
    h = {"Authorization": f"Bearer {token}"}
    svc = RegistryClient("http://testserver", token, http=TestClient(small_app))
    rid = new_run(svc)["id"]
    spec, _ = make_block(0)
    big = os.urandom(1 * MiB + 10)
    r = http.post(
        f"/api/runs/{rid}/blocks/0/versions",
        headers=h,
        files={"weights": ("w", big)},
        data={"meta": json.dumps({"round": 1}), "spec": spec},
    )
    assert r.status_code == 413 and "larger than the limit" in r.json()["detail"]
    # the same without Content-Length (chunked): cut off while streaming
    boundary = "b0undary"
    body = (
        (f'--{boundary}\r\nContent-Disposition: form-data; name="weights"; filename="w"\r\n\r\n').encode()
        + big
        + f"\r\n--{boundary}--\r\n".encode()
    )
    r = http.post(
        f"/api/runs/{rid}/blocks/0/versions",
        headers={**h, "Content-Type": f"multipart/form-data; boundary={boundary}"},
        content=iter([body[i : i + 65536] for i in range(0, len(body), 65536)]),
    )
    assert r.status_code == 413
    r = http.post(
        "/api/runs",
        headers=h,
        content=b'{"task": "' + b"x" * (3 * MiB) + b'"}',
    )
    assert r.status_code == 413
    assert count(small_app, BlockVersion) == 0


def test_failed_version_registration_leaves_nothing(app, service, monkeypatch):
    rid = new_run(service)["id"]
    spec, w = make_block(0)
    events_before = count(app, Event)

    def boom(*a, **k):
        raise RuntimeError("disk full while logging")

    monkeypatch.setattr(events, "record", boom)
    client = RegistryClient(
        "http://testserver",
        service._http.headers["Authorization"].split()[1],
        http=TestClient(app, raise_server_exceptions=False),
    )
    with pytest.raises(RegistryError):  # the registry answers 500
        client.register_block_version(rid, 0, spec, w, VersionMeta(round=1, cohort=[], **DP))
    monkeypatch.undo()
    assert count(app, BlockVersion) == 0 and count(app, Event) == events_before
    with app.state.registry.db.reader() as s:
        assert (
            s.execute(select(Block.param_count).where(Block.run_id == rid, Block.block_index == 0)).scalar_one() is None
        )
    assert (
        service.register_block_version(rid, 0, spec, w, VersionMeta(round=1, **DP))["version"] == 1
    )  # and the retry works


def test_failed_run_creation_leaves_nothing(app, service, monkeypatch):
    runs_before = count(app, Run)
    monkeypatch.setattr(events, "record", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    client = RegistryClient(
        "http://testserver",
        service._http.headers["Authorization"].split()[1],
        http=TestClient(app, raise_server_exceptions=False),
    )
    with pytest.raises(RegistryError):  # the registry answers 500
        new_run(client)
    assert count(app, Run) == runs_before and count(app, Block) == 0


def test_audit_with_one_bad_file_is_refused_whole(app, clients, version):
    with pytest.raises(InvalidRequest, match="filename"):
        clients["researcher"].post_audit(
            version["id"],
            "a",
            "o",
            "x",
            {},
            "h",
            [],
            {},
            {},
            "pass",
            {"good.png": b"1", "also-good.json": b"{}", "../bad.png": b"2"},
        )
    assert count(app, Audit) == 0 and count(app, AuditArtifact) == 0


def test_event_log_is_append_only_in_the_database(app, service):
    new_run(service)
    db = app.state.registry.db
    for statement in ("UPDATE events SET actor = 'mallory'", "DELETE FROM events"):
        with pytest.raises(DBAPIError, match="append-only"):
            with db.writer() as s:
                s.execute(text(statement))
    assert count(app, Event) == 1


def test_ten_megabyte_weights_are_welcome(app, service, clients):
    """A realistic large block (10 MiB of weights) registers and comes back intact under the default limit."""
    rid = new_run(service)["id"]
    spec, _ = make_block(0)
    weights = os.urandom(10 * MiB)
    d = json.loads(spec)
    d["sha256"] = hashlib.sha256(weights).hexdigest()  # the registry checks the hash, not the tensors
    v = service.register_block_version(rid, 0, json.dumps(d), weights, VersionMeta(round=1, **DP))
    assert v["size_bytes"] == 10 * MiB
    assert clients["researcher"].download_weights(v["id"]) == weights
