"""#19: the registry never answers 500 to bad input. First the malformed requests of the issue's fuzzing pass, each
with the 4xx it must get and the words that say why; then a bounded fuzzing pass over every route (Schemathesis
from the OpenAPI schema, valid and invalid, plus hostile requests on every API and dashboard route, regfuzz.py):
no answer may be a 5xx. bench/registry_fuzz.py runs the same generator with more examples."""

from __future__ import annotations

import json
import time

import pytest
from regfuzz import BIG, FuzzReport, fuzz_registry, hostile_pass, schema_pass
from regtools import make_block, new_run, schedule
from starlette.testclient import TestClient


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    app, token, known = fuzz_registry(tmp_path_factory.mktemp("fuzz"))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield app, client, token, known
    app.state.registry.db.dispose()


def _run_body(**kw) -> dict:
    return {"task": "mnist", "num_blocks": 1, "schedule": schedule(1).to_dict(), "num_rounds": 1, **kw}


def _multipart(meta: dict, spec: str, weights: bytes) -> dict:
    return {"files": {"meta": (None, json.dumps(meta)), "spec": (None, spec), "weights": ("w", weights)}}


def _issue_cases(run_id: int) -> list[tuple[str, str, dict, int, str]]:
    """(method, url, request kwargs, expected status, words the answer must hold)."""
    spec, weights = make_block(0, num_blocks=2)
    good = json.loads(spec)
    raw = {"headers": {"content-type": "application/json"}}
    return [
        ("GET", f"/api/runs/{BIG}", {}, 422, "less than or equal to 2147483647"),
        ("GET", f"/api/runs/{BIG}/control", {}, 422, "run_id"),
        ("GET", f"/api/runs/{run_id}/rounds?round={BIG}", {}, 422, "round"),
        ("GET", f"/api/runs?offset={BIG}", {}, 422, "offset"),
        ("GET", f"/api/versions?run_id={BIG}", {}, 422, "run_id"),
        ("GET", "/api/versions?max_epsilon=nan", {}, 422, "finite"),
        ("GET", f"/runs/{BIG}", {}, 404, "does not exist"),
        ("GET", f"/versions/{BIG}", {}, 404, "does not exist"),
        ("GET", f"/audits/{BIG}", {}, 404, "does not exist"),
        ("GET", f"/ui/runs/{BIG}/charts", {}, 404, "does not exist"),
        ("POST", f"/api/runs/{run_id}/rounds", {"json": {"round": BIG, "block_index": 0, "status": "completed"}}, 422,
         "round"),
        ("POST", "/api/runs", {"json": _run_body(num_blocks=True)}, 422, "num_blocks"),
        ("POST", "/api/runs", {"content": '{"task": "t", "num_blocks": 1, "num_rounds": NaN, "schedule": {}}', **raw},
         422, "finite"),
        ("POST", "/api/runs", {"content": json.dumps(_run_body(name="a\ud800b")), **raw}, 422, "surrogate"),
        ("POST", f"/api/runs/{run_id}/blocks/0/versions", _multipart({"round": 1, "parent_version_id": BIG}, spec,
         weights), 422, "parent_version_id"),
        ("POST", f"/api/runs/{run_id}/blocks/0/versions", _multipart({"round": 1}, "[1, 2]", weights), 422,
         "object"),
        ("POST", f"/api/runs/{run_id}/blocks/0/versions", _multipart({"round": 1}, '"a spec"', weights), 422,
         "object"),
        ("POST", f"/api/runs/{run_id}/blocks/0/versions",
         _multipart({"round": 1}, json.dumps({**good, "num_blocks": "two"}), weights), 422, "num_blocks"),
        ("POST", f"/api/runs/{run_id}/blocks/0/versions",
         _multipart({"round": 1}, json.dumps({**good, "owned_interval": ["a", "b"]}), weights), 422,
         "owned_interval"),
    ]  # fmt: skip


def test_the_issues_malformed_requests_get_a_4xx_that_says_why(app, tokens, clients, settings):
    """On SQLite and on PostgreSQL (whose INTEGER is 32-bit and whose text refuses NUL characters)."""
    client = TestClient(app, raise_server_exceptions=False)
    token = tokens["admin"]
    run_id = new_run(clients["service"], num_blocks=2)["id"]
    auth = {"Authorization": f"Bearer {token}"}
    cases = _issue_cases(run_id) + [
        ("GET", "/api/nodes/a%00b", {}, 422 if "postgresql" in settings.database_url else 404, ""),
        ("POST", "/api/runs", {"json": _run_body(task="a\x00b")}, 422 if "postgresql" in settings.database_url else 201,
         ""),
    ]  # fmt: skip
    for method, url, kw, status, words in cases:
        headers = {**auth, **kw.pop("headers", {})}
        r = client.request(method, url, headers=headers, **kw)
        assert (r.status_code, words in r.text) == (status, True), (method, url, r.status_code, r.text[:300])
    for header in ("Bearer ", "Bearer", "Bearer \t", "Basic x"):
        r = client.get("/api/runs", headers={"Authorization": header})
        assert r.status_code == 401 and "Bearer <token>" in r.text, (header, r.text)


def test_an_unexpected_error_is_a_500_with_an_incident_id_and_no_stack(fuzzed):
    """The one handler of last resort: whatever a handler raises, the answer names an incident id, never the
    exception's text or a stack (the log has them)."""
    app, _, token, _ = fuzzed

    @app.get("/api/boom-for-test", include_in_schema=False)
    def boom():
        raise RuntimeError("secret internals /etc/passwd")

    try:
        r = TestClient(app, raise_server_exceptions=False).get("/api/boom-for-test")
    finally:
        app.router.routes.pop()
    assert r.status_code == 500 and "incident" in r.json()["detail"]
    assert "secret" not in r.text and "Traceback" not in r.text and "RuntimeError" not in r.text


def test_fuzzing_every_route_finds_no_5xx(fuzzed):
    app, client, token, known = fuzzed
    report = FuzzReport()
    t0 = time.monotonic()
    schema_pass(client, app, token, report, examples=1, modes=("negative",))  # ~40 ms a request: the costly half
    hostile_pass(client, app, token, known, report, examples=5)
    seconds = time.monotonic() - t0
    assert report.requests >= 200, report.summary()
    assert report.statuses[422] > 0 and report.statuses[401] > 0 and report.statuses[404] > 0, report.summary()
    assert not report.server_errors, report.summary()
    print(f"fuzz: {report.requests} requests in {seconds:.1f} s, statuses {report.summary()['statuses']}")
