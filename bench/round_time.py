"""Where a federated round's time goes: local training vs protocol (Flower messaging + secure aggregation).

Runs the real thing (LocalFederation: registry, SuperLink with TLS and node keys, one `dbclient join` per
company) on MNIST 5k with the demo's settings, then reads the logs: the ServerApp's per-block aggregation wall
time and every company's own DP-SGD training time ("after X s of training" in its progress log). Protocol time
of a block = its aggregation wall time minus the slowest cohort member's training time.

    python bench/round_time.py [--companies 6 --blocks 2 --rounds 2]
Writes bench/results/round_time.json and federation.round_seconds / federation.protocol_seconds.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def parse(fed, run_id: str) -> list[dict]:
    log = (fed.run_dir(run_id) / "serverapp.log").read_text(errors="replace")
    agg = {(int(r), int(b)): (float(s), int(k)) for b, r, k, s in
           re.findall(r"block (\d+) round (\d+): aggregated (\d+)/\d+ clients \(([\d.]+) s\)", log)}
    rounds = {int(r): float(s) for r, s in re.findall(r'round (\d+) done: \{"round": \d+, "seconds": ([\d.]+)', log)}
    train: dict[tuple[int, int], list[float]] = {}
    for home in (fed.root / "companies").iterdir():
        p = home / "progress.log"
        if p.exists():
            for r, b, s in re.findall(r"round (\d+) block (\d+): sent clipped update .*? after ([\d.]+) s of training", p.read_text()):
                train.setdefault((int(r), int(b)), []).append(float(s))
    rows = []
    for (r, b), (wall, k) in sorted(agg.items()):
        t = max(train.get((r, b), [0.0]))
        rows.append({"round": r, "block": b, "clients": k, "aggregation_seconds": wall, "max_training_seconds": t,
                     "protocol_seconds": wall - t, "round_seconds": rounds.get(r)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--companies", type=int, default=6)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    from dblocks.server.federation.localfed import LocalFederation

    root = Path(tempfile.mkdtemp(prefix="dblocks-round-time-"))
    setup = {"companies": args.companies, "blocks": args.blocks, "rounds": args.rounds, "task": "mnist-fed",
             "secure_aggregation": "Flower SecAgg+ (legacy workflow), one per block cohort",
             "dp_sgd": {"noise": 1.0, "clip": 1.0, "sample_rate": 0.1, "steps": 15}, "tls": True, "node_auth": True}
    print(json.dumps(setup))
    t0 = time.time()
    with LocalFederation(root) as fed:
        _, paths, _ = fed.company_data(args.companies)
        fed.start_registry()
        fed.start_superlink()
        for i, p in enumerate(paths):
            fed.add_company(f"company{i}", p, budget=50.0)
        fed.run(task="mnist-fed", blocks=args.blocks, rounds=args.rounds, cohort=3, min_cohort=3, record_noise=1.0,
                record_clip=1.0, sample_rate=0.1, steps=15, lr=3e-4, update_clip=0.5)
        run_id = fed.runs()[-1]
        rows = parse(fed, run_id)
    steady = [r for r in rows if r["round"] > 1] or rows
    summary = {"round_seconds": sum(r["round_seconds"] for r in steady) / len(steady),
               "protocol_seconds": sum(r["protocol_seconds"] for r in steady) / len(steady),
               "training_seconds": sum(r["max_training_seconds"] for r in steady) / len(steady)}
    out = {"setup": setup, "rows": rows, "steady_state_mean": summary, "wall_seconds": time.time() - t0}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "round_time.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=1))
    path = RESULTS / "summary.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update({"federation.round_seconds": round(summary["round_seconds"], 1),
                 "federation.protocol_seconds": round(summary["protocol_seconds"], 1)})
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
