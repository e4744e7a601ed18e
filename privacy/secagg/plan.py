"""The plan of one protocol instance: who is in the cohort, the graph, the threshold and the fixed-point layout.

One instance = one (session, round, block) cohort; a round runs one instance per block. The server fixes the
plan before anyone announces keys for it and never changes it; every signature, share and key derivation of
the instance binds the plan's digest, so a message made for one instance is refused in any other.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import cached_property

from .errors import ProtocolRefusal
from .graph import Policy, is_safe, member_neighbours, neighbours, ring_order
from .keys import check_id
from .quant import QuantSpec, canonical_json

BLOCK_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def check_block(block: str) -> str:
    if not isinstance(block, str) or not BLOCK_PATTERN.match(block):
        raise ValueError(f"block id {block!r} must be 1-64 characters from [A-Za-z0-9_.-]")
    return block


def instance_key(round_: int, block: str) -> str:
    """The name of an instance inside one session's messages: '<round>:<block>'."""
    return f"{int(round_)}:{block}"


def min_survivors_for(n: int, t: int, policy: Policy) -> int:
    """Fewest masked inputs an aggregate may contain: >= t (every self-mask rebuildable) and >= C + 2 (after
    removing the C colluders' own inputs, the sum still mixes at least two honest inputs)."""
    return min(n, max(t, policy.corrupt(n) + 2))


def confirm_threshold_for(n: int, policy: Policy) -> int:
    """Signatures on one survivor view needed in consistency mode: > (n + C) / 2, so that two different views
    cannot both collect enough (their honest signers would be disjoint)."""
    return (n + policy.corrupt(n)) // 2 + 1


@dataclass(frozen=True)
class Plan:
    session: bytes
    round: int
    block: str
    cohort: tuple[str, ...]
    degree: int
    threshold: int
    min_survivors: int
    confirm_threshold: int  # 0: no consistency check (default, 2 exchanges); > 0: signed views required
    quant: QuantSpec

    def __post_init__(self):
        check_block(self.block)
        for cid in self.cohort:
            check_id(cid)
        if list(self.cohort) != sorted(set(self.cohort)):
            raise ValueError("plan cohort must be sorted and without duplicates")

    @property
    def key(self) -> str:
        return instance_key(self.round, self.block)

    @property
    def n(self) -> int:
        return len(self.cohort)

    @property
    def consistency(self) -> bool:
        return self.confirm_threshold > 0

    def to_json(self) -> dict:
        return {
            "v": 1,
            "session": self.session.hex(),
            "round": self.round,
            "block": self.block,
            "cohort": list(self.cohort),
            "degree": self.degree,
            "threshold": self.threshold,
            "min_survivors": self.min_survivors,
            "confirm_threshold": self.confirm_threshold,
            "quant": self.quant.to_json(),
        }

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())

    @staticmethod
    def from_bytes(data: bytes) -> Plan:
        try:
            d = json.loads(bytes(data))
            if d.get("v") != 1:
                raise ValueError("unknown plan version")
            return Plan(
                bytes.fromhex(d["session"]),
                int(d["round"]),
                str(d["block"]),
                tuple(d["cohort"]),
                int(d["degree"]),
                int(d["threshold"]),
                int(d["min_survivors"]),
                int(d["confirm_threshold"]),
                QuantSpec.from_json(d["quant"]),
            )
        except (ValueError, KeyError, TypeError) as err:
            raise ProtocolRefusal(f"malformed plan: {err}") from err

    @cached_property
    def digest(self) -> bytes:
        return hashlib.sha256(b"dblocks-secagg/plan/v1\0" + self.to_bytes()).digest()

    @cached_property
    def ring(self) -> list[str]:
        """The cohort in its pseudo-random ring order (derived from the digest)."""
        return ring_order(self.digest, self.cohort)

    @cached_property
    def _ring_position(self) -> dict[str, int]:
        return {cid: i for i, cid in enumerate(self.ring)}

    @cached_property
    def _points(self) -> dict[str, int]:
        return {cid: i + 1 for i, cid in enumerate(self.cohort)}

    @cached_property
    def _neighbour_cache(self) -> dict[str, tuple[str, ...]]:
        return {}

    @cached_property
    def graph(self) -> dict[str, tuple[str, ...]]:
        return neighbours(self.ring, self.degree)

    def neighbours(self, client_id: str) -> tuple[str, ...]:
        """The member's neighbours, computed for that member only (a client never builds the whole graph: that
        would cost O(n k) per client, O(n^2 k) per cohort); the same tuple as `graph[client_id]`."""
        cached = self._neighbour_cache.get(client_id)
        if cached is None:
            if client_id not in self._ring_position:
                raise KeyError(client_id)
            cached = member_neighbours(self.ring, self._ring_position[client_id], self.degree)
            self._neighbour_cache[client_id] = cached
        return cached

    def x(self, client_id: str) -> int:
        """The Shamir evaluation point of a member: 1 + its index in the sorted cohort."""
        try:
            return self._points[client_id]
        except KeyError:
            raise ValueError(f"{client_id!r} is not in the cohort") from None

    def check(self, policy: Policy, session: bytes, member: str | None = None) -> None:
        """Refuse a plan that is unsafe under `policy` or not for this session/member (ProtocolRefusal)."""
        n = self.n
        problems = []
        if self.session != session:
            problems.append("plan is for another session")
        if member is not None and member not in self.cohort:
            problems.append(f"{member} is not in the plan's cohort")
        if n < 3:
            problems.append(f"cohort of {n} < 3")
        elif not is_safe(n, self.degree, self.threshold, policy):
            problems.append(f"degree {self.degree} / threshold {self.threshold} unsafe for n={n} under {policy}")
        elif self.min_survivors < min_survivors_for(n, self.threshold, policy):
            problems.append(f"min_survivors {self.min_survivors} < {min_survivors_for(n, self.threshold, policy)}")
        if self.consistency and self.confirm_threshold < confirm_threshold_for(n, policy):
            problems.append(f"confirm_threshold {self.confirm_threshold} < {confirm_threshold_for(n, policy)}")
        if self.quant.cohort_size < n or self.quant.bits < self.quant.required_bits(n) or self.quant.bits > 64:
            problems.append(f"{self.quant.bits}-bit modulus can overflow for n={n}")
        if self.degree < n - 1 and self.degree % 2:
            problems.append("sparse degree must be even")
        if problems:
            raise ProtocolRefusal(f"plan {self.key} refused: " + "; ".join(problems))
