"""Tabular parity on tables the recipe was never tuned on: end-to-end minus DiffusionBlocks accuracy (points).

For each table and seed s: a stratified 75/25 split (seed s), features standardised with the training split's
statistics, then the recipe `shared/recipes.tabular_recipe` (chosen from the training split's rows, features and
classes) trains a DiffusionBlocks model with its default B and the end-to-end baseline of the same total depth
and width, both through `shared/workflow.py` (what `dblocks train --data` runs). Gap = e2e - DB accuracy in points;
reported per table as the median over seeds (`core.tabular_gap_points`).

Tables (all ship inside installed packages, nothing is downloaded): sklearn wine (178 x 13, 3 classes), iris
(150 x 4, 3), breast_cancer (569 x 30, 2) and mlxtend's three_blobs (150 x 2, 3). `--tune` runs the tuning
tables instead (reported in tabular_tune.json, not in the summary): the synthetic make_classification tables the
recipe was tuned on and three real tables that are not held out (`real_tuning_tables`).

    nice -n 10 .venv/bin/python bench/tabular.py --seeds 5
    nice -n 10 .venv/bin/python bench/tabular.py --seeds 5 --only wine   # one table; merged into tabular.json
                                                                          # (same seeds and recipe), summary once
                                                                          # every table is there
    nice -n 10 .venv/bin/python bench/tabular.py --seeds 20 --only wine --out DIR   # a diagnostic elsewhere:
                                                                          # bench/results/tabular_seeds20_*.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, median, setup, update_summary, write_json  # noqa: E402

from dblocks.shared.data import Dataset, FeatureStats, stratified_split  # noqa: E402
from dblocks.shared.recipes import tabular_recipe  # noqa: E402
from dblocks.shared.workflow import accuracy, train_diffusion_blocks, train_end_to_end  # noqa: E402


def _table(name: str, x: np.ndarray, y: np.ndarray) -> Dataset:
    k = int(y.max()) + 1
    return Dataset(
        torch.tensor(x, dtype=torch.float32),
        torch.tensor(y, dtype=torch.long),
        "tabular",
        k,
        name,
        [str(i) for i in range(k)],
    )


def held_out_tables() -> dict[str, Dataset]:
    from sklearn import datasets as d

    out = {}
    for name, loader in (("wine", d.load_wine), ("iris", d.load_iris), ("breast_cancer", d.load_breast_cancer)):
        b = loader()
        out[name] = _table(name, b.data, b.target)
    from mlxtend.data import three_blobs_data

    x, y = three_blobs_data()
    out["three_blobs"] = _table("three_blobs", x, y)
    return out


def tuning_tables() -> dict[str, Dataset]:
    from sklearn.datasets import make_classification

    specs = {
        "syn_200x10_k3": (200, 10, 3),
        "syn_600x20_k2": (600, 20, 2),
        "syn_160x6_k4": (160, 6, 4),
        # added for #23's readout choice: two more small shapes (a few features, 3 classes)
        "syn_180x12_k3": (180, 12, 3),
        "syn_150x5_k3": (150, 5, 3),
    }
    out = {}
    for name, (n, f, k) in specs.items():
        x, y = make_classification(
            n_samples=n,
            n_features=f,
            n_informative=max(2, f // 2),
            n_classes=k,
            n_clusters_per_class=1,
            class_sep=1.0,
            random_state=1,
        )
        out[name] = _table(name, x, y)
    out.update(real_tuning_tables())
    return out


def real_tuning_tables(rows: int = 180) -> dict[str, Dataset]:
    """Real tables that are not held out, cut to `rows` random rows (wine's and iris's size, where the held-out gap
    shows): mlxtend's autompg (origin USA/Europe/Japan from cylinders, displacement, horsepower, weight,
    acceleration and model year; 392 complete rows), its boston housing (the median price's tertile from 13
    columns, 506 rows) and sklearn's digits 3/5/8 (the 64 pixels reduced to 13 principal components, 537 rows).
    Added for #23: the synthetic tables are Gaussian clusters, and no variant separated from the seed noise there."""
    from mlxtend.data import autompg_data, boston_housing_data
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA

    def cut(name: str, x: np.ndarray, y: np.ndarray, state: int) -> Dataset:
        idx = np.random.RandomState(state).choice(len(x), rows, replace=False)
        return _table(name, x[idx], y[idx])

    auto, _ = autompg_data()
    auto = auto[:, :7].astype(float)
    auto = auto[~np.isnan(auto).any(axis=1)]
    price_x, price = boston_housing_data()
    digits = load_digits()
    keep = np.isin(digits.target, [3, 5, 8])
    return {
        "autompg_origin": cut("autompg_origin", auto[:, :6], auto[:, 6].astype(int) - 1, 5),
        "boston_tertile": cut("boston_tertile", price_x, np.digitize(price, np.quantile(price, [1 / 3, 2 / 3])), 6),
        "digits358_pca13": cut(
            "digits358_pca13",
            PCA(13, random_state=0).fit_transform(digits.data[keep]),
            np.searchsorted([3, 5, 8], digits.target[keep]),
            7,
        ),
    }


def split_for_seed(ds: Dataset, seed: int):
    """Seed `seed`'s stratified 75/25 split, both halves standardised with the training half's statistics, and the
    recipe chosen from the training half: (train, test, plan). Every tabular bench measures on this."""
    tr, te = stratified_split(ds, 0.25, seed=seed)
    stats = FeatureStats.of(tr.x, "training split")
    tr, te = tr.standardize(stats), te.standardize(stats)
    return tr, te, tabular_recipe(len(tr), tr.input_shape[0], ds.num_classes, name=ds.name)


def run_one(ds: Dataset, seed: int, work: Path) -> dict:
    tr, te, plan = split_for_seed(ds, seed)
    p = plan.preset
    from dataclasses import replace

    cfg = replace(p.train, seed=seed)
    t0 = time.perf_counter()
    train_diffusion_blocks(p, p.noise_schedule(plan.blocks), tr, cfg, work / "db")
    t_db = time.perf_counter() - t0
    train_end_to_end(p, tr, cfg, work / "e2e")
    db, e2e = accuracy(work / "db", te), accuracy(work / "e2e", te)
    return {
        "seed": seed,
        "db": db,
        "e2e": e2e,
        "gap_points": 100 * (e2e - db),
        "blocks": plan.blocks,
        "epochs": cfg.epochs,
        "width": p.arch.width,
        "db_seconds": t_db,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tune", action="store_true", help="the synthetic tuning tables instead of the held-out ones")
    ap.add_argument("--only", nargs="*", help="table names to run")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    env = setup(args.threads)
    tables = tuning_tables() if args.tune else held_out_tables()
    if args.only:
        tables = {k: v for k, v in tables.items() if k in args.only}
    results: dict[str, dict] = {}
    for name, ds in tables.items():
        runs = []
        for seed in range(args.seeds):
            with tempfile.TemporaryDirectory() as tmp:
                runs.append(run_one(ds, seed, Path(tmp)))
            r = runs[-1]
            print(
                f"{name} seed {seed}: DB {r['db']:.3f} e2e {r['e2e']:.3f} gap {r['gap_points']:+.1f} "
                f"(B={r['blocks']}, {r['epochs']} epochs, {r['db_seconds']:.0f} s)",
                flush=True,
            )
        results[name] = {
            "rows": len(ds),
            "features": ds.input_shape[0],
            "classes": ds.num_classes,
            "runs": runs,
            "gap_points_median": median([r["gap_points"] for r in runs]),
            "db_median": median([r["db"] for r in runs]),
            "e2e_median": median([r["e2e"] for r in runs]),
        }
        print(f"{name}: median gap {results[name]['gap_points_median']:+.2f} points", flush=True)
    path = args.out / ("tabular_tune.json" if args.tune else "tabular.json")
    if args.only and path.exists():  # one table at a time (e.g. several processes): merge with the file's others
        old = json.loads(path.read_text())
        if old.get("seeds") == args.seeds and old.get("recipe") == recipe_fingerprint():
            results = {**old["tables"], **results}
    out = {"setup": env, "seeds": args.seeds, "recipe": recipe_fingerprint(), "tables": results}
    write_json(path, out)
    if not args.tune and set(results) >= set(held_out_tables()):
        update_summary(
            args.out, {"core.tabular_gap_points": {k: round(v["gap_points_median"], 2) for k, v in results.items()}}
        )


def recipe_fingerprint() -> str:
    """Which recipe made the results (the source of shared/recipes.py): tables merge only under the same one."""
    import hashlib
    import inspect

    from dblocks.shared import recipes

    return hashlib.sha256(inspect.getsource(recipes).encode()).hexdigest()[:16]


if __name__ == "__main__":
    main()
