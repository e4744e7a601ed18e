"""Scale-out on dblocks' own secure aggregation: 1000 simulated companies, B = 4, cohorts of 250 per block.

Engine (default `--engine inprocess`): every company is the product's `SecAggClient` (its own Ed25519 identity,
prekeys, masking keys, Shamir shares) and the server is the product's `SecAggServer`, driven by the product's
`plan_round` / `run_round` over `LocalNetwork`, i.e. with the real protocol messages (register, join, upload,
unmask; sealed shares, signed announcements, masked inputs of the block's real length), in one process, as
bench/federated.py does. Cohorts come from the product's scheduler (`scheduler.assign`, one disjoint cohort per
block); the plan of round r+1 is fixed before round r runs, so rounds >= 2 are two exchanges (upload, unmask).
Identities are pinned out of band (what the registry's signed directory gives the product), no trust on first use.
Why not Flower's simulation engine: the earlier run of this bench with Ray took 269-338 s per round for 200
companies with Flower's SecAgg+ on 2 shared cores (Ray starts a ClientApp, torch and Opacus per message); 1000
companies x 3 rounds would take hours and measure Ray, not the protocol. That engine is still here
(`--engine flower-simulation`, writes bench/results/scale_flower_simulation.json and no summary keys).

Training is not what this measures: company i's contribution in round r is a synthetic delta of the block's real
dimension (the digits preset's block, B = 4), Gaussian with an L2 norm drawn in [0.3, 1.5] x C and clipped to
C = --update-clip by the product's `clip_vector`. Check per round and block: max_j |mean_update_j - plain_j| <=
error_bound / count, where plain = (sum of the survivors' clipped deltas) / count in float64 and error_bound is the
plan's worst-case quantisation error of the sum per coordinate; a violation stops the bench (exit 2).

Measured: seconds per round (all four blocks' instances, client and server work, sequential in one process: the
sum of what the companies would do in parallel plus the server's share), split into the companies' handling of
each stage and the server's; peak resident memory of the process (ru_maxrss). `--sweep 25,50,100,250` runs one
block's instance at each cohort size (2 rounds; the second is the steady state) and fits log-log exponents of
the per-cohort cost of each part against n, to show what grows faster than linear in the cohort.

    flock /tmp/dblocks-heavy.lock nice -n 10 .venv/bin/python bench/scale.py        # 1000 companies, 3 rounds
    nice -n 10 .venv/bin/python bench/scale.py --sweep 25,50,100,250 --rounds 0      # scaling table only
    .venv/bin/python bench/scale.py --companies 40 --cohort 10 --quick               # smoke run

Writes bench/results/scale.json and the summary keys scale.simulated_companies, scale.secagg ("dblocks"),
scale.cohort_size, scale.round_seconds (steady state: the median of rounds 2 .. R-1, which also announce the next
round's keys; the last round if R = 2), scale.peak_memory_gb.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class ScaleSetting:
    """One in-process federation: `companies` companies, `blocks` blocks, one cohort of `cohort` per block per
    round, `rounds` rounds; deltas of length `dim` (0: the digits preset's block length) clipped to L2 <=
    `update_clip`."""

    companies: int = 1000
    blocks: int = 4
    cohort: int = 250
    rounds: int = 3
    dim: int = 0
    update_clip: float = 0.5
    seed: int = 0


def fail(message: str) -> NoReturn:
    """One line on stderr and exit status 2 (a bad argument, or a check of the measurement that did not hold)."""
    print(f"bench/scale.py: {message}", file=sys.stderr)
    raise SystemExit(2)


def block_dim(blocks: int) -> int:
    """Parameters of one block of the digits preset split into `blocks` blocks (all blocks are the same size)."""
    from dblocks.server.federation.model_state import GlobalModel
    from dblocks.shared.presets import get_preset

    preset = get_preset("digits")
    model = GlobalModel.initial(preset, preset.noise_schedule(blocks), 0, None)
    dims = {sum(int(np.prod(sh)) for sh in model.param_shapes(b)) for b in range(blocks)}
    if len(dims) != 1:
        fail(f"the digits preset's blocks differ in size for B={blocks}: {sorted(dims)}")
    return dims.pop()


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (ru_maxrss is in KiB on Linux), GiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class TimedExchange:
    """LocalNetwork behind a stopwatch: wall and CPU seconds the companies spend answering each stage (they run
    in this process, one after the other), requests/replies counted and sized by the LocalNetwork."""

    def __init__(self, net) -> None:
        self.net = net
        self.seconds: dict[str, float] = defaultdict(float)
        self.cpu_seconds: dict[str, float] = defaultdict(float)

    def __call__(self, stage: str, requests: dict) -> dict:
        t, c = time.perf_counter(), time.process_time()
        try:
            return self.net(stage, requests)
        finally:
            self.seconds[stage] += time.perf_counter() - t
            self.cpu_seconds[stage] += time.process_time() - c


def run_federation(s: ScaleSetting, log=print) -> dict:
    """`s.rounds` rounds of the product's SecAgg+ client/server code for `s.companies` companies; every round's
    aggregate is checked against the plain mean of the clipped deltas. Returns the per-round rows."""
    from dblocks.privacy.mechanisms import clip_vector
    from dblocks.privacy.secagg import (
        Contribution,
        Identity,
        Layout,
        LocalNetwork,
        SecAggClient,
        SecAggServer,
        TrustStore,
        choose_params,
        plan_round,
        run_round,
    )
    from dblocks.server.federation.scheduler import NodeInfo, assign

    dim = s.dim or block_dim(s.blocks)
    ids = [f"company{i:04d}" for i in range(s.companies)]
    t_setup = time.perf_counter()
    identities = {cid: Identity(cid) for cid in ids}
    pinned = {cid: ident.public for cid, ident in identities.items()}
    plain: dict[tuple[int, str], tuple[np.ndarray, list[str]]] = {}  # (round, block) -> (sum of deltas, who)

    def contribute(index: int):
        def at_upload(plan) -> Contribution:
            rng = np.random.default_rng([s.seed, plan.round, index])
            delta = rng.standard_normal(dim)
            delta *= s.update_clip * rng.uniform(0.3, 1.5) / np.linalg.norm(delta)
            delta = clip_vector(delta, s.update_clip)
            acc, who = plain.setdefault((plan.round, plan.block), (np.zeros(dim), []))
            acc += delta
            who.append(ids[index])
            return Contribution(delta)

        return at_upload

    net = LocalNetwork(
        {cid: SecAggClient(cid, identities[cid], trust=TrustStore(dict(pinned), tofu=False)) for cid in ids},
        {cid: contribute(i) for i, cid in enumerate(ids)},
    )
    exchange = TimedExchange(net)
    server = SecAggServer(trust=TrustStore(dict(pinned), tofu=False))
    layouts = {str(b): Layout(dim=dim, clip_norm=s.update_clip) for b in range(s.blocks)}
    setup_seconds = time.perf_counter() - t_setup

    def cohorts_of(r: int) -> dict[str, list[str]]:
        plan = assign([NodeInfo(i) for i in range(s.companies)], s.blocks, r, s.cohort, 3, seed=s.seed)
        if plan.skipped:
            fail(f"round {r}: blocks skipped by the scheduler: {plan.skipped}")
        return {str(b): [ids[c] for c in cohort] for b, cohort in plan.cohorts.items()}

    params = choose_params(s.cohort, server.policy)
    log(
        f"setting: {s.companies} companies, B={s.blocks}, cohorts of {s.cohort} (graph degree k={params.k}, "
        f"threshold t={params.t}), {s.rounds} rounds, delta length {dim}, clip {s.update_clip}; "
        f"identities made in {setup_seconds:.1f} s"
    )
    rows = []
    t0, c0 = time.perf_counter(), time.process_time()
    plan_round(server, 1, cohorts_of(1), layouts, exchange)
    first_plan_seconds, first_plan_cpu = time.perf_counter() - t0, time.process_time() - c0
    for r in range(1, s.rounds + 1):
        exchange.seconds.clear()
        exchange.cpu_seconds.clear()
        t, c = time.perf_counter(), time.process_time()
        if r < s.rounds:
            plan_round(server, r + 1, cohorts_of(r + 1), layouts, exchange)
        result = run_round(server, r, exchange)
        seconds = time.perf_counter() - t + (first_plan_seconds if r == 1 else 0.0)
        cpu_seconds = time.process_time() - c + (first_plan_cpu if r == 1 else 0.0)
        if result.failures:
            fail(f"round {r}: secure aggregation failed: {result.failures}")
        checks = {}
        for block, agg in sorted(result.aggregates.items()):
            acc, who = plain.pop((r, block))
            if sorted(who) != list(agg.survivors):
                fail(f"round {r} block {block}: aggregated {agg.count} survivors, {len(who)} contributed")
            err = float(np.max(np.abs(agg.mean_update - acc / len(who))))
            bound = agg.error_bound / agg.count
            if not err <= bound:
                fail(f"round {r} block {block}: |aggregate - plain mean| = {err:.3g} > bound {bound:.3g}")
            checks[block] = {"count": agg.count, "max_abs_error": err, "error_bound": bound}
        client, client_cpu = dict(exchange.seconds), dict(exchange.cpu_seconds)
        row = {
            "round": r,
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "companies_seconds": client,
            "companies_cpu_seconds": client_cpu,
            "server_seconds": seconds - sum(client.values()),
            "server_cpu_seconds": cpu_seconds - sum(client_cpu.values()),
            "aggregated": sum(c["count"] for c in checks.values()),
            "blocks": checks,
            "max_error_over_bound": max(c["max_abs_error"] / c["error_bound"] for c in checks.values()),
            "peak_memory_gb": peak_rss_gb(),
        }
        rows.append(row)
        log(
            f"round {r}: {seconds:.1f} s (companies {', '.join(f'{k} {v:.1f}' for k, v in client.items())} s, "
            f"server {row['server_seconds']:.1f} s); {row['aggregated']} aggregated; max |error| / bound "
            f"{row['max_error_over_bound']:.3f}; peak memory {row['peak_memory_gb']:.2f} GB"
        )
    return {"dim": dim, "degree": params.k, "threshold": params.t, "setup_seconds": setup_seconds, "rounds": rows}


def graph_seconds(n: int, rounds: int = 1) -> float:
    """CPU seconds every member of a cohort of n spends on the plan's graph: parse the plan it receives and find
    its own neighbours (ring order + Harary neighbours), summed over the n members."""
    from dblocks.privacy.secagg import Layout, SecAggServer, TrustStore
    from dblocks.privacy.secagg.keys import Identity
    from dblocks.privacy.secagg.plan import Plan

    ids = [f"company{i:04d}" for i in range(n)]
    server = SecAggServer(trust=TrustStore(tofu=True))
    for cid in ids:
        server.trust.accept_cert(Identity(cid).cert(1, bytes(range(32))))
    blob = server.add_plan(1, "0", ids, Layout(dim=10, clip_norm=1.0)).to_bytes()
    t = time.process_time()
    for cid in ids:
        Plan.from_bytes(blob).neighbours(cid)
    return time.process_time() - t


def sweep(sizes: list[int], dim: int, log=print) -> dict:
    """One block's instance at each cohort size (2 rounds); per-part CPU seconds of the steady round (CPU, not
    wall: the cores are shared, and CPU time is what the protocol costs) and fitted exponents (cost ~ n^e) of each
    part against the cohort size."""
    run_federation(ScaleSetting(companies=5, blocks=1, cohort=5, rounds=2, dim=16), log=lambda m: None)  # warm-up
    graph_seconds(5)
    rows = []
    for n in sizes:
        res = run_federation(ScaleSetting(companies=n, blocks=1, cohort=n, rounds=2, dim=dim), log=lambda m: None)
        first, steady = res["rounds"]
        row = {
            "cohort": n,
            "degree": res["degree"],
            "threshold": res["threshold"],
            "announce_seconds": first["companies_cpu_seconds"].get("join", 0.0),
            "first_round_seconds": first["cpu_seconds"],
            "upload_seconds": steady["companies_cpu_seconds"].get("upload", 0.0),
            "unmask_seconds": steady["companies_cpu_seconds"].get("unmask", 0.0),
            "server_seconds": steady["server_cpu_seconds"],
            "steady_round_seconds": steady["cpu_seconds"],
            "steady_round_wall_seconds": steady["seconds"],
            "graph_seconds": graph_seconds(n),
        }
        row["steady_seconds_per_company"] = row["steady_round_seconds"] / n
        rows.append(row)
        log(
            f"cohort {n:4d} (k={row['degree']}, t={row['threshold']}): first round {row['first_round_seconds']:.2f} s "
            f"(announce {row['announce_seconds']:.2f}), steady round {row['steady_round_seconds']:.2f} s = upload "
            f"{row['upload_seconds']:.2f} + unmask {row['unmask_seconds']:.2f} + server {row['server_seconds']:.2f}; "
            f"graph {row['graph_seconds']:.3f} s; {1000 * row['steady_seconds_per_company']:.1f} ms per company"
        )
    exponents = {}
    if len(rows) >= 2:
        x = np.log([r["cohort"] for r in rows])
        for part in (
            "announce_seconds",
            "upload_seconds",
            "unmask_seconds",
            "server_seconds",
            "steady_round_seconds",
            "graph_seconds",
        ):
            y = np.log([max(r[part], 1e-6) for r in rows])
            exponents[part] = float(np.polyfit(x, y, 1)[0])
        exponents["n_times_degree"] = float(np.polyfit(x, np.log([r["cohort"] * r["degree"] for r in rows]), 1)[0])
        log("exponents (cost ~ n^e): " + ", ".join(f"{k} {v:.2f}" for k, v in exponents.items()))
    return {"dim": dim, "rows": rows, "exponents": exponents}


def main() -> None:
    if "--engine" in sys.argv and sys.argv[sys.argv.index("--engine") + 1 :][:1] == ["flower-simulation"]:
        i = sys.argv.index("--engine")
        flower_simulation_main(sys.argv[1:i] + sys.argv[i + 2 :])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=["inprocess", "flower-simulation"], default="inprocess")
    ap.add_argument("--companies", type=int, default=1000)
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--cohort", type=int, default=250, help="companies per block cohort (B x cohort <= companies)")
    ap.add_argument("--rounds", type=int, default=3, help="0: only the --sweep")
    ap.add_argument("--update-clip", type=float, default=0.5)
    ap.add_argument("--dim", type=int, default=0, help="delta length (0: the digits preset's block length)")
    ap.add_argument("--sweep", default="", help="comma-separated cohort sizes for the scaling table, e.g. 25,50,100")
    ap.add_argument("--quick", action="store_true", help="do not write results or summary keys")
    args = ap.parse_args()
    if args.blocks * args.cohort > args.companies:
        fail(f"{args.blocks} blocks x cohort {args.cohort} > {args.companies} companies")
    if args.cohort < 3:
        fail(f"secure aggregation needs cohorts of at least 3 companies (got --cohort {args.cohort})")
    try:
        sizes = [int(x) for x in args.sweep.split(",") if x.strip()]
    except ValueError:
        fail(f"--sweep takes comma-separated cohort sizes, got {args.sweep!r}")
    if any(n < 3 for n in sizes):
        fail(f"--sweep cohort sizes must be >= 3, got {sizes}")
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import setup, update_summary, write_json

    machine = setup(threads=1)
    setting = ScaleSetting(args.companies, args.blocks, args.cohort, args.rounds, args.dim, args.update_clip)
    dim = args.dim or block_dim(args.blocks)
    out_path = RESULTS / "scale.json"
    previous = json.loads(out_path.read_text()) if out_path.exists() else {}
    result: dict = {k: v for k, v in previous.items() if previous.get("engine") == "inprocess"}
    result.update(
        engine="inprocess",
        secagg="dblocks",
        machine=machine,
        command=" ".join(["python", "bench/scale.py", *sys.argv[1:]]),
    )
    t0 = time.time()
    if sizes:
        result["sweep"] = sweep(sizes, dim)
        result["sweep_command"] = result["command"]
    if args.rounds > 0:
        fed = run_federation(setting)
        result.update(setting=asdict(setting), **fed)
        result["federation_command"] = result["command"]
    if args.rounds > 0:
        result["peak_memory_gb"] = peak_rss_gb()
        result["total_seconds"] = time.time() - t0
    elif sizes:
        result["sweep"]["peak_memory_gb"] = peak_rss_gb()
    if args.quick:
        return
    write_json(out_path, result)
    print(f"wrote {out_path}")
    if args.rounds > 0:
        rounds = result["rounds"]
        # steady state: rounds after the first that also announce the next round's keys (the last round of a run
        # has no next round, so it is cheaper than any round of a longer run); the last round if there is none
        steady = [r["seconds"] for r in rounds[1:-1]] or [rounds[-1]["seconds"]]
        result["steady_round_seconds"] = float(np.median(steady))
        write_json(out_path, result)
        update_summary(
            RESULTS,
            {
                "scale.simulated_companies": args.companies,
                "scale.secagg": "dblocks",
                "scale.cohort_size": args.cohort,
                "scale.round_seconds": round(result["steady_round_seconds"], 1),
                "scale.peak_memory_gb": round(result["peak_memory_gb"], 2),
            },
        )


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
        fail("PostgreSQL is not installed (Debian package postgresql; make sysdeps)")
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


def flower_simulation_main(argv: list[str]) -> None:
    """The earlier engine: the product's ServerApp/ClientApp under Flower's simulation engine (Ray)."""
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
    args = ap.parse_args(argv)
    if args.blocks * args.cohort > args.companies:
        raise SystemExit(f"{args.blocks} blocks x cohort {args.cohort} > {args.companies} companies")
    if args.secagg == "dblocks" and args.cohort < 3:
        raise SystemExit(f"--secagg dblocks needs cohorts of at least 3 companies (got --cohort {args.cohort})")
    # one thread per Ray actor: the workers inherit this environment
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import setup

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
    (RESULTS / "scale_flower_simulation.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS / 'scale_flower_simulation.json'} (no summary keys: scale.* are the in-process engine's)")


if __name__ == "__main__":
    main()
