import pytest
import torch

from dblocks.privacy.attacks.conformance import noise_conformance
from dblocks.privacy.attacks.updates import (
    BlockUpdate,
    UpdateMeta,
    aggregate,
    clip_delta,
    parameter_keys,
    release,
    release_meta,
)

K, C, Z = 8, 1.0, 1.0


@pytest.fixture(scope="module")
def setup(trained_blocks):
    block = trained_blocks["classifier"]
    g = torch.Generator().manual_seed(0)
    # clients whose raw deltas are far above the clip: the clip bound binds for all of them
    deltas = [{k: 0.05 * torch.randn(v.shape, generator=g) for k, v in block.state_dict().items()} for _ in range(K)]
    return parameter_keys(block), deltas, UpdateMeta(1, (0.1, 0.5), "release")


def _check(keys, delta, meta):
    return noise_conformance(BlockUpdate(delta, meta), keys)


def test_correct_release_conforms(setup):
    keys, deltas, base = setup
    r = _check(keys, release(deltas, C, Z, torch.Generator().manual_seed(1), keys), release_meta(base, C, K, Z))
    assert r.passed, r.failures
    assert abs(r.measured_std - Z * C / K) / (Z * C / K) < 0.02
    assert abs(r.random_direction_std - Z * C / K) / (Z * C / K) < 0.15


@pytest.mark.parametrize("bug", ["missing", "double", "dropout", "partial"])
def test_misconfigured_noise_is_caught(setup, bug):
    keys, deltas, base = setup
    g = torch.Generator().manual_seed(2)
    meta = release_meta(base, C, K, Z)
    if bug == "missing":  # the sidecar promises z = 1, the aggregator added nothing
        delta = release(deltas, C, 0.0, g, keys)
    elif bug == "double":  # noise added twice
        delta = release(deltas, C, Z, g, keys)
        delta = {k: v + (Z * C / K) * torch.randn(v.shape, generator=g) if k in keys else v for k, v in delta.items()}
    elif bug == "dropout":  # noise shares sized for 8 clients, 6 survived: variance 6/8 of what 6 clients need
        survivors = deltas[:6]
        delta = release(survivors, C, Z * (6 / 8) ** 0.5, g, keys)
        meta = release_meta(base, C, 6, Z)
    else:  # noise on the weights only, biases left clean
        delta = release(deltas, C, Z, g, [k for k in keys if not k.endswith("bias")])
    r = _check(keys, delta, meta)
    assert not r.passed


def test_aggregate_norm_bound(setup):
    keys, deltas, base = setup
    clipped = aggregate([clip_delta(d, C)[0] for d in deltas])
    meta = UpdateMeta(1, (0.1, 0.5), "aggregate", clip_norm=C, clients_aggregated=K, reduction="sum")
    assert _check(keys, clipped, meta).passed
    unclipped = aggregate(deltas)  # a client skipped its clip
    r = _check(keys, unclipped, meta)
    assert not r.passed and "clip bound" in r.failures[0]
