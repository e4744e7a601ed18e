"""Planted bugs for the audits' positive controls (bench and tests only: never product flags).

Each is a context manager that breaks one DP mechanism the way a real bug would, while the accountant still
sees the claimed settings, so an audit that passes under it lacks power:
  opacus_noise_scaled(f)      Opacus draws its Gaussian noise with std f z C (0: no noise at all)
  opacus_clipping_disabled()  ghost clipping's per-example coefficient is always 1
  central_noise_disabled()    the server releases the cohort mean without central noise
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock


@contextmanager
def opacus_noise_scaled(factor: float) -> Iterator[None]:
    import opacus.optimizers.optimizer as opt
    import opacus.optimizers.optimizer_fast_gradient_clipping as fgc
    import torch

    original = opt._generate_noise

    def scaled(std, reference, generator=None, secure_mode=False):
        if factor == 0:
            return torch.zeros_like(reference)
        return original(std * factor, reference, generator=generator, secure_mode=secure_mode)

    with mock.patch.object(fgc, "_generate_noise", scaled), mock.patch.object(opt, "_generate_noise", scaled):
        yield


@contextmanager
def opacus_clipping_disabled() -> Iterator[None]:
    import torch
    from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import GradSampleModuleFastGradientClipping as G

    with mock.patch.object(G, "get_clipping_coef", lambda self: torch.ones_like(self.get_norm_sample())):
        yield


@contextmanager
def central_noise_disabled() -> Iterator[None]:
    import dblocks.privacy.mechanisms as mechanisms

    with mock.patch.object(
        mechanisms, "add_central_noise", lambda mean, clip, z, k, rng: ([m.copy() for m in mean], 0.0)
    ):
        yield
