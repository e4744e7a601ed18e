"""Markdown tables of bench/results/federated.json (for docs/benchmarks.md): accuracy rows, bytes, memory,
round time by stage and the client-level central noise table.

    .venv/bin/python bench/federated_table.py [bench/results/federated.json]
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def render(d: dict) -> str:
    s, rows = d["setup"], d["rows"]
    out = [
        f"B = {s['blocks']} blocks (`{s['preset']}`), {s['companies']} companies, cohorts of {s['cohort_size']} "
        f"per block per round; company sizes {min(s['company_sizes'])}..{max(s['company_sizes'])} records.",
        "",
        "| row | test accuracy | record-level epsilon (RDP / PRV, delta 1e-5) | rounds x steps, q, lr |",
        "|---|---|---|---|",
    ]
    for name, r in rows.items():
        eps = "-"
        if "epsilon_rdp" in r:
            eps = "no DP" if math.isinf(r["epsilon_rdp"]) else f"{r['epsilon_rdp']:.2f} / {r['epsilon_prv']:.2f}"
        setting = "-"
        if name.startswith("federated"):
            k = "no_dp" if "no DP" in name else "dp"
            f = s[k]
            setting = f"{f['rounds']} x {f['steps']}, q {f['sample_rate']}, lr {f['lr']:g}"
            if "central noise" in name:
                setting += ", z_c 1"
            if r.get("diverged"):
                setting += f"; diverged in round {r['diverged']['round']} (companies refused NaN updates)"
        elif name.startswith("centralized") or name.startswith("pretrained"):
            setting = f"{s['central_epochs']} epochs"
        out.append(f"| {name} | {pct(r['accuracy'])} | {eps} | {setting} |")
    if "bytes" in d:
        b = d["bytes"]
        w, f = b["client_worst_steady_round"], b["fedavg_whole_model_per_round"]
        out += [
            "",
            "| bytes per client per round (Flower RecordDict protobuf) | down | up | total |",
            "|---|---|---|---|",
            f"| dblocks, worst company, steady-state round (block weights + task {w['model_and_task_down']} B down) | "
            f"{w['down']:,} | {w['up']:,} | {w['down'] + w['up']:,} |",
            "| dblocks, worst company, first round (adds register + join) | "
            f"{b['client_worst_first_round']['down']:,} | "
            f"{b['client_worst_first_round']['up']:,} | "
            f"{b['client_worst_first_round']['down'] + b['client_worst_first_round']['up']:,} |",
            f"| FedAvg of the whole model ({f['float32_parameters']:,} float32 values) | {f['down']:,} | {f['up']:,} "
            f"| {f['total']:,} |",
            f"| ratio (bar 1.2/B = {b['bar']:.3f}) | {b['ratio_down']:.3f} | {b['ratio_up']:.3f} | "
            f"**{b['ratio']:.3f}** |",
        ]
    m = d["memory"]
    out += [
        "",
        "| client peak memory, DP-SGD (ghost clipping), same q and records | expected batch | params | RSS growth MiB "
        "| torch MiB |",
        "|---|---|---|---|---|",
    ]
    for key, label in (
        ("dp_setting", "federated setting (largest company)"),
        ("batch_256", "batch 256"),
        ("one_layer_per_block", "1 layer per block (not the federated model)"),
    ):
        if key not in m:
            continue
        for model, r in m[key]["rows"].items():
            out.append(
                f"| {label}: {model} | {r['expected_batch']:.0f} | {r['param_count']:,} | {r['rss_growth_mib']:.1f} | "
                f"{r['torch_mib']['total']:.1f} |"
            )
        ratios = m[key]["ratios_block_over_whole"]
        out.append(
            f"| {label}: block / whole (RSS, torch) | | | "
            + "; ".join(f"{w}: {v['rss']:.2f}, {v['torch']:.2f}" for w, v in ratios.items())
            + f" | worst **{m[key]['ratio_worst']:.2f}** |"
        )
    if "no_dp_gap_points" in d:
        out += ["", "| centralized DiffusionBlocks minus federated without DP | points |", "|---|---|"]
        out += [f"| {k} | {v:+.1f} |" for k, v in d["no_dp_gap_points"].items()]
    fed = {k: v for k, v in rows.items() if "round_seconds_mean" in v}
    if fed:
        out += [
            "",
            "| run | round s (mean) | training s | SecAgg+ protocol s (in-process, all blocks) |",
            "|---|---|---|---|",
        ]
        for name, r in fed.items():
            out.append(
                f"| {name} | {r['round_seconds_mean']:.2f} | {r['training_seconds_mean']:.2f} | "
                f"{r['protocol_seconds_mean']:.3f} |"
            )
    cn = d["central_noise"]
    out += [
        "",
        f"Client-level central noise for client-level epsilon {cn['target_client_epsilon']:g} (delta {cn['delta']:g}, "
        f"{cn['releases']} releases per company, RDP), clip C = {cn['update_clip']:g}, block update d = "
        f"{cn['block_dim']:,}:",
        "",
        "| cohort K | z_c | noise std per coordinate of the mean | noise norm / clip norm |",
        "|---|---|---|---|",
    ]
    for c in cn["rows"]:
        out.append(
            f"| {c['cohort']} | {c['z_c']:.2f} | {c['noise_std_on_mean']:.4f} | {c['noise_norm_over_clip_norm']:.1f} |"
        )
    out += [
        "",
        f"Noise norm falls below the clip norm from K = {cn['meaningful_from_cohort']:,} companies per aggregate; "
        f"z_c = 1 alone gives client-level epsilon {cn['client_epsilon_of_z_c_1']:.0f}.",
    ]
    return "\n".join(out)


if __name__ == "__main__":
    print(render(json.loads(Path(sys.argv[1] if len(sys.argv) > 1 else RESULTS / "federated.json").read_text())))
