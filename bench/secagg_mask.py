"""Secure-aggregation cost and exactness at 1M parameters (dblocks.privacy.secagg).

1. Masking: per-client CPU seconds to encode a clipped 1M-parameter update and add its self mask plus k pairwise
   masks (k = the SecAgg+ degree chosen for cohorts of 10 / 100 / 1000), X25519 + HKDF per neighbour included.
   Flower 1.41's mask expansion (32-bit seed, numpy MT19937) is timed on the same vector for reference.
2. A real in-process protocol run (10 clients, 1M parameters, 3 rounds, one client dropping at upload in round 2):
   per-client CPU seconds of the whole upload step, server CPU seconds to unmask, and the max abs error of the
   aggregate mean vs the plain mean of the clipped updates.

Writes bench/results/secagg_mask.json and the keys secagg.mask_seconds_per_million_params (cohort of 100) and
secagg.max_abs_error into bench/results/summary.json (read-modify-write, only these keys).
Run: flock /tmp/dblocks-heavy.lock .venv/bin/python bench/secagg_mask.py
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from dblocks.privacy.mechanisms import clip_vector
from dblocks.privacy.secagg import (
    Contribution,
    Layout,
    LocalNetwork,
    Policy,
    SecAggClient,
    SecAggServer,
    choose_params,
    plan_round,
)
from dblocks.privacy.secagg.keys import new_x25519, pair_seed, x25519_public
from dblocks.privacy.secagg.prg import MaskExpander
from dblocks.privacy.secagg.quant import QuantSpec

RESULTS = Path(__file__).resolve().parent / "results"
DIM = 1_000_000
REPEATS = 7


def cpu(fn, repeats=REPEATS):
    """Median CPU seconds (process time) of fn() over `repeats` calls."""
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return float(np.median(times))


def mask_cost(n: int, x: np.ndarray) -> dict:
    params = choose_params(n)
    quant = QuantSpec.plan(n, DIM, 1.0)
    mine = new_x25519()
    peers = [x25519_public(new_x25519()) for _ in range(params.k)]
    expander = MaskExpander(quant.length, quant.dtype)
    self_seed = os.urandom(32)

    def mask():
        acc = quant.encode(x)
        expander.add(acc, self_seed, 1)
        for i, pub in enumerate(peers):
            expander.add(acc, pair_seed(mine, pub, b"plan", "me", f"p{i}"), 1 if i % 2 else -1)
        acc &= quant.dtype.type(quant.modulus_mask)
        return acc

    total = cpu(mask)
    encode = cpu(lambda: quant.encode(x))
    acc = quant.encode(x)
    one_mask = cpu(lambda: [expander.add(acc, self_seed, 1) for _ in range(10)]) / 10
    agreement = cpu(lambda: [pair_seed(mine, pub, b"plan", "me", "p") for pub in peers]) / params.k
    return {
        "cohort": n,
        "k": params.k,
        "t": params.t,
        "modulus_bits": quant.bits,
        "word": str(quant.dtype),
        "cpu_s": total,
        "encode_cpu_s": encode,
        "one_mask_expand_add_cpu_s": one_mask,
        "one_x25519_hkdf_cpu_s": agreement,
    }


def flower_mask_cost() -> float | None:
    try:
        from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
    except ImportError:
        return None
    return cpu(lambda: pseudo_rand_gen(os.urandom(32), 1 << 22, [(DIM,)]))


def protocol_run(n: int = 10, rounds: int = 3) -> dict:
    rng = np.random.default_rng(0)
    ids = [f"c{i:02d}" for i in range(n)]
    updates = {
        (r, c): clip_vector(rng.normal(size=DIM) * rng.uniform(0.001, 0.01), 1.0)
        for r in range(1, rounds + 1)
        for c in ids
    }
    server = SecAggServer(policy=Policy(dropout_fraction=0.2))
    clients = {c: SecAggClient(c, policy=Policy(dropout_fraction=0.2)) for c in ids}
    net = LocalNetwork(clients, {c: (lambda plan, c=c: Contribution(updates[(plan.round, c)])) for c in ids})
    net.drop[(2, "upload")] = {ids[3]}
    upload_cpu: list[float] = []
    original = net.__call__

    def timed(stage, requests):
        if stage != "upload":
            return original(stage, requests)
        replies = {}
        for cid, req in requests.items():  # one client at a time, CPU time of its whole upload step
            t0 = time.process_time()
            replies.update(original(stage, {cid: req}))
            upload_cpu.append(time.process_time() - t0)
        return replies

    layouts = {"0": Layout(DIM, 1.0)}
    plan_round(server, 1, {"0": ids}, layouts, timed)
    errors, unmask_cpu = [], []
    for r in range(1, rounds + 1):
        if r < rounds:
            plan_round(server, r + 1, {"0": ids}, layouts, timed)
        joins = server.join_requests(r)
        if joins:
            server.receive_join(timed("join", joins))
        server.receive_upload(timed("upload", server.upload_requests(r)))
        replies = timed("unmask", server.unmask_requests(r))
        t0 = time.process_time()
        aggregates, failures = server.receive_unmask(replies, r)
        unmask_cpu.append(time.process_time() - t0)
        assert not failures, failures
        agg = aggregates["0"]
        plain_mean = sum(updates[(r, c)] for c in agg.survivors) / agg.count
        errors.append(float(np.abs(agg.mean_update - plain_mean).max()))
    plan = server.plans(1)[0]
    return {
        "clients": n,
        "dim": DIM,
        "rounds": rounds,
        "k": plan.degree,
        "t": plan.threshold,
        "modulus_bits": plan.quant.bits,
        "step": plan.quant.step,
        "upload_cpu_s_per_client_median": float(np.median(upload_cpu)),
        "server_unmask_cpu_s": unmask_cpu,
        "max_abs_error_of_mean": max(errors),
        "error_bound_of_mean": plan.quant.step / 2,
    }


def main() -> None:
    x = clip_vector(np.random.default_rng(1).normal(size=DIM), 1.0)
    masks = [mask_cost(n, x) for n in (10, 100, 1000)]
    for m in masks:
        print(
            f"cohort {m['cohort']:5d}: k={m['k']:3d} {m['modulus_bits']}-bit {m['word']}: masking 1M params "
            f"{m['cpu_s']:.3f} CPU s per client (encode {m['encode_cpu_s']:.3f} s, one mask "
            f"{m['one_mask_expand_add_cpu_s'] * 1e3:.2f} ms, one key agreement {m['one_x25519_hkdf_cpu_s'] * 1e3:.2f} "
            "ms)"
        )
    flower = flower_mask_cost()
    if flower is not None:
        print(f"flower 1.41 pseudo_rand_gen (32-bit seed, MT19937), one 1M mask: {flower:.3f} CPU s")
    run = protocol_run()
    print(
        f"protocol, 10 clients x 1M params: upload step {run['upload_cpu_s_per_client_median']:.3f} CPU s per "
        f"client, server unmask {max(run['server_unmask_cpu_s']):.3f} CPU s, max abs error of the mean "
        f"{run['max_abs_error_of_mean']:.3g} (bound {run['error_bound_of_mean']:.3g})"
    )
    headline = next(m for m in masks if m["cohort"] == 100)
    out = {
        "dim": DIM,
        "masking": masks,
        "flower_mask_expansion_cpu_s": flower,
        "protocol": run,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "processor": platform.machine()},
        "headline": {
            "mask_seconds_per_million_params": headline["cpu_s"] * 1e6 / DIM,
            "headline_cohort": 100,
            "headline_k": headline["k"],
            "max_abs_error": run["max_abs_error_of_mean"],
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "secagg_mask.json").write_text(json.dumps(out, indent=2) + "\n")
    summary_path = RESULTS / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary["secagg.mask_seconds_per_million_params"] = round(out["headline"]["mask_seconds_per_million_params"], 4)
    summary["secagg.max_abs_error"] = out["headline"]["max_abs_error"]
    summary_path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    print(f"wrote {RESULTS / 'secagg_mask.json'} and secagg.* keys in {summary_path}")


if __name__ == "__main__":
    main()
