"""The ServerApp's round loop and the real dblocks ClientApp, wired through an in-process grid.

No processes: every Message goes to `dblocks.client.clientapp.app` (a fresh call per message, node state only
in the node's Context, exceptions returned as error replies, as Flower's runtime does). The real parts are all
there otherwise: DP-SGD with Opacus, the privacy ledger, dblocks' SecAgg+ with its masks and shares, central
noise, checkpoints. The process tests (test_processes.py) run the same over SuperLink/SuperNodes and TLS.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Error, Message, RecordDict
from update_recorder import recording  # test-only: saves each clipped delta (tests/federation/update_recorder.py)

from dblocks.client.clientapp import app as client_app
from dblocks.server.federation.config import RunConfig
from dblocks.server.federation.serverapp import Federation
from dblocks.server.ops.localfed import LocalFederation

TASK, B = "digits", 2


class InProcessGrid:
    """Delivers Messages to the ClientApp; nodes in `dead` never answer (as after a crash)."""

    def __init__(self, node_config: dict[int, dict]):
        self.contexts = {
            n: Context(run_id=1, node_id=n, node_config=nc, state=RecordDict(), run_config={})
            for n, nc in node_config.items()
        }
        self.dead: set[int] = set()
        self.kill_when_training: int | None = None  # this node dies in the middle of its next upload
        self.received: Counter = Counter()  # (node, message type) -> count
        self.upload_blocks: dict[int, list[int]] = {}

    def get_node_ids(self):
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            if node in self.dead:
                continue
            self.received[(node, msg.metadata.message_type)] += 1
            if "secagg" in msg.content:
                self.received[(node, msg.content["secagg"]["stage"])] += 1
            if msg.metadata.message_type == "train.secagg":
                self.upload_blocks.setdefault(node, []).append(int(msg.content["task"]["block_index"]))
                assert len(msg.content["arrays"]) > 0
                if node == self.kill_when_training:
                    self.dead.add(node)
                    continue
            try:
                reply = client_app(msg, self.contexts[node])
            except Exception as err:
                reply = Message(Error(code=0, reason=f"{type(err).__name__}: {err}"), reply_to=msg)
            replies.append(reply)
        return replies


@pytest.fixture
def setup(tmp_path, monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity  # what Flower's runtime sets in a ServerApp process

    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    import dblocks.client.trainer as trainer

    monkeypatch.setattr(trainer, "train_task", recording(trainer.train_task, tmp_path / "debug"))
    _, paths, _ = LocalFederation(tmp_path, task=TASK).company_data(6, public=100, alpha=0.5)
    nodes = {
        1000 + i: {
            "data-path": str(p),
            "ledger-path": str(tmp_path / f"ledger{i}.json"),
            "epsilon-budget": 50.0,
            "threads": 1,
        }
        for i, p in enumerate(paths)
    }
    cfg = RunConfig(
        run_id="inproc",
        task=TASK,
        num_blocks=B,
        num_rounds=1,
        cohort_size=3,
        min_cohort=3,
        record_noise=1.0,
        record_clip=1.0,
        record_sample_rate=0.1,
        record_steps=3,
        update_clip=0.5,
        checkpoint_dir=str(tmp_path / "run" / "checkpoints"),
    )
    return tmp_path, nodes, cfg


def _deltas(debug: Path, block: int) -> list[list[np.ndarray]]:
    out = []
    for f in sorted(debug.glob(f"r1-b{block}-*.npz")):
        z = np.load(f)
        out.append([z[k] for k in z.files])
    return out


def test_round_aggregates_the_clipped_deltas_of_each_cohort(setup):
    tmp, nodes, cfg = setup
    grid = InProcessGrid(nodes)
    fed = Federation(cfg, grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}))
    before = [[p.detach().numpy().copy() for p in b.module.parameters()] for b in fed.model.blocks]
    fed.run()
    # each company got exactly one block's weights and task, once
    assert sorted(len(v) for v in grid.upload_blocks.values()) == [1] * 6
    assert Counter(b for v in grid.upload_blocks.values() for b in v) == {0: 3, 1: 3}
    assert all(grid.received[(n, "train")] == 0 for n in nodes)  # Flower's SecAgg+ path unused
    # the released update (no central noise) is the mean of the cohort's clipped deltas, within quantisation
    for b in range(B):
        deltas = _deltas(tmp / "debug", b)
        assert len(deltas) == 3
        want = [np.mean([d[k] for d in deltas], axis=0) for k in range(len(deltas[0]))]
        got = [a.detach().numpy() - w for a, w in zip(fed.model.blocks[b].module.parameters(), before[b])]
        dim = sum(w.size for w in want)
        assert max(float(np.abs(g - w).max()) for g, w in zip(got, want)) < 2e-4 * 0.5 / dim**0.5 / 2 + 1e-6
        assert max(float(np.abs(w).max()) for w in want) > 1e-3
    status = json.loads((tmp / "run" / "status.json").read_text())
    assert status["status"] == "finished" and status["rounds"][0]["blocks"] == [0, 1]


def test_a_dropped_member_of_a_cohort_of_three_gets_the_block_skipped_not_leaked(setup):
    """SecAgg+ with 3 members cannot drop one (the other two would be revealed to each other); the block is
    re-run only if 3 members still answer, else skipped with the reason. The other block is unaffected."""
    tmp, nodes, cfg = setup
    grid = InProcessGrid(nodes)
    grid.kill_when_training = 1000
    fed = Federation(cfg, grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}))
    before = [[p.detach().numpy().copy() for p in b.module.parameters()] for b in fed.model.blocks]
    fed.run()
    victim_block = grid.upload_blocks[1000][0]
    status = json.loads((tmp / "run" / "status.json").read_text())
    assert status["rounds"][0]["blocks"] == [1 - victim_block]
    unchanged = [a.detach().numpy() for a in fed.model.blocks[victim_block].module.parameters()]
    assert all(np.array_equal(a, w) for a, w in zip(unchanged, before[victim_block]))


def test_steady_state_rounds_take_two_exchanges(setup):
    """Round r plans round r+1 before its uploads, so the upload replies announce next round's keys: after the
    first round a member sees exactly `upload` and `unmask`, no `join`."""
    tmp, nodes, cfg = setup
    from dataclasses import replace

    grid = InProcessGrid(nodes)
    fed = Federation(
        replace(cfg, num_rounds=3, record_steps=1),
        grid,
        Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}),
    )
    fed.run()
    status = json.loads((tmp / "run" / "status.json").read_text())
    assert [e["blocks"] for e in status["rounds"]] == [[0, 1]] * 3
    for n in nodes:
        stages = {s: grid.received[(n, s)] for s in ("register", "join", "upload", "unmask")}
        assert stages == {"register": 1, "join": 1, "upload": 3, "unmask": 3}, (n, stages)


def test_membership_changes_between_rounds_never_fail_the_run(setup):
    """#20: a company leaving, rejoining with the same key, and a new company joining between rounds: the plan
    made ahead no longer matches, so the round plans afresh under a new protocol round (on main: `ValueError:
    instance N:0 is already planned` failed the run). Every released block sums each member's delta once."""
    tmp, nodes, cfg = setup
    from dataclasses import replace

    grid = InProcessGrid(nodes)
    fed = Federation(
        replace(cfg, num_rounds=4, record_steps=1),
        grid,
        Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}),
    )
    fed.round(1)
    grid.dead.add(1001)  # leaves between rounds: 5 left, one block gets a cohort of 3, the other is skipped
    fed.round(2)
    grid.dead.discard(1001)  # rejoins with the same key
    fed.round(3)
    newcomer = 2000  # joins mid-run (its own ledger; data like company 0's)
    grid.contexts[newcomer] = Context(
        run_id=1,
        node_id=newcomer,
        state=RecordDict(),
        run_config={},
        node_config={**nodes[1000], "ledger-path": str(tmp / "ledger-new.json")},
    )
    fed.round(4)
    trained = [e["blocks"] for e in fed.history]
    assert trained[0] == [0, 1] and len(trained[1]) == 1 and trained[2] == [0, 1] and trained[3] == [0, 1], trained
    assert any(b == newcomer for b in grid.upload_blocks)
    for r, blocks in enumerate(trained, start=1):  # one recorded delta per member of each released cohort
        for b in blocks:
            assert len(list((tmp / "debug").glob(f"r{r}-b{b}-*.npz"))) == 3, (r, b)
