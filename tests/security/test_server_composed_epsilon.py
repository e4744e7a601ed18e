"""#14.7: the registry must not under-report epsilon. Per company, the server composes over all its releases in
the run (all rounds and blocks) with the run's accountant, records that in the per-node privacy endpoint and
in every block version (the one-release numbers kept as *_one_release), and the dashboard names the accountant.

One 3-round run of 2 blocks with 6 companies (each in one cohort every round, so 3 releases each, over
different blocks) against the registry on SQLite; the cohorts' side of secure aggregation is a stand-in
(server_fakes.py), the accounting is real Opacus."""

from __future__ import annotations

import pytest

from dblocks.privacy.accounting import MechanismStep, epsilon
from dblocks.server.federation.config import RunConfig, SecAggConfig
from dblocks.server.federation.serverapp import Federation

from .server_fakes import TASK, B, CohortSecAgg, PingGrid, context, registry_app, set_task_identity

NODES = [2001, 2002, 2003, 2004, 2005, 2006]
ROUNDS, DELTA, Z, Q, STEPS, ZC = 3, 1e-5, 1.0, 0.1, 3, 1.0
ONE_RECORD = MechanismStep(Z, Q, STEPS)


def _ssh_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


@pytest.fixture(scope="module")
def run3(tmp_path_factory):
    """The registry after a 3-round PRV run: (service client, run id, {flower id: registry node id}, fed, app)."""
    tmp = tmp_path_factory.mktemp("composed")
    app, reg = registry_app(tmp / "registry")
    svc = reg["service"]
    ids = {}
    for n in NODES:  # companies enrolled, approved and synced to the SuperLink as `dbserver start` does
        node = reg["operator"].register_node(f"company {n}", f"org {n}", _ssh_key())
        reg["operator"].approve_node(node["id"])
        svc.node_seen(node["id"], {"superlink": {"node_id": str(n), "status": "online", "error": None}})
        ids[n] = node["id"]
    cfg = RunConfig(
        run_id="composed",
        task=TASK,
        num_blocks=B,
        num_rounds=ROUNDS,
        cohort_size=3,
        min_cohort=3,
        record_noise=Z,
        record_sample_rate=Q,
        record_steps=STEPS,
        delta=DELTA,
        accountant="prv",
        central_noise=ZC,
        secagg=SecAggConfig(mode="flower"),
        checkpoint_dir=str(tmp / "run" / "ck"),
    )
    with pytest.MonkeyPatch.context() as mp:
        set_task_identity(mp)
        fed = Federation(cfg, PingGrid(NODES), context())
        run = svc.create_run(
            task=fed.model.task,
            dataset={"name": TASK},
            num_blocks=B,
            schedule=fed.schedule.to_dict(),
            secagg={"mode": "flower"},
            dp={"accountant": "prv", "delta": DELTA},
            num_rounds=ROUNDS,
        )
        svc.set_status(run["id"], "running")
        fed.registry, fed.rid = svc, run["id"]
        fed.secagg = CohortSecAgg(fed)
        fed.evaluate = dict  # test accuracy is not under test here (and the slowest part)
        fed.run()
        yield svc, run["id"], ids, fed, app
    app.state.registry.db.dispose()


def test_registry_records_record_epsilon_composed_over_all_rounds_and_blocks(run3):
    """#14.7: after 3 rounds every company took part in 3 releases (over different blocks); the round-3 block
    versions state the PRV composition of the 3 DP-SGD mechanisms, larger than one round's epsilon, which is
    kept as record_epsilon_one_release. On main each version recorded one round's mechanism (2.10 instead of
    the composed 2.78 here)."""
    svc, rid, _, fed, _ = run3
    composed = epsilon([ONE_RECORD] * ROUNDS, DELTA, "prv")
    one = epsilon([ONE_RECORD], DELTA, "prv")
    assert composed > one * 1.2
    blocks_of = {n: {b for _, b, c in fed.secagg.calls if n in c} for n in NODES}
    assert any(len(bs) > 1 for bs in blocks_of.values()), "some company must have trained two blocks"
    last = [v for v in svc.list_block_versions(rid) if v["round"] == ROUNDS]
    assert len(last) == B
    for v in last:
        assert v["record_epsilon"] == pytest.approx(composed, rel=1e-6) and v["accountant"] == "prv"
        assert v["metrics"]["record_epsilon_one_release"] == pytest.approx(one, rel=1e-6)
    first = [v for v in svc.list_block_versions(rid) if v["round"] == 1]
    assert all(v["record_epsilon"] == pytest.approx(one, rel=1e-6) for v in first)


def test_client_level_epsilon_uses_the_runs_prv_accountant_over_all_blocks(run3):
    """#14.7: the client-level epsilon of a round-3 version is each company's central-noise mechanism (z_c,
    no subsampling) composed over its 3 publications across blocks with the run's PRV accountant. On main it
    was RDP (9.01 here instead of PRV's 8.40) and counted one block's releases only."""
    svc, rid, _, _, _ = run3
    prv = epsilon([MechanismStep(ZC, 1.0, ROUNDS)], DELTA, "prv")
    rdp = epsilon([MechanismStep(ZC, 1.0, ROUNDS)], DELTA, "rdp")
    assert abs(prv - rdp) > 0.1
    for v in (v for v in svc.list_block_versions(rid) if v["round"] == ROUNDS):
        assert v["client_epsilon"] == pytest.approx(prv, rel=1e-6)
        assert v["metrics"]["client_epsilon_one_release"] == pytest.approx(
            epsilon([MechanismStep(ZC, 1.0, 1)], DELTA, "prv"), rel=1e-6
        )
        for e in v["metrics"]["nodes"].values():
            assert e["client_epsilon"] == pytest.approx(prv, rel=1e-6) and e["published"] == ROUNDS


def test_node_privacy_endpoint_returns_composed_epsilon(run3):
    """#14.7: the per-node privacy endpoint holds, for every company, the record-level epsilon composed over
    all its releases in the run with the run's accountant (and the run summary agrees). On main the server
    never wrote it: every company's `runs` list was empty."""
    svc, rid, ids, _, _ = run3
    composed = epsilon([ONE_RECORD] * ROUNDS, DELTA, "prv")
    for n, node_id in ids.items():
        runs = [x for x in svc.node_privacy(node_id)["runs"] if x["run_id"] == rid]
        assert len(runs) == 1, (n, runs)
        assert runs[0]["epsilon_total"] == pytest.approx(composed, rel=1e-6)
        assert runs[0]["delta_total"] == DELTA and runs[0]["accountant"] == "prv" and runs[0]["round"] == ROUNDS
    summary = {x["node_id"]: x for x in svc.run_privacy(rid)["nodes"]}
    assert all(summary[i]["epsilon_total"] == pytest.approx(composed, rel=1e-6) for i in ids.values())


def test_dashboard_shows_composed_epsilon_with_the_accountant_named(run3):
    """#14.7: the run page's chart data names the accountant and gives each company its composed total (on
    main: per-block epsilons stacked as a basic-composition sum, no accountant, and no node data at all)."""
    from starlette.testclient import TestClient

    from dblocks.server.registry.auth import COOKIE_NAME

    svc, rid, ids, _, app = run3
    http = TestClient(app)
    http.cookies.set(COOKIE_NAME, svc._http.headers["Authorization"].split()[1])
    data = http.get(f"/ui/runs/{rid}/charts").json()
    assert data["accountant"] == "prv"
    composed = epsilon([ONE_RECORD] * ROUNDS, DELTA, "prv")
    assert len(data["nodes"]) == len(ids)
    assert all(n["total"] == pytest.approx(composed, rel=1e-6) and n["accountant"] == "prv" for n in data["nodes"])
    page = http.get(f"/runs/{rid}").text
    assert "composed" in page and "prv accountant" in page


def test_composed_epsilon_counts_releases_of_earlier_server_sessions(tmp_path, monkeypatch):
    """#14.7: a restarted ServerApp (a new session on the same run) goes on composing over the releases of the
    sessions before it: after round 1 in one session and round 2 in the next, the round-2 versions state the
    composition of 2 rounds. On main every session forgot the earlier ones (and no version ever composed)."""
    set_task_identity(monkeypatch)
    app, reg = registry_app(tmp_path / "registry")
    svc = reg["service"]
    cfg = RunConfig(
        run_id="restart",
        task=TASK,
        num_blocks=B,
        num_rounds=2,
        cohort_size=3,
        min_cohort=3,
        record_noise=Z,
        record_sample_rate=Q,
        record_steps=STEPS,
        delta=DELTA,
        accountant="rdp",
        secagg=SecAggConfig(mode="flower"),
        checkpoint_dir=str(tmp_path / "run" / "ck"),
    )
    run = None
    for session in (1, 2):
        fed = Federation(cfg, PingGrid(NODES), context())
        if run is None:
            run = svc.create_run(
                task=fed.model.task,
                dataset={"name": TASK},
                num_blocks=B,
                schedule=fed.schedule.to_dict(),
                secagg={"mode": "flower"},
                dp={"accountant": "rdp", "delta": DELTA},
                num_rounds=2,
            )
            svc.set_status(run["id"], "running")
        fed.registry, fed.rid = svc, run["id"]
        fed.secagg = CohortSecAgg(fed)
        fed.evaluate = dict  # test accuracy is not under test here (and the slowest part)
        if session == 1:
            fed.round(1)  # the server stops after round 1
        else:
            fed.run()
    second = [v for v in svc.list_block_versions(run["id"]) if v["round"] == 2]
    assert len(second) == B
    assert all(v["record_epsilon"] == pytest.approx(epsilon([ONE_RECORD] * 2, DELTA, "rdp"), rel=1e-6) for v in second)
    app.state.registry.db.dispose()
