"""DiffusionBlocks classification vs end-to-end backprop, with sweeps and an ablation of the recipe.

What is compared (issue #2, "What it must reach"):
  * main: DiffusionBlocks B=4 vs the end-to-end baseline with the same total layers, width, tokenizer and
    task head, on MNIST 5k (fixed stratified 4000/1000 split), digits and breast_cancer, 3 seeds each.
    Matched layer updates (paper, Appendix D): the end-to-end model trains E epochs, every block trains E
    epochs, so both do L x E layer updates.
  * sweep_blocks: B in {2, 3, 4, 6} with 12 total layers (divisible by every B), plus a 12-layer baseline.
  * partition_gamma: equi-probability vs uniform partition x overlap gamma in {0, 0.1} at B=4.
  * ablation (digits): what the naive recipe got wrong. Training-side factors (CE loss weighting, label
    scale, LR schedule, gradient clipping) each retrain the blocks; inference-side factors (grid, number of
    steps, initial noise, readout, solver) are evaluated on the same trained blocks.

Accuracy is in points (percent of the test split). Every training run is a row in accuracy.json; the tables
are medians over seeds. Run from the repository root:

    flock /tmp/dblocks-heavy.lock .venv/bin/python bench/accuracy.py            # full (see --help)
    .venv/bin/python bench/accuracy.py --quick --out /tmp/acc                   # < 1 min smoke run
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from dblocks.shared import training
from dblocks.shared.data import Dataset
from dblocks.shared.presets import Preset, get_preset
from dblocks.shared.sampler import classify
from dblocks.shared.schedule import NoiseSchedule
from dblocks.shared.wire import load_blocks
from dblocks.shared.workflow import load_end_to_end, train_diffusion_blocks, train_end_to_end

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, median, setup, update_summary, write_json  # noqa: E402

DATASETS = {"mnist": "mnist", "digits": "digits", "breast_cancer": "breast_cancer"}  # dataset -> preset


# ---------------------------------------------------------------------------------------------------
# what is varied
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recipe:
    """Training-side choices of a DiffusionBlocks classifier.

    weighting: per-sample factor on the block's CE loss: "none" or "edm" (lambda(sigma) = 1/c_out^2, the EDM
      L2 weight, ~2.5e5 at sigma_min).
    label_scale: "unit" (class-embedding rows of L2 norm 1, per-dimension std 1/sqrt(d)) or "sigma_data"
      (rows of norm sigma_data sqrt(d): per-dimension std sigma_data = 0.5, what EDM's preconditioning assumes).
    lr_schedule: "cosine" (linear warm-up over 5% of the steps, cosine decay to 0) or "constant".
    grad_clip: global L2 norm clip; inf = no clipping.
    """

    weighting: str = "none"
    label_scale: str = "unit"
    lr_schedule: str = "cosine"
    grad_clip: float = 1.0
    partition: str = "equiprob"
    gamma: float = 0.1

    def tag(self) -> str:
        base = Recipe()
        diff = [f"{k}={v}" for k, v in asdict(self).items() if v != getattr(base, k)]
        return ",".join(diff) or "final"


@dataclass(frozen=True)
class Readout:
    """Inference-side choices: grid kind, steps, initial label noise, readout and ODE solver.

    grid "block": `steps` CDF-spaced steps inside every block's owned interval, starting at the schedule's
    inference_start (where block 0 still has training mass); "cdf80": `steps` total CDF-spaced steps from
    sigma_max = 80; "edm80": EDM rho = 7 grid with `steps` total steps from sigma_max = 80; "edm-start": the
    same from inference_start. init "zero" starts the noisy label at its mean 0, "random" at grid[0] * eps
    (accuracy averaged over 3 draws). readout "last" = logits of the final step, "mean" = mean log-softmax
    of all steps."""

    name: str
    grid: str = "block"
    steps: int = 1
    init: str = "zero"
    readout: str = "last"
    solver: str = "euler"

    def make_grid(self, schedule: NoiseSchedule) -> np.ndarray:
        if self.grid == "block":
            return schedule.block_grid(self.steps)
        if self.grid == "cdf80":
            return schedule.cdf_grid(self.steps)
        if self.grid == "edm80":
            return schedule.edm_grid(self.steps)
        if self.grid == "edm-start":
            return schedule.edm_grid(self.steps, sigma_start=schedule.inference_start)
        raise ValueError(f"unknown grid {self.grid!r}")


DEFAULT_READOUT = "block1"


def readouts_for(num_blocks: int) -> list[Readout]:
    b = num_blocks
    return [
        Readout("block1"),
        Readout("block2", steps=2),
        Readout("block4", steps=4),
        Readout("block1-random", init="random"),
        Readout("block1-mean", readout="mean"),
        Readout("block1-heun", solver="heun"),
        Readout("cdf80-N=B", grid="cdf80", steps=b),
        Readout("cdf80-N=2B", grid="cdf80", steps=2 * b),
        Readout("edm80-N=B", grid="edm80", steps=b),
        Readout("edm80-N=10", grid="edm80", steps=10),
        Readout("edm80-N=20", grid="edm80", steps=20),
        Readout("edm80-N=10-random", grid="edm80", steps=10, init="random"),
        Readout("edm-start-N=10", grid="edm-start", steps=10),
    ]


NAIVE = Recipe(weighting="edm", label_scale="sigma_data", lr_schedule="constant", grad_clip=math.inf)
ABLATION_RECIPES = {
    "final": Recipe(),
    "edm-weighted CE": Recipe(weighting="edm"),
    "label norm sigma_data*sqrt(d)": Recipe(label_scale="sigma_data"),
    "constant LR": Recipe(lr_schedule="constant"),
    "no grad clip": Recipe(grad_clip=math.inf),
    "naive (all four)": NAIVE,
    "naive + cosine LR + clip": Recipe(weighting="edm", label_scale="sigma_data"),
}
# naive -> final, one fix at a time: (training recipe, readout) pairs
CUMULATIVE = [
    (
        "naive: EDM-weighted CE, label std sigma_data, constant LR, no clip; EDM rho=7 grid from 80 (N=10), random z",
        "naive (all four)",
        "edm80-N=10-random",
    ),
    ("+ cosine LR with warm-up, grad clip 1", "naive + cosine LR + clip", "edm80-N=10-random"),
    ("+ plain (unweighted) CE", "label norm sigma_data*sqrt(d)", "edm80-N=10-random"),
    ("+ unit-norm class embedding", "final", "edm80-N=10-random"),
    ("+ grid: 1 CDF step per block from where block 0 has mass", "final", "block1-random"),
    ("+ z initialised at 0 (= final recipe)", "final", "block1"),
]


# ---------------------------------------------------------------------------------------------------
# training and evaluation
# ---------------------------------------------------------------------------------------------------
@contextmanager
def lr_schedule(kind: str):
    """'constant' replaces the warm-up + cosine schedule of dblocks.shared.training by a constant LR for the
    duration of the block (an ablation only the bench needs, so it does not live in TrainConfig)."""
    if kind == "cosine":
        yield
        return
    original = training.make_optimizer

    def constant(module, cfg, total_steps):
        opt, _ = original(module, cfg, total_steps)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)

    training.make_optimizer = constant
    try:
        yield
    finally:
        training.make_optimizer = original


def preset_for(dataset: str, total_layers: int | None, recipe: Recipe, epochs: int | None) -> Preset:
    p = get_preset(DATASETS[dataset])
    arch = p.arch
    if recipe.label_scale == "sigma_data":
        arch = replace(arch, label_scale=p.schedule.sigma_data * math.sqrt(arch.width))
    train = replace(
        p.train,
        classifier_weighting=recipe.weighting,
        grad_clip=recipe.grad_clip,
        **({"epochs": epochs} if epochs else {}),
    )
    schedule = replace(p.schedule, partition_kind=recipe.partition, gamma=recipe.gamma)
    return replace(p, arch=arch, train=train, schedule=schedule, total_layers=total_layers or p.total_layers)


def accuracy_points(pred: torch.Tensor, y: torch.Tensor) -> float:
    return round(100.0 * float((pred == y).float().mean()), 4)


@torch.no_grad()
def evaluate_blocks(blocks, schedule: NoiseSchedule, test: Dataset, readouts: list[Readout]) -> dict[str, float]:
    out = {}
    for r in readouts:
        grid = r.make_grid(schedule)
        draws = 3 if r.init == "random" else 1
        accs = []
        for d in range(draws):
            g = torch.Generator().manual_seed(d)
            logp = classify(
                blocks, schedule, test.x, grid, solver=r.solver, readout=r.readout, init=r.init, generator=g
            )
            accs.append(accuracy_points(logp.argmax(-1), test.y))
        out[r.name] = float(np.mean(accs))
    return out


def run_diffusion_blocks(p: Preset, num_blocks: int, recipe: Recipe, seed: int, train: Dataset, test: Dataset) -> dict:
    schedule = p.noise_schedule(num_blocks)
    cfg = replace(p.train, seed=seed)
    with tempfile.TemporaryDirectory() as tmp, lr_schedule(recipe.lr_schedule):
        t0 = time.perf_counter()
        train_diffusion_blocks(p, schedule, train, cfg, tmp)
        seconds = time.perf_counter() - t0
        manifest, blocks = load_blocks(tmp)
    acc = evaluate_blocks(blocks, manifest.noise_schedule, test, readouts_for(num_blocks))
    return {"accuracy": acc, "train_seconds": seconds}


def run_end_to_end(p: Preset, seed: int, train: Dataset, test: Dataset) -> dict:
    cfg = replace(p.train, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        train_end_to_end(p, train, cfg, tmp)
        seconds = time.perf_counter() - t0
        model = load_end_to_end(tmp)
    with torch.no_grad():
        pred = model(test.x).argmax(-1)
    return {"accuracy": {"e2e": accuracy_points(pred, test.y)}, "train_seconds": seconds}


# ---------------------------------------------------------------------------------------------------
# the plan
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    dataset: str
    model: str  # "e2e" | "db"
    total_layers: int
    num_blocks: int  # 0 for e2e
    recipe: Recipe
    seed: int

    def key(self) -> str:
        return f"{self.dataset}|{self.model}|L{self.total_layers}|B{self.num_blocks}|{self.recipe.tag()}|s{self.seed}"


def plan(args) -> list[Job]:
    jobs: list[Job] = []

    def add(job: Job) -> None:
        if job not in jobs:
            jobs.append(job)

    final = Recipe()
    for ds in args.datasets:
        L = get_preset(DATASETS[ds]).total_layers
        for s in args.seeds:
            add(Job(ds, "e2e", L, 0, final, s))
            add(Job(ds, "db", L, 4, final, s))
    for ds in args.sweep_datasets:
        L = get_preset(DATASETS[ds]).total_layers
        for s in args.sweep_seeds:
            add(Job(ds, "e2e", args.sweep_layers, 0, final, s))
            for b in args.sweep_blocks:
                add(Job(ds, "db", args.sweep_layers, b, final, s))
            for part, gamma in args.partition_gamma:
                add(Job(ds, "db", L, 4, replace(final, partition=part, gamma=gamma), s))
    for ds in args.ablation_datasets:
        L = get_preset(DATASETS[ds]).total_layers
        for s in args.ablation_seeds:
            for recipe in args.ablation_recipes:
                add(Job(ds, "db", L, 4, recipe, s))
    return jobs


def run_job(job: Job, epochs: int | None, splits: dict) -> dict:
    p = preset_for(job.dataset, job.total_layers, job.recipe, epochs)
    train, test = splits[job.dataset]
    try:
        res = (
            run_end_to_end(p, job.seed, train, test)
            if job.model == "e2e"
            else run_diffusion_blocks(p, job.num_blocks, job.recipe, job.seed, train, test)
        )
    except FloatingPointError as e:  # a diverged run is a result too; it is excluded from medians and counted
        names = ["e2e"] if job.model == "e2e" else [r.name for r in readouts_for(job.num_blocks)]
        res = {"accuracy": {n: float("nan") for n in names}, "train_seconds": float("nan"), "diverged": str(e)}
    return {
        "key": job.key(),
        "dataset": job.dataset,
        "model": job.model,
        "total_layers": job.total_layers,
        "num_blocks": job.num_blocks,
        "recipe": asdict(job.recipe),
        "recipe_tag": job.recipe.tag(),
        "seed": job.seed,
        "epochs": p.train.epochs,
        **res,
    }


# ---------------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------------
def select(rows, **kw):
    out = []
    for r in rows:
        ok = True
        for k, v in kw.items():
            if k == "recipe":
                ok &= r["recipe_tag"] == v.tag()
            else:
                ok &= r[k] == v
        if ok:
            out.append(r)
    return out


def stat(rows, readout: str) -> dict | None:
    """Median over seeds of one readout; diverged runs are listed and left out of the median."""
    rows = sorted(rows, key=lambda r: r["seed"])
    ok = [r for r in rows if "diverged" not in r]
    if not rows:
        return None
    accs = [r["accuracy"][readout] for r in ok]
    return {
        "median": median(accs) if accs else float("nan"),
        "per_seed": accs,
        "seeds": [r["seed"] for r in ok],
        "diverged_seeds": [r["seed"] for r in rows if "diverged" in r],
        "train_seconds_median": median([r["train_seconds"] for r in ok]) if ok else float("nan"),
    }


def tables(rows: list[dict], args) -> dict:
    final = Recipe()
    t: dict = {"main": {}, "sweep_blocks": {}, "partition_gamma": {}, "ablation": {}}
    for ds in args.datasets:
        L = get_preset(DATASETS[ds]).total_layers
        e2e = stat(select(rows, dataset=ds, model="e2e", total_layers=L), "e2e")
        db_rows = select(rows, dataset=ds, model="db", total_layers=L, num_blocks=4, recipe=final)
        db = stat(db_rows, DEFAULT_READOUT)
        if e2e and db:
            epochs = sorted({r["epochs"] for r in select(rows, dataset=ds, model="e2e", total_layers=L) + db_rows})
            t["main"][ds] = {
                "total_layers": L,
                "epochs": epochs[0] if len(epochs) == 1 else epochs,
                "end_to_end": e2e,
                "diffusion_blocks_b4": db,
                "gap_points": e2e["median"] - db["median"],
                "other_readouts_median": {r: stat(db_rows, r)["median"] for r in db_rows[0]["accuracy"]},
            }
    # the sweeps and the ablation use their own seeds (the final recipe's B=4 rows are shared with the main table)
    sweep_rows = [r for r in rows if r["seed"] in args.sweep_seeds]
    ablation_rows = [r for r in rows if r["seed"] in args.ablation_seeds]
    for ds in args.sweep_datasets:
        L = get_preset(DATASETS[ds]).total_layers
        sw = {
            "total_layers": args.sweep_layers,
            "end_to_end": stat(select(sweep_rows, dataset=ds, model="e2e", total_layers=args.sweep_layers), "e2e"),
        }
        for b in args.sweep_blocks:
            sw[f"B={b}"] = stat(
                select(sweep_rows, dataset=ds, model="db", total_layers=args.sweep_layers, num_blocks=b, recipe=final),
                DEFAULT_READOUT,
            )
        t["sweep_blocks"][ds] = sw
        pg = {"total_layers": L, "num_blocks": 4}
        for part, gamma in args.partition_gamma:
            pg[f"{part}, gamma={gamma}"] = stat(
                select(
                    sweep_rows,
                    dataset=ds,
                    model="db",
                    total_layers=L,
                    num_blocks=4,
                    recipe=replace(final, partition=part, gamma=gamma),
                ),
                DEFAULT_READOUT,
            )
        t["partition_gamma"][ds] = pg
    for ds in args.ablation_datasets:
        L = get_preset(DATASETS[ds]).total_layers
        by_name = {
            name: select(ablation_rows, dataset=ds, model="db", total_layers=L, num_blocks=4, recipe=r)
            for name, r in ABLATION_RECIPES.items()
            if r in args.ablation_recipes
        }
        if not by_name.get("final"):
            continue
        ref = stat(by_name["final"], DEFAULT_READOUT)["median"]
        train_side = {
            name: {
                **stat(rs, DEFAULT_READOUT),
                "delta_vs_final": stat(rs, DEFAULT_READOUT)["median"] - ref,
                "recipe": by_name[name][0]["recipe"],
            }
            for name, rs in by_name.items()
            if rs
        }
        inference_side = {}
        for r in by_name["final"][0]["accuracy"]:
            s = stat(by_name["final"], r)
            inference_side[r] = {**s, "delta_vs_final": s["median"] - ref}
        cumulative = []
        for label, recipe_name, readout in CUMULATIVE:
            if by_name.get(recipe_name):
                cumulative.append(
                    {"step": label, "recipe": recipe_name, "readout": readout, **stat(by_name[recipe_name], readout)}
                )
        # the full grid of (training recipe x readout) medians, for anything the tables above do not show
        grid = {name: {r: stat(rs, r)["median"] for r in rs[0]["accuracy"]} for name, rs in by_name.items() if rs}
        t["ablation"][ds] = {
            "readout_definitions": {r.name: asdict(r) for r in readouts_for(4)},
            "training_side": train_side,
            "inference_side": inference_side,
            "cumulative": cumulative,
            "recipe_x_readout_median": grid,
        }
    return t


def tables_scope(rows: list[dict], args) -> argparse.Namespace:
    """The tables cover this run's datasets and those of the rows kept from earlier runs (--resume), so that a
    run of one dataset does not drop the others from the tables and from core.accuracy_gap_points."""
    present = lambda model_ok: [ds for ds in DATASETS if any(r["dataset"] == ds and model_ok(r) for r in rows)]  # noqa: E731
    union = lambda given, more: given + [ds for ds in more if ds not in given]  # noqa: E731
    main_ds = present(
        lambda r: r["model"] == "e2e" and r["total_layers"] == get_preset(DATASETS[r["dataset"]]).total_layers
    )
    sweep_ds = present(lambda r: r["total_layers"] == args.sweep_layers and r["num_blocks"] not in (0, 4))
    ablation_ds = present(
        lambda r: (
            r["recipe_tag"] not in ("final",) and "partition" not in r["recipe_tag"] and "gamma" not in r["recipe_tag"]
        )
    )
    return argparse.Namespace(
        **{
            **vars(args),
            "datasets": union(args.datasets, main_ds),
            "sweep_datasets": union(args.sweep_datasets, sweep_ds),
            "ablation_datasets": union(args.ablation_datasets, ablation_ds),
        }
    )


# ---------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny run (digits, 2 epochs, one seed) for smoke tests")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder (accuracy.json, summary.json)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=None, help="override every preset's epochs")
    ap.add_argument("--datasets", default="mnist,digits,breast_cancer")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--sweep-datasets", default="digits")
    ap.add_argument("--sweep-seeds", default="0,1,2")
    ap.add_argument("--sweep-layers", type=int, default=12)
    ap.add_argument("--sweep-blocks", default="2,3,4,6")
    ap.add_argument("--ablation-datasets", default="digits")
    ap.add_argument("--ablation-seeds", default="0,1,2")
    ap.add_argument(
        "--resume", action="store_true", help="keep rows already in OUT/accuracy.json, run only missing ones"
    )
    args = ap.parse_args(argv)

    ints = lambda s: [int(v) for v in s.split(",") if v]  # noqa: E731
    names = lambda s: [v for v in s.split(",") if v]  # noqa: E731
    args.datasets, args.sweep_datasets, args.ablation_datasets = map(
        names, (args.datasets, args.sweep_datasets, args.ablation_datasets)
    )
    args.seeds, args.sweep_seeds, args.ablation_seeds, args.sweep_blocks = map(
        ints, (args.seeds, args.sweep_seeds, args.ablation_seeds, args.sweep_blocks)
    )
    args.ablation_recipes = list(ABLATION_RECIPES.values())
    args.partition_gamma = [(part, gamma) for part in ("equiprob", "uniform") for gamma in (0.0, 0.1)]
    limit = None  # (train, test) examples kept per split
    if args.quick:  # every code path, on 256 digits for 1 epoch
        args.datasets, args.seeds, args.epochs, limit = ["digits"], [0], args.epochs or 1, (256, 200)
        args.sweep_datasets, args.sweep_seeds, args.sweep_blocks, args.sweep_layers = ["digits"], [0], [2], 4
        args.partition_gamma = [("uniform", 0.1)]
        args.ablation_datasets, args.ablation_seeds = ["digits"], [0]
        args.ablation_recipes = [Recipe(), NAIVE]
    for ds in args.datasets + args.sweep_datasets + args.ablation_datasets:
        if ds not in DATASETS:
            ap.error(f"unknown dataset {ds!r}; choose from {', '.join(DATASETS)}")

    env = setup(args.threads)
    splits = {
        ds: get_preset(DATASETS[ds]).load_split()
        for ds in set(args.datasets + args.sweep_datasets + args.ablation_datasets)
    }
    if limit:
        splits = {
            ds: (tr.subset(np.arange(min(limit[0], len(tr)))), te.subset(np.arange(min(limit[1], len(te)))))
            for ds, (tr, te) in splits.items()
        }
    jobs = plan(args)
    out_path = args.out / "accuracy.json"
    rows: list[dict] = []
    previous: dict = {}
    if args.resume and out_path.exists():
        import json

        previous = json.loads(out_path.read_text())
        rows = previous["rows"]
    epochs_of = {j.key(): preset_for(j.dataset, j.total_layers, j.recipe, args.epochs).train.epochs for j in jobs}
    done = {r["key"] for r in rows if epochs_of.get(r["key"]) == r["epochs"]}
    setup_info = {
        "env": env,
        "quick": args.quick,
        "epochs_override": args.epochs,
        "presets": {
            ds: {
                "total_layers": get_preset(DATASETS[ds]).total_layers,
                "arch": asdict(get_preset(DATASETS[ds]).arch),
                "train": asdict(get_preset(DATASETS[ds]).train),
                "schedule": asdict(get_preset(DATASETS[ds]).schedule),
                "train_examples": len(splits[ds][0]),
                "test_examples": len(splits[ds][1]),
            }
            for ds in splits
        },
        "matched_layer_updates": "every block and the end-to-end model train the same number of epochs",
        "default_readout": asdict(readouts_for(4)[0]),
        "command": shlex.join(["python", "bench/accuracy.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    # a resumed run adds to the rows of earlier ones: keep their commands and preset descriptions
    setup_info["commands"] = previous.get("setup", {}).get(
        "commands", [previous["setup"]["command"]] if previous else []
    ) + [setup_info["command"]]
    setup_info["presets"] = {**previous.get("setup", {}).get("presets", {}), **setup_info["presets"]}
    table_args = tables_scope(rows, args)
    print(
        f"accuracy bench: {len(jobs)} training runs ({len(done)} already done), threads={args.threads}, "
        f"epochs={'preset' if args.epochs is None else args.epochs}"
    )
    for ds in splits:
        info = setup_info["presets"][ds]
        print(
            f"  {ds}: {info['train_examples']} train / {info['test_examples']} test, L={info['total_layers']}, "
            f"width {info['arch']['width']}, epochs {args.epochs or info['train']['epochs']}, "
            f"batch {info['train']['batch_size']}, lr {info['train']['lr']}"
        )

    def save() -> dict:
        result = {"setup": setup_info, "tables": tables(rows, table_args), "rows": rows}
        write_json(out_path, result)
        return result

    t_start = time.perf_counter()
    for n, job in enumerate(jobs, 1):
        if job.key() in done:
            continue
        row = run_job(job, args.epochs, splits)
        rows[:] = [r for r in rows if r["key"] != row["key"]] + [row]  # a rerun with other epochs replaces the row
        acc = row["accuracy"].get("e2e", row["accuracy"].get(DEFAULT_READOUT))
        print(
            f"[{n}/{len(jobs)}] {job.key():70s} acc {acc:6.2f}  train {row['train_seconds']:6.1f} s  "
            f"(elapsed {time.perf_counter() - t_start:6.0f} s)",
            flush=True,
        )
        save()
    result = save()
    gaps = {ds: round(v["gap_points"], 3) for ds, v in result["tables"]["main"].items()}
    for ds, v in result["tables"]["main"].items():
        print(
            f"{ds:14s} end-to-end {v['end_to_end']['median']:6.2f}  DiffusionBlocks B=4 "
            f"{v['diffusion_blocks_b4']['median']:6.2f}  gap {v['gap_points']:+.2f} points"
        )
    update_summary(args.out, {"core.accuracy_gap_points": gaps})
    return result


if __name__ == "__main__":
    main()
