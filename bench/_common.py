"""Helpers shared by the bench scripts: setup banner, thread count, results files, summary.json update."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def setup(threads: int) -> dict:
    """Pin torch to `threads` intra-op threads and describe the machine (printed and stored with results)."""
    torch.set_num_threads(threads)
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def update_summary(out_dir: Path, updates: dict) -> dict:
    """Read-modify-write `summary.json` in out_dir: set only the flat dotted keys in `updates`
    (e.g. {"core.memory_ratio_min": 3.4}), keep every other key as it is."""
    path = out_dir / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else {}
    summary.update(updates)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(dict(sorted(summary.items())), indent=2) + "\n")
    os.replace(tmp, path)
    return summary


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))
