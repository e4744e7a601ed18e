"""Render the core section of docs/benchmarks.md from bench/results/{accuracy,generation,memory}.json.

Only the text between `<!-- core:begin -->` and `<!-- core:end -->` is replaced (the file and the markers are
created when missing), so other sections of the document are left alone; inside it, the hand-written findings
between `<!-- core:notes:begin -->` and `<!-- core:notes:end -->` are kept.

    .venv/bin/python bench/report_core.py [--results bench/results] [--doc docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- core:begin -->", "<!-- core:end -->"
NOTES_BEGIN, NOTES_END = "<!-- core:notes:begin -->", "<!-- core:notes:end -->"  # hand-written, kept as is


def f2(x: float) -> str:
    return f"{x:.2f}"


def seeds(s: dict) -> str:
    text = " / ".join(f2(v) for v in s["per_seed"])
    if s.get("diverged_seeds"):
        text += f"; diverged: seed(s) {', '.join(map(str, s['diverged_seeds']))}"
    return text


def table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def accuracy_section(acc: dict) -> str:
    t, setup = acc["tables"], acc["setup"]
    commands = setup.get("commands", [setup["command"]])
    parts = [
        "### Classification accuracy (`bench/accuracy.py`)",
        "",
        "Commands (each later run resumed the rows of the earlier ones): "
        + "; ".join(f"`{c}`" for c in commands)
        + f" ({setup['env']['threads']} thread, torch {setup['env']['torch']}). "
        "Accuracy in % of the fixed test split; medians over seeds (per-seed values in brackets). "
        "Matched layer updates: each block and the end-to-end model train the same number of epochs (column "
        "epochs), so both make L x epochs layer updates. DiffusionBlocks "
        "readout: z starts at 0, one CDF-spaced Euler step per block from where block 0 has training mass, "
        "argmax of the last logits.",
        "",
    ]
    rows = []
    for ds, v in t["main"].items():
        p = setup["presets"][ds]
        rows.append(
            [
                ds,
                f"{p['train_examples']}/{p['test_examples']}",
                str(v["total_layers"]),
                str(p["arch"]["width"]),
                str(v.get("epochs", setup["epochs_override"] or p["train"]["epochs"])),
                f"{f2(v['end_to_end']['median'])} [{seeds(v['end_to_end'])}]",
                f"{f2(v['diffusion_blocks_b4']['median'])} [{seeds(v['diffusion_blocks_b4'])}]",
                f"{v['gap_points']:+.2f}",
                "yes" if v["gap_points"] <= 2.0 else "**no**",
            ]
        )
    parts += [
        table(
            [
                "dataset",
                "train/test",
                "L",
                "width",
                "epochs",
                "end-to-end",
                "DiffusionBlocks B=4",
                "gap (points)",
                "within 2.0",
            ],
            rows,
        ),
        "",
    ]

    for ds, sw in t["sweep_blocks"].items():
        parts += [f"Number of blocks on {ds} ({sw['total_layers']} layers in total, L/B layers per block):", ""]
        rows = [
            [
                "end-to-end",
                f"{f2(sw['end_to_end']['median'])} [{seeds(sw['end_to_end'])}]",
                f"{sw['end_to_end']['train_seconds_median']:.0f}",
            ]
        ]
        rows += [
            [k, f"{f2(v['median'])} [{seeds(v)}]", f"{v['train_seconds_median']:.0f}"]
            for k, v in sw.items()
            if k.startswith("B=") and v
        ]
        parts += [table(["model", "accuracy", "train s (all blocks)"], rows), ""]
    for ds, pg in t["partition_gamma"].items():
        parts += [f"Partition and overlap on {ds} (B={pg['num_blocks']}, L={pg['total_layers']}):", ""]
        rows = [[k, f"{f2(v['median'])} [{seeds(v)}]"] for k, v in pg.items() if isinstance(v, dict) and v]
        parts += [table(["partition, gamma", "accuracy"], rows), ""]

    for ds, ab in t["ablation"].items():
        parts += [
            f"#### Why the naive recipe lost points, and what fixed it ({ds}, B=4)",
            "",
            "From the naive recipe to the final one, one fix at a time (same seeds; the training recipe and the "
            "readout of each line):",
            "",
        ]
        rows, prev = [], None
        for c in ab["cumulative"]:
            delta = "" if prev is None else f"{c['median'] - prev:+.2f}"
            rows.append([c["step"], f"{f2(c['median'])} [{seeds(c)}]", delta])
            prev = c["median"]
        parts += [table(["step", "accuracy", "change"], rows), ""]
        parts += ["One training-side change at a time from the final recipe (default readout):", ""]
        rows = [
            [name, f"{f2(v['median'])} [{seeds(v)}]", f"{v['delta_vs_final']:+.2f}"]
            for name, v in ab["training_side"].items()
        ]
        parts += [table(["training recipe", "accuracy", "vs final"], rows), ""]
        parts += ["One inference-side change at a time, on the blocks trained with the final recipe:", ""]
        defs = ab["readout_definitions"]
        rows = []
        for name, v in ab["inference_side"].items():
            d = defs.get(name, {})
            desc = (
                f"{d.get('grid')} grid, {d.get('steps')} step(s), z0 {d.get('init')}, "
                f"{d.get('readout')}, {d.get('solver')}"
            )
            rows.append([f"`{name}`", desc, f"{f2(v['median'])} [{seeds(v)}]", f"{v['delta_vs_final']:+.2f}"])
        parts += [table(["readout", "what", "accuracy", "vs final"], rows), ""]
    return "\n".join(parts)


def generation_section(gen: dict) -> str:
    s, c, fl, h = gen["setup"], gen["classifier"], gen["floor_real_test_vs_train"], gen["headline"]
    parts = [
        "### Generation (`bench/generation.py`)",
        "",
        f"Command: `{s['command']}`. MNIST 5k at {s['image_size']}x{s['image_size']} ({s['train_examples']} train / "
        f"{s['test_examples']} test), DiT with AdaLN-Zero, L={s['total_layers']}, width {s['arch']['width']}, patch "
        f"{s['arch']['patch_size']}, {s['train']['epochs']} epochs per block and for the end-to-end model (B=1), "
        f"batch {s['train']['batch_size']}, lr {s['train']['lr']}, label dropout {s['train']['label_dropout']}; "
        f"CFG {s['cfg_scale']}, Euler on {s['grid']}, from sigma {s['inference_start']:.2f}; {s['samples']} samples "
        f"({s['samples_per_class']} per class), same initial noise for both models.",
        "",
        f"Feature network: a small CNN trained on the train split and frozen (`bench/results/{c['file']}`, sha256 "
        f"`{c['sha256']}`, test accuracy {100 * c['test_accuracy']:.2f}%). FD and KID are to the train-split "
        f"features; floor (real test images vs train): FD {fl['fd']:.3f}, KID {fl['kid']:.5f}.",
        "",
    ]
    rows = []
    for name, label in (
        ("diffusion_blocks", f"DiffusionBlocks B={s['num_blocks']}"),
        ("end_to_end", "end-to-end (B=1)"),
    ):
        m = gen["models"][name]
        for k, r in m["by_steps_per_block"].items():
            rows.append(
                [
                    label,
                    f"{k} ({r['steps_total']})",
                    f"{r['fd']:.3f}",
                    f"{r['kid']:.5f}",
                    f"{100 * r['class_agreement']:.1f}%",
                    f"{m['train_seconds']:.0f}",
                    f"{r['sample_seconds']:.0f}",
                ]
            )
    parts += [table(["model", "steps/block (total)", "FD", "KID", "class agreement", "train s", "sample s"], rows), ""]
    ok = (
        h["fd_ratio"] <= h["bars"]["fd_ratio_max"]
        and h["class_agreement_diffusion_blocks"] >= h["bars"]["class_agreement_min"]
    )
    parts += [
        f"Headline ({h['steps_per_block']} steps per block): FD ratio DiffusionBlocks / end-to-end = "
        f"**{h['fd_ratio']:.3f}** (bar <= 1.15), class agreement "
        f"**{100 * h['class_agreement_diffusion_blocks']:.1f}%** "
        f"(bar >= 90%; end-to-end {100 * h['class_agreement_end_to_end']:.1f}%): {'met' if ok else '**not met**'}.",
        "",
    ]
    k0 = str(h["steps_per_block"])
    for name in ("diffusion_blocks", "end_to_end"):
        png = gen["models"][name]["by_steps_per_block"][k0]["grid_png"]
        parts.append(f"![{name} samples, one row per class](img/{png})")  # copied next to the doc by main()
    parts.append("")
    return "\n".join(parts)


def memory_section(mem: dict) -> str:
    s = mem["setup"]
    parts = [
        "### Training memory (`bench/memory.py`)",
        "",
        f"Command: `{s['command']}`. One block of a B={s['num_blocks']} model vs the end-to-end model, batch "
        f"{s['batch']}, {s['steps']} training steps, each measurement in a fresh process. RSS: peak growth over the "
        "process before the model is built (glibc mmap threshold fixed at 64 KiB so that RSS follows live memory; "
        "glibc's default in the last column). torch: parameters + gradients + AdamW state + tensors saved for "
        "backward (saved_tensors_hooks, deduplicated by storage; under Opacus also the layer inputs its hooks keep).",
        "",
    ]
    rows = []
    for r in mem["rows"]:
        b, e = r["block"], r["end_to_end"]
        d = r.get("glibc_default_malloc")
        rows.append(
            [
                r["task"],
                "Opacus ghost" if r["opacus_ghost"] else "AdamW",
                f"{b['rss_growth_mib']:.1f} / {e['rss_growth_mib']:.1f}",
                f"**{r['ratio_rss']:.2f}**",
                f"{b['torch']['total_mib']:.1f} / {e['torch']['total_mib']:.1f}",
                f"**{r['ratio_torch']:.2f}**",
                f"{r['ratio_params_grads_adam']:.2f}",
                f"{r['ratio_saved_activations']:.2f}",
                f"{d['ratio_rss']:.2f}" if d else "-",
            ]
        )
    parts += [
        table(
            [
                "task",
                "training",
                "RSS MiB block / e2e",
                "ratio",
                "torch MiB block / e2e",
                "ratio",
                "params+grads+Adam ratio",
                "activations ratio",
                "RSS ratio, glibc default",
            ],
            rows,
        ),
        "",
    ]
    parts += [f"Smallest ratio: **{mem['ratio_min']:.2f}** (bar >= {mem['bar']}).", ""]
    return "\n".join(parts)


def render(results: Path, notes: str) -> str:
    parts = [
        BEGIN,
        "## Core: DiffusionBlocks vs end-to-end (issue #2)",
        "",
        "_Tables generated by `bench/report_core.py` from `bench/results/*.json`; only the findings between the "
        "notes markers are written by hand._",
        "",
        notes,
        "",
    ]
    for name, fn in (("accuracy", accuracy_section), ("generation", generation_section), ("memory", memory_section)):
        p = results / f"{name}.json"
        parts.append(
            fn(json.loads(p.read_text())) if p.exists() else f"_{name}: no results yet (`bench/{name}.py`)._\n"
        )
    summary = results / "summary.json"
    if summary.exists():
        core = {k: v for k, v in json.loads(summary.read_text()).items() if k.startswith("core.")}
        parts += ["`bench/results/summary.json` (core keys):", "", "```json", json.dumps(core, indent=2), "```", ""]
    parts.append(END)
    return "\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args()
    text = args.doc.read_text() if args.doc.exists() else "# Benchmarks\n\n"
    notes = f"{NOTES_BEGIN}\n{NOTES_END}"
    if NOTES_BEGIN in text and NOTES_END in text:
        notes = text[text.index(NOTES_BEGIN) : text.index(NOTES_END) + len(NOTES_END)]
    section = render(args.results, notes)
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    # mkdocs only serves files under docs/: the sample grids the section shows are copied to docs/img/
    for png in re.findall(r"\]\(img/([^)]+\.png)\)", section):
        (args.doc.parent / "img").mkdir(exist_ok=True)
        shutil.copyfile(args.results / png, args.doc.parent / "img" / png)
    args.doc.write_text(text)
    print(f"wrote the core section of {args.doc}")


if __name__ == "__main__":
    main()
