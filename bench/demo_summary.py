"""Issue #16: record one `dbserver demo` run's numbers in bench/results/summary.json.

`make demo` is the product's command and leaves the repository alone; this reads what it wrote
(<out>/results.json) and sets demo.gain_points (DP federated minus pretrained-only, test accuracy points),
demo.seconds (the demo's own total, start to results) and demo.run (how that run was made).

    /usr/bin/time -v .venv/bin/dbserver demo --out /tmp/demo --no-serve
    .venv/bin/python bench/demo_summary.py /tmp/demo --how "make demo equivalent, 2 cores, after installation"
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, update_summary  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, help="the demo's --out folder")
    ap.add_argument("--how", default="", help="how the run was made (command, cores, machine load)")
    args = ap.parse_args()
    r = json.loads((args.out / "results.json").read_text())
    keys = {
        "demo.gain_points": round(r["gain_points"], 2),
        "demo.seconds": round(r["seconds"], 1),
        "demo.run": {
            "how": args.how,
            "cores": os.cpu_count(),
            "accuracy_pretrained": round(r["accuracy_pretrained"], 4),
            "accuracy_federated_dp": round(r["accuracy_federated"], 4),
            "reference_no_dp_not_private": r["reference_no_dp_not_private"][-1][1]
            if r["reference_no_dp_not_private"]
            else None,
            "max_epsilon_per_company": round(max(r["epsilon_per_company"].values()), 3),
        },
    }
    update_summary(RESULTS, keys)
    print(json.dumps(keys, indent=1))


if __name__ == "__main__":
    main()
