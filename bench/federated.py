"""Federated DiffusionBlocks on MNIST 5k: accuracy with and without DP, bytes and memory per client, one run.

Setup (printed and stored): the fixed stratified 4000/1000 split; 1000 training images are public (the
operator may pretrain the blocks on them), 3000 are private and spread over 12 companies (Dirichlet 0.5);
B = 4 blocks of the `mnist-fed` preset, one cohort of 12 / B = 3 companies per block per round.

Engine: an in-process simulation (not Flower's simulation engine) that runs the product's own round code:
`scheduler.assign` forms the cohorts, the client's `train_task` trains (Opacus DP-SGD, privacy ledger, clipped
delta), dblocks' SecAgg+ (`dblocks.privacy.secagg`: SecAggServer, one SecAggClient per company, LocalNetwork,
`plan_round`/`run_round`, one instance per block per round) aggregates the flattened float64 clipped deltas,
and the server's `add_central_noise` (sized on the aggregate's `count`) and `GlobalModel.apply_update` finish
the round. Bytes: every protocol request/reply, plus the block weights and task the ServerApp attaches to the
`upload` request, sized as the Flower RecordDict protobuf it would travel as (`WireCounter`).

Rows: centralized end-to-end, centralized DiffusionBlocks, federated DiffusionBlocks without DP, federated with
record-level DP (epsilon <= 8 at delta 1e-5, all rounds composed, RDP accountant; PRV reported too), each from
scratch and from public pretraining; optionally DP + pretraining + client-level central noise z_c = 1. Plus: the
client-level central noise table (cost at cohort sizes 3..10000), bytes per client per round vs FedAvg of the
whole model, and client peak memory (one block vs the whole model, same DP-SGD, bench/memory.py's measurement
in fresh processes).

    flock /tmp/dblocks-heavy.lock .venv/bin/python bench/federated.py --central-noise-row
    # ~50 min, 2 processes (--jobs)
    ... --resume    # keep the rows of bench/results/federated.json (same setup), run only the missing ones
    .venv/bin/python bench/federated.py --quick    # a smoke run (~1.5 min)
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, update_summary, write_json  # noqa: E402


def print_flush(message: str, prefix: str = "") -> None:
    print(prefix + message, flush=True)


@dataclass(frozen=True)
class FedSetting:
    rounds: int
    steps: int  # DP-SGD (or SGD) steps per company per round
    sample_rate: float
    lr: float
    record_noise: float  # 0: no DP
    record_clip: float
    update_clip: float
    cohort_size: int = 6
    central_noise: float = 0.0
    trainable: str = "all"  # BlockTask.trainable: which parameters of the block the companies train
    server_lr: float = 1.0  # RunConfig.server_lr
    server_momentum: float = 0.0  # RunConfig.server_momentum: heavy-ball on the released (already private) means
    adapt_blocks: tuple[int, ...] | None = None  # RunConfig.adapt_blocks: the blocks trained (None: all)


def companies_data(num: int, public: int, seed: int = 0):
    from dblocks.server.ops.localfed import split_public_private
    from dblocks.shared.data import partition_dirichlet

    pub, private, test = split_public_private("mnist-fed", public, seed)
    parts = partition_dirichlet(private.y.numpy(), num, 0.5, seed=seed, min_size=50)
    return pub, private, [private.subset(p, f"company{i}") for i, p in enumerate(parts)], test


def accuracy_of(model, test) -> float:
    from dblocks.shared.sampler import classify

    blocks = [b.module.eval() for b in model.blocks]
    with torch.no_grad():
        lp = classify(blocks, model.schedule, test.x, model.schedule.block_grid(1))
    return float((lp.argmax(-1) == test.y).float().mean())


def federated(companies, test, num_blocks: int, s: FedSetting, init_dir: str | None, seed: int, log) -> dict:
    """Rounds of the product's client and server code, in one process, aggregated by dblocks' SecAgg+.

    Per round r: `assign` forms one cohort per block; the SecAgg+ plan of round r+1 is fixed before round r runs
    (so steady-state rounds are two exchanges, upload and unmask); at `upload` each company receives its block's
    weights and task, trains with `train_task` (DP-SGD, ledger, clipped delta) and contributes the delta as one
    float64 vector clipped to L2 <= update_clip; the server unmasks each block's sum, takes mean_update over the
    `count` survivors, adds central noise sized on that count and applies it. Wire bytes are counted per
    (round, company) as Flower would serialise each request/reply (see `WireCounter`)."""
    from dblocks.client.ledger import PrivacyLedger
    from dblocks.client.trainer import train_task
    from dblocks.privacy.accounting import epsilon
    from dblocks.privacy.mechanisms import add_central_noise
    from dblocks.privacy.mechanisms import clip_vector as clip_l2
    from dblocks.privacy.secagg import (
        Contribution,
        Layout,
        LocalNetwork,
        SecAggClient,
        SecAggServer,
        plan_round,
        run_round,
    )
    from dblocks.privacy.secagg.flower import flatten_arrays, unflatten_arrays
    from dblocks.server.federation.config import round_lr
    from dblocks.server.federation.model_state import GlobalModel
    from dblocks.server.federation.scheduler import NodeInfo, assign
    from dblocks.shared.fedmsg import BlockTask
    from dblocks.shared.presets import get_preset

    preset = get_preset("mnist-fed")
    schedule = preset.noise_schedule(num_blocks)
    model = GlobalModel.initial(preset, schedule, seed, init_dir)
    tmp = Path(tempfile.mkdtemp())
    ids = [f"company{i:02d}" for i in range(len(companies))]
    ledgers = {cid: PrivacyLedger(tmp / f"{cid}.json", budget=math.inf, accountant="rdp") for cid in ids}
    data = dict(zip(ids, companies))
    rng = np.random.default_rng(seed)
    dp = s.record_noise > 0
    shapes = {b: model.param_shapes(b) for b in range(num_blocks)}
    layouts = {
        str(b): Layout(dim=sum(int(np.prod(sh)) for sh in shapes[b]), clip_norm=s.update_clip)
        for b in range(num_blocks)
    }

    def cohorts_of(r: int) -> dict[str, list[str]]:
        plan = assign(
            [NodeInfo(i) for i in range(len(companies))],
            num_blocks,
            r,
            s.cohort_size,
            3,
            seed=seed,
            blocks=s.adapt_blocks,
        )
        if plan.skipped:
            raise RuntimeError(f"round {r}: blocks skipped: {plan.skipped}")
        return {str(b): [ids[c] for c in cohort] for b, cohort in plan.cohorts.items()}

    tasks: dict[tuple[int, str], tuple[BlockTask, list[np.ndarray]]] = {}  # (round, company) -> what it receives
    train_seconds: dict[int, float] = {}
    norms: list[float] = []

    def contribute(cid: str):
        def at_upload(plan) -> Contribution:
            task, arrays = tasks[(plan.round, cid)]
            t = time.perf_counter()
            # the company's DP draws from its own generator: seeded here so that a benchmark row is reproducible
            g = torch.Generator().manual_seed(seed * 7919 + plan.round * 101 + ids.index(cid))
            upd = train_task(task, arrays, data[cid], ledgers[cid], generator=g)
            train_seconds[plan.round] = train_seconds.get(plan.round, 0.0) + time.perf_counter() - t
            norms.append(upd.norm_before_clip)
            return Contribution(clip_l2(flatten_arrays(upd.delta), s.update_clip))

        return at_upload

    # identities pinned out of band (as the registry's signed directory does in the product): no trust on first use
    from dblocks.privacy.secagg import Identity, TrustStore

    identities = {cid: Identity(cid) for cid in ids}
    pinned = {cid: ident.public for cid, ident in identities.items()}
    net = LocalNetwork(
        {cid: SecAggClient(cid, identities[cid], trust=TrustStore(dict(pinned), tofu=False)) for cid in ids},
        {cid: contribute(cid) for cid in ids},
    )
    wire = WireCounter(net, tasks)
    server = SecAggServer(trust=TrustStore(dict(pinned), tofu=False))
    curve, round_seconds, t0, diverged = [], {}, time.time(), None
    velocity: dict = {}  # server momentum per block
    cohorts = cohorts_of(1)
    plan_round(server, 1, cohorts, layouts, wire)
    for r in range(1, s.rounds + 1):
        t_round = time.perf_counter()
        nxt = cohorts_of(r + 1) if r < s.rounds else None
        if nxt is not None:
            plan_round(server, r + 1, nxt, layouts, wire)
        for b, cohort in cohorts.items():
            weights = model.weights_arrays(int(b))
            for cid in cohort:
                task = BlockTask(
                    run_id="bench",
                    round=r,
                    block_index=int(b),
                    attempt=0,
                    spec_json=model.blocks[int(b)].spec.to_json(),
                    noise_multiplier=s.record_noise,
                    max_grad_norm=s.record_clip if dp else 1e6,
                    sample_rate=s.sample_rate,
                    steps=s.steps,
                    delta=1e-5,
                    accountant="rdp",
                    lr=round_lr(s.lr, r, s.rounds),
                    weight_decay=0.0,
                    update_clip=s.update_clip,
                    trainable=s.trainable,
                )
                tasks[(r, cid)] = (task, weights)
        try:
            result = run_round(server, r, wire)
        except FloatingPointError as e:  # a company refused a NaN/Inf update: the model has diverged; stop the row
            diverged = {"round": r, "reason": str(e)}
            curve.append((r, accuracy_of(model, test)))
            log(f"    round {r}: diverged ({e}); accuracy {curve[-1][1]:.4f}")
            break
        if result.failures:
            raise RuntimeError(f"round {r}: secure aggregation failed: {result.failures}")
        for b, agg in result.aggregates.items():
            mean = unflatten_arrays(agg.mean_update, shapes[int(b)])
            noised, _ = add_central_noise(mean, s.update_clip, s.central_noise, agg.count, rng)
            if s.server_momentum:  # post-processing of the released means: no privacy cost
                from dblocks.server.federation.model_state import momentum_step

                noised = momentum_step(velocity, int(b), noised, s.server_momentum)
            model.apply_update(int(b), noised, s.server_lr, r)
        round_seconds[r] = time.perf_counter() - t_round
        tasks = {k: v for k, v in tasks.items() if k[0] > r}
        wire.tasks = tasks
        cohorts = nxt
        if r % max(1, s.rounds // 6) == 0 or r == s.rounds:
            curve.append((r, accuracy_of(model, test)))
            log(f"    round {r}: accuracy {curve[-1][1]:.4f} ({time.time() - t0:.0f} s)")
    hist = [[e.mechanism for e in led.entries] for led in ledgers.values()]
    eps = {acc: max(epsilon(h, 1e-5, acc) for h in hist) if dp else math.inf for acc in ("rdp", "prv")}
    done = max(1, len(round_seconds))  # rounds completed (fewer than s.rounds if the model diverged)
    total_round = sum(round_seconds.values())
    total_train = sum(v for k, v in train_seconds.items() if k in round_seconds)
    return {
        "accuracy": curve[-1][1],
        "curve": curve,
        "diverged": diverged,
        "epsilon_rdp": eps["rdp"],
        "epsilon_prv": eps["prv"],
        "seconds": time.time() - t0,
        "updates_per_company": [len(led.entries) for led in ledgers.values()],
        "update_norm_before_clip": {
            "median": float(np.median(norms)),
            "max": float(np.max(norms)),
            "fraction_clipped": float(np.mean(np.array(norms) > s.update_clip)),
        },
        "round_seconds_mean": total_round / done,
        "training_seconds_mean": total_train / done,
        "protocol_seconds_mean": (total_round - total_train) / done,
        "bytes": wire.summary(num_blocks, s.rounds),
    }


class WireCounter:
    """The protocol's exchange (a LocalNetwork) with every request and reply also sized as Flower sends it.

    Flower bytes: each protocol message becomes the RecordDict the Flower glue builds (`to_recorddict`); the
    `upload` request also carries the application payload the ServerApp adds (the block's float32 weights in an
    ArrayRecord and the BlockTask, BlockSpec JSON included, in a ConfigRecord), and the size is that of the
    RecordDict's protobuf (`recorddict_to_proto(...).ByteSize()`); Flower's Message metadata (ids, timestamps, a
    few dozen bytes) is left out. The LocalNetwork's own counters (protocol messages only, approximate:
    `message_bytes`) are reported next to it."""

    def __init__(self, net, tasks) -> None:
        from collections import Counter

        self.net, self.tasks = net, tasks
        self.down: Counter = Counter()
        self.up: Counter = Counter()
        self.payload_down: Counter = Counter()

    def __call__(self, stage: str, requests: dict) -> dict:
        from flwr.app import ArrayRecord, ConfigRecord, RecordDict
        from flwr.common.serde import recorddict_to_proto

        from dblocks.privacy.secagg.flower import to_recorddict

        for cid, req in requests.items():
            key = (int(req["round"]), cid)
            content = RecordDict()
            if stage == "upload":
                task, weights = self.tasks[key]
                content = RecordDict(
                    {"arrays": ArrayRecord([np.asarray(w) for w in weights]), "task": ConfigRecord(task.to_config())}
                )
                self.payload_down[key] += recorddict_to_proto(content).ByteSize()
            self.down[key] += recorddict_to_proto(to_recorddict(req, into=content)).ByteSize()
        replies = self.net(stage, requests)
        for cid, rep in replies.items():
            self.up[(int(rep["round"]) if "round" in rep else int(requests[cid]["round"]), cid)] += recorddict_to_proto(
                to_recorddict(rep)
            ).ByteSize()
        return replies

    def summary(self, num_blocks: int, rounds: int) -> dict:
        """Per (round, company): bytes down/up; steady state = rounds after the first (register/join are once)."""
        keys = sorted(set(self.down) | set(self.up))
        per = [
            {
                "round": r,
                "company": c,
                "down": self.down[(r, c)],
                "up": self.up[(r, c)],
                "model_and_task_down": self.payload_down[(r, c)],
                "protocol_down_approx": self.net.bytes_down[(r, c)],
                "protocol_up_approx": self.net.bytes_up[(r, c)],
            }
            for r, c in keys
        ]
        steady = [p for p in per if p["round"] > 1] or per
        worst = max(steady, key=lambda p: p["down"] + p["up"])
        first = max((p for p in per if p["round"] == 1), key=lambda p: p["down"] + p["up"])
        mean = lambda k, rows: float(np.mean([p[k] for p in rows]))  # noqa: E731
        return {
            "worst_steady_round": worst,
            "worst_first_round": first,
            "mean_steady": {
                k: mean(k, steady)
                for k in ("down", "up", "model_and_task_down", "protocol_down_approx", "protocol_up_approx")
            },
            "mean_all_rounds_total": float(np.mean([p["down"] + p["up"] for p in per])),
        }


def centralized(train, test, num_blocks: int | None, epochs: int, init_dir: str | None, seed: int) -> float:
    from dblocks.shared.presets import get_preset
    from dblocks.shared.workflow import accuracy, train_diffusion_blocks, train_end_to_end

    p = get_preset("mnist-fed")
    out = Path(tempfile.mkdtemp())
    cfg = replace(p.train, epochs=epochs, seed=seed)
    if num_blocks is None:
        train_end_to_end(p, train, cfg, out)
    elif init_dir is None:
        train_diffusion_blocks(p, p.noise_schedule(num_blocks), train, cfg, out)
    else:  # fine-tune the pretrained blocks on the private data, one block at a time
        import shutil

        from dblocks.shared.training import train_block
        from dblocks.shared.wire import load_block, pack_block, save_block

        shutil.copytree(init_dir, out, dirs_exist_ok=True)
        for i in range(num_blocks):
            _, block = load_block(out, i)
            train_block(block, i, train.x, train.y, replace(cfg, lr=cfg.lr / 3))
            save_block(out, *pack_block(p.name, p.noise_schedule(num_blocks), i, block))
    return accuracy(out, test)


def pretrain(public, num_blocks: int, epochs: int, seed: int) -> str:
    from dblocks.shared.presets import get_preset
    from dblocks.shared.workflow import train_diffusion_blocks

    p = get_preset("mnist-fed")
    out = tempfile.mkdtemp()
    train_diffusion_blocks(p, p.noise_schedule(num_blocks), public, replace(p.train, epochs=epochs, seed=seed), out)
    return out


def central_noise_table(update_clip: float, rounds: int, dim: int, delta: float = 1e-5) -> dict:
    """Client-level DP from central noise: for cohort size K, the noise multiplier z_c that keeps a client that
    joins every release at client-level epsilon <= 10 over `rounds` releases (RDP, no subsampling), the std it
    adds to each coordinate of the released mean, z_c C / K, and the noise norm over the largest norm the
    clipped mean can have, sqrt(d) z_c C / K / C = sqrt(d) z_c / K, at our block's d. The noise stops swamping
    the update once that ratio is <= 1, i.e. from K >= sqrt(d) z_c on (`meaningful_from_cohort`)."""
    from dblocks.privacy.accounting import MechanismStep, epsilon

    from_z = lambda z: epsilon([MechanismStep(z, 1.0, rounds)], delta, "rdp")  # noqa: E731
    lo, hi = 0.1, 200.0
    for _ in range(60):  # bisect z_c for epsilon = 10
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if from_z(mid) > 10 else (lo, mid)
    z = hi
    rows = [
        {
            "cohort": k,
            "z_c": z,
            "noise_std_on_mean": z * update_clip / k,
            "noise_norm_over_clip_norm": math.sqrt(dim) * z / k,
        }
        for k in (3, 6, 12, 50, 100, 1000, 10000)
    ]
    return {
        "target_client_epsilon": 10.0,
        "delta": delta,
        "releases": rounds,
        "block_dim": dim,
        "update_clip": update_clip,
        "rows": rows,
        "meaningful_from_cohort": math.ceil(math.sqrt(dim) * z),
        "client_epsilon_of_z_c_1": from_z(1.0),
    }


def fedavg_bytes(num_blocks: int) -> dict:
    """What a FedAvg client moves per round for the whole model: every block's float32 weights down and a
    float32 update of the same arrays up, each as one Flower ArrayRecord (protobuf size; no task config,
    which favours FedAvg)."""
    from flwr.app import ArrayRecord, RecordDict
    from flwr.common.serde import recorddict_to_proto

    from dblocks.server.federation.model_state import GlobalModel
    from dblocks.shared.presets import get_preset

    p = get_preset("mnist-fed")
    m = GlobalModel.initial(p, p.noise_schedule(num_blocks), 0)
    arrays = [a for b in range(num_blocks) for a in m.weights_arrays(b)]
    one_way = recorddict_to_proto(RecordDict({"arrays": ArrayRecord(arrays)})).ByteSize()
    return {
        "down": one_way,
        "up": one_way,
        "total": 2 * one_way,
        "float32_parameters": sum(a.size for a in arrays),
        "blocks": num_blocks,
        "block_update_dim": max(sum(int(np.prod(s)) for s in m.param_shapes(b)) for b in range(num_blocks)),
    }


# ---------------------------------------------------------------------------------------------------
# client peak memory: one block vs the whole model, same DP-SGD (bench/memory.py's measurement, one process each)
# ---------------------------------------------------------------------------------------------------
MEMORY_MODELS = ("block", "whole_diffusion_blocks", "end_to_end")


def memory_worker(
    model: str, num_blocks: int, records: int, sample_rate: float, steps: int, total_layers: int | None = None
) -> dict:
    """Peak memory of `steps` DP-SGD steps (train_block_dp: Opacus ghost clipping, Poisson rate q, AdamW) on
    `records` records, measured as in bench/memory.py: (a) VmHWM - VmRSS growth after a warm-up of a tiny model
    of the same kind and malloc_trim, the peak reset through /proc/self/clear_refs; (b) torch's accounting:
    parameters + gradients + AdamW's 2 moments + the tensors autograd saves in one forward of the expected batch
    q N (deduplicated by storage, parameters excluded).
    model: `block` = block 0 of B (L/B layers), `whole_diffusion_blocks` = the B=1 model (all L layers, whole
    noise range, same loss and code), `end_to_end` = the L-layer TransformerClassifier with cross-entropy.
    total_layers: L (default: the preset's 4, one layer per block at B = 4)."""
    import ctypes
    import gc

    import torch.nn.functional as F
    from memory import saved_tensor_counter, status_kib

    from dblocks.privacy.dpsgd import DPConfig, train_block_dp
    from dblocks.shared.models import TransformerClassifier, build_block, param_count
    from dblocks.shared.presets import get_preset
    from dblocks.shared.training import TrainConfig, per_sample_loss

    torch.set_num_threads(1)
    p = get_preset("mnist-fed")
    p = replace(p, total_layers=total_layers or p.total_layers)
    train, _ = p.load_split()
    x, y = train.x[:records].clone(), train.y[:records].clone()
    del train

    def build(preset):
        if model == "end_to_end":
            return TransformerClassifier(preset.arch.with_depth(preset.total_layers)), (
                lambda m, xb, yb, g: F.cross_entropy(m(xb), yb, reduction="none")
            )
        b = num_blocks if model == "block" else 1
        return build_block(preset.block_arch(b), preset.noise_schedule(b)), None

    def run(net, loss_fn, n_steps):
        cfg = TrainConfig(epochs=1, lr=1e-3, weight_decay=0.0, warmup=0.0, decay=False, grad_clip=math.inf, seed=0)
        dpc = DPConfig(
            noise_multiplier=1.0, max_grad_norm=1.0, batch_size=sample_rate * records, steps=n_steps, accountant="rdp"
        )
        train_block_dp(net, 0, x, y, cfg, dpc, loss_fn=loss_fn)

    tiny_p = replace(p, arch=replace(p.arch, width=8, heads=2), total_layers=num_blocks)
    run(*build(tiny_p), 1)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    base = status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    net, loss_fn = build(p)
    run(net, loss_fn, steps)
    peak = status_kib("VmHWM")
    # (b) torch accounting at the expected batch
    params = list(net.parameters())
    record, saved = saved_tensor_counter(net)
    batch = max(1, round(sample_rate * records))
    net.train()
    with torch.autograd.graph.saved_tensors_hooks(record, lambda t: t):
        if loss_fn is None:
            per_sample_loss(net, 0, x[:batch], y[:batch], generator=torch.Generator().manual_seed(0))
        else:
            loss_fn(net, x[:batch], y[:batch], None)
    pbytes = sum(q.numel() * q.element_size() for q in params)
    return {
        "model": model,
        "total_layers": p.total_layers,
        "param_count": param_count(net),
        "records": records,
        "sample_rate": sample_rate,
        "expected_batch": sample_rate * records,
        "steps": steps,
        "rss_growth_mib": (peak - base) / 1024,
        "rss_peak_mib": peak / 1024,
        "torch_mib": {
            "params_grads_adam": 4 * pbytes / 2**20,
            "saved_activations": sum(saved.values()) / 2**20,
            "total": (4 * pbytes + sum(saved.values())) / 2**20,
        },
    }


def measure_memory(num_blocks: int, records: int, sample_rate: float, steps: int, total_layers: int = 0) -> dict:
    """One fresh process per model (bench/memory.py's fixed glibc mmap threshold, one thread)."""
    from memory import FIXED_MMAP

    rows = {}
    for model in MEMORY_MODELS:
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--memory-worker",
            model,
            "--blocks",
            str(num_blocks),
            "--memory-records",
            str(records),
            "--sample-rate",
            str(sample_rate),
            "--memory-steps",
            str(steps),
            "--memory-layers",
            str(total_layers),
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        r = subprocess.run(cmd, capture_output=True, text=True, env={**env, **FIXED_MMAP, "OMP_NUM_THREADS": "1"})
        if r.returncode != 0:
            raise RuntimeError(f"memory worker {model} failed:\n{r.stderr[-3000:]}")
        rows[model] = json.loads(r.stdout.strip().splitlines()[-1])
    blk = rows["block"]
    ratios = {}
    for whole in ("whole_diffusion_blocks", "end_to_end"):
        ratios[whole] = {
            "rss": blk["rss_growth_mib"] / rows[whole]["rss_growth_mib"],
            "torch": blk["torch_mib"]["total"] / rows[whole]["torch_mib"]["total"],
        }
    worst = max(v for r in ratios.values() for v in r.values())
    return {"rows": rows, "ratios_block_over_whole": ratios, "ratio_worst": worst}


def bytes_ratios(measured: dict, fedavg: dict, num_blocks: int) -> dict:
    """Client bytes per round (the worst company of a steady-state round) over FedAvg's whole-model bytes."""
    worst, first = measured["worst_steady_round"], measured["worst_first_round"]
    return {
        "client_worst_steady_round": worst,
        "client_worst_first_round": first,
        "client_mean_steady_round": measured["mean_steady"],
        "fedavg_whole_model_per_round": fedavg,
        "ratio": (worst["down"] + worst["up"]) / fedavg["total"],
        "ratio_down": worst["down"] / fedavg["down"],
        "ratio_up": worst["up"] / fedavg["up"],
        "ratio_first_round": (first["down"] + first["up"]) / fedavg["total"],
        "bar": 1.2 / num_blocks,
    }


def no_dp_gaps(rows: dict) -> dict:
    """Centralized DiffusionBlocks minus federated without DP, in points, like for like: the same data and the
    same start on both sides. From scratch the federation learns from the 3000 private records only, so its
    centralized twin trains on those pooled (the 4000-record centralized row, public images included, is reported
    next to it); from public pretraining both sides fine-tune the same pretrained blocks on the private records.
    The summary takes the worse of the two pairs."""
    pairs = {
        "from scratch": ("centralized DiffusionBlocks, private only", "federated, no DP"),
        "pretrained": ("centralized DiffusionBlocks, pretrained", "federated, no DP, pretrained"),
    }
    gaps = {k: round(100 * (rows[c]["accuracy"] - rows[f]["accuracy"]), 2) for k, (c, f) in pairs.items()}
    gaps["from scratch, vs centralized on all 4000 (public included)"] = round(
        100 * (rows["centralized DiffusionBlocks"]["accuracy"] - rows["federated, no DP"]["accuracy"]), 2
    )
    gaps["worst like for like"] = max(gaps["from scratch"], gaps["pretrained"])
    return gaps


def summarize(rows: dict, bytes_: dict, memory: dict) -> None:
    best_dp = max(
        rows["federated, record-level DP"], rows["federated, record-level DP, pretrained"], key=lambda r: r["accuracy"]
    )
    update_summary(
        RESULTS,
        {
            "federation.gap_points_no_dp": no_dp_gaps(rows)["worst like for like"],
            "federation.accuracy_dp": best_dp["accuracy"],
            "federation.epsilon_dp": best_dp["epsilon_rdp"],
            "federation.bytes_ratio": bytes_["ratio"],
            "federation.memory_ratio": memory["dp_setting"]["ratio_worst"],
        },
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--companies", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--steps", type=int, default=6, help="DP-SGD steps per company per round")
    ap.add_argument("--sample-rate", type=float, default=0.3, help="DP-SGD Poisson rate q")
    ap.add_argument("--lr", type=float, default=5e-4, help="company lr with DP (cosine over rounds)")
    ap.add_argument("--nodp-rounds", type=int, default=80, help="rounds without DP (no privacy budget to spend)")
    ap.add_argument("--nodp-steps", type=int, default=40)
    ap.add_argument("--nodp-sample-rate", type=float, default=0.1)
    ap.add_argument("--nodp-lr", type=float, default=2e-3)
    ap.add_argument(
        "--nodp-update-clip", type=float, default=20.0, help="L2 clip of a no-DP delta (reported if it bites)"
    )
    ap.add_argument("--epsilon", type=float, default=7.9, help="record-level target (RDP, delta 1e-5, all rounds)")
    ap.add_argument(
        "--central-noise-row", action="store_true", help="also run DP + pretrained with central noise z_c=1"
    )
    ap.add_argument("--jobs", type=int, default=2, help="federated rows run in parallel (one process and thread each)")
    ap.add_argument(
        "--resume", action="store_true", help="keep the rows of the results file (same setup), run the rest"
    )
    ap.add_argument("--memory-worker", choices=MEMORY_MODELS, help=argparse.SUPPRESS)
    ap.add_argument("--memory-records", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--memory-steps", type=int, default=5)
    ap.add_argument("--memory-layers", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(1)  # one thread: on a shared 2-core machine OpenMP spinning costs 10x
    if args.memory_worker:
        print(
            json.dumps(
                memory_worker(
                    args.memory_worker,
                    args.blocks,
                    args.memory_records,
                    args.sample_rate,
                    args.memory_steps,
                    args.memory_layers or None,
                )
            )
        )
        return
    t_start = time.time()
    B = args.blocks
    q = args.quick
    from dblocks.privacy.accounting import noise_for_epsilon

    rounds, nodp_rounds = (2, 2) if q else (args.rounds, args.nodp_rounds)
    steps, nodp_steps = (2, 2) if q else (args.steps, args.nodp_steps)
    # every company trains one block every round: its history is (z, q, rounds * steps); pick z for epsilon <= 8
    z = noise_for_epsilon(args.epsilon, 1e-5, args.sample_rate, rounds * steps, "rdp")
    cohort = args.companies // B
    dp_setting = FedSetting(
        rounds=rounds,
        steps=steps,
        sample_rate=args.sample_rate,
        lr=args.lr,
        record_noise=z,
        record_clip=1.0,
        update_clip=2.0,
        cohort_size=cohort,
    )
    nodp_setting = FedSetting(
        rounds=nodp_rounds,
        steps=nodp_steps,
        sample_rate=args.nodp_sample_rate,
        lr=args.nodp_lr,
        record_noise=0.0,
        record_clip=1e6,
        update_clip=args.nodp_update_clip,
        cohort_size=cohort,
    )
    epochs = 1 if q else 20
    pub, private, comps, test = companies_data(args.companies, 1000, args.seed)
    if q:
        comps = [c.subset(np.arange(min(len(c), 60))) for c in comps]
        test = test.subset(np.random.default_rng(0).permutation(len(test))[:200])
    command = "python bench/federated.py " + " ".join(sys.argv[1:])
    setup = {
        "command": command,
        "dataset": "MNIST 5k, fixed stratified 4000/1000 split",
        "public": len(pub),
        "private": len(private),
        "companies": len(comps),
        "company_sizes": [len(c) for c in comps],
        "dirichlet_alpha": 0.5,
        "blocks": B,
        "cohort_size": cohort,
        "preset": "mnist-fed",
        "dp": asdict(dp_setting),
        "no_dp": asdict(nodp_setting),
        "central_epochs": epochs,
        "torch_threads": 1,
        "engine": "in-process simulation of the product's round code (scheduler.assign, client train_task, "
        "dblocks SecAgg+ via privacy.secagg LocalNetwork, add_central_noise, GlobalModel.apply_update)",
    }
    print(json.dumps(setup, indent=1))
    log = print_flush
    out_path = RESULTS / ("federated-quick.json" if q else "federated.json")
    # --resume: keep the rows (and memory) of an earlier invocation with exactly this setup, run only what is missing
    prev = json.loads(out_path.read_text()) if args.resume and out_path.exists() else {}
    if prev:
        same = {k: v for k, v in prev["setup"].items() if k not in ("command", "commands")}
        if same != {k: v for k, v in setup.items() if k != "command"}:
            raise SystemExit(f"--resume: {out_path} was made with another setup; run without --resume")
        setup["commands"] = prev["setup"].get("commands", [prev["setup"]["command"]]) + [command]
    # --- memory first (cheap, fresh processes), then the accuracy rows (bytes are counted inside them)
    largest = max(len(c) for c in comps)
    memory = prev.get("memory")
    if memory is None:
        memory = {"dp_setting": measure_memory(B, largest, dp_setting.sample_rate, 2 if q else args.memory_steps)}
        if not q:
            memory["batch_256"] = measure_memory(B, 2560, 0.1, args.memory_steps)
            # the same at 1 layer per block (B layers in all): how the fixed per-step cost of a block (its embeddings
            # and head, the backward's transients) weighs against its layers; not the federated model, not in the
            # summary
            memory["one_layer_per_block"] = measure_memory(B, largest, dp_setting.sample_rate, args.memory_steps, B)
    log(json.dumps({k: v["ratios_block_over_whole"] for k, v in memory.items()}))
    rows = dict(prev.get("rows", {}))
    from dblocks.shared.data import Dataset
    from dblocks.shared.workflow import accuracy

    runs = [
        ("federated, no DP", nodp_setting, False),
        ("federated, no DP, pretrained", nodp_setting, True),
        ("federated, record-level DP, pretrained", dp_setting, True),
        ("federated, record-level DP", dp_setting, False),
    ]
    if args.central_noise_row:
        runs.append(
            (
                "federated, record-level DP, pretrained, central noise z_c=1",
                replace(dp_setting, central_noise=1.0),
                True,
            )
        )
    runs = [r for r in runs if r[0] not in rows]
    all_train = Dataset(torch.cat([pub.x, private.x]), torch.cat([pub.y, private.y]), "image", 10, "train-4000")
    central = {
        "centralized end-to-end": (None, all_train, False),
        "centralized DiffusionBlocks": (B, all_train, False),
        # the companies' pooled data, no pretraining: exactly what the federation from scratch learns from
        "centralized DiffusionBlocks, private only": (B, private, False),
        "centralized DiffusionBlocks, pretrained": (B, private, True),
    }
    init = None
    if any(pre for _, _, pre in runs) or any(k not in rows for k in ["pretrained on public only", *central]):
        init = pretrain(pub, B, epochs, args.seed)
        rows.setdefault("pretrained on public only", {"accuracy": accuracy(init, test)})
        log(f"pretrained: {rows['pretrained on public only']}")
    for name, (blocks, train_set, pre) in central.items():
        if name not in rows:
            rows[name] = {"accuracy": centralized(train_set, test, blocks, epochs, init if pre else None, args.seed)}
    log(json.dumps(rows))
    fedavg = fedavg_bytes(B)
    dim = fedavg["block_update_dim"]
    result = {
        "setup": setup,
        "rows": rows,
        "central_noise": central_noise_table(dp_setting.update_clip, dp_setting.rounds, dim),
        "memory": memory,
        "complete": False,
    }
    for key in ("bytes", "no_dp_gap_points"):
        if key in prev:
            result[key] = prev[key]
    write_json(out_path, result)  # partial results land after every row
    # the federated rows are independent: run them `--jobs` at a time, longest first, one torch thread each
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = {
            name: pool.submit(
                federated,
                comps,
                test,
                B,
                s,
                init if pre else None,
                args.seed,
                functools.partial(print_flush, prefix=f"[{name}] "),
            )
            for name, s, pre in runs
        }
        for name, _, _ in runs:
            rows[name] = futures[name].result()
            log(f"{name}:")
            log(
                f"  -> {rows[name]['accuracy']:.4f}, epsilon (rdp) {rows[name]['epsilon_rdp']:.2f}, "
                f"round {rows[name]['round_seconds_mean']:.2f} s (protocol {rows[name]['protocol_seconds_mean']:.3f} s)"
                + (f", diverged in round {rows[name]['diverged']['round']}" if rows[name]["diverged"] else "")
            )
            if name == "federated, record-level DP, pretrained":
                result["bytes"] = bytes_ratios(rows[name]["bytes"], fedavg, B)
            result["seconds"] = prev.get("seconds", 0.0) + time.time() - t_start
            write_json(out_path, result)
            if name == "federated, record-level DP" and not q:  # the four rows the summary keys need are done
                result["no_dp_gap_points"] = no_dp_gaps(rows)
                write_json(out_path, result)
                summarize(rows, result["bytes"], memory)
    result["complete"] = True
    write_json(out_path, result)
    print(json.dumps({k: v.get("accuracy") for k, v in rows.items()}, indent=1))
    print(json.dumps({"bytes": result.get("bytes")}, indent=1))
    log(f"total {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()
