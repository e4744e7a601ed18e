import math

import numpy as np
import pytest
import torch
from scipy import stats

from dblocks.shared.sampler import route
from dblocks.shared.schedule import NoiseSchedule


@pytest.mark.parametrize("B", [1, 2, 3, 4, 6, 8])
def test_equiprob_partition_masses_are_one_over_B(B):
    s = NoiseSchedule(num_blocks=B)
    b = s.partition()
    assert b[0] == s.sigma_max and b[-1] == s.sigma_min and np.all(np.diff(b) < 0)
    masses = [s.mass(b[i + 1], b[i]) for i in range(B)]
    np.testing.assert_allclose(masses, 1 / B, atol=1e-12)


def test_partition_matches_paper_boundaries():
    np.testing.assert_allclose(NoiseSchedule(num_blocks=3).partition()[1:3], [0.505, 0.180], atol=1e-3)
    np.testing.assert_allclose(NoiseSchedule(num_blocks=4).partition()[1:4], [0.677, 0.301, 0.134], atol=1e-3)


def test_uniform_partition_has_equal_log_widths():
    s = NoiseSchedule(num_blocks=5, partition_kind="uniform")
    widths = -np.diff(np.log(s.partition()))
    np.testing.assert_allclose(widths, math.log(80 / 0.002) / 5, rtol=1e-12)
    # and its masses are far from equal: that is why the paper rejects it
    masses = [s.mass(*s.owned_interval(i)) for i in range(5)]
    assert max(masses) / min(masses) > 5


@pytest.mark.parametrize("gamma", [0.0, 0.1, 0.2])
def test_overlap_formula(gamma):
    s = NoiseSchedule(num_blocks=4, gamma=gamma)
    for i in range(4):
        lo, hi = s.owned_interval(i)
        alpha = (hi / lo) ** gamma
        tlo, thi = s.training_interval(i)
        assert tlo == pytest.approx(max(lo / alpha, s.sigma_min)) and thi == pytest.approx(min(hi * alpha, s.sigma_max))
        assert tlo <= lo and thi >= hi
    if gamma > 0:  # inner blocks really overlap their neighbours
        assert s.training_interval(1)[0] < s.owned_interval(2)[1] < s.training_interval(1)[1]


def test_per_block_sampling_is_exact_and_pools_to_the_lognormal():
    s = NoiseSchedule(num_blocks=4, gamma=0.0, sigma_min=1e-6, sigma_max=1e6)  # ~untruncated
    g = torch.Generator().manual_seed(0)
    draws = []
    for i in range(4):
        x = s.sample_sigma(i, 50_000, g).double()
        lo, hi = s.training_interval(i)
        assert x.min() >= lo * (1 - 1e-6) and x.max() <= hi * (1 + 1e-6)
        # exactness inside the block: CDF of the truncated log-normal is uniform
        u = (s.cdf(x.numpy()) - s.cdf(lo)) / (s.cdf(hi) - s.cdf(lo))
        assert stats.kstest(u, "uniform").pvalue > 1e-3
        draws.append(x)
    ln = torch.cat(draws).log().numpy()
    assert abs(ln.mean() - s.p_mean) < 0.02 and abs(ln.std() - s.p_std) < 0.02
    assert stats.kstest(ln, "norm", args=(s.p_mean, s.p_std)).pvalue > 1e-3


def test_routing_picks_the_owning_block_at_every_step():
    s = NoiseSchedule(num_blocks=4)
    b = s.partition()
    for grid in (s.edm_grid(40), s.cdf_grid(16), s.block_grid(3)):
        for sigma, blk in zip(grid[:-1], route(s, grid)):
            assert b[blk + 1] <= sigma <= b[blk] * (1 + 1e-9)
    # a boundary is the top of the block below it (block i owns (b_{i+1}, b_i]); sigma_max is block 0's
    assert s.block_for_sigma(b[1]) == 1 and s.block_for_sigma(b[1] * 1.0001) == 0
    assert s.block_for_sigma(s.sigma_max) == 0 and s.block_for_sigma(s.sigma_min) == 3
    with pytest.raises(ValueError):
        s.block_for_sigma(100.0)


def test_block_grid_gives_every_block_the_same_steps():
    for kind in ("equiprob", "uniform"):
        s = NoiseSchedule(num_blocks=4, partition_kind=kind)
        counts = np.bincount(route(s, s.block_grid(3)), minlength=4)
        assert counts.tolist() == [3, 3, 3, 3]
    # the EDM rho grid does not: its steps crowd into some blocks
    s = NoiseSchedule(num_blocks=3)
    assert len(set(np.bincount(route(s, s.edm_grid(18)), minlength=3))) > 1


def test_edm_grid_and_preconditioning():
    s = NoiseSchedule()
    g = s.edm_grid(18)
    assert g[0] == pytest.approx(80) and g[-2] == pytest.approx(0.002) and g[-1] == 0 and np.all(np.diff(g) < 0)
    sigma = torch.tensor([0.002, 0.5, 80.0])
    c_skip, c_out, c_in, c_noise = s.precondition(sigma)
    # EDM identities: c_skip + c_out^2/sd^2 = 1 and unit-variance network input
    torch.testing.assert_close(c_skip + c_out**2 / s.sigma_data**2, torch.ones(3))
    torch.testing.assert_close(c_in**2 * (sigma**2 + s.sigma_data**2), torch.ones(3))
    torch.testing.assert_close(s.loss_weight(sigma), 1 / c_out**2)
    assert s.inference_start < s.sigma_max


def test_invalid_schedules_are_refused():
    with pytest.raises(ValueError):
        NoiseSchedule(num_blocks=0)
    with pytest.raises(ValueError):
        NoiseSchedule(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError):
        NoiseSchedule(partition_kind="log")
