"""Issue #23, next lever: which classification readout of a trained DiffusionBlocks model suits small tables.

The product reads a classifier out with one Euler step per block and the last step's logits ("last", k = 1;
shared/sampler.py `classify`). Averaging the log-probabilities of every step ("mean", a product of the blocks'
experts) and more steps per block are the candidates, and ("loss", k) the diffusion-classifier readout of Li et al.
2023 (`classify_by_loss`: the class whose clean label the blocks denoise with the lowest loss wins). To keep the
held-out tables untouched, this is measured on the tuning tables of bench/tabular.py (`tuning_tables`):
the same split, standardisation and recipe as `bench/tabular.py --tune`, one DiffusionBlocks model per table and
seed, every readout evaluated on that model.
No summary key: the choice, if any, is made here and then measured once on the held-out tables by bench/tabular.py.

    nice -n 10 .venv/bin/python bench/tabular_readout.py --seeds 5 [--e2e] [--only syn_160x6_k4]

Measured for #23 (5 seeds, --e2e, medians; tabular_readout_tune_<table>.json): syn_200x10_k3 last@1 92.0 %,
loss@2/4/8 88.0 %, e2e 90.0 %; syn_160x6_k4 last@1 65.0 %, loss@2/4/8 62.5 %, e2e 67.5 %. The loss readout is no
better than the product's: at low sigma z names the candidate class whatever x says (every class's loss ~ 0), at
high sigma its loss is block 0's x-only CE, so the vote reduces to what "last" already reads. Not carried over.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, median, setup, write_json  # noqa: E402
from tabular import held_out_tables, split_for_seed, tuning_tables  # noqa: E402

from dblocks.shared.models import as_classifier_block  # noqa: E402
from dblocks.shared.sampler import classify  # noqa: E402
from dblocks.shared.schedule import NoiseSchedule  # noqa: E402
from dblocks.shared.wire import load_blocks  # noqa: E402
from dblocks.shared.workflow import accuracy, train_diffusion_blocks, train_end_to_end  # noqa: E402

# (readout, k): "last"/"mean" ODE readouts with k Euler steps per block; "loss": the diffusion-classifier readout
# (`classify_by_loss`) with k noise levels per block and 4 fixed noise draws
READOUTS = [("last", 1), ("last", 4), ("mean", 1), ("mean", 4), ("loss", 2), ("loss", 4), ("loss", 8)]


def loss_sigmas(schedule: NoiseSchedule, per_block: int) -> np.ndarray:
    """`per_block` noise levels inside every block's owned interval at the midpoints of equal training-mass
    slices (block i, slice j: the log-normal CDF at (j + 1/2) / per_block of the block's mass), highest first.
    Under the equi-probability partition these are the (k + 1/2) / (B per_block) quantiles of the truncated
    log-normal the blocks were trained on."""
    b = schedule.partition()
    out = []
    for i in range(schedule.num_blocks):
        c_hi, c_lo = schedule.cdf(b[i]), schedule.cdf(b[i + 1])
        frac = (np.arange(per_block) + 0.5) / per_block
        out.append(schedule.quantile(c_hi - frac * (c_hi - c_lo)))
    return np.concatenate(out)


@torch.no_grad()
def classify_by_loss(
    blocks: Sequence[nn.Module],
    schedule: NoiseSchedule,
    x: torch.Tensor,
    *,
    sigmas_per_block: int = 4,
    draws: int = 4,
    seed: int = 0,
) -> torch.Tensor:
    """Class scores [B, K] as log-probabilities: the "diffusion classifier" readout (Li et al. 2023, "Your
    diffusion model is secretly a zero-shot classifier") for denoising-classifier blocks.

    For every candidate class c the chain's training loss is evaluated with c as the clean label:
        score_c(x) = -(1 / (S M)) sum_{s, m} CE(f_{block(s)}(x, E_c + s eps_m, s), c),
    over S = B * sigmas_per_block fixed noise levels (`loss_sigmas`: equal training-mass slices of every block)
    and M = `draws` fixed noise draws eps_m ~ N(0, I) (seeded; the same draws for every class and example, so
    the classes are compared under common noise). The class the blocks find easiest to denoise wins. Unlike the
    ODE readout, whose decision is made by block 0 at its highest noise level (z = 0, a few percent of its
    training mass), every block votes at noise levels it was trained on. Returned as log_softmax(score)."""
    chain = [as_classifier_block(b) for b in blocks]
    emb = chain[0].class_emb
    k, width = emb.shape
    n = x.shape[0]
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(draws, width, generator=g)
    score = torch.zeros(n, k)
    xs = x.repeat_interleave(k * draws, 0)  # [n * k * draws, F]: example-major, then class, then draw
    cls = torch.arange(k).repeat_interleave(draws).repeat(n)
    noise = eps.repeat(n * k, 1)
    for s in loss_sigmas(schedule, sigmas_per_block):
        s = float(s)
        z = emb[cls] + s * noise
        logits = chain[schedule.block_for_sigma(s)](xs, z, torch.full((len(xs),), s))
        ce = torch.nn.functional.cross_entropy(logits, cls, reduction="none")
        score -= ce.view(n, k, draws).mean(-1)
    return (score / (schedule.num_blocks * sigmas_per_block)).log_softmax(-1)


def run_one(ds, seed: int, work: Path, e2e: bool = False) -> dict:
    tr, te, plan = split_for_seed(ds, seed)
    p = plan.preset
    schedule = p.noise_schedule(plan.blocks)
    train_diffusion_blocks(p, schedule, tr, replace(p.train, seed=seed), work / "db")
    _, blocks = load_blocks(work / "db")
    out = {}
    with torch.no_grad():
        for readout, k in READOUTS:
            if readout == "loss":
                lp = classify_by_loss(blocks, schedule, te.x, sigmas_per_block=k)
            else:
                lp = classify(blocks, schedule, te.x, schedule.block_grid(k), readout=readout)
            out[f"{readout}@{k}"] = float((lp.argmax(-1) == te.y).float().mean())
    if e2e:
        train_end_to_end(p, tr, replace(p.train, seed=seed), work / "e2e")
        out["e2e"] = accuracy(work / "e2e", te)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--held-out", action="store_true", help="the held-out tables (only once a readout is chosen)")
    ap.add_argument("--e2e", action="store_true", help="also train the end-to-end baseline (key 'e2e')")
    ap.add_argument("--only", nargs="*", help="table names to run (written to tabular_readout_tune_<names>.json)")
    args = ap.parse_args()
    env = setup(1)
    tables = held_out_tables() if args.held_out else tuning_tables()
    if args.only:
        tables = {k: v for k, v in tables.items() if k in args.only}
    res: dict = {}
    for name, ds in tables.items():
        runs = []
        for seed in range(args.seeds):
            with tempfile.TemporaryDirectory() as tmp:
                runs.append(run_one(ds, seed, Path(tmp), args.e2e))
            print(name, seed, {k: round(v, 3) for k, v in runs[-1].items()}, flush=True)
        res[name] = {"runs": runs, "median": {k: median([r[k] for r in runs]) for k in runs[0]}}
        print(name, "median", {k: round(v, 3) for k, v in res[name]["median"].items()}, flush=True)
    name = "tabular_readout_heldout" if args.held_out else "tabular_readout_tune"
    name += "".join(f"_{t}" for t in args.only or []) + ".json"
    write_json(RESULTS / name, {"setup": env, "seeds": args.seeds, "readouts": READOUTS, "tables": res})


if __name__ == "__main__":
    main()
