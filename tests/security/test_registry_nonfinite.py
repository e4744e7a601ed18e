"""#14 low: the registry refuses JSON numbers that are not finite (NaN, Infinity, -Infinity, 1e999) with 422
naming where they sit, on every route that takes JSON with numbers: plain JSON bodies and the JSON fields of
multipart requests (block versions, audits), free-form dicts (`metrics`, `stats`, `dp`, `info`) included.

Real app, real SQLite, real block weights; the requests are raw bytes, as a client that writes `NaN` would send."""

from __future__ import annotations

import functools
import json
import warnings

import pytest

warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
from starlette.testclient import TestClient  # noqa: E402

from dblocks.server.registry.app import create_app  # noqa: E402
from dblocks.server.registry.auth import issue_token  # noqa: E402
from dblocks.server.registry.config import RegistrySettings  # noqa: E402
from dblocks.server.registry.models import ROLES  # noqa: E402

BAD = ["NaN", "Infinity", "-Infinity", "1e999"]
X = "@X@"  # where the number goes in a route's body template
DP = '"clip_norm": 1.0, "noise_multiplier": 1.1, "record_delta": 1e-05, "record_sample_rate": 0.01, "record_steps": 300'


@functools.cache
def schedule_json() -> str:
    from dblocks.shared.schedule import NoiseSchedule

    return json.dumps(NoiseSchedule(num_blocks=2).to_dict())


@functools.cache
def block() -> tuple[str, bytes]:
    """(spec JSON, safetensors bytes) of a real, small block 0 of a 2-block run."""
    import torch

    from dblocks.shared.models import ArchConfig, build_block
    from dblocks.shared.schedule import NoiseSchedule
    from dblocks.shared.wire import pack_block

    torch.manual_seed(0)
    sched = NoiseSchedule(num_blocks=2)
    arch = ArchConfig(kind="classifier", input="image", num_classes=10, width=8, depth=1, heads=2, image_size=8)
    spec, data = pack_block("mnist", sched, 0, build_block(arch, sched))
    return spec.to_json(), data


def spec_with_placeholder() -> str:
    spec = json.loads(block()[0])
    spec["owned_interval"][0] = X
    return json.dumps(spec).replace(f'"{X}"', X)


# name -> (role, path, what is sent, where the number sits). Bodies are JSON text with X where the number goes;
# multipart routes send {field: text} (None: the block's spec with X in it) plus the weights where needed.
RUN = '{"task": "mnist", "num_blocks": 2, "num_rounds": 3, "schedule": {SCHEDULE}'
VERSIONS = "/api/runs/{run}/blocks/0/versions"
AUDIT = (
    '{"block_version_id": {version}, "attack": "mia", "observation_point": "release", "adversary": "server", '
    '"config_hash": "abc", "verdict": "pass", '
)
ROUTES = {
    "run dp (free-form)": (
        "service",
        "/api/runs",
        "json",
        RUN + f', "dp": {{"target_epsilon": {X}}}}}',
        ["dp", "target_epsilon"],
    ),
    "run num_rounds": ("service", "/api/runs", "json", RUN.replace("3", X) + "}", ["num_rounds"]),
    "control num_rounds": ("operator", "/api/runs/{run}/control", "json", f'{{"num_rounds": {X}}}', ["num_rounds"]),
    "round stats (free-form)": (
        "service",
        "/api/runs/{run}/rounds",
        "json",
        '{"round": {ROUND}, "block_index": 0, "status": "completed", "stats": {"loss": ' + X + "}}",
        ["stats", "loss"],
    ),
    "node info (free-form)": (
        "service",
        "/api/nodes/{node}/seen",
        "json",
        f'{{"info": {{"load": [1, {X}]}}}}',
        ["info", "load", 1],
    ),
    "node privacy epsilon": (
        "service",
        "/api/nodes/{node}/privacy",
        "json",
        f'{{"run_id": {{run}}, "block_index": 0, "round": 1, "epsilon": {X}, "delta": 1e-05, "accountant": "prv"}}',
        ["epsilon"],
    ),
    "version metrics (free-form)": (
        "service",
        VERSIONS,
        "multipart",
        {"meta": '{"round": {ROUND}, "metrics": {"loss": ' + X + "}}"},
        ["meta", "metrics", "loss"],
    ),
    "version record_epsilon": (
        "service",
        VERSIONS,
        "multipart",
        {"meta": f'{{"round": {{ROUND}}, {DP}, "accountant": "prv", "record_epsilon": {X}}}'},
        ["meta", "record_epsilon"],
    ),
    "version spec": (
        "service",
        VERSIONS,
        "multipart",
        {"meta": '{"round": {ROUND}}', "spec": None},
        ["spec", "owned_interval", 0],
    ),
    "audit metrics (free-form)": (
        "researcher",
        "/api/audits",
        "multipart",
        {"meta": AUDIT + f'"metrics": {{"auc": {X}}}}}'},
        ["meta", "metrics", "auc"],
    ),
}


@pytest.fixture(scope="module")
def nonfinite_world(tmp_path_factory):
    """The app on a fresh SQLite file, a token per role, a 2-block run, a registered node and one block version."""
    app = create_app(RegistrySettings.in_directory(tmp_path_factory.mktemp("nonfinite")))
    with app.state.registry.db.writer() as s:
        tokens = {role: issue_token(s, name=role, role=role, created_by="tests")[1] for role in ROLES}
    client = TestClient(app, raise_server_exceptions=False)
    world = {"client": client, "tokens": tokens, "round": iter(range(1, 10_000))}
    run = send(world, "service", "/api/runs", "json", RUN + "}", "0")
    assert run.status_code == 201, run.text
    world["run"] = run.json()["id"]
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    node = client.post(
        "/api/nodes", json={"display_name": "n", "organisation": "o", "public_key": key}, headers=auth(world, "service")
    )
    assert node.status_code == 201, node.text
    world["node"] = node.json()["id"]
    version = send(world, "service", VERSIONS, "multipart", {"meta": '{"round": {ROUND}}'}, "0")
    assert version.status_code == 201, version.text
    world["version"] = version.json()["id"]
    yield world
    app.state.registry.db.dispose()


def auth(world, role: str) -> dict:
    return {"Authorization": f"Bearer {world['tokens'][role]}"}


def fill(template: str, world, number: str) -> str:
    text = template.replace(X, number).replace("{SCHEDULE}", schedule_json())
    text = text.replace("{ROUND}", str(next(world["round"])))
    for key in ("run", "node", "version"):
        text = text.replace("{" + key + "}", str(world.get(key)))
    return text


def send(world, role: str, path: str, kind: str, body, number: str):
    url = fill(path, world, "")
    if kind == "json":
        return world["client"].post(
            url,
            content=fill(body, world, number).encode(),
            headers={**auth(world, role), "Content-Type": "application/json"},
        )
    spec, weights = block()
    data = {
        field: fill(spec_with_placeholder() if text is None else text, world, number) for field, text in body.items()
    }
    files = None
    if "/versions" in path:
        data.setdefault("spec", spec)
        files = {"weights": ("block.safetensors", weights)}
    return world["client"].post(url, data=data, files=files, headers=auth(world, role))


def counts(world) -> dict:
    """Rows of the tables these routes write, read back through the API."""
    c, h = world["client"], auth(world, "admin")
    return {
        "runs": c.get("/api/runs", headers=h).json()["total"],
        "rounds": c.get(f"/api/runs/{world['run']}/rounds", headers=h).json()["total"],
        "versions": c.get("/api/versions", headers=h).json()["total"],
        "audits": c.get("/api/audits", headers=h).json()["total"],
        "node_info": c.get(f"/api/nodes/{world['node']}", headers=h).json()["info"],
        "privacy": c.get(f"/api/nodes/{world['node']}/privacy", headers=h).json()["runs"],
    }


def finite_for(route: str) -> str:
    if route == "version spec":
        return json.dumps(json.loads(block()[0])["owned_interval"][0])
    return "999999" if "num_rounds" in route else "0.75"


@pytest.mark.parametrize("number", BAD)
@pytest.mark.parametrize("route", list(ROUTES))
def test_non_finite_json_number_gets_422(nonfinite_world, route, number):
    """#14 low: a JSON `NaN`/`Infinity`/`-Infinity`/`1e999` anywhere in a request gets 422 naming the field path,
    and nothing is stored; the same request with a finite number is accepted (so the 422 is about the number).
    On main: NaN in a free-form dict (dp, stats, info, metrics) was accepted with 201/200 and stored (read back as
    null), NaN in a typed number field (num_rounds, node privacy epsilon, version record_epsilon) was a 500 (the
    validation error holding it could not be rendered), and NaN inside the spec was a 422 about something else."""
    role, path, kind, body, loc = ROUTES[route]
    before = counts(nonfinite_world)
    r = send(nonfinite_world, role, path, kind, body, number)
    assert r.status_code == 422, f"{route} with {number}: {r.status_code} {r.text[:300]}"
    detail = json.loads(r.text, parse_constant=lambda c: pytest.fail(f"the 422 itself holds {c}"))["detail"]
    assert isinstance(detail, list), f"{route} with {number}: 422 for another reason: {detail}"
    where = ".".join(map(str, loc))
    assert any(d["loc"] == ["body", *loc] for d in detail), f"422 does not locate body.{where}: {detail}"
    assert any(where in d["msg"] for d in detail), f"the message does not name the field: {detail}"
    assert counts(nonfinite_world) == before, f"{route} with {number} changed what the registry holds"
    ok = send(nonfinite_world, role, path, kind, body, finite_for(route))
    assert ok.status_code in (200, 201), f"{route} with a finite number: {ok.status_code} {ok.text[:300]}"


def test_nan_in_free_form_metrics_is_refused_not_stored_as_null(nonfinite_world):
    """#14 low: NaN nested in a version's free-form `metrics` is refused; a finite value is stored as sent, and the
    words NaN/Infinity inside strings (or a digest full of e-digits) are ordinary text.
    On main the NaN version was registered (201) and its metrics read back as {"curve": [0.1, {"loss": null}]}."""
    w = nonfinite_world
    sha = "3e123" * 13
    meta = (
        '{"round": {ROUND}, "metrics": {"note": "NaN Infinity 1e999", "sha": "' + sha + '", '
        '"curve": [0.1, {"loss": ' + X + "}]}}"
    )
    bad = send(w, "service", VERSIONS, "multipart", {"meta": meta}, "NaN")
    assert bad.status_code == 422, bad.text[:300]
    assert bad.json()["detail"][0]["loc"] == ["body", "meta", "metrics", "curve", 1, "loss"]
    stored = w["client"].get("/api/versions", headers=auth(w, "admin"), params={"limit": 500}).json()["items"]
    assert not any(v["metrics"].get("curve") for v in stored), "the NaN version was stored"
    good = send(w, "service", VERSIONS, "multipart", {"meta": meta}, "0.25")
    assert good.status_code == 201, good.text[:300]
    assert good.json()["metrics"] == {"note": "NaN Infinity 1e999", "sha": sha, "curve": [0.1, {"loss": 0.25}]}
