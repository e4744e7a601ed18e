"""Peak training memory of one DiffusionBlocks block vs the end-to-end model (B=4, batch 256).

Rows: {classification (`mnist` preset, 28x28 ViT), generation (`mnist-gen` preset, 14x14 DiT)} x {plain AdamW,
Opacus DP-SGD with ghost clipping}. Each row compares training block 0 of a B=4 model (L/4 layers with its
own embeddings and head) with training the end-to-end model (all L layers: the `TransformerClassifier`
baseline for classification, the B=1 DiT for generation).

Two measurements per model, each in a fresh subprocess (one per model and row, so nothing is shared):
  (a) peak RSS growth: /proc/self/status VmHWM after `steps` training steps minus VmRSS just before the model
      is built (data, imports and torch's kernels are loaded and warmed by a throw-away step of a tiny model
      first, freed heap is trimmed, the peak is reset through /proc/self/clear_refs), with glibc's mmap
      threshold fixed at 64 KiB so that RSS follows live memory (glibc's default allocator reported as well);
  (b) torch's accounting of what training holds at its peak: parameters + gradients + optimizer state
      (AdamW: 2 moments per parameter) + activations saved for backward (every tensor the autograd graph
      packs, via torch.autograd.graph.saved_tensors_hooks, deduplicated by storage, parameters excluded;
      under Opacus also the layer inputs its hooks keep, same deduplication).
The ratio of a row is end-to-end / block; the bar is >= 3.0 in every row and measure (the limit is B = 4).

    flock /tmp/dblocks-heavy.lock .venv/bin/python bench/memory.py
    .venv/bin/python bench/memory.py --quick --out /tmp/mem       # < 1 min smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, setup, update_summary, write_json  # noqa: E402

TASKS = {"classification": "mnist", "generation": "mnist-gen"}


# ---------------------------------------------------------------------------------------------------
# worker: one model, one fresh process
# ---------------------------------------------------------------------------------------------------
def saved_tensor_counter(net):
    """(record, saved): under `torch.autograd.graph.saved_tensors_hooks(record, lambda t: t)`, `saved` maps each
    storage autograd keeps for backward to its bytes (deduplicated by storage; `net`'s parameters and buffers
    excluded). `record(t)` also counts a tensor kept elsewhere (Opacus' layer inputs)."""
    skip = {q.untyped_storage().data_ptr() for q in net.parameters()}
    skip |= {b.untyped_storage().data_ptr() for b in net.buffers()}
    saved: dict[int, int] = {}

    def record(t):
        s = t.untyped_storage()
        if s.data_ptr() not in skip:
            saved[s.data_ptr()] = s.nbytes()
        return t

    return record, saved


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(task: str, model: str, dp: bool, batch: int, steps: int, num_blocks: int, threads: int) -> dict:
    import ctypes
    import gc
    import warnings
    from dataclasses import replace

    import torch
    import torch.nn.functional as F
    from opacus import PrivacyEngine
    from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from dblocks.shared.models import TransformerClassifier, build_block, param_count
    from dblocks.shared.presets import get_preset
    from dblocks.shared.training import make_optimizer, per_sample_loss

    torch.set_num_threads(threads)
    p = get_preset(TASKS[task])
    train, _ = p.load_split()
    x, y = train.x[:batch].clone(), train.y[:batch].clone()
    del train
    gen = torch.Generator().manual_seed(0)

    def build(p):
        if model == "block":
            return build_block(p.block_arch(num_blocks), p.noise_schedule(num_blocks)), 0
        if p.kind == "generator":  # end-to-end generator: the same DiT, all layers, whole noise range
            return build_block(p.block_arch(1), p.noise_schedule(1)), 0
        return TransformerClassifier(p.arch.with_depth(p.total_layers)), None

    def make_step(p, net, block_index):
        """A training step closure for `net` (plain AdamW + clip, or Opacus ghost clipping)."""
        opt, _ = make_optimizer(net, p.train, 1000)
        fwd = net
        if dp:
            engine = PrivacyEngine(accountant="prv")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                private = engine.make_private(
                    module=net,
                    optimizer=opt,
                    data_loader=DataLoader(TensorDataset(x, y), batch_size=batch),
                    noise_multiplier=1.0,
                    max_grad_norm=1.0,
                    poisson_sampling=False,
                    grad_sample_mode="ghost",
                    criterion=nn.CrossEntropyLoss(),
                )
            fwd, opt = private[0], private[1]

        def losses():
            if block_index is None:
                return F.cross_entropy(fwd(x), y, reduction="none")
            return per_sample_loss(net, block_index, x, y, generator=gen, forward=fwd)

        def backward_and_step(loss_vec):
            opt.zero_grad(set_to_none=True)
            if dp:
                DPTensorFastGradientClipping(fwd, opt, loss_vec, "mean").backward()
            else:
                loss_vec.mean().backward()
                nn.utils.clip_grad_norm_(net.parameters(), p.train.grad_clip)
            opt.step()

        return losses, backward_and_step, opt

    # warm-up: one step of a tiny model of the same kind loads every kernel, autograd and Opacus code path
    tiny_preset = replace(p, arch=replace(p.arch, width=8, heads=2), total_layers=num_blocks)
    tiny, bi = build(tiny_preset)
    lf, bs, _ = make_step(tiny_preset, tiny, bi)
    bs(lf())
    del tiny, lf, bs
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so the model's memory shows up as growth

    # (a) peak RSS growth over `steps` steps of the real model
    base_kib = status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    t0 = time.perf_counter()
    net, block_index = build(p)
    losses, backward_and_step, opt = make_step(p, net, block_index)
    for _ in range(steps):
        backward_and_step(losses())
    peak_kib = status_kib("VmHWM")
    seconds = time.perf_counter() - t0

    # (b) torch's accounting at the peak of one more step: the forward's saved tensors and state
    params = list(net.parameters())
    record, saved = saved_tensor_counter(net)
    with torch.autograd.graph.saved_tensors_hooks(record, lambda t: t):
        loss_vec = losses()
    autograd_bytes = sum(saved.values())
    for m in net.modules():  # Opacus keeps every trainable layer's inputs for its norm computation
        for acts in getattr(m, "activations", []) or []:
            for t in acts:
                if isinstance(t, torch.Tensor):
                    record(t)
    activation_bytes = sum(saved.values())
    backward_and_step(loss_vec)
    param_bytes = sum(q.numel() * q.element_size() for q in params)
    grad_bytes = sum(q.grad.numel() * q.grad.element_size() for q in params if q.grad is not None)
    inner = getattr(opt, "original_optimizer", opt)
    state_bytes = sum(
        v.numel() * v.element_size() for st in inner.state.values() for v in st.values() if isinstance(v, torch.Tensor)
    )
    return {
        "task": task,
        "model": model,
        "opacus": dp,
        "batch": batch,
        "steps": steps,
        "layers": len(getattr(net, "layers", [])),
        "param_count": param_count(net),
        "rss_base_mib": base_kib / 1024,
        "rss_peak_mib": peak_kib / 1024,
        "rss_growth_mib": (peak_kib - base_kib) / 1024,
        "torch": {
            "params_mib": param_bytes / 2**20,
            "grads_mib": grad_bytes / 2**20,
            "optimizer_state_mib": state_bytes / 2**20,
            "saved_activations_mib": activation_bytes / 2**20,
            "autograd_saved_mib": autograd_bytes / 2**20,
            "total_mib": (param_bytes + grad_bytes + state_bytes + activation_bytes) / 2**20,
        },
        "seconds": seconds,
    }


# ---------------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------------
# glibc raises its mmap threshold dynamically, after which freed tensors stay in the heap and RSS keeps
# whatever the allocation order left behind; a fixed threshold returns every large tensor to the OS on free,
# so RSS follows live memory. The primary RSS measure uses the fixed threshold; glibc's default is reported too.
FIXED_MMAP = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def measure(task: str, model: str, dp: bool, args, malloc_env: dict) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        task,
        model,
        "dp" if dp else "plain",
        "--batch",
        str(args.batch),
        "--steps",
        str(args.steps),
        "--blocks",
        str(args.blocks),
        "--threads",
        str(args.threads),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    r = subprocess.run(
        cmd, capture_output=True, text=True, env={**env, **malloc_env, "OMP_NUM_THREADS": str(args.threads)}
    )
    if r.returncode != 0:
        raise RuntimeError(f"worker {task}/{model}/{'dp' if dp else 'plain'} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="batch 32, one step, classification only")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--worker", nargs=3, metavar=("TASK", "MODEL", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        task, model, mode = args.worker
        print(json.dumps(worker(task, model, mode == "dp", args.batch, args.steps, args.blocks, args.threads)))
        return {}
    tasks = list(TASKS)
    if args.quick:
        args.batch, args.steps, tasks = 32, 1, ["classification"]

    env = setup(args.threads)
    print(
        f"memory bench: B={args.blocks}, batch {args.batch}, {args.steps} steps per measurement, threads "
        f"{args.threads}; one fresh process per (task, model, mode)"
    )
    rows = []
    for task in tasks:
        for dp in (False, True):
            block, e2e = measure(task, "block", dp, args, FIXED_MMAP), measure(task, "end_to_end", dp, args, FIXED_MMAP)
            row = {
                "task": task,
                "preset": TASKS[task],
                "opacus_ghost": dp,
                "block": block,
                "end_to_end": e2e,
                "ratio_rss": e2e["rss_growth_mib"] / block["rss_growth_mib"],
                "ratio_torch": e2e["torch"]["total_mib"] / block["torch"]["total_mib"],
                "ratio_params_grads_adam": sum(
                    e2e["torch"][k] for k in ("params_mib", "grads_mib", "optimizer_state_mib")
                )
                / sum(block["torch"][k] for k in ("params_mib", "grads_mib", "optimizer_state_mib")),
                "ratio_saved_activations": e2e["torch"]["saved_activations_mib"]
                / block["torch"]["saved_activations_mib"],
            }
            if not args.quick:
                block_d, e2e_d = measure(task, "block", dp, args, {}), measure(task, "end_to_end", dp, args, {})
                row["glibc_default_malloc"] = {
                    "block_rss_growth_mib": block_d["rss_growth_mib"],
                    "end_to_end_rss_growth_mib": e2e_d["rss_growth_mib"],
                    "ratio_rss": e2e_d["rss_growth_mib"] / block_d["rss_growth_mib"],
                }
            rows.append(row)
            print(
                f"{task:14s} {'opacus-ghost' if dp else 'plain':12s} RSS growth block {block['rss_growth_mib']:8.1f} "
                f"MiB  e2e {e2e['rss_growth_mib']:8.1f} MiB  ratio {row['ratio_rss']:.2f} | torch block "
                f"{block['torch']['total_mib']:8.1f} MiB  e2e {e2e['torch']['total_mib']:8.1f} MiB  ratio "
                f"{row['ratio_torch']:.2f} (params+grads+adam {row['ratio_params_grads_adam']:.2f}, "
                f"activations {row['ratio_saved_activations']:.2f})",
                flush=True,
            )
    ratio_min = min(min(r["ratio_rss"], r["ratio_torch"]) for r in rows)
    out = {
        "setup": {
            "env": env,
            "quick": args.quick,
            "num_blocks": args.blocks,
            "batch": args.batch,
            "steps": args.steps,
            "malloc_env_primary": FIXED_MMAP,
            "ratio_min_over": "ratio_rss (fixed mmap threshold) and ratio_torch of every row",
            "command": "python bench/memory.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        },
        "rows": rows,
        "ratio_min": ratio_min,
        "bar": 3.0,
    }
    write_json(args.out / "memory.json", out)
    update_summary(args.out, {"core.memory_ratio_min": ratio_min})
    print(f"smallest ratio over all rows and both measures: {ratio_min:.2f} (bar 3.0)")
    return out


if __name__ == "__main__":
    main()
