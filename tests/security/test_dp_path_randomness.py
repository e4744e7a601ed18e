"""#14.1 (High): the DP-SGD sample and noise must be secret from the server.

Two runs of the company's training path (`train_task`, what the ClientApp calls) with an identical task (its
config even carries a server `seed`) and torch's global generator reset to its fixed fresh-process seed before
each run (Flower starts a fresh ClientApp process per message): every data-touching draw must differ."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import dblocks.privacy.dpsgd as dpsgd
import dblocks.shared.training as training
from dblocks.client.ledger import PrivacyLedger
from dblocks.client.trainer import train_task
from dblocks.shared.fedmsg import BlockTask

from ._dp_path_common import arrays, company_data, task

FRESH_PROCESS_SEED = 67280421310721  # torch.initial_seed() of every new process


def _observed_run(tmp_path, name: str) -> dict:
    """One train_task run; returns the Poisson samples, the diffusion draws, the DP noise and the delta."""
    import opacus.optimizers.optimizer as opt
    import opacus.optimizers.optimizer_fast_gradient_clipping as fgc

    seen = {"samples": [], "sigma": [], "z": [], "noise": []}

    def observed_loss(block, block_index, x, y, *, generator=None, weighting="none", label_dropout=0.1, forward=None):
        # per_sample_loss, with its draws written down (same calls, same order, same generator)
        inputs = training.draw_block_inputs(block, block_index, x, y, generator=generator, label_dropout=label_dropout)
        seen["samples"].append(x.clone())
        seen["sigma"].append(inputs.sigma.clone())
        seen["z"].append(inputs.z.detach().clone())
        return training.block_loss(block, inputs, weighting=weighting, forward=forward)

    real_noise = opt._generate_noise

    def observed_noise(*args, **kwargs):
        n = real_noise(*args, **kwargs)
        seen["noise"].append(n.clone())
        return n

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dpsgd, "per_sample_loss", observed_loss)
        mp.setattr(opt, "_generate_noise", observed_noise)
        mp.setattr(fgc, "_generate_noise", observed_noise)
        t, weights, data = task(1, sample_rate=0.2, steps=3), arrays(1), company_data()
        ledger = PrivacyLedger(tmp_path / f"{name}.json", budget=100.0)
        torch.manual_seed(FRESH_PROCESS_SEED)
        upd = train_task(t, weights, data, ledger)
    seen["delta"] = [torch.from_numpy(d) for d in upd.delta]
    return seen


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dp_randomness")
    with torch.random.fork_rng():
        return _observed_run(tmp, "a"), _observed_run(tmp, "b")


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b))


def test_dp_sampling_is_secret_from_server(two_runs):
    """#14.1: the Poisson sample is drawn from the company's OS entropy. On main both runs drew identical Poisson
    samples (the generator was seeded from the server's task.seed), so the server knew every batch."""
    a, b = two_runs
    assert len(a["samples"]) == len(b["samples"]) == 3
    assert not _same(a["samples"], b["samples"]), "the same task gave the same Poisson samples twice"


def test_dp_noise_is_secret_from_server(two_runs):
    """#14.1: the DP-SGD Gaussian noise and the diffusion draws (sigma, the noisy input) are unpredictable. On main
    Opacus drew its noise from torch's global generator, whose seed is a fixed constant in a fresh process, and
    sigma/z came from the task.seed generator: both runs drew identical noise, sigmas and noisy inputs, and
    returned identical deltas."""
    a, b = two_runs
    assert a["noise"] and len(a["noise"]) == len(b["noise"])
    assert not _same(a["noise"], b["noise"]), "the DP noise is the same in two runs of the same task"
    assert not _same(a["sigma"], b["sigma"]) and not _same(a["z"], b["z"])
    assert not _same(a["delta"], b["delta"])


def test_dp_task_carries_no_seed():
    """#14.1: nothing the server sends seeds the company's randomness. On main BlockTask had a `seed` field that
    train_task used to seed the Poisson sampler and the diffusion draws."""
    names = {f.name for f in dataclasses.fields(BlockTask)}
    assert not any("seed" in n for n in names), names
    t = task(1)  # the config carries seed=1234 (an old or hostile server): it is ignored
    assert "seed" not in t.to_config()
