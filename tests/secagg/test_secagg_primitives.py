"""Building blocks: Shamir sharing, mask expansion, fixed point, graph and parameter choice."""

import itertools
import os

import numpy as np
import pytest
from scipy import stats

from dblocks.privacy.mechanisms import clip_vector
from dblocks.privacy.secagg import shamir
from dblocks.privacy.secagg.errors import AggregateOverflow
from dblocks.privacy.secagg.graph import Policy, choose_params, failure_probabilities, neighbours, ring_order
from dblocks.privacy.secagg.plan import Plan
from dblocks.privacy.secagg.prg import MaskExpander, expand_mask
from dblocks.privacy.secagg.quant import Extra, QuantSpec


# Shamir ------------------------------------------------------------------------------------------------------
def test_shamir_any_t_shares_rebuild_and_fewer_do_not():
    secret = os.urandom(32)
    elements = shamir.secret_to_elements(secret)
    xs, t = [1, 2, 3, 5, 8, 13, 21], 4
    shares = shamir.split(elements, xs, t)
    assert shares.shape == (len(xs), 16)
    for subset in itertools.combinations(range(len(xs)), t):
        got = shamir.reconstruct([xs[i] for i in subset], shares[list(subset)])
        assert shamir.elements_to_secret(got) == secret
    wrong = shamir.reconstruct(xs[: t - 1], shares[: t - 1])
    assert not np.array_equal(wrong, elements)


def test_shamir_t_minus_1_shares_are_consistent_with_every_secret_exhaustively():
    """Over GF(11) with t = 3: for each pair of share values at two points, every secret has exactly one
    polynomial (s, a1, a2) producing them, so t-1 shares are uniform and independent of the secret."""
    p, xs = 11, [3, 7]
    counts = {}
    for s, a1, a2 in itertools.product(range(p), repeat=3):
        shares = tuple(int(v) for v in shamir.evaluate_polynomials(np.array([s, a1, a2]), xs, p))
        counts.setdefault(shares, set()).add(s)
        counts[(shares, s)] = counts.get((shares, s), 0) + 1
    share_pairs = [k for k in counts if isinstance(k[0], int)]
    assert len(share_pairs) == p * p
    for pair in share_pairs:
        assert counts[pair] == set(range(p))  # every secret is possible
        assert all(counts[(pair, s)] == 1 for s in range(p))  # ... with exactly one polynomial


def test_shamir_share_distribution_does_not_depend_on_the_secret():
    """With the real field: t-1 = 2 shares of an all-zero and of an all-0xFFFF secret are both uniform."""
    xs, t, trials = [1, 2, 3], 3, 4000
    for secret in (np.zeros(16, np.int64), np.full(16, 0xFFFF, np.int64)):
        shares = shamir.split(np.tile(secret, (trials, 1)), xs, t)[:2]  # (2, trials, 16)
        sample = shares.ravel() / shamir.PRIME
        assert stats.kstest(sample, "uniform").pvalue > 1e-4


def test_uniform_field_elements_is_uniform_and_in_range():
    x = shamir.uniform_field_elements((50_000,), prime=13)
    assert x.min() == 0 and x.max() == 12
    counts = np.bincount(x, minlength=13)
    assert stats.chisquare(counts).pvalue > 1e-4


# masks --------------------------------------------------------------------------------------------------------
def test_masks_are_deterministic_per_seed_and_look_uniform():
    seed = os.urandom(32)
    a = expand_mask(seed, 100_000, np.uint32)
    assert np.array_equal(a, expand_mask(seed, 100_000, np.uint32))
    assert not np.array_equal(a, expand_mask(os.urandom(32), 100_000, np.uint32))
    # uniform words: every byte value about equally frequent, mean near 2^31
    counts = np.bincount(a.view(np.uint8), minlength=256)
    assert stats.chisquare(counts).pvalue > 1e-4
    assert abs(a.mean() / 2**32 - 0.5) < 0.005
    # the 64-bit stream starts with the same bytes as the 32-bit one (same AES-CTR keystream)
    b = expand_mask(seed, 1000, np.uint64)
    assert b.view(np.uint32)[:1000].tobytes() == a[:1000].tobytes()


def test_mask_expander_add_and_subtract_cancel():
    exp = MaskExpander(1000, np.uint32)
    acc = np.arange(1000, dtype=np.uint32)
    seed = os.urandom(32)
    exp.add(acc, seed, +1)
    assert not np.array_equal(acc, np.arange(1000, dtype=np.uint32))
    exp.add(acc, seed, -1)
    assert np.array_equal(acc, np.arange(1000, dtype=np.uint32))
    with pytest.raises(ValueError):
        exp.expand(b"short")


# fixed point --------------------------------------------------------------------------------------------------
def test_modulus_grows_with_cohort_and_length_and_is_exact_at_the_worst_case():
    bits = [QuantSpec.plan(n, 1000, 1.0).bits for n in (3, 100, 10_000)]
    assert bits == sorted(bits) and bits[0] < bits[-1]
    assert QuantSpec.plan(100, 10**6, 1.0).bits > QuantSpec.plan(100, 100, 1.0).bits
    # worst case: every client puts its whole norm, with the same sign, on one coordinate
    n, spec = 50, QuantSpec.plan(50, 16, 2.0)
    x = np.zeros(16)
    x[3] = -2.0
    total = np.zeros(16, dtype=np.uint64)
    for _ in range(n):
        total += spec.encode(x)
    got, _ = spec.decode_sum(total.astype(spec.dtype), n)
    assert got[3] == pytest.approx(-2.0 * n, abs=spec.max_abs_error(n)[3])


def test_encode_refuses_out_of_bound_inputs():
    spec = QuantSpec.plan(10, 8, 1.0, extras=[Extra.count("n", 100)])
    with pytest.raises(AggregateOverflow, match="clip"):
        spec.encode(np.ones(8))
    with pytest.raises(AggregateOverflow, match="outside its bound"):
        spec.encode(np.zeros(8), {"n": 101})
    with pytest.raises(ValueError, match="unmasked"):
        spec.encode(np.zeros(8), {"loss": 1.0})
    with pytest.raises(ValueError, match="dim"):
        spec.encode(np.zeros(9))
    assert np.linalg.norm(clip_vector(np.ones(8), 1.0)) == pytest.approx(1.0)
    spec.encode(clip_vector(np.ones(8) * 1e6, 1.0))


def test_decode_refuses_a_sum_outside_the_guaranteed_range():
    spec = QuantSpec.plan(10, 8, 1.0)
    honest = spec.encode(clip_vector(np.ones(8), 1.0))
    # a malicious client's words: a value far beyond its level bound
    rogue = np.full(8, (1 << (spec.bits - 2)), dtype=spec.dtype)
    with pytest.raises(AggregateOverflow, match="out of range"):
        spec.decode_sum((honest + rogue) & spec.dtype.type(spec.modulus_mask), 2)


def test_modulus_above_64_bits_is_an_error():
    with pytest.raises(AggregateOverflow, match="64"):
        QuantSpec.plan(1000, 10**6, 1.0, extras=[Extra("loss", 1e12, 1e-9)])


# graph --------------------------------------------------------------------------------------------------------
def test_harary_graph_is_k_regular_symmetric_and_deterministic():
    members = [f"c{i}" for i in range(40)]
    order = ring_order(b"seed", members)
    assert sorted(order) == sorted(members) and order == ring_order(b"seed", members)
    assert order != ring_order(b"other", members)
    g = neighbours(order, 8)
    for u, vs in g.items():
        assert len(vs) == 8 == len(set(vs)) and u not in vs
        assert all(u in g[v] for v in vs)
    complete = neighbours(order[:5], 4)
    assert all(len(v) == 4 for v in complete.values())


def test_ring_order_is_pinned_and_a_members_neighbours_match_the_whole_graph():
    """The ring order is part of the protocol (every party derives it): pinned to the value the original
    4-bytes-at-a-time reader gave; a plan computes one member's neighbours alone, and they equal the whole graph's."""
    members = [f"c{i:02d}" for i in range(12)]
    assert ring_order(b"pinned-seed", members) == [
        "c09", "c06", "c10", "c01", "c07", "c03", "c05", "c02", "c11", "c08", "c00", "c04"
    ]  # fmt: skip
    for n, k in [(60, 12), (60, 59), (7, 6)]:
        quant = QuantSpec.plan(n, 4, 1.0)
        plan = Plan(b"s" * 16, 1, "0", tuple(f"c{i:03d}" for i in range(n)), k, k // 2 + 1, 3, 0, quant)
        whole = neighbours(ring_order(plan.digest, plan.cohort), k)
        assert all(plan.neighbours(u) == whole[u] for u in plan.cohort)
        assert [plan.x(u) for u in plan.cohort] == list(range(1, n + 1))
    with pytest.raises(KeyError):
        plan.neighbours("stranger")


@pytest.mark.parametrize("n", [3, 5, 10, 30, 100, 300, 1000])
def test_chosen_parameters_meet_their_conditions(n):
    policy = Policy()
    p = choose_params(n, policy)
    assert p.k <= n - 1 and (p.k % 2 == 0 or p.complete)
    assert 2 * p.t > p.k  # majority of neighbours
    assert max(p.p_reveal, p.p_disconnect) <= 2.0**-policy.sigma and p.p_unrecoverable <= 2.0**-policy.eta
    # t is the smallest secure threshold for this k: every smaller one breaks a security bound
    for smaller in range(p.k // 2 + 1, p.t):
        worse = failure_probabilities(n, p.k, smaller, policy)
        assert max(worse[0], worse[1]) > 2.0**-policy.sigma
    if n >= 300:
        assert p.k < n / 3  # sparse: k grows like log n, not n


def test_degree_grows_far_slower_than_the_cohort():
    ks = {n: choose_params(n).k for n in (200, 1000, 5000)}
    assert ks[200] < ks[1000] < ks[5000] < 3 * ks[200] and ks[5000] < 0.05 * 5000


def test_infeasible_cohort_is_a_clear_error():
    with pytest.raises(ValueError, match="enlarge the cohort"):
        choose_params(4, Policy(dropout_fraction=0.5))
    with pytest.raises(ValueError, match="at least 3"):
        choose_params(2)


def test_exact_hypergeometric_tail_matches_scipy():
    from scipy.stats import hypergeom

    from dblocks.privacy.secagg.graph import _tail_ge

    rng = np.random.default_rng(0)
    for _ in range(200):
        population = int(rng.integers(5, 2000))
        marked, draws = int(rng.integers(0, population + 1)), int(rng.integers(1, population + 1))
        at_least = int(rng.integers(1, draws + 2))
        want = float(hypergeom.sf(at_least - 1, population, marked, draws))
        assert _tail_ge(population, marked, draws, at_least) == pytest.approx(want, rel=1e-9, abs=1e-300)
