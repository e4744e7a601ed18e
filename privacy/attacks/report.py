"""`dbaudit report`: one self-contained HTML page (plots and images inlined) from audit records.

Plots: leakage (PSNR over the mean-record baseline, and IIP) against the central noise multiplier, one line per
(attack, observation, adversary, block); leakage per block across the noise intervals; and the canary epsilon
lower bounds beside the accountant's epsilon.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import defaultdict
from pathlib import Path

from .record import AuditRecord

INVERSION = ("closed-form", "inversion", "dlg", "idlg", "dlg-scales")


def find_records(paths: list[Path]) -> list[tuple[Path, AuditRecord]]:
    out = []
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such file or directory")
        files = [p] if p.is_file() else sorted(p.rglob("audit.json"))
        for f in files:
            try:
                out.append((f.parent, AuditRecord.read(f)))
            except (json.JSONDecodeError, TypeError, KeyError) as e:
                raise ValueError(f"{f}: not an audit record ({e})") from e
    if not out:
        raise ValueError(f"no audit.json under {', '.join(map(str, paths))}")
    return out


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _value(m: dict, key: str) -> float | None:
    v = m.get(key)
    if isinstance(v, dict):
        v = v.get("value")
    return v if isinstance(v, (int, float)) else None


def plot_noise(records) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = defaultdict(list)
    for _, r in records:
        if r.attack in INVERSION and r.observation_point in ("release", "sequence"):
            key = (r.attack, r.observation_point, r.adversary, r.block.get("block_index"))
            found[key].append(
                (
                    r.secagg.get("noise_multiplier", 0.0),
                    _value(r.metrics, "psnr_over_mean_baseline"),
                    _value(r.metrics, "iip"),
                )
            )
    lines = {k: sorted(v) for k, v in found.items() if len({p[0] for p in v}) >= 2}
    if not lines:
        return None
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for (att, obs, adv, blk), pts in sorted(lines.items(), key=str):
        zs = [max(p[0], 1e-6) for p in pts]
        a.plot(zs, [p[1] for p in pts], marker="o", label=f"{att} {obs} {adv} block {blk}")
        b.plot(zs, [p[2] for p in pts], marker="o")
    for ax, lab in ((a, "PSNR - mean-record baseline (dB)"), (b, "IIP (nearest-neighbour identification)")):
        ax.set_xscale("log")
        ax.set_xlabel("central noise multiplier z (0 plotted at 1e-6)")
        ax.set_ylabel(lab)
        ax.grid(alpha=0.3)
    a.axhline(1.0, color="k", ls="--", lw=0.8)
    a.legend(fontsize=7)
    return _png(fig)


def plot_blocks(records) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = defaultdict(list)
    for _, r in records:
        blk = r.block.get("block_index")
        if blk is None:
            continue
        if r.attack in INVERSION:
            found[
                (
                    f"{r.attack} {r.observation_point} {r.adversary} z={r.secagg.get('noise_multiplier')}",
                    "PSNR over baseline (dB)",
                )
            ].append((blk, _value(r.metrics, "psnr_over_mean_baseline"), r.block.get("training_interval")))
        elif r.attack == "membership":
            found[("membership LiRA AUC", "AUC")].append(
                (blk, r.metrics["lira"]["auc"], r.block.get("training_interval"))
            )
            found[("membership loss AUC", "AUC")].append(
                (blk, r.metrics["loss_attack"]["auc"], r.block.get("training_interval"))
            )
    groups = {k: sorted(v, key=lambda p: p[0]) for k, v in found.items() if len({p[0] for p in v}) >= 2}
    if not groups:
        return None
    units = sorted({u for _, u in groups})
    fig, axes = plt.subplots(1, len(units), figsize=(5.5 * len(units), 4), squeeze=False)
    for ax, unit in zip(axes[0], units):
        for (name, u), pts in sorted(groups.items()):
            if u != unit:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
            ticks = [f"{p[0]}\n[{p[2][0]:.3g},{p[2][1]:.3g}]" if p[2] else str(p[0]) for p in pts]
            ax.set_xticks([p[0] for p in pts], ticks, fontsize=7)
        ax.set_xlabel("block (training sigma interval; block 0 = highest noise)")
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _png(fig)


def plot_epsilon(records) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(r, d) for d, r in records if r.attack == "canary"]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(pts)), 4))
    xs = range(len(pts))
    ax.bar(
        [x - 0.2 for x in xs], [r.metrics["accountant_epsilon"] for r, _ in pts], width=0.4, label="accountant epsilon"
    )
    ax.bar(
        [x + 0.2 for x in xs],
        [r.metrics["epsilon_lower_bound"] for r, _ in pts],
        width=0.4,
        label="empirical lower bound (95%)",
        color=["tab:red" if r.verdict == "fail" else "tab:green" for r, _ in pts],
    )
    ax.set_xticks(list(xs), [f"{d.name}\n{r.config.get('canary_level')}" for r, d in pts], fontsize=7, rotation=20)
    ax.set_ylabel("epsilon")
    ax.set_yscale("symlog", linthresh=1)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _png(fig)


def _headline(r: AuditRecord) -> str:
    m = r.metrics
    if r.attack in INVERSION:
        return (
            f"PSNR {_value(m, 'psnr'):.2f} dB (baseline {_value(m, 'mean_record_psnr'):.2f}), IIP "
            f"{_value(m, 'iip'):.3f}"
            if _value(m, "psnr") is not None
            else "-"
        )
    if r.attack == "canary":
        return f"eps lower bound {m['epsilon_lower_bound']:.3f} vs accountant {m['accountant_epsilon']:.3f}"
    if r.attack == "membership":
        return f"AUC loss {m['loss_attack']['auc']:.3f}, LiRA {m['lira']['auc']:.3f}"
    if r.attack == "battery" and m.get("tests"):
        t = m["tests"][m["strongest_attack"]]
        mde = "none (too few trials)" if t["mde"] is None else f"{t['mde']:.2f}"  # inf is stored as null
        return (
            f"strongest: {m['strongest_attack']} {t['hits']}/{t['trials']} vs chance {t['chance']:.4f} "
            f"(p {t['p_value']:.2g}, min. detectable rate {mde}); pool {m['pool_size']}"
        )
    if r.attack == "noise-conformance":
        return f"noise std {m['measured_std']:.4g} vs expected {m['expected_std']:.4g}"
    return ""


def render_report(paths: list[Path], out: Path) -> int:
    records = find_records(list(paths))
    colour = {"pass": "#2a7", "fail": "#c33", "inconclusive": "#c90"}
    rows = []
    for d, r in records:
        imgs = "".join(
            f'<div><img src="data:image/png;base64,{base64.b64encode((d / a).read_bytes()).decode()}" '
            f'title="{html.escape(desc)}"><br><small>{html.escape(desc)}</small></div>'
            for a, desc in r.artifacts.items()
            if a.endswith(".png") and (d / a).exists()
        )
        rows.append(
            f"<tr><td style='color:{colour[r.verdict]};font-weight:bold'>{r.verdict}</td><td>{html.escape(d.name)}</td>"
            f"<td>{r.attack}</td><td>{r.observation_point}</td><td>{r.adversary}</td><td>{r.block.get('block_index')}</td>"
            f"<td>{html.escape(_headline(r))}</td><td><small>{'<br>'.join(html.escape(x) for x in r.reasons)}</small>"
            f"<details><summary>scope, config</summary><small>{html.escape(r.scope)}<br>hash {r.config_hash[:16]} - "
            f"{html.escape(r.code_version)}<br><code>{html.escape(json.dumps(r.config))}</code></small></details>{imgs}</td></tr>"
        )
    plots = [
        ("Leakage vs central noise multiplier", plot_noise(records)),
        ("Leakage per block across the noise intervals", plot_blocks(records)),
        ("Canary epsilon lower bound vs accountant epsilon", plot_epsilon(records)),
    ]
    figs = "".join(f"<h2>{t}</h2><img src='data:image/png;base64,{p}'>" for t, p in plots if p)
    counts = {v: sum(r.verdict == v for _, r in records) for v in colour}
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>dblocks leakage audits</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top}}img{{image-rendering:pixelated;max-width:100%}}</style>
</head><body><h1>dblocks leakage audits</h1>
<p>{len(records)} audits: {counts["pass"]} pass, {counts["fail"]} fail, {counts["inconclusive"]} inconclusive.</p>
{figs}<h2>Audits</h2><table><tr><th>verdict</th><th>audit</th><th>attack</th><th>observed</th><th>adversary</th>
<th>block</th><th>headline</th><th>reasons</th></tr>{"".join(rows)}</table></body></html>"""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    return len(records)
