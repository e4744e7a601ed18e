"""Fixed-point encoding of a clipped update and bounded extras into integers mod 2^bits.

A contribution is an update vector x of `dim` floats with ||x||_2 <= clip_norm (C) plus named scalars
("extras": example counts, metrics) with |v_j| <= bound_j. Coordinate i is encoded as
q_i = round(x_i / step) (round half to even), stored mod M = 2^bits in uint32/uint64 words.

Sizing the modulus. |x_i| <= ||x||_2 <= C, so |q_i| <= L = floor(C / step + 1/2); an extra with bound B_j and
step h_j has |q| <= L_j = floor(B_j / h_j + 1/2). The sum over at most n clients has absolute value <= n * L_max,
so choosing bits with 2^(bits-1) > n * L_max makes the signed sum exact mod M (no wrap). `step` comes from the
error target: rounding moves each coordinate by at most step/2, so one client's encoded update is within
sqrt(dim) * step / 2 of x in L2; step = 2 * rel_error * C / sqrt(dim) bounds that by rel_error * C. The modulus
therefore grows with the cohort size n, the vector length dim (through step) and the clip norm (through L).

Overflow is checked, never wrapped: a client refuses an input above its bound (`encode`), and the server refuses
a decoded sum outside `sum_bounds(count)` (`decode_sum`): a coordinate outside [-n*L_j, n*L_j] or an update
part of L2 norm above n * (C (1 + 1e-9) + sqrt(dim) * step / 2), which only a client that broke the protocol
can cause. Those checks are all the server can enforce: it only ever sees the sum, and every word mod M is a
valid masked input, so one malicious client can still move the sum anywhere inside that region
(`MaliciousReach`; docs/secure-aggregation.md, "What one malicious company can add").
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from .errors import AggregateOverflow

NORM_TOLERANCE = 1e-9  # relative slack on ||x|| <= C for float rounding in the caller's clipping
_ROUND_MAGIC = 1.5 * 2.0**52
_ROUND_MAGIC_BITS = np.float64(_ROUND_MAGIC).view(np.int64)


@dataclass(frozen=True)
class Extra:
    """A named scalar aggregated under the same masks: |value| <= bound, encoded with resolution `step`."""

    name: str
    bound: float
    step: float

    @staticmethod
    def count(name: str, max_count: int) -> Extra:
        """An integer count in [-max_count, max_count], aggregated exactly."""
        return Extra(name, float(max_count), 1.0)

    def __post_init__(self):
        if not self.name or not (self.bound > 0 and self.step > 0):
            raise ValueError(f"extra {self.name!r}: needs a name, bound > 0 and step > 0")


@dataclass(frozen=True)
class SumBounds:
    """What the server accepts as the decoded sum of `count` contributions (`QuantSpec.decode_sum`).

    client_l2 = C (1 + 1e-9) + sqrt(dim) step / 2: the largest L2 norm of one honest client's *encoded* update
    (clipped norm plus rounding). The sum S is accepted iff |S_i| <= linf for every update coordinate,
    |S_j| <= extras[j] for every extra and ||S_update||_2 <= l2 = count * client_l2."""

    count: int
    client_l2: float
    l2: float
    linf: float
    extras: dict[str, float]

    def reach(self) -> MaliciousReach:
        """What one malicious member of the `count` summed can add to the others' encoded sum H."""
        honest = (self.count - 1) * self.client_l2  # ||H||_2 <= (count - 1) client_l2
        return MaliciousReach(
            blind_l2=self.l2 - honest,
            informed_l2=self.l2 + honest,
            blind_linf=self.linf / self.count,
            informed_linf=self.linf * (2 - 1 / self.count),
        )


@dataclass(frozen=True)
class MaliciousReach:
    """Bounds on e, what one malicious client adds to the honest encoded sum H (S = H + e must be accepted).

    blind_l2 = client_l2: every e with ||e||_2 <= blind_l2 (and |e_i| <= L step) is accepted whatever H is, since
    ||H + e|| <= (count - 1) client_l2 + ||e||; larger ones are refused for some H (e pointing along H). A client
    that knows H can go up to informed_l2 = (2 count - 1) client_l2 (S = l2 * u with H = -(count-1) client_l2 * u):
    (2 count - 1) times what an honest client can add, and it can set the released mean S / count to any vector
    of norm <= client_l2. The linf fields are the same bounds per update coordinate."""

    blind_l2: float
    informed_l2: float
    blind_linf: float
    informed_linf: float


@dataclass(frozen=True)
class QuantSpec:
    """The fixed-point layout every member of one cohort uses; part of the signed plan.

    dim: update length. clip_norm: L2 bound C of the update. step: update resolution. extras: named scalars
    appended after the update. cohort_size: n the modulus is sized for. bits: modulus M = 2^bits.
    """

    dim: int
    clip_norm: float
    step: float
    cohort_size: int
    bits: int
    extras: tuple[Extra, ...] = field(default_factory=tuple)

    @staticmethod
    def plan(
        cohort_size: int,
        dim: int,
        clip_norm: float,
        rel_error: float = 1e-4,
        extras: tuple[Extra, ...] | list[Extra] = (),
    ) -> QuantSpec:
        """The smallest modulus for `cohort_size` clients with step = 2 rel_error C / sqrt(dim)."""
        if cohort_size < 1 or dim < 1:
            raise ValueError(f"cohort_size and dim must be >= 1, got {cohort_size}, {dim}")
        if not (clip_norm > 0 and 0 < rel_error < 1):
            raise ValueError(f"need clip_norm > 0 and 0 < rel_error < 1, got {clip_norm}, {rel_error}")
        step = 2.0 * rel_error * clip_norm / math.sqrt(dim)
        spec = QuantSpec(dim, float(clip_norm), step, cohort_size, 2, tuple(extras))
        bits = spec.required_bits()
        if bits > 64:
            raise AggregateOverflow(
                f"a cohort of {cohort_size} needs a {bits}-bit modulus for dim={dim}, rel_error={rel_error} and "
                f"these extras; the limit is 64: raise rel_error, coarsen the extras' steps or split the cohort"
            )
        return QuantSpec(dim, float(clip_norm), step, cohort_size, bits, tuple(extras))

    def __post_init__(self):
        names = [e.name for e in self.extras]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate extra names: {names}")

    # sizes -----------------------------------------------------------------------------------------------
    @property
    def length(self) -> int:
        """Words per encoded contribution: dim update coordinates, then one per extra."""
        return self.dim + len(self.extras)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint32) if self.bits <= 32 else np.dtype(np.uint64)

    @property
    def modulus_mask(self) -> int:
        return (1 << self.bits) - 1

    def _level_values(self) -> list[int]:
        update_level = math.floor(self.clip_norm * (1 + NORM_TOLERANCE) / self.step + 0.5)
        return [update_level] + [math.floor(e.bound / e.step + 0.5) for e in self.extras]

    def levels(self) -> np.ndarray:
        """L per coordinate: the largest |q| one honest client can produce (int64; needs bits <= 64)."""
        values = self._level_values()
        out = np.full(self.length, values[0], dtype=np.int64)
        out[self.dim :] = values[1:]
        return out

    def required_bits(self, cohort_size: int | None = None) -> int:
        """Smallest bits with 2^(bits-1) > n * max level (signed sum of n clients never wraps)."""
        n = self.cohort_size if cohort_size is None else cohort_size
        return (n * max(self._level_values())).bit_length() + 1

    def sum_bounds(self, count: int) -> SumBounds:
        """The region `decode_sum` accepts for the sum of `count` contributions (in the update's units)."""
        levels = self._level_values()
        client_l2 = self.clip_norm * (1 + NORM_TOLERANCE) + math.sqrt(self.dim) * self.step / 2
        return SumBounds(
            count,
            client_l2,
            count * client_l2,
            count * levels[0] * self.step,
            {e.name: count * lvl * e.step for e, lvl in zip(self.extras, levels[1:])},
        )

    def max_abs_error(self, count: int) -> np.ndarray:
        """Worst-case absolute error per coordinate of the decoded sum of `count` contributions."""
        steps = np.full(self.length, self.step)
        for j, extra in enumerate(self.extras):
            steps[self.dim + j] = extra.step
        return count * steps / 2

    # encoding --------------------------------------------------------------------------------------------
    def encode(self, update: np.ndarray, extras: dict[str, float] | None = None) -> np.ndarray:
        """Check bounds and return the contribution as words mod 2^bits (raises AggregateOverflow)."""
        x = np.asarray(update, dtype=np.float64).ravel()
        if x.shape != (self.dim,):
            raise ValueError(f"update has {x.size} values, the plan expects dim={self.dim}")
        norm = math.sqrt(float(np.einsum("i,i", x, x)))  # einsum: single-threaded, faster than BLAS dot here
        if not math.isfinite(norm):
            raise ValueError("update contains NaN or inf")
        if norm > self.clip_norm * (1 + NORM_TOLERANCE):
            raise AggregateOverflow(
                f"update L2 norm {norm:.6g} exceeds the plan's clip_norm {self.clip_norm:.6g}: clip it first "
                f"(dblocks.privacy.mechanisms.clip_vector)"
            )
        extras = dict(extras or {})
        unknown = set(extras) - {e.name for e in self.extras}
        if unknown:
            raise ValueError(
                f"extras {sorted(unknown)} are not in the plan (plan has "
                f"{[e.name for e in self.extras]}); nothing per-client may travel unmasked"
            )
        values = np.empty(self.length, dtype=np.float64)
        np.multiply(x, 1.0 / self.step, out=values[: self.dim])
        for j, extra in enumerate(self.extras):
            v = float(extras.get(extra.name, 0.0))
            if not math.isfinite(v) or abs(v) > extra.bound:
                raise AggregateOverflow(f"extra {extra.name}={v} is outside its bound +-{extra.bound}")
            values[self.dim + j] = v / extra.step
        if max(self._level_values()) < 2**50:
            # round half to even by the FPU: v + 1.5 * 2^52 has the integer round(v) in its low mantissa bits
            np.add(values, _ROUND_MAGIC, out=values)
            q = values.view(np.int64)
            q -= _ROUND_MAGIC_BITS
        else:
            q = np.rint(values, out=values).astype(np.int64)
        # the invariant the modulus relies on (implied by the checks above, verified anyway)
        levels = self.levels()
        if max(-int(q[: self.dim].min(initial=0)), int(q[: self.dim].max(initial=0))) > levels[0] or np.any(
            np.abs(q[self.dim :]) > levels[self.dim :]
        ):
            raise AggregateOverflow("encoded value above its level bound")
        words = q.astype(self.dtype)  # two's complement: the low 32/64 bits of q
        if self.bits < 8 * self.dtype.itemsize:
            words &= self.dtype.type(self.modulus_mask)
        return words

    def decode_sum(self, words: np.ndarray, count: int) -> tuple[np.ndarray, dict[str, float]]:
        """Signed decode of the sum of `count` contributions; raises AggregateOverflow if out of range."""
        if not 1 <= count <= self.cohort_size:
            raise ValueError(f"sum of {count} contributions, plan sized for at most {self.cohort_size}")
        # sign-extend the low `bits` bits: shift them to the top of a 64-bit word, then shift back arithmetically
        shift = 64 - self.bits
        w = (np.asarray(words).astype(np.uint64) & np.uint64(self.modulus_mask)) << np.uint64(shift)
        signed = w.view(np.int64) >> np.int64(shift)
        limit = count * self.levels()
        # two comparisons, not abs(): abs(-2^63) wraps to -2^63 in int64 and would pass a 64-bit modulus' check
        bad = np.nonzero((signed > limit) | (signed < -limit))[0]
        if bad.size:
            raise AggregateOverflow(
                f"decoded sum out of range at {bad.size} coordinate(s) (first: {int(bad[0])}): some client sent "
                f"values outside the agreed bounds; the aggregate is refused"
            )
        total = signed[: self.dim].astype(np.float64) * self.step
        norm = math.sqrt(float(np.einsum("i,i", total, total)))
        bounds = self.sum_bounds(count)
        if norm > bounds.l2:
            raise AggregateOverflow(
                f"decoded sum has L2 norm {norm:.6g} > {bounds.l2:.6g} = {count} x (clip_norm + rounding): refused"
            )
        extras = {e.name: float(signed[self.dim + j]) * e.step for j, e in enumerate(self.extras)}
        return total, extras

    # wire ------------------------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "dim": self.dim,
            "clip_norm": self.clip_norm,
            "step": self.step,
            "cohort_size": self.cohort_size,
            "bits": self.bits,
            "extras": [[e.name, e.bound, e.step] for e in self.extras],
        }

    @staticmethod
    def from_json(d: dict) -> QuantSpec:
        return QuantSpec(
            int(d["dim"]),
            float(d["clip_norm"]),
            float(d["step"]),
            int(d["cohort_size"]),
            int(d["bits"]),
            tuple(Extra(str(n), float(b), float(s)) for n, b, s in d["extras"]),
        )


def canonical_json(d: dict) -> bytes:
    return json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
