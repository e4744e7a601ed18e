"""Issue #23: which noise schedule or share of training effort between blocks suits a DiffusionBlocks classifier
on a small table (tuning tables only).

The class label is a fixed embedding row E[y] of norm `label_scale` (1.0) in `width` dimensions; two classes are
sqrt(2) * label_scale apart, so along the direction that separates them the noisy label z = E[y] + sigma eps
tells them apart with d' = sqrt(2) label_scale / sigma. Under the preset log-normal (p_mean -1.2: median sigma
0.30, d' ~ 4.7) almost all training noise leaves the label readable from z, and only ~3 % of it (sigma > 3) asks a
block to classify from x alone — which is what block 0 does at inference (z = 0 at its highest noise level).
Variants moved the log-normal's centre (p_mean) to where z stops telling the classes apart, or set sigma_data to
the label's per-dimension scale (label_scale / sqrt(width), the design notes' pitfall 2). Effort variants keep
the model's total updates (B x the end-to-end model's epochs, the paper's matched budget) but share them unevenly:
block 0, which decides the class from x, gets more epochs and the last block (sigma < 0.3, where z already names
the class: d' > 4.7) fewer.

For each tuning table of bench/tabular.py (`tuning_tables`) and seed: the same split, standardisation
and recipe as `bench/tabular.py --tune`; one DiffusionBlocks model per variant (product readout) and the
end-to-end baseline once (the schedule does not touch it). No summary key: the variant, if any, goes into the
recipe and is then measured once on the held-out tables by bench/tabular.py.

    nice -n 10 .venv/bin/python bench/tabular_variants.py --seeds 5 [--variants preset effort_1.5_0.5] [--only ...]

Measured for #23 (medians of 5 seeds; tabular_variants_tune_<tables>.json), preset / effort_1.5_0.5 / e2e:
syn_200x10_k3 92.0 / 88.0 / 90.0 %, syn_160x6_k4 65.0 / 60.0 / 67.5 %, syn_150x5_k3 89.5 / 86.8 / 81.6 %,
syn_180x12_k3 84.4 / 84.4 / 84.4 %. The schedule variants were stopped after 2 seeds on the first two tables
(tabular_variants_tune_schedule_partial.json): mean of the 2 seeds, preset / p_mean -0.4 / p_mean ln sqrt 2 /
sigma_data label: syn_200x10_k3 92.0 / 91.0 / 88.0 / 91.0 %, syn_160x6_k4 63.8 / 61.3 / 58.8 / 61.3 %. Nothing was
carried to the recipe or to the held-out tables.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, median, setup, write_json  # noqa: E402
from tabular import split_for_seed, tuning_tables  # noqa: E402

from dblocks.shared.workflow import accuracy, train_diffusion_blocks, train_end_to_end  # noqa: E402

# name -> NoiseSchedule overrides ("sigma_data": "label" = label_scale / sqrt(width)) and "epoch_share": per-block
# multipliers of the recipe's epochs (mean 1: the same total updates)
VARIANTS: dict[str, dict] = {
    "preset": {},
    "p_mean_-0.4": {"p_mean": -0.4},
    "p_mean_ln_sqrt2": {"p_mean": round(math.log(math.sqrt(2)), 3)},
    "sigma_data_label": {"sigma_data": "label"},
    "effort_1.5_0.5": {"epoch_share": (1.5, 0.5)},
}


def run_one(ds, seed: int, work: Path, variants: list[str]) -> dict:
    tr, te, plan = split_for_seed(ds, seed)
    p = plan.preset
    cfg = replace(p.train, seed=seed)
    out = {}
    for name in variants:
        over = dict(VARIANTS[name])
        share = over.pop("epoch_share", (1.0,) * plan.blocks)
        if over.get("sigma_data") == "label":
            over["sigma_data"] = p.arch.label_scale / math.sqrt(p.arch.width)
        schedule = p.noise_schedule(plan.blocks, **over)
        for i, f in enumerate(share):
            cfg_i = replace(cfg, epochs=max(1, round(f * cfg.epochs)))
            train_diffusion_blocks(p, schedule, tr, cfg_i, work / name, blocks=[i])
        out[name] = accuracy(work / name, te)
    train_end_to_end(p, tr, cfg, work / "e2e")
    out["e2e"] = accuracy(work / "e2e", te)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--only", nargs="*", help="table names to run (written to tabular_variants_tune_<names>.json)")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    args = ap.parse_args()
    env = setup(1)
    tables = tuning_tables()
    if args.only:
        tables = {k: v for k, v in tables.items() if k in args.only}
    out = RESULTS / ("tabular_variants_tune" + "".join(f"_{t}" for t in args.only or []) + ".json")
    chosen = {k: VARIANTS[k] for k in args.variants}
    res: dict = {}
    for name, ds in tables.items():
        runs: list[dict] = []
        for seed in range(args.seeds):
            with tempfile.TemporaryDirectory() as tmp:
                runs.append(run_one(ds, seed, Path(tmp), args.variants))
            print(name, seed, {k: round(v, 3) for k, v in runs[-1].items()}, flush=True)
            med = {k: median([r[k] for r in runs]) for k in runs[0]}
            gap = {k: median([100 * (r["e2e"] - r[k]) for r in runs]) for k in args.variants}
            res[name] = {"seeds_done": len(runs), "runs": runs, "median": med, "gap_points_median": gap}
            # written after every seed, so a run stopped early still leaves what it measured
            write_json(out, {"setup": env, "seeds": args.seeds, "variants": chosen, "tables": res})
        print(name, "median", {k: round(v, 3) for k, v in res[name]["median"].items()}, flush=True)


if __name__ == "__main__":
    main()
