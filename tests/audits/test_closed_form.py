import math

import torch

from dblocks.privacy.attacks.closed_form import closed_form_attack
from dblocks.privacy.attacks.local import LocalTraining, local_update
from dblocks.privacy.attacks.metrics import psnr
from dblocks.privacy.attacks.updates import clip_delta


def _one(block, digits, i, lr=0.05):
    x, y = digits.x[900 + i : 901 + i], digits.y[900 + i : 901 + i]
    delta, draws = local_update(block, 1, x, y, LocalTraining(lr=lr), torch.Generator().manual_seed(i))
    return x, y, delta, draws[0]


def test_classifier_single_record_gradient_is_inverted_exactly(trained_blocks, digits):
    block = trained_blocks["classifier"]
    for i in range(3):
        x, y, delta, draw = _one(block, digits, i)
        r = closed_form_attack(block, delta, lr=0.05)
        assert r.label == int(y)
        assert abs(r.sigma - float(draw.sigma)) / float(draw.sigma) < 1e-4
        assert torch.allclose(r.z, draw.z, atol=1e-3 * float(draw.z.abs().max()))
        assert float(psnr(r.image, x)) > 60  # 8-bit digits: exact up to float round-off
        assert r.rank1_ratio < 1e-4
        # clipping rescales the whole update: the classifier's ratios survive it
        clipped, factor = clip_delta(delta, 1e-3)
        assert factor < 1
        assert float(psnr(closed_form_attack(block, clipped, lr=None).image, x)) > 60


def test_generator_single_record_gradient_is_inverted(trained_blocks, digits):
    block = trained_blocks["generator"]
    x, y, delta, draw = _one(block, digits, 0)
    r = closed_form_attack(block, delta, lr=0.05)
    assert r.label == int(draw.label)
    assert abs(r.sigma - float(draw.sigma)) / float(draw.sigma) < 1e-4
    assert torch.allclose(r.z, draw.z, atol=1e-3 * float(draw.z.abs().max()))
    assert float(psnr(r.image, x)) > 40


def test_two_records_are_not_rank_one(trained_blocks, digits):
    block = trained_blocks["classifier"]
    x, y = digits.x[900:902], digits.y[900:902]
    delta, _ = local_update(block, 1, x, y, LocalTraining(lr=0.05), torch.Generator().manual_seed(0))
    r = closed_form_attack(block, delta, lr=0.05)
    assert r.rank1_ratio > 1e-3  # the mixture shows; the attack does not pretend to have one record
    assert float(psnr(r.image, x[:1])) < 30 and float(psnr(r.image, x[1:])) < 30


def test_fresh_block_update_does_not_depend_on_the_image(digits, fresh_block):
    block = fresh_block("classifier")  # zero AdaLN gates
    _, y, delta, _ = _one(block, digits, 0)
    r = closed_form_attack(block, delta, lr=0.05)
    assert r.image is None and math.isnan(r.sigma)
    assert r.label == int(y)  # the label still leaks through the head bias
