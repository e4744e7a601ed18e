"""One round at a company: rebuild the assigned block, train it with DP-SGD, return the clipped delta.

    weights (from the server) --verify against BlockSpec sha256--> block
    ledger.check(mechanism)   -- refuse before touching a record if the budget would be exceeded
    train_block_dp(block, local data, noise z, clip C_rec, sample rate q, steps)
    delta = trained - received parameters;  clip to L2 <= C (client-level);  refuse NaN/Inf
    ledger.record(...)        -- the release is counted before anything is sent
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from dblocks.privacy.accounting import MechanismStep
from dblocks.privacy.dpsgd import DPConfig, DPReport, train_block_dp
from dblocks.shared.data import Dataset
from dblocks.shared.fedmsg import BlockTask, arrays_to_state, clip_update, param_names
from dblocks.shared.training import TrainConfig
from dblocks.shared.wire import BlockSpec, pack_weights, sha256_hex, unpack_block

from .ledger import PrivacyLedger


@dataclass
class BlockUpdate:
    delta: list[np.ndarray]  # clipped, float32, in param_names order
    norm_before_clip: float
    report: DPReport
    epsilon_after: float  # the company's record-level epsilon after this update (all blocks composed)


def rebuild_block(task: BlockTask, arrays: list[np.ndarray]) -> torch.nn.Module:
    """The block the server sent, verified: its repacked weights must hash to the spec's sha256."""
    spec = BlockSpec.from_json(task.spec_json)
    if spec.block_index != task.block_index:
        raise ValueError(f"task is for block {task.block_index} but the spec describes block {spec.block_index}")
    from dblocks.shared.models import build_block

    template = build_block(spec.arch_config, spec.noise_schedule)
    state = arrays_to_state(template, arrays)
    template.load_state_dict(state)
    return unpack_block(spec, pack_weights(template))  # re-derives bytes, checks sha256, names, shapes, dtypes


def train_task(
    task: BlockTask,
    arrays: list[np.ndarray],
    data: Dataset,
    ledger: PrivacyLedger,
    progress: Callable[[int, int, float], None] | None = None,
) -> BlockUpdate:
    block = rebuild_block(task, arrays)
    if ledger.seen(task.run_id, task.round, task.block_index, task.attempt):
        raise RuntimeError(f"round {task.round} (attempt {task.attempt}) of block {task.block_index} was already trained "
                           "here; a replayed task is refused (it would spend privacy budget twice)")
    mechanism = MechanismStep(task.noise_multiplier, task.sample_rate, task.steps)
    epsilon_after = ledger.check(mechanism, task.delta)
    before = [p.detach().clone() for p in block.parameters()]
    # expected batch q N, so that DP-SGD samples with exactly the server's rate q
    dp = DPConfig(noise_multiplier=task.noise_multiplier, max_grad_norm=task.max_grad_norm,
                  batch_size=task.sample_rate * len(data), steps=task.steps, delta=task.delta, accountant=task.accountant)
    cfg = TrainConfig(epochs=1, lr=task.lr, weight_decay=task.weight_decay, warmup=0.0, grad_clip=math.inf, seed=task.seed)
    report = train_block_dp(block, task.block_index, data.x, data.y, cfg, dp, progress)
    delta = [(p.detach() - b).numpy() for p, b in zip(block.parameters(), before)]
    clipped, norm = clip_update(delta, task.update_clip)
    if report.steps != task.steps or not math.isclose(report.sample_rate, task.sample_rate, rel_tol=1e-9):
        raise RuntimeError(f"DP-SGD ran q={report.sample_rate}, {report.steps} steps; the task asked q={task.sample_rate}, {task.steps}")
    entry = ledger.record(task.run_id, task.round, task.block_index, task.attempt, mechanism, len(data), epsilon_after)
    _debug_record(task, clipped)
    return BlockUpdate(clipped, norm, report, entry.epsilon_after)


def _debug_record(task: BlockTask, delta: list[np.ndarray]) -> None:
    """Test-only: with DBLOCKS_TEST_DEBUG_DIR set, keep a copy of the clipped delta so an end-to-end test can
    check the secure aggregate against the plain mean. Never set in production (it would keep per-company
    updates on the company's own disk, nothing more — but it is not needed there)."""
    d = os.environ.get("DBLOCKS_TEST_DEBUG_DIR")
    if d:
        Path(d).mkdir(parents=True, exist_ok=True)
        name = f"r{task.round}-b{task.block_index}-a{task.attempt}-{os.getpid()}-{sha256_hex(delta[0].tobytes())[:8]}.npz"
        np.savez(Path(d) / name, *delta)
