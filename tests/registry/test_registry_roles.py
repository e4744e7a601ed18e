"""Role matrix: every route of the app, every role, and no token at all.

EXPECTED is the documented access table (docs/registry.md). The first test fails when the app has a route
the table does not list (a new endpoint without a rule) or the table lists one the app lacks. The matrix
then sends a real request per (route, role) and checks 403 exactly where the table says no."""

from __future__ import annotations

import re

import pytest
from regtools import DP, make_block, new_run, settings_for
from starlette.testclient import TestClient

from dblocks.server.registry.auth import COOKIE_NAME, csrf_token_for
from dblocks.server.registry.models import ROLES

ALL = frozenset(ROLES)
OPS = frozenset({"admin", "operator"})
SVC = frozenset({"admin", "service"})
PUBLIC = "public"

EXPECTED: dict[tuple[str, str], frozenset[str] | str] = {
    ("GET", "/health"): PUBLIC,
    ("GET", "/login"): PUBLIC,
    ("POST", "/login"): PUBLIC,
    ("POST", "/logout"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    # runs
    ("POST", "/api/runs"): frozenset({"admin", "operator", "service"}),
    ("GET", "/api/runs"): ALL,
    ("GET", "/api/runs/{run_id}"): ALL,
    ("GET", "/api/runs/{run_id}/control"): ALL,
    ("POST", "/api/runs/{run_id}/control"): OPS,
    ("POST", "/api/runs/{run_id}/status"): SVC,
    ("POST", "/api/runs/{run_id}/rounds"): SVC,
    ("GET", "/api/runs/{run_id}/rounds"): ALL,
    ("GET", "/api/runs/{run_id}/privacy"): ALL,
    # block versions
    ("POST", "/api/runs/{run_id}/blocks/{block_index}/versions"): SVC,
    ("GET", "/api/runs/{run_id}/blocks/{block_index}/latest"): ALL,
    ("GET", "/api/versions"): ALL,
    ("GET", "/api/versions/{version_id}"): ALL,
    ("GET", "/api/versions/{version_id}/weights"): frozenset({"admin", "operator", "researcher", "service"}),
    ("GET", "/api/versions/{version_id}/lineage"): ALL,
    # nodes
    ("POST", "/api/nodes"): frozenset({"admin", "operator", "service"}),
    ("GET", "/api/nodes"): ALL,
    ("GET", "/api/nodes/{node_id}"): ALL,
    ("POST", "/api/nodes/{node_id}/approve"): OPS,
    ("POST", "/api/nodes/{node_id}/revoke"): OPS,
    ("POST", "/api/nodes/{node_id}/seen"): SVC,
    ("POST", "/api/nodes/{node_id}/privacy"): SVC,
    ("GET", "/api/nodes/{node_id}/privacy"): ALL,
    # audits
    ("POST", "/api/audits"): frozenset({"admin", "researcher"}),
    ("GET", "/api/audits"): ALL,
    ("GET", "/api/audits/{audit_id}"): ALL,
    ("GET", "/api/audits/{audit_id}/artifacts/{filename}"): ALL,
    # admin
    ("GET", "/api/whoami"): ALL,
    ("GET", "/api/events"): ALL,
    ("POST", "/api/tokens"): frozenset({"admin"}),
    ("GET", "/api/tokens"): frozenset({"admin"}),
    ("POST", "/api/tokens/{token_id}/revoke"): frozenset({"admin"}),
    # dashboard
    ("GET", "/"): ALL,
    ("GET", "/ui/runs"): ALL,
    ("GET", "/runs/{run_id}"): ALL,
    ("GET", "/ui/runs/{run_id}/charts"): ALL,
    ("GET", "/ui/runs/{run_id}/{panel}"): ALL,
    ("POST", "/ui/runs/{run_id}/control"): OPS,
    ("GET", "/nodes"): ALL,
    ("GET", "/ui/nodes"): ALL,
    ("POST", "/ui/nodes/{node_id}/{decision}"): OPS,
    ("GET", "/audits"): ALL,
    ("GET", "/audits/{audit_id}"): ALL,
    ("GET", "/versions/{version_id}"): ALL,
    ("GET", "/events"): ALL,
}
ROUTES = sorted(EXPECTED)


def app_routes(app) -> dict[tuple[str, str], object]:
    """(method, path) -> route, for every route the app answers (HEAD is implied by GET)."""
    try:
        from fastapi.routing import iter_route_contexts  # FastAPI >= 0.138 keeps included routers lazily

        routes = list(iter_route_contexts(app.routes))
    except ImportError:
        routes = list(app.routes)
    out = {}
    for r in routes:
        for method in getattr(r, "methods", None) or ():
            if method != "HEAD":
                out[(method, r.path)] = r
    return out


def allowed_roles(route) -> frozenset[str] | str:
    dependant = getattr(route, "dependant", None)
    rules = [d.call.roles for d in (dependant.dependencies if dependant else []) if hasattr(d.call, "roles")]
    return rules[0] if rules else PUBLIC


@pytest.fixture(scope="module")
def world(tmp_path_factory, request):
    """One app per backend with a run, a version, a node, an audit with an artifact and a spare token."""
    from dblocks.server.registry.app import create_app
    from dblocks.server.registry.auth import issue_token
    from dblocks.shared.registry_client import RegistryClient
    from dblocks.shared.versions import VersionMeta

    backend = request.param
    app = create_app(settings_for(backend, request, tmp_path_factory.mktemp(backend)))
    with app.state.registry.db.writer() as s:
        tokens = {role: issue_token(s, name=role, role=role, created_by="tests")[1] for role in ROLES}
        spare_token_id = issue_token(s, name="spare", role="viewer", created_by="tests")[0].id
    svc = RegistryClient("http://testserver", tokens["service"], http=TestClient(app))
    run = new_run(svc)
    spec, weights = make_block(0)
    version = svc.register_block_version(run["id"], 0, spec, weights, VersionMeta(round=1, **DP))
    from regseed import ssh_key

    node = svc.register_node("n1", "org", ssh_key())
    res = RegistryClient("http://testserver", tokens["researcher"], http=TestClient(app))
    audit = res.post_audit(version["id"], "dlg", "update", "server", {}, "h", [0], {}, {}, "pass", {"a.png": b"png"})
    ids = {
        "run_id": run["id"],
        "block_index": 0,
        "version_id": version["id"],
        "node_id": node["id"],
        "audit_id": audit["id"],
        "filename": "a.png",
        "token_id": spare_token_id,
        "panel": "header",
        "decision": "approve",
    }
    yield app, tokens, ids
    app.state.registry.db.dispose()


def pytest_generate_tests(metafunc):
    if "world" in metafunc.fixturenames:
        metafunc.parametrize("world", ["sqlite", "postgresql"], indirect=True, scope="module")


def test_every_route_has_a_documented_rule(world):
    app, _, _ = world
    actual = app_routes(app)
    missing = sorted(set(actual) - set(EXPECTED))
    stale = sorted(set(EXPECTED) - set(actual))
    assert not missing, f"routes without a rule in EXPECTED (add one, and to docs/registry.md): {missing}"
    assert not stale, f"EXPECTED lists routes the app does not have: {stale}"
    wrong = {
        k: (sorted(allowed_roles(r)) if allowed_roles(r) != PUBLIC else PUBLIC)
        for k, r in actual.items()
        if allowed_roles(r) != EXPECTED[k]
    }
    assert not wrong, f"routes whose Allow(...) differs from EXPECTED: {wrong}"


def request_for(client: TestClient, method: str, path: str, ids: dict, headers: dict, tokens: dict):
    url = path.format(**ids)
    if method == "GET":
        return client.get(url, headers=headers)
    if "/versions" in path and method == "POST":  # multipart, deliberately incomplete: access is checked first
        return client.post(url, headers=headers, files={"weights": ("w", b"x")}, data={"meta": "{}", "spec": "{}"})
    if path == "/api/audits":
        return client.post(url, headers=headers, data={"meta": "{}"})
    if path.startswith("/ui/"):
        return client.post(url, headers={**headers, "HX-Request": "true"}, data={"action": "pause"})
    if path == "/login":  # the form's CSRF nonce comes with the page
        nonce = re.search(r'name="csrf_token" value="([^"]+)"', client.get(url).text).group(1)
        return client.post(url, data={"token": tokens["viewer"], "csrf_token": nonce})
    return client.post(url, headers=headers, json={})


@pytest.mark.parametrize("role", [*ROLES, None])
@pytest.mark.parametrize("route", ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_role_matrix(world, route, role):
    app, tokens, ids = world
    method, path = route
    client = TestClient(app, follow_redirects=False)
    headers = {"Authorization": f"Bearer {tokens[role]}"} if role else {}
    r = request_for(client, method, path, ids, headers, tokens)
    rule = EXPECTED[route]
    if rule == PUBLIC:
        assert r.status_code not in (401, 403) and r.status_code < 500, (
            f"public {method} {path} answered {r.status_code}"
        )
    elif role is None:
        redirect_to_login = r.status_code == 303 and r.headers["location"].startswith("/login")
        assert r.status_code == 401 or redirect_to_login, f"{method} {path} without a token answered {r.status_code}"
    elif role in rule:
        assert r.status_code not in (401, 403), f"{role} was refused {method} {path}: {r.status_code} {r.text[:200]}"
        assert r.status_code < 500, f"{method} {path} crashed for {role}: {r.status_code} {r.text[:300]}"
    else:
        assert r.status_code == 403, f"{role} got {r.status_code} for {method} {path}, expected 403"
        assert role in r.json()["detail"]


def test_cookie_writes_need_the_csrf_token(world):
    """A cross-site form post carrying the login cookie is refused (CSRF); the dashboard's htmx post, which carries
    the session's CSRF token, passes."""
    app, tokens, ids = world
    client = TestClient(app, cookies={COOKIE_NAME: tokens["operator"]})
    assert client.post(f"/ui/runs/{ids['run_id']}/control", data={"action": "pause"}).status_code == 403
    csrf = {"HX-Request": "true", "X-CSRF-Token": csrf_token_for(tokens["operator"])}
    assert client.post(f"/ui/runs/{ids['run_id']}/control", data={"action": "pause"}, headers=csrf).status_code == 200
    assert client.get(f"/api/runs/{ids['run_id']}").status_code == 200


def test_revoked_and_unknown_tokens_are_refused(world):
    app, tokens, _ = world
    client = TestClient(app)
    assert client.get("/api/whoami", headers={"Authorization": "Bearer dbk_notatoken"}).status_code == 401
    assert client.get("/api/whoami", headers={"Authorization": "Basic abc"}).status_code == 401
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    new = client.post("/api/tokens", json={"name": "temp", "role": "viewer"}, headers=admin).json()
    assert client.get("/api/whoami", headers={"Authorization": f"Bearer {new['token']}"}).json()["role"] == "viewer"
    assert client.post(f"/api/tokens/{new['id']}/revoke", headers=admin).status_code == 200
    assert client.get("/api/whoami", headers={"Authorization": f"Bearer {new['token']}"}).status_code == 401
    listed = client.get("/api/tokens", headers=admin).json()["items"]
    assert all("token" not in t and "token_hash" not in t for t in listed), "token secrets or hashes leaked in the list"
