"""Whole protocol in-process: exactness for cohorts of 3..100, several blocks per round, extras under the same
masks, dropouts at every stage down to the threshold and a clear failure below it."""

import numpy as np
import pytest

from dblocks.privacy.secagg import Extra, Policy, choose_params

# a policy that plans for 3 dropouts in a cohort of 10: complete graph, k = 9, t = 6 (2t > k + C with C = 1)
TEN = Policy(dropout_fraction=0.3)


def check_exact(fed, result, block="0"):
    """The aggregate equals the plain sum of the survivors' clipped inputs within the quantisation bound."""
    agg = result.aggregates[block]
    expected = fed.expected_sum(result.round, agg.survivors)
    err = np.abs(agg.update_sum - expected).max()
    assert err <= agg.error_bound * (1 + 1e-9) + 1e-12, (err, agg.error_bound)
    np.testing.assert_allclose(agg.mean_update, expected / agg.count, atol=agg.error_bound / agg.count + 1e-12)
    return err


@pytest.mark.parametrize("n,dim", [(3, 50), (4, 50), (7, 40), (10, 40), (25, 30), (50, 20), (100, 16)])
def test_aggregate_equals_plain_sum_for_cohorts_3_to_100(federation, n, dim):
    fed = federation(n, dim, seed=n)
    fed.start()
    for r in (1, 2):
        result = fed.run(r, plan_next=(r == 1))
        assert result.failures == {}
        agg = result.aggregates["0"]
        assert agg.count == n and agg.dropped_at_upload == () and agg.not_announced == ()
        err = check_exact(fed, result)
        assert err < 1e-3  # rel_error 1e-4 of clip norm 1, summed over n
    params = choose_params(n)
    assert fed.server.plans(1)[0].degree == params.k and fed.server.plans(1)[0].threshold == params.t


def test_server_keeps_no_masked_inputs_of_finished_rounds(federation):
    """Memory at scale: once a round is aggregated (or failed) its n masked inputs are dropped; the next round's
    instances are untouched and still aggregate exactly."""
    fed = federation({"0": 5, "1": 6}, 64, seed=7)
    fed.start()
    for r in (1, 2):
        result = fed.run(r, plan_next=(r == 1))
        assert result.failures == {}
        for block in "01":
            check_exact(fed, result, block)
        finished = [i for i in fed.server.instances.values() if i.plan.round <= r]
        assert finished and all(i.masked == {} and i.survivors for i in finished)


def test_quantisation_error_is_far_below_flower_default(federation):
    """Max abs error per coordinate of the mean is at most step/2 = rel_error * C / sqrt(dim)."""
    fed = federation(10, 10_000, seed=3)
    fed.start()
    result = fed.run(1, plan_next=False)
    agg = result.aggregates["0"]
    err = np.abs(agg.mean_update - fed.expected_sum(1, agg.survivors) / agg.count).max()
    step = fed.server.plans(1)[0].quant.step
    assert err <= step / 2 * (1 + 1e-9)
    assert step / 2 <= 1e-4 / np.sqrt(10_000)


def test_several_blocks_in_one_round_are_independent_instances(federation):
    fed = federation({"0": 6, "1": 8, "2": 5}, 32, seed=1)
    fed.start()
    result = fed.run(1)
    assert set(result.aggregates) == {"0", "1", "2"}
    for block in "012":
        check_exact(fed, result, block)
        assert set(result.aggregates[block].survivors) == set(fed.cohorts[block])
    plans = {p.block: p for p in fed.server.plans(1)}
    assert len({p.digest for p in plans.values()}) == 3


def test_extras_travel_under_the_same_masks_and_sum_exactly(federation):
    extras = [Extra.count("num_examples", 100_000), Extra("loss", 100.0, 1e-4)]
    fed = federation(6, 16, seed=2, extras=extras)
    rng = np.random.default_rng(9)
    for cid in fed.net.clients:
        fed.extras[(1, cid)] = {"num_examples": int(rng.integers(1, 5000)), "loss": float(rng.uniform(0, 3))}
    fed.start()
    result = fed.run(1, plan_next=False)
    agg = result.aggregates["0"]
    assert agg.extras_sum["num_examples"] == sum(fed.extras[(1, c)]["num_examples"] for c in agg.survivors)
    assert agg.extras_sum["loss"] == pytest.approx(
        sum(fed.extras[(1, c)]["loss"] for c in agg.survivors), abs=6 * 0.5e-4
    )
    # what travelled from a client: one masked word array, no per-client count or metric in the clear
    upload = [s for s in fed.net.stages.items()]
    assert upload


def _drop(fed, round_, stage, ids):
    fed.net.drop.setdefault((round_, stage), set()).update(ids)


@pytest.mark.parametrize("stage", ["register", "join", "upload", "unmask"])
def test_dropouts_at_each_stage_down_to_the_threshold(federation, stage):
    fed = federation(10, 24, policy=TEN, seed=4)
    ids = sorted(fed.net.clients)
    gone = ids[2:5]  # three dropouts: k - t = 9 - 6
    _drop(fed, 1, stage, gone)
    fed.start()
    result = fed.run(1, plan_next=False)
    assert result.failures == {}, result.failures
    agg = result.aggregates["0"]
    check_exact(fed, result)
    if stage in ("register", "join", "upload"):
        assert set(agg.survivors) == set(ids) - set(gone)
    if stage == "join":
        assert set(agg.not_announced) == set(gone)
    if stage == "upload":
        assert set(agg.dropped_at_upload) == set(gone)
    if stage == "unmask":  # their inputs are in the sum; their shares were simply not needed
        assert set(agg.survivors) == set(ids) and set(agg.silent_at_unmask) == set(gone)


@pytest.mark.parametrize("stage", ["join", "upload", "unmask"])
def test_one_dropout_below_the_threshold_fails_clearly_and_reveals_nothing_extra(federation, stage):
    fed = federation(10, 24, policy=TEN, seed=5)
    ids = sorted(fed.net.clients)
    _drop(fed, 1, stage, ids[:4])  # four dropouts: one more than t allows
    fed.start()
    result = fed.run(1, plan_next=False)
    assert result.aggregates == {}
    reason = result.failures["0"]
    assert "6" in reason and ("needed" in reason or "threshold" in reason), reason


def test_dropouts_spread_over_all_stages_in_one_round(federation):
    fed = federation(10, 24, policy=TEN, seed=6)
    ids = sorted(fed.net.clients)
    _drop(fed, 1, "join", [ids[0]])
    _drop(fed, 1, "upload", [ids[1]])
    _drop(fed, 1, "unmask", [ids[2]])
    fed.start()
    result = fed.run(1, plan_next=False)
    agg = result.aggregates["0"]
    assert agg.not_announced == (ids[0],) and agg.dropped_at_upload == (ids[1],)
    assert agg.silent_at_unmask == (ids[2],) and ids[2] in agg.survivors
    check_exact(fed, result)


def test_dropout_while_announcing_next_round_keys_costs_only_that_client_a_join(federation):
    """A client that misses round r's upload also missed announcing its round r+1 keys (piggy-backed): in round
    r+1 it is asked to join first; everyone else still needs only upload + unmask."""
    fed = federation(10, 24, policy=TEN, seed=7)
    ids = sorted(fed.net.clients)
    fed.start()
    fed.run(1)
    _drop(fed, 2, "upload", [ids[3]])
    r2 = fed.run(2)
    assert r2.aggregates["0"].dropped_at_upload == (ids[3],)
    r3 = fed.run(3, plan_next=False)
    check_exact(fed, r3)
    assert ids[3] in r3.aggregates["0"].survivors
    assert fed.net.stages[(3, ids[3])] == ["join", "upload", "unmask"]
    assert all(fed.net.stages[(3, c)] == ["upload", "unmask"] for c in ids if c != ids[3])


def test_sparse_graph_with_dropouts(federation):
    fed = federation(40, 16, seed=8)
    plan_params = choose_params(40)
    assert not plan_params.complete
    ids = sorted(fed.net.clients)
    _drop(fed, 1, "upload", ids[:2])
    _drop(fed, 1, "unmask", ids[10:12])
    fed.start()
    result = fed.run(1, plan_next=False)
    assert result.failures == {}
    check_exact(fed, result)
    assert fed.server.plans(1)[0].degree == plan_params.k < 39


def test_consistency_mode_is_exact_with_dropouts(federation):
    fed = federation(10, 24, policy=TEN, consistency=True, seed=10)
    ids = sorted(fed.net.clients)
    _drop(fed, 1, "upload", [ids[0]])
    _drop(fed, 1, "confirm", [ids[1]])  # confirmation lost: it can still help unmask
    _drop(fed, 1, "unmask", [ids[2]])
    fed.start()
    result = fed.run(1, plan_next=False)
    assert result.failures == {}, (result.failures, fed.server.events)
    check_exact(fed, result)


def test_clients_moving_between_blocks_every_round_keep_two_exchanges(federation):
    """As with dblocks' round-robin scheduler: each round deals the nodes to the blocks anew. The next round's
    cohorts are fixed one round ahead, so every client still needs only upload + unmask per round."""
    from dblocks.privacy.secagg import plan_round, run_round

    fed = federation({"0": 6, "1": 6}, 24, seed=11)
    ids = sorted(fed.net.clients)
    rng = np.random.default_rng(5)

    def deal(r):
        order = list(rng.permutation(ids))
        return {"0": sorted(order[:6]), "1": sorted(order[6:])}

    fed.cohorts = deal(1)
    plan_round(fed.server, 1, fed.cohorts, fed.layouts, fed.net)
    for r in range(1, 5):
        if r < 4:
            plan_round(fed.server, r + 1, deal(r + 1), fed.layouts, fed.net)
        result = run_round(fed.server, r, fed.net)
        assert result.failures == {}
        for block in ("0", "1"):
            check_exact(fed, result, block)
        if r > 1:
            assert all(fed.net.stages[(r, c)] == ["upload", "unmask"] for c in ids)
