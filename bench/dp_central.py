"""Issue #16: the ceiling of record-level DP adaptation -- central DP-SGD on the union of all companies' records.

Why: in the federation every company adds its own DP-SGD noise (std z C on its batch sum) and the server sums the
cohort's updates, so the noise on a cohort's sum has std sqrt(k) z C. An operator that held all the private
records and ran DP-SGD itself with the same (q, z, steps) -- the same record-level epsilon -- would add one draw
of std z C to a sum over the same records: strictly less noise for the same guarantee, no client drift, no fresh
optimizer state per round. What central DP-SGD gains over the pretrained model at epsilon 8 therefore bounds
what the federation can gain at epsilon 8 (the federation cannot use central DP: the operator is the party the
companies are protected against).

Setup: bench/dp_adapt.py's scenarios, data and pretrained model (same cache). Each adapted block is trained in
turn on all private records with Opacus DP-SGD (Poisson rate q, `--steps` steps per block, AdamW, one optimizer
for the whole schedule); a record takes part in every block's training, so its epsilon composes over
blocks x steps with the RDP accountant, delta 1e-5, and z is chosen for `--epsilon` over that total.

    nice -n 10 .venv/bin/python bench/dp_central.py --scenario same --split val --trainable all --lr 1e-3
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS  # noqa: E402
from dp_adapt import pretrained, scenario_data  # noqa: E402
from federated import accuracy_of  # noqa: E402

RUNS = RESULTS / "dp_central.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", choices=("same", "shift"), default="same")
    ap.add_argument("--split", choices=("val", "test"), default="val")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--adapt-blocks", default="", help="comma list (default: all)")
    ap.add_argument("--steps", type=int, default=60, help="DP-SGD steps per adapted block")
    ap.add_argument("--sample-rate", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--trainable", default="all")
    ap.add_argument("--epsilon", type=float, default=8.0, help="inf: no DP (same steps)")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from dblocks.privacy.accounting import MechanismStep, epsilon, noise_for_epsilon
    from dblocks.privacy.dpsgd import DPConfig, freeze_except, train_block_dp
    from dblocks.server.federation.model_state import GlobalModel
    from dblocks.shared.data import Dataset
    from dblocks.shared.presets import get_preset

    t0 = time.time()
    init = pretrained(args.scenario, 0, args.blocks, 20)
    _, comps, evalset = scenario_data(args.scenario, args.split, args.seed)
    union = Dataset(
        torch.cat([c.x for c in comps]), torch.cat([c.y for c in comps]), comps[0].kind, comps[0].num_classes, "union"
    )
    p = get_preset("mnist-fed")
    model = GlobalModel.initial(p, p.noise_schedule(args.blocks), args.seed, init)
    acc0 = accuracy_of(model, evalset)
    adapt = [int(b) for b in args.adapt_blocks.split(",")] if args.adapt_blocks else list(range(args.blocks))
    total = len(adapt) * args.steps
    dp = math.isfinite(args.epsilon)
    z = noise_for_epsilon(args.epsilon, 1e-5, args.sample_rate, total, "rdp") if dp else 0.0
    eps = epsilon([MechanismStep(z, args.sample_rate, total)], 1e-5, "rdp") if dp else math.inf
    g = torch.Generator().manual_seed(args.seed)
    for b in adapt:
        block = model.blocks[b].module
        freeze_except(block, args.trainable)
        cfg = replace(p.train, epochs=1, lr=args.lr, weight_decay=0.0, warmup=0.0, decay=True, grad_clip=math.inf)
        cfgdp = DPConfig(
            noise_multiplier=z,
            max_grad_norm=args.clip if dp else 1e6,
            batch_size=args.sample_rate * len(union),
            steps=args.steps,
            delta=1e-5,
            accountant="rdp",
        )
        train_block_dp(block, b, union.x, union.y, cfg, cfgdp, generator=g)
        for q in block.parameters():
            q.requires_grad_(True)
        print(f"  block {b}: accuracy {accuracy_of(model, evalset):.4f} ({time.time() - t0:.0f} s)", flush=True)
    acc = accuracy_of(model, evalset)
    row = {
        "tag": args.tag,
        "args": vars(args),
        "command": "python bench/dp_central.py " + " ".join(sys.argv[1:]),
        "records": len(union),
        "noise_multiplier": z,
        "epsilon_rdp": eps,
        "pretrained_accuracy": acc0,
        "accuracy": acc,
        "gain_points": 100 * (acc - acc0),
        "seconds": time.time() - t0,
    }
    print(json.dumps({k: v for k, v in row.items() if k != "args"}), flush=True)
    with open(RUNS, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
