"""Masked diffusion LM on the Python stdlib corpus: DiffusionBlocks (B = 3) vs the end-to-end baseline.

Setup (the `text-mdm` preset, shared/text_mdm.py, unless overridden): byte-level MD4-style absorbing-state
diffusion, linear alpha(t) = 1 - t, 6 layers in total (3 blocks of 2 layers, each with its own embeddings and
head, owning equal drops in alpha) vs one 6-layer model trained on all t. Every parameter gets the same number
of AdamW updates (`--steps`) of the same batch size and learning-rate schedule; the corpus's train split feeds
both. BPC = the ELBO in bits per byte on the first `--windows` windows of the test split (and the validation
split), with the same stratified mask rates and masks for every model. Seeds vary initialisation, batches
and masks during training; the evaluation masks are fixed (seed 0).

Memory (`text.memory_ratio`): like bench/memory.py, each model is measured in a fresh process (a throw-away
step of a tiny model loads the kernels first, freed heap is trimmed, VmHWM reset via /proc/self/clear_refs,
glibc's mmap threshold fixed at 64 KiB so RSS follows live memory): peak RSS growth over `--mem-steps`
training steps of the end-to-end model vs of one block (block 0; the three blocks have the same structure and
cost), and torch's own accounting (params + grads + AdamW state + tensors saved for backward).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/text_mdm.py              # 3 seeds, the preset
    .venv/bin/python bench/text_mdm.py --quick --out /tmp/tm                       # smoke run, ~1 min
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, setup, update_summary, write_json  # noqa: E402

PROMPTS = ("def ", "import os\n", "    return ")
FIXED_MMAP = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def memory_worker(which: str, cfg_json: str, steps: int, threads: int) -> dict:
    """Peak memory of training `which` (end_to_end | block) for `steps` steps, in this fresh process."""
    import ctypes
    import gc

    import numpy as np
    import torch
    from memory import saved_tensor_counter, status_kib

    from dblocks.shared import text_mdm as M
    from dblocks.shared.text import TokenStream, stdlib_corpus

    torch.set_num_threads(threads)
    cfg = M.Config(**json.loads(cfg_json))
    stream = TokenStream(stdlib_corpus().train)
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    batches = [stream.batch(rng, cfg.batch_size, cfg.seq_len) for _ in range(steps + 1)]
    del stream
    e2e = which == "end_to_end"

    def run(c: M.Config, n: int, batch_list) -> tuple[torch.nn.Module, M.MaskedDiffusionLM, torch.optim.Optimizer]:
        model = M.build(c, end_to_end=e2e, seed=0)
        if not e2e:  # only block 0 exists in memory while it trains
            model.denoisers = torch.nn.ModuleList([model.denoisers[0]])
        net = model.denoisers[0]
        opt = M.make_optimizer(net, c)
        for b in batch_list[:n]:
            loss = M.block_loss(model, c, 0, b, gen).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return net, model, opt

    tiny = replace(cfg, width=16, heads=2)
    run(tiny, 1, batches)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    base = status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    net, model, opt = run(cfg, steps, batches)
    peak = status_kib("VmHWM")

    params = list(net.parameters())
    record, saved = saved_tensor_counter(net)
    with torch.autograd.graph.saved_tensors_hooks(record, lambda t: t):
        loss = M.block_loss(model, cfg, 0, batches[-1], gen).mean()
    loss.backward()
    mib = 2**20
    param_b = sum(q.numel() * q.element_size() for q in params)
    grad_b = sum(q.grad.numel() * q.grad.element_size() for q in params if q.grad is not None)
    state_b = sum(v.numel() * v.element_size() for st in opt.state.values() for v in st.values() if torch.is_tensor(v))
    act_b = sum(saved.values())
    return {
        "model": which,
        "layers": len(net.layers),
        "param_count": sum(q.numel() for q in params),
        "rss_growth_mib": (peak - base) / 1024,
        "torch": {
            "params_mib": param_b / mib,
            "grads_mib": grad_b / mib,
            "optimizer_state_mib": state_b / mib,
            "saved_activations_mib": act_b / mib,
            "total_mib": (param_b + grad_b + state_b + act_b) / mib,
        },
    }


def train_and_score(
    cfg_dict: dict, seed: int, end_to_end: bool, windows: int, sample_tokens: int, threads: int
) -> tuple[dict, list[dict]]:
    """Train one model (a worker process), score it on the test and validation splits, sample if asked."""
    import torch

    from dblocks.shared import text_mdm as M
    from dblocks.shared.text import TokenStream, decode, encode, stdlib_corpus

    torch.set_num_threads(threads)
    cfg = M.Config(**cfg_dict)
    corpus = stdlib_corpus()
    name = "end_to_end" if end_to_end else f"diffusion_blocks_b{cfg.num_blocks}"
    model = M.build(cfg, end_to_end=end_to_end, seed=seed)
    stats = M.train(model, cfg, TokenStream(corpus.train), seed=seed)
    run = {
        "model": name,
        "seed": seed,
        "test": M.evaluate(model, cfg, TokenStream(corpus.test), seed=0, max_windows=windows),
        "val": M.evaluate(model, cfg, TokenStream(corpus.val), seed=0, max_windows=windows),
        "train_seconds": stats["seconds"],
        "blocks": stats["blocks"],
        "param_count": sum(p.numel() for p in model.parameters()),
    }
    samples = [
        {"prompt": p, "continuation": decode(M.sample(model, cfg, encode(p), new_tokens=sample_tokens, seed=0))}
        for p in (PROMPTS if sample_tokens else ())
    ]
    return run, samples


def measure_memory(cfg, steps: int, threads: int) -> dict:
    rows = {}
    for which in ("block", "end_to_end"):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-worker", which]
        cmd += ["--cfg-json", json.dumps(asdict(cfg)), "--mem-steps", str(steps), "--threads", str(threads)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        r = subprocess.run(cmd, capture_output=True, text=True, env={**env, **FIXED_MMAP})
        if r.returncode != 0:
            raise RuntimeError(f"memory worker {which} failed:\n{r.stderr[-3000:]}")
        rows[which] = json.loads(r.stdout.strip().splitlines()[-1])
    b, e = rows["block"], rows["end_to_end"]
    return {
        **rows,
        "ratio_rss": e["rss_growth_mib"] / b["rss_growth_mib"],
        "ratio_torch": e["torch"]["total_mib"] / b["torch"]["total_mib"],
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 seed, 30 steps, 8 windows (smoke run)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None, help="updates per parameter (default: the preset's)")
    ap.add_argument("--windows", type=int, default=96, help="held-out windows per split")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=2, help="models trained at once (one process each)")
    ap.add_argument("--mem-steps", type=int, default=3)
    ap.add_argument("--sample-tokens", type=int, default=48)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a Config field")
    ap.add_argument("--memory-only", action="store_true", help="only the memory measurement (no summary keys)")
    ap.add_argument("--memory-worker", choices=("block", "end_to_end"), help=argparse.SUPPRESS)
    ap.add_argument("--cfg-json", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_worker:
        print(json.dumps(memory_worker(args.memory_worker, args.cfg_json, args.mem_steps, args.threads)))
        return {}

    import numpy as np
    import torch

    from dblocks.shared import text_mdm as M
    from dblocks.shared.text import TokenStream, stdlib_corpus

    env = setup(args.threads)
    cfg = M.Config()
    if args.steps:
        cfg = replace(cfg, steps=args.steps)
    for item in args.set:
        key, value = item.split("=", 1)
        cfg = replace(cfg, **{key: type(getattr(cfg, key))(value)})
    if args.memory_only:
        mem = measure_memory(cfg, args.mem_steps, args.threads)
        print(json.dumps({k: mem[k] for k in ("ratio_rss", "ratio_torch")}), asdict(cfg))
        return mem
    seeds = list(range(args.seeds))
    if args.quick:
        cfg, seeds, args.windows = replace(cfg, steps=30, warmup=5), [0], 8
    corpus = stdlib_corpus()
    train, val, test = (TokenStream(corpus.split(s)) for s in ("train", "val", "test"))  # sizes, for the banner
    print(
        f"text-mdm bench: corpus {corpus.name} ({corpus.num_bytes / 1e6:.1f} MB, digest {corpus.digest}, "
        f"{len(train) / 1e6:.2f}/{len(val) / 1e6:.2f}/{len(test) / 1e6:.2f} MB train/val/test bytes); "
        f"config {asdict(cfg)}; seeds {seeds}; {args.windows} held-out windows of {cfg.seq_len} bytes; "
        f"threads {args.threads}",
        flush=True,
    )
    jobs = [
        (asdict(cfg), seed, e2e, args.windows, args.sample_tokens if seed == seeds[-1] else 0, args.threads)
        for seed in seeds
        for e2e in (True, False)
    ]
    runs, samples = [], {}
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for run, run_samples in pool.map(train_and_score, *zip(*jobs, strict=True)):
            runs.append(run)
            if run_samples:
                samples[run["model"]] = run_samples
            ev_test, ev_val = run["test"], run["val"]
            print(
                f"seed {run['seed']} {run['model']:22s} test BPC {ev_test['bpc']:.3f} (se {ev_test['bpc_se']:.3f})  "
                f"val BPC {ev_val['bpc']:.3f}  train {run['train_seconds']:.0f} s",
                flush=True,
            )
            write_json(args.out / "text_mdm-partial.json", {"config": asdict(cfg), "runs": runs})  # if cut short
    by = {
        k: [r["test"]["bpc"] for r in runs if r["model"] == k]
        for k in ("end_to_end", f"diffusion_blocks_b{cfg.num_blocks}")
    }
    bpc_e2e, bpc_db = float(np.mean(by["end_to_end"])), float(np.mean(by[f"diffusion_blocks_b{cfg.num_blocks}"]))
    ratio = bpc_db / bpc_e2e
    print(f"test BPC mean over {len(seeds)} seed(s): blocks {bpc_db:.3f}  end-to-end {bpc_e2e:.3f}  ratio {ratio:.3f}")
    torch.set_num_threads(args.threads)
    mem = measure_memory(cfg, args.mem_steps, args.threads)
    mem_ratio = min(mem["ratio_rss"], mem["ratio_torch"])
    print(
        f"training peak memory: block {mem['block']['rss_growth_mib']:.1f} MiB RSS growth "
        f"({mem['block']['torch']['total_mib']:.1f} MiB torch), end-to-end {mem['end_to_end']['rss_growth_mib']:.1f} "
        f"MiB ({mem['end_to_end']['torch']['total_mib']:.1f} MiB); ratio RSS {mem['ratio_rss']:.2f}, torch "
        f"{mem['ratio_torch']:.2f}"
    )
    for name, ss in samples.items():
        for s in ss:
            print(f"[{name}] {s['prompt']!r} -> {s['continuation']!r}")
    out = {
        "setup": {
            "env": env,
            "quick": args.quick,
            "config": asdict(cfg),
            "corpus": {"name": corpus.name, "license": corpus.license, "digest": corpus.digest},
            "seeds": seeds,
            "eval_windows": args.windows,
            "eval_mask_seed": 0,
            "matched_updates": "every parameter gets cfg.steps AdamW updates of cfg.batch_size windows",
            "memory": f"fresh process per model, {args.mem_steps} steps, {FIXED_MMAP}, block 0 of B",
            "command": "python bench/text_mdm.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        },
        "runs": runs,
        "bpc_test_mean": {"diffusion_blocks": bpc_db, "end_to_end": bpc_e2e},
        "bpc_ratio": ratio,
        "bpc_ratio_bar": 1.05,
        "memory": mem,
        "memory_ratio": mem_ratio,
        "memory_ratio_bar": 2.5,
        "samples": samples,
        "seconds": time.time() - time.mktime(time.strptime(env["date"], "%Y-%m-%d %H:%M:%S")),
    }
    write_json(args.out / ("text_mdm-quick.json" if args.quick else "text_mdm.json"), out)
    (args.out / "text_mdm-partial.json").unlink(missing_ok=True)
    if not args.quick:
        update_summary(
            args.out,
            {
                "text.mdm_bpc": round(bpc_db, 4),
                "text.mdm_bpc_e2e": round(bpc_e2e, 4),
                "text.mdm_bpc_ratio": round(ratio, 4),
                "text.memory_ratio": round(mem_ratio, 3),
            },
        )
    return out


if __name__ == "__main__":
    main()
