"""A realistic registry state for dashboard tests and screenshots: nodes from four companies, a running
4-block run with rounds, versions, privacy records and audits with images, plus a finished and a new run.
Everything goes through RegistryClient, like the federation server and the audit tool."""

from __future__ import annotations

import io
import math

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from PIL import Image
from regtools import DP, make_block, new_run

from dblocks.shared.versions import VersionMeta

COMPANIES = [
    ("Acme Bank", "acme-fra-1"),
    ("Globex Health", "globex-node"),
    ("Initech Insurance", "initech-01"),
    ("Umbrella Labs", "umbrella-lab"),
]


def ssh_key() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def digits_png(seed: int, noisy: float) -> bytes:
    """A 2x4 grid of sklearn digits (originals top, 'reconstructions' below with noise), upscaled, as PNG."""
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    imgs = load_digits().images[rng.choice(1797, 4, replace=False)] / 16.0
    rec = np.clip(imgs + noisy * rng.normal(size=imgs.shape), 0, 1)
    grid = np.concatenate([np.concatenate(list(imgs), axis=1), np.concatenate(list(rec), axis=1)], axis=0)
    img = Image.fromarray((255 * (1 - grid)).astype(np.uint8)).resize(
        (grid.shape[1] * 12, grid.shape[0] * 12), Image.NEAREST
    )
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def seed_demo(clients: dict, rounds_done: int = 4) -> dict:
    """Fill the registry; returns {"run": main run, "nodes": [...], "versions": {block: last version}}."""
    svc, op, res = clients["service"], clients["operator"], clients["researcher"]
    nodes = [svc.register_node(name, org, ssh_key()) for org, name in COMPANIES]
    for n in nodes[:3]:
        op.approve_node(n["id"])
    ids = [n["id"] for n in nodes[:3]]

    finished = new_run(svc, num_blocks=2, num_rounds=2, name="digits-smoke", task="mnist")
    svc.set_status(finished["id"], "running")
    svc.set_status(finished["id"], "finished", "all rounds done")

    run = new_run(svc, num_blocks=4, num_rounds=6, name="mnist-b4-dp")
    svc.set_status(run["id"], "running")
    last: dict[int, dict] = {}
    for r in range(1, rounds_done + 1):
        for b in range(4):
            cohort = [ids[(r + b) % 3], ids[(r + b + 1) % 3]]
            if r == 2 and b == 2:
                svc.report_round(
                    run["id"], r, b, cohort[:1], "skipped", "cohort of 1 is below the SecAgg threshold of 2"
                )
                svc.report_round(run["id"], r, b, cohort, "rerun", "re-run with a fresh cohort")
            spec, weights = make_block(b, seed=r)
            eps = 1.1 * math.sqrt(r) * (1 + 0.08 * b)
            v = svc.register_block_version(
                run["id"],
                b,
                spec,
                weights,
                VersionMeta(
                    round=r,
                    parent_version_id=last[b]["id"] if b in last else None,
                    cohort=cohort,
                    **{**DP, "record_epsilon": eps, "record_steps": 300 * r},
                    client_epsilon=0.6 * eps,
                    client_delta=1e-3,
                    metrics={
                        "train_loss": 1.8 / (1 + 0.5 * r) + 0.05 * b,
                        "val_loss": 2.0 / (1 + 0.45 * r) + 0.06 * b,
                        "grad_norm": 0.9 - 0.1 * r,
                    },
                    code_version="dblocks 0.1.0+g9756806",
                    secagg_session=f"sa-{run['id']}-{r}-{b}",
                ),
            )
            last[b] = v
            svc.report_round(
                run["id"], r, b, cohort, "completed", stats={"seconds": 40 + 3 * b, "updates": len(cohort)}
            )
            for n in cohort:
                prev = [x for x in svc.node_privacy(n)["runs"] if x["run_id"] == run["id"]]
                spent = prev[0]["per_block"].get(str(b), {}).get("epsilon", 0.0) if prev else 0.0
                svc.record_node_privacy(
                    n, run["id"], b, r, spent + 0.5 + 0.1 * b, 1e-5, "prv", sample_rate=0.01, steps=300 * r
                )
    for b, noisy in ((0, 0.45), (3, 0.08)):
        res.post_audit(
            last[b]["id"],
            "gradient inversion (DLG)",
            "aggregated update",
            "honest-but-curious server",
            {"iterations": 300, "batch": 8, "lr": 0.1},
            "c0ffee" + "0" * 58,
            [0, 1, 2],
            {
                "psnr_db": {"value": 11.2 if b == 0 else 19.4, "ci": [10.1, 12.3] if b == 0 else [18.0, 20.9]},
                "ssim": {"value": 0.12 if b == 0 else 0.61, "ci": [0.08, 0.16] if b == 0 else [0.55, 0.66]},
            },
            {"random_init_baseline_psnr_db": 10.9, "no_dp_psnr_db": 24.0},
            "pass" if b == 0 else "fail",
            {"reconstructions.png": digits_png(b, noisy), "originals.png": digits_png(b, 0.0)},
        )
    new_run(svc, num_blocks=8, num_rounds=10, name="breast-cancer-b8", task="mnist")
    return {"run": run, "nodes": nodes, "versions": last}
