"""#14 low: every page of the registry (dashboard pages, their htmx fragments, the login page, the API docs) is
served with a strict Content-Security-Policy, and the pages hold nothing that policy would block (no inline
<script>, <style>, style="" or on*="" handlers), so the policy costs the dashboard nothing.

Real app with real data (run, block version, node, audit) on SQLite; every GET route of the app is visited."""

from __future__ import annotations

import json
import re
import warnings

import pytest

warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
from starlette.testclient import TestClient  # noqa: E402

from dblocks.server.registry.app import create_app  # noqa: E402
from dblocks.server.registry.auth import issue_token  # noqa: E402
from dblocks.server.registry.config import RegistrySettings  # noqa: E402
from dblocks.server.registry.models import ROLES  # noqa: E402

from .test_registry_nonfinite import block, schedule_json  # noqa: E402

INLINE = {
    "inline <script>": re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I),
    "<style> element": re.compile(r"<style[\s>]", re.I),
    "style attribute": re.compile(r"<[^>]+\sstyle\s*=", re.I),
    "event handler attribute": re.compile(r"<[^>]+\son[a-z]+\s*=", re.I),
    "javascript: URL": re.compile(r"javascript:", re.I),
}


@pytest.fixture(scope="module")
def csp_world(tmp_path_factory):
    """A logged-in operator's browser on an app holding a run, a block version, a node and an audit; the ids."""
    app = create_app(RegistrySettings.in_directory(tmp_path_factory.mktemp("csp")))
    with app.state.registry.db.writer() as s:
        tokens = {role: issue_token(s, name=role, role=role, created_by="tests")[1] for role in ROLES}
    api = TestClient(app)

    def as_(role):
        return {"Authorization": f"Bearer {tokens[role]}"}

    run = api.post(
        "/api/runs",
        headers={**as_("service"), "Content-Type": "application/json"},
        content='{"task": "mnist", "num_blocks": 2, "num_rounds": 3, "schedule": ' + schedule_json() + "}",
    )
    assert run.status_code == 201, run.text
    run_id = run.json()["id"]
    spec, weights = block()
    version = api.post(
        f"/api/runs/{run_id}/blocks/0/versions",
        headers=as_("service"),
        data={"meta": '{"round": 1, "metrics": {"loss": 0.5}}', "spec": spec},
        files={"weights": ("w.safetensors", weights)},
    )
    assert version.status_code == 201, version.text
    meta = json.dumps(
        {
            "block_version_id": version.json()["id"],
            "attack": "mia",
            "observation_point": "release",
            "adversary": "server",
            "config_hash": "abc",
            "verdict": "pass",
        }
    )
    audit = api.post(
        "/api/audits", headers=as_("researcher"), data={"meta": meta}, files={"artifacts": ("report.txt", b"fine")}
    )
    assert audit.status_code == 201, audit.text
    assert (
        api.post(
            f"/api/runs/{run_id}/rounds",
            headers=as_("service"),
            json={"round": 1, "block_index": 0, "status": "completed", "cohort": []},
        ).status_code
        == 201
    )
    ids = {
        "run_id": run_id,
        "version_id": version.json()["id"],
        "audit_id": audit.json()["id"],
        "panel": "header",
        "node_id": "none",
        "block_index": 0,
        "filename": "report.txt",
    }
    browser = TestClient(app, follow_redirects=False)
    page = browser.get("/login")
    nonce = re.search(r'name="csrf_token" value="([^"]*)"', page.text)
    login = browser.post(
        "/login", data={"token": tokens["operator"], "next": "/", **({"csrf_token": nonce.group(1)} if nonce else {})}
    )
    assert login.status_code == 303, login.text[:300]
    yield app, browser, ids
    app.state.registry.db.dispose()


def html_pages(app, ids: dict) -> list[str]:
    """Every GET route outside the JSON API and the static files, with its path parameters filled in."""
    try:
        from fastapi.routing import iter_route_contexts  # FastAPI >= 0.138 keeps included routers lazily

        routes = list(iter_route_contexts(app.routes))
    except ImportError:
        routes = list(app.routes)
    pages = []
    for route in routes:
        path = getattr(route, "path", "")
        if "GET" not in (getattr(route, "methods", None) or ()) or path.startswith(("/api", "/static")):
            continue
        if path.endswith("/charts") or path in ("/health", "/openapi.json"):  # JSON, not pages
            continue
        if "{panel}" in path:
            pages += [path.format(**{**ids, "panel": p}) for p in ("header", "blocks", "rounds", "audits", "events")]
        else:
            pages.append(path.format(**ids))
    return pages


def directives(policy: str) -> dict[str, list[str]]:
    return {d.split()[0]: d.split()[1:] for d in (p.strip() for p in policy.split(";")) if d}


def test_content_security_policy_on_every_page(csp_world):
    """#14 low: each dashboard page, fragment, the login page and /docs answer with a Content-Security-Policy that
    allows scripts only from the registry itself (no 'unsafe-inline', no 'unsafe-eval'), no plugins, no <base>,
    no framing; and the HTML has nothing inline that the policy would block.
    On main no response carried a Content-Security-Policy, and the run page started its charts inline."""
    app, browser, ids = csp_world
    pages = html_pages(app, ids)
    assert {
        "/",
        "/login",
        "/nodes",
        "/audits",
        "/events",
        "/docs",
        f"/runs/{ids['run_id']}",
        f"/versions/{ids['version_id']}",
        f"/audits/{ids['audit_id']}",
    } <= set(pages), pages
    for url in pages:
        r = browser.get(url, headers={"Accept": "text/html"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), f"{url}: {r.status_code}"
        policy = r.headers.get("content-security-policy")
        assert policy, f"{url} has no Content-Security-Policy"
        d = directives(policy)
        assert d.get("default-src") == ["'self'"], f"{url}: {policy}"
        assert d.get("script-src") == ["'self'"], f"{url}: scripts not limited to the registry: {policy}"
        assert d.get("object-src") == ["'none'"] and d.get("base-uri") == ["'none'"], f"{url}: {policy}"
        assert d.get("frame-ancestors") == ["'none'"] and d.get("form-action") == ["'self'"], f"{url}: {policy}"
        if url != "/docs":  # Swagger UI styles its widgets inline; the dashboard needs no inline style at all
            assert d.get("style-src") == ["'self'"] and d.get("img-src") == ["'self'"], f"{url}: {policy}"
            for what, pattern in INLINE.items():
                m = pattern.search(r.text)
                assert not m, (
                    f"{url} has an {what} the policy blocks: {r.text[max(m.start() - 60, 0) : m.end() + 60]!r}"
                )
        else:
            assert not INLINE["inline <script>"].search(r.text), "/docs starts Swagger UI with an inline script"


def test_content_security_policy_on_every_page_and_error(csp_world):
    """#14 low: error answers (404 page, 401 redirect, the 422 of the JSON limits) carry the policy as well.
    On main none did."""
    app, browser, ids = csp_world
    assert "content-security-policy" in browser.get("/runs/999999", headers={"Accept": "text/html"}).headers
    anonymous = TestClient(app, follow_redirects=False)
    assert "content-security-policy" in anonymous.get("/", headers={"Accept": "text/html"}).headers
    r = TestClient(app).post("/api/runs", content=b'{"num_rounds": NaN}', headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "content-security-policy" in r.headers
