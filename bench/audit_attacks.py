"""The attack battery (#21, #22) against updates made by `dbaudit make-update`: label inference and matched-filter
identification across central noise and observation points, and how often `dbaudit` passes a release that leaks.

    flock /tmp/dblocks-heavy.lock nice -n 10 .venv/bin/python bench/audit_attacks.py          # ~20-30 min, 2 cores
    .venv/bin/python bench/audit_attacks.py --quick                                           # smoke run

Setup: the digits model of bench/audit.py (4 blocks, runs/audit-model), block 1, candidate pool = all 1797 digits
(the attacker knows the population, not the member). Files: `dbaudit make-update` (in process) with C = 1, one
local SGD step at lr 0.01, seeds 0..S-1:
  single record (K = 1 client, 1 record): raw, clipped, release at z in {0, 1e-4, 1e-3, 1e-2, 1e-1, 1} (12 seeds)
  8-record sums (8 seeds): the SecAgg aggregate of K = 8 single-record clients (the server's view), a clipped
  batch of 8 records from one client, and the K = 8 release at z = 1e-4 and z = 1 as the server publishes it.
Every file is attacked by the battery (`privacy/attacks/battery.py`), with the positive controls of `dbaudit run
--attack battery` attacked in the same passes over the pool. Per-file verdicts are those `dbaudit run --attack
battery --update FILE --truth FILE.truth.npz` gives (checked by running the CLI on two files); the joint verdict
of a configuration is the battery's verdict over all its files together (the power a single file lacks).

Writes bench/results/audit_attacks.json and the audits.* keys release_false_pass_rate,
identification_top1_z1e-4, label_accuracy_z1e-4, aggregate8_false_pass_rate of bench/results/summary.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import audit as bench_audit  # noqa: E402  (the audited model and its loader)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
FILES = RESULTS / "audits" / "files" / "battery"  # git-ignored: ~0.6 MB per update
ZS = [0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]
DELTA = 1e-5
log = bench_audit.log


def make_update(observe: str, clients: int, records: int, z: float, seed: int):
    """`dbaudit make-update` in process; returns (BlockUpdate, (x, y)) read back from the files it wrote."""
    from typer.testing import CliRunner

    from dblocks.privacy.attacks.updates import load_update
    from dblocks.privacy.cli import app

    out = FILES / f"{observe}-k{clients}-n{records}-z{z:g}-s{seed}.safetensors"
    args = ["make-update", "--block-dir", str(bench_audit.MODEL), "--block-index", "1", "--observe", observe]
    args += ["--clients", str(clients), "--records", str(records), "--noise-multiplier", str(z), "--seed", str(seed)]
    r = CliRunner().invoke(app, [*args, "--out", str(out)], catch_exceptions=False)
    if r.exit_code != 0:
        raise RuntimeError(r.output)
    with np.load(str(out) + ".truth.npz") as t:
        truth = torch.from_numpy(t["x"]).float(), torch.from_numpy(t["y"]).long()
    return out, load_update(out), truth


def accountant_epsilon(z: float) -> float | None:
    """Client-level epsilon of one release at central noise z (RDP, delta 1e-5); None where it is infinite."""
    from dblocks.privacy.mechanisms import client_level_epsilon

    if z <= 0:
        return None
    try:
        eps = client_level_epsilon(z, 1, DELTA, "rdp")
    except Exception:  # the accountant's grid does not reach such tiny noise
        return None
    return eps if math.isfinite(eps) else None


def run_config(target, name: str, observe: str, clients: int, records: int, z: float, seeds: int, cfg) -> dict:
    from dblocks.privacy.attacks.battery import Observed, attack_outcomes, strongest_attack_verdict, tests_from_outcomes
    from dblocks.privacy.attacks.runner import AuditSpec, _pool_and_truth, control_observations

    t0 = time.perf_counter()
    pool, _ = _pool_and_truth(target, AuditSpec(attack="battery", observe="raw"), None, None)
    keys = sorted(n for n, _ in target.block.named_parameters())
    observed, paths = [], []
    for s in range(seeds):
        path, upd, (tx, ty) = make_update(observe, clients, records, z, s)
        _, idx = _pool_and_truth(target, AuditSpec(attack="battery", observe="raw"), tx, ty)
        observed.append(Observed({k: upd.delta[k] for k in keys}, idx, ty))
        paths.append(path)
    n = clients * records
    spec = AuditSpec(attack="battery", observe=observe, clients=clients, records=records, noise_multiplier=z)
    controls = control_observations(target, spec, pool, n)
    both = attack_outcomes(target.block, 1, observed + controls, pool, cfg)
    main, ctrl = both.subset(list(range(seeds))), both.subset(list(range(seeds, seeds + len(controls))))
    joint_tests = tests_from_outcomes(main, ctrl, cfg)
    joint, joint_reasons = strongest_attack_verdict(joint_tests, cfg.alpha)
    per_file = []
    for i in range(seeds):
        tests = tests_from_outcomes(main.subset([i]), ctrl, cfg)
        verdict, _ = strongest_attack_verdict(tests, cfg.alpha)
        hits = {a: h[i] for a, h in main.hits.items()}
        label_hit = any(v > 0 and a.startswith("label") and n == 1 for a, v in hits.items())
        record_hit = any(v > 0 for a, v in hits.items() if a.startswith("identify"))
        per_file.append(
            {
                "file": str(paths[i].relative_to(ROOT)),
                "verdict": str(verdict),
                "hits": hits,
                "label_recovered": label_hit,
                "record_identified": record_hit,
                "false_pass": verdict == "pass" and (label_hit or record_hit),
            }
        )
    entry = {
        "observe": observe,
        "clients": clients,
        "records": records,
        "noise_multiplier": z,
        "accountant_epsilon": accountant_epsilon(z) if observe == "release" else None,
        "seeds": seeds,
        "pool": len(pool.x),
        "rates": {t.attack: t.rate for t in joint_tests},
        "chance": {t.attack: t.chance for t in joint_tests},
        "controls": {t.attack: t.control for t in joint_tests},
        "joint_verdict": str(joint),
        "joint_reasons": joint_reasons,
        "per_file_verdicts": {v: sum(f["verdict"] == v for f in per_file) for v in ("pass", "fail", "inconclusive")},
        "false_passes": sum(f["false_pass"] for f in per_file),
        "files": per_file,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    best = {a: f"{r['value']:.2f}" for a, r in entry["rates"].items()}
    log(f"{name}: joint {joint}, files {entry['per_file_verdicts']}, rates {best} ({entry['seconds']} s)")
    return entry


def cli_check(entry: dict, name: str) -> dict:
    """`dbaudit run --attack battery --update FILE --truth FILE.truth.npz` on the configuration's first file: exit
    code and verdict, beside the verdict this bench computed for that file."""
    path = ROOT / entry["files"][0]["file"]
    from typer.testing import CliRunner

    from dblocks.privacy.cli import app

    out = RESULTS / "audits" / f"battery-cli-{name}"
    args = ["run", "--attack", "battery", "--observe", json.loads(Path(str(path) + ".json").read_text())["observation"]]
    args += ["--block-dir", str(bench_audit.MODEL), "--block-index", "1", "--update", str(path)]
    args += ["--truth", str(path) + ".truth.npz", "--out", str(out)]
    r = CliRunner().invoke(app, args, catch_exceptions=False)
    rec = json.loads((out / "audit.json").read_text())
    cmd = "dbaudit " + " ".join(a.replace(str(ROOT) + "/", "") for a in args)
    log(f"{cmd} -> exit {r.exit_code} ({rec['verdict']})")
    return {
        "command": cmd,
        "exit_code": r.exit_code,
        "verdict": rec["verdict"],
        "bench_verdict": entry["files"][0]["verdict"],
        "reasons": rec["reasons"][:3],
    }


def cli_dp_release(targets: int = 12) -> dict:
    """The correctly configured release of bench/audit.py (K = 8, C = 1, z = 1) through `dbaudit run --attack
    battery`, seen by the K-1 colluding clients (one record's clipped delta under noise z C): must pass."""
    from typer.testing import CliRunner

    from dblocks.privacy.cli import app

    out = RESULTS / "audits" / "battery-dp-release-colluding"
    args = ["run", "--attack", "battery", "--observe", "release", "--adversary", "colluding", "--clients", "8"]
    args += ["--noise-multiplier", "1", "--targets", str(targets), "--block-dir", str(bench_audit.MODEL)]
    args += ["--block-index", "1", "--out", str(out)]
    t0 = time.perf_counter()
    r = CliRunner().invoke(app, args, catch_exceptions=False)
    rec = json.loads((out / "audit.json").read_text())
    cmd = "dbaudit " + " ".join(a.replace(str(ROOT) + "/", "") for a in args)
    log(f"{cmd} -> exit {r.exit_code} ({rec['verdict']})")
    tests = rec["metrics"]["tests"]
    return {
        "command": cmd,
        "exit_code": r.exit_code,
        "verdict": rec["verdict"],
        "rates": {a: t["rate"] for a, t in tests.items()},
        "mde": {a: t["mde"] for a, t in tests.items()},
        "accountant_epsilon": accountant_epsilon(1.0),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    from dblocks.privacy.attacks.battery import BatteryConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 seeds, fewer configurations")
    args = ap.parse_args()
    q = args.quick
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    t_start = time.perf_counter()
    bench_audit.train_model(epochs=10)
    target = bench_audit.target(1)
    cfg = BatteryConfig()
    singles, sums = (3, 3) if q else (12, 8)
    res: dict = {"model": str(bench_audit.MODEL.relative_to(ROOT)), "block": 1, "quick": q, "alpha": cfg.alpha}
    single = {}
    single["raw"] = run_config(target, "single raw", "raw", 1, 1, 0.0, singles, cfg)
    single["clipped"] = run_config(target, "single clipped", "clipped", 1, 1, 0.0, singles, cfg)
    for z in [1e-4, 1e-3] if q else ZS:
        single[f"release z={z:g}"] = run_config(target, f"single release z={z:g}", "release", 1, 1, z, singles, cfg)
    res["single_record"] = single
    agg = {"aggregate K=8": run_config(target, "aggregate K=8", "aggregate", 8, 1, 0.0, sums, cfg)}
    if not q:
        agg["clipped batch of 8"] = run_config(target, "clipped batch of 8", "clipped", 1, 8, 0.0, sums, cfg)
        for z in (1e-4, 1.0):
            agg[f"release K=8 z={z:g}"] = run_config(target, f"release K=8 z={z:g}", "release", 8, 1, z, sums, cfg)
    res["sums_of_8"] = agg
    res["cli"] = {
        "single release z=1e-4": cli_check(single["release z=0.0001"], "single"),
    }
    if not q:
        res["cli"]["aggregate K=8"] = cli_check(agg["aggregate K=8"], "aggregate")

    res["dp_release_colluding"] = cli_dp_release(3 if q else 12)
    leaky = [f for k in ("release z=0.0001", "release z=0.001") for f in single[k]["files"]]
    sums8 = agg["aggregate K=8"]["files"]
    z4 = single["release z=0.0001"]
    label_rates = {a: r["value"] for a, r in z4["rates"].items() if a.startswith("label")}
    keys = {
        "audits.release_false_pass_rate": sum(f["false_pass"] for f in leaky) / len(leaky),
        "audits.identification_top1_z1e-4": z4["rates"]["identify-top1"]["value"],
        "audits.label_accuracy_z1e-4": max(label_rates.values()),
        "audits.aggregate8_false_pass_rate": sum(f["false_pass"] for f in sums8) / len(sums8),
    }
    res["summary"] = keys | {"label_accuracy_z1e-4_attack": max(label_rates, key=label_rates.get)}
    res["seconds"] = round(time.perf_counter() - t_start)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / ("audit_attacks-quick.json" if q else "audit_attacks.json")).write_text(
        json.dumps(res, indent=2, default=str)
    )
    if not q:
        from _common import update_summary

        update_summary(RESULTS, keys)
    log(f"summary: {json.dumps(keys)}  ({res['seconds']} s)")


def tables(path: Path = RESULTS / "audit_attacks.json") -> str:
    """Markdown tables of the sweep (docs/privacy-audit.md, between the battery-results markers)."""
    r = json.loads(path.read_text())

    def pct(e: dict) -> str:
        return f"{e['value']:.2f} [{e['low']:.2f}, {e['high']:.2f}]"

    def files(e: dict) -> str:
        v = e["per_file_verdicts"]
        return f"{v['pass']} / {v['fail']} / {v['inconclusive']}"

    out = [
        f"Block 1, pool of {r['single_record']['raw']['pool']} digits, alpha {r['alpha']} (Bonferroni over the "
        f"attacks); rates with 95% Clopper-Pearson intervals. `bench/audit_attacks.py`, {r['seconds']} s.",
        "",
        "| single record (K = 1) | z | accountant epsilon | best label attack | identify top-1 | identify top-5 "
        "| joint verdict | files pass / fail / inconcl. | false passes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for _name, e in r["single_record"].items():
        labels = {a: v for a, v in e["rates"].items() if a.startswith("label")}
        best = max(labels, key=lambda a: labels[a]["value"])
        eps = e["accountant_epsilon"]
        out.append(
            f"| {e['observe']} | {e['noise_multiplier']:g} | {'inf' if eps is None else f'{eps:.3g}'} "
            f"| {pct(labels[best])} ({best.removeprefix('label-')}) | {pct(e['rates']['identify-top1'])} "
            f"| {pct(e['rates']['identify-top5'])} | {e['joint_verdict']} | {files(e)} | {e['false_passes']} |"
        )
    out += [
        "",
        "| 8-record sums | label counts: head bias | label counts: pool search | records found by pool search "
        "| sums with >= 1 found | joint verdict | files pass / fail / inconcl. | false passes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, e in r["sums_of_8"].items():
        found = sum(f["record_identified"] for f in e["files"])
        out.append(
            f"| {name} | {pct(e['rates']['label-counts-head-bias'])} | {pct(e['rates']['label-counts-pool-search'])} "
            f"| {pct(e['rates']['identify-pool-search'])} (chance {e['chance']['identify-pool-search']:.4f}) "
            f"| {found} / {len(e['files'])} | {e['joint_verdict']} | {files(e)} | {e['false_passes']} |"
        )
    chance = r["sums_of_8"]["aggregate K=8"]["chance"]
    out += [
        "",
        f"Chance: label {r['single_record']['raw']['chance']['label-head-bias']:.3f} (the most frequent digit), "
        f"label counts of 8 {chance['label-counts-head-bias']:.3f} (the best blind guess), identification "
        f"1/N and 5/N. CLI check (`dbaudit run --attack battery --update FILE --truth FILE.truth.npz`): "
        + "; ".join(
            f"{k}: exit {v['exit_code']} ({v['verdict']}; bench: {v['bench_verdict']})" for k, v in r["cli"].items()
        )
        + ".",
    ]
    if "dp_release_colluding" in r:
        d = r["dp_release_colluding"]
        out += [
            "",
            f"The correctly configured release (K = 8, C = 1, z = 1, accountant epsilon {d['accountant_epsilon']:.2f}) "
            f"seen by the 7 colluding clients, `{d['command']}`: exit {d['exit_code']} ({d['verdict']}); rates "
            + ", ".join(f"{a} {v['value']:.2f}" for a, v in d["rates"].items())
            + f" ({d['seconds']} s).",
        ]
    return "\n".join(out)


if __name__ == "__main__":
    if sys.argv[1:] == ["--tables"]:
        print(tables())
        sys.exit(0)
    sys.exit(main())
