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


def scale_section(s: dict, flower_sim: dict | None = None) -> str:
    """Scale-out on dblocks' SecAgg+ (bench/scale.py, in-process engine), its scaling sweep, and the earlier
    Flower-simulation run (bench/results/scale_flower_simulation.json) when present."""
    if s.get("engine") != "inprocess":  # a results file of the earlier engine
        return flower_simulation_section(s, "## Scale-out: many simulated companies (`bench/scale.py`)")
    setup = s.get("machine", {})
    env = f"{setup.get('cpu_count', '?')} CPU cores shared with other jobs, {setup.get('date', '?')}"
    parts = ["## Scale-out on dblocks' SecAgg+ (`bench/scale.py`)", ""]
    if "rounds" in s:
        st, rounds = s["setting"], s["rounds"]
        steady = s.get("steady_round_seconds", rounds[-1]["seconds"])
        parts += [
            "Every simulated company is the product's `SecAggClient` (own identity key, prekeys, masking keys, Shamir "
            "shares) and the server the product's `SecAggServer`, driven by `plan_round` / `run_round` over "
            "`LocalNetwork` with the real protocol messages, in one process (why not Flower's simulation engine: "
            "see the earlier run below, 269-338 s per round for 200 companies with Ray). Cohorts come from the "
            "product's scheduler; each company contributes a synthetic delta of the block's real length, clipped "
            "by the product's `clip_vector` (training is not measured here). Every round and block, the unmasked "
            "mean is checked against the plain float64 mean of the same clipped deltas: max |error| must stay "
            "within the plan's quantisation bound. Round seconds are all the companies' work (run one after the "
            "other in one process: a real federation runs them in parallel) plus the server's; peak memory is "
            "the process's maximum resident set (`ru_maxrss`).",
            "",
            command(s.get("federation_command", s["command"])),
            "",
            table(
                ["setting", "value"],
                [
                    ["simulated companies", str(st["companies"])],
                    ["blocks B / companies per block cohort", f"{st['blocks']} / {st['cohort']}"],
                    ["graph degree k / Shamir threshold t", f"{s['degree']} / {s['threshold']}"],
                    ["delta length per block (digits preset) / clip C", f"{s['dim']} / {st['update_clip']}"],
                    ["secure aggregation", SECAGG["dblocks"]],
                    ["machine", env],
                ],
            ),
            "",
            table(
                [
                    "round",
                    "seconds (wall)",
                    "CPU seconds",
                    "companies: join / upload / unmask (s)",
                    "server (s)",
                    "aggregated",
                    "max error / bound",
                    "peak memory (GB)",
                ],
                [
                    [
                        str(r["round"]),
                        f"{r['seconds']:.1f}",
                        f"{r['cpu_seconds']:.1f}" if "cpu_seconds" in r else "-",
                        " / ".join(f"{r['companies_seconds'].get(k, 0.0):.1f}" for k in ("join", "upload", "unmask")),
                        f"{r['server_seconds']:.1f}",
                        str(r["aggregated"]),
                        f"{r['max_error_over_bound']:.3f}",
                        f"{r['peak_memory_gb']:.2f}",
                    ]
                    for r in rounds
                ],
            ),
            "",
            f"Peak memory **{s['peak_memory_gb']:.2f} GB**; steady-state round **{steady:.1f} s** for all "
            f"{st['companies']} companies and the server together, {1000 * steady / st['companies']:.0f} ms per "
            "company on average (in a federation each company does its own share in parallel). "
            "Round 1 also registers every company and announces its keys (`join`); later rounds are two exchanges "
            "(`upload`, which also announces the next round's keys, and `unmask`); the last round has no next round "
            "to announce, so it is the cheapest and not the steady state. Summary keys: "
            "`scale.simulated_companies`, `scale.secagg`, `scale.cohort_size`, `scale.round_seconds` (steady state: "
            "median of rounds 2 .. R-1), `scale.peak_memory_gb`.",
            "",
        ]
    if "sweep" in s:
        sw = s["sweep"]
        ex = sw.get("exponents", {})
        parts += [
            "### How the cost grows with the cohort",
            "",
            "One block's instance per cohort size n (two rounds; the second is the steady state), same delta "
            f"length ({sw['dim']}). Seconds are CPU seconds per cohort (all its members' work plus the server's; CPU "
            "time, because the cores were shared with other jobs and wall time follows their load); the exponent "
            "e is the log-log slope of cost ~ n^e over the sizes measured. Linear in n means a constant cost per "
            "company.",
            "",
            command(s.get("sweep_command", s["command"])),
            "",
            table(
                [
                    "cohort n",
                    "k / t",
                    "announce (s)",
                    "upload (s)",
                    "unmask (s)",
                    "server (s)",
                    "steady round (s)",
                    "per company (ms)",
                    "graph (s)",
                ],
                [
                    [
                        str(r["cohort"]),
                        f"{r['degree']} / {r['threshold']}",
                        f"{r['announce_seconds']:.2f}",
                        f"{r['upload_seconds']:.2f}",
                        f"{r['unmask_seconds']:.2f}",
                        f"{r['server_seconds']:.2f}",
                        f"{r['steady_round_seconds']:.2f}",
                        f"{1000 * r['steady_seconds_per_company']:.1f}",
                        f"{r['graph_seconds']:.3f}",
                    ]
                    for r in sw["rows"]
                ]
                + (
                    [
                        [
                            "exponent e",
                            f"n k: {ex['n_times_degree']:.2f}",
                            f"{ex['announce_seconds']:.2f}",
                            f"{ex['upload_seconds']:.2f}",
                            f"{ex['unmask_seconds']:.2f}",
                            f"{ex['server_seconds']:.2f}",
                            f"{ex['steady_round_seconds']:.2f}",
                            "",
                            f"{ex['graph_seconds']:.2f}",
                        ]
                    ]
                    if ex
                    else []
                ),
            ),
            "",
            "What grows faster than linear: the graph degree k. Every company masks with, shares to, verifies "
            "and agrees keys with its k neighbours, so a cohort costs O(n k) key agreements, signature checks, "
            "sealed shares and mask expansions, and k grows with n because the parameters keep the failure "
            "probabilities below 2^-40 / 2^-20 by union bounds over the n members (`graph.choose_params`); "
            "Shamir sharing is O(k t) per company. That is the protocol, not the implementation: every part's "
            "exponent stays at or below the n k column. What was faster than that and is fixed: every member built "
            "the whole graph (O(n k) each, O(n^2 k) per cohort) and searched lists (the announced and survivor "
            "sets, the cohort for Shamir points) where a set or dict does; the server scanned every helper's "
            "reveal once per rebuilt secret (O(n^2 k)) and kept every finished instance's masked inputs. Now a "
            "member computes only its own neighbours; what remains O(n) per member is reading the plan (cohort "
            "list, ring order): the graph column.",
            "",
        ]
    if flower_sim:
        parts.append(flower_simulation_section(flower_sim, "### Earlier: Flower's simulation engine (Ray)"))
    return "\n".join(parts).rstrip("\n")


def flower_simulation_section(s: dict, heading: str) -> str:
    """The earlier scale-out run: the product's apps under Flower's simulation engine (Ray)."""
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
        heading,
        "",
        "The product's ServerApp and ClientApp, unchanged, under Flower's simulation engine (Ray): every simulated "
        "company is a SuperNode with its own records and privacy ledger; the registry is the real service on a "
        "throwaway PostgreSQL cluster. Round time is the ServerApp's own timer (ping of every node, cohorts, "
        "DP-SGD training, secure aggregation, central release, registry versions, evaluation). Peak memory is the "
        "resident memory of the benchmark and every process it started (Ray's daemons and workers, the registry, "
        "PostgreSQL), summed over processes and sampled every 0.5 s (shared pages count once per process, so this "
        "is an upper bound).",
        "",
        # recorded before `--engine` existed (the Ray engine was the only one): the command that reruns it today
        command(
            s["command"]
            if "--engine" in s["command"]
            else s["command"].replace("bench/scale.py", "bench/scale.py --engine flower-simulation", 1)
            + f" --companies {s['companies']} --cohort {s['cohort']} --secagg {s.get('secagg_mode', 'flower')}"
        ),
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
        "none (the scale.* keys are the in-process run's).",
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


def secagg_engine_table(s: dict) -> str:
    names = {"flower": "Flower SecAgg+ (legacy workflow + secaggplus_mod)", "dblocks": "dblocks SecAgg+"}
    return table(
        [
            "protocol",
            "steady rounds",
            "median round s",
            "exchanges per round",
            "median s per exchange",
            "median MB per round",
            "max abs error",
        ],
        [
            [
                names.get(p, p),
                str(x["steady_rounds"]),
                f"{x['median_round_seconds']:.2f}",
                str(x["exchanges_per_round"]),
                f"{x['median_seconds_per_exchange']:.2f}",
                f"{x['median_bytes'] / 1e6:.1f}",
                f"{x['max_abs_error']:.1e}",
            ]
            for p, x in s["summary"].items()
        ],
    )


def secagg_section(s: dict, mask: dict | None, sim: dict | None = None, extra: list[dict] | None = None) -> str:
    fl, ours = s["summary"]["flower"], s["summary"]["dblocks"]
    poll = s.get("poll_seconds")
    parts = [
        "## Secure aggregation (`bench/secagg.py`, `bench/secagg_mask.py`)",
        "",
        f"Flower 1.41's SecAgg+ and dblocks' own protocol side by side in one Flower run ({s['nodes']} nodes, "
        f"{s['dim']:,} parameters, no local training: round time = protocol overhead). The protocol and its "
        "security argument: [Secure aggregation](secure-aggregation.md).",
        "",
        "Fair by construction: the same nodes, vector length, clipped updates and machine for both; both poll for "
        f"replies with the same loop and interval ({poll} s; Flower's own `Grid.send_and_receive` would poll every "
        "3 s); the protocols take turns going first within a round; the first and the last round are left out of "
        "the steady state of both (ours registers and announces keys in the first and has no next round to announce "
        "keys for in the last); every aggregate is checked against the plain float64 mean of the survivors' updates "
        "(max abs error below). Steady state: median over rounds 2 .. R-1 with all nodes aggregated.",
        "",
        "### Real processes (`--engine processes`)",
        "",
        "A SuperLink and the SuperNodes on loopback, one `flwr run`; every message starts a fresh ClientApp process "
        "(Flower 1.41's SuperExec) and an idle SuperNode polls the SuperLink every 3 s.",
        "",
        command(f"python bench/secagg.py --nodes {s['nodes']} --rounds {s['rounds']} --dim {s['dim']}"),
        "",
        secagg_engine_table(s),
        "",
        f"dblocks / Flower median steady-state round time: **{s['overhead_ratio_vs_flower']:.2f}** "
        f"({ours['median_round_seconds']:.1f} s vs {fl['median_round_seconds']:.1f} s; "
        "`secagg.overhead_ratio_vs_flower`). An exchange costs about the same in both "
        f"({ours['median_seconds_per_exchange']:.1f} s vs {fl['median_seconds_per_exchange']:.1f} s median): it is "
        "Flower's messaging (the SuperNode's 3 s poll, the SuperExec's 1 s poll, a fresh ClientApp process per "
        "message, six of them sharing 2 cores), not the protocols' arithmetic, which takes tens of milliseconds per "
        "node (table below, and the profile in [Secure aggregation](secure-aggregation.md#measurements)). So the "
        f"ratio is close to the ratio of exchanges, {ours['exchanges_per_round']} / {fl['exchanges_per_round']}: "
        "ours needs two per steady round (upload, which also announces the next round's keys, and unmask), Flower's "
        "four (setup, share keys, collect masked vectors, unmask).",
    ]
    if sim:
        sfl, sours = sim["summary"]["flower"], sim["summary"]["dblocks"]
        parts += [
            "",
            "### Resident ClientApps: Flower's simulation engine (`--engine simulation`)",
            "",
            "The same ServerApp and ClientApp on Flower's simulation engine (Ray, "
            f"{sim.get('cpus', '?')} CPUs, one ClientApp actor per CPU): no process start per message and no "
            "SuperNode polling, so a round is the protocols' compute, their messages' serialisation and the engine's "
            "dispatch (it looks for new messages every 0.1 s).",
            "",
            command(
                f"python bench/secagg.py --engine simulation --nodes {sim['nodes']} --rounds {sim['rounds']} "
                f"--dim {sim['dim']}"
            ),
            "",
            secagg_engine_table(sim),
            "",
            f"dblocks / Flower median steady-state round time: **{sim['overhead_ratio_vs_flower']:.2f}** "
            f"({sours['median_round_seconds']:.2f} s vs {sfl['median_round_seconds']:.2f} s; "
            "`secagg.overhead_ratio_vs_flower_simulation`).",
        ]
    if extra:
        parts += [
            "",
            "Larger cohorts on the simulation engine (Flower's SecAgg+ as the federation configures it shares with "
            "every other member, so its key sharing and masking grow as n^2; ours with the k neighbours of its "
            "graph):",
            "",
            table(
                ["nodes", "parameters", "steady rounds", "Flower round s", "ours round s", "ratio", "command"],
                [
                    [
                        str(e["nodes"]),
                        f"{e['dim']:,}",
                        str(e["summary"]["dblocks"]["steady_rounds"]),
                        f"{e['summary']['flower']['median_round_seconds']:.2f}",
                        f"{e['summary']['dblocks']['median_round_seconds']:.2f}",
                        f"**{e['overhead_ratio_vs_flower']:.2f}**",
                        f"`bench/secagg.py --engine simulation --nodes {e['nodes']} --rounds {e['rounds']} "
                        f"--dim {e['dim']} --label {e.get('label', '?')}`",
                    ]
                    for e in extra
                ],
            ),
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
    "audits.release_false_pass_rate": "single-record releases at z = 1e-4 and 1e-3 (24 `dbaudit make-update` "
    "files) that the attack battery passes although its label or identification attacks recovered the label or "
    "the record (`bench/audit_attacks.py`; a single file is fail or inconclusive, never pass without power)",
    "audits.identification_top1_z1e-4": "matched-filter identification, top-1 among the 1797 digits, of the one "
    "record behind a release at central noise z = 1e-4 (12 files; chance 1/1797)",
    "audits.label_accuracy_z1e-4": "best label attack of the battery on those files (chance 0.10)",
    "audits.aggregate8_false_pass_rate": "SecAgg sums of 8 clients (the server's view, 8 files) passed although "
    "the pool search identified at least one record in them",
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
        "scale": (
            "scale.json",
            "scale.py",
            lambda: scale_section(load(results, "scale.json"), load(results, "scale_flower_simulation.json")),
        ),
        "registry": (
            "registry_load.json",
            "registry_load.py",
            lambda: registry_section(load(results, "registry_load.json")),
        ),
        "secagg": (
            "secagg.json",
            "secagg.py",
            lambda: secagg_section(
                load(results, "secagg.json"),
                load(results, "secagg_mask.json"),
                load(results, "secagg_simulation.json"),
                [
                    {**json.loads(p.read_text()), "label": p.stem.removeprefix("secagg_simulation_")}
                    for p in sorted(results.glob("secagg_simulation_*.json"))
                ],
            ),
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
