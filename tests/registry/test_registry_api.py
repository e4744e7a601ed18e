"""REST API behaviour through RegistryClient, on SQLite and PostgreSQL: runs, control, rounds, versions,
filters, pagination, lineage, nodes, privacy, audits, events."""

from __future__ import annotations

import time

import pytest
from regseed import ssh_key
from regtools import DP, TASK, make_block, new_run, schedule

from dblocks.shared.registry_client import Conflict, InvalidRequest, NotFound
from dblocks.shared.versions import VersionMeta


def test_create_and_read_runs(service, clients):
    runs = [new_run(service, name=f"r{i}") for i in range(3)]
    got = service.get_run(runs[1]["id"])
    assert got["name"] == "r1" and got["status"] == "created" and got["created_by"] == "alice"
    sched = schedule(4)
    assert [b["block_index"] for b in got["blocks"]] == [0, 1, 2, 3]
    for b in got["blocks"]:
        assert (b["owned_lo"], b["owned_hi"]) == pytest.approx(sched.owned_interval(b["block_index"]))
        assert (b["train_lo"], b["train_hi"]) == pytest.approx(sched.training_interval(b["block_index"]))
    assert [r["id"] for r in clients["viewer"].list_runs()] == [r["id"] for r in reversed(runs)]  # newest first
    with pytest.raises(NotFound, match="run 999 does not exist"):
        service.get_run(999)


def test_run_validation_names_the_field(service, http, tokens):
    with pytest.raises(InvalidRequest, match="schedule.num_blocks is 4 but num_blocks is 3"):
        new_run(service, num_blocks=3, schedule=schedule(4).to_dict())
    with pytest.raises(InvalidRequest, match="not a valid NoiseSchedule"):
        new_run(service, schedule={"num_blocks": 4, "sigma_min": 5.0, "sigma_max": 1.0})
    r = http.post(
        "/api/runs",
        headers={"Authorization": f"Bearer {tokens['service']}"},
        json={"task": "t", "num_blocks": 2, "schedule": {}, "num_rounds": 0, "typo_field": 1},
    )
    assert r.status_code == 422
    locs = {tuple(e["loc"]) for e in r.json()["detail"]}
    assert ("body", "num_rounds") in locs and ("body", "typo_field") in locs


def test_runs_filter_and_paginate(service, http, tokens):
    ids = [new_run(service, name=f"p{i}")["id"] for i in range(7)]
    service.set_status(ids[2], "running")
    service.set_status(ids[4], "running")
    assert [r["id"] for r in service.list_runs(status="running")] == [ids[4], ids[2]]
    h = {"Authorization": f"Bearer {tokens['viewer']}"}
    page = http.get("/api/runs", params={"limit": 3, "offset": 3}, headers=h).json()
    assert page["total"] == 7 and page["limit"] == 3 and page["offset"] == 3
    assert [r["id"] for r in page["items"]] == list(reversed(ids))[3:6]
    assert len(service.list_runs(limit=5)) == 5
    assert http.get("/api/runs", params={"limit": 501}, headers=h).status_code == 422


def test_run_control_and_status_lifecycle(service, clients):
    op = clients["operator"]
    run = new_run(service, num_rounds=5)
    rid = run["id"]
    assert op.control(rid, "start")["status"] == "running"
    assert op.control(rid, "pause", reason="maintenance")["status"] == "paused"
    state = service.control_state(rid)
    assert state["status"] == "paused" and state["status_reason"] == "maintenance"
    assert op.control(rid, "pause")["status"] == "paused"  # asking again changes nothing
    with pytest.raises(Conflict, match="cannot start a run that is paused; from paused you may: resume, stop"):
        op.control(rid, "start")
    assert op.control(rid, "resume")["status"] == "running"
    assert op.control(rid, num_rounds=8)["num_rounds"] == 8
    service.report_round(rid, 6, 0, ["n1"], "completed")
    with pytest.raises(InvalidRequest, match="below the 6 rounds already reported"):
        op.control(rid, num_rounds=5)
    assert op.control(rid, "stop", reason="enough")["status"] == "stopped"
    assert service.set_status(rid, "finished")["status"] == "stopped"  # the operator's stop stands
    with pytest.raises(Conflict, match="cannot mark a stopped run as running"):
        service.set_status(rid, "running")
    assert op.control(rid, "start")["status"] == "running"  # restart: the federation resumes from the latest versions
    assert service.set_status(rid, "finished")["status"] == "finished"
    kinds = [
        (e["kind"], e["before"], e["after"]["status"])
        for e in service.events(run_id=rid)
        if e["kind"].startswith("run.")
    ]
    assert kinds[0][0] == "run.created"
    assert [k[2] for k in kinds] == [
        "created",
        "running",
        "paused",
        "running",
        "running",
        "stopped",
        "running",
        "finished",
    ]
    # (start, pause, resume, num_rounds 5 -> 8, stop, restart, finished; the repeated pause left no event)
    assert kinds[2][1] == {"status": "running", "num_rounds": 5}


def test_service_status_transitions(service, clients):
    rid = new_run(service)["id"]
    assert service.set_status(rid, "running")["status"] == "running"
    assert service.set_status(rid, "running")["status"] == "running"  # idempotent, no event
    assert service.set_status(rid, "failed", "superlink crashed")["status"] == "failed"
    run = service.get_run(rid)
    assert run["finished_at"] is not None and run["status_reason"] == "superlink crashed"
    assert service.set_status(rid, "running")["status"] == "running"  # restarted after a crash
    assert service.get_run(rid)["finished_at"] is None
    assert len([e for e in service.events(run_id=rid) if e["kind"] == "run.status"]) == 3
    clients["operator"].control(rid, "pause")
    assert service.set_status(rid, "running")["status"] == "paused"  # a restarted server finds the pause standing
    assert service.set_status(rid, "finished")["status"] == "finished"  # the last round ended during the pause


def test_round_reports(service, clients):
    rid = new_run(service)["id"]
    service.report_round(rid, 1, 0, ["a", "b"], "completed", stats={"seconds": 12.5})
    service.report_round(rid, 1, 2, ["c"], "skipped", reason="cohort below threshold")
    service.report_round(rid, 2, 2, ["a", "c"], "rerun")
    assert service.control_state(rid)["current_round"] == 2
    rounds = clients["viewer"].list_rounds(rid)
    assert [(r["round"], r["block_index"], r["status"]) for r in rounds] == [
        (1, 0, "completed"),
        (1, 2, "skipped"),
        (2, 2, "rerun"),
    ]
    assert rounds[0]["stats"] == {"seconds": 12.5} and rounds[1]["reason"] == "cohort below threshold"
    assert [r["round"] for r in service.list_rounds(rid, block_index=2)] == [1, 2]
    with pytest.raises(InvalidRequest, match="block_index 4 is out of range"):
        service.report_round(rid, 1, 4, [], "completed")
    with pytest.raises(InvalidRequest, match="status"):
        service.report_round(rid, 1, 0, [], "done")


def test_versions_filters_pagination_and_lineage(service, clients, http, tokens):
    rid = new_run(service)["id"]
    versions = {}
    for rnd in (1, 2, 3):
        for b in (0, 1):
            spec, w = make_block(b, seed=rnd)
            parent = versions.get((b, rnd - 1))
            v = service.register_block_version(
                rid,
                b,
                spec,
                w,
                VersionMeta(
                    round=rnd,
                    parent_version_id=parent["id"] if parent else None,
                    cohort=[f"n{rnd}", f"n{rnd + 1}"],
                    **{**DP, "record_epsilon": float(rnd + b)},
                    metrics={"loss": 1.0 / rnd},
                ),
            )
            assert v["created"] and v["version"] == rnd
            versions[(b, rnd)] = v
    # filters: block 1 with epsilon <= 3 -> rounds 1, 2 (epsilon 2, 3)
    got = clients["viewer"].list_block_versions(run_id=rid, block_index=1, max_epsilon=3.0)
    assert [(v["block_index"], v["round"]) for v in got] == [(1, 1), (1, 2)]
    assert [v["round"] for v in service.list_block_versions(run_id=rid, round=2)] == [2, 2]
    assert service.list_block_versions(sha256=versions[(0, 2)]["sha256"])[0]["id"] == versions[(0, 2)]["id"]
    page = http.get(
        "/api/versions",
        params={"run_id": rid, "limit": 4, "offset": 4},
        headers={"Authorization": f"Bearer {tokens['viewer']}"},
    ).json()
    assert page["total"] == 6 and [v["id"] for v in page["items"]] == [versions[(0, 3)]["id"], versions[(1, 3)]["id"]]
    # latest and spec fields
    latest = service.latest_block_version(rid, 1)
    assert latest["id"] == versions[(1, 3)]["id"] and latest["param_count"] > 0
    assert latest["owned_lo"] == pytest.approx(schedule(4).owned_interval(1)[0])
    assert service.latest_block_version(rid, 3) is None
    # lineage with an audit on the middle version
    audit = clients["researcher"].post_audit(
        versions[(0, 2)]["id"], "dlg", "update", "server", {}, "h", [1], {}, {}, "pass"
    )
    lin = clients["viewer"].lineage(versions[(0, 3)]["id"])
    assert lin["version"]["id"] == versions[(0, 3)]["id"] and lin["audits"] == []
    assert [s["version"]["id"] for s in lin["ancestors"]] == [versions[(0, 2)]["id"], versions[(0, 1)]["id"]]
    assert [a["id"] for a in lin["ancestors"][0]["audits"]] == [audit["id"]]
    assert lin["ancestors"][1]["version"]["cohort"] == ["n1", "n2"]
    # weights round trip, verified
    assert service.download_weights(versions[(1, 2)]["id"]) == make_block(1, seed=2)[1]


def test_nodes_registration_approval_and_heartbeat(service, clients):
    op = clients["operator"]
    key = ssh_key()
    n = service.register_node("acme-1", "Acme", key)
    assert (
        n["created"]
        and n["status"] == "pending"
        and n["fingerprint"].startswith("SHA256:")
        and n["id"].startswith("node-")
    )
    again = service.register_node("renamed", "Acme", key, fingerprint=n["fingerprint"])
    assert not again["created"] and again["id"] == n["id"] and again["display_name"] == "acme-1"
    with pytest.raises(InvalidRequest, match="does not match public_key"):
        service.register_node("x", "y", ssh_key(), fingerprint=n["fingerprint"])
    with pytest.raises(InvalidRequest, match="neither a PEM public key nor an OpenSSH"):
        service.register_node("x", "y", "not a key")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    m = service.register_node("globex", "Globex", pem)
    assert op.approve_node(n["id"])["status"] == "approved"
    assert op.revoke_node(m["id"], "left the consortium")["status"] == "revoked"
    assert [x["id"] for x in clients["viewer"].list_nodes("approved")] == [n["id"]]
    assert [x["id"] for x in clients["viewer"].list_nodes("revoked")] == [m["id"]]
    seen = service.node_seen(n["id"], {"address": "10.0.0.5", "version": "0.1.0"})
    assert seen["last_seen_at"] is not None and seen["info"]["address"] == "10.0.0.5"
    with pytest.raises(NotFound):
        service.node_seen("node-nope")
    kinds = [e["kind"] for e in service.events() if e["subject_type"] == "node"]
    assert kinds == ["node.registered", "node.registered", "node.approved", "node.revoked"]


def test_privacy_per_block_and_per_node(service):
    rid = new_run(service)["id"]
    a = service.register_node("a", "A", ssh_key())["id"]
    b = service.register_node("b", "B", ssh_key())["id"]
    for rnd in (1, 2):
        spec, w = make_block(0, seed=rnd)
        service.register_block_version(
            rid,
            0,
            spec,
            w,
            VersionMeta(
                round=rnd,
                cohort=[a, b],
                **{**DP, "record_epsilon": 0.5 * rnd},
                client_epsilon=0.2 * rnd,
                client_delta=1e-3,
            ),
        )
        service.record_node_privacy(a, rid, 0, rnd, 0.5 * rnd, 1e-5, "prv", sample_rate=0.01, steps=100 * rnd)
    service.record_node_privacy(
        a, rid, 1, 3, 1.4, 1e-5, "prv"
    )  # a's third release, on block 1: composed over all three
    service.record_node_privacy(b, rid, 0, 2, 1.0, 1e-5, "prv")
    p = service.run_privacy(rid)
    blk0 = p["blocks"][0]
    assert (
        blk0["record_epsilon"] == 1.0
        and blk0["client_epsilon"] == pytest.approx(0.4)
        and [h["round"] for h in blk0["history"]] == [1, 2]
    )
    assert p["blocks"][1]["record_epsilon"] is None
    by_node = {n["node_id"]: n for n in p["nodes"]}
    # records are the node's composed totals of the run: the newest one is the total, never a sum over blocks
    assert (
        by_node[a]["epsilon_total"] == 1.4 and by_node[a]["delta_total"] == 1e-5 and by_node[a]["accountant"] == "prv"
    )
    assert by_node[a]["round"] == 3 and by_node[a]["per_block"]["1"]["epsilon"] == 1.4
    assert by_node[a]["per_block"]["0"]["epsilon"] == 1.0 and by_node[a]["per_block"]["0"]["steps"] == 200
    assert service.get_node(a)["blocks_trained"] == 2
    assert service.node_privacy(b)["runs"][0]["epsilon_total"] == 1.0
    with pytest.raises(InvalidRequest, match="delta"):
        service.record_node_privacy(a, rid, 0, 3, 1.0, 0.0, "prv")


def test_audits(service, clients):
    rid = new_run(service)["id"]
    spec, w = make_block(0)
    v = service.register_block_version(rid, 0, spec, w, VersionMeta(round=1, **DP))
    res = clients["researcher"]
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    a = res.post_audit(
        v["id"],
        "gradient inversion",
        "update",
        "honest-but-curious",
        {"iters": 10},
        "abc123",
        [0, 1],
        {"psnr": {"value": 12.0, "ci": [11.0, 13.0]}},
        {"no_dp": "leaks"},
        "fail",
        {"recon.png": png, "report.json": b"{}"},
    )
    assert a["verdict"] == "fail" and a["run_id"] == rid and a["block_index"] == 0
    assert {f["filename"]: f["media_type"] for f in a["artifacts"]} == {
        "recon.png": "image/png",
        "report.json": "application/json",
    }
    assert clients["viewer"].download_artifact(a["id"], "recon.png") == png
    assert [x["id"] for x in clients["viewer"].list_audits(v["id"])] == [a["id"]]
    assert clients["viewer"].list_audits(run_id=rid, verdict="pass") == []
    assert clients["viewer"].get_audit(a["id"])["metrics"]["psnr"]["ci"] == [11.0, 13.0]
    with pytest.raises(InvalidRequest, match="verdict"):
        res.post_audit(v["id"], "x", "y", "z", {}, "h", [], {}, {}, "maybe")
    with pytest.raises(NotFound, match="block version 999"):
        res.post_audit(999, "x", "y", "z", {}, "h", [], {}, {}, "pass")
    with pytest.raises(NotFound):
        clients["viewer"].download_artifact(a["id"], "missing.png")


def test_events_are_filterable_and_ordered(service, clients):
    rid = new_run(service)["id"]
    service.set_status(rid, "running")
    clients["operator"].control(rid, "pause")
    ev = clients["viewer"].events(run_id=rid)
    assert [e["kind"] for e in ev] == ["run.created", "run.status", "run.control"]
    assert [e["actor"] for e in ev] == ["service", "service", "operator"]
    assert ev[2]["before"]["status"] == "running" and ev[2]["after"]["status"] == "paused"
    assert [e["id"] for e in clients["viewer"].events(after_id=ev[0]["id"], run_id=rid)] == [ev[1]["id"], ev[2]["id"]]
    assert clients["viewer"].events(kind="run.control", run_id=rid)[0]["id"] == ev[2]["id"]
    assert clients["admin"].whoami() == {
        "token_id": clients["admin"].whoami()["token_id"],
        "name": "admin",
        "role": "admin",
    }


def test_health_needs_no_token(http):
    assert http.get("/health").json()["status"] == "ok"


def test_dashboard_pages_render(service, clients, http, tokens):
    """Every page renders with data in it (the browser test clicks through them for real)."""
    rid = new_run(service, name="page-test")["id"]
    spec, w = make_block(0)
    v = service.register_block_version(rid, 0, spec, w, VersionMeta(round=1, cohort=["x"], **DP, metrics={"loss": 0.3}))
    service.report_round(rid, 1, 0, ["x"], "completed")
    a = clients["researcher"].post_audit(
        v["id"], "dlg", "update", "server", {}, "h", [0], {"m": 1.0}, {}, "pass", {"r.png": b"p"}
    )
    h = {"Authorization": f"Bearer {tokens['viewer']}"}
    for url, needle in [
        ("/", "page-test"),
        (f"/runs/{rid}", "Cohorts per round"),
        ("/nodes", "Nodes"),
        ("/audits", "dlg"),
        (f"/audits/{a['id']}", "r.png"),
        (f"/versions/{v['id']}", "Lineage"),
        ("/events", "version.registered"),
    ]:
        r = http.get(url, headers=h)
        assert r.status_code == 200 and needle in r.text, url
    charts = http.get(f"/ui/runs/{rid}/charts", headers=h).json()
    assert charts["metrics"]["loss"]["0"] == [[1, 0.3]] and charts["record_epsilon"]["0"] == [[1, DP["record_epsilon"]]]
    assert "Pause" not in http.get(f"/runs/{rid}", headers=h).text  # viewers get no control buttons
    assert "Pause" in http.get(f"/runs/{rid}", headers={"Authorization": f"Bearer {tokens['operator']}"}).text
    assert TASK in http.get(f"/ui/runs/{rid}/header", headers=h).text


def test_run_page_charts_the_assembled_models_accuracy_per_round(service, http, tokens):
    """The ServerApp's round-level report (status "evaluated": the assembled model's test accuracy after each
    round) is the run page's "model" series; the cohort table and the block panel do not show it."""
    rid = new_run(service, name="curve")["id"]
    h = {"Authorization": f"Bearer {tokens['viewer']}"}
    for r, acc in ((1, 0.55), (2, 0.61)):
        service.report_round(rid, r, 1, ["x"], "completed")
        service.report_round_metrics(rid, r, {"test_accuracy": acc, "note": "not a number"})
    charts = http.get(f"/ui/runs/{rid}/charts", headers=h).json()
    assert charts["metrics"] == {"test_accuracy": {"model": [[1, 0.55], [2, 0.61]]}}
    assert "evaluated" not in http.get(f"/ui/runs/{rid}/rounds", headers=h).text
    assert "evaluated" not in http.get(f"/ui/runs/{rid}/blocks", headers=h).text
    assert sorted(x["status"] for x in service.list_rounds(rid, round=2)) == ["completed", "evaluated"]


def test_dashboard_fragments_are_at_most_a_quarter_second_old(app, service, clients, http, tokens):
    """Fragments are reused for at most FragmentCache.max_age_s; then a change shows; dashboard actions at once."""
    rid = new_run(service)["id"]
    h = {"Authorization": f"Bearer {tokens['viewer']}"}
    age = app.state.registry.fragments.max_age_s
    node = service.register_node("n", "org", __import__("regseed").ssh_key())["id"]
    assert "No rounds reported yet" in http.get(f"/ui/runs/{rid}/rounds", headers=h).text
    service.report_round(rid, 7, 1, [node], "completed")
    time.sleep(age)
    assert ">7</td>" in http.get(f"/ui/runs/{rid}/rounds", headers=h).text
    assert http.get(f"/ui/runs/{rid}/charts", headers=h).json()["nodes"] == []
    service.record_node_privacy(node, rid, 1, 7, 0.25, 1e-5, "prv")
    time.sleep(age)
    assert http.get(f"/ui/runs/{rid}/charts", headers=h).json()["nodes"][0]["total"] == 0.25
    assert "st-created" in http.get(f"/ui/runs/{rid}/header", headers=h).text
    op = {"Authorization": f"Bearer {tokens['operator']}", "HX-Request": "true"}
    assert "st-running" in http.post(f"/ui/runs/{rid}/control", data={"action": "start"}, headers=op).text
    assert "st-running" in http.get(f"/ui/runs/{rid}/header", headers=h).text  # no wait: the action cleared the cache
