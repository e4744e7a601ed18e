import numpy as np
import pytest
import torch

from dblocks.shared.sampler import integrate
from dblocks.shared.schedule import NoiseSchedule

SCHED = NoiseSchedule(num_blocks=4)


def gaussian_denoiser(sd: float):
    """Exact D for z0 ~ N(0, sd^2 I): D(z, sigma) = z sd^2 / (sd^2 + sigma^2)."""
    return lambda block, z, sigma: z * sd**2 / (sd**2 + sigma[:, None] ** 2)


@pytest.mark.parametrize("solver,steps,tol", [("euler", 400, 0.05), ("heun", 40, 0.01)])
def test_solvers_follow_the_exact_probability_flow(solver, steps, tol):
    sd, s0 = 0.5, SCHED.sigma_max
    z_start = s0 * torch.randn(256, 4, generator=torch.Generator().manual_seed(0))
    z_end = integrate(gaussian_denoiser(sd), SCHED, SCHED.edm_grid(steps), z_start.clone(), solver)
    exact = z_start * np.sqrt(sd**2 + SCHED.sigma_min**2) / np.sqrt(sd**2 + s0**2)  # ODE solution down to sigma_min
    rel = ((z_end - exact).norm() / exact.norm()).item()
    assert rel < tol


def test_heun_beats_euler_at_equal_steps():
    sd = 0.5
    z = 80 * torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
    exact = z * np.sqrt(sd**2 + 0.002**2) / np.sqrt(sd**2 + 80**2)
    err = {
        s: (integrate(gaussian_denoiser(sd), SCHED, SCHED.edm_grid(20), z.clone(), s) - exact).norm().item()
        for s in ("euler", "heun")
    }
    assert err["heun"] < 0.5 * err["euler"]


def test_each_step_is_routed_to_the_owning_block_including_heun_correctors():
    calls = []

    def denoise(block, z, sigma):
        calls.append((block, float(sigma[0])))
        return torch.zeros_like(z)

    grid = SCHED.block_grid(2)
    integrate(denoise, SCHED, grid, torch.ones(2, 3), "heun")
    b = SCHED.partition()
    for block, s in calls:
        assert b[block + 1] < s <= b[block] or (block == 3 and s == SCHED.sigma_min)
    assert [blk for blk, _ in calls[::2]] == [0, 0, 1, 1, 2, 2, 3, 3]
    # the corrector at a block's last step evaluates the next block
    assert (1, b[1]) in [(blk, pytest.approx(s)) for blk, s in calls]
