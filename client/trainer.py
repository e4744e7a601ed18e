"""One round at a company: rebuild the assigned block, train it with DP-SGD, return the clipped delta.

    weights (from the server) --verify against BlockSpec sha256--> block
    task values checked (BlockTask), the block's training memory against --memory-limit
    ledger.reserve(mechanism)  -- under the ledger's lock: refuse a replay or a budget overrun, else reserve
    train_block_dp(block, local data, noise z, clip C_rec, sample rate q, steps, a secret generator)
    delta = trained - received parameters;  clip to L2 <= C (client-level);  refuse NaN/Inf
    ledger.settle(reservation) -- the release is counted before anything is sent

Randomness: the Poisson sample, the diffusion noise draws and the DP-SGD noise come from a generator seeded
from this machine's OS entropy (`secret_generator`). The task carries no seed: nothing the server chooses can
make the sample or the noise predictable, which the accountant's epsilon (amplification by subsampling) needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from dblocks.privacy.dpsgd import (
    DPConfig,
    DPReport,
    freeze_except,
    grad_sample_mode_for,
    secret_generator,
    train_block_dp,
)
from dblocks.privacy.mechanisms import clip_update
from dblocks.shared.data import Dataset
from dblocks.shared.fedmsg import BlockTask, arrays_to_state
from dblocks.shared.training import TrainConfig
from dblocks.shared.wire import BlockSpec, pack_weights, unpack_block

from .ledger import PrivacyLedger
from .memory import check_memory, training_memory


def read_company_data(
    path: str,
    task: BlockTask,
    *,
    label_column: str = "label",
    image_size: int | None = None,
    joined_with: list[str] | None = None,
) -> Dataset:
    """The company's file read through the run's data contract the task carries (shared/schema.py `RunData`):
    labels mapped to the run's class indices by name, features standardised with the run's statistics if any.
    A `DataError` (nothing used, nothing spent) for a label outside the run's list, or when the run's list is
    not the one the company joined with (`dbclient join --classes`). A task from an older server carries no
    contract: the file is read as it is (numeric labels are their own indices)."""
    from dblocks.shared.data import DataError, load_dataset
    from dblocks.shared.schema import RunData

    run = RunData.from_task(task.class_names, task.feature_stats)
    if run is None:
        if joined_with is not None:
            raise DataError("the server sent no class list, but this company joined with --classes: refused")
        return load_dataset(path, label_column=label_column, image_size=image_size)
    if joined_with is not None and run.class_names != joined_with:
        raise DataError(
            f"the run's class list {run.class_names[:10]} is not the one this company joined with "
            f"{joined_with[:10]} (dbclient join --classes): refused"
        )
    return run.load(path, label_column=label_column, image_size=image_size)


@dataclass
class BlockUpdate:
    delta: list[np.ndarray]  # clipped, float32, in param_names order
    norm_before_clip: float
    report: DPReport
    epsilon_after: float  # the company's record-level epsilon after this update (all blocks composed)


def split_flat(flat: np.ndarray, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """One flat array -> arrays of `shapes` in order; ValueError unless the sizes add up exactly."""
    flat = np.asarray(flat).ravel()
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    if sum(sizes) != flat.size:
        raise ValueError(f"the weights hold {flat.size} values, the block's {len(shapes)} tensors {sum(sizes)}")
    out, pos = [], 0
    for shape, n in zip(shapes, sizes):
        out.append(flat[pos : pos + n].reshape(shape))
        pos += n
    return out


def rebuild_block(task: BlockTask, arrays: list[np.ndarray]) -> torch.nn.Module:
    """The block the server sent, verified: its repacked weights must hash to the spec's sha256."""
    spec = BlockSpec.from_json(task.spec_json)
    if spec.block_index != task.block_index:
        raise ValueError(f"task is for block {task.block_index} but the spec describes block {spec.block_index}")
    from dblocks.shared.models import build_block

    template = build_block(spec.arch_config, spec.noise_schedule)
    shapes = [tuple(v.shape) for v in template.state_dict().values()]
    if len(arrays) == 1 and len(shapes) > 1:  # the server's one-array form (serverapp._upload_payload)
        arrays = split_flat(arrays[0], shapes)
    state = arrays_to_state(template, arrays)
    template.load_state_dict(state)
    return unpack_block(spec, pack_weights(template))  # re-derives bytes, checks sha256, names, shapes, dtypes


def train_task(
    task: BlockTask,
    arrays: list[np.ndarray],
    data: Dataset,
    ledger: PrivacyLedger,
    progress: Callable[[int, int, float], None] | None = None,
    memory_mb: float = math.inf,
    generator: torch.Generator | None = None,
) -> BlockUpdate:
    """Train the task's block on `data`. Refused (nothing used, nothing spent) on tampered weights, a block that
    needs more than `memory_mb` MB (MemoryLimitExceeded), a replay or a budget overrun.

    `generator`: None (the ClientApp) draws a secret one from OS entropy; a local benchmark that wants
    reproducible runs passes its own. Never derived from the task."""
    block = rebuild_block(task, arrays)
    # expected batch q N, so that DP-SGD samples with exactly the server's rate q
    dp = DPConfig(
        noise_multiplier=task.noise_multiplier,
        max_grad_norm=task.max_grad_norm,
        batch_size=task.sample_rate * len(data),
        steps=task.steps,
        delta=task.delta,
        accountant=task.accountant,
        grad_sample_mode=grad_sample_mode_for(
            block, task.trainable, task.sample_rate * len(data), memory_limited=math.isfinite(memory_mb)
        ),
    )
    if math.isfinite(memory_mb):
        check_memory(
            training_memory(block, task.block_index, data.x, data.y, task.sample_rate, dp.grad_sample_mode),
            memory_mb,
            task.block_index,
        )
    reservation = ledger.reserve(
        task.run_id, task.round, task.block_index, task.attempt, task.mechanism, task.delta, len(data)
    )
    # from here on the records are used: whatever happens, the reservation stays spent (see ledger.py)
    before = [p.detach().clone() for p in block.parameters()]
    freeze_except(block, task.trainable)  # the others keep the server's values: their delta is 0
    # constant lr within the round: the server schedules it over rounds (task.lr)
    cfg = TrainConfig(epochs=1, lr=task.lr, weight_decay=task.weight_decay, warmup=0.0, decay=False, grad_clip=math.inf)
    report = train_block_dp(
        block,
        task.block_index,
        data.x,
        data.y,
        cfg,
        dp,
        progress,
        generator=generator if generator is not None else secret_generator(),
    )
    delta = [(p.detach() - b).numpy() for p, b in zip(block.parameters(), before)]
    for p in block.parameters():
        p.requires_grad_(True)
    clipped, norm = clip_update(delta, task.update_clip)
    if report.steps != task.steps or not math.isclose(report.sample_rate, task.sample_rate, rel_tol=1e-9):
        raise RuntimeError(
            f"DP-SGD ran q={report.sample_rate}, {report.steps} steps; the task asked "
            f"q={task.sample_rate}, {task.steps}"
        )
    entry = ledger.settle(reservation)
    return BlockUpdate(clipped, norm, report, entry.epsilon_after)
