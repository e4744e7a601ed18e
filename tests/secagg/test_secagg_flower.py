"""The protocol over Flower's Message API: real Flower Messages, RecordDicts, Contexts and ClientApp routing.

Fast test: an in-process grid delivers every Message to the real ClientApp (a fresh call per message, node
state only in the node's Context, exceptions turned into error replies as Flower's runtime does).
Slow test: the same ServerApp and ClientApp under Flower's simulation engine (`run_simulation`, Ray).
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Error, Message, RecordDict

sys.path.insert(0, str(Path(__file__).parent))
import flower_apps  # noqa: E402

from dblocks.privacy.secagg.flower import flatten_arrays, from_recorddict, to_recorddict, unflatten_arrays  # noqa


class InProcessGrid:
    """Delivers Messages to a ClientApp in this process; nodes in `silent[(round, stage)]` never answer."""

    def __init__(self, client_app, node_ids):
        self.app = client_app
        self.contexts = {
            n: Context(run_id=1, node_id=n, node_config={}, state=RecordDict(), run_config={}) for n in node_ids
        }
        self.sent = Counter()
        self.silent: dict[tuple[int, str], set[int]] = {}

    def get_node_ids(self):
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            stage = msg.content["secagg"]["stage"]
            round_ = int(msg.content["secagg"]["round"])
            self.sent[(round_, node, stage)] += 1
            if node in self.silent.get((round_, stage), set()):
                continue  # no reply: a timeout
            # a real runtime hands the ClientApp a deserialised copy; the node's Context persists
            try:
                reply = self.app(msg, self.contexts[node])
            except Exception as err:  # Flower's runtime returns exceptions as error replies
                reply = Message(Error(code=0, reason=f"{type(err).__name__}: {err}"), reply_to=msg)
            replies.append(reply)
        return replies


def expected_sum(node_ids, block, round_):
    model = flower_apps.model_of(block, round_)
    return sum(flower_apps.node_update(n, block, round_, model) for n in node_ids)


def check_rounds(out):
    for entry in out["rounds"]:
        assert entry["failures"] == {}, entry["failures"]
        for block, agg in entry["blocks"].items():
            got = np.asarray(agg["update_sum"])
            want = expected_sum(agg["survivors"], block, entry["round"])
            assert np.abs(got - want).max() <= agg["error_bound"] * (1 + 1e-9)
            assert agg["extras"]["num_examples"] == sum(flower_apps.num_examples(n) for n in agg["survivors"])


def test_wire_round_trip():
    msg = {
        "stage": "upload",
        "session": b"s" * 16,
        "round": 3,
        "instances": ["3:0"],
        "next": [],
        "3:0/masked": np.arange(7, dtype=np.uint32),
        "3:0/shares": np.zeros((2, 16), np.uint32),
        "3:0/peers": ["1", "2"],
        "3:0/signatures": [b"a", b"b"],
    }
    back = from_recorddict(to_recorddict(msg))
    assert back.keys() == msg.keys()
    for k, v in msg.items():
        if isinstance(v, np.ndarray):
            assert np.array_equal(back[k], v) and back[k].dtype == v.dtype
        else:
            assert back[k] == v
    shapes = [(2, 3), (4,)]
    arrays = [np.arange(6).reshape(2, 3), np.arange(4)]
    assert all(np.array_equal(a, b) for a, b in zip(unflatten_arrays(flatten_arrays(arrays), shapes), arrays))


@pytest.fixture
def serverapp_identity():
    """What Flower's ServerApp runtime sets before `main` runs (Messages read the run id from it)."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def test_protocol_over_flower_messages_in_process(tmp_path, monkeypatch, serverapp_identity):
    nodes = [2**63 + 1001 + 7 * i for i in range(12)]  # Flower node ids are uint64
    grid = InProcessGrid(flower_apps.client_app, nodes)
    late = nodes[1]
    grid.silent[(2, "upload")] = {late}  # times out at round 2's upload (never trains)
    crashing = nodes[5]  # raises while unmasking round 3 (error reply)
    original = flower_apps.client_app._registered_funcs["query.secagg"]

    def crash_at_round3_unmask(msg, context):
        if (
            context.node_id == crashing
            and msg.content["secagg"]["stage"] == "unmask"
            and msg.content["secagg"]["round"] == 3
        ):
            raise RuntimeError("node crashed")
        return original(msg, context)

    monkeypatch.setitem(flower_apps.client_app._registered_funcs, "query.secagg", crash_at_round3_unmask)
    out_path = tmp_path / "out.json"
    monkeypatch.setenv("DBLOCKS_SECAGG_TEST_OUT", str(out_path))
    context = Context(
        run_id=1,
        node_id=0,
        node_config={},
        state=RecordDict(),
        run_config={"rounds": 4, "nodes": len(nodes), "timeout": 5},
    )
    flower_apps.main(grid, context)
    out = json.loads(out_path.read_text())
    check_rounds(out)
    r2 = out["rounds"][1]
    assert all(late not in b["survivors"] for b in r2["blocks"].values())
    assert any(crashing in b["survivors"] for b in out["rounds"][2]["blocks"].values())  # its input still counts
    assert ["unmask", crashing] == out["errors"][0][:2] and "node crashed" in out["errors"][0][2]
    # steady state: exactly upload + unmask per node per round; the late node re-joins in round 3
    for r in (2, 3, 4):
        for n in nodes:
            stages = {s for (rr, nn, s) in grid.sent if rr == r and nn == n}
            if r == 3 and n == late:
                assert stages == {"join", "upload", "unmask"}
            elif not (r == 2 and n == late):
                assert stages == {"upload", "unmask"}, (r, n, stages)
    # the node state lives only in its Flower Context (a ConfigRecord holding the serialised client)
    assert "dblocks.secagg" in grid.contexts[nodes[0]].state.config_records


@pytest.mark.slow
def test_protocol_under_flower_simulation_engine(tmp_path, monkeypatch):
    """ServerApp + 6 ClientApps under Flower's Ray simulation engine (real Message routing and runtimes)."""
    pytest.importorskip("ray")
    from flwr.simulation import run_simulation

    out_path = tmp_path / "out.json"
    monkeypatch.setenv("DBLOCKS_SECAGG_TEST_OUT", str(out_path))
    # Ray workers import the ClientApp's module by name: put this folder on their path
    here = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p))
    run_simulation(
        flower_apps.server_app,
        flower_apps.client_app,
        num_supernodes=6,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": 2, "include_dashboard": False},
        },
    )
    assert out_path.exists(), "the ServerApp did not finish (see the simulation log above)"
    out = json.loads(out_path.read_text())
    assert len(out["rounds"]) == 3
    check_rounds(out)
