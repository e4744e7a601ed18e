"""Noise conformance of a release: is the Gaussian noise in it as large as the sidecar says, and is the
aggregate's norm within the clip?

A release of K clipped client deltas with central noise multiplier z is R = (S + N) / K for a mean (R = S + N for
a sum), with ||S|| <= K C and N ~ N(0, (z C)^2 I_d). The measured noise std along a random direction u (unit,
isotropic) is <R, u>; over a full orthonormal basis its mean square is ||R||^2 / d, so the most precise
estimate uses all d coordinates at once:

    std_hat = ||R|| / sqrt(d),  expected s = z C / K (mean) or z C (sum).

By the triangle inequality || ||R|| - ||N||/K || <= ||S||/K <= C, and ||N||^2 / (z C)^2 ~ chi^2_d, so a
conforming release has ||R|| in [s sqrt(chi2_lo) - C, s sqrt(chi2_hi) + C] (mean; the sum uses K C), with chi2
quantiles at 1 - alpha/2 (alpha = 1e-3 by default). Below: noise missing, reduced (e.g. sized for clients
that dropped out) or added to only part of the parameters; above: double-scaled noise or an unclipped client.
The same test runs per parameter tensor (d_t coordinates) wherever its acceptance interval is informative. The
std along `directions` seeded random unit directions is reported beside it (a few hundred directions estimate
the same quantity to ~5%; the full basis is the precise version of it).
An aggregate without noise must have ||S|| <= K C (a single clipped update: <= C).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from scipy.stats import chi2

from .updates import BlockUpdate


@dataclass
class ConformanceResult:
    expected_std: float
    measured_std: float
    accepted_std: tuple[float, float]
    random_direction_std: float
    norm: float
    norm_bound: float
    coordinates: int
    failures: list[str] = field(default_factory=list)
    per_tensor: dict[str, dict] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        d = asdict(self)
        d["passed"] = self.passed
        return d


def _interval(expected_std: float, d: int, slack_norm: float, alpha: float) -> tuple[float, float]:
    """Acceptance interval for ||R|| / sqrt(d) given noise std `expected_std` and signal norm <= slack_norm."""
    lo = max(0.0, expected_std * math.sqrt(chi2.ppf(alpha / 2, d)) - slack_norm) / math.sqrt(d)
    hi = (expected_std * math.sqrt(chi2.ppf(1 - alpha / 2, d)) + slack_norm) / math.sqrt(d)
    return lo, hi


def noise_conformance(
    update: BlockUpdate, param_keys: list[str], directions: int = 256, alpha: float = 1e-3, seed: int = 0
) -> ConformanceResult:
    """Check `update` against its sidecar (clip_norm, clients_aggregated, reduction, noise_multiplier)."""
    meta = update.meta
    if meta.clip_norm is None:
        raise ValueError("noise conformance needs the clip norm C in the update's sidecar (clip_norm)")
    k, c = meta.clients_aggregated, meta.clip_norm
    per_client = 1.0 / k if meta.reduction == "mean" else 1.0
    expected = meta.noise_multiplier * c * per_client
    signal_bound = k * c * per_client  # ||S|| (sum) <= K C; the mean divides both by K
    flat = torch.cat([update.delta[n].flatten().double() for n in param_keys])
    d = flat.numel()
    norm = float(flat.norm())
    failures: list[str] = []
    lo, hi = _interval(expected, d, signal_bound, alpha)
    measured = norm / math.sqrt(d)
    if expected > 0 and not lo <= measured <= hi:
        failures.append(
            f"noise std {measured:.4g} outside [{lo:.4g}, {hi:.4g}] expected for z={meta.noise_multiplier}, "
            f"C={c}, K={k} ({meta.reduction}): expected {expected:.4g}"
        )
    if expected == 0 and norm > signal_bound * (1 + 1e-5):
        failures.append(
            f"aggregate norm {norm:.4g} exceeds the clip bound {signal_bound:.4g} (K C): a client was not clipped"
        )
    per_tensor = {}
    for name in param_keys:
        t = update.delta[name].double().flatten()
        t_lo, t_hi = _interval(expected, t.numel(), signal_bound, alpha)
        std_t = float(t.norm()) / math.sqrt(t.numel())
        informative = expected > 0 and t_lo > 0
        per_tensor[name] = {"std": std_t, "accepted": [t_lo, t_hi], "informative": informative}
        if informative and not t_lo <= std_t <= t_hi:
            failures.append(f"tensor {name}: noise std {std_t:.4g} outside [{t_lo:.4g}, {t_hi:.4g}]")
    g = torch.Generator().manual_seed(seed)
    proj = torch.empty(directions, dtype=torch.float64)
    for i in range(directions):
        u = torch.randn(d, generator=g, dtype=torch.float64)
        proj[i] = flat @ u / u.norm()
    rd_std = float(proj.pow(2).mean().sqrt())
    return ConformanceResult(expected, measured, (lo, hi), rd_std, norm, signal_bound, d, failures, per_tensor)
