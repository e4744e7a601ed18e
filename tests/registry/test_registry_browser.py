"""The dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright's Python package):
log in with a token, open a run, press Pause and see the state change, watch a new round arrive without a
reload, approve a node. Screenshots of the main pages go to tests/artifacts/registry/ (git-ignored)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from regproc import uvicorn_server
from regseed import seed_demo

from dblocks.server.registry.app import open_registry
from dblocks.server.registry.auth import issue_token
from dblocks.server.registry.config import RegistrySettings
from dblocks.server.registry.models import ROLES
from dblocks.shared.registry_client import RegistryClient

CHROMIUM = os.environ.get("DBLOCKS_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "registry"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

pytestmark = [
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason=f"Chromium not found at {CHROMIUM}: `apt-get install chromium` "
        "(CI: add `chromium` to deploy/sysdeps.sh)",
    ),
    pytest.mark.slow,
]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A seeded registry under uvicorn: (base url, role -> token, seed info)."""
    home = tmp_path_factory.mktemp("browser")
    env = {"DBLOCKS_HOME": str(home)}
    reg = open_registry(RegistrySettings.from_env(env))
    with reg.db.writer() as s:
        tokens = {
            role: issue_token(s, name="alice" if role == "operator" else f"{role}-bot", role=role, created_by="t")[1]
            for role in ROLES
        }
    reg.db.dispose()
    server = uvicorn_server(env, home / "server.log").start()
    clients = {role: RegistryClient(server.url, tok) for role, tok in tokens.items()}
    info = seed_demo(clients, rounds_done=2)
    yield server.url, tokens, info, clients
    server.kill()


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip(
        "playwright.sync_api", reason="Playwright's Python package is missing: pip install playwright"
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, live):
    base = live[0]
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    pg = context.new_page()
    pg.requests, pg.errors = [], []
    pg.on("request", lambda r: pg.requests.append(r.url))
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.on(
        "console",
        lambda m: pg.errors.append(m.text) if m.type == "error" and "Failed to load resource" not in m.text else None,
    )
    pg.on("response", lambda r: pg.errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    yield pg
    offsite = [u for u in pg.requests if not u.startswith(base)]
    context.close()
    assert not offsite, f"the dashboard fetched something from outside the registry: {offsite[:5]}"
    assert not pg.errors, f"browser errors: {pg.errors[:5]}"


def wait_for(page, expression: str, timeout: float = 30_000) -> None:
    """page.wait_for_function, but polling page.evaluate: wait_for_function eval()s its string inside the page,
    which the registry's Content-Security-Policy (rightly) refuses. `timeout` in ms."""
    deadline = time.monotonic() + timeout / 1000
    while not page.evaluate(f"(() => {{ try {{ return !!({expression}); }} catch (e) {{ return false; }} }})()"):
        assert time.monotonic() < deadline, f"timed out after {timeout / 1000:.0f} s waiting for {expression}"
        page.wait_for_timeout(100)


def login(page, base: str, token: str) -> None:
    page.goto(base + "/")
    assert "/login" in page.url  # not logged in yet: sent to the login page
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_selector("text=Runs")


def test_login_open_run_pause_and_watch_it_live(page, live):
    base, tokens, info, clients = live
    run_id = info["run"]["id"]
    login(page, base, tokens["operator"])
    page.wait_for_selector(f"a[href='/runs/{run_id}']")
    page.screenshot(path=ARTIFACTS / "runs.png", full_page=True)

    page.click(f"a[href='/runs/{run_id}']")
    page.wait_for_selector("#run-status .badge.st-running")
    wait_for(
        page,
        "document.querySelectorAll('#chart-metrics').length && Chart.getChart('chart-metrics').data.datasets.length "
        "=== 4",
    )
    page.screenshot(path=ARTIFACTS / "run.png", full_page=True)

    page.click("#btn-pause")
    page.wait_for_selector("#run-status .badge.st-paused")
    assert clients["viewer"].control_state(run_id)["status"] == "paused"
    assert page.is_enabled("#btn-resume") and not page.is_enabled("#btn-pause")
    page.screenshot(path=ARTIFACTS / "run-paused.png")

    # the federation reports a new round: the page shows it without a reload
    clients["service"].report_round(run_id, 3, 0, [info["nodes"][0]["id"]], "completed")
    wait_for(page, "document.querySelector('#run-round').textContent.trim() === '3'", timeout=15_000)
    page.click("#btn-resume")
    page.wait_for_selector("#run-status .badge.st-running")
    assert clients["viewer"].control_state(run_id)["status"] == "running"
    page.fill("#rounds-input", "9")
    page.click(".rounds-form button")
    wait_for(page, "document.querySelector('.run-title').textContent.includes('/ 9')")
    assert clients["viewer"].control_state(run_id)["num_rounds"] == 9


def test_nodes_page_approves_a_pending_node(page, live):
    base, tokens, info, clients = live
    pending = info["nodes"][3]
    login(page, base, tokens["admin"])
    page.goto(base + "/nodes")
    row = page.locator(f"#node-{pending['id']}")
    assert "pending" in row.inner_text()
    page.screenshot(path=ARTIFACTS / "nodes.png", full_page=True)
    row.locator("button", has_text="Approve").click()
    page.wait_for_selector(f"#node-{pending['id']} .badge.st-approved")
    assert clients["viewer"].get_node(pending["id"])["status"] == "approved"


def test_viewer_sees_pages_but_no_controls(page, live):
    base, tokens, info, _ = live
    login(page, base, tokens["viewer"])
    page.goto(f"{base}/runs/{info['run']['id']}")
    page.wait_for_selector("#run-status")
    assert page.locator("#btn-pause").count() == 0
    page.goto(base + "/audits")
    page.wait_for_selector("img[alt='reconstructions.png']")
    # the element can be there before its bytes are: wait until every image has finished (loaded or failed), then
    # a failed one still shows as naturalWidth 0 (a fresh-clone run failed here while an image was still loading)
    page.wait_for_function("[...document.images].every(i => i.complete)", timeout=15000)
    assert page.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)"), (
        "an audit image did not load"
    )
    page.screenshot(path=ARTIFACTS / "audits.png", full_page=True)
    page.click("table.grid a[href^='/audits/']")
    page.wait_for_selector("text=Configuration")
    page.screenshot(path=ARTIFACTS / "audit.png", full_page=True)
    page.goto(f"{base}/versions/{info['versions'][0]['id']}")
    page.wait_for_selector("text=Lineage")
    assert page.locator("table.grid >> nth=-1").locator("tbody tr").count() == 2  # v2 <- v1
    page.screenshot(path=ARTIFACTS / "version.png", full_page=True)
    page.goto(base + "/events")
    page.screenshot(path=ARTIFACTS / "events.png")
    assert re.search(r"version\.registered", page.content())
    page.goto(base + "/docs")
    page.get_by_text("/api/runs/{run_id}/control", exact=True).first.wait_for()  # Swagger UI, served from the package
    page.screenshot(path=ARTIFACTS / "api-docs.png")
    page.goto(base + "/events")
    page.click("text=Log out")
    page.wait_for_url(re.compile(r".*/login$"))
