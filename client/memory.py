"""How much memory training one block takes, so that a company can refuse a block that does not fit its limit.

The estimate, in bytes, of one DP-SGD round of block b on N records at Poisson rate q (AdamW, Opacus):

    state       = 5 P             weights, gradients, AdamW's two moments, the trainer's copy of the received weights
    activations = 2 A B           A: bytes autograd saves per example in one forward (measured), x2: the backward
                                  holds the gradients of those activations beside them
    per-example = P B             only with grad_sample_mode="hooks" (per-example gradients materialised;
                                  ghost clipping, the default, keeps per-example norms only)

where P is the block's parameter bytes and B = qN + 4 sqrt(qN(1 - q)) the Poisson batch size that a step exceeds
with probability about 3e-5. A is measured by one forward of a probe batch of zeros shaped like one record
(torch.autograd.graph.saved_tensors_hooks, deduplicated by storage, parameters excluded): cheap, and it reads no
record. The estimate leaves out the interpreter, torch and the data set itself, which are there whatever block
the company trains; it is an estimate of what the block adds, not a bound on the process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

MB = 2**20
PROBE_BATCH = 2


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of one training round of a block (see the module docstring); `mb` is the total in MiB."""

    state_bytes: int
    activation_bytes_per_example: int
    batch: int
    total_bytes: int

    @property
    def mb(self) -> float:
        return self.total_bytes / MB


class MemoryLimitExceeded(RuntimeError):
    """The assigned block would need more memory than the company allows training to use (--memory-limit)."""


def poisson_batch_bound(expected: float, q: float) -> int:
    """qN + 4 sqrt(qN(1 - q)), rounded up: the size a Poisson(q) sample of N records rarely exceeds."""
    return max(1, math.ceil(expected + 4 * math.sqrt(max(0.0, expected * (1 - q)))))


def activation_bytes_per_example(
    block: nn.Module,
    block_index: int,
    record_shape: tuple[int, ...],
    record_dtype: torch.dtype,
    label_dtype: torch.dtype,
) -> int:
    """Bytes autograd saves for backward per example, from one forward of `PROBE_BATCH` all-zero records."""
    from dblocks.shared.training import block_loss, draw_block_inputs

    params = list(block.parameters())
    skip = {p.untyped_storage().data_ptr() for p in params} | {b.untyped_storage().data_ptr() for b in block.buffers()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in skip:
            saved[s.data_ptr()] = s.nbytes()
        return t

    x = torch.zeros((PROBE_BATCH, *record_shape), dtype=record_dtype)
    y = torch.zeros(PROBE_BATCH, dtype=label_dtype)
    was_training = block.training
    block.train()
    inputs = draw_block_inputs(block, block_index, x, y, generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        block_loss(block, inputs).sum()
    block.train(was_training)
    return math.ceil(sum(saved.values()) / PROBE_BATCH)


def training_memory(
    block: nn.Module,
    block_index: int,
    x: torch.Tensor,
    y: torch.Tensor,
    sample_rate: float,
    grad_sample_mode: str = "ghost",
) -> MemoryEstimate:
    """The estimate of the module docstring for training `block` on the records (x, y) at Poisson rate
    `sample_rate`. Only the shapes and dtypes of x and y are used, never their values."""
    p = sum(t.numel() * t.element_size() for t in block.parameters())
    records = len(x)
    a = activation_bytes_per_example(block, block_index, tuple(x.shape[1:]), x.dtype, y.dtype)
    batch = poisson_batch_bound(sample_rate * records, sample_rate)
    state = 5 * p
    total = state + 2 * a * batch + (p * batch if grad_sample_mode == "hooks" else 0)
    return MemoryEstimate(state, a, batch, total)


def check_memory(estimate: MemoryEstimate, limit_mb: float, block_index: int) -> None:
    """Raise MemoryLimitExceeded when `estimate` is over `limit_mb` (0 or inf: no limit)."""
    if limit_mb and math.isfinite(limit_mb) and estimate.mb > limit_mb:
        raise MemoryLimitExceeded(
            f"block {block_index} needs about {estimate.mb:.1f} MB to train (a Poisson batch of up to {estimate.batch} "
            f"records) but this company allows {limit_mb:g} MB (--memory-limit); the task is refused before any record "
            "is used or anything is spent. Raise --memory-limit, or ask the operator for smaller blocks or a lower "
            "sample rate."
        )
