"""Record-level DP-SGD training of one block with Opacus.

Each step draws a Poisson sample (every record independently with probability q = batch_size / N), computes
each example's gradient of its block loss, clips it to L2 norm `max_grad_norm` (C), sums, adds Gaussian noise
N(0, (noise_multiplier C)^2 I) and divides by the expected batch size. Ghost clipping (Opacus
`grad_sample_mode="ghost"`) computes the per-sample norms without materialising per-sample gradients.
The result carries (epsilon, delta) from the accountant with sample rate and steps, never a bare epsilon.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Callable, Literal

import torch
from opacus import PrivacyEngine
from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dblocks.shared.training import TrainConfig, make_optimizer, per_sample_loss

from .accounting import MechanismStep, epsilon

PerExampleLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class DPConfig:
    """noise_multiplier: std of the added noise in units of max_grad_norm. max_grad_norm: per-example L2
    clip C. batch_size: expected Poisson batch (q = batch_size / N). steps: optimizer steps (None: epochs of
    the TrainConfig worth, i.e. epochs * N / batch_size)."""

    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    batch_size: int = 64
    steps: int | None = None
    delta: float = 1e-5
    accountant: str = "prv"
    grad_sample_mode: Literal["ghost", "hooks"] = "ghost"

    def sample_rate(self, n: int) -> float:
        return min(1.0, self.batch_size / n)

    def num_steps(self, n: int, epochs: float) -> int:
        return self.steps if self.steps is not None else max(1, math.ceil(epochs * n / self.batch_size))


@dataclass
class DPReport:
    """What a DP-SGD run spent: (epsilon, delta) by `accountant` for `steps` steps at `sample_rate`."""

    epsilon: float
    delta: float
    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    steps: int
    accountant: str
    examples: int
    final_loss: float
    seconds: float

    @property
    def mechanism(self) -> MechanismStep:
        return MechanismStep(self.noise_multiplier, self.sample_rate, self.steps)

    def to_dict(self) -> dict:
        return asdict(self)


def train_block_dp(
    block: nn.Module,
    block_index: int,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    dp: DPConfig,
    progress: Callable[[int, int, float, float], None] | None = None,
    loss_fn: PerExampleLoss | None = None,
) -> DPReport:
    """Train `block` in place with DP-SGD on (x, y); progress(step, total, loss, epsilon_so_far).

    `loss_fn(module, xb, yb, generator)` gives one loss per example of the batch, computed through `module`
    (the Opacus-wrapped block); default: the DiffusionBlocks loss of block `block_index` (`per_sample_loss`).
    Privacy audits pass their own to route canary examples through the same sampler, clipping and noise."""
    n = len(x)
    q, total = dp.sample_rate(n), dp.num_steps(n, cfg.epochs)
    g = torch.Generator().manual_seed(cfg.seed)
    block.train()
    opt, sched = make_optimizer(block, cfg, total)
    loader = DataLoader(TensorDataset(x, y), batch_size=dp.batch_size, generator=g)
    engine = PrivacyEngine(accountant=dp.accountant)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # secure_mode / RNG warnings: stated in docs/privacy, not per call
        private = engine.make_private(
            module=block, optimizer=opt, data_loader=loader, noise_multiplier=dp.noise_multiplier,
            max_grad_norm=dp.max_grad_norm, poisson_sampling=True, grad_sample_mode=dp.grad_sample_mode,
            criterion=nn.CrossEntropyLoss(),  # required by the ghost-mode API; our loss is built below
        )
    module, dp_opt, loader = private[0], private[1], private[-1]
    step, t0, ema = 0, time.perf_counter(), float("nan")
    while step < total:
        for xb, yb in loader:
            if loss_fn is None:
                losses = per_sample_loss(block, block_index, xb, yb, generator=g, weighting=cfg.classifier_weighting,
                                         label_dropout=cfg.label_dropout, forward=module)
            else:
                losses = loss_fn(module, xb, yb, g)
            dp_opt.zero_grad(set_to_none=True)
            if dp.grad_sample_mode == "ghost":
                # ghost clipping: two backward passes packaged by Opacus; sum/expected batch = Opacus' "mean"
                DPTensorFastGradientClipping(module, dp_opt, losses, "mean").backward()
            else:
                (losses.sum() / max(len(xb), 1)).backward()
            dp_opt.step()
            sched.step()
            step += 1
            if len(xb):
                ema = losses.mean().item() if math.isnan(ema) else 0.95 * ema + 0.05 * losses.mean().item()
            if progress:
                progress(step, total, ema, engine.get_epsilon(dp.delta) if step % 20 == 0 or step == total else float("nan"))
            if step >= total:
                break
    block.eval()
    if hasattr(module, "_close"):
        module._close()  # remove Opacus hooks: the block goes back to being a plain module
    eps = epsilon([MechanismStep(dp.noise_multiplier, q, step)], dp.delta, dp.accountant)
    return DPReport(eps, dp.delta, dp.noise_multiplier, dp.max_grad_norm, q, step, dp.accountant, n, ema,
                    time.perf_counter() - t0)
