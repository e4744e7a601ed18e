"""The full leakage-audit battery on a digits DiffusionBlocks model (4 blocks). Heavy: run under the lock.

    flock /tmp/dblocks-heavy.lock .venv/bin/python bench/audit.py            # ~20-40 min on 2 busy cores
    flock /tmp/dblocks-heavy.lock .venv/bin/python bench/audit.py --quick    # smoke run, a few minutes

Writes bench/results/audit.json (every number below), the audit records with their PNG grids under
bench/results/audits/<name>/, the HTML report bench/results/audit-report.html (`dbaudit report`), and the
audits.* keys of bench/results/summary.json (read-modify-write, nothing else touched).

1. positive controls: closed form and Inverting Gradients on a raw single-record update of block 1;
2. a correctly configured client-level DP release (K=8 single-record clients, C=1, z=1): closed form (server
   and K-1 colluding clients), DLG with learned client scales (server), Inverting Gradients (colluding);
3. leakage per block across the noise intervals: closed form against one client's clipped update plus
   central noise z C (the K-1 colluding clients' view of a release) for z from 0 to 1, Inverting Gradients at
   z = 0, 1e-5, 1e-4, 1e-3, membership inference (loss threshold, LiRA) against non-private blocks;
4. sequence: the same clients over 1, 4 and 16 rounds of releases at z = 1e-4 (closed form, joint solve);
5. one-run canary audits through `dbaudit run` (exit codes checked): record-level DP-SGD configured for
   epsilon 2, correct and with planted bugs (Opacus noise disabled, clipping disabled, patched here only);
   client-level canary clients through the federation's release, correct and with its central noise disabled;
6. noise conformance of release files: correct, noise missing, doubled, and sized for dropped-out clients.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
AUDITS = RESULTS / "audits"
MODEL = ROOT / "runs" / "audit-model"
sys.path.insert(0, str(ROOT / "bench"))
from planted import central_noise_disabled, opacus_clipping_disabled, opacus_noise_scaled  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------------
def train_model(epochs: int) -> None:
    """The audited model: the digits preset, 4 blocks, trained locally (no DP) for `epochs` epochs."""
    from dblocks.shared.presets import get_preset
    from dblocks.shared.workflow import train_diffusion_blocks

    marker = MODEL / "bench-config.json"
    config = {"preset": "digits", "blocks": 4, "epochs": epochs}
    if marker.exists() and json.loads(marker.read_text()) == config:
        log(f"reusing {MODEL}")
        return
    p = get_preset("digits")
    schedule = p.noise_schedule(4)
    train, _ = p.load_split()
    log(f"training the digits model ({epochs} epochs per block) into {MODEL}")
    train_diffusion_blocks(p, schedule, train, replace(p.train, epochs=epochs), MODEL)
    marker.write_text(json.dumps(config))


def target(block_index: int):
    from dblocks.privacy.attacks.runner import AuditTarget
    from dblocks.privacy.cli import _block_info
    from dblocks.shared.data import load_builtin
    from dblocks.shared.wire import load_block

    spec, block = load_block(MODEL, block_index)
    return AuditTarget(block, block_index, _block_info(spec), load_builtin("digits"))


def audit(name: str, block_index: int, **spec_kw) -> dict:
    from dblocks.privacy.attacks.runner import AuditSpec, run_audit

    t0 = time.perf_counter()
    rec = run_audit(target(block_index), AuditSpec(**spec_kw), AUDITS / name)
    log(f"{name}: {rec.verdict} ({time.perf_counter() - t0:.0f} s) " + " | ".join(rec.reasons[:2]))
    return rec.to_dict()


def cli(*args) -> tuple[int, dict | None, str]:
    """Run `dbaudit` in this process (so the planted bugs apply); returns (exit code, record, command)."""
    from typer.testing import CliRunner

    from dblocks.privacy.cli import app

    args = [str(a) for a in args]
    r = CliRunner().invoke(app, args, catch_exceptions=False)
    out = Path(args[args.index("--out") + 1]) / "audit.json" if "--out" in args else None
    rec = json.loads(out.read_text()) if out is not None and out.exists() and args[0] == "run" else None
    cmd = "dbaudit " + " ".join(a if " " not in a else repr(a) for a in args)
    log(f"{cmd}\n    -> exit {r.exit_code}: {r.output.strip().splitlines()[-2] if r.output.strip() else ''}")
    return r.exit_code, rec, cmd


def value(rec: dict, key: str):
    v = rec["metrics"].get(key)
    return v["value"] if isinstance(v, dict) and "value" in v else v


def short(rec: dict) -> dict:
    keys = (
        "psnr",
        "ssim",
        "iip",
        "iip_chance",
        "share_above_20db",
        "mean_record_psnr",
        "random_record_psnr",
        "psnr_over_mean_baseline",
        "label_accuracy",
        "sigma_relative_error",
    )
    out = {k: rec["metrics"][k] for k in keys if k in rec["metrics"]}
    out["verdict"] = rec["verdict"]
    out["controls"] = {k: v.get("passed") for k, v in rec["controls"].items()}
    return out


# ---------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: fewer targets, iterations, models, canaries")
    args = ap.parse_args()
    q = args.quick
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    t_start = time.perf_counter()
    AUDITS.mkdir(parents=True, exist_ok=True)
    train_model(epochs=3 if q else 10)

    targets, ig_targets, iters = (4, 1, 100) if q else (32, 4, 400)
    zs = [0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    res: dict = {
        "model": {"dir": str(MODEL.relative_to(ROOT)), "preset": "digits", "blocks": 4, "epochs": 3 if q else 10},
        "quick": q,
    }

    # 1. positive controls -----------------------------------------------------------------------
    log("1. positive controls")
    cf = audit("control-closed-form-raw", 1, attack="closed-form", observe="raw", targets=targets)
    ig = audit("control-inversion-raw", 1, attack="inversion", observe="raw", targets=ig_targets, iterations=iters)
    res["positive_control"] = {"closed_form_raw": short(cf), "inversion_raw": short(ig)}

    # 2. a correctly configured DP release ---------------------------------------------------------
    log("2. DP release: K=8, C=1, z=1")
    rel = dict(observe="release", clients=8, clip_norm=1.0, noise_multiplier=1.0)
    release_runs = {
        "closed-form server": audit("release-closed-form-server", 1, attack="closed-form", targets=targets, **rel),
        "closed-form colluding": audit(
            "release-closed-form-colluding", 1, attack="closed-form", adversary="colluding", targets=targets, **rel
        ),
        "dlg-scales server": audit(
            "release-dlg-scales-server",
            1,
            attack="dlg-scales",
            targets=ig_targets,
            iterations=iters,
            **(rel | {"clients": 4}),
        ),
        "inversion colluding": audit(
            "release-inversion-colluding",
            1,
            attack="inversion",
            adversary="colluding",
            targets=ig_targets,
            iterations=iters,
            **rel,
        ),
    }
    res["dp_release"] = {k: short(v) for k, v in release_runs.items()}
    worst = max(release_runs.values(), key=lambda r: value(r, "psnr_over_mean_baseline"))
    res["dp_release"]["worst_psnr_over_baseline"] = value(worst, "psnr_over_mean_baseline")
    res["dp_release"]["all_iip_at_chance"] = all(
        r["metrics"]["iip"]["low"] <= r["metrics"]["iip_chance"] for r in release_runs.values()
    )

    # 3. leakage per block across the noise intervals ----------------------------------------------
    log("3. leakage per block across noise intervals")
    per_block = {}
    for b in range(4):
        t = target(b)
        entry = {
            "training_interval": t.info["training_interval"],
            "owned_interval": t.info["owned_interval"],
            "closed_form_colluding": {},
            "inversion_colluding": {},
        }
        for z in zs:
            r = audit(
                f"block{b}-closed-form-z{z:g}",
                b,
                attack="closed-form",
                observe="release",
                adversary="colluding",
                clients=8,
                clip_norm=1.0,
                noise_multiplier=z,
                targets=targets,
            )
            entry["closed_form_colluding"][f"{z:g}"] = short(r)
        for z in [0.0] if q else [0.0, 1e-5, 1e-4, 1e-3]:
            r = audit(
                f"block{b}-inversion-z{z:g}",
                b,
                attack="inversion",
                observe="release",
                adversary="colluding",
                clients=8,
                clip_norm=1.0,
                noise_multiplier=z,
                targets=ig_targets,
                iterations=iters,
                control=(z == 0.0),
            )  # one control per block: without it the other points stay inconclusive
            entry["inversion_colluding"][f"{z:g}"] = short(r)
        m = audit(
            f"block{b}-membership",
            b,
            attack="membership",
            observe="weights",
            dp_noise_multiplier=0.0,
            models=4 if q else 8,
            population=128 if q else 512,
            train_epochs=5 if q else 20,
            control=(b == 1),
        )
        entry["membership"] = {
            "loss_auc": m["metrics"]["loss_attack"]["auc_interval"],
            "lira_auc": m["metrics"]["lira"]["auc_interval"],
            "loss_tpr_at_1pct_fpr": m["metrics"]["loss_attack"]["tpr_at_0.01_fpr"],
            "lira_tpr_at_1pct_fpr": m["metrics"]["lira"]["tpr_at_0.01_fpr"],
            "lira_tpr_at_0.1pct_fpr": m["metrics"]["lira"]["tpr_at_0.001_fpr"],
            "verdict": m["verdict"],
            "controls": m["controls"],
        }
        per_block[b] = entry
    res["leakage_by_block"] = per_block

    # 4. sequence over rounds ---------------------------------------------------------------------
    log("4. sequence: the same clients over several rounds")
    res["sequence"] = {}
    for rounds in [1, 4] if q else [1, 4, 16]:
        r = audit(
            f"sequence-closed-form-r{rounds}",
            1,
            attack="closed-form",
            observe="sequence",
            adversary="colluding",
            clients=8,
            clip_norm=1.0,
            noise_multiplier=1e-4,
            rounds=rounds,
            targets=max(4, targets // 2),
        )
        res["sequence"][rounds] = short(r)

    # 5. canary audits through the CLI ------------------------------------------------------------
    log("5. one-run canary audits")
    from dblocks.privacy.accounting import noise_for_epsilon

    canaries, steps = (300, 60) if q else (1000, 300)
    n_real = 1797 + canaries // 2  # the digits records plus the (expected) included canaries
    batch = 64
    z_rec = noise_for_epsilon(2.0, 1e-5, batch / n_real, steps)
    common = [
        "run",
        "--attack",
        "canary",
        "--observe",
        "clipped",
        "--block-dir",
        MODEL,
        "--block-index",
        1,
        "--canaries",
        canaries,
        "--dp-noise-multiplier",
        f"{z_rec:.4f}",
        "--dp-batch-size",
        batch,
        "--dp-steps",
        steps,
    ]
    code_ok, rec_ok, cmd_ok = cli(*common, "--out", AUDITS / "canary-record-correct")
    with opacus_noise_scaled(0.0):
        code_nn, rec_nn, cmd_nn = cli(*common, "--no-control", "--out", AUDITS / "canary-record-bug-no-noise")
    with opacus_clipping_disabled():
        code_nc, rec_nc, cmd_nc = cli(*common, "--no-control", "--out", AUDITS / "canary-record-bug-no-clipping")
    z_cli = noise_for_epsilon(2.0, 1e-5, 1.0, 1)
    ccommon = [
        "run",
        "--attack",
        "canary",
        "--canary-level",
        "client",
        "--observe",
        "release",
        "--block-dir",
        MODEL,
        "--block-index",
        1,
        "--clients",
        8,
        "--canaries",
        canaries,
        "--noise-multiplier",
        f"{z_cli:.4f}",
    ]
    ccode_ok, crec_ok, ccmd_ok = cli(*ccommon, "--out", AUDITS / "canary-client-correct")
    with central_noise_disabled():
        ccode_bug, crec_bug, ccmd_bug = cli(*ccommon, "--no-control", "--out", AUDITS / "canary-client-bug-no-noise")

    def canary_entry(code, rec, cmd):
        m = rec["metrics"]
        return {
            "command": cmd,
            "exit_code": code,
            "verdict": rec["verdict"],
            "epsilon_lower_bound": m["epsilon_lower_bound"],
            "accountant_epsilon": m["accountant_epsilon"],
            "delta": rec["config"]["delta"],
            "guesses": m["bound"]["guesses"],
            "correct": m["bound"]["correct"],
            "controls": rec["controls"],
            "sample_rate": rec["dp"].get("sample_rate"),
            "steps": rec["dp"].get("steps"),
            "noise_multiplier": rec["dp"].get("noise_multiplier", rec["secagg"].get("noise_multiplier")),
        }

    res["canary"] = {
        "record_correct": canary_entry(code_ok, rec_ok, cmd_ok),
        "record_bug_no_noise": canary_entry(
            code_nn, rec_nn, cmd_nn + "   # with Opacus' _generate_noise patched to zeros"
        ),
        "record_bug_no_clipping": canary_entry(
            code_nc, rec_nc, cmd_nc + "   # with ghost clipping's coefficient patched to 1"
        ),
        "client_correct": canary_entry(ccode_ok, crec_ok, ccmd_ok),
        "client_bug_no_noise": canary_entry(
            ccode_bug, crec_bug, ccmd_bug + "   # with add_central_noise patched to add nothing"
        ),
    }

    # 6. noise conformance of release files ------------------------------------------------------
    log("6. noise conformance")
    res["conformance"] = conformance_cases()

    # report + summary ---------------------------------------------------------------------------
    from dblocks.privacy.attacks.report import render_report

    n = render_report([AUDITS], RESULTS / "audit-report.html")
    log(f"report: {n} audits -> {RESULTS / 'audit-report.html'}")
    res["seconds"] = round(time.perf_counter() - t_start)
    (RESULTS / "audit.json").write_text(json.dumps(res, indent=2, default=str))

    correct = res["canary"]["record_correct"]
    caught = all(
        res["canary"][k]["exit_code"] == 1
        and res["canary"][k]["epsilon_lower_bound"] > res["canary"][k]["accountant_epsilon"]
        for k in ("record_bug_no_noise", "record_bug_no_clipping", "client_bug_no_noise")
    )
    keys = {
        "audits.positive_control_psnr": value(cf, "psnr"),
        "audits.dp_release_psnr_over_baseline": res["dp_release"]["worst_psnr_over_baseline"],
        "audits.planted_bug_caught": bool(caught),
        "audits.epsilon_lower_bound_correct_run": correct["epsilon_lower_bound"],
        "audits.epsilon_accountant_correct_run": correct["accountant_epsilon"],
    }
    if not q:
        from _common import update_summary

        update_summary(RESULTS, keys)
    log(f"summary: {json.dumps(keys)}  ({res['seconds']} s)")


def conformance_cases() -> dict:
    """Release files made by the federation's mechanism (correct) and three misconfigured aggregators."""
    from dblocks.privacy.attacks.runner import AuditSpec, client_updates, federation_release
    from dblocks.privacy.attacks.updates import BlockUpdate, UpdateMeta, release_meta, save_update

    t = target(1)
    keys = sorted(n for n, _ in t.block.named_parameters())
    spec = AuditSpec(attack="noise-conformance", observe="release", clients=8)
    real = client_updates(t, spec, t.data.x, t.data.y, seed=0)
    g = torch.Generator().manual_seed(0)
    base = UpdateMeta(block_index=1, noise_interval=tuple(t.info["training_interval"]), observation="release")
    meta = release_meta(base, 1.0, 8, 1.0)
    cases = {
        "correct": (federation_release(keys, 1.0, 1.0, 1)(real, g), meta),
        "noise_missing": (federation_release(keys, 1.0, 0.0, 1)(real, g), meta),
        "noise_doubled": (federation_release(keys, 1.0, 2.0, 1)(real, g), meta),
        # noise sized for 8 clients (std z C / 8) on the mean of the 6 that survived: too little for 6
        "dropout_reduced": (federation_release(keys, 1.0, 6 / 8, 1)(real[:6], g), release_meta(base, 1.0, 6, 1.0)),
    }
    out = {}
    for name, (delta, m) in cases.items():
        path = AUDITS / "files" / f"release-{name}.safetensors"
        save_update(path, BlockUpdate(delta, m))
        code, rec, cmd = cli(
            "run",
            "--attack",
            "noise-conformance",
            "--observe",
            "release",
            "--block-dir",
            MODEL,
            "--block-index",
            1,
            "--update",
            path,
            "--out",
            AUDITS / f"conformance-{name}",
        )
        met = rec["metrics"]
        out[name] = {
            "command": cmd,
            "exit_code": code,
            "verdict": rec["verdict"],
            "measured_std": met["measured_std"],
            "expected_std": met["expected_std"],
            "accepted": met["accepted_std"],
            "random_direction_std": met["random_direction_std"],
            "failures": met["failures"][:3],
        }
    return out


if __name__ == "__main__":
    sys.exit(main())
