"""Inference: integrate the probability-flow ODE dz/dsigma = (z - D(z, sigma)) / sigma over a noise grid,
each step evaluated by the block that owns its sigma (DiffusionBlocks Algorithm 2).

Euler:  z_{j+1} = z_j + (s_{j+1} - s_j) d_j,  d_j = (z_j - D(z_j, s_j)) / s_j.
Heun:   adds the corrector z_{j+1} = z_j + (s_{j+1} - s_j) (d_j + d'_{j+1}) / 2 unless s_{j+1} = 0; the
        corrector evaluates D at s_{j+1}, which may belong to the next block (it is routed like any step).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from torch import nn

from .models import as_classifier_block, as_generator_block
from .schedule import NoiseSchedule

Solver = Literal["euler", "heun"]
Readout = Literal["last", "mean"]


def route(schedule: NoiseSchedule, grid: Sequence[float]) -> list[int]:
    """Block index for every step j < N of a grid (the final 0 is not a step)."""
    return [schedule.block_for_sigma(float(s)) for s in grid[:-1]]


def integrate(
    denoise: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor],
    schedule: NoiseSchedule,
    grid: np.ndarray,
    z: torch.Tensor,
    solver: Solver = "euler",
) -> torch.Tensor:
    """Run the ODE from z at grid[0] to grid[-1]; `denoise(block, z, sigma_vector)` returns D."""
    n = z.shape[0]
    for s, s_next in zip(grid[:-1], grid[1:]):
        s, s_next = float(s), float(s_next)
        d = (z - denoise(schedule.block_for_sigma(s), z, torch.full((n,), s))) / s
        z_next = z + (s_next - s) * d
        if solver == "heun" and s_next > 0:
            d2 = (z_next - denoise(schedule.block_for_sigma(s_next), z_next, torch.full((n,), s_next))) / s_next
            z_next = z + (s_next - s) * 0.5 * (d + d2)
        z = z_next
    return z


@torch.no_grad()
def classify(
    blocks: Sequence[nn.Module],
    schedule: NoiseSchedule,
    x: torch.Tensor,
    grid: np.ndarray,
    *,
    solver: Solver = "euler",
    readout: Readout = "last",
    init: Literal["zero", "random"] = "zero",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Class log-probabilities [B, K] from a trained classification chain.

    The noisy label starts at z = 0 ("zero": the mean of the initial noise, which removes the dependence
    on the draw) or z = grid[0] eps ("random"). readout "last" takes the logits of the final step; "mean"
    averages the log-softmax of every step (a product of the blocks' experts)."""
    chain = [as_classifier_block(b) for b in blocks]
    width = chain[0].arch.width
    z = (
        torch.zeros(x.shape[0], width)
        if init == "zero"
        else float(grid[0]) * torch.randn(x.shape[0], width, generator=generator)
    )
    logps: list[torch.Tensor] = []

    def denoise(i: int, zt: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        d, logits = chain[i].denoise(x, zt, sigma)
        logps.append(logits.log_softmax(-1))
        return d

    integrate(denoise, schedule, grid, z, solver)
    return logps[-1] if readout == "last" else torch.stack(logps).mean(0)


@torch.no_grad()
def generate(
    blocks: Sequence[nn.Module],
    schedule: NoiseSchedule,
    labels: torch.Tensor,
    grid: np.ndarray,
    *,
    cfg_scale: float = 2.0,
    solver: Solver = "euler",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Class-conditional samples [B, C, H, W] with classifier-free guidance D = D_u + s (D_c - D_u)."""
    chain = [as_generator_block(b) for b in blocks]
    arch = chain[0].arch
    n = labels.shape[0]
    z = float(grid[0]) * torch.randn(n, arch.image_channels, arch.image_size, arch.image_size, generator=generator)
    null = torch.full_like(labels, arch.num_classes)

    def denoise(i: int, zt: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if cfg_scale == 1.0:
            return chain[i](zt, sigma, labels)
        both = chain[i](torch.cat([zt, zt]), torch.cat([sigma, sigma]), torch.cat([labels, null]))
        d_c, d_u = both.chunk(2)
        return d_u + cfg_scale * (d_c - d_u)

    return integrate(denoise, schedule, grid, z, solver)
