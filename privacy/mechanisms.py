"""The client-level privacy mechanism of a federated round, in one place: clip, check, noise, epsilon.

A company's block update is the delta u = trained - received weights (all trainable arrays as one vector).

Clip. u is scaled to L2 norm <= C (`update_clip`):
    clip_C(u) = u * f,   f = clip_factor(||u||_2, C) = min(1, C / ||u||_2)
(f = 1 when ||u||_2 <= C, so an update inside the ball is left bit-for-bit as it is). A non-finite norm is refused:
such an update is never sent. `clip_update` is the wire form (float32 arrays, norm summed in float64);
`clip_vector` the float64 vector that SecAgg encodes (its quantisation bound assumes exactly this clip).

Check. The server refuses a received mean whose arrays do not have the block's shapes, hold NaN/Inf, exceed
MAX_UPDATE_BYTES or have L2 norm above C (1 + 1e-4) (`check_update`): a mean of clipped deltas is within C.

Central noise. The release of K clipped deltas is their mean plus Gaussian noise,
    release = (1/K) sum_k clip_C(u_k) + N(0, s^2 I),   s = central_noise_std(z_c, C, K) = z_c C / K,
with K the members actually aggregated (never the planned cohort). On the sum the same noise has std z_c C
(`sum_noise_std`). One company's delta moves the mean by at most C / K, so each release is a Gaussian mechanism
of sensitivity C / K and noise multiplier z_c.

Client-level epsilon. Cohorts are chosen, not Poisson-sampled, so there is no subsampling amplification: n
releases that aggregated a company are `MechanismStep(z_c, 1.0, n)` (`client_mechanism`), composed with the
run's accountant (`client_level_epsilon`; inf without central noise). `dblocks.privacy.composition` composes
a company's releases of a whole run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .accounting import MechanismStep, epsilon

MAX_UPDATE_BYTES = 256 * 2**20  # a block update larger than this is refused on both sides
CHECK_TOLERANCE = 1e-4  # relative slack on ||mean|| <= C at the server (float32 sums of masked fixed point)


def l2_norm(arrays: Sequence[np.ndarray]) -> float:
    """||u||_2 of the arrays taken together as one vector, summed in float64."""
    return float(np.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays)))


def clip_factor(norm: float, clip: float) -> float:
    """f = min(1, C / norm): 1 inside the ball (norm <= C, including 0), C / norm outside. Raises
    FloatingPointError for a non-finite norm (an update holding NaN or Inf is never released)."""
    if not math.isfinite(norm):
        raise FloatingPointError("the block update contains NaN or Inf; it is not sent")
    return 1.0 if norm <= clip else clip / norm


def clip_update(delta: Sequence[np.ndarray], clip: float) -> tuple[list[np.ndarray], float]:
    """clip_C of `delta` as one vector, as float32 arrays (what a company sends). Returns (clipped, norm before
    clipping). Non-finite updates raise FloatingPointError."""
    norm = l2_norm(delta)
    f = clip_factor(norm, clip)
    return [(d * f).astype(np.float32) for d in delta], norm


def clip_vector(x: np.ndarray, clip: float) -> np.ndarray:
    """clip_C of one flat vector, in float64: the clip SecAgg's quantisation bound assumes (a float32-clipped
    delta may sit a rounding above C; this brings it back inside). Non-finite input raises FloatingPointError."""
    v = np.asarray(x, dtype=np.float64)
    f = clip_factor(math.sqrt(float(np.einsum("i,i", v.ravel(), v.ravel()))), clip)
    return v if f == 1.0 else v * f


def check_update(delta: Sequence[np.ndarray], shapes: Sequence[tuple[int, ...]], clip: float) -> None:
    """Server-side check of a received update or mean: array count and shapes, finiteness, size
    <= MAX_UPDATE_BYTES and L2 norm <= C (1 + CHECK_TOLERANCE). Raises ValueError naming what is wrong."""
    if len(delta) != len(shapes):
        raise ValueError(f"update has {len(delta)} arrays, expected {len(shapes)}")
    size = 0
    for d, s in zip(delta, shapes):
        if tuple(d.shape) != tuple(s):
            raise ValueError(f"update array of shape {tuple(d.shape)}, expected {tuple(s)}")
        if not np.all(np.isfinite(d)):
            raise ValueError("update contains NaN or Inf")
        size += d.nbytes
    if size > MAX_UPDATE_BYTES:
        raise ValueError(f"update of {size} bytes exceeds the {MAX_UPDATE_BYTES} byte limit")
    norm = l2_norm(delta)
    if norm > clip * (1 + CHECK_TOLERANCE):
        raise ValueError(f"update norm {norm:.4g} exceeds the clip {clip:g}")


def sum_noise_std(noise_multiplier: float, clip: float) -> float:
    """Per-coordinate std of the central noise on the sum of clipped deltas: z_c C."""
    return noise_multiplier * clip


def central_noise_std(noise_multiplier: float, clip: float, num_aggregated: int) -> float:
    """Per-coordinate std of the central noise on the mean of K = num_aggregated clipped deltas: z_c C / K."""
    if num_aggregated < 1:
        raise ValueError("no client was aggregated")
    return noise_multiplier * clip / num_aggregated


def add_central_noise(
    mean: Sequence[np.ndarray], clip: float, noise_multiplier: float, num_aggregated: int, rng: np.random.Generator
) -> tuple[list[np.ndarray], float]:
    """mean + N(0, s^2 I) with s = z_c C / K, as float32 arrays; returns (noised, s). K = clients actually
    aggregated. Without noise (s = 0) the mean is returned as copies and rng is not drawn from."""
    std = central_noise_std(noise_multiplier, clip, num_aggregated)
    if std == 0:
        return [m.copy() for m in mean], 0.0
    return [(m + rng.normal(0.0, std, m.shape)).astype(np.float32) for m in mean], std


def client_mechanism(noise_multiplier: float, publications: int = 1) -> MechanismStep:
    """`publications` releases of one company's clipped delta with central noise multiplier z_c, as accounted:
    Gaussian, sensitivity C / K, noise z_c C / K, no subsampling (sample rate 1)."""
    return MechanismStep(noise_multiplier, 1.0, publications)


def client_level_epsilon(noise_multiplier: float, releases: int, delta: float, accountant: str) -> float:
    """epsilon(delta) of `releases` releases that aggregated one company, composed with `accountant` (the run's):
    0 for no release, inf without central noise (z_c <= 0)."""
    if releases == 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    return epsilon([client_mechanism(noise_multiplier, releases)], delta, accountant)
