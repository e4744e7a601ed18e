"""The sparse communication graph of SecAgg+ (Bell et al., CCS 2020) and how its degree and threshold are chosen.

Graph. Cohort members are placed on a ring in a pseudo-random order (a permutation derived from the plan's
digest, so every party computes the same graph) and each is joined to the k/2 nearest members on either side:
the Harary graph H(n, k) (a circulant with offsets 1..k/2; k even). When k >= n - 1 the graph is complete and the
protocol is Bonawitz et al. 2017. A member's neighbours are the only parties it masks with and the only parties
that hold shares of its secrets.

Threat parameters (`Policy`): at most C = ceil(corrupt_fraction * n) clients collude with the server (at least 1,
so a cohort is always protected against one client helping the server), at most D = floor(dropout_fraction * n)
clients drop out, and the server cannot pick which clients are corrupted after seeing the graph. Because the
ring order is a uniformly random permutation, the neighbour set of a member is a uniformly random k-subset of the
other n - 1, so the number of corrupt neighbours c_u is hypergeometric(n - 1, C, k).

Conditions, with union bounds over the n members (our derivation following Bell et al.'s structure):
1. Shares cannot be combined against a member (security, <= 2^-sigma): each honest neighbour reveals at most one
   of the two secrets of a member u (self-mask seed or masking key), corrupt ones reveal both, so the server
   gets both only if c_u + h_b >= t and c_u + h_s >= t with h_b + h_s <= k - c_u, i.e. 2t <= k + c_u. We require
   P[exists u: c_u >= 2t - k] <= 2^-sigma. (2t > k + c_u also implies c_u < t: colluders alone never reach t.)
2. The honest survivors stay connected (security, <= 2^-sigma): otherwise the server learns the sums of the
   parts separately. Removing the R = C + D corrupt or dropped members disconnects the circulant only if some k/2
   ring-consecutive members are all removed (between two consecutive remaining members at ring distance <= k/2
   there is an edge). P <= n * C(R, k/2) / C(n, k/2).
3. Every secret can be rebuilt (correctness, <= 2^-eta): a member needs t responding neighbours, so
   P[exists u: dropped neighbours > k - t] <= 2^-eta with dropped neighbours ~ hypergeometric(n - 1, D, k).
   (Colluding clients are assumed to answer; one that withholds shares acts as a dropout and only costs
   availability, never privacy.)
For the complete graph the counts are deterministic worst cases: c_u = C, dropped neighbours = D.
`choose_params` returns the smallest even k (or the complete graph) and the smallest t meeting all three.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


@dataclass(frozen=True)
class Policy:
    """What a party assumes about the adversary; clients refuse plans that are unsafe under their policy."""

    corrupt_fraction: float = 0.05
    dropout_fraction: float = 0.10
    sigma: int = 40  # security: failure probability <= 2^-sigma
    eta: int = 20  # correctness: probability that some secret cannot be rebuilt <= 2^-eta

    def corrupt(self, n: int) -> int:
        """C: colluding clients assumed in a cohort of n (at least one, at most n - 1)."""
        return min(n - 1, max(1, math.ceil(self.corrupt_fraction * n)))

    def dropouts(self, n: int) -> int:
        """D: dropouts the parameters are sized to survive."""
        return math.floor(self.dropout_fraction * n)


@dataclass(frozen=True)
class GraphParams:
    """k: degree (n - 1 = complete graph). t: Shamir threshold. The three failure probabilities are upper
    bounds (union bounds) under the policy they were computed for."""

    n: int
    k: int
    t: int
    p_reveal: float
    p_disconnect: float
    p_unrecoverable: float

    @property
    def complete(self) -> bool:
        return self.k >= self.n - 1


def _tail_ge(population: int, marked: int, draws: int, at_least: int) -> float:
    """P[X >= at_least] for X ~ hypergeometric(population, marked, draws), exactly (integer arithmetic)."""
    if at_least <= 0:
        return 1.0
    top = min(marked, draws)
    if at_least > top:
        return 0.0
    hits = sum(math.comb(marked, x) * math.comb(population - marked, draws - x) for x in range(at_least, top + 1))
    return hits / math.comb(population, draws)


@lru_cache(maxsize=4096)
def failure_probabilities(n: int, k: int, t: int, policy: Policy) -> tuple[float, float, float]:
    """(p_reveal, p_disconnect, p_unrecoverable) for degree k and threshold t in a cohort of n."""
    corrupt, dropped = policy.corrupt(n), policy.dropouts(n)
    removed = min(n, corrupt + dropped)
    if k >= n - 1:
        k = n - 1
        p_reveal = 1.0 if corrupt >= 2 * t - k else 0.0
        p_disconnect = 0.0 if removed < n else 1.0
        p_unrec = 1.0 if dropped > k - t else 0.0
        return p_reveal, p_disconnect, p_unrec
    p_reveal = min(1.0, n * _tail_ge(n - 1, corrupt, k, 2 * t - k))
    half = k // 2
    p_disconnect = 0.0 if removed < half else min(1.0, n * math.comb(removed, half) / math.comb(n, half))
    p_unrec = min(1.0, n * _tail_ge(n - 1, dropped, k, k - t + 1))
    return p_reveal, p_disconnect, p_unrec


def is_safe(n: int, k: int, t: int, policy: Policy) -> bool:
    """The security conditions (1, 2) hold for (k, t) under `policy`; correctness is the server's concern."""
    if not (1 <= t <= min(k, n - 1)) or k < 1:
        return False
    p_reveal, p_disconnect, _ = failure_probabilities(n, k, t, policy)
    return max(p_reveal, p_disconnect) <= 2.0**-policy.sigma


@lru_cache(maxsize=1024)
def choose_params(n: int, policy: Policy = Policy()) -> GraphParams:
    """Smallest even degree k (or the complete graph) and smallest threshold t meeting conditions 1-3."""
    if n < 3:
        raise ValueError(f"secure aggregation needs a cohort of at least 3 clients, got {n}")
    for k in list(range(2, n - 1, 2)) + [n - 1]:
        for t in range(k // 2 + 1, k + 1):
            p = failure_probabilities(n, k, t, policy)
            if max(p[0], p[1]) <= 2.0**-policy.sigma:
                if p[2] <= 2.0**-policy.eta:
                    return GraphParams(n, min(k, n - 1), t, *p)
                break  # a larger t only makes recovery harder: try a larger k
    C, D = policy.corrupt(n), policy.dropouts(n)
    raise ValueError(
        f"no (k, t) for a cohort of {n} tolerates {C} colluding and {D} dropped clients (complete graph needs "
        f"2t > {n - 1} + {C} and t <= {n - 1} - {D}): enlarge the cohort or lower dropout_fraction"
    )


def ring_order(seed: bytes, members: Sequence[str]) -> list[str]:
    """A uniformly random-looking permutation of `members`, derived from `seed` (Fisher-Yates driven by an
    AES-256-CTR stream keyed by SHA-256(seed), with rejection sampling so every index is exactly uniform)."""
    key = hashlib.sha256(b"dblocks-secagg/ring-order\0" + seed).digest()
    stream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    order = sorted(members)
    # the keystream is read in batches of 32-bit words (n draws + slack, then more if rejections use it up):
    # the words are the same, in the same order, as reading 4 bytes at a time
    words: list[int] = []
    used = 0
    for i in range(len(order) - 1, 0, -1):
        bound = i + 1
        limit = (2**32 // bound) * bound
        while True:
            if used == len(words):
                batch = i + 16
                words, used = list(struct.unpack(f"<{batch}I", stream.update(bytes(4 * batch)))), 0
            r = words[used]
            used += 1
            if r < limit:
                break
        j = r % bound
        order[i], order[j] = order[j], order[i]
    return order


def member_neighbours(order: Sequence[str], position: int, k: int) -> tuple[str, ...]:
    """The neighbours of the member at `position` of ring `order` in H(n, k): the same tuple as
    `neighbours(order, k)[order[position]]`, in O(k) instead of building the whole graph."""
    n = len(order)
    if k >= n - 1:
        return tuple(v for i, v in enumerate(order) if i != position)
    if k % 2:
        raise ValueError(f"sparse graphs use an even degree, got k={k}")
    return tuple(order[(position + d) % n] for d in range(-(k // 2), k // 2 + 1) if d != 0)


def neighbours(order: Sequence[str], k: int) -> dict[str, tuple[str, ...]]:
    """Harary H(n, k) on ring `order`: each member's k nearest (k/2 per side), or everyone when k >= n - 1."""
    n = len(order)
    if k >= n - 1:
        return {u: tuple(v for v in order if v != u) for u in order}
    if k % 2:
        raise ValueError(f"sparse graphs use an even degree, got k={k}")
    out = {}
    for i, u in enumerate(order):
        out[u] = tuple(order[(i + d) % n] for d in range(-(k // 2), k // 2 + 1) if d != 0)
    return out
