"""Read-modify-write of bench/results/summary.json: only the given (dotted) keys change."""

from __future__ import annotations

import json
from pathlib import Path

SUMMARY = Path(__file__).resolve().parents[2] / "bench" / "results" / "summary.json"


def record(updates: dict, path: Path = SUMMARY) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(updates)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(dict(sorted(data.items())), indent=2) + "\n")
    tmp.replace(path)
