"""`dbaudit run --block-version ID --registry URL --token T` against the real registry app (SQLite, in process)."""

import json
import warnings

import pytest

warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
from starlette.testclient import TestClient  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

import dblocks.shared.registry_client as registry_client  # noqa: E402
from dblocks.privacy.cli import app as dbaudit  # noqa: E402
from dblocks.server.registry.app import create_app  # noqa: E402
from dblocks.server.registry.auth import issue_token  # noqa: E402
from dblocks.server.registry.config import RegistrySettings  # noqa: E402
from dblocks.shared.versions import VersionMeta  # noqa: E402
from dblocks.shared.wire import pack_block  # noqa: E402


@pytest.fixture
def registry(tmp_path, trained_blocks, monkeypatch):
    app = create_app(RegistrySettings.in_directory(tmp_path / "reg"))
    with app.state.registry.db.writer() as s:
        tokens = {
            role: issue_token(s, name=role, role=role, created_by="tests")[1] for role in ("service", "researcher")
        }
    # the CLI builds RegistryClient(url, token): route it into the in-process app
    real = registry_client.RegistryClient
    monkeypatch.setattr(
        registry_client, "RegistryClient", lambda url, token, **kw: real(url, token, http=TestClient(app))
    )
    svc = real("http://testserver", tokens["service"], http=TestClient(app))
    block = trained_blocks["classifier"]
    run = svc.create_run(
        task="digits-tiny",
        dataset={"name": "digits"},
        num_blocks=3,
        schedule=block.schedule.to_dict(),
        secagg={},
        dp={},
        num_rounds=1,
    )
    spec, weights = pack_block("digits-tiny", block.schedule, 1, block)
    version = svc.register_block_version(run["id"], 1, spec.to_json(), weights, VersionMeta(round=1))
    yield svc, tokens, version
    app.state.registry.db.dispose()


def test_audit_of_a_registry_block_version_is_posted_with_its_grids(registry, tmp_path):
    svc, tokens, version = registry
    r = CliRunner().invoke(
        dbaudit,
        [
            "run",
            "--attack",
            "closed-form",
            "--observe",
            "raw",
            "--block-version",
            str(version["id"]),
            "--registry",
            "http://testserver",
            "--token",
            tokens["researcher"],
            "--data",
            "digits",
            "--targets",
            "2",
            "--out",
            str(tmp_path / "a"),
        ],
        catch_exceptions=False,
    )
    assert r.exit_code == 1, r.output  # the raw update leaks: the audit fails, and is recorded as such
    audits = svc.list_audits(version["id"])
    assert len(audits) == 1
    a = audits[0]
    assert a["verdict"] == "fail" and a["attack"] == "closed-form" and a["observation_point"] == "raw"
    local = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert a["config_hash"] == local["config_hash"]
    assert {x["filename"] for x in a["artifacts"]} == {"reconstructions.png", "control.png"}
