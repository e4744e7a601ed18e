"""ServerApp + ClientApp of bench/secagg.py: the same cohort and model aggregated by Flower 1.41's SecAgg+ (the
federation's `FlowerSecAggPlus`: legacy SecAggPlusWorkflow + secaggplus_mod) and by dblocks' protocol
(`FlowerSecAgg`), alternating round by round in one run. Local training is zero (each node's update is a fixed
function of node and round), so a round's time is all protocol overhead: stage latency, crypto and transfer."""

from __future__ import annotations

import json
import time

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

CLIP = 1.0


def node_update(node_id: int, round_: int, dim: int) -> np.ndarray:
    """The node's clipped update (float32 values), a fixed function of (node, round)."""
    x = np.random.default_rng([node_id % 2**32, round_]).normal(size=dim)
    return (x * (CLIP / max(CLIP, float(np.linalg.norm(x))))).astype(np.float32)


# ---- client ------------------------------------------------------------------------------------------------------
client_app = ClientApp()


@client_app.train(mods=[secaggplus_mod])
def flower_train(msg: Message, context: Context) -> Message:
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    dim = parameters_to_ndarrays(fitins.parameters)[0].size
    update = node_update(context.node_id, int(fitins.config["round"]), dim)
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([update]), num_examples=1, metrics={})
    return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)


@client_app.train("secagg")
def dblocks_upload(msg: Message, context: Context) -> Message:
    from dblocks.privacy.secagg import Contribution
    from dblocks.privacy.secagg.flower import handle

    def contribute(plan, message):
        dim = message.content["model"].to_numpy_ndarrays()[0].size
        return Contribution(node_update(context.node_id, plan.round, dim).astype(np.float64))

    return handle(msg, context, contribute)


@client_app.query("secagg")
def dblocks_stage(msg: Message, context: Context) -> Message:
    from dblocks.privacy.secagg.flower import handle

    return handle(msg, context)


# ---- server ------------------------------------------------------------------------------------------------------
def content_bytes(content: RecordDict) -> int:
    """Payload bytes of a RecordDict: array buffers + bytes/str values (+8 per number)."""
    total = 0
    for record in content.values():
        if isinstance(record, ArrayRecord):
            total += sum(len(a.data) for a in record.values())
        else:
            for value in record.values():
                items = value if isinstance(value, list) else [value]
                total += sum(len(v) if isinstance(v, (bytes, str)) else 8 for v in items)
    return total


class CountingGrid:
    """Forwards to the real Grid and counts messages and payload bytes in both directions. Both protocols'
    exchanges go through the same push-then-poll loop (`dblocks.server.federation.grid.send_and_receive`, one
    pull every `poll` seconds): Flower's workflow calls `send_and_receive`, ours `push_messages`/`pull_messages`
    through the same function, so neither protocol waits on a coarser poll than the other."""

    def __init__(self, grid: Grid, poll: float):
        self._grid, self.poll = grid, poll
        self.reset()

    def reset(self):
        self.sent = self.received = self.bytes_down = self.bytes_up = self.exchanges = 0
        self.exchange_seconds: list[float] = []

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def _out(self, messages):
        messages = list(messages)
        self.sent += len(messages)
        self.bytes_down += sum(content_bytes(m.content) for m in messages)
        return messages

    def _in(self, replies):
        replies = list(replies)
        self.received += len(replies)
        self.bytes_up += sum(content_bytes(m.content) for m in replies if not m.has_error())
        return replies

    def send_and_receive(self, messages, *, timeout=None):
        """Flower's workflow: the same push-then-poll loop as ours (Grid.send_and_receive would poll every 3 s)."""
        from dblocks.server.federation.grid import send_and_receive

        return send_and_receive(self, list(messages), timeout, poll=self.poll)

    # an exchange runs from the push to the pull that brings its last reply (or the next push, if some never came)
    def push_messages(self, messages):
        ids = list(self._grid.push_messages(self._out(messages)))
        self.exchanges += 1
        self._pending, self._t_push = set(ids), time.perf_counter()
        self.exchange_seconds.append(0.0)
        return ids

    def pull_messages(self, message_ids):
        replies = self._in(self._grid.pull_messages(message_ids))
        self._pending -= {m.metadata.reply_to_message_id for m in replies}
        self.exchange_seconds[-1] = time.perf_counter() - self._t_push
        return replies


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    from dblocks.privacy.secagg import Layout, Policy
    from dblocks.privacy.secagg.flower import FlowerSecAgg
    from dblocks.server.federation.aggregation import FlowerSecAggPlus
    from dblocks.server.federation.config import SecAggConfig
    from dblocks.server.federation.grid import send_and_receive

    cfg = context.run_config
    want, rounds, dim = int(cfg["nodes"]), int(cfg["rounds"]), int(cfg["dim"])
    deadline = time.time() + 120
    while len(list(grid.get_node_ids())) < want and time.time() < deadline:
        time.sleep(1.0)
    cohort = sorted(grid.get_node_ids())[:want]
    poll = float(cfg.get("poll", 0.05))
    counting = CountingGrid(grid, poll)
    weights = [np.zeros(dim, dtype=np.float32)]
    policy = Policy(dropout_fraction=0.2)

    def payload(stage, node_id, blocks):
        if stage == "upload":
            return RecordDict({"model": ArrayRecord(weights), "task": ConfigRecord({"block": blocks[0]})})
        return None

    ours = FlowerSecAgg(
        counting,
        {"0": Layout(dim, CLIP)},
        timeout=600,
        payload=payload,
        policy=policy,
        send=lambda messages, timeout: send_and_receive(counting, messages, timeout, poll=poll),
    )
    flower = FlowerSecAggPlus(SecAggConfig(mode="flower", threshold=0.6, timeout=600), CLIP)
    result = {"nodes": cohort, "dim": dim, "rounds": [], "plan": None}
    t0 = time.perf_counter()
    counting.reset()
    ours.plan(1, {"0": cohort})
    result["ours_registration"] = {"seconds": time.perf_counter() - t0, "exchanges": counting.exchanges}

    def error_vs_plain_mean(mean, survivors, r):
        plain = np.mean([node_update(int(n), r, dim).astype(np.float64) for n in survivors], axis=0)
        return float(np.abs(np.asarray(mean, dtype=np.float64) - plain).max())

    def entry(r, protocol, seconds, ok, failure, aggregated, max_abs_error):
        return {
            "round": r,
            "protocol": protocol,
            "seconds": seconds,
            "ok": ok,
            "failure": failure,
            "exchanges": counting.exchanges,
            "exchange_seconds": counting.exchange_seconds,
            "messages": counting.sent,
            "bytes_down": counting.bytes_down,
            "bytes_up": counting.bytes_up,
            "aggregated": aggregated,
            "max_abs_error": max_abs_error,
        }

    def flower_round(r):
        counting.reset()
        t0 = time.perf_counter()
        out = flower.aggregate(counting, context, 0, r, cohort, weights, {"round": r})
        seconds = time.perf_counter() - t0
        err = error_vs_plain_mean(out.mean[0], out.survivors, r) if out.ok else None
        return entry(r, "flower", seconds, out.ok, out.failure, len(out.survivors) if out.ok else 0, err)

    def dblocks_round(r):
        # round r+1 is planned inside the timed window: it is part of the protocol's cost
        counting.reset()
        t0 = time.perf_counter()
        if r < rounds:
            ours.plan(r + 1, {"0": cohort})
        res = ours.run(r)
        seconds = time.perf_counter() - t0
        agg = res.aggregates.get("0")
        err = error_vs_plain_mean(agg.mean_update, agg.survivors, r) if agg else None
        return entry(r, "dblocks", seconds, agg is not None, res.failures.get("0"), agg.count if agg else 0, err)

    for r in range(1, rounds + 1):
        # the protocols take turns going first, so neither always runs right after the other's load
        order = (flower_round, dblocks_round) if r % 2 else (dblocks_round, flower_round)
        result["rounds"] += [run(r) for run in order]
        print(json.dumps(result["rounds"][-2:]), flush=True)
    plan = ours.server.plans(1)[0]
    result["plan"] = {"k": plan.degree, "t": plan.threshold, "bits": plan.quant.bits}
    result["errors"] = [list(e) for e in ours.exchange.errors]
    if cfg.get("out"):
        with open(str(cfg["out"]), "w") as f:
            json.dump(result, f, indent=1)
