from dataclasses import replace

import torch

from dblocks.privacy.attacks.inversion import ATTACKS, MatchingTarget, RoundObservation, invert
from dblocks.privacy.attacks.local import LocalTraining, local_update, trainable
from dblocks.privacy.attacks.metrics import psnr
from dblocks.privacy.attacks.runner import _math_attention
from dblocks.privacy.attacks.updates import clip_delta


def _active_block(fresh_block):
    """A tiny classifier block with open AdaLN gates (as after training), so the update depends on the image."""
    block = fresh_block("classifier")
    with torch.no_grad():
        for m in [layer.ada for layer in block.layers] + [block.head_ada]:
            m.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    return block.eval()


def _target(block, digits, clip=None, i=0):
    x, y = digits.x[1000 + i : 1001 + i], digits.y[1000 + i : 1001 + i]
    tr = LocalTraining(lr=0.05)
    delta, _ = local_update(block, 1, x, y, tr, torch.Generator().manual_seed(i))
    if clip:
        delta = clip_delta(delta, clip)[0]
    params = trainable(block)
    return x, y, MatchingTarget([RoundObservation(params, {k: delta[k] for k in params})], 1, 1, tr, clip_norm=clip)


def test_cosine_matching_inverts_a_clipped_single_record_update(fresh_block, digits):
    """Inverting Gradients: scale invariant, so clipping hides nothing (privacy.md: 66 dB on an MLP)."""
    block = _active_block(fresh_block)
    x, y, tgt = _target(block, digits, clip=1e-3)
    mean_baseline = float(psnr(digits.x.mean(0, keepdim=True), x))
    with _math_attention():
        r = invert(block, 1, tgt, replace(ATTACKS["inversion"], iterations=300))
    assert int(r.labels[0]) == int(y)  # iDLG label from the head bias
    assert float(psnr(r.images, x)) > mean_baseline + 8


def test_l2_matching_fails_on_a_clipped_update_where_learned_scale_succeeds(fresh_block, digits):
    """DLG's L2 matching needs the update's scale: clipping to C << ||u|| breaks it; learning the scale fixes it."""
    block = _active_block(fresh_block)
    x, _, tgt = _target(block, digits, clip=1e-4)
    with _math_attention():
        plain = invert(block, 1, tgt, replace(ATTACKS["idlg"], iterations=300))
        scaled = invert(block, 1, tgt, replace(ATTACKS["dlg-scales"], iterations=300))
    assert float(psnr(scaled.images, x)) > float(psnr(plain.images, x)) + 5
