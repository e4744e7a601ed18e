"""#19: the dashboard ties companies to their work. Cohorts name their members by SuperLink (Flower) node id; the
node sync writes each approved node's SuperLink node id into its registry record (`info.superlink.node_id`), and
the registry resolves cohorts through it (server/registry/nodemap.py). On main the run page's cohorts showed the
bare numbers and the Nodes page 0 blocks trained for every company, since cohorts were looked up as registry ids.

The first test drives the registry's REST API in-process with what a round posts; the second runs a small real
federation (the ServerApp's round loop and the real dblocks ClientApp through an in-process grid, as in
tests/federation/test_inprocess.py, with DP-SGD by Opacus and dblocks' SecAgg+) against the registry under
uvicorn, and reads the dashboard in headless Chromium: every company's name in the cohorts, and on the Nodes page
its blocks trained, rounds and a non-zero composed epsilon. Screenshots go to the test's tmp dir."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from regseed import ssh_key
from regtools import DP, make_block, new_run
from starlette.testclient import TestClient

from dblocks.shared.versions import VersionMeta

COMPANIES = ["Acme Bank", "Globex Health", "Initech Insurance", "Umbrella Labs", "Hooli Retail", "Stark Freight"]


def synced(service, node_id: str, superlink_id: int) -> None:
    """What the node sync writes once it registered the node's key with the SuperLink."""
    service.node_seen(node_id, {"superlink": {"node_id": str(superlink_id), "status": "online", "error": None}})


def test_cohorts_named_by_superlink_node_id_are_the_companies(app, clients, tokens):
    svc, op = clients["service"], clients["operator"]
    nodes = [op.register_node(name, f"{name} Ltd", ssh_key()) for name in COMPANIES[:3]]
    for i, n in enumerate(nodes):
        op.approve_node(n["id"])
        synced(svc, n["id"], 7000 + i)
    run = new_run(svc, num_blocks=2, num_rounds=2)
    svc.set_status(run["id"], "running")
    spec, weights = make_block(0, num_blocks=2)
    cohort = ["7000", "7001", "9999"]  # 9999: a node the registry does not know (ignored, shown as is)
    svc.register_block_version(run["id"], 0, spec, weights, VersionMeta(round=1, cohort=cohort, **DP))
    svc.report_round(run["id"], 1, 0, cohort, "completed")
    svc.record_node_privacy(nodes[0]["id"], run["id"], 0, 1, 2.5, 1e-5, "prv", sample_rate=0.01, steps=300)
    assert [svc.get_node(n["id"])["blocks_trained"] for n in nodes] == [1, 1, 0]
    assert svc.get_node(nodes[0]["id"])["last_seen_at"] is not None

    http = TestClient(app)
    http.cookies.set("dblocks_token", tokens["operator"])
    rounds = http.get(f"/ui/runs/{run['id']}/rounds").text
    assert re.findall(r'class="node-chip" title="([^"]+)">([^<]+)<', rounds) == [
        ("7000", "Acme Bank"),
        ("7001", "Globex Health"),
        ("9999", "9999"),
    ]
    page = http.get("/ui/nodes").text
    rows = {
        name: row
        for row in page.split("<tr id=")[1:]
        for name in COMPANIES[:3]
        if f"<b>{name}</b>" in row  # the row of that company
    }
    for name, blocks, eps in (("Acme Bank", 1, "2.5"), ("Globex Health", 1, None), ("Initech Insurance", 0, None)):
        assert f'<td class="num blocks-trained">{blocks}</td>' in rows[name], rows[name]
        assert f'<td class="num rounds">{blocks}</td>' in rows[name]
        assert (f'<b class="eps-value">{eps}</b>' in rows[name]) if eps else ("eps-value" not in rows[name])
    assert "prv" in rows["Acme Bank"] and "SuperLink node 7000" in rows["Acme Bank"]
    assert "node.privacy</code> node <b>Acme Bank</b>" in http.get(f"/ui/runs/{run['id']}/events").text
    charts = http.get(f"/ui/runs/{run['id']}/charts").json()
    assert charts["nodes"] == [{"node": "Acme Bank", "total": 2.5, "accountant": "prv", "round": 1}]


# ---- a real (in-process) federation, read in Chromium ----------------------------------------------------------
class InProcessGrid:
    """Delivers the ServerApp's Messages to the real dblocks ClientApp, one Context per node (as Flower's runtime
    keeps them), an exception as an error reply."""

    def __init__(self, node_config: dict[int, dict]):
        from flwr.app import Context, RecordDict

        self.contexts = {
            n: Context(run_id=1, node_id=n, node_config=nc, state=RecordDict(), run_config={})
            for n, nc in node_config.items()
        }

    def get_node_ids(self):
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout=None):
        from flwr.app import Error, Message

        from dblocks.client.clientapp import app as client_app

        replies = []
        for msg in messages:
            try:
                replies.append(client_app(msg, self.contexts[msg.metadata.dst_node_id]))
            except Exception as err:  # noqa: BLE001 - Flower's runtime turns it into an error reply too
                replies.append(Message(Error(code=0, reason=f"{type(err).__name__}: {err}"), reply_to=msg))
        return replies


@pytest.fixture(scope="module")
def federated(tmp_path_factory):
    """A registry under uvicorn after a 2-round federation of 6 companies on 2 blocks: (url, viewer token, run id,
    {company name: SuperLink node id})."""
    from dataclasses import asdict, replace

    from flwr.app import Context, RecordDict
    from flwr.supercore.task_identity import TaskIdentity
    from regproc import uvicorn_server

    from dblocks.server.federation.config import RunConfig
    from dblocks.server.federation.serverapp import Federation
    from dblocks.server.ops.localfed import LocalFederation
    from dblocks.server.registry.app import open_registry
    from dblocks.server.registry.auth import issue_token
    from dblocks.server.registry.config import RegistrySettings
    from dblocks.shared.presets import get_preset
    from dblocks.shared.registry_client import RegistryClient

    tmp = tmp_path_factory.mktemp("companies")
    env = {"DBLOCKS_HOME": str(tmp / "registry")}
    reg = open_registry(RegistrySettings.from_env(env))
    with reg.db.writer() as s:
        tokens = {r: issue_token(s, name=f"{r}-bot", role=r, created_by="t")[1] for r in ("operator", "service")}
    reg.db.dispose()
    server = uvicorn_server(env, tmp / "registry.log").start()
    try:
        op, svc = (RegistryClient(server.url, tokens[r]) for r in ("operator", "service"))
        _, paths, _ = LocalFederation(tmp / "data", task="digits").company_data(6, public=100, alpha=0.5)
        link_ids = {}
        for i, name in enumerate(COMPANIES):  # `dbserver nodes approve`, then the node sync's record
            node = op.register_node(name, f"{name} Ltd", ssh_key())
            op.approve_node(node["id"])
            synced(svc, node["id"], 1000 + i)
            link_ids[name] = 1000 + i
        token_file = tmp / "service.token"
        token_file.write_text(tokens["service"])
        cfg = RunConfig(
            run_id="0",
            task="digits",
            num_blocks=2,
            num_rounds=2,
            cohort_size=3,
            min_cohort=3,
            record_noise=1.0,
            record_clip=1.0,
            record_sample_rate=1.0,  # full batches: Opacus' accountants are then closed-form (subsampled: ~30 s CPU)
            record_steps=1,
            update_clip=0.5,
            checkpoint_dir=str(tmp / "run" / "checkpoints"),
            registry_url=server.url,
            registry_token_file=str(token_file),
        )
        preset = get_preset(cfg.task)
        run = svc.create_run(  # what `dbserver run new` registers
            task=cfg.task,
            dataset={"name": preset.dataset},
            num_blocks=cfg.num_blocks,
            schedule=preset.noise_schedule(cfg.num_blocks).to_dict(),
            secagg=asdict(cfg.secagg),
            dp=cfg.dp.model_dump(),
            num_rounds=cfg.num_rounds,
        )
        nodes = {
            1000 + i: {"data-path": str(p), "ledger-path": str(tmp / f"ledger{i}.json"), "epsilon-budget": 50.0,
                       "threads": 1}
            for i, p in enumerate(paths)
        }  # fmt: skip
        with pytest.MonkeyPatch.context() as mp:  # what Flower's runtime sets in a ServerApp process
            mp.setattr(TaskIdentity, "_task_id", 1)
            mp.setattr(TaskIdentity, "_run_id", 1)
            mp.setattr(TaskIdentity, "_node_id", 0)
            fed = Federation(
                replace(cfg, run_id=str(run["id"])),
                InProcessGrid(nodes),
                Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}),
            )
            fed.run()
        yield server.url, tokens["operator"], run["id"], link_ids, fed
    finally:
        server.kill()


@pytest.fixture(scope="module")
def chromium():
    from test_registry_browser import CHROMIUM, LAUNCH_ARGS

    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM}: `apt-get install chromium` (CI: deploy/sysdeps.sh)")
    playwright = pytest.importorskip("playwright.sync_api", reason="Playwright's Python package is missing")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield browser
        browser.close()


@pytest.mark.slow
def test_dashboard_after_a_federation_names_every_company_with_its_blocks_and_epsilon(federated, chromium, tmp_path):
    from test_registry_browser import login, wait_for

    from dblocks.shared.registry_client import RegistryClient

    url, token, run_id, link_ids, fed = federated
    assert set(fed.releases.by_node) == set(link_ids.values()), "every company trains in 2 rounds of 2 blocks x 3"
    versions = RegistryClient(url, token).list_block_versions(run_id)
    assert sorted(v["round"] for v in versions) == [1, 1, 2, 2]
    assert all(set(v["cohort"]) <= {str(n) for n in link_ids.values()} for v in versions)  # SuperLink node ids
    page = chromium.new_context(viewport={"width": 1440, "height": 1100}).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    login(page, url, token)

    page.goto(f"{url}/runs/{run_id}")
    page.wait_for_selector("#run-rounds .node-chip")
    wait_for(page, "document.querySelectorAll('#nodes-table-eps tr').length === 6")
    wait_for(page, "document.getElementById('metric-select').value === 'test_accuracy'")
    page.screenshot(path=tmp_path / "run.png", full_page=True)
    chips = page.locator("#run-rounds .node-chip").all_inner_texts()
    assert set(chips) == set(COMPANIES), chips  # names, not SuperLink node numbers
    assert len(chips) == 2 * 2 * 3  # 2 rounds x 2 blocks x a cohort of 3
    eps = {
        row.locator(".company").inner_text(): float(row.locator(".eps").inner_text())
        for row in page.locator("#nodes-table-eps tr").all()
    }
    assert set(eps) == set(COMPANIES) and all(0 < e < 50 for e in eps.values()), eps
    composed = {name: fed.releases.composed(n, fed.cfg.delta, fed.cfg.accountant).record_epsilon
                for name, n in link_ids.items()}  # fmt: skip
    assert all(abs(eps[name] - composed[name]) <= 0.01 * composed[name] for name in COMPANIES), (eps, composed)
    legend = page.locator("#chart-metrics").evaluate("c => Chart.getChart(c).data.datasets.map(d => d.label)")
    assert "assembled model" in legend, legend

    page.goto(f"{url}/nodes")
    page.wait_for_selector("#nodes-table table")
    page.screenshot(path=tmp_path / "nodes.png", full_page=True)
    for name, n in link_ids.items():
        row = page.locator("#nodes-table tr", has_text=name)
        mine = [v for v in versions if str(n) in v["cohort"]]
        assert int(row.locator(".blocks-trained").inner_text()) == len(mine) >= 1, name
        assert int(row.locator(".rounds").inner_text()) == len({v["round"] for v in mine}), name
        assert float(row.locator(".eps-value").inner_text()) == pytest.approx(composed[name], rel=0.01), name
        assert "prv" in row.locator(".epsilon").inner_text() and "ago" in row.inner_text(), name
    assert not errors, errors
