"""Privacy accounting for DP-SGD (record-level) and central Gaussian noise (client-level).

Every epsilon here comes from an Opacus accountant ("prv" by default, "rdp" also available) applied to a
history of (noise_multiplier, sample_rate, steps) entries, and is reported with its delta. Composition is
by concatenating histories: a company that trains several blocks on the same records spends the
composition of all of them.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass

ACCOUNTANTS = ("prv", "rdp")


@dataclass(frozen=True)
class MechanismStep:
    """`steps` applications of the subsampled Gaussian mechanism with Poisson sampling rate `sample_rate`
    and noise std `noise_multiplier` x clipping norm."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        """Refuse values the accountants cannot handle (NaN/Inf make both of them loop forever): raises ValueError.
        noise_multiplier: finite, >= 0 (0 means no noise: epsilon is infinite). sample_rate: finite, in [0, 1].
        steps: an integer >= 0."""
        z, q, t = self.noise_multiplier, self.sample_rate, self.steps
        if isinstance(z, bool) or not isinstance(z, numbers.Real) or not math.isfinite(z) or z < 0:
            raise ValueError(f"noise multiplier must be a finite number >= 0, got {z!r}")
        if isinstance(q, bool) or not isinstance(q, numbers.Real) or not math.isfinite(q) or not 0 <= q <= 1:
            raise ValueError(f"sample rate must be a finite number in [0, 1], got {q!r}")
        if isinstance(t, bool) or not isinstance(t, numbers.Integral) or t < 0:
            raise ValueError(f"steps must be an integer >= 0, got {t!r}")


def check_delta(delta: float) -> None:
    """delta of an (epsilon, delta) guarantee: finite, in (0, 1); raises ValueError otherwise."""
    if isinstance(delta, bool) or not isinstance(delta, numbers.Real) or not math.isfinite(delta) or not 0 < delta < 1:
        raise ValueError(f"delta must be a finite number in (0, 1), got {delta!r}")


def epsilon(history: list[MechanismStep], delta: float, accountant: str = "prv") -> float:
    """epsilon(delta) of the composition of `history` (0.0 for an empty history). Every entry and delta are
    validated first (`MechanismStep.validate`, `check_delta`): a non-finite value raises ValueError."""
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    check_delta(delta)
    for h in history:
        h.validate()
    live = [h for h in history if h.steps > 0]
    if not live:
        return 0.0
    if any(h.noise_multiplier <= 0 for h in live):
        return float("inf")
    from opacus.accountants import create_accountant  # imports all of opacus (seconds): only when needed

    # identical mechanisms compose by adding their steps (exact for both accountants); keeps the history short
    merged: dict[tuple[float, float], int] = {}
    for h in live:
        merged[(h.noise_multiplier, h.sample_rate)] = merged.get((h.noise_multiplier, h.sample_rate), 0) + h.steps
    acc = create_accountant(mechanism=accountant)
    acc.history = [(z, q, steps) for (z, q), steps in merged.items()]
    return float(acc.get_epsilon(delta=delta))


def noise_for_epsilon(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "prv"
) -> float:
    """Smallest noise multiplier whose `steps` steps at `sample_rate` stay within (target_epsilon, delta)."""
    if not math.isfinite(target_epsilon) or target_epsilon <= 0:
        raise ValueError(f"target epsilon must be a finite number > 0, got {target_epsilon!r}")
    check_delta(delta)
    MechanismStep(1.0, sample_rate, steps).validate()
    from opacus.accountants.utils import get_noise_multiplier

    return float(
        get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,
            epsilon_tolerance=0.005,
        )
    )
