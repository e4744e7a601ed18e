"""Class-conditional generation on MNIST 5k at 14x14: DiffusionBlocks B=4 vs the end-to-end DiT.

Models: the `mnist-gen` preset (DiT, AdaLN-Zero, label dropout 10%), trained on the fixed 4000-image train
split. DiffusionBlocks: 4 blocks of L/4 layers, each trained E epochs on its own noise interval. End-to-end:
the same DiT with all L layers trained over the whole noise range for E epochs (a B = 1 model, matched layer
updates). Both sample with classifier-free guidance 2.0 and Euler on the same grid (the B = 4 model's block
grid: k CDF-spaced steps per block) from the same initial noise.

Metrics, in the 128-d feature space of a small CNN trained on the train split and then frozen
(bench/fd_classifier.py; sha256 and test accuracy recorded), each feature standardised with the train
split's mean and std (so KID's cubic kernel sees unit-scale inputs):
  * Frechet distance (FD) and KID of 1000 samples (100 per class) to the 4000 train images; the floor is the
    same distance for the 1000 real test images (what a perfect generator would score with this n);
  * class agreement: share of samples the CNN labels as the requested class.

    flock /tmp/dblocks-heavy.lock .venv/bin/python bench/generation.py     # full run
    .venv/bin/python bench/generation.py --quick --out /tmp/gen            # < 1 min smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from dblocks.shared.imaging import save_grid
from dblocks.shared.presets import get_preset
from dblocks.shared.sampler import generate
from dblocks.shared.wire import ModelManifest, load_blocks
from dblocks.shared.workflow import train_diffusion_blocks, train_end_to_end

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, setup, update_summary, write_json  # noqa: E402
from fd_classifier import Standardizer, embed, frechet_distance, kernel_inception_distance, load_or_train  # noqa: E402


def trained_model(name: str, work: Path, train_fn, expect: dict) -> tuple[Path, float, bool]:
    """Train into work/name unless a complete model with the same arch/train/schedule is already there.
    Returns (model dir, seconds of training, reused)."""
    d = work / name
    if (d / "model.json").exists():
        m = ModelManifest.load(d)
        blocks = m.noise_schedule.num_blocks
        if {k: getattr(m, k) for k in expect} == expect and all(f"block{i}" in m.metrics for i in range(blocks)):
            return d, float(sum(m.metrics[f"block{i}"]["seconds"] for i in range(blocks))), True
    t0 = time.perf_counter()
    train_fn(d)
    return d, time.perf_counter() - t0, False


@torch.no_grad()
def sample_model(
    model_dir: Path, grid: np.ndarray, labels: torch.Tensor, cfg_scale: float, seed: int, batch: int = 250
) -> tuple[torch.Tensor, float]:
    """Samples for `labels` on `grid`; the initial noise of sample j depends only on (seed, j)."""
    _, blocks = load_blocks(model_dir)
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    out = [
        generate(
            blocks,
            ModelManifest.load(model_dir).noise_schedule,
            labels[i : i + batch],
            grid,
            cfg_scale=cfg_scale,
            generator=g,
        )
        for i in range(0, len(labels), batch)
    ]
    return torch.cat(out).clamp(-1, 1), time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny run (256 images, 1 epoch, 50 samples) for smoke tests")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument(
        "--work",
        type=Path,
        default=Path("runs/bench-generation"),
        help="where the trained models go (reused when their settings match)",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=None, help="epochs per block and for the end-to-end model")
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--steps-per-block", default="4", help="comma list; the first is the headline")
    ap.add_argument("--cfg-scale", type=float, default=2.0)
    ap.add_argument("--samples-per-class", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    steps_list = [int(v) for v in args.steps_per_block.split(",")]

    env = setup(args.threads)
    p = get_preset("mnist-gen")
    arch = replace(p.arch, **({"width": args.width} if args.width else {}))
    cfg = replace(
        p.train,
        seed=args.seed,
        **{k: v for k, v in (("epochs", args.epochs), ("lr", args.lr), ("batch_size", args.batch_size)) if v},
    )
    train, test = p.load_split()
    if args.quick:
        train, test = train.subset(np.arange(256)), test.subset(np.arange(200))
        cfg = replace(cfg, epochs=args.epochs or 1)
        args.samples_per_class, steps_list = 5, [1]
        args.work = args.out / "gen-models"
    p = replace(p, arch=arch, train=cfg)
    sched = p.noise_schedule(args.blocks)
    labels = torch.arange(10).repeat_interleave(args.samples_per_class)
    print(
        f"generation bench: mnist-gen {p.image_size}x{p.image_size}, {len(train)} train / {len(test)} test, "
        f"L={p.total_layers}, width {arch.width}, patch {arch.patch_size}, epochs {cfg.epochs}, batch "
        f"{cfg.batch_size}, lr {cfg.lr}, label dropout {cfg.label_dropout}; B={args.blocks} vs end-to-end (B=1); "
        f"CFG {args.cfg_scale}, Euler, steps/block {steps_list}, {len(labels)} samples; threads {args.threads}"
    )

    # ---- the frozen feature network and the real-data floor ---------------------------------------
    cnn_path = args.out / "fd_classifier.safetensors"
    if args.quick and not cnn_path.exists():
        from fd_classifier import train_feature_cnn  # one epoch is enough to exercise the code path
        from safetensors.torch import save_file

        args.out.mkdir(parents=True, exist_ok=True)
        save_file(train_feature_cnn(train.x, train.y, epochs=1).state_dict(), str(cnn_path))
    t0 = time.perf_counter()
    cnn, cnn_sha, cnn_trained = load_or_train(cnn_path, train.x, train.y)
    f_train, _ = embed(cnn, train.x)
    f_test, pred_test = embed(cnn, test.x)
    unit = Standardizer(f_train)  # features in units of the train split's per-dimension std
    f_train, f_test = unit(f_train), unit(f_test)
    classifier = {
        "file": cnn_path.name,
        "sha256": cnn_sha,
        "trained_now": cnn_trained,
        "test_accuracy": float((pred_test == test.y.numpy()).mean()),
        "feature_dim": int(f_train.shape[1]),
        "seconds": time.perf_counter() - t0,
    }
    floor = {
        "fd": frechet_distance(f_test, f_train),
        "kid": kernel_inception_distance(f_test, f_train)[0],
        "class_agreement": classifier["test_accuracy"],
        "n": len(test),
    }
    print(
        f"feature CNN {cnn_sha[:12]}… test accuracy {classifier['test_accuracy']:.4f}; floor (real test vs train): "
        f"FD {floor['fd']:.3f}, KID {floor['kid']:.5f}"
    )

    # ---- the two models ---------------------------------------------------------------------------
    models = {
        "diffusion_blocks": (
            f"db-b{args.blocks}",
            lambda d: train_diffusion_blocks(p, sched, train, cfg, d),
            {"arch": asdict(p.block_arch(args.blocks)), "train": cfg.to_dict(), "schedule": sched.to_dict()},
        ),
        "end_to_end": (
            "e2e",
            lambda d: train_end_to_end(p, train, cfg, d),
            {"arch": asdict(p.block_arch(1)), "train": cfg.to_dict(), "schedule": p.noise_schedule(1).to_dict()},
        ),
    }
    results: dict = {}
    for name, (dirname, fn, expect) in models.items():
        model_dir, train_seconds, reused = trained_model(dirname, args.work, fn, expect)
        print(
            f"{name}: {'reused' if reused else 'trained'} {model_dir} ({train_seconds:.0f} s of training)", flush=True
        )
        per_steps = {}
        for k in steps_list:
            grid = sched.block_grid(k)
            x, secs = sample_model(model_dir, grid, labels, args.cfg_scale, args.seed)
            f_gen, pred = embed(cnn, x)
            f_gen = unit(f_gen)
            kid, kid_std = kernel_inception_distance(f_gen, f_train)
            per_steps[str(k)] = {
                "steps_total": len(grid) - 1,
                "fd": frechet_distance(f_gen, f_train),
                "kid": kid,
                "kid_std": kid_std,
                "class_agreement": float((pred == labels.numpy()).mean()),
                "sample_seconds": secs,
            }
            png = f"generation_{name}_k{k}.png"
            save_grid(
                x.view(10, args.samples_per_class, *x.shape[1:])[:, :10].reshape(-1, *x.shape[1:]),
                args.out / png,
                nrow=min(10, args.samples_per_class),
            )
            per_steps[str(k)]["grid_png"] = png
            r = per_steps[str(k)]
            print(
                f"  {k} steps/block ({r['steps_total']} Euler steps): FD {r['fd']:.3f}  KID {r['kid']:.5f}  "
                f"class agreement {r['class_agreement']:.3f}  ({secs:.0f} s sampling)",
                flush=True,
            )
        results[name] = {"train_seconds": train_seconds, "reused": reused, "by_steps_per_block": per_steps}

    k0 = str(steps_list[0])
    db, e2e = results["diffusion_blocks"]["by_steps_per_block"][k0], results["end_to_end"]["by_steps_per_block"][k0]
    headline = {
        "steps_per_block": steps_list[0],
        "fd_ratio": db["fd"] / e2e["fd"],
        "class_agreement_diffusion_blocks": db["class_agreement"],
        "class_agreement_end_to_end": e2e["class_agreement"],
        "bars": {"fd_ratio_max": 1.15, "class_agreement_min": 0.90},
    }
    out = {
        "setup": {
            "env": env,
            "quick": args.quick,
            "preset": "mnist-gen",
            "image_size": p.image_size,
            "train_examples": len(train),
            "test_examples": len(test),
            "total_layers": p.total_layers,
            "num_blocks": args.blocks,
            "arch": asdict(arch),
            "train": cfg.to_dict(),
            "schedule": sched.to_dict(),
            "cfg_scale": args.cfg_scale,
            "solver": "euler",
            "samples": len(labels),
            "samples_per_class": args.samples_per_class,
            "grid": "B=4 block grid (k CDF-spaced steps per block from inference_start) for both models",
            "inference_start": sched.inference_start,
            "reference_set": "train split features",
            "features": "128-d penultimate layer of the frozen CNN, standardised per dimension with train mean/std",
            "command": "python bench/generation.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        },
        "classifier": classifier,
        "floor_real_test_vs_train": floor,
        "models": results,
        "headline": headline,
    }
    write_json(args.out / "generation.json", out)
    update_summary(
        args.out,
        {
            "core.generation_fd_ratio": headline["fd_ratio"],
            "core.generation_class_agreement": headline["class_agreement_diffusion_blocks"],
        },
    )
    print(json.dumps(headline, indent=2))
    return out


if __name__ == "__main__":
    main()
