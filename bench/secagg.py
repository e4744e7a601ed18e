"""Side by side in one Flower run, same cohort and model: round time and bytes of Flower 1.41's SecAgg+ vs
dblocks' secure aggregation (dblocks.privacy.secagg), over real processes on loopback (a SuperLink, N
SuperNodes, `flwr run`). Local training is zero, so round time = protocol overhead.

Writes bench/results/secagg.json and secagg.overhead_ratio_vs_flower (ours / Flower's median steady-state round
time over rounds >= 2 in which every node was aggregated) into bench/results/summary.json (read-modify-write, only
that key).
Run: flock /tmp/dblocks-heavy.lock .venv/bin/python bench/secagg.py [--nodes 6 --rounds 3 --dim 500000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dblocks.server.ops.procs import spawn, wait_for_port
from dblocks.shared.procs import flwr_env, free_port

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BIN = Path(sys.executable).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--dim", type=int, default=500_000)
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="secagg-bench-"))
    procs: list[subprocess.Popen] = []
    try:
        env = flwr_env(root / "flwr")
        port = free_port()
        procs.append(
            spawn(
                [
                    str(BIN / "flower-superlink"),
                    "--insecure",
                    "--port",
                    str(port),
                    "--database",
                    str(root / "superlink.db"),
                    "--disable-runtime-dependency-installation",
                ],
                env=env,
                log=root / "superlink.log",
            )
        )
        wait_for_port("127.0.0.1", port, 90, procs[0])
        (root / "flwr").mkdir(parents=True, exist_ok=True)
        (root / "flwr" / "config.toml").write_text(
            f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
        )
        for i in range(args.nodes):
            node_env = flwr_env(root / f"node{i}")
            procs.append(
                spawn(
                    [
                        str(BIN / "flower-supernode"),
                        "--insecure",
                        "--superlink",
                        f"127.0.0.1:{port}",
                        "--port",
                        str(free_port()),
                    ],
                    env=node_env,
                    log=root / f"node{i}.log",
                )
            )
        app = root / "app"
        shutil.copytree(HERE / "secagg_app", app, ignore=shutil.ignore_patterns("__pycache__"))
        out = root / "result.json"
        run_config = f'nodes={args.nodes} rounds={args.rounds} dim={args.dim} out="{out}"'
        t0 = time.perf_counter()
        run = subprocess.run(
            [str(BIN / "flwr"), "run", str(app), "local", "--stream", "--run-config", run_config],
            env=env,
            capture_output=True,
            text=True,
            timeout=3600,
        )
        wall = time.perf_counter() - t0
        (root / "flwr-run.log").write_text(run.stdout + run.stderr)
        if not out.exists():
            raise SystemExit(
                f"the bench ServerApp wrote no result (flwr run rc={run.returncode}); logs in {root}:\n"
                f"{(run.stdout + run.stderr)[-3000:]}"
            )
        result = json.loads(out.read_text())
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    rows = result["rounds"]
    for row in rows:
        print(
            f"round {row['round']} {row['protocol']:8s} {row['seconds']:7.2f} s  aggregated {row['aggregated']}  "
            f"exchanges {row['exchanges']} ({', '.join(f'{x:.1f}' for x in row['exchange_seconds'])} s)  "
            f"down {row['bytes_down'] / 1e6:7.2f} MB  up {row['bytes_up'] / 1e6:7.2f} MB  "
            f"max abs err {row['max_abs_error']}  {row['failure'] or ''}"
        )
    summary = {}
    for proto in ("flower", "dblocks"):
        # steady state: rounds >= 2 in which every node was aggregated (a round that lost a node to a timeout
        # measures the timeout, not the protocol; such rounds are listed in `rows` and counted here)
        mine = [r for r in rows if r["protocol"] == proto and r["round"] >= 2]
        steady = [r for r in mine if r["ok"] and r["aggregated"] == args.nodes]
        summary[proto] = {
            "steady_rounds": len(steady),
            "incomplete_rounds": len(mine) - len(steady),
            "median_round_seconds": float(np.median([r["seconds"] for r in steady])) if steady else None,
            "median_bytes": float(np.median([r["bytes_down"] + r["bytes_up"] for r in steady])) if steady else None,
            "exchanges_per_round": steady[0]["exchanges"] if steady else None,
            "median_seconds_per_exchange": float(np.median([x for r in steady for x in r["exchange_seconds"]]))
            if steady
            else None,
            "max_abs_error": max(r["max_abs_error"] for r in steady) if steady else None,
        }
    ratio = None
    if summary["flower"]["median_round_seconds"] and summary["dblocks"]["median_round_seconds"]:
        ratio = summary["dblocks"]["median_round_seconds"] / summary["flower"]["median_round_seconds"]
    for proto in ("flower", "dblocks"):
        print(f"steady state {proto}: {summary[proto]}")
    print(f"ratio ours/Flower (median steady-state round time) = {ratio}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "secagg.json").write_text(
        json.dumps(
            {
                "nodes": args.nodes,
                "rounds": args.rounds,
                "dim": args.dim,
                "wall_seconds": wall,
                "summary": summary,
                "overhead_ratio_vs_flower": ratio,
                "rows": rows,
                "plan": result.get("plan"),
                "ours_registration": result.get("ours_registration"),
                "errors": result.get("errors"),
            },
            indent=2,
        )
        + "\n"
    )
    path = RESULTS / "summary.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    if ratio is not None:
        data["secagg.overhead_ratio_vs_flower"] = round(ratio, 3)
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(f"wrote {RESULTS / 'secagg.json'}" + (f" and secagg.overhead_ratio_vs_flower in {path}" if ratio else ""))


if __name__ == "__main__":
    main()
