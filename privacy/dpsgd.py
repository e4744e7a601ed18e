"""Record-level DP-SGD training of one block with Opacus.

Each step draws a Poisson sample (every record independently with probability q), computes each example's
gradient of its block loss, clips it to L2 norm C = `max_grad_norm`, sums, adds Gaussian noise
N(0, (noise_multiplier * C)^2 I) and divides by the expected batch size q N:

    g_t = (sum_{i in S_t} clip_C(grad l_i) + N(0, z^2 C^2 I)) / (q N)

Ghost clipping (Opacus' GradSampleModuleFastGradientClipping) computes per-example norms without
materialising per-example gradients; "hooks" materialises them. We assemble Opacus' module and optimizer
ourselves (instead of `PrivacyEngine.make_private`) so that the sampling rate used by the sampler is exactly
the q given to the accountant (Opacus' engine uses 1/len(loader), which differs from batch/N). An empty
Poisson sample still takes a step of pure noise, as the mechanism requires.

Randomness. Every draw of a run (the Poisson sample, the noise level sigma and the noisy input of the block loss,
the Gaussian noise of each step, also of an empty step) comes from ONE generator, the `generator` argument.
Amplification by subsampling, and so the accountant's epsilon, holds only if whoever sees the output cannot
predict these draws. A company's federated client passes `secret_generator()` (seeded from the OS's entropy,
never from anything the server sends). Without a generator the run is seeded from `cfg.seed`: reproducible,
for local training, benchmarks and audits, where no one needs to be kept from the draws. torch's global
generator is never used (in a fresh process its seed is a fixed constant).
"""

from __future__ import annotations

import math
import secrets
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from opacus import GradSampleModule
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping
from torch import nn

from dblocks.shared.training import TrainConfig, make_optimizer, per_sample_loss

from .accounting import MechanismStep, epsilon

PerExampleLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class DPConfig:
    """noise_multiplier z: noise std in units of max_grad_norm. max_grad_norm C: per-example L2 clip.
    batch_size: expected Poisson batch; the sampling rate is q = batch_size / N exactly (it may be fractional).
    steps: optimizer steps (None: the TrainConfig's epochs worth, ceil(epochs / q))."""

    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    batch_size: float = 64
    steps: int | None = None
    delta: float = 1e-5
    accountant: str = "prv"
    grad_sample_mode: Literal["ghost", "hooks"] = "ghost"

    def sample_rate(self, n: int) -> float:
        if n <= 0:
            raise ValueError("DP-SGD needs at least one training record")
        return min(1.0, self.batch_size / n)

    def num_steps(self, n: int, epochs: float) -> int:
        return self.steps if self.steps is not None else max(1, math.ceil(epochs / self.sample_rate(n)))


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


def secret_generator() -> torch.Generator:
    """A CPU generator seeded with 64 bits from the OS's entropy pool (`secrets`, i.e. os.urandom): its draws
    cannot be predicted by anyone who does not see its outputs. (torch's generator is a Mersenne Twister, not
    a cryptographic generator; its outputs are never released, only their effect on a clipped, noised sum.)"""
    return torch.Generator().manual_seed(secrets.randbits(64))


def trainable_names(block: nn.Module, which: str = "all") -> list[str]:
    """The names of the parameters of `block` that DP-SGD trains for the subset `which` (shared/fedmsg.py TRAINABLE):
    all; bias (every bias vector); head (the output head and its AdaLN modulation, head + head_ada); ada (the AdaLN
    modulation of every layer and of the head); input (the patch tokenizer and the label embedding's input
    layer); and unions with +. DP-SGD's noise has the
    same std on every trained coordinate, so its norm grows with sqrt(#trained); a subset keeps the signal of
    the directions that matter and drops the noise of the others."""

    def pick(name: str, group: str) -> bool:
        top = name.split(".")[0]
        if group == "all":
            return True
        if group == "bias":
            return name.endswith(".bias")
        if group == "head":
            return top in ("head", "head_ada")
        if group == "ada":
            return top == "head_ada" or ".ada." in name
        if group == "input":  # the patch tokenizer: what an input shift (another scanner) changes first
            return top in ("tokenizer", "label_in", "label_pos")
        raise ValueError(f"unknown trainable subset {group!r}")

    groups = which.split("+")
    names = [n for n, _ in block.named_parameters() if any(pick(n, g) for g in groups)]
    if not names:
        raise ValueError(f"trainable subset {which!r} selects no parameter of this block")
    return names


PER_EXAMPLE_GRADIENTS_MB = 64.0  # "hooks" while the per-example gradients of a step fit in this


def grad_sample_mode_for(
    block: nn.Module, which: str, expected_batch: float, memory_limited: bool = False
) -> Literal["ghost", "hooks"]:
    """Opacus' cheaper exact per-example clipping for training the subset `which` of `block` at batches of about
    `expected_batch`: "hooks" (per-example gradients, one backward pass, memory batch x trained values x 4 bytes)
    while those gradients take at most PER_EXAMPLE_GRADIENTS_MB, else "ghost" (per-example norms without the
    gradients: memory independent of the batch, a second backward pass). `memory_limited` (the company set a
    memory limit): always "ghost", whose memory does not grow with the Poisson batch. Both clip each example to C
    before the same noise: the mechanism and its epsilon are the same. `bench/dp_modes.py` (one thread, the demo's
    mnist-fed blocks, 15 steps at q 0.5 of 455 records, CPU seconds, hooks vs ghost): input+bias (5.8k values) 1.96
    vs 2.36 and 1.57 vs 2.77; all 97k values 2.47 vs 2.92 and 2.81 vs 3.63 (ghost chosen: 94 MB of per-example
    gradients)."""
    if memory_limited:
        return "ghost"
    keep = set(trainable_names(block, which))
    values = sum(p.numel() for n, p in block.named_parameters() if n in keep)
    return "hooks" if expected_batch * values * 4 / 2**20 <= PER_EXAMPLE_GRADIENTS_MB else "ghost"


def freeze_except(block: nn.Module, which: str = "all") -> int:
    """requires_grad only on `trainable_names(block, which)`; returns how many values are trained. Frozen
    parameters get no gradient, no DP noise and no optimizer step: their delta is exactly 0."""
    keep = set(trainable_names(block, which))
    for n, p in block.named_parameters():
        p.requires_grad_(n in keep)
    return sum(p.numel() for n, p in block.named_parameters() if n in keep)


def make_private_block(
    block: nn.Module,
    optimizer: torch.optim.Optimizer,
    dp: DPConfig,
    expected_batch: float,
    generator: torch.Generator | None = None,
):
    """Wrap `block` and `optimizer` in Opacus' per-example machinery: (module, dp_optimizer). The optimizer
    draws its Gaussian noise from `generator` (None: torch's global generator, Opacus' default)."""
    if dp.grad_sample_mode == "ghost":
        module = GradSampleModuleFastGradientClipping(
            block, batch_first=True, loss_reduction="mean", max_grad_norm=dp.max_grad_norm, use_ghost_clipping=True
        )
        opt = DPOptimizerFastGradientClipping(
            optimizer,
            noise_multiplier=dp.noise_multiplier,
            max_grad_norm=dp.max_grad_norm,
            expected_batch_size=expected_batch,
            loss_reduction="mean",
            generator=generator,
        )
    else:
        module = GradSampleModule(block, batch_first=True, loss_reduction="mean")
        opt = DPOptimizer(
            optimizer,
            noise_multiplier=dp.noise_multiplier,
            max_grad_norm=dp.max_grad_norm,
            expected_batch_size=expected_batch,
            loss_reduction="mean",
            generator=generator,
        )
    return module, opt


def train_block_dp(
    block: nn.Module,
    block_index: int,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    dp: DPConfig,
    progress: Callable[[int, int, float], None] | None = None,
    loss_fn: PerExampleLoss | None = None,
    generator: torch.Generator | None = None,
) -> DPReport:
    """Train `block` in place with DP-SGD on (x, y); progress(step, total, smoothed loss) after each step.

    `generator` is the source of every random draw (see the module docstring): a company passes
    `secret_generator()`; None seeds one from `cfg.seed` (reproducible local runs).

    `loss_fn(module, xb, yb, generator)` gives one loss per example of the batch, computed through `module`
    (the Opacus-wrapped block); default: the DiffusionBlocks loss of block `block_index` (`per_sample_loss`).
    Privacy audits pass their own to route canary examples through the same sampler, clipping and noise."""
    n = len(x)
    q, total = dp.sample_rate(n), dp.num_steps(n, cfg.epochs)
    g = generator if generator is not None else torch.Generator().manual_seed(cfg.seed)
    block.train()
    opt, sched = make_optimizer(block, cfg, total)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "secure RNG off": stated in docs, not per call
        module, dp_opt = make_private_block(block, opt, dp, q * n, generator=g)
    t0, ema = time.perf_counter(), float("nan")
    for step in range(1, total + 1):
        idx = (torch.rand(n, generator=g) < q).nonzero().flatten()  # Poisson sample with rate q
        dp_opt.zero_grad(set_to_none=True)
        if len(idx) == 0:
            _noise_only_step(block, dp_opt, dp, q * n, g)
        else:
            if loss_fn is None:
                losses = per_sample_loss(
                    block,
                    block_index,
                    x[idx],
                    y[idx],
                    generator=g,
                    weighting=cfg.classifier_weighting,
                    label_dropout=cfg.label_dropout,
                    forward=module,
                )
            else:
                losses = loss_fn(module, x[idx], y[idx], g)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "full backward hook firing ... no inputs require gradients"
                if dp.grad_sample_mode == "ghost":
                    DPTensorFastGradientClipping(module, dp_opt, losses, "mean").backward()
                else:
                    losses.mean().backward()
            dp_opt.step()
            ema = losses.mean().item() if math.isnan(ema) else 0.95 * ema + 0.05 * losses.mean().item()
        sched.step()
        if progress:
            progress(step, total, ema)
    block.eval()
    module._close()  # remove Opacus hooks: the block is a plain module again
    eps = epsilon([MechanismStep(dp.noise_multiplier, q, total)], dp.delta, dp.accountant)
    return DPReport(
        eps, dp.delta, dp.noise_multiplier, dp.max_grad_norm, q, total, dp.accountant, n, ema, time.perf_counter() - t0
    )


def _noise_only_step(block: nn.Module, dp_opt, dp: DPConfig, expected_batch: float, g: torch.Generator) -> None:
    """An empty Poisson sample: the update is the noise alone, N(0, (z C)^2) / (q N), drawn from `g`."""
    for p in block.parameters():
        if p.requires_grad:
            p.grad = torch.normal(0.0, dp.noise_multiplier * dp.max_grad_norm, p.shape, generator=g) / expected_batch
    dp_opt.original_optimizer.step()
