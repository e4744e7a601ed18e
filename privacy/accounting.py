"""Privacy accounting for DP-SGD (record-level) and central Gaussian noise (client-level).

Every epsilon here comes from an Opacus accountant ("prv" by default, "rdp" also available) applied to a
history of (noise_multiplier, sample_rate, steps) entries, and is reported with its delta. Composition is
by concatenating histories: a company that trains several blocks on the same records spends the
composition of all of them.
"""

from __future__ import annotations

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


def epsilon(history: list[MechanismStep], delta: float, accountant: str = "prv") -> float:
    """epsilon(delta) of the composition of `history` (0.0 for an empty history)."""
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    live = [h for h in history if h.steps > 0]
    if not live:
        return 0.0
    if any(h.noise_multiplier <= 0 for h in live):
        return float("inf")
    from opacus.accountants import create_accountant  # imports all of opacus (seconds): only when needed

    acc = create_accountant(mechanism=accountant)
    acc.history = [(h.noise_multiplier, h.sample_rate, h.steps) for h in live]
    return float(acc.get_epsilon(delta=delta))


def noise_for_epsilon(target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "prv") -> float:
    """Smallest noise multiplier whose `steps` steps at `sample_rate` stay within (target_epsilon, delta)."""
    from opacus.accountants.utils import get_noise_multiplier

    return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                                      steps=steps, accountant=accountant, epsilon_tolerance=0.005))
