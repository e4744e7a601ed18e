"""Local training: one DiffusionBlocks block on its own noise interval, or the end-to-end baseline.

A block's loss (DiffusionBlocks eq. 12) for a data pair (x, y) and sigma ~ p_sigma^(i) (the log-normal
restricted to block i's training interval):
  * classifier: z = E[y] + sigma eps; loss = w(sigma) CE(f(x, z, sigma), y)
  * generator:  z = x + sigma eps;    loss = lambda(sigma) mean_pixels (D(z, sigma, y') - x)^2, where y' is the
                label or, with probability `label_dropout`, the null label (classifier-free guidance).
`per_sample_loss` returns one loss per example so the same function drives plain training, Opacus DP-SGD
(per-sample clipping) and the leakage audits.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .models import DenoisingClassifier, as_block
from .schedule import NoiseSchedule

ClassifierWeighting = Literal["none", "edm", "snr"]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one block (or the end-to-end model).

    epochs: passes over the data (the paper matches layer updates: each block gets as many epochs as the
    end-to-end model, so both do L x epochs layer updates). lr: peak AdamW learning rate, reached after a
    linear warm-up over `warmup` of the steps, then cosine decay to 0. grad_clip: global L2 norm (the EDM
    weights reach ~1e5 at sigma_min; unclipped, one batch can blow up the block).
    classifier_weighting: "none" (plain CE), "edm" (lambda(sigma) CE as in the paper) or "snr"
    (min(lambda(sigma), 5)-style truncation is not used; see bench/accuracy.py for the comparison).
    """

    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: float = 0.05
    decay: bool = True  # cosine decay to 0 after warm-up; False: constant (a federated round; the server decays)
    grad_clip: float = 1.0
    label_dropout: float = 0.1
    classifier_weighting: ClassifierWeighting = "none"
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def classifier_weight(schedule: NoiseSchedule, sigma: torch.Tensor, weighting: ClassifierWeighting) -> torch.Tensor:
    if weighting == "none":
        return torch.ones_like(sigma)
    if weighting == "edm":
        return schedule.loss_weight(sigma)
    # "snr": lambda(sigma) normalised to 1 at sigma_data and capped at 5 (keeps low-noise samples from dominating)
    return (schedule.loss_weight(sigma) * schedule.sigma_data**2 / 2).clamp(max=5.0)


@dataclass
class BlockInputs:
    """What a block sees for a batch of records (x, y) at drawn noise levels.

    sigma [B]: noise levels (target units). z: the noisy target, E[y] + sigma eps [B, width] (classifier) or
    x + sigma eps, shaped like x (generator). label [B]: the label the block is conditioned on (generator: y or,
    after label dropout, the null label; classifier: y). Leakage audits build these with unknowns in place of
    the client's draws and differentiate `block_loss` through them."""

    x: torch.Tensor
    y: torch.Tensor
    sigma: torch.Tensor
    z: torch.Tensor
    label: torch.Tensor


def draw_block_inputs(
    block: nn.Module,
    block_index: int,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    label_dropout: float = 0.1,
) -> BlockInputs:
    """Draw sigma ~ p_sigma^(i), eps ~ N(0, I) (and the generator's label dropout), in that order from `generator`."""
    b = as_block(block)
    n = x.shape[0]
    sigma = b.schedule.sample_sigma(block_index, n, generator).to(x.device)
    if isinstance(b, DenoisingClassifier):
        eps = torch.randn(n, b.arch.width, generator=generator).to(x.device)
        return BlockInputs(x, y, sigma, b.class_emb[y] + sigma[:, None] * eps, y)
    eps = torch.randn(x.shape, generator=generator).to(x.device)
    drop = torch.rand(n, generator=generator).to(x.device) < label_dropout
    label = torch.where(drop, torch.full_like(y, b.null_label), y)
    return BlockInputs(x, y, sigma, x + sigma.view(-1, 1, 1, 1) * eps, label)


def block_loss(
    block: nn.Module,
    inputs: BlockInputs,
    *,
    weighting: ClassifierWeighting = "none",
    forward: Callable[..., torch.Tensor] | None = None,
) -> torch.Tensor:
    """Loss of each example [B] at the given inputs: w(sigma) CE(f(x, z, sigma), y) for a classifier,
    lambda(sigma) mean_pixels (D(z, sigma, label) - x)^2 for a generator."""
    b = as_block(block)
    forward = forward or b
    if isinstance(b, DenoisingClassifier):
        ce = F.cross_entropy(forward(inputs.x, inputs.z, inputs.sigma), inputs.y, reduction="none")
        return classifier_weight(b.schedule, inputs.sigma, weighting) * ce
    d = forward(inputs.z, inputs.sigma, inputs.label)
    return b.schedule.loss_weight(inputs.sigma) * (d - inputs.x).pow(2).flatten(1).mean(1)


def per_sample_loss(
    block: nn.Module,
    block_index: int,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    weighting: ClassifierWeighting = "none",
    label_dropout: float = 0.1,
    forward: Callable[..., torch.Tensor] | None = None,
) -> torch.Tensor:
    """Loss of each example [B] for block `block_index` at freshly drawn noise levels.

    `forward` runs the block (default: `block` itself; Opacus passes its wrapped module)."""
    inputs = draw_block_inputs(block, block_index, x, y, generator=generator, label_dropout=label_dropout)
    return block_loss(block, inputs, weighting=weighting, forward=forward)


def make_optimizer(module: nn.Module, cfg: TrainConfig, total_steps: int):
    """AdamW (no decay on biases and 1-d weights) with linear warm-up and cosine decay."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in module.named_parameters():
        (no_decay if p.ndim < 2 or name.endswith("bias") else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )
    warm = max(1, int(cfg.warmup * total_steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if not cfg.decay:
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total_steps - warm))))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def minibatches(n: int, batch_size: int, generator: torch.Generator):
    """Shuffled index batches covering all n examples once (the last batch may be smaller)."""
    perm = torch.randperm(n, generator=generator)
    for i in range(0, n, batch_size):
        yield perm[i : i + batch_size]


ProgressFn = Callable[[int, int, float], None]  # (step, total_steps, loss)


def _fit(
    module: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    progress: ProgressFn | None,
) -> dict:
    g = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = math.ceil(len(x) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    opt, sched = make_optimizer(module, cfg, total)
    module.train()
    step, t0, ema_loss = 0, time.perf_counter(), None
    for _ in range(cfg.epochs):
        for idx in minibatches(len(x), cfg.batch_size, g):
            loss = loss_fn(x[idx], y[idx], g).mean()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss.item()} at step {step}: lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(module.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            step += 1
            ema_loss = loss.item() if ema_loss is None else 0.95 * ema_loss + 0.05 * loss.item()
            if progress:
                progress(step, total, ema_loss)
    module.eval()
    return {"steps": step, "final_loss": ema_loss, "seconds": time.perf_counter() - t0}


def train_block(
    block: nn.Module,
    block_index: int,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    progress: ProgressFn | None = None,
) -> dict:
    """Train one block on (x, y) at its own noise levels; nothing else needs to be in memory."""

    def loss_fn(xb, yb, g):
        return per_sample_loss(
            block, block_index, xb, yb, generator=g, weighting=cfg.classifier_weighting, label_dropout=cfg.label_dropout
        )

    return _fit(block, loss_fn, x, y, cfg, progress)


def train_end_to_end_classifier(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, progress: ProgressFn | None = None
) -> dict:
    """Ordinary backprop through all layers with cross-entropy (the baseline)."""
    return _fit(model, lambda xb, yb, g: F.cross_entropy(model(xb), yb, reduction="none"), x, y, cfg, progress)
