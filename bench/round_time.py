"""Where a federated round's time goes: local training vs protocol (Flower messaging + secure aggregation).

Runs the real thing (LocalFederation: registry, SuperLink with TLS and node keys, one `dbclient join` per
company) on MNIST 5k with the demo's settings, then reads the logs: the ServerApp's per-block aggregation wall
time and every company's own DP-SGD training time ("after X s of training" in its progress log). Protocol time
of a block = its aggregation wall time minus the slowest cohort member's training time.

    python bench/round_time.py [--companies 6 --blocks 2 --rounds 3 --secagg dblocks --client both]

`--client warm` (the product: `dbclient join` with its resident company worker), `cold` (`dbclient join
--worker off`: Flower's fresh ClientApp process per message imports torch and Opacus and reads the data, with
Flower's 3 s / 1 s polls; the way before #17) or `both` (cold, then warm, each in its own federation on the same
machine, same settings). Writes bench/results/round_time.json ("modes": warm, "cold": cold) and, from the warm
run, federation.round_seconds / federation.protocol_seconds.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def parse(fed, run_id: str, since: dict[str, int]) -> list[dict]:
    """Rows per (round, block) of run `run_id`; company progress lines after `since[company]` characters."""
    log = (fed.run_dir(run_id) / "serverapp.log").read_text(errors="replace")
    agg = {
        (int(r), int(b)): (float(s), int(k))
        for b, r, k, s in re.findall(r"block (\d+) round (\d+): aggregated (\d+)/\d+ clients \(([\d.]+) s\)", log)
    }
    rounds = {int(r): float(s) for r, s in re.findall(r'round (\d+) done: \{"round": \d+, "seconds": ([\d.]+)', log)}
    train: dict[tuple[int, int], list[float]] = {}
    for home in (fed.root / "companies").iterdir():
        p = home / "progress.log"
        if p.exists():
            text = p.read_text()[since.get(home.name, 0) :]
            for r, b, s in re.findall(
                r"round (\d+) block (\d+): sent clipped update .*? after ([\d.]+) s of training", text
            ):
                train.setdefault((int(r), int(b)), []).append(float(s))
    rows = []
    for (r, b), (wall, k) in sorted(agg.items()):
        # the slowest training that overlapped this block's aggregation (all blocks of the round run together)
        t = max((max(v) for (rr, _), v in train.items() if rr == r), default=0.0)
        rows.append(
            {
                "round": r,
                "block": b,
                "clients": k,
                "aggregation_seconds": wall,
                "max_training_seconds": t,
                "protocol_seconds": wall - t,
                "round_seconds": rounds.get(r),
            }
        )
    return rows


def progress_sizes(fed) -> dict[str, int]:
    return {
        h.name: len((h / "progress.log").read_text()) if (h / "progress.log").exists() else 0
        for h in (fed.root / "companies").iterdir()
    }


PROTOCOLS = {
    "dblocks": "dblocks SecAgg+ (privacy/secagg), all blocks of a round in the same exchanges",
    "flower": "Flower SecAgg+ (legacy SecAggPlusWorkflow + secaggplus_mod), one workflow per block cohort",
}


def measure(args, modes: list[str], cold: bool) -> dict:
    """One federation (fresh folder, registry, SuperLink, companies) and one run per SecAgg mode."""
    from dblocks.server.ops.localfed import LocalFederation

    root = Path(tempfile.mkdtemp(prefix="dblocks-round-time-"))
    out: dict = {}
    with LocalFederation(root) as fed:
        _, paths, _ = fed.company_data(args.companies)
        fed.start_registry()
        fed.start_superlink()
        for i, p in enumerate(paths):
            fed.add_company(f"company{i}", p, budget=200.0, extra=["--worker", "off"] if cold else None)
        for mode in modes:
            since = progress_sizes(fed)
            fed.run(
                task="mnist-fed",
                num_blocks=args.blocks,
                num_rounds=args.rounds,
                cohort_size=3,
                min_cohort=3,
                record_noise=1.0,
                record_clip=1.0,
                record_sample_rate=0.1,
                record_steps=15,
                lr=3e-4,
                update_clip=0.5,
                secagg=mode,
            )
            rows = parse(fed, fed.runs()[-1], since)
            if not rows:
                raise SystemExit(f"the {mode} run aggregated nothing: see {root}/run-new.log")
            steady = [r for r in rows if r["round"] > 1] or rows
            mean = {
                k: sum(r[k] for r in steady) / len(steady)
                for k in ("round_seconds", "aggregation_seconds", "max_training_seconds", "protocol_seconds")
            }
            out[mode] = {"rows": rows, "steady_state_mean": mean}
            print("cold" if cold else "warm", mode, json.dumps(mean), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--companies", type=int, default=6)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--secagg", choices=["both", "dblocks", "flower"], default="both")
    ap.add_argument("--client", choices=["warm", "cold", "both"], default="warm")
    args = ap.parse_args()

    modes = ["dblocks", "flower"] if args.secagg == "both" else [args.secagg]
    setup = {
        "companies": args.companies,
        "blocks": args.blocks,
        "rounds": args.rounds,
        "task": "mnist-fed",
        "secure_aggregation": {m: PROTOCOLS[m] for m in modes},
        "cohort": 3,
        "dp_sgd": {"noise": 1.0, "clip": 1.0, "sample_rate": 0.1, "steps": 15},
        "tls": True,
        "node_auth": True,
        "clients": {
            "warm": "dbclient join: resident company worker runs the ClientApp tasks (SuperNode --isolation "
            "process), SuperNode polls every 0.5 s; upload weights as one array",
            "cold": "dbclient join --worker off: a fresh ClientApp process per message loads torch, Opacus and the "
            "data; Flower's polls (3 s, 1 s)",
        },
        "host": "the shared 2-core development machine: server, SuperLink, registry and all companies on it",
    }
    print(json.dumps(setup))
    t0 = time.time()
    out: dict = {"setup": setup}
    if args.client in ("cold", "both"):
        out["cold"] = measure(args, modes, cold=True)
    if args.client in ("warm", "both"):
        out["modes"] = measure(args, modes, cold=False)
    out["wall_seconds"] = time.time() - t0
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "round_time.json").write_text(json.dumps(out, indent=2) + "\n")
    if "dblocks" in out.get("modes", {}):
        from _common import update_summary

        mean = out["modes"]["dblocks"]["steady_state_mean"]
        update_summary(
            RESULTS,
            {
                "federation.round_seconds": round(mean["round_seconds"], 1),
                "federation.protocol_seconds": round(mean["protocol_seconds"], 1),
            },
        )


if __name__ == "__main__":
    main()
