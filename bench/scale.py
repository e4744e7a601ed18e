"""Scale-out: many simulated companies under Flower's simulation engine (Ray), registry on PostgreSQL.

The product's own apps run unchanged: the ServerApp `dblocks.server.federation.serverapp:app` (ping every
node, per-block cohorts, secure aggregation per cohort, central release, registry versions) and the ClientApp
`dblocks.client.clientapp:app` (DP-SGD on the company's records, privacy ledger), driven by
`flwr.simulation.run_simulation`. Simulated company i gets node_config {"partition-id": i} and reads
$DBLOCKS_SIMULATION_DIR/company{i}.npz (see clientapp.node_settings).

Data: `--records` training records of the `digits` preset per company, drawn at random from its training split
(companies overlap: 200 disjoint slices of 1,437 digits would be too small for DP-SGD; overlap changes no
cost measured here). The registry is the real service (uvicorn) on a throwaway PostgreSQL cluster.

Secure aggregation: the run config names the protocol explicitly (`--secagg`, default "flower" = Flower's
SecAgg+ with every cohort member holding a share); the mode that ran is stored with the results. Each Ray
actor runs one ClientApp at a time with one torch/OpenMP thread (the simulated companies' node settings say
threads=1, and OMP_NUM_THREADS=1 / MKL_NUM_THREADS=1 are set before Ray starts its workers).

Measured: seconds per federated round (the ServerApp's own timer: ping, cohorts, training, secure
aggregation, release, registration, evaluation) and the peak resident memory of this process and every
process it started (Ray's workers and daemons, the registry, PostgreSQL), sampled every 0.5 s from /proc.

    flock /tmp/dblocks-heavy.lock .venv/bin/python bench/scale.py            # 200 companies, B=4
    .venv/bin/python bench/scale.py --companies 20 --cohort 5 --quick         # smoke run

Writes bench/results/scale.json and the scale.* keys of bench/results/summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
BIN = Path(sys.executable).parent


def tree_rss_bytes(root_pid: int) -> int:
    """Resident memory of `root_pid` and all its descendants (from /proc), bytes."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            parents[int(d)] = int(fields["PPid"].strip())
            rss[int(d)] = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
        except (OSError, KeyError, ValueError):
            continue
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [root_pid]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total


class PeakMemory(threading.Thread):
    def __init__(self, interval: float = 0.5):
        super().__init__(daemon=True)
        self.interval, self.peak, self.stop_event = interval, 0, threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.peak = max(self.peak, tree_rss_bytes(os.getpid()))
            self.stop_event.wait(self.interval)


def make_companies(root: Path, n: int, records: int, seed: int = 0) -> None:
    from dblocks.shared.data import save_npz
    from dblocks.shared.presets import get_preset

    train, _ = get_preset("digits").load_split()
    rng = np.random.default_rng(seed)
    for i in range(n):
        save_npz(
            train.subset(np.sort(rng.choice(len(train), size=records, replace=False)), f"company{i}"),
            root / f"company{i}.npz",
        )


def start_registry(root: Path):
    """PostgreSQL (throwaway cluster) + the registry service; returns (pg, registry process, url, service token)."""
    import subprocess

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "registry"))  # test infrastructure
    from throwaway_pg import ThrowawayPostgres, postgres_bin_dir

    from dblocks.server.ops.procs import spawn, wait_for_port
    from dblocks.shared.procs import free_port

    if postgres_bin_dir() is None:
        raise SystemExit("PostgreSQL is not installed (Debian package postgresql; make sysdeps)")
    pg = ThrowawayPostgres().start()
    url = pg.create_database("dblocks")
    env = dict(os.environ, DBLOCKS_HOME=str(root / "registry-home"), DBLOCKS_DATABASE_URL=url)
    token = (
        subprocess.run(
            [str(BIN / "dbserver"), "tokens", "create", "--role", "service"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    port = free_port()
    proc = spawn([str(BIN / "dbserver"), "registry", "--port", str(port)], env=env, log=root / "registry.log")
    wait_for_port("127.0.0.1", port, 90, proc)
    return pg, proc, f"http://127.0.0.1:{port}", token


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--companies", type=int, default=200)
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--cohort", type=int, default=50, help="companies per block cohort (B x cohort <= companies)")
    ap.add_argument("--rounds", type=int, default=2, help="the first round includes Ray's warm-up; both are reported")
    ap.add_argument("--records", type=int, default=60, help="training records per company")
    ap.add_argument("--steps", type=int, default=2, help="DP-SGD steps per company and round")
    ap.add_argument("--cpus", type=int, default=2, help="Ray CPUs (one ClientApp per CPU at a time)")
    ap.add_argument(
        "--secagg",
        choices=["flower", "dblocks"],
        default="flower",
        help='secure aggregation per cohort: "flower" = Flower\'s SecAgg+, "dblocks" = dblocks.privacy.secagg '
        "(needs cohorts >= 3)",
    )
    ap.add_argument("--quick", action="store_true", help="do not write the summary keys")
    args = ap.parse_args()
    if args.blocks * args.cohort > args.companies:
        raise SystemExit(f"{args.blocks} blocks x cohort {args.cohort} > {args.companies} companies")
    if args.secagg == "dblocks" and args.cohort < 3:
        raise SystemExit(f"--secagg dblocks needs cohorts of at least 3 companies (got --cohort {args.cohort})")
    # one thread per Ray actor: the workers inherit this environment
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import setup, update_summary

    machine = setup(threads=1)

    from flwr.simulation import run_simulation

    from dblocks.client.clientapp import app as client_app
    from dblocks.server.federation.config import RunConfig, SecAggConfig
    from dblocks.server.federation.serverapp import app as server_app
    from dblocks.server.ops.deployment import write_secret
    from dblocks.server.ops.procs import stop_group
    from dblocks.shared.presets import get_preset
    from dblocks.shared.registry_client import RegistryClient

    root = Path(tempfile.mkdtemp(prefix="dblocks-scale-"))
    t0 = time.time()
    make_companies(root, args.companies, args.records)
    memory = PeakMemory()
    memory.start()
    pg, registry_proc, url, token = start_registry(root)
    try:
        reg = RegistryClient(url, token)
        token_file = root / "registry.token"
        write_secret(token_file, token)
        preset = get_preset("digits")
        cfg = RunConfig(
            run_id="pending",
            task="digits",
            num_blocks=args.blocks,
            num_rounds=args.rounds,
            cohort_size=args.cohort,
            min_cohort=2,
            record_steps=args.steps,
            record_sample_rate=0.1,
            record_noise=1.0,
            update_clip=0.5,
            lr=1e-3,
            ping_timeout=600.0,
            secagg=SecAggConfig(mode=args.secagg),
            registry_url=url,
            registry_token_file=str(token_file),
        )
        run = reg.create_run(
            task="digits",
            dataset={"name": "digits", "split": f"{args.records} records per company"},
            num_blocks=args.blocks,
            schedule=preset.noise_schedule(args.blocks).to_dict(),
            secagg=asdict(cfg.secagg),
            dp={"record_noise": cfg.record_noise},
            num_rounds=args.rounds,
            created_by="bench/scale.py",
        )
        cfg = RunConfig(
            **{**cfg.__dict__, "run_id": str(run["id"]), "checkpoint_dir": str(root / "run" / "checkpoints")}
        )
        (root / "run").mkdir()
        cfg.save(root / "run" / "run.json")
        os.environ.update(
            DBLOCKS_RUN_CONFIG=str(root / "run" / "run.json"),
            DBLOCKS_SIMULATION_DIR=str(root),
            DBLOCKS_SIMULATION_BUDGET="1000",
            FLWR_TELEMETRY_ENABLED="0",
        )
        t_sim = time.time()
        run_simulation(
            server_app,
            client_app,
            num_supernodes=args.companies,
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {"num_cpus": args.cpus, "include_dashboard": False, "object_store_memory": 1_000_000_000},
            },
        )
        sim_seconds = time.time() - t_sim
        status = json.loads((root / "run" / "status.json").read_text())
        rounds_reg = reg.list_rounds(run["id"])
        versions = reg.list_block_versions(run["id"])
    finally:
        memory.stop_event.set()
        memory.join()
        stop_group(registry_proc)
        pg.stop()
    if status.get("status") != "finished":
        raise SystemExit(f"the run did not finish: {status}")
    rounds = status["rounds"]
    result = {
        "companies": args.companies,
        "blocks": args.blocks,
        "cohort": args.cohort,
        "records_per_company": args.records,
        "dp_sgd_steps": args.steps,
        "ray_cpus": args.cpus,
        "torch_threads_per_actor": 1,
        "secagg_mode": cfg.secagg.mode,
        "secagg_threshold": cfg.secagg.threshold,
        "rounds": rounds,
        "round_seconds": [r["seconds"] for r in rounds],
        "trained_per_round": [len(r["blocks"]) * args.cohort for r in rounds],
        "registry_round_reports": len(rounds_reg),
        "registry_versions": len(versions),
        "peak_memory_gb": memory.peak / 2**30,
        "simulation_seconds": sim_seconds,
        "total_seconds": time.time() - t0,
        "registry_database": "postgresql (throwaway cluster)",
        "machine": machine,
        "command": " ".join(["python", "bench/scale.py", *sys.argv[1:]]),
    }
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(result, indent=2) + "\n")
    if not args.quick:
        update_summary(
            RESULTS,
            {
                "scale.simulated_companies": args.companies,
                "scale.round_seconds": round(rounds[-1]["seconds"], 1),
                "scale.peak_memory_gb": round(memory.peak / 2**30, 2),
            },
        )


if __name__ == "__main__":
    main()
