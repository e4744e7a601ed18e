"""Autoregressive DiffusionBlocks vs the end-to-end causal transformer on the stdlib corpus (issue #18, AR row).

Both models come from the text-ar preset (`shared.text_ar.Config()`: width, total layers, B, steps); each block and
the baseline get the same number of updates on windows drawn with the same seed. A TEACHER (a separate causal
transformer of the same width and depth, trained `--teacher-steps` updates on the same training split, cached in
the system temp folder by corpus digest and settings; never downloaded) judges continuations: for `--prompts`
test-split windows of seq_len bytes, the first half is the prompt and each model writes the second half
(DiffusionBlocks: `steps_per_block` Euler steps per block per byte; both draw the byte at temperature 1).

  gen_ppl  teacher perplexity per byte of the generated continuations given their prompts
  mauve    MAUVE (our sklearn implementation, shared/text_ar.py) between generated and held-out continuations on
           the teacher's mean hidden state over the continuation; `mauve_ref` compares two disjoint sets of
           held-out continuations (the ceiling at this sample size)

Summary keys: text.ar_genppl_ratio (mean DiffusionBlocks gen_ppl / mean end-to-end gen_ppl over seeds; bar <= 1.10),
text.ar_mauve, text.ar_mauve_e2e (means over seeds).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/text_ar.py --seeds 3 --jobs 3
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, setup, update_summary, write_json  # noqa: E402

from dblocks.shared import text_ar  # noqa: E402
from dblocks.shared.text import TokenStream, decode, stdlib_corpus  # noqa: E402

# Config fields that only the DiffusionBlocks model reads: a baseline or teacher is the same model without them
DIFFUSION_ONLY = ("num_blocks", "target_scale", "embedding_seed", "p_mean", "p_std", "sigma_min", "sigma_max", "gamma")
DIFFUSION_ONLY += ("steps_per_block", "sampler", "temperature")


def _cache_path(kind: str, seed: int, cfg: text_ar.Config, steps: int, digest: str) -> Path:
    """Where a trained model is kept between runs (system temp folder), keyed by everything that decides it."""
    settings = dataclasses.asdict(cfg)
    if kind != "diffusion_blocks":
        settings = {k: v for k, v in settings.items() if k not in DIFFUSION_ONLY}
    key = hashlib.sha256(json.dumps([settings, steps, digest, kind, seed]).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"dblocks_text_ar_{kind}_{seed}_{key}.pt"


def _train_job(kind: str, seed: int, cfg_dict: dict, steps: int, path: str) -> dict:
    """Train one model in a worker process and cache {state_dict, stats} at `path` (reused by later runs)."""
    torch.set_num_threads(1)
    cfg = text_ar.Config(**cfg_dict)
    train = TokenStream(stdlib_corpus().train)
    model = text_ar.build(cfg, end_to_end=kind != "diffusion_blocks", seed=seed)
    stats = text_ar.train(model, cfg, train, seed=seed, steps=steps)
    torch.save({"state_dict": model.state_dict(), "stats": stats}, path)
    return {"kind": kind, "seed": seed, "stats": stats}


def _eval_job(kind: str, seed: int, cfg_dict: dict, path: str, teacher_path: str, prompts: int) -> tuple[dict, list]:
    """Evaluate one cached model under the cached teacher in a worker process: (metrics row, 4 samples if seed 0)."""
    torch.set_num_threads(1)
    cfg = text_ar.Config(**cfg_dict)
    test = TokenStream(stdlib_corpus().test)
    teacher = text_ar.build(cfg, end_to_end=True, seed=0)
    teacher.load_state_dict(torch.load(teacher_path)["state_dict"])
    assert isinstance(teacher, text_ar.CausalTransformer)
    saved = torch.load(path)
    model = text_ar.build(cfg, end_to_end=kind == "end_to_end", seed=seed)
    model.load_state_dict(saved["state_dict"])
    t1 = time.perf_counter()
    m = text_ar.evaluate(model, cfg, test, seed=seed, max_windows=prompts, teacher=teacher)
    row = {"kind": kind, "seed": seed, **m, "eval_seconds": time.perf_counter() - t1, "train": saved["stats"]}
    samples = []
    if seed == 0:
        half = cfg.seq_len // 2
        p, _ = text_ar.eval_prompts(test, cfg.seq_len - half, half, 4)
        gen = text_ar.sample_batch(model, cfg, p, new_tokens=half, seed=seed)
        samples = [{"kind": kind, "prompt": decode(a), "continuation": decode(b)} for a, b in zip(p, gen)]
    return row, samples


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None, help="updates per block and for the baseline (preset)")
    ap.add_argument("--teacher-steps", type=int, default=None, help="teacher updates (default 3 x steps)")
    ap.add_argument("--prompts", type=int, default=128, help="test windows: prompts and held-out continuations")
    ap.add_argument("--jobs", type=int, default=3, help="training processes in parallel (one thread each)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.seeds < 1 or args.prompts < 20 or args.jobs < 1:
        print("error: --seeds >= 1, --prompts >= 20 and --jobs >= 1 are needed", file=sys.stderr)
        return 2

    env = setup(1)
    cfg = text_ar.Config()
    steps = args.steps or cfg.steps
    teacher_steps = args.teacher_steps or 3 * steps
    corpus = stdlib_corpus()
    test = TokenStream(corpus.test)
    half = cfg.seq_len // 2
    print(
        f"text-ar bench: {corpus.name} ({corpus.num_bytes / 1e6:.1f} MB, digest {corpus.digest}); preset "
        f"{dataclasses.asdict(cfg)}; steps {steps} per block and for the baseline, teacher {teacher_steps}; "
        f"{args.seeds} seed(s); {args.prompts} test prompts of {cfg.seq_len - half} bytes, continuations of {half}; "
        f"env {env}",
        flush=True,
    )
    cfg_dict = dataclasses.asdict(cfg)
    t0 = time.perf_counter()
    wanted = [("teacher", 1000, teacher_steps)]
    wanted += [(kind, s, steps) for s in range(args.seeds) for kind in ("diffusion_blocks", "end_to_end")]
    paths = {(k, s): _cache_path(k, s, cfg, n, corpus.digest) for k, s, n in wanted}
    todo = [(k, s, n) for k, s, n in wanted if not paths[(k, s)].exists()]
    print(f"training {len(todo)} model(s), {len(wanted) - len(todo)} cached in {tempfile.gettempdir()}", flush=True)
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(_train_job, k, s, cfg_dict, n, str(paths[(k, s)])) for k, s, n in todo]
        for f in futures:
            r = f.result()
            print(f"  trained {r['kind']} seed {r['seed']}: {r['stats']}", flush=True)
    teacher = text_ar.build(cfg, end_to_end=True, seed=0)
    teacher.load_state_dict(torch.load(paths[("teacher", 1000)])["state_dict"])
    assert isinstance(teacher, text_ar.CausalTransformer)
    teacher.eval()
    teacher_bpc = text_ar.evaluate(teacher, cfg, test, seed=0, max_windows=args.prompts)["bpc"]
    print(f"teacher ({paths[('teacher', 1000)].name}): test bpc {teacher_bpc:.3f}", flush=True)

    # the ceiling of MAUVE at this sample size: two disjoint sets of held-out continuations
    w = test.windows(cfg.seq_len, 2 * args.prompts)
    ref_a, ref_b = w[: args.prompts], w[args.prompts :]
    mauve_ref = text_ar.mauve_score(
        text_ar.teacher_features(teacher, ref_a[:, :half], ref_a[:, half:]),
        text_ar.teacher_features(teacher, ref_b[:, :half], ref_b[:, half:]),
    )
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        evals = [
            pool.submit(_eval_job, k, s, cfg_dict, str(paths[(k, s)]), str(paths[("teacher", 1000)]), args.prompts)
            for s in range(args.seeds)
            for k in ("diffusion_blocks", "end_to_end")
        ]
        done = [f.result() for f in evals]
    rows, samples = [], []
    for row, sample_rows in done:
        rows.append(row)
        samples += sample_rows
        print(f"  {row['kind']} seed {row['seed']}: {json.dumps({k: v for k, v in row.items() if k != 'train'})}")

    def mean(kind: str, key: str) -> float:
        return statistics.fmean(r[key] for r in rows if r["kind"] == kind)

    ratio = mean("diffusion_blocks", "gen_ppl") / mean("end_to_end", "gen_ppl")
    result = {
        "setup": {
            "config": cfg_dict,
            "steps": steps,
            "teacher_steps": teacher_steps,
            "seeds": args.seeds,
            "prompts": args.prompts,
            "prompt_bytes": cfg.seq_len - half,
            "continuation_bytes": half,
            "corpus": corpus.name,
            "corpus_digest": corpus.digest,
            "mauve": "shared/text_ar.py mauve_score (sklearn PCA 0.9 + KMeans n/10), teacher features",
            "env": env,
        },
        "teacher_test_bpc": teacher_bpc,
        "ref_ppl": rows[0]["ref_ppl"],
        "mauve_ref": mauve_ref,
        "rows": rows,
        "genppl_db": mean("diffusion_blocks", "gen_ppl"),
        "genppl_e2e": mean("end_to_end", "gen_ppl"),
        "genppl_ratio": ratio,
        "mauve_db": mean("diffusion_blocks", "mauve"),
        "mauve_e2e": mean("end_to_end", "mauve"),
        "e2e_test_bpc": mean("end_to_end", "bpc"),
        "samples": samples,
        "seconds": time.perf_counter() - t0,
    }
    write_json(args.out / "text_ar.json", result)
    update_summary(
        args.out,
        {
            "text.ar_genppl_ratio": round(ratio, 4),
            "text.ar_mauve": round(result["mauve_db"], 4),
            "text.ar_mauve_e2e": round(result["mauve_e2e"], 4),
        },
    )
    print(
        f"gen ppl DiffusionBlocks {result['genppl_db']:.3f} / end-to-end {result['genppl_e2e']:.3f} = {ratio:.3f} "
        f"(held-out {result['ref_ppl']:.3f}); MAUVE {result['mauve_db']:.3f} vs {result['mauve_e2e']:.3f} "
        f"(held-out vs held-out {mauve_ref:.3f}); {result['seconds']:.0f} s"
    )
    return 0 if math.isfinite(ratio) else 1


if __name__ == "__main__":
    sys.exit(main())
