"""Issue #23, next lever: which classification readout of a trained DiffusionBlocks model suits small tables.

The product reads a classifier out with one Euler step per block and the last step's logits ("last", k = 1;
shared/sampler.py `classify`). Averaging the log-probabilities of every step ("mean", a product of the blocks'
experts) and more steps per block are the candidates. To keep the held-out tables untouched, this is measured on
the synthetic tuning tables of bench/tabular.py (`tuning_tables`): the same split, standardisation and recipe as
`bench/tabular.py --tune`, one DiffusionBlocks model per table and seed, every readout evaluated on that model.
No summary key: the choice, if any, is made here and then measured once on the held-out tables by bench/tabular.py.

    nice -n 10 .venv/bin/python bench/tabular_readout.py --seeds 5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, median, setup, write_json  # noqa: E402
from tabular import held_out_tables, tuning_tables  # noqa: E402

from dblocks.shared.data import FeatureStats, stratified_split  # noqa: E402
from dblocks.shared.recipes import tabular_recipe  # noqa: E402
from dblocks.shared.sampler import classify  # noqa: E402
from dblocks.shared.wire import load_blocks  # noqa: E402
from dblocks.shared.workflow import train_diffusion_blocks  # noqa: E402

READOUTS = [("last", 1), ("last", 4), ("mean", 1), ("mean", 4)]


def run_one(ds, seed: int, work: Path) -> dict:
    tr, te = stratified_split(ds, 0.25, seed=seed)
    stats = FeatureStats.of(tr.x, "training split")
    tr, te = tr.standardize(stats), te.standardize(stats)
    plan = tabular_recipe(len(tr), tr.input_shape[0], ds.num_classes, name=ds.name)
    p = plan.preset
    schedule = p.noise_schedule(plan.blocks)
    train_diffusion_blocks(p, schedule, tr, replace(p.train, seed=seed), work)
    _, blocks = load_blocks(work)
    out = {}
    with torch.no_grad():
        for readout, k in READOUTS:
            lp = classify(blocks, schedule, te.x, schedule.block_grid(k), readout=readout)
            out[f"{readout}@{k}"] = float((lp.argmax(-1) == te.y).float().mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--held-out", action="store_true", help="the held-out tables (only once a readout is chosen)")
    args = ap.parse_args()
    env = setup(1)
    tables = held_out_tables() if args.held_out else tuning_tables()
    res: dict = {}
    for name, ds in tables.items():
        runs = []
        for seed in range(args.seeds):
            with tempfile.TemporaryDirectory() as tmp:
                runs.append(run_one(ds, seed, Path(tmp)))
            print(name, seed, {k: round(v, 3) for k, v in runs[-1].items()}, flush=True)
        res[name] = {"runs": runs, "median": {k: median([r[k] for r in runs]) for k in runs[0]}}
        print(name, "median", {k: round(v, 3) for k, v in res[name]["median"].items()}, flush=True)
    name = "tabular_readout_heldout.json" if args.held_out else "tabular_readout_tune.json"
    write_json(RESULTS / name, {"setup": env, "seeds": args.seeds, "readouts": READOUTS, "tables": res})


if __name__ == "__main__":
    main()
