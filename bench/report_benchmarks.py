"""Render the scale-out, registry, secure-aggregation and audit sections of docs/benchmarks.md from bench/results.

Each section lives between `<!-- bench:NAME:begin -->` and `<!-- bench:NAME:end -->` and is replaced as a whole;
everything outside the markers (the core section of bench/report_core.py, the across-firewall results, the
introduction) is left alone. A missing results file renders as "no results yet" with the command to make it.

    .venv/bin/python bench/report_benchmarks.py [--results bench/results] [--doc docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = "flock /tmp/dblocks-heavy.lock .venv/bin/python"


def table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def command(cmd: str) -> str:
    """A recorded `python bench/x.py ...` command as the line to type here (heavy lock, the project's venv)."""
    return f"```bash\n{LOCK} {cmd.removeprefix('python ').strip()}\n```"


SECAGG = {"flower": "Flower's SecAgg+", "dblocks": "dblocks' SecAgg+ (`dblocks.privacy.secagg`)"}


def scale_section(s: dict) -> str:
    rounds = s["rounds"]
    setup = s.get("machine", {})
    env = (
        (
            f"{setup.get('cpu_count', '?')} CPU cores shared with other jobs, torch {setup.get('torch', '?')}, "
            f"{setup.get('date', '?')}"
        )
        if isinstance(setup, dict)
        else str(setup)
    )
    parts = [
        "## Scale-out: many simulated companies (`bench/scale.py`)",
        "",
        "The product's ServerApp and ClientApp, unchanged, under Flower's simulation engine (Ray): every simulated "
        "company is a SuperNode with its own records and privacy ledger; the registry is the real service on a "
        "throwaway PostgreSQL cluster. Round time is the ServerApp's own timer (ping of every node, cohorts, "
        "DP-SGD training, secure aggregation, central release, registry versions, evaluation). Peak memory is the "
        "resident memory of the benchmark and every process it started (Ray's daemons and workers, the registry, "
        "PostgreSQL), summed over processes and sampled every 0.5 s (shared pages count once per process, so this "
        "is an upper bound).",
        "",
        command(s["command"]),
        "",
        table(
            ["setting", "value"],
            [
                ["simulated companies", str(s["companies"])],
                ["blocks B / companies per block cohort", f"{s['blocks']} / {s['cohort']}"],
                ["records per company / DP-SGD steps per round", f"{s['records_per_company']} / {s['dp_sgd_steps']}"],
                ["Ray CPUs / torch threads per actor", f"{s['ray_cpus']} / {s.get('torch_threads_per_actor', '?')}"],
                [
                    "secure aggregation per cohort",
                    f"{SECAGG.get(s.get('secagg_mode'), '?')} (`secagg.mode = "
                    f'"{s.get("secagg_mode", "?")}"`, threshold {s.get("secagg_threshold", "?")})',
                ],
                ["registry database", s["registry_database"]],
                ["machine", env],
            ],
        ),
        "",
        table(
            ["round", "seconds", "blocks released", "companies trained", "test accuracy"],
            [
                [
                    str(r["round"]),
                    f"{r['seconds']:.1f}",
                    str(len(r["blocks"])),
                    str(t),
                    f"{100 * r['test_accuracy']:.1f}%" if "test_accuracy" in r else "-",
                ]
                for r, t in zip(rounds, s["trained_per_round"])
            ],
        ),
        "",
        f"Peak memory **{s['peak_memory_gb']:.2f} GB**; registry: {s['registry_versions']} block versions and "
        f"{s['registry_round_reports']} round reports; whole benchmark {s['total_seconds']:.0f} s (simulation "
        f"{s['simulation_seconds']:.0f} s). Round 1 includes starting Ray's actors; other jobs shared the cores "
        "during the run, so round times vary with their load. This measures cost, not learning: a couple of DP-SGD "
        "steps "
        "per company from a random initialisation leave the model near chance. Summary keys: "
        "`scale.simulated_companies`, `scale.round_seconds` (last round), `scale.peak_memory_gb`.",
    ]
    return "\n".join(parts)


def registry_section(r: dict) -> str:
    rows = [
        [
            b,
            f"{x['rps']:.1f}",
            str(x["errors"]),
            f"{x['p50_ms']:.1f}",
            f"{x['p95_ms']:.1f}",
            f"{x['p99_ms']:.1f}",
            str(x["uvicorn_workers"]),
            str(x["client_threads"]),
        ]
        for b, x in r["results"].items()
    ]
    acc = r.get("acceptance", {})
    return "\n".join(
        [
            "## Registry under load (`bench/registry_load.py`)",
            "",
            "A real uvicorn server on loopback with history, an open-loop mix of dashboard, API and write requests; "
            "details and the per-operation table in [Registry and dashboard](registry.md).",
            "",
            command(r["command"]),
            "",
            table(
                ["database", "requests/s", "errors", "p50 ms", "p95 ms", "p99 ms", "uvicorn workers", "client threads"],
                rows,
            ),
            "",
            f"Acceptance: >= {acc.get('min_rps', '?')} requests/s with {acc.get('max_errors', '?')} errors: "
            f"**{'passed' if r.get('passed') else 'failed'}** ({r['machine']['cpus']} CPUs shared with other jobs).",
        ]
    )


def secagg_section(s: dict, mask: dict | None) -> str:
    rows = [
        [
            p,
            str(x["steady_rounds"]),
            f"{x['median_round_seconds']:.1f}",
            f"{x['median_bytes'] / 1e6:.1f}",
            str(x["exchanges_per_round"]),
            f"{x['max_abs_error']:.1e}",
        ]
        for p, x in s["summary"].items()
    ]
    parts = [
        "## Secure aggregation (`bench/secagg.py`, `bench/secagg_mask.py`)",
        "",
        f"Flower 1.41's SecAgg+ and dblocks' own protocol side by side in one Flower run over real processes "
        f"({s['nodes']} SuperNodes, {s['dim']:,} parameters, no local training: round time = protocol overhead). "
        "The protocol and its security argument: [Secure aggregation](secure-aggregation.md).",
        "",
        command(f"python bench/secagg.py --nodes {s['nodes']} --rounds {s['rounds']} --dim {s['dim']}"),
        "",
        table(
            [
                "protocol",
                "steady rounds",
                "median round s",
                "median MB per round",
                "exchanges per round",
                "max abs error",
            ],
            rows,
        ),
        "",
        f"dblocks / Flower median steady-state round time: **{s['overhead_ratio_vs_flower']:.2f}**.",
    ]
    if mask:
        parts += [
            "",
            "Client-side masking cost, CPU seconds per client for 1M parameters:",
            "",
            command("python bench/secagg_mask.py"),
            "",
            table(
                ["cohort", "k neighbours", "modulus", "encode + all masks", "one AES-CTR mask", "one X25519 + HKDF"],
                [
                    [
                        str(m["cohort"]),
                        str(m["k"]),
                        f"{m['modulus_bits']}-bit {m['word']}",
                        f"{m['cpu_s']:.3f} s",
                        f"{m['one_mask_expand_add_cpu_s'] * 1e3:.2f} ms",
                        f"{m['one_x25519_hkdf_cpu_s'] * 1e3:.2f} ms",
                    ]
                    for m in mask["masking"]
                ],
            ),
            "",
            f"Max abs error of the aggregate mean ({mask['protocol']['clients']} clients, "
            f"{mask['protocol']['rounds']} rounds): {mask['protocol']['max_abs_error_of_mean']:.1e} "
            f"(bound {mask['protocol']['error_bound_of_mean']:.0e}).",
        ]
    return "\n".join(parts)


AUDIT_KEYS = {
    "audits.planted_bug_caught": "all three planted bugs (DP-SGD noise off, clipping off, central noise off) "
    "fail the canary audit with an epsilon lower bound above the claimed epsilon",
    "audits.epsilon_accountant_correct_run": "accountant's record-level epsilon of the correctly configured run",
    "audits.epsilon_lower_bound_correct_run": "canary audit's epsilon lower bound on that run (below the claim)",
    "audits.positive_control_psnr": "closed-form reconstruction PSNR (dB) from one raw single-record update "
    "(positive control: the attack works)",
    "audits.dp_release_psnr_over_baseline": "worst reconstruction PSNR (dB) over the mean-image baseline against "
    "a DP release (K=8, C=1, z=1)",
    "audits.halved_noise_caught": "the record-level canary audit at its default budget (1000 canaries, one run) "
    "fails a DP-SGD run whose noise multiplier is half the claimed one (`bench/audit_canary.py`)",
    "audits.canary_seconds": "wall time (s) of that audit, positive control included, on 2 shared cores",
    "audits.canary_halved_lower_bound": "its epsilon lower bound on the halved-noise run (the claim is 2.0: the "
    "noise check, not the bound, catches it)",
    "audits.canary_halved_measured_noise": "the noise multiplier it measured on that run's untouched coordinates "
    "(the claimed one: config.z in bench/results/audit_canary.json)",
    "audits.seed_aware_bound_secret_seed": "seed-aware canary bound when the run draws from the company's secret "
    "generator (the auditor's best guess replays the wrong samples)",
    "audits.seed_aware_bound_known_seed": "the same audit when the run's generator is the guessed seed (the old "
    "behaviour): above the accountant",
    "audits.seed_aware_accountant_epsilon": "the accountant's epsilon of those runs",
}


def audits_section(summary: dict, audit: dict | None) -> str:
    rows = [
        [f"`{k}`", AUDIT_KEYS[k], json.dumps(round(v, 3) if isinstance(v, float) else v)]
        for k, v in summary.items()
        if k in AUDIT_KEYS
    ]
    tail = f" The full battery took {audit['seconds'] / 60:.0f} min." if audit and "seconds" in audit else ""
    return "\n".join(
        [
            "## Privacy audits (`bench/audit.py`)",
            "",
            "Gradient inversion, canaries and the noise-conformance test against the run's own privacy claims; every "
            "table, the threat model and how to read a verdict: [Privacy audits](privacy-audit.md)." + tail,
            "",
            command("python bench/audit.py"),
            "",
            table(["summary key", "meaning", "value"], rows) if rows else "_no audit results yet._",
        ]
    )


def load(results: Path, name: str) -> dict | None:
    p = results / name
    return json.loads(p.read_text()) if p.exists() else None


def sections(results: Path) -> dict[str, str]:
    """name -> rendered markdown; a missing results file gives a line with the command that makes it."""

    def missing(script: str) -> str:
        return f"_No results yet: `{LOCK} bench/{script}`._"

    summary = load(results, "summary.json") or {}
    makers: dict[str, tuple[str, str, Callable[[], str]]] = {
        "scale": ("scale.json", "scale.py", lambda: scale_section(load(results, "scale.json"))),
        "registry": (
            "registry_load.json",
            "registry_load.py",
            lambda: registry_section(load(results, "registry_load.json")),
        ),
        "secagg": (
            "secagg.json",
            "secagg.py",
            lambda: secagg_section(load(results, "secagg.json"), load(results, "secagg_mask.json")),
        ),
        "audits": ("audit.json", "audit.py", lambda: audits_section(summary, load(results, "audit.json"))),
    }
    return {
        name: (render() if (results / file).exists() else missing(script))
        for name, (file, script, render) in makers.items()
    }


def splice(text: str, name: str, body: str) -> str:
    begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
    block = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        return text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    return text.rstrip("\n") + "\n\n" + block + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args()
    text = args.doc.read_text() if args.doc.exists() else "# Benchmarks\n\n"
    for name, body in sections(args.results).items():
        text = splice(text, name, body)
    args.doc.write_text(text)
    print(f"wrote {', '.join(sections(args.results))} into {args.doc}")


if __name__ == "__main__":
    main()
