"""Markdown tables of bench/results/audit.json (the numbers in docs/privacy-audit.md come from here).

.venv/bin/python bench/audit_tables.py > /tmp/audit-tables.md
"""

from __future__ import annotations

import json
import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def ci(e: dict, fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(e['value'])} [{fmt.format(e['low'])}, {fmt.format(e['high'])}]"


def main() -> None:
    r = json.loads((RESULTS / "audit.json").read_text())
    s = {k: v for k, v in json.loads((RESULTS / "summary.json").read_text()).items() if k.startswith("audits.")}
    out = ["### Headline (`bench/results/summary.json`, keys `audits.*`)", "", "| key | value |", "|---|---|"]
    out += [f"| `{k}` | {v:.3f} |" if isinstance(v, float) else f"| `{k}` | {v} |" for k, v in s.items()]
    pc = r["positive_control"]
    out += [
        "",
        "### Positive controls (block 1, raw single-record update)",
        "",
        "| attack | PSNR dB [95%] | SSIM | IIP | label acc. | sigma rel. err. | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, v in pc.items():
        out.append(
            f"| {name} | {ci(v['psnr'])} | {v['ssim']['value']:.3f} | {v['iip']['value']:.2f} (n={v['iip']['n']}) | "
            f"{v['label_accuracy']['value']:.2f} | {v.get('sigma_relative_error', {}).get('value', float('nan')):.1e} "
            f"| {v['verdict']} |"
        )
    out += [
        "",
        "### A correctly configured client-level DP release (block 1: K=8 single-record clients, C=1, z=1)",
        "",
        "| attack, adversary | PSNR dB | mean-record baseline dB | PSNR - baseline dB [95%] | IIP [95%] (chance "
        "0.00056) | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for name, v in r["dp_release"].items():
        if isinstance(v, dict):
            out.append(
                f"| {name} | {v['psnr']['value']:.2f} | {v['mean_record_psnr']['value']:.2f} | "
                f"{ci(v['psnr_over_mean_baseline'])} | {ci(v['iip'], '{:.3f}')} (n={v['iip']['n']}) | {v['verdict']} |"
            )
    out += [
        "",
        "### Leakage per block across the noise intervals",
        "",
        "Closed form against one client's clipped update plus central noise z C (the view of K-1 = 7 colluding "
        "clients of a release); 32 records per point. Cells: PSNR over the mean-record baseline (dB) / IIP.",
        "",
    ]
    blocks = r["leakage_by_block"]
    zs = list(next(iter(blocks.values()))["closed_form_colluding"])
    out += ["| block (training sigma) | " + " | ".join(f"z={z}" for z in zs) + " |", "|---|" + "---|" * len(zs)]
    for b, e in blocks.items():
        lo, hi = e["training_interval"]
        out.append(
            f"| {b} ({lo:.3g}-{hi:.3g}) | "
            + " | ".join(
                f"{v['psnr_over_mean_baseline']['value']:+.1f} / {v['iip']['value']:.2f}"
                for v in e["closed_form_colluding"].values()
            )
            + " |"
        )
    zs = list(next(iter(blocks.values()))["inversion_colluding"])
    out += [
        "",
        "Inverting Gradients (cosine + TV, 400 iterations), same view, 4 records per point. Cells: PSNR dB / IIP "
        "(control = raw single-record update at 30 dB).",
        "",
        "| block | " + " | ".join(f"z={z}" for z in zs) + " | control |",
        "|---|" + "---|" * (len(zs) + 1),
    ]
    for b, e in blocks.items():
        cells = [f"{v['psnr']['value']:.1f} / {v['iip']['value']:.2f}" for v in e["inversion_colluding"].values()]
        ctrl = next(iter(e["inversion_colluding"].values()))["controls"]
        out.append(f"| {b} | " + " | ".join(cells) + f" | {'passed' if ctrl.get('raw_single_record') else 'failed'} |")
    out += [
        "",
        "Membership inference against non-private blocks (8 blocks per row, each on a random half of 512 "
        "records, 20 epochs), pooled over the 8 targets:",
        "",
        "| block | loss-threshold AUC [95%] | LiRA AUC [95%] | LiRA TPR @ 1% FPR | LiRA TPR @ 0.1% FPR | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for b, e in blocks.items():
        m = e["membership"]
        out.append(
            f"| {b} | {ci(m['loss_auc'], '{:.3f}')} | {ci(m['lira_auc'], '{:.3f}')} | "
            f"{m['lira_tpr_at_1pct_fpr']['value']:.3f} | "
            f"{m['lira_tpr_at_0.1pct_fpr']['value']:.3f} | {m['verdict']} |"
        )
    out += [
        "",
        "### Sequence (block 1, 7 colluding clients, z = 1e-4, closed form solved jointly over the rounds)",
        "",
        "| rounds | PSNR dB | IIP [95%] |",
        "|---|---|---|",
    ]
    for k, v in r["sequence"].items():
        out.append(f"| {k} | {v['psnr']['value']:.2f} | {ci(v['iip'], '{:.3f}')} |")
    out += [
        "",
        "### One-run canary audits (through `dbaudit run`; delta = 1e-5, 95% confidence)",
        "",
        "| run | epsilon lower bound | accountant epsilon | guesses / correct | exit | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for name, v in r["canary"].items():
        out.append(
            f"| {name} | {v['epsilon_lower_bound']:.3f} | {v['accountant_epsilon']:.3f} | {v['guesses']} / "
            f"{v['correct']} | "
            f"{v['exit_code']} | {v['verdict']} |"
        )
    rc = r["canary"]["record_correct"]
    out += [
        "",
        f"Record level: z = {rc['noise_multiplier']:.4f}, q = {rc['sample_rate']:.4f}, {rc['steps']} steps "
        f"(1797 digits + the included canaries). Commands:",
        "",
        "```",
    ]
    out += [v["command"] for v in r["canary"].values()] + ["```"]
    out += [
        "",
        "### Noise conformance of release files (block 1, K=8, C=1, z=1)",
        "",
        "| release | measured std | expected std | accepted | random-direction std | exit | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, v in r["conformance"].items():
        out.append(
            f"| {name} | {v['measured_std']:.4g} | {v['expected_std']:.4g} | [{v['accepted'][0]:.4g}, "
            f"{v['accepted'][1]:.4g}] | "
            f"{v['random_direction_std']:.4g} | {v['exit_code']} | {v['verdict']} |"
        )
    out += ["", f"Bench wall time: {r['seconds']} s."]
    # commands were recorded with the checkout's absolute paths: show them relative to the repository
    text = re.sub(r"/\S*?/(runs|bench)/", r"\1/", "\n".join(out))
    doc = RESULTS.parents[1] / "docs" / "privacy-audit.md"
    begin, end = "<!-- audit-results:begin -->", "<!-- audit-results:end -->"
    page = doc.read_text()
    if begin in page:
        head, rest = page.split(begin, 1)
        page = head + begin + "\n" + text + "\n" + end + rest.split(end, 1)[1]
        doc.write_text(page)
    print(text)


if __name__ == "__main__":
    main()
