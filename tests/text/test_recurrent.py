"""Recurrent-depth text models: truncated BPTT reaches only the last k iterations, the DiffusionBlocks core is
trained with exactly one gradient-carrying pass, the recurrence count, causality, save/load."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch

from dblocks.shared import text_recurrent as tr
from dblocks.shared.text import TokenStream, encode

CFG = tr.Config(seq_len=16, width=32, heads=2, mean_recurrence=6, bptt_k=3, eval_recurrence=4, batch_size=4)


@pytest.fixture(scope="module")
def stream() -> TokenStream:
    from dblocks.shared.text import Document

    data = b"def f(x):\n    return x + 1\n\n" * 40
    return TokenStream([Document("a.py", "a", data)])


def _grad_passes(model: tr.RecurrentLM) -> list[bool]:
    """Hook on the core: for each core pass, whether its output carries gradient."""
    seen: list[bool] = []
    model.core_norm.register_forward_hook(lambda m, i, o: seen.append(o.requires_grad))
    return seen


def test_truncated_bptt_reaches_only_last_k_iterations() -> None:
    model = tr.build(CFG, end_to_end=True, seed=0)
    seen = _grad_passes(model)
    x = torch.randint(0, 256, (2, CFG.seq_len))
    s0 = torch.randn(2, CFG.seq_len, CFG.width, requires_grad=True)
    model.recur(x, 7, k=CFG.bptt_k, state0=s0).sum().backward()
    assert seen == [False] * 4 + [True] * 3  # 7 passes, the last k = 3 with gradient
    assert s0.grad is None  # no path from the loss back to the initial state through the 4 frozen passes
    # with r <= k every pass carries gradient, back to the initial state
    s1 = torch.randn(2, CFG.seq_len, CFG.width, requires_grad=True)
    model.recur(x, 3, k=CFG.bptt_k, state0=s1).sum().backward()
    assert s1.grad is not None and s1.grad.abs().sum() > 0


def test_diffusion_training_step_is_one_core_pass(stream: TokenStream) -> None:
    model = tr.build(CFG, end_to_end=False, seed=0)
    seen = _grad_passes(model)
    stats = tr.train(model, CFG, stream, seed=0, steps=3)
    assert seen == [True] * 3 and stats["core_passes_per_step"] == 1.0
    # inference keeps the recurrence: eval_recurrence denoiser passes per token
    seen.clear()
    tr.sample(model, CFG, encode("def "), new_tokens=2, seed=0)
    assert len(seen) == 2 * CFG.eval_recurrence


def test_recurrence_count_distribution_and_flops() -> None:
    rng = np.random.default_rng(0)
    cfg = dataclasses.replace(CFG, mean_recurrence=12)
    rs = np.array([tr.sample_recurrence(cfg, rng) for _ in range(4000)])
    assert rs.min() >= 1 and rs.max() <= cfg.max_recurrence
    assert abs(rs.mean() - 12) < 0.6 and rs.std() > 3  # heavy-tailed around rbar, not a constant
    # analytic FLOPs: more recurrence costs more forward, backward stops growing at k
    f = [tr.step_flops(cfg, diffusion=False, r=r) for r in (1, 3, 4, 10)]
    assert f[0] < f[1] < f[2] < f[3]
    core = tr.step_flops(cfg, diffusion=False, r=11) - tr.step_flops(cfg, diffusion=False, r=10)  # forward only
    assert tr.step_flops(cfg, diffusion=False, r=3) - tr.step_flops(cfg, diffusion=False, r=2) == pytest.approx(
        3 * core
    )
    assert tr.step_flops(cfg, diffusion=True, r=99) < tr.step_flops(cfg, diffusion=False, r=2)


@pytest.mark.parametrize("end_to_end", [True, False])
def test_causal_by_perturbation(end_to_end: bool) -> None:
    model = tr.build(CFG, end_to_end=end_to_end, seed=0).eval()
    x = torch.randint(0, 256, (2, CFG.seq_len))
    y = x.clone()
    y[:, 9:] = torch.randint(0, 256, (2, CFG.seq_len - 9))
    with torch.no_grad():
        if end_to_end:
            a, b = (model.recur(t, 4, generator=torch.Generator().manual_seed(1)) for t in (x, y))
        else:  # every position's trajectory, from the same noise
            a, b = (model.diffuse(t, 4, generator=torch.Generator().manual_seed(1)) for t in (x, y))
    assert torch.allclose(a[:, :9], b[:, :9], atol=1e-5)  # positions before the change: unchanged
    assert not torch.allclose(a[:, 9:], b[:, 9:], atol=1e-3)  # and the change is seen where it may be


@pytest.mark.parametrize("end_to_end", [True, False])
def test_save_load_round_trip(end_to_end: bool, stream: TokenStream) -> None:
    model = tr.build(CFG, end_to_end=end_to_end, seed=3)  # another seed than the rebuild below: weights, targets
    buf = io.BytesIO()
    torch.save({"config": dataclasses.asdict(CFG), "end_to_end": end_to_end, "state_dict": model.state_dict()}, buf)
    buf.seek(0)
    d = torch.load(buf, weights_only=True)
    again = tr.build(tr.Config(**d["config"]), end_to_end=d["end_to_end"], seed=0)
    again.load_state_dict(d["state_dict"])
    assert tr.evaluate(model, CFG, stream, seed=0, max_windows=4) == tr.evaluate(
        again, CFG, stream, seed=0, max_windows=4
    )
    prompt = encode("def f(")
    assert np.array_equal(
        tr.sample(model, CFG, prompt, new_tokens=3, seed=0), tr.sample(again, CFG, prompt, new_tokens=3, seed=0)
    )


def test_untrained_bpb_near_eight_bits(stream: TokenStream) -> None:
    for end_to_end in (True, False):
        bpb = tr.evaluate(tr.build(CFG, end_to_end=end_to_end, seed=0), CFG, stream, seed=0, max_windows=4)["bpb"]
        assert 7.5 < bpb < 9.0


def test_config_rejects_a_missing_coda() -> None:
    with pytest.raises(ValueError, match="coda"):
        tr.Config(total_layers=3, prelude_layers=1, core_layers=2)
