"""Masked diffusion blocks (shared/text_mdm.py): the schedule's partition, the ELBO's scale, training, save/load."""

import dataclasses

import numpy as np
import pytest
import torch

from dblocks.shared import text_mdm as M
from dblocks.shared.text import Document, TokenStream, encode
from dblocks.shared.text_presets import TextModel, load_checkpoint, save_checkpoint

TINY = M.Config(
    seq_len=32,
    total_layers=3,
    num_blocks=3,
    width=32,
    heads=2,
    steps=20,
    batch_size=16,
    warmup=5,
    lr=3e-3,
    sample_steps=8,
    eval_points=6,
)
TEXT = b"".join(b"def f%d(x):\n    return x + %d\n" % (i % 10, i % 7) for i in range(300))
STREAM = TokenStream([Document("a", "a", TEXT)])


@pytest.mark.parametrize("schedule", M.SCHEDULES)
@pytest.mark.parametrize("num_blocks", [1, 3, 4])
def test_blocks_own_equal_drops_in_alpha_and_cover_the_time_axis(schedule, num_blocks):
    alphas = M.block_alpha_intervals(num_blocks)
    assert np.allclose([hi - lo for lo, hi in alphas], 1 / num_blocks)  # equal drops
    assert alphas[0][1] == 1.0 and abs(alphas[-1][0]) < 1e-12
    assert all(np.isclose(alphas[k][0], alphas[k + 1][1]) for k in range(num_blocks - 1))  # contiguous
    times = M.block_t_intervals(num_blocks, schedule)
    assert np.isclose(times[0][0], 0.0) and np.isclose(times[-1][1], 1.0)
    assert all(np.isclose(times[k][1], times[k + 1][0]) for k in range(num_blocks - 1))
    for (t0, t1), (lo, hi) in zip(times, alphas, strict=True):
        assert t0 < t1 and np.isclose(M.alpha(t0, schedule), hi) and np.isclose(M.alpha(t1, schedule), lo)
    for t in np.random.default_rng(0).random(200):  # the owner of t is the block whose interval holds it
        k = M.owner_of_t(t, num_blocks, schedule)
        assert times[k][0] - 1e-9 <= t <= times[k][1] + 1e-9
    if schedule == "cosine" and num_blocks == 3:  # not the linear split: equal drops in alpha, unequal in t
        assert not np.allclose([t1 - t0 for t0, t1 in times], 1 / 3)


def test_untrained_bpc_is_log2_vocab_and_few_steps_lower_it():
    model = M.build(TINY, end_to_end=False, seed=0)
    untrained = M.evaluate(model, TINY, STREAM, seed=0, max_windows=32)["bpc"]
    assert abs(untrained - 8.0) < 0.25  # uniform over 256 bytes; a wrong 1/m weight would be far from 8
    stats = M.train(model, TINY, STREAM, seed=0)
    assert [b["steps"] for b in stats["blocks"]] == [TINY.steps] * 3
    trained = M.evaluate(model, TINY, STREAM, seed=0, max_windows=32)["bpc"]
    assert trained < untrained - 2.0
    new = M.sample(model, TINY, encode("def "), new_tokens=12, seed=0)
    assert new.shape == (12,) and new.max() < 256  # every [MASK] unmasked by t = 0
    longer = M.sample(model, TINY, encode("def "), new_tokens=TINY.seq_len + 9, seed=0)  # window by window
    assert longer.shape == (TINY.seq_len + 9,) and longer.max() < 256


def test_block_loss_trains_only_its_block():
    model = M.build(TINY, end_to_end=False, seed=0)
    batch = STREAM.batch(np.random.default_rng(0), 8, TINY.seq_len)
    loss = M.block_loss(model, TINY, 1, batch, torch.Generator().manual_seed(0))
    assert loss.shape == (8,)
    loss.mean().backward()
    assert all(p.grad is None for k in (0, 2) for p in model.denoisers[k].parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.denoisers[1].parameters())
    assert M.training_mask_interval(dataclasses.replace(TINY, overlap=0.5), 0, False) == (0.0, 0.5)


def test_save_load_round_trip(tmp_path):
    model = M.build(TINY, end_to_end=True, seed=1)
    M.train(model, TINY, STREAM, seed=1, steps=5)
    path = tmp_path / "m.pt"
    save_checkpoint(path, TextModel("mdm", M, TINY, True, model, {"corpus": "test"}))
    back = load_checkpoint(path)
    assert back.config == TINY and back.end_to_end and back.data == {"corpus": "test"}
    assert M.evaluate(back.model, TINY, STREAM, seed=3, max_windows=8) == M.evaluate(
        model, TINY, STREAM, seed=3, max_windows=8
    )
    prompt = encode("x = ")
    assert np.array_equal(
        M.sample(back.model, TINY, prompt, new_tokens=8, seed=2), M.sample(model, TINY, prompt, new_tokens=8, seed=2)
    )


def test_block_loss_gives_opacus_exact_per_example_gradients():
    """DP-SGD trains one block through block_loss(..., forward=GradSampleModule(block)): every parameter gets a
    per-example gradient and their mean is the batch gradient."""
    from opacus import GradSampleModule

    model = M.build(TINY, end_to_end=False, seed=0)
    wrapped = GradSampleModule(model.denoisers[2])
    batch = STREAM.batch(np.random.default_rng(1), 6, TINY.seq_len)
    M.block_loss(model, TINY, 2, batch, torch.Generator().manual_seed(0), forward=wrapped).mean().backward()
    for p in model.denoisers[2].parameters():
        assert p.grad_sample.shape[0] == 6 and torch.allclose(p.grad_sample.mean(0), p.grad, atol=1e-6)
