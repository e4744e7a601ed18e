"""#14.2: a company's SecAgg identity is enrolled once, and the directory companies verify is signed.

Both halves of enrolment: the registry (after `dbserver init`) and zero-config mode (`dbserver nodes approve`
without a registry, what the demo and the process tests run). On main neither existed: the registry had no
identity to enrol (the approve body's field was ignored) and a company trusted its peers on first use.
"""

from __future__ import annotations

import warnings

import pytest

warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
from starlette.testclient import TestClient  # noqa: E402

from dblocks.server.registry.app import create_app  # noqa: E402
from dblocks.server.registry.auth import issue_token  # noqa: E402
from dblocks.server.registry.config import RegistrySettings  # noqa: E402

NODE_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0b3Rlc3RrZXlmb3JlbnJvbG1lbnR0ZXN0aW5nMTIz company"


@pytest.fixture
def operator_client(tmp_path):
    app = create_app(RegistrySettings.in_directory(tmp_path))
    with app.state.registry.db.writer() as s:
        token = issue_token(s, name="op", role="operator", created_by="tests")[1]
    yield TestClient(app, headers={"Authorization": f"Bearer {token}"})
    app.state.registry.db.dispose()


def test_enrolled_secagg_identity_never_changes(operator_client):
    """#14.2: approving a node enrols its SecAgg identity; a different identity later is refused (409), since a
    changed key is exactly what a key substitution looks like. On main the approve body had no such field: the
    node came back without an identity, so nothing pinned it."""
    http = operator_client
    r = http.post("/api/nodes", json={"display_name": "acme", "organisation": "acme", "public_key": NODE_KEY})
    assert r.status_code == 201, r.text
    node = r.json()["id"]
    first, second = "ab" * 32, "cd" * 32
    r = http.post(f"/api/nodes/{node}/approve", json={"reason": "ok", "secagg_identity": first})
    assert r.status_code == 200, r.text
    assert r.json()["secagg_identity"] == first
    assert http.post(f"/api/nodes/{node}/approve", json={"secagg_identity": first}).status_code == 200  # idempotent
    r = http.post(f"/api/nodes/{node}/approve", json={"secagg_identity": second})
    assert r.status_code == 409, r.text
    assert http.get(f"/api/nodes/{node}").json()["secagg_identity"] == first


def test_zero_config_enrolment_signs_a_directory_companies_verify(tmp_path):
    """#14.2: without a registry, `dbserver nodes approve --secagg-identity` writes a directory signed with the
    operator's directory key; a company holding directory.pub accepts its own entry, detects a tampered
    directory, and the operator cannot re-enrol a node under another key. On main there was no directory."""
    from dblocks.privacy.secagg.directory import Directory, DirectoryView, read_public_key
    from dblocks.privacy.secagg.errors import ProtocolRefusal
    from dblocks.server.ops.launcher import ServerHome
    from dblocks.server.ops.provision import directory_path, directory_public_path, enroll_secagg_identity

    home = ServerHome(tmp_path / "server")
    me, peer = bytes(range(32)), bytes(range(32, 64))
    enroll_secagg_identity(home, "17", me.hex())
    enroll_secagg_identity(home, "23", peer.hex())
    blob = directory_path(home).read_bytes()
    key = read_public_key(directory_public_path(home))
    assert oct(home.root.joinpath("secrets", "directory.key").stat().st_mode & 0o777) == "0o600"

    accepted = DirectoryView(key).accept(blob, "17", me)
    assert accepted["23"] == peer

    with pytest.raises(ValueError, match="another SecAgg identity"):
        enroll_secagg_identity(home, "23", me.hex())
    assert Directory.from_bytes(directory_path(home).read_bytes()).entries["23"] == peer

    forged = Directory.from_bytes(blob)
    forged.entries["23"] = me  # the server swaps a neighbour's key but cannot re-sign
    with pytest.raises(ProtocolRefusal):
        DirectoryView(key).accept(forged.to_bytes(), "17", me)
