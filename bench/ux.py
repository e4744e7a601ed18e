"""A new user's first hour with their own data, through the real CLI (`dblocks`, `dbclient`) as subprocesses.

1. User data sets (`ux.user_datasets_ok`): data sets dblocks does not ship as presets, of different shapes and
   formats, each through `dblocks train --data` (recipe chosen from the data), `dblocks eval` (held-out split)
   and `dblocks predict` on new unlabelled rows. OK = all three exit 0, print no traceback, and the predictions
   name the data set's own classes.
2. Bad-file battery (`ux.tracebacks_on_bad_input`, `ux.bad_file_seconds_max`, `ux.bad_file_peak_mb_max`): files a
   user gets wrong, each given to `dblocks train --data` (and `dbclient check-data`). Each must end with exit 2,
   one `error:` line, no traceback, within 10 s and 1 GiB of peak memory (ru_maxrss of the child, via wait4),
   including a 1 GiB sparse file named .csv made with truncate under a temporary folder (deleted afterwards).
3. Cross-file labels (`ux.cross_file_label_errors`): a model trained on one file, scored on files that encode
   the same rows differently (rows shuffled so labels appear in another order, columns reordered, a subset of
   the classes, integer labels written as strings); each score must equal the one computed from the model's
   predictions against the true class names, and labels the model does not know must be refused (exit 2).
   Federated: tests/federation/test_class_list.py (companies hold different subsets of the classes as string
   labels; the run's class list maps every company's labels to the same indices, checked row by row; a label
   outside the list is refused before training, by the ClientApp and by `dbclient join`/`check-data`), each
   of its tests one case.

    nice -n 10 .venv/bin/python bench/ux.py
    nice -n 10 .venv/bin/python bench/ux.py --only cross-file   # part 3 alone (keeps parts 1-2 in ux.json)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, update_summary, write_json  # noqa: E402

BIN = Path(sys.executable).parent
SECONDS_LIMIT, MEMORY_LIMIT_MB = 10.0, 1024.0


@dataclass
class Run:
    argv: list[str]
    rc: int
    seconds: float
    peak_mb: float
    output: str

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.output

    def summary(self) -> dict:
        d = asdict(self)
        d["output"] = self.output[-600:]
        d["argv"] = [Path(a).name if "/" in a else a for a in self.argv]
        return d


def cli(*argv: str, timeout: float = 900) -> Run:
    """Run a dblocks/dbclient command; its wall time and peak resident memory (MiB). The peak comes from
    /usr/bin/time (%M): a child forked from this (large) process would report this process's size as its own."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        t0 = time.perf_counter()
        try:
            p = subprocess.run(
                ["/usr/bin/time", "-o", rss.name, "-f", "%M", str(BIN / argv[0]), *argv[1:]],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                text=True,
                timeout=timeout,
            )
            rc, out = p.returncode, p.stdout
        except subprocess.TimeoutExpired as e:
            rc, out = -9, (e.stdout or "") + "\n[bench: killed after timeout]"
        seconds = time.perf_counter() - t0
        text = Path(rss.name).read_text().strip().splitlines()
    peak = float(text[-1]) / 1024 if text and text[-1].isdigit() else float("nan")
    return Run(list(argv), rc, seconds, peak, out)


# ---------------------------------------------------------------------------------------------------
# data sets
# ---------------------------------------------------------------------------------------------------
def _shapes(n: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """3 classes of size x size grayscale images: a horizontal bar, a vertical bar, a square outline, with noise."""
    x = rng.integers(0, 60, (n, size, size)).astype(np.uint8)
    y = np.arange(n) % 3
    for i in range(n):
        a, b = rng.integers(2, size - 6, 2)
        if y[i] == 0:
            x[i, a : a + 2, 2 : size - 2] = 230
        elif y[i] == 1:
            x[i, 2 : size - 2, b : b + 2] = 230
        else:
            x[i, a, b : b + 5] = x[i, a + 4, b : b + 5] = x[i, a : a + 5, b] = x[i, a : a + 5, b + 4] = 230
    return x, y


def make_datasets(root: Path) -> list[dict]:
    """The user data sets: {name, data, label_column, new (unlabelled rows for predict), classes}."""
    from PIL import Image
    from sklearn.datasets import load_iris, load_wine, make_classification

    rng = np.random.default_rng(0)
    out = []
    w = load_wine(as_frame=True)
    df = w.data.copy()
    df.insert(0, "cultivar", [f"cultivar_{w.target_names[i][-1]}" for i in w.target])
    df.to_csv(root / "wine.csv", index=False)
    df.drop(columns="cultivar").sample(25, random_state=1).to_csv(root / "wine_new.csv", index=False)
    out.append(
        {
            "name": "wine CSV, string labels in the first column",
            "data": "wine.csv",
            "label_column": "cultivar",
            "new": "wine_new.csv",
            "classes": sorted(set(df["cultivar"])),
        }
    )
    i = load_iris(as_frame=True)
    df = i.data.copy()
    df.insert(2, "species", [i.target_names[t] for t in i.target])
    df.to_parquet(root / "iris.parquet")
    df.drop(columns="species").sample(20, random_state=1).to_parquet(root / "iris_new.parquet")
    out.append(
        {
            "name": "iris Parquet, label column in the middle",
            "data": "iris.parquet",
            "label_column": "species",
            "new": "iris_new.parquet",
            "classes": list(i.target_names),
        }
    )
    x, y = make_classification(
        n_samples=320, n_features=8, n_informative=5, n_classes=4, n_clusters_per_class=1, random_state=2
    )
    np.savez(root / "table.npz", x=x.astype(np.float32), y=y)
    np.savez(root / "table_new.npz", x=x[:30].astype(np.float32))
    out.append(
        {
            "name": "NPZ table, 4 integer classes",
            "data": "table.npz",
            "label_column": "label",
            "new": "table_new.npz",
            "classes": ["0", "1", "2", "3"],
        }
    )
    from mlxtend.data import three_blobs_data

    bx, by = three_blobs_data()
    blobs = pd.DataFrame({"u": bx[:, 0], "v": bx[:, 1], "group": by + 1})  # 1-based integer labels
    blobs.to_csv(root / "blobs.csv", sep=";", index=False)
    blobs.drop(columns="group").to_csv(root / "blobs_new.csv", sep=";", index=False)
    out.append(
        {
            "name": "2-feature CSV, ';' delimiter, labels 1..3",
            "data": "blobs.csv",
            "label_column": "group",
            "new": "blobs_new.csv",
            "classes": ["0", "1", "2", "3"],
        }
    )
    imgs, labels = _shapes(90, 12, rng)
    names = ["bar", "column", "square"]
    for k, (a, c) in enumerate(zip(imgs, labels)):
        d = root / "shapes" / names[c]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(d / f"{k:03d}.png")
    new = root / "shapes_new"
    new.mkdir(exist_ok=True)
    for k, a in enumerate(_shapes(12, 12, np.random.default_rng(5))[0]):
        Image.fromarray(a).save(new / f"{k:03d}.png")
    out.append(
        {
            "name": "image folder, 3 classes of 12x12 PNGs",
            "data": "shapes",
            "label_column": "label",
            "new": "shapes_new",
            "classes": names,
        }
    )
    imgs, labels = _shapes(120, 16, np.random.default_rng(7))
    np.savez(root / "images.npz", x=imgs, y=np.array(names)[labels])
    np.savez(root / "images_new.npz", x=imgs[:10])
    out.append(
        {
            "name": "NPZ images 16x16 uint8, string labels",
            "data": "images.npz",
            "label_column": "label",
            "new": "images_new.npz",
            "classes": names,
        }
    )
    return out


def user_datasets(root: Path, epochs: int) -> list[dict]:
    results = []
    for spec in make_datasets(root):
        model = root / f"model-{spec['data'].split('.')[0]}"
        runs = {
            "train": cli(
                "dblocks",
                "train",
                "--data",
                str(root / spec["data"]),
                "--label-column",
                spec["label_column"],
                "--out",
                str(model),
                "--epochs",
                str(epochs),
            )
        }
        runs["eval"] = cli("dblocks", "eval", str(model))
        pred = root / f"pred-{spec['data'].split('.')[0]}.csv"
        runs["predict"] = cli("dblocks", "predict", str(model), "--data", str(root / spec["new"]), "--out", str(pred))
        named = pred.exists() and set(pd.read_csv(pred)["prediction"].astype(str)) <= set(spec["classes"])
        ok = all(r.rc == 0 and not r.traceback for r in runs.values()) and named
        acc = None
        if runs["eval"].rc == 0:
            try:
                acc = json.loads(runs["eval"].output[runs["eval"].output.index("{") :])["accuracy"]
            except ValueError:
                pass
        results.append(
            {
                "name": spec["name"],
                "ok": bool(ok),
                "held_out_accuracy": acc,
                "predictions_named": named,
                "runs": {k: r.summary() for k, r in runs.items()},
            }
        )
        print(f"{'ok ' if ok else 'FAIL'} {spec['name']}: held-out accuracy {acc}", flush=True)
    return results


# ---------------------------------------------------------------------------------------------------
# bad files
# ---------------------------------------------------------------------------------------------------
def bad_files(root: Path) -> list[tuple[str, list[str]]]:
    """(what is wrong, the command) for every case of the battery."""
    b = root / "bad"
    b.mkdir()
    (b / "nolabel.csv").write_text("a,b\n1,2\n3,4\n")
    (b / "nan.csv").write_text("a,b,label\n1,2,x\n,4,y\n5,6,x\n")
    (b / "text.csv").write_text("a,b,label\n1,2,x\n3,hello,y\n5,6,x\n")
    (b / "empty.csv").write_text("")
    (b / "header.csv").write_text("a,b,label\n")
    (b / "oneclass.csv").write_text("a,b,label\n" + "".join(f"{i},{i * 2},same\n" for i in range(20)))
    (b / "onecol.csv").write_text("abc\n1\n2\n")
    (b / "nolabelvals.csv").write_text("a,b,label\n1,2,x\n3,4,\n")
    (b / "xy.csv").write_text("a,b,label\n1,2,x\n3,4,y\n")
    (b / "data.json").write_text('{"a": [1, 2]}')
    (b / "fake.parquet").write_text("a,b,label\n1,2,x\n")
    (b / "png.csv").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    (b / "latin1.csv").write_bytes("a,b,label\n1,2,caf\xe9\n".encode("latin-1"))
    (b / "longline.csv").write_text("x" * 200_000 + "\n1\n")
    with open(b / "huge.csv", "wb") as f:  # a 1 GiB sparse file: no disk blocks, reads as NUL bytes
        f.truncate(1 << 30)
    np.savez(b / "noy.npz", x=np.zeros((4, 2)))
    (b / "emptydir").mkdir()
    train = ["dblocks", "train", "--out", str(root / "bad-model"), "--epochs", "1", "--data"]
    cases = [
        (what, train + [str(b / name)])
        for what, name in [
            ("missing label column", "nolabel.csv"),
            ("NaN cell", "nan.csv"),
            ("text in a feature column", "text.csv"),
            ("empty file", "empty.csv"),
            ("header only", "header.csv"),
            ("one class", "oneclass.csv"),
            ("single column", "onecol.csv"),
            ("rows without a label", "nolabelvals.csv"),
            ("wrong format (.json)", "data.json"),
            ("CSV named .parquet", "fake.parquet"),
            ("PNG named .csv", "png.csv"),
            ("not UTF-8", "latin1.csv"),
            ("200 kB header line", "longline.csv"),
            ("1 GiB sparse file named .csv", "huge.csv"),
            ("NPZ without y", "noy.npz"),
            ("folder without class folders", "emptydir"),
            ("missing file", "missing.csv"),
        ]
    ]
    cases += [
        ("check-data: 1 GiB sparse file", ["dbclient", "check-data", str(b / "huge.csv")]),
        ("check-data: missing label column", ["dbclient", "check-data", str(b / "nolabel.csv")]),
        (
            "check-data: label not in the run's classes",
            ["dbclient", "check-data", str(b / "xy.csv"), "--classes", "p,q"],
        ),
        ("eval of a directory without a model", ["dblocks", "eval", str(b)]),
        ("unknown preset", ["dblocks", "train", "--preset", "cifar", "--out", str(root / "m")]),
        (
            "image preset on a table",
            [
                "dblocks",
                "train",
                "--preset",
                "mnist",
                "--data",
                str(root / "wine.csv"),
                "--label-column",
                "cultivar",
                "--out",
                str(root / "m"),
            ],
        ),
        (
            "blocks that do not divide the layers",
            [
                "dblocks",
                "train",
                "--data",
                str(root / "wine.csv"),
                "--label-column",
                "cultivar",
                "--blocks",
                "3",
                "--out",
                str(root / "m"),
            ],
        ),
    ]
    return cases


def battery(root: Path) -> list[dict]:
    results = []
    for what, argv in bad_files(root):
        r = cli(*argv, timeout=120)
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        ok = (
            r.rc == 2
            and not r.traceback
            and len(lines) >= 1
            and lines[-1].startswith("error:")
            and len(r.output) < 2000
            and r.seconds <= SECONDS_LIMIT
            and r.peak_mb <= MEMORY_LIMIT_MB
        )
        results.append({"case": what, "ok": ok, "traceback": r.traceback, **r.summary()})
        print(
            f"{'ok ' if ok else 'FAIL'} {what}: rc {r.rc}, {r.seconds:.1f} s, {r.peak_mb:.0f} MiB: "
            f"{lines[-1][:150] if lines else ''}",
            flush=True,
        )
    (root / "bad" / "huge.csv").unlink()
    return results


# ---------------------------------------------------------------------------------------------------
# cross-file labels
# ---------------------------------------------------------------------------------------------------
def _score(run: Run) -> float | None:
    try:
        return float(json.loads(run.output[run.output.index("{") :])["accuracy"])
    except ValueError:
        return None


def cross_file(root: Path, epochs: int) -> list[dict]:
    """Train on wine.csv (string labels) and on wine_int.csv (integer labels); score re-encoded files."""
    wine = pd.read_csv(root / "wine.csv")
    wine_int = wine.assign(cultivar=wine["cultivar"].map({"cultivar_0": 0, "cultivar_1": 1, "cultivar_2": 2}))
    wine_int.to_csv(root / "wine_int.csv", index=False)
    m_str, m_int = root / "x-model-str", root / "x-model-int"
    for data, model in (("wine.csv", m_str), ("wine_int.csv", m_int)):
        cli(
            "dblocks",
            "train",
            "--data",
            str(root / data),
            "--label-column",
            "cultivar",
            "--out",
            str(model),
            "--epochs",
            str(epochs),
            "--test-fraction",
            "0",
        )
    variants = {
        "rows shuffled (labels in another order)": (m_str, wine.sample(frac=1, random_state=3), "csv"),
        "columns reordered": (m_str, wine[list(reversed(wine.columns))], "csv"),
        "subset: one class only": (m_str, wine[wine["cultivar"] == "cultivar_2"], "csv"),
        "subset: two classes, Parquet": (m_str, wine[wine["cultivar"] != "cultivar_0"], "parquet"),
        "integer model, labels as strings": (m_int, wine_int.astype({"cultivar": str}), "parquet"),
        "integer model, labels as floats": (m_int, wine_int.astype({"cultivar": float}), "csv"),
    }
    results = []
    for what, (model, df, fmt) in variants.items():
        path = root / f"variant-{len(results)}.{fmt}"
        df.to_csv(path, index=False) if fmt == "csv" else df.to_parquet(path)
        ev = cli("dblocks", "eval", str(model), "--data", str(path))
        pred = root / f"variant-{len(results)}-pred.csv"
        cli("dblocks", "predict", str(model), "--data", str(path), "--out", str(pred))
        truth = df["cultivar"].map(lambda v: str(int(float(v))) if str(v)[0].isdigit() else str(v)).to_numpy()
        expected = (
            float((pd.read_csv(pred, dtype={"prediction": str})["prediction"].to_numpy() == truth).mean())
            if pred.exists()
            else None
        )
        got = _score(ev)
        ok = ev.rc == 0 and got is not None and expected is not None and abs(got - expected) < 1e-3
        results.append(
            {
                "case": what,
                "ok": ok,
                "eval_accuracy": got,
                "accuracy_from_predictions": expected,
                "output": ev.output[-300:],
            }
        )
        print(f"{'ok ' if ok else 'FAIL'} {what}: eval {got} vs predictions {expected}", flush=True)
    refused = {"string model, integer labels": (m_str, wine_int), "integer model, string names": (m_int, wine)}
    for what, (model, df) in refused.items():
        path = root / f"refuse-{len(results)}.csv"
        df.to_csv(path, index=False)
        ev = cli("dblocks", "eval", str(model), "--data", str(path))
        ok = ev.rc == 2 and "not in the class list" in ev.output and not ev.traceback
        results.append({"case": what + " (must be refused)", "ok": ok, "output": ev.output[-300:]})
        print(f"{'ok ' if ok else 'FAIL'} {what}: rc {ev.rc}", flush=True)
    return results


def federated_labels(root: Path) -> list[dict]:
    """Each test of tests/federation/test_class_list.py as one case (ok = passed), run by pytest in a child."""
    import xml.etree.ElementTree as ET

    report = root / "class_list.xml"
    test = Path(__file__).resolve().parents[1] / "tests" / "federation" / "test_class_list.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", str(test)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=test.parents[2],
    )
    results = []
    for case in ET.parse(report).getroot().iter("testcase") if report.exists() else []:
        failed = case.find("failure") is not None or case.find("error") is not None
        skipped = case.find("skipped") is not None
        results.append({"case": f"federated: {case.get('name')}", "ok": not failed and not skipped})
        print(f"{'ok ' if results[-1]['ok'] else 'FAIL'} federated: {case.get('name')}", flush=True)
    if not results:
        results.append({"case": "federated: test_class_list.py did not run", "ok": False, "output": p.stdout[-600:]})
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=20, help="epochs per block for the user data sets (UX, not accuracy)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--only", choices=["cross-file"], help="run part 3 only; parts 1-2 stay as ux.json has them")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="dblocks-ux-") as tmp:
        root = Path(tmp)
        if args.only:
            make_datasets(root)
            labels = cross_file(root, args.epochs) + federated_labels(root)
            out = {**json.loads((args.out / "ux.json").read_text()), "cross_file": labels}
            write_json(args.out / "ux.json", out)
            errors = sum(not c["ok"] for c in labels)
            print(json.dumps({"ux.cross_file_label_errors": errors}))
            update_summary(args.out, {"ux.cross_file_label_errors": errors})
            return
        datasets = user_datasets(root, args.epochs)
        bad = battery(root)
        labels = cross_file(root, args.epochs) + federated_labels(root)
    out = {"user_datasets": datasets, "bad_files": bad, "cross_file": labels}
    write_json(args.out / "ux.json", out)
    summary = {
        "ux.user_datasets_ok": sum(d["ok"] for d in datasets),
        "ux.tracebacks_on_bad_input": sum(b["traceback"] for b in bad),
        "ux.bad_file_seconds_max": round(max(b["seconds"] for b in bad), 2),
        "ux.bad_file_peak_mb_max": round(max(b["peak_mb"] for b in bad), 1),
        "ux.bad_file_cases_ok": f"{sum(b['ok'] for b in bad)}/{len(bad)}",
        "ux.cross_file_label_errors": sum(not c["ok"] for c in labels),
    }
    print(json.dumps(summary, indent=2))
    update_summary(args.out, summary)


if __name__ == "__main__":
    main()
