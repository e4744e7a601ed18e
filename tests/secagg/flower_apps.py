"""A ServerApp and a ClientApp that run dblocks' secure aggregation over Flower's Message API (test apps).

Each node's "update" for block b in round r is a deterministic function of (node id, block, round, the model it
was sent), so the test can compute the plain sum it expects; the ServerApp writes what it aggregated to
$DBLOCKS_SECAGG_TEST_OUT (JSON) for the test to compare.
"""

from __future__ import annotations

import json
import os

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from dblocks.privacy.mechanisms import clip_vector
from dblocks.privacy.secagg import Contribution, Extra, Layout, Policy
from dblocks.privacy.secagg.flower import FlowerSecAgg, flatten_arrays, handle

DIMS = {"0": 40, "1": 24}
SHAPES = {"0": [(5, 6), (10,)], "1": [(4, 6)]}
POLICY = Policy(dropout_fraction=0.2)
LAYOUTS = {b: Layout(d, 1.0, (Extra.count("num_examples", 10_000),)) for b, d in DIMS.items()}


def node_update(node_id: int, block: str, round_: int, model: list[np.ndarray]) -> np.ndarray:
    rng = np.random.default_rng([node_id % 2**32, int(block), round_])
    base = flatten_arrays(model)
    return clip_vector(rng.normal(size=base.size) + 0.01 * base, 1.0)


def num_examples(node_id: int) -> int:
    return int(node_id % 997) + 1


client_app = ClientApp()


@client_app.train("secagg")
def upload(msg: Message, context: Context) -> Message:
    def contribute(plan, message):
        model = message.content["model"].to_numpy_ndarrays()
        update = node_update(context.node_id, plan.block, plan.round, model)
        return Contribution(update, {"num_examples": num_examples(context.node_id)})

    return handle(msg, context, contribute, policy=POLICY)


@client_app.query("secagg")
def secagg(msg: Message, context: Context) -> Message:
    return handle(msg, context, policy=POLICY)


server_app = ServerApp()


def model_of(block: str, round_: int) -> list[np.ndarray]:
    return [np.full(s, round_ + int(block), dtype=np.float32) for s in SHAPES[block]]


def deal(nodes: list[int], round_: int) -> dict[str, list[int]]:
    """Round-robin-like: nodes re-dealt to the two blocks every round."""
    ids = sorted(int(n) for n in nodes)  # Flower node ids are uint64: never let numpy turn them into floats
    order = [ids[i] for i in np.random.default_rng(round_).permutation(len(ids))]
    half = len(order) // 2
    return {"0": sorted(order[:half]), "1": sorted(order[half:])}


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    rounds = int(context.run_config.get("rounds", 3))
    nodes = []
    for _ in range(60):  # wait for the SuperNodes
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= int(context.run_config.get("nodes", 6)):
            break
        import time

        time.sleep(1.0)

    def payload(stage, node_id, blocks):
        if stage != "upload":
            return None
        block = blocks[0]
        return RecordDict(
            {"model": ArrayRecord(model_of(block, current["round"])), "task": ConfigRecord({"block": block})}
        )

    current = {"round": 1}
    secagg = FlowerSecAgg(
        grid, LAYOUTS, timeout=float(context.run_config.get("timeout", 60)), payload=payload, policy=POLICY
    )
    cohorts = {1: deal(nodes, 1)}
    secagg.plan(1, cohorts[1])
    out = {"nodes": nodes, "rounds": []}
    for r in range(1, rounds + 1):
        current["round"] = r
        if r < rounds:
            cohorts[r + 1] = deal(nodes, r + 1)
            secagg.plan(r + 1, cohorts[r + 1])
        result = secagg.run(r)
        entry = {"round": r, "failures": result.failures, "blocks": {}}
        for block, agg in result.aggregates.items():
            entry["blocks"][block] = {
                "survivors": [int(s) for s in agg.survivors],
                "update_sum": agg.update_sum.tolist(),
                "extras": agg.extras_sum,
                "error_bound": agg.error_bound,
            }
        out["rounds"].append(entry)
    out["errors"] = [list(e) for e in secagg.exchange.errors]
    path = os.environ.get("DBLOCKS_SECAGG_TEST_OUT")
    if path:
        with open(path, "w") as f:
            json.dump(out, f)
