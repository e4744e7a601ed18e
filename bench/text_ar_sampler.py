"""How many sampler steps the AR DiffusionBlocks model takes per block per byte, chosen on VALIDATION prompts.

The text-ar preset's `steps_per_block` and `sampler` change nothing in training, only how a byte is denoised at
generation time (DiffusionBlocks paper, Appendix D.2: 50 Euler steps per token). This script loads the models
`bench/text_ar.py` trained and cached (run that first, same --steps), writes continuations of the first
`--prompts` windows of the VALIDATION split (never the test split the headline row reports) with every setting
in `--settings`, and judges them under the same teacher as the headline row: generative perplexity (gen_ppl) and
MAUVE. The end-to-end baseline has no sampler setting; it is evaluated once per seed on the same prompts.
The choice rule: the lowest mean-over-seeds gen_ppl (the headline metric); the preset's default is then set to it
by hand, and bench/text_ar.py measures it once on the test split.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/text_ar_sampler.py --seeds 3 --jobs 2 --prompts 128 \\
        --settings euler:2 euler:4 euler:8 euler:12 ancestral:2 ancestral:4 ancestral:8 ancestral:12
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, setup, write_json  # noqa: E402
from text_ar import TEACHER_SEED, _cache_path, add_model_args, load_cached, model_steps  # noqa: E402

from dblocks.shared import text_ar  # noqa: E402
from dblocks.shared.text import TokenStream, stdlib_corpus  # noqa: E402


def _load(cfg: text_ar.Config, kind: str, seed: int, steps: int, digest: str) -> torch.nn.Module:
    path = _cache_path(kind, seed, cfg, steps, digest)
    if not path.exists():
        raise SystemExit(f"no cached {kind} model for seed {seed} at {path}: run bench/text_ar.py first")
    return load_cached(cfg, kind, path)[0]


def _eval_job(setting: str, seed: int, steps: int, teacher_steps: int, prompts: int) -> dict:
    """One (setting, seed) on the validation prompts; setting "e2e" is the baseline."""
    torch.set_num_threads(1)
    corpus = stdlib_corpus()
    base = text_ar.Config()
    teacher = _load(base, "teacher", TEACHER_SEED, teacher_steps, corpus.digest)
    if setting == "e2e":
        cfg, model = base, _load(base, "end_to_end", seed, steps, corpus.digest)
    else:
        sampler, n = setting.split(":")
        cfg = dataclasses.replace(base, sampler=sampler, steps_per_block=int(n))
        model = _load(cfg, "diffusion_blocks", seed, steps, corpus.digest)
    t0 = time.perf_counter()
    m = text_ar.evaluate(
        model,
        cfg,
        TokenStream(corpus.val),
        seed=seed,
        max_windows=prompts,
        teacher=teacher,  # type: ignore[arg-type]
    )
    return {
        "setting": setting,
        "seed": seed,
        "gen_ppl": m["gen_ppl"],
        "ref_ppl": m["ref_ppl"],
        "mauve": m["mauve"],
        "seconds": time.perf_counter() - t0,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap, "validation windows")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument(
        "--settings",
        nargs="+",
        default=["euler:2", "euler:4", "euler:8", "euler:12"],
        help="sampler:steps_per_block, sampler euler or ancestral",
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    for s in args.settings:
        kind, _, n = s.partition(":")
        if kind not in ("euler", "ancestral") or not n.isdigit() or int(n) < 1:
            ap.error(f"setting {s!r}: expected euler:N or ancestral:N with N >= 1")
    env = setup(1)
    steps, teacher_steps = model_steps(args)
    print(
        f"text-ar sampler choice on validation: {args.seeds} seed(s), {args.prompts} prompts, steps {steps}, "
        f"settings {args.settings}; env {env}",
        flush=True,
    )
    jobs = [(s, seed) for seed in range(args.seeds) for s in ["e2e", *args.settings]]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(_eval_job, s, seed, steps, teacher_steps, args.prompts) for s, seed in jobs]
        rows = []
        for f in futures:
            rows.append(f.result())
            r = rows[-1]
            print(
                f"  seed {r['seed']} {r['setting']}: gen_ppl {r['gen_ppl']:.2f} MAUVE {r['mauve']:.3f} "
                f"({r['seconds']:.0f} s)",
                flush=True,
            )

    def mean(setting: str, key: str) -> float:
        return statistics.fmean(r[key] for r in rows if r["setting"] == setting)

    e2e = mean("e2e", "gen_ppl")
    table = {
        s: {"gen_ppl": mean(s, "gen_ppl"), "ratio": mean(s, "gen_ppl") / e2e, "mauve": mean(s, "mauve")}
        for s in args.settings
    }
    best = min(table, key=lambda s: table[s]["gen_ppl"])
    for s, t in table.items():
        print(f"{s:>13}: gen_ppl {t['gen_ppl']:.2f} (ratio {t['ratio']:.3f}), MAUVE {t['mauve']:.3f}")
    print(f"end-to-end: gen_ppl {e2e:.2f}, MAUVE {mean('e2e', 'mauve'):.3f}; lowest gen_ppl: {best}")
    write_json(
        args.out / "text_ar_sampler.json",
        {
            "setup": {
                "split": "val",
                "seeds": args.seeds,
                "prompts": args.prompts,
                "steps": steps,
                "teacher_steps": teacher_steps,
                "env": env,
            },
            "rows": rows,
            "e2e": {"gen_ppl": e2e, "mauve": mean("e2e", "mauve")},
            "settings": table,
            "lowest_gen_ppl": best,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
