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
import statistics
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, setup, update_summary, write_json  # noqa: E402

from dblocks.shared import text_ar  # noqa: E402
from dblocks.shared.text import TokenStream, decode, stdlib_corpus  # noqa: E402

# Config fields that only the DiffusionBlocks model reads: a baseline or teacher is the same model without them
DIFFUSION_ONLY: tuple[str, ...] = ("num_blocks", "target_scale", "embedding_seed", "p_mean", "p_std", "sigma_min")
DIFFUSION_ONLY += ("sigma_max", "gamma", "prev_token_input")
# Config fields that only sampling reads: no trained model depends on them
SAMPLING_ONLY: tuple[str, ...] = ("steps_per_block", "sampler", "temperature")


TEACHER_SEED = 1000  # the judge's seed, apart from the models' seeds 0, 1, ...


def add_model_args(ap: argparse.ArgumentParser, prompts_help: str) -> None:
    """The options that decide which cached models a run trains or loads (shared with bench/text_ar_sampler.py)."""
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None, help="updates per block and for the baseline (preset)")
    ap.add_argument("--teacher-steps", type=int, default=None, help="teacher updates (default 3 x steps)")
    ap.add_argument("--prompts", type=int, default=512, help=prompts_help)


def model_steps(args: argparse.Namespace) -> tuple[int, int]:
    """(updates per block and for the baseline, teacher updates) from `add_model_args`' options."""
    steps = args.steps or text_ar.Config().steps
    return steps, args.teacher_steps or 3 * steps


def _cache_path(kind: str, seed: int, cfg: text_ar.Config, steps: int, digest: str) -> Path:
    """Where a trained model is kept between runs (system temp folder), keyed by everything that decides it."""
    drop = SAMPLING_ONLY + (DIFFUSION_ONLY if kind != "diffusion_blocks" else ())
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in drop}
    key = hashlib.sha256(json.dumps([settings, steps, digest, kind, seed]).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"dblocks_text_ar_{kind}_{seed}_{key}.pt"


def _train_job(kind: str, seed: int, block: int | None, cfg_dict: dict, steps: int, path: str) -> dict:
    """Train one model (or one block of the DiffusionBlocks model: `block`) in a worker process and cache
    {state_dict, stats} at `path`. A block trained alone is the block `text_ar.train` would give (same windows and
    noise draws), so the blocks of a model train in parallel processes."""
    torch.set_num_threads(1)
    cfg = text_ar.Config(**cfg_dict)
    train = TokenStream(stdlib_corpus().train)
    model = text_ar.build(cfg, end_to_end=kind != "diffusion_blocks", seed=seed)
    t0 = time.perf_counter()
    if block is None:
        stats = text_ar.train(model, cfg, train, seed=seed, steps=steps)
        state = model.state_dict()
    else:
        assert isinstance(model, text_ar.ARDiffusionBlocks)
        final = text_ar.train_block(model, block, cfg, train, seed=seed, steps=steps)
        stats = {"seconds": time.perf_counter() - t0, "steps": steps, "final_loss": final}
        state = model.blocks[block].state_dict()
    torch.save({"state_dict": state, "stats": stats}, path)
    return {"kind": kind, "seed": seed, "block": block, "stats": stats}


def _assemble(cfg: text_ar.Config, seed: int, block_paths: list[Path], path: Path) -> None:
    """Join the separately trained blocks of one DiffusionBlocks model into one cached model file."""
    model = text_ar.build(cfg, end_to_end=False, seed=seed)
    assert isinstance(model, text_ar.ARDiffusionBlocks)
    parts = [torch.load(p) for p in block_paths]
    for block, part in zip(model.blocks, parts):
        block.load_state_dict(part["state_dict"])
    stats = {
        "seconds": sum(p["stats"]["seconds"] for p in parts),
        "block_seconds": [p["stats"]["seconds"] for p in parts],
        "block_steps": [p["stats"]["steps"] for p in parts],
        "final_loss": [p["stats"]["final_loss"] for p in parts],
    }
    torch.save({"state_dict": model.state_dict(), "stats": stats}, path)


def load_cached(cfg: text_ar.Config, kind: str, path: str | Path) -> tuple[torch.nn.Module, dict]:
    """(model, training stats) of a model this bench cached at `path`; kind: diffusion_blocks, end_to_end or
    teacher."""
    saved = torch.load(path)
    model = text_ar.build(cfg, end_to_end=kind != "diffusion_blocks", seed=0)
    model.load_state_dict(saved["state_dict"])
    return model, saved["stats"]


def _eval_job(kind: str, seed: int, cfg_dict: dict, path: str, teacher_path: str, prompts: int) -> tuple[dict, list]:
    """Evaluate one cached model under the cached teacher in a worker process: (metrics row, 4 samples if seed 0)."""
    torch.set_num_threads(1)
    cfg = text_ar.Config(**cfg_dict)
    test = TokenStream(stdlib_corpus().test)
    teacher, _ = load_cached(cfg, "teacher", teacher_path)
    assert isinstance(teacher, text_ar.CausalTransformer)
    model, stats = load_cached(cfg, kind, path)
    t1 = time.perf_counter()
    m = text_ar.evaluate(model, cfg, test, seed=seed, max_windows=prompts, teacher=teacher)
    row = {"kind": kind, "seed": seed, **m, "eval_seconds": time.perf_counter() - t1, "train": stats}
    samples = []
    if seed == 0:
        half = cfg.seq_len // 2
        p, _ = text_ar.eval_prompts(test, cfg.seq_len - half, half, 4)
        gen = text_ar.sample_batch(model, cfg, p, new_tokens=half, seed=seed)
        samples = [{"kind": kind, "prompt": decode(a), "continuation": decode(b)} for a, b in zip(p, gen)]
    return row, samples


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap, "test windows: prompts and held-out continuations")
    ap.add_argument("--jobs", type=int, default=3, help="training processes in parallel (one thread each)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.seeds < 1 or args.prompts < 20 or args.jobs < 1:
        print("error: --seeds >= 1, --prompts >= 20 and --jobs >= 1 are needed", file=sys.stderr)
        return 2

    env = setup(1)
    cfg = text_ar.Config()
    steps, teacher_steps = model_steps(args)
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
    tkey = ("teacher", TEACHER_SEED)
    paths = {tkey: _cache_path("teacher", TEACHER_SEED, cfg, teacher_steps, corpus.digest)}
    for s in range(args.seeds):
        for kind in ("diffusion_blocks", "end_to_end"):
            paths[(kind, s)] = _cache_path(kind, s, cfg, steps, corpus.digest)
    block_paths = {
        s: [paths[("diffusion_blocks", s)].with_suffix(f".block{b}.pt") for b in range(cfg.num_blocks)]
        for s in range(args.seeds)
    }
    # tasks: (priority, kind, seed, block); evaluations of a finished seed go before the remaining training
    queue: list[tuple] = []
    if not paths[tkey].exists():
        queue.append(("train", "teacher", TEACHER_SEED, None, teacher_steps, paths[tkey]))
    for s in range(args.seeds):
        if not paths[("diffusion_blocks", s)].exists():
            for b, bp in enumerate(block_paths[s]):
                if not bp.exists():
                    queue.append(("train", "diffusion_blocks", s, b, steps, bp))
        if not paths[("end_to_end", s)].exists():
            queue.append(("train", "end_to_end", s, None, steps, paths[("end_to_end", s)]))
    print(f"{len(queue)} training job(s); cached models in {tempfile.gettempdir()}", flush=True)

    teacher_state: dict = {}
    mauve_ref = float("nan")
    teacher_bpc = float("nan")
    rows: list[dict] = []
    samples: list[dict] = []
    evaluated: set[int] = set()

    def ready(s: int) -> bool:
        return paths[tkey].exists() and paths[("end_to_end", s)].exists() and paths[("diffusion_blocks", s)].exists()

    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        running: dict[Future, tuple] = {}
        while True:
            for s in range(args.seeds):  # assemble finished models, queue evaluations of finished seeds first
                if not paths[("diffusion_blocks", s)].exists() and all(p.exists() for p in block_paths[s]):
                    _assemble(cfg, s, block_paths[s], paths[("diffusion_blocks", s)])
                if s not in evaluated and ready(s):
                    evaluated.add(s)
                    for kind in ("end_to_end", "diffusion_blocks"):
                        queue.insert(0, ("eval", kind, s, None, 0, paths[(kind, s)]))
            while queue and len(running) < args.jobs:
                task = queue.pop(0)
                what, kind, s, b, n, path = task
                fut: Future
                if what == "train":
                    fut = pool.submit(_train_job, kind, s, b, cfg_dict, n, str(path))
                else:
                    fut = pool.submit(_eval_job, kind, s, cfg_dict, str(path), str(paths[tkey]), args.prompts)
                running[fut] = task
            if not running:
                break
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in done:
                task = running.pop(fut)
                r = fut.result()
                if task[0] == "train":
                    print(f"  trained {r['kind']} seed {r['seed']} block {r['block']}: {r['stats']}", flush=True)
                    continue
                row, sample_rows = r
                rows.append(row)
                samples += sample_rows
                print(
                    f"  {row['kind']} seed {row['seed']}: {json.dumps({k: v for k, v in row.items() if k != 'train'})}"
                )
                if not teacher_state:
                    teacher = text_ar.build(cfg, end_to_end=True, seed=0)
                    teacher_state = torch.load(paths[tkey])
                    teacher.load_state_dict(teacher_state["state_dict"])
                    assert isinstance(teacher, text_ar.CausalTransformer)
                    teacher.eval()
                    teacher_bpc = text_ar.evaluate(teacher, cfg, test, seed=0, max_windows=args.prompts)["bpc"]
                    # the ceiling of MAUVE at this sample size: two disjoint sets of held-out continuations
                    w = test.windows(cfg.seq_len, 2 * args.prompts)
                    ref_a, ref_b = w[: args.prompts], w[args.prompts :]
                    mauve_ref = text_ar.mauve_score(
                        text_ar.teacher_features(teacher, ref_a[:, :half], ref_a[:, half:]),
                        text_ar.teacher_features(teacher, ref_b[:, :half], ref_b[:, half:]),
                    )
                    print(
                        f"teacher: test bpc {teacher_bpc:.3f}; MAUVE held-out vs held-out {mauve_ref:.3f}", flush=True
                    )
                seeds_done = sorted({r["seed"] for r in rows if sum(q["seed"] == r["seed"] for q in rows) == 2})
                if seeds_done:
                    _report(args, cfg, env, corpus, steps, teacher_steps, teacher_bpc, mauve_ref, rows, samples, t0)
    return 0


def _report(args, cfg, env, corpus, steps, teacher_steps, teacher_bpc, mauve_ref, all_rows, samples, t0) -> None:
    """Write text_ar.json and the summary keys from the seeds whose two models are both evaluated."""
    half = cfg.seq_len // 2
    complete = sorted({r["seed"] for r in all_rows if sum(q["seed"] == r["seed"] for q in all_rows) == 2})
    rows = sorted((r for r in all_rows if r["seed"] in complete), key=lambda r: (r["seed"], r["kind"]))

    def mean(kind: str, key: str) -> float:
        return statistics.fmean(r[key] for r in rows if r["kind"] == kind)

    ratio = mean("diffusion_blocks", "gen_ppl") / mean("end_to_end", "gen_ppl")
    result = {
        "setup": {
            "config": dataclasses.asdict(cfg),
            "steps": steps,
            "teacher_steps": teacher_steps,
            "seeds": complete,
            "seeds_asked": args.seeds,
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
        f"(held-out vs held-out {mauve_ref:.3f}); seeds {complete}; {result['seconds']:.0f} s",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
