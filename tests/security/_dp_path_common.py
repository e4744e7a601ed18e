"""Shared set-up of the slice-A security tests (the company's DP path): a digits model of 2 blocks, a small
company data set, and block tasks as the server sends them (a flat config). The config carries a `seed`, as
the old server sent one: a client must not let it choose anything."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from dblocks.shared.fedmsg import BlockTask


@functools.cache
def digits_model():
    from dblocks.server.federation.model_state import GlobalModel
    from dblocks.shared.presets import get_preset

    p = get_preset("digits")
    return GlobalModel.initial(p, p.noise_schedule(2), seed=0)


@functools.cache
def company_data(n: int = 120):
    from dblocks.shared.data import load_builtin

    return load_builtin("digits").subset(np.arange(n))


def save_company_data(path: Path, n: int = 120) -> Path:
    from dblocks.shared.data import save_npz

    path.parent.mkdir(parents=True, exist_ok=True)
    save_npz(company_data(n), path)
    return path


def task_config(block: int = 1, **overrides) -> dict:
    """What the server sends for `block` (noise 1.0, q 0.1, 3 steps unless overridden), seed included."""
    spec_json = digits_model().blocks[block].spec.to_json()
    cfg = dict(
        run_id="sec",
        round=1,
        block_index=block,
        attempt=0,
        spec_json=spec_json,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        sample_rate=0.1,
        steps=3,
        delta=1e-5,
        accountant="rdp",
        lr=1e-3,
        weight_decay=0.0,
        update_clip=0.5,
        seed=1234,
    )
    cfg.update(overrides)
    return cfg


def task(block: int = 1, **overrides) -> BlockTask:
    return BlockTask.from_config(task_config(block, **overrides))


def arrays(block: int = 1) -> list[np.ndarray]:
    return digits_model().weights_arrays(block)
