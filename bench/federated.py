"""Federated DiffusionBlocks on MNIST 5k: accuracy with and without DP, bytes and memory per client.

Setup (printed and stored): the fixed stratified 4000/1000 split; 1000 training images are public (the
operator may pretrain the blocks on them), 3000 are private and spread over 12 companies (Dirichlet 0.5).

Engine: an in-process simulation that runs the product's own round code — `scheduler.assign`, the client's
`train_task` (Opacus DP-SGD, privacy ledger, clipped delta) and the server's `add_central_noise` and
`GlobalModel.apply_update` — with the exact mean standing in for secure aggregation (SecAgg+ returns that mean
within 1e-7, see tests/federation/test_processes.py). The Flower processes themselves are measured by
`dbserver demo` and bench/scale.py; here the question is what the algorithm reaches.

Rows: centralized end-to-end, centralized DiffusionBlocks, federated DiffusionBlocks without DP, federated with
record-level DP (epsilon <= 8 at delta 1e-5, all rounds composed, RDP accountant; PRV reported too), each from
scratch and from public pretraining. Plus: client-level central noise (cost at our cohort sizes and the cohort
size where it becomes meaningful), bytes per client per round vs FedAvg of the whole model, client peak memory
vs training the whole model.

    python bench/federated.py            # full table (~1 h on 2 cores)
    python bench/federated.py --quick    # a smoke run (< 1 min)
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"


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


def companies_data(num: int, public: int, seed: int = 0):
    from dblocks.server.federation.localfed import split_public_private
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
    """Rounds of the product's client and server code, in one process."""
    from dblocks.client.ledger import PrivacyLedger
    from dblocks.client.trainer import train_task
    from dblocks.privacy.accounting import MechanismStep, epsilon
    from dblocks.server.federation.aggregation import add_central_noise
    from dblocks.server.federation.model_state import GlobalModel
    from dblocks.server.federation.scheduler import NodeInfo, assign
    from dblocks.shared.fedmsg import BlockTask
    from dblocks.shared.presets import get_preset

    preset = get_preset("mnist-fed")
    schedule = preset.noise_schedule(num_blocks)
    model = GlobalModel.initial(preset, schedule, seed, init_dir)
    tmp = Path(tempfile.mkdtemp())
    ledgers = [PrivacyLedger(tmp / f"c{i}.json", budget=math.inf, accountant="rdp") for i in range(len(companies))]
    rng = np.random.default_rng(seed)
    curve, t0 = [], time.time()
    dp = s.record_noise > 0
    for r in range(1, s.rounds + 1):
        plan = assign([NodeInfo(i) for i in range(len(companies))], num_blocks, r, s.cohort_size, 2, seed=seed)
        for b, cohort in plan.cohorts.items():
            deltas = []
            for c in cohort:
                task = BlockTask(run_id="bench", round=r, block_index=b, attempt=0, spec_json=model.blocks[b].spec.to_json(),
                                 noise_multiplier=s.record_noise, max_grad_norm=s.record_clip if dp else 1e6,
                                 sample_rate=s.sample_rate, steps=s.steps, delta=1e-5, accountant="rdp", lr=s.lr,
                                 weight_decay=0.0, update_clip=s.update_clip if dp else 1e6, seed=seed * 7919 + r * 101 + c)
                deltas.append(train_task(task, model.weights_arrays(b), companies[c], ledgers[c]).delta)
            mean = [np.mean([d[k] for d in deltas], axis=0) for k in range(len(deltas[0]))]
            noised, _ = add_central_noise(mean, s.update_clip, s.central_noise, len(cohort), rng)
            model.apply_update(b, noised, 1.0, r)
        if r % max(1, s.rounds // 6) == 0 or r == s.rounds:
            curve.append((r, accuracy_of(model, test)))
            log(f"    round {r}: accuracy {curve[-1][1]:.4f} ({time.time() - t0:.0f} s)")
    hist = [[e.mechanism for e in led.entries] for led in ledgers]
    eps = {acc: max(epsilon(h, 1e-5, acc) for h in hist) if dp else math.inf for acc in ("rdp", "prv")}
    return {"accuracy": curve[-1][1], "curve": curve, "epsilon_rdp": eps["rdp"], "epsilon_prv": eps["prv"],
            "seconds": time.time() - t0, "updates_per_company": [len(led.entries) for led in ledgers]}


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


def central_noise_table(update_clip: float, rounds: int, delta: float = 1e-5) -> list[dict]:
    """Client-level DP from central noise: for cohort size K, the noise multiplier z_c that keeps a client that
    joins every release at epsilon <= 10 over `rounds` releases, and the std it adds to each coordinate of the
    released mean, sqrt(d) z_c C / K in norm, next to the clipped mean's own norm (<= C)."""
    from dblocks.privacy.accounting import MechanismStep, epsilon

    from_z = lambda z: epsilon([MechanismStep(z, 1.0, rounds)], delta, "rdp")  # noqa: E731
    lo, hi = 0.1, 200.0
    for _ in range(60):  # bisect z_c for epsilon = 10
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if from_z(mid) > 10 else (lo, mid)
    z = hi
    rows = []
    for k in (3, 6, 12, 50, 100, 1000, 10000):
        rows.append({"cohort": k, "z_c": z, "noise_std_on_mean": z * update_clip / k,
                     "noise_norm_over_signal_norm_d=10k": math.sqrt(10_000) * z / k})
    return rows


def message_bytes(num_blocks: int) -> dict:
    """Bytes a client receives and sends per round: our block (weights down, masked update up, as Flower
    serialises them) vs FedAvg of the whole model (all B blocks down and up)."""
    from flwr.app import ArrayRecord

    from dblocks.server.federation.model_state import GlobalModel
    from dblocks.shared.presets import get_preset

    p = get_preset("mnist-fed")
    m = GlobalModel.initial(p, p.noise_schedule(num_blocks), 0)

    def size(arrays):
        rec = ArrayRecord([np.asarray(a) for a in arrays])
        return sum(len(a.data) for a in rec.values())

    down = [size(m.weights_arrays(b)) for b in range(num_blocks)]
    # SecAgg+ sends the quantised masked update as integers of the same count as the float32 parameters
    up = [size([np.zeros(s, dtype=np.float32) for s in m.param_shapes(b)]) for b in range(num_blocks)]
    ours = max(d + u for d, u in zip(down, up))
    fedavg = sum(down) + sum(up)
    return {"ours_bytes": ours, "fedavg_bytes": fedavg, "ratio": ours / fedavg, "per_block_down": down, "per_block_up": up}


MEM_WORKER = r"""
import json, resource, sys, torch
from dblocks.privacy.dpsgd import DPConfig, train_block_dp
from dblocks.shared.models import build_block
from dblocks.shared.presets import get_preset
from dblocks.shared.training import TrainConfig
from dblocks.server.federation.localfed import split_public_private
torch.set_num_threads(1)
which, B = sys.argv[1], int(sys.argv[2])
p = get_preset("mnist-fed")
_, private, _ = split_public_private("mnist-fed", 1000)
x, y = private.x[:256], private.y[:256]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if which == "block":  # one block of L/B layers, as a company trains it
    m, sched = build_block(p.block_arch(B), p.noise_schedule(B)), p.noise_schedule(B)
else:  # the whole model: all layers in one block over the whole noise range (what FedAvg would train)
    m, sched = build_block(p.block_arch(1), p.noise_schedule(1)), p.noise_schedule(1)
train_block_dp(m, 0, x, y, TrainConfig(epochs=1, lr=1e-3), DPConfig(noise_multiplier=1.0, batch_size=64, steps=3))
print(json.dumps({"peak_rss_growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024}))
"""


def client_memory(num_blocks: int) -> dict:
    out = {}
    for which in ("block", "whole"):
        r = subprocess.run([sys.executable, "-c", MEM_WORKER, which, str(num_blocks)], capture_output=True, text=True, check=True)
        out[which] = json.loads(r.stdout.strip().splitlines()[-1])["peak_rss_growth_mb"]
    out["ratio"] = out["block"] / out["whole"]
    return out


def update_summary(keys: dict) -> None:
    path = RESULTS / "summary.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(keys)
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--companies", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--steps", type=int, default=8, help="DP-SGD steps per company per round")
    ap.add_argument("--sample-rate", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--epsilon", type=float, default=7.9, help="record-level target (RDP, delta 1e-5, all rounds)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    B = args.blocks
    q = args.quick
    from dblocks.privacy.accounting import noise_for_epsilon

    rounds, steps, rate = (2, 2, 0.1) if q else (args.rounds, args.steps, args.sample_rate)
    # every company trains one block every round: its history is (z, q, rounds * steps); pick z for epsilon <= 8
    z = noise_for_epsilon(args.epsilon, 1e-5, rate, rounds * steps, "rdp")
    dp_setting = FedSetting(rounds=rounds, steps=steps, sample_rate=rate, lr=args.lr, record_noise=z,
                            record_clip=1.0, update_clip=2.0)
    nodp_setting = replace(dp_setting, record_noise=0.0, lr=1e-3)
    epochs = 1 if q else 20
    pub, private, comps, test = companies_data(args.companies, 1000, args.seed)
    if q:
        comps = [c.subset(np.arange(min(len(c), 60))) for c in comps]
        test = test.subset(np.arange(200))
    setup = {"dataset": "MNIST 5k, fixed stratified 4000/1000 split", "public": len(pub), "private": len(private),
             "companies": len(comps), "company_sizes": [len(c) for c in comps], "dirichlet_alpha": 0.5, "blocks": B,
             "preset": "mnist-fed", "dp": asdict(dp_setting), "no_dp": asdict(nodp_setting), "central_epochs": epochs,
             "engine": "in-process simulation of the product's round code (exact mean in place of SecAgg+)"}
    print(json.dumps(setup, indent=1))
    log = lambda m: print(m, flush=True)  # noqa: E731
    rows = {}
    from dblocks.shared.data import Dataset

    all_train = Dataset(torch.cat([pub.x, private.x]), torch.cat([pub.y, private.y]), "image", 10, "train-4000")
    init = pretrain(pub, B, epochs, args.seed)
    from dblocks.shared.workflow import accuracy

    rows["pretrained on public only"] = {"accuracy": accuracy(init, test)}
    log(f"pretrained: {rows['pretrained on public only']}")
    rows["centralized end-to-end"] = {"accuracy": centralized(all_train, test, None, epochs, None, args.seed)}
    rows["centralized DiffusionBlocks"] = {"accuracy": centralized(all_train, test, B, epochs, None, args.seed)}
    rows["centralized DiffusionBlocks, pretrained"] = {"accuracy": centralized(private, test, B, epochs, init, args.seed)}
    log(json.dumps(rows))
    for name, s, start in [("federated, no DP", nodp_setting, None), ("federated, no DP, pretrained", nodp_setting, init),
                           ("federated, record-level DP", dp_setting, None), ("federated, record-level DP, pretrained", dp_setting, init)]:
        log(f"{name}:")
        rows[name] = federated(comps, test, B, s, start, args.seed, log)
        log(f"  -> {rows[name]['accuracy']:.4f}, epsilon (rdp) {rows[name]['epsilon_rdp']:.2f}")
    central = federated(comps, test, B, replace(dp_setting, central_noise=1.0), init, args.seed, log)
    rows["federated, record-level DP, pretrained, central noise z_c=1"] = central
    bytes_ = message_bytes(B)
    mem = client_memory(B)
    result = {"setup": setup, "rows": rows, "central_noise": central_noise_table(dp_setting.update_clip, dp_setting.rounds),
              "bytes": bytes_, "client_memory_mb": mem}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / ("federated-quick.json" if q else "federated.json")).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v.get("accuracy") for k, v in rows.items()}, indent=1))
    print(json.dumps({"bytes": bytes_, "memory": mem}, indent=1))
    if not q:
        best_db = max(rows["centralized DiffusionBlocks"]["accuracy"], rows["centralized DiffusionBlocks, pretrained"]["accuracy"])
        best_fed = max(rows["federated, no DP"]["accuracy"], rows["federated, no DP, pretrained"]["accuracy"])
        best_dp = max(rows["federated, record-level DP"], rows["federated, record-level DP, pretrained"], key=lambda r: r["accuracy"])
        update_summary({"federation.gap_points_no_dp": round(100 * (best_db - best_fed), 2),
                        "federation.accuracy_dp": best_dp["accuracy"], "federation.epsilon_dp": best_dp["epsilon_rdp"],
                        "federation.bytes_ratio": bytes_["ratio"], "federation.memory_ratio": mem["ratio"]})


if __name__ == "__main__":
    main()
