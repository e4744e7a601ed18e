"""#14.5: what one malicious company can add through secure aggregation. The server sees only the unmasked sum,
so its range checks are on the sum; these tests run the real protocol (real key agreement, masks and Shamir
shares, in process) with one client that uploads words of its choosing instead of an encoded, clipped update."""

import numpy as np
import pytest

from dblocks.privacy.secagg import (
    Contribution,
    Extra,
    Identity,
    Layout,
    LocalNetwork,
    SecAggClient,
    SecAggServer,
    TrustStore,
    plan_round,
    run_round,
)

C = 1.0


class RogueClient(SecAggClient):
    """Masks `words(quant)` (signed integers, taken mod 2^bits) instead of its encoded update."""

    def __init__(self, cid, identity, trust, words):
        super().__init__(cid, identity, trust=trust)
        self.words = words

    def _mask(self, inst, acc, peer_keys):
        quant = inst.plan.quant
        words = np.asarray(self.words(quant), dtype=np.int64).astype(quant.dtype) & quant.dtype.type(quant.modulus_mask)
        return super()._mask(inst, words, peer_keys)


def signed(words: np.ndarray, bits: int) -> np.ndarray:
    """The signed integers behind words mod 2^bits."""
    shift = np.uint64(64 - bits)
    return (np.asarray(words).astype(np.uint64) << shift).view(np.int64) >> np.int64(64 - bits)


def run_with_rogue(honest: list[np.ndarray], rogue_q, dim: int, extras=(), informed=True):
    """One protocol round: `honest` clipped updates and one rogue. Informed (it is told the honest encodings, the
    worst case), the rogue makes the decoded sum's integer vector `rogue_q(quant)`; blind, it adds `rogue_q(quant)`
    to whatever the honest sum is. Returns (result, quant)."""
    ids = [f"c{i}" for i in range(len(honest) + 1)]

    def rogue_words(quant):
        honest_q = sum(signed(quant.encode(x), quant.bits) for x in honest) if informed else 0
        return np.asarray(rogue_q(quant), dtype=np.int64) - honest_q  # wraps mod 2^64, then mod 2^bits: fine

    identities = {c: Identity(c) for c in ids}
    pinned = {c: ident.public for c, ident in identities.items()}  # a registry's directory

    def trust():
        return TrustStore(dict(pinned), tofu=False)

    clients = {c: SecAggClient(c, identities[c], trust=trust()) for c in ids[:-1]}
    clients[ids[-1]] = RogueClient(ids[-1], identities[ids[-1]], trust(), rogue_words)
    inputs = dict(zip(ids, [*honest, np.zeros(dim)]))
    net = LocalNetwork(clients, {c: (lambda plan, c=c: Contribution(inputs[c])) for c in ids})
    server = SecAggServer(trust=trust())
    plans = plan_round(server, 1, {"0": ids}, {"0": Layout(dim, C, tuple(extras))}, net)
    return run_round(server, 1, net), plans["0"].quant


def test_secagg_range_out_of_range_sum_is_refused():
    """#14.5 One malicious client: a sum with a coordinate outside [-count L, count L] (L: the largest level one
    honest client can encode) is refused, also at the edge of a 64-bit modulus, and one exactly at the bound is
    accepted and decoded as sent. On main (checked) a 64-bit plan accepted a sum word of -2^63: np.abs(-2^63)
    wraps to -2^63 in int64, so the per-coordinate check passed and the extra decoded as -9.2e18, far outside
    +-count x its bound."""
    dim, honest = 16, [np.full(16, 0.1), np.full(16, -0.1), np.zeros(16)]
    for offset, ok in ((0, True), (1, False)):

        def edge(quant, offset=offset):
            q = np.zeros(quant.dim, np.int64)
            q[3] = -(4 * quant.levels()[0] + offset)  # 4 members summed
            return q

        result, quant = run_with_rogue(honest, edge, dim)
        if ok:
            assert result.aggregates["0"].update_sum[3] == pytest.approx(-4 * quant.levels()[0] * quant.step)
        else:
            assert result.aggregates == {} and "out of range" in result.failures["0"]
    big = [Extra("records", 2.0**61, 1.0)]
    result, quant = run_with_rogue(
        [np.zeros(4), np.zeros(4)], lambda quant: np.r_[np.zeros(4, np.int64), -(2**63)], 4, extras=big
    )
    assert quant.bits == 64
    assert result.aggregates == {} and "out of range" in result.failures["0"], result


def test_secagg_range_one_malicious_member_reach_is_as_documented():
    """#14.5 One malicious client can add up to K x C: the server accepts a sum S of K members iff
    ||S||_2 <= K (C(1+1e-9) + sqrt(d) step/2) = K c (and |S_i| <= K L step). So a malicious member that knows the
    honest sum H (here: the K-1 honest updates all -C u) makes S = K c u and adds e = S - H of norm (2K-1) c, and
    one step further is refused; blind, every e with ||e|| <= c is accepted even against the worst H (all +C u),
    and a few steps more is refused. These are `QuantSpec.sum_bounds(K).reach()`, the numbers
    docs/secure-aggregation.md states. On main the acceptance region was the same but stated nowhere in code
    (AttributeError: sum_bounds) and the docs said "an L2 norm above m x C" is refused."""
    dim, k = 16, 5
    u = np.ones(dim) / np.sqrt(dim)

    def along_u(norm, extra_steps=0):
        return lambda quant: np.full(dim, int(norm(quant) / (quant.step * np.sqrt(dim))) + extra_steps, np.int64)

    l2 = lambda quant: quant.sum_bounds(k).l2  # noqa: E731
    informed, quant = run_with_rogue([-C * u] * (k - 1), along_u(l2), dim)
    bounds = quant.sum_bounds(k)
    reach = bounds.reach()
    e = informed.aggregates["0"].update_sum - (k - 1) * (-C * u)
    assert reach.informed_l2 == pytest.approx((2 * k - 1) * bounds.client_l2)
    assert reach.informed_l2 - k * np.sqrt(dim) * quant.step <= np.linalg.norm(e) <= reach.informed_l2
    over, _ = run_with_rogue([-C * u] * (k - 1), along_u(l2, 1), dim)
    assert over.aggregates == {} and "L2 norm" in over.failures["0"]

    blind = lambda quant: quant.sum_bounds(k).reach().blind_l2  # noqa: E731
    ok, _ = run_with_rogue([C * u] * (k - 1), along_u(blind), dim, informed=False)  # H along u too: worst case
    e = ok.aggregates["0"].update_sum - (k - 1) * C * u
    assert reach.blind_l2 == pytest.approx(bounds.client_l2)
    assert reach.blind_l2 - np.sqrt(dim) * quant.step <= np.linalg.norm(e) <= reach.blind_l2
    refused, _ = run_with_rogue([C * u] * (k - 1), along_u(blind, 3), dim, informed=False)
    assert refused.aggregates == {} and "L2 norm" in refused.failures["0"]
