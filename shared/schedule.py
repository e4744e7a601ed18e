"""Noise schedule of DiffusionBlocks: log-normal noise levels, block partition, overlap, EDM preconditioning.

Notation (EDM, variance exploding): z_sigma = z0 + sigma * eps with eps ~ N(0, I); sigma is a standard
deviation in the units of the target z0. Training draws ln(sigma) ~ N(p_mean, p_std^2) restricted to
[sigma_min, sigma_max].

Blocks are numbered from the top: block 0 owns the highest noise levels. With boundaries
b_0 = sigma_max > b_1 > ... > b_B = sigma_min, block i owns (b_{i+1}, b_i] (the last block also owns
sigma_min): an Euler step from s_j down to s_{j+1} lies inside the interval of the block that owns s_j.

Equi-probability partition (DiffusionBlocks eq. 13): with Phi the standard normal CDF,
    p_k = Phi_min + (k / B) (Phi_max - Phi_min) counted from the top, b_k = exp(p_mean + p_std Phi^-1(p_k)),
so every block owns exactly 1/B of the truncated log-normal mass (eq. 14). The uniform partition (equal
widths in ln sigma) is the paper's ablation baseline.

Controlled overlap (eq. 15): block i trains on [lo / alpha, hi * alpha] clipped to [sigma_min, sigma_max],
with alpha = (hi / lo)^gamma.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
from scipy.special import ndtr, ndtri

PartitionKind = Literal["equiprob", "uniform"]


@dataclass(frozen=True)
class NoiseSchedule:
    """Noise levels of a B-block DiffusionBlocks model. All sigmas are in target units."""

    num_blocks: int = 4
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5
    partition_kind: PartitionKind = "equiprob"
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {self.num_blocks}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        if self.p_std <= 0 or self.sigma_data <= 0:
            raise ValueError("p_std and sigma_data must be positive")
        if self.partition_kind not in ("equiprob", "uniform"):
            raise ValueError(f"partition_kind must be 'equiprob' or 'uniform', got {self.partition_kind!r}")
        if self.gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {self.gamma}")

    # ---- the log-normal and its CDF -------------------------------------------------------------
    def cdf(self, sigma: np.ndarray | float) -> np.ndarray:
        """Untruncated log-normal CDF P(sigma' <= sigma)."""
        return ndtr((np.log(sigma) - self.p_mean) / self.p_std)

    def quantile(self, p: np.ndarray | float) -> np.ndarray:
        """Inverse of `cdf` (float64)."""
        return np.exp(self.p_mean + self.p_std * ndtri(p))

    def mass(self, lo: float, hi: float) -> float:
        """Mass of [lo, hi] under the log-normal truncated to [sigma_min, sigma_max]."""
        total = self.cdf(self.sigma_max) - self.cdf(self.sigma_min)
        return float((self.cdf(hi) - self.cdf(lo)) / total)

    # ---- partition -------------------------------------------------------------------------------
    def partition(self) -> np.ndarray:
        """Boundaries b_0 = sigma_max > ... > b_B = sigma_min (float64, length B + 1)."""
        k = np.arange(self.num_blocks + 1) / self.num_blocks
        if self.partition_kind == "equiprob":
            c_min, c_max = self.cdf(self.sigma_min), self.cdf(self.sigma_max)
            b = self.quantile(c_max - k * (c_max - c_min))
        else:
            b = np.exp(math.log(self.sigma_max) - k * (math.log(self.sigma_max) - math.log(self.sigma_min)))
        b[0], b[-1] = self.sigma_max, self.sigma_min  # exact ends, no round-off
        return b

    def owned_interval(self, block: int) -> tuple[float, float]:
        """(lo, hi) of the noise levels block `block` answers for at inference."""
        self._check_block(block)
        b = self.partition()
        return float(b[block + 1]), float(b[block])

    def training_interval(self, block: int) -> tuple[float, float]:
        """(lo, hi) block `block` trains on: its owned interval widened by alpha = (hi/lo)^gamma."""
        lo, hi = self.owned_interval(block)
        alpha = (hi / lo) ** self.gamma
        return max(lo / alpha, self.sigma_min), min(hi * alpha, self.sigma_max)

    def block_for_sigma(self, sigma: float) -> int:
        """Index of the block that owns `sigma` (block i owns (b_{i+1}, b_i]; the last block owns sigma_min)."""
        if not self.sigma_min <= sigma <= self.sigma_max * (1 + 1e-9):
            raise ValueError(f"sigma={sigma} outside [{self.sigma_min}, {self.sigma_max}]")
        b = self.partition()
        return int(np.sum(b[1:-1] >= sigma))  # inner boundaries at or above sigma

    # ---- training noise --------------------------------------------------------------------------
    def sample_sigma(self, block: int | None, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact draws from the log-normal truncated to block `block`'s training interval (None: whole
        range), by inverse-CDF sampling in float64. Returns float32 of shape [n]."""
        lo, hi = (self.sigma_min, self.sigma_max) if block is None else self.training_interval(block)
        u = torch.rand(n, generator=generator, dtype=torch.float64).numpy()
        c_lo, c_hi = self.cdf(lo), self.cdf(hi)
        sigma = self.quantile(c_lo + u * (c_hi - c_lo))
        return torch.from_numpy(np.clip(sigma, lo, hi)).float()

    # ---- inference grids -------------------------------------------------------------------------
    def edm_grid(self, steps: int, rho: float = 7.0, sigma_start: float | None = None) -> np.ndarray:
        """EDM grid: sigma_j = (s_max^(1/rho) + j/(N-1) (s_min^(1/rho) - s_max^(1/rho)))^rho, j < N, then 0."""
        s_max = self.sigma_max if sigma_start is None else sigma_start
        j = np.arange(steps) / max(steps - 1, 1)
        grid = (s_max ** (1 / rho) + j * (self.sigma_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
        return np.append(grid, 0.0)

    def cdf_grid(self, steps: int, sigma_start: float | None = None) -> np.ndarray:
        """N noise levels spaced equally in the log-normal CDF from sigma_start down to sigma_min, then 0.

        With N = k * B and the equi-probability partition every block gets exactly k steps."""
        s_max = self.sigma_max if sigma_start is None else sigma_start
        c_hi, c_lo = self.cdf(s_max), self.cdf(self.sigma_min)
        grid = self.quantile(c_hi - (np.arange(steps) / max(steps - 1, 1)) * (c_hi - c_lo))
        grid[0], grid[-1] = s_max, self.sigma_min
        return np.append(grid, 0.0)

    def block_grid(self, steps_per_block: int = 1) -> np.ndarray:
        """k steps inside every block's owned interval, spaced equally in CDF within the block, starting at the
        block's top (block 0 starts at `inference_start`), then 0. Gives every block the same number of steps
        under any partition."""
        out = []
        b = self.partition()
        for i in range(self.num_blocks):
            hi = self.inference_start if i == 0 else b[i]
            c_hi, c_lo = self.cdf(hi), self.cdf(b[i + 1])
            frac = np.arange(steps_per_block) / steps_per_block
            steps = self.quantile(c_hi - frac * (c_hi - c_lo))
            steps[0] = hi  # exactly the block's top, not a round-off above it
            out.append(steps)
        return np.append(np.concatenate(out), 0.0)

    @property
    def inference_start(self) -> float:
        """Where sampling starts: sigma_max, or the 99.9% quantile of block 0's training noise if that is
        lower. Above it block 0 has (almost) never been trained, so starting higher would feed it noise levels it
        never saw."""
        lo, hi = self.training_interval(0)
        c_lo, c_hi = self.cdf(lo), self.cdf(hi)
        return min(hi, float(self.quantile(c_lo + 0.999 * (c_hi - c_lo))))

    # ---- EDM preconditioning ---------------------------------------------------------------------
    def precondition(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c_skip, c_out, c_in, c_noise) for D(z, sigma) = c_skip z + c_out F(c_in z, c_noise)."""
        sd2 = self.sigma_data**2
        s2 = sigma**2
        c_skip = sd2 / (s2 + sd2)
        c_out = sigma * self.sigma_data / (s2 + sd2).sqrt()
        c_in = 1 / (s2 + sd2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """EDM weight lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 = 1 / c_out^2."""
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> NoiseSchedule:
        return cls(**d)

    def _check_block(self, block: int) -> None:
        if not 0 <= block < self.num_blocks:
            raise IndexError(f"block {block} out of range for {self.num_blocks} blocks")
