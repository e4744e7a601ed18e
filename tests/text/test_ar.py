"""Autoregressive DiffusionBlocks (shared/text_ar.py): attention masks by perturbation, the training layout against
the sampling layout, sampling shape and determinism, save/load round trip, MAUVE sanity. Tiny models (< 5 s)."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch

from dblocks.shared import text_ar
from dblocks.shared.text import Document, TokenStream

CFG = text_ar.Config(seq_len=12, total_layers=4, num_blocks=2, width=32, heads=2, steps=2, batch_size=4)


def _randomised(model: torch.nn.Module) -> torch.nn.Module:
    """AdaLN-Zero starts every layer as the identity (attention unused): give every weight random values so
    that a leak through the attention would show."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return model.eval()


def _inputs(seed: int, t: int = CFG.seq_len):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 256, (2, t), generator=g)
    z = torch.randn(2, t, CFG.width, generator=g)
    sigma = torch.exp(torch.randn(2, t, generator=g))
    return tokens, z, sigma


def _max(x: torch.Tensor) -> float:
    return float(x.max()) if x.numel() else 0.0


def test_mask_layout():
    m = text_ar.clean_noisy_mask(3, torch.arange(3)).int().tolist()
    assert m == [
        [1, 0, 0, 0, 0, 0],  # clean 0: clean 0
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 0, 0],  # noisy 0: no prefix, itself
        [1, 0, 0, 0, 1, 0],  # noisy 1: clean 0, itself
        [1, 1, 0, 0, 0, 1],
    ]


@torch.no_grad()
def test_no_future_token_visible_by_perturbation():
    block = _randomised(text_ar.build(CFG, end_to_end=False, seed=0)).blocks[0]
    tokens, z, sigma = _inputs(0)
    t = CFG.seq_len
    h, _ = block.streams(tokens, z, sigma)
    for j in (0, 5, t - 1):
        changed = tokens.clone()
        changed[:, j] = (changed[:, j] + 1) % 256
        h2, _ = block.streams(changed, z, sigma)
        diff = (h2 - h).abs().amax(dim=(0, 2))  # per stream position
        clean, noisy = diff[:t], diff[t:]
        assert _max(clean[:j]) == 0 and clean[j] > 0  # clean k sees clean <= k
        assert noisy[: j + 1].max() == 0  # noisy i sees clean < i only
        assert j == t - 1 or noisy[j + 1 :].min() > 0
        z2 = z.clone()
        z2[:, j] += 1.0  # a noisy token is seen by no other token
        h3, _ = block.streams(tokens, z2, sigma)
        diff = (h3 - h).abs().amax(dim=(0, 2))
        assert diff[:t].max() == 0 and diff[t + j] > 0
        assert _max(torch.cat([diff[t : t + j], diff[t + j + 1 :]])) == 0


@torch.no_grad()
def test_baseline_is_causal_by_perturbation():
    model = _randomised(text_ar.build(CFG, end_to_end=True, seed=0))
    tokens, _, _ = _inputs(0)
    out = model(tokens)
    changed = tokens.clone()
    changed[:, 6] = (changed[:, 6] + 7) % 256
    diff = (model(changed) - out).abs().amax(dim=(0, 2))
    assert diff[:6].max() == 0 and diff[6:].min() > 0


@torch.no_grad()
def test_training_layout_equals_sampling_layout():
    """Logits at position p from the vectorised pass equal those of the prefix x_<p and one noisy token at p."""
    block = _randomised(text_ar.build(CFG, end_to_end=False, seed=0)).blocks[1]
    tokens, z, sigma = _inputs(2)
    full = block(tokens, z, sigma)
    for p in (0, 4, CFG.seq_len - 1):
        one = block(tokens[:, :p], z[:, p : p + 1], sigma[:, p : p + 1], torch.tensor([p]))
        torch.testing.assert_close(one[:, 0], full[:, p], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("end_to_end,sampler", [(False, "euler"), (False, "ancestral"), (True, "euler")])
def test_sampling_shape_and_determinism(end_to_end, sampler):
    cfg = dataclasses.replace(CFG, sampler=sampler)
    model = text_ar.build(cfg, end_to_end=end_to_end, seed=0)
    prompt = np.frombuffer(b"def f(x): ", dtype=np.uint8)
    a = text_ar.sample(model, cfg, prompt, new_tokens=4, seed=3)  # 14 > seq_len 12 tokens: the window slides
    b = text_ar.sample(model, cfg, prompt, new_tokens=4, seed=3)
    c = text_ar.sample(model, cfg, prompt, new_tokens=4, seed=4)
    assert a.shape == (4,) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert text_ar.sample(model, cfg, np.zeros(0, np.uint8), new_tokens=1, seed=0).shape == (1,)


def test_train_then_save_load_round_trip():
    docs = [Document(f"d{i}", "s", (f"def f{i}(x):\n    return x + {i}\n" * 8).encode()) for i in range(3)]
    stream = TokenStream(docs)
    model = text_ar.build(CFG, end_to_end=False, seed=0)
    steps: list[int] = []
    stats = text_ar.train(model, CFG, stream, seed=0, on_step=lambda s, loss: steps.append(s))
    assert stats["block_steps"] == [2, 2] and steps == [1, 2, 3, 4]
    buf = io.BytesIO()
    torch.save({"config": dataclasses.asdict(CFG), "end_to_end": False, "state_dict": model.state_dict()}, buf)
    buf.seek(0)
    d = torch.load(buf)
    again = text_ar.build(text_ar.Config(**d["config"]), end_to_end=d["end_to_end"], seed=123)
    again.load_state_dict(d["state_dict"])
    prompt = np.frombuffer(b"def f", dtype=np.uint8)
    assert np.array_equal(
        text_ar.sample(model, CFG, prompt, new_tokens=2, seed=0),
        text_ar.sample(again, CFG, prompt, new_tokens=2, seed=0),
    )
    m = text_ar.evaluate(again, CFG, stream, seed=0, max_windows=4)
    assert set(m) == {"denoise_bits_block0", "denoise_bits_block1"}


def test_config_refuses_bad_settings():
    with pytest.raises(ValueError, match="multiple of num_blocks"):
        text_ar.Config(total_layers=6, num_blocks=4)
    with pytest.raises(ValueError, match="sampler"):
        text_ar.Config(sampler="heun")


def test_mauve_same_vs_different_distribution():
    g = np.random.default_rng(0)
    p = g.normal(size=(100, 4))
    same = text_ar.mauve_score(p, g.normal(size=(100, 4)))
    shifted = text_ar.mauve_score(p, g.normal(size=(100, 4)) + 3.0)
    assert same > 0.8 and shifted < 0.2
